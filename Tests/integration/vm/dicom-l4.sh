#!/usr/bin/env bash
# Runs inside scripts/ipvs-vm (see Tests/integration/dicom-through-l4-in-vm.sh): a DICOM study from a client
# namespace through an l4-nat and an l4-snat VIP programmed by lbd, to dcmtk storescp real servers.
set -uo pipefail
bin=$1 dir=$2
source "$dir/topology.sh"
attach client br-c 10.0.0.100 10.0.0.1
attach pacs1 br-s 10.0.1.11 10.0.1.1
attach pacs2 br-s 10.0.1.12 10.0.1.1
attach pacs3 br-s 10.0.1.13          # behind SNAT: no route back to the clients
for r in pacs1 pacs2 pacs3; do
    mkdir -p "$dir/$r"
    # -dhl: no reverse lookup of callers; the VM has no DNS, and a lookup would stall every association.
    ns $r storescp --disable-host-lookup --aetitle ANY-SCP -od "$dir/$r" -uf 11112 > /dev/null 2>&1 &
done
for r in pacs1 pacs2 pacs3; do
    for _ in $(seq 100); do ns $r bash -c "exec 3<>/dev/tcp/127.0.0.1/11112" 2>/dev/null && break; sleep 0.1; done
done
cat > "$dir/lb.yaml" <<YAML
virtual_services:
  - name: CoreServerDICOM-NAT
    vip: 10.0.0.50
    interface: br-c
    ports: [104]
    mode: l4-nat
    health_check: {type: dicom-echo, called_ae: ANY-SCP, interval: 2s, timeout: 1500ms}
    real_servers:
      - {name: pacs1, address: 10.0.1.11, port: 11112}
      - {name: pacs2, address: 10.0.1.12, port: 11112}
  - name: CoreServerDICOM-SNAT
    vip: 10.0.0.51
    interface: br-c
    ports: [104]
    mode: l4-snat
    health_check: {type: dicom-echo, called_ae: ANY-SCP, interval: 2s, timeout: 1500ms}
    real_servers:
      - {name: pacs3, address: 10.0.1.13, port: 11112}
YAML
"$bin/lbd" --config "$dir/lb.yaml" --threads 1 --state-dir "$dir/state" > "$dir/lbd.log" 2>&1 & lbd=$!
for _ in $(seq 100); do ipvsadm -Ln | grep -q 10.0.0.51 && break; sleep 0.1; done
# The first C-ECHO checks have concluded: no real server is still "checking".
wait_for "'$bin/lbctl' status > '$dir/status.txt' 2>/dev/null && ! grep -qw checking '$dir/status.txt'" \
    || echo "wait timed out: the first checks did not conclude"
echo "== ipvs"; ipvsadm -Ln
echo "== nat"
for file in "$dir"/study/*.dcm; do ns client storescu -aec ANY-SCP 10.0.0.50 104 "$file" || echo "storescu FAILED"; done
echo "== snat"
for file in "$dir"/study/*.dcm; do ns client storescu -aec ANY-SCP 10.0.0.51 104 "$file" || echo "storescu FAILED"; done
# IPVS folds its per-CPU counters into the totals every two seconds: wait until both VIPs show connections.
conns() { ipvsadm -Ln --stats -t "$1" | awk '$1 == "TCP" { print $3 }'; }
wait_for '[ "$(conns 10.0.0.50:104)" -gt 0 ] && [ "$(conns 10.0.0.51:104)" -gt 0 ]' || echo "wait timed out: no connections in the IPVS counters"
echo "== stats"; ipvsadm -Ln --stats
kill -TERM $lbd; wait $lbd
echo "== log"; cat "$dir/lbd.log"
