#!/usr/bin/env bash
# Layer 7 transparency in a two-arm topology of network namespaces: client | load balancer (lbd) | server, the
# server's default route via the load balancer. With `transparent: true` lbd connects to the server from the
# client's own address: the web server sees 10.9.0.100, and a DICOM study from storescu arrives byte-identical.
# lbd owns the LB-TPROXY chain (mangle) and the policy route that bring replies to its sockets; they go on
# --cleanup-on-stop.
source "$(dirname "$0")/lib.sh"
set +e
tag=$$
cl=lbt-cl-$tag lb=lbt-lb-$tag sv=lbt-sv-$tag
netns_cleanup() { ip netns del $cl 2>/dev/null; ip netns del $lb 2>/dev/null; ip netns del $sv 2>/dev/null; }
trap 'cleanup; netns_cleanup' EXIT
ns() { ip netns exec "$@"; }   # background jobs call ip netns exec directly, so $! is the process itself
ip netns add $cl && ip netns add $lb && ip netns add $sv || fail "cannot create network namespaces"
ip link add c0 netns $cl type veth peer name c1 netns $lb
ip link add s0 netns $sv type veth peer name s1 netns $lb
ns $cl ip addr add 10.9.0.100/24 dev c0; ns $cl ip link set c0 up; ns $cl ip link set lo up
ns $cl ip route add default via 10.9.0.1
ns $lb ip addr add 10.9.0.1/24 dev c1; ns $lb ip addr add 10.9.1.1/24 dev s1
ns $lb ip link set c1 up; ns $lb ip link set s1 up; ns $lb ip link set lo up
ns $sv ip addr add 10.9.1.11/24 dev s0; ns $sv ip link set s0 up; ns $sv ip link set lo up
ns $sv ip route add default via 10.9.1.1
mkdir -p "$work/received" "$work/bmp" "$work/study"
ip netns exec $sv python3 Tests/integration/vm/whoami-server.py pacs 8080 & pids+=($!)
ip netns exec $sv storescp --debug --disable-host-lookup --aetitle ANY-SCP -od "$work/received" -uf 11112 \
    > "$work/storescp.log" 2>&1 & pids+=($!)
make_study "$work/study" 3 512
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: Viewer-T
    vip: 10.9.0.10
    interface: c1
    ports: [80]
    mode: l7-tcp
    transparent: true
    health_check: {type: connect, interval: 1s}
    real_servers: [{name: pacs, address: 10.9.1.11, port: 8080}]
  - name: DICOM-T
    vip: 10.9.0.10
    interface: c1
    ports: [104]
    mode: l7-tcp
    transparent: true
    health_check: {type: dicom-echo, called_ae: ANY-SCP, interval: 1s, timeout: 800ms}
    real_servers: [{name: pacs, address: 10.9.1.11, port: 11112}]
YAML
ip netns exec $lb "$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" --state-dir "$work/state" \
    --cleanup-on-stop > "$work/lbd.log" 2>&1 & lbd=$!; pids+=($lbd)
for _ in $(seq 100); do ns $cl curl -s --max-time 1 http://10.9.0.10/ > "$work/seen" 2>/dev/null && break; sleep 0.1; done
echo "server saw: $(cat "$work/seen")"
[ "$(cat "$work/seen")" = "pacs 10.9.0.100" ] || fail "the server did not see the client's own address"
ns $lb iptables -t mangle -S LB-TPROXY | holds -- "-s 10.9.1.11/32 -p tcp -m tcp --sport 8080 -m socket --transparent" \
    || fail "LB-TPROXY rule missing"
ns $lb ip -4 rule show | holds "fwmark 0x4c42 lookup 19522" || fail "policy rule missing: $(ns $lb ip -4 rule show)"
for file in "$work"/study/*.dcm; do
    ns $cl storescu -aec ANY-SCP 10.9.0.10 104 "$file" || fail "storescu through the transparent VIP failed"
done
python3 Tests/integration/compare-datasets.py "$work/study" "$work/received" || fail "data sets differ"
# storescp logs each caller; the study's associations must come from the client, the checks' from the LB.
grep -E "^D: Association Received: " "$work/storescp.log" | sort | uniq -c
grep -q "^D: Association Received: 10.9.0.100$" "$work/storescp.log" || fail "storescp did not see the client's own address"
kill -TERM $lbd; wait $lbd
ns $lb iptables -t mangle -S 2>/dev/null | holds LB-TPROXY && fail "LB-TPROXY left after --cleanup-on-stop"
ns $lb ip -4 rule show | holds "lookup 19522" && fail "policy rule left after --cleanup-on-stop"
echo "transparent Layer 7: passed"
