#!/usr/bin/env bash
# lbd as the agent for a Layer 4 service, in the VM with the real kernel: it programs the IPVS table from the
# config (checked with ipvsadm -Ln), drains real servers that fail their health check to weight 0, and leaves the
# kernel's entries in place when it stops (established connections through IPVS keep flowing).
source "$(dirname "$0")/lib.sh"
cat > "$work/l4.yaml" <<YAML
virtual_services:
  - name: CoreServerDICOM-NAT
    vip: 10.0.0.40
    ports: [104]
    mode: l4-nat
    scheduler: weighted-leastconn
    health_check: {type: connect, interval: 300ms, timeout: 200ms, rise: 1, fall: 1}
    real_servers:
      - {name: core-1, address: 10.0.1.11, port: 11112, weight: 100}
      - {name: core-2, address: 10.0.1.12, port: 11112, weight: 50}
  - name: Unchecked-SNAT
    vip: 10.0.0.41
    ports: [2762]
    mode: l4-snat
    persistence: {type: source-ip, timeout: 300s}
    health_check: {type: none}
    real_servers:
      - {name: core-1, address: 10.0.1.11, port: 2762, weight: 100}
      - {name: core-2, address: 10.0.1.12, port: 2762, weight: 50}
YAML
cp "$work/l4.yaml" "$PWD/.ipvs-vm-cache/l4.yaml"
out=$(scripts/ipvs-vm bash -c "
    ip link add lbt0 type dummy && ip addr add 10.0.1.254/24 dev lbt0 && ip link set lbt0 up
    echo 0 > /proc/sys/net/ipv4/ip_forward
    modprobe ip_vs; echo 0 > /proc/sys/net/ipv4/vs/conntrack
    $bin/lbd --config .ipvs-vm-cache/l4.yaml --threads 1 > .ipvs-vm-cache/lbd.log 2>&1 & pid=\$!
    for i in \$(seq 50); do ipvsadm -Ln | grep -q 10.0.0.41 && break; sleep 0.1; done
    echo '== started'; ipvsadm -Ln
    # Both checked servers fail their first check (nothing listens on 10.0.1.0/24): wait for both drains.
    drained() { [ \$(ipvsadm -Ln | grep -cE -- '-> 10\.0\.1\.1[12]:11112 +Masq +0 ') = 2 ]; }
    for i in \$(seq 100); do drained && break; sleep 0.1; done
    drained || echo 'wait timed out: the failing servers were not drained'
    echo '== after checks'; ipvsadm -Ln
    echo \"== sysctl ip_forward=\$(cat /proc/sys/net/ipv4/ip_forward) conntrack=\$(cat /proc/sys/net/ipv4/vs/conntrack)\"
    kill -TERM \$pid; wait \$pid; echo \"== lbd exited \$?\"; ipvsadm -Ln
    echo '== log'; cat .ipvs-vm-cache/lbd.log")
echo "$out"
grep "^wait timed out" <<<"$out" && fail "a wait in the VM ran out"
started=$(sed -n '/== started/,/== after checks/p' <<<"$out")
after=$(sed -n '/== after checks/,/== lbd exited/p' <<<"$out")
stopped=$(sed -n '/== lbd exited/,/== log/p' <<<"$out")
grep -q "TCP  10.0.0.40:104 wlc" <<<"$started" || fail "service not programmed"
grep -q "TCP  10.0.0.41:2762 rr persistent 300" <<<"$started" || fail "persistent service not programmed"
grep -qE -- "-> 10\.0\.1\.11:2762 +Masq +100 " <<<"$after" || fail "core-1 not programmed with weight 100"
grep -qE -- "-> 10\.0\.1\.12:2762 +Masq +50 " <<<"$after" || fail "core-2 not programmed with weight 50"
grep -q "IPVS: add destination 10.0.1.11:11112 to 10.0.0.40:104/tcp" <<<"$out" || fail "checked service not programmed"
grep -qE -- "-> 10\.0\.1\.11:11112 +Masq +0 " <<<"$after" || fail "core-1 failing its check was not drained to weight 0"
grep -q "IPVS: edit destination 10.0.1.11:11112 of 10.0.0.40:104/tcp" <<<"$out" || fail "the drain was not a single edit"
grep -q "== lbd exited 0" <<<"$stopped" || fail "lbd did not stop cleanly"
grep -q "TCP  10.0.0.40:104 wlc" <<<"$stopped" || fail "IPVS entries were removed on stop"
grep -q "real server down" <<<"$out" || fail "no health transition logged"
grep -q "== sysctl ip_forward=1 conntrack=1" <<<"$out" || fail "NAT/SNAT kernel settings not applied"
echo "lbd programs IPVS and drains failed servers: passed"
