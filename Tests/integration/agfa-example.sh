#!/usr/bin/env bash
# The bundled examples/agfa-enterprise-imaging.yaml, run as shipped, end to end, in a two-arm topology of network
# namespaces: a client | the load balancer (eth1 to the clients, eth2 to the servers) | two core servers and two web
# servers answering on every port the file names (HTTP, HTTPS, TLS pass-through, TCP echo, HL7 MLLP, DICOM with
# dcmtk storescp). Only the CA file the example trusts for the real servers is replaced by this test's CA (the
# servers' certificates come from it); the file itself is used unchanged.
# - every one of the 21 VIP:ports is answered by a real server (a small DICOM study stored through 104);
# - a core server killed: every VIP keeps answering, lbctl status shows it down with its reason;
# - brought back: up again everywhere.
source "$(dirname "$0")/lib.sh"
set +e
tag=$$
cl=ei-cl-$tag lb=ei-lb-$tag
servers=(ei-c1-$tag ei-c2-$tag ei-w1-$tag ei-w2-$tag)
names=(ei-core-1 ei-core-2 ei-web-1 ei-web-2)
addresses=(10.20.1.11 10.20.1.12 10.20.2.21 10.20.2.22)
gateways=(10.20.1.1 10.20.1.1 10.20.2.1 10.20.2.1)
netns_cleanup() { for n in $cl $lb "${servers[@]}"; do ip netns del $n 2>/dev/null; done; }
trap 'cleanup; netns_cleanup' EXIT
ns() { ip netns exec "$@"; }
socket=/tmp/lb-agfa-$tag.sock
lbctl() { ns $lb "$bin/lbctl" --socket $socket "$@"; }

# --- certificates: a test CA; each server's certificate names its address (and the web VIP, for pass-through)
mkdir -p "$work/certs" "$work/bmp" "$work/study" "$work/received-1" "$work/received-2"
cp examples/agfa-enterprise-imaging.yaml "$work/"
cp examples/certs/demo-viewer.pem examples/certs/demo-viewer.key "$work/certs/"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=e2e CA" -keyout "$work/ca.key" -out "$work/certs/demo-ca.pem" 2>/dev/null
for i in 0 1 2 3; do
    san="IP:${addresses[$i]}"; [ $i -ge 2 ] && san="$san,IP:10.20.0.20"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=${names[$i]}" -keyout "$work/${names[$i]}.key" -out "$work/${names[$i]}.csr" 2>/dev/null
    printf 'subjectAltName=%s\n' "$san" > "$work/${names[$i]}.ext"
    openssl x509 -req -in "$work/${names[$i]}.csr" -CA "$work/certs/demo-ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
        -extfile "$work/${names[$i]}.ext" -out "$work/${names[$i]}.pem" 2>/dev/null
done

# --- topology
for n in $cl $lb "${servers[@]}"; do ip netns add $n || fail "cannot create namespace $n"; ns $n ip link set lo up; done
ip link add c0 netns $cl type veth peer name eth1 netns $lb
ns $cl ip addr add 10.20.0.100/24 dev c0; ns $cl ip link set c0 up
ns $lb ip addr add 10.20.0.1/24 dev eth1; ns $lb ip link set eth1 up
ns $lb ip link add eth2 type bridge; ns $lb ip link set eth2 up
ns $lb ip addr add 10.20.1.1/24 dev eth2; ns $lb ip addr add 10.20.2.1/24 dev eth2
for i in 0 1 2 3; do
    ip link add s0 netns ${servers[$i]} type veth peer name p$i netns $lb
    ns $lb ip link set p$i master eth2; ns $lb ip link set p$i up
    ns ${servers[$i]} ip addr add ${addresses[$i]}/24 dev s0; ns ${servers[$i]} ip link set s0 up
    ns ${servers[$i]} ip route add default via ${gateways[$i]}
done

# --- the servers
core_ports="http:80 http:81 http:8080 http:9080 http:9081 http:10080 https:443 https:8443 mllp:2310 mllp:2311
            echo:4447 echo:5222 echo:5223 echo:7443 echo:6514 echo:10123 echo:10124"
start_core() {  # index 0 or 1
    local n=${servers[$1]} name=${names[$1]}
    ip netns exec $n python3 Tests/integration/ei-server.py $name "$work/$name.pem" "$work/$name.key" $core_ports \
        > "$work/$name.log" 2>&1 & pids+=($!)
    for port in 104 110 2762; do
        ip netns exec $n storescp --disable-host-lookup --aetitle EI-CORE -od "$work/received-$(($1 + 1))" $port \
            >> "$work/$name-storescp.log" 2>&1 & pids+=($!)
    done
}
start_core 0; start_core 1
for i in 2 3; do
    ip netns exec ${servers[$i]} python3 Tests/integration/ei-server.py ${names[$i]} "$work/${names[$i]}.pem" "$work/${names[$i]}.key" \
        https:443 http:80 > "$work/${names[$i]}.log" 2>&1 & pids+=($!)
done
for i in 0 1 2 3; do
    for _ in $(seq 100); do grep -q ready "$work/${names[$i]}.log" 2>/dev/null && break; sleep 0.05; done
done
make_study "$work/study" 2 256

# --- lbd with the bundled file
"$bin/lbctl" config check "$work/agfa-enterprise-imaging.yaml" || fail "the example does not check"
ip netns exec $lb "$bin/lbd" --config "$work/agfa-enterprise-imaging.yaml" --threads 2 --socket $socket \
    --state-dir "$work/state" > "$work/lbd.log" 2>&1 & lbd=$!; pids+=($lbd)
all_up() { [ "$(lbctl status --format json 2>/dev/null | python3 -c '
import json, sys
services = json.load(sys.stdin)
print(sum(1 for s in services for r in s["servers"] if r["state"] == "up"))' 2>/dev/null)" = 42 ]; }
for _ in $(seq 300); do all_up && break; sleep 0.1; done
all_up || fail "not every real server came up: $(lbctl status)"
vips=$(ns $lb ip -4 addr show dev eth1)
for vip in 10.20.0.10 10.20.0.20 10.20.0.21; do
    grep -q "inet $vip/32 " <<<"$vips" || fail "lbd did not add $vip to eth1 (interface: eth1): $vips"
done

table() { ip netns exec $cl python3 Tests/integration/ei-client.py examples/certs/demo-ca.pem "$work/certs/demo-ca.pem" "$work/study"; }
first=$(table)
echo "== all 21 VIP:ports, both core servers up"; echo "$first"
[ "$(grep -c ' OK ' <<<"$first")" = 21 ] || fail "not every VIP:port answered"
[ "$(ls "$work"/received-*/ 2>/dev/null | grep -c '\.')" -ge 2 ] || fail "the study did not arrive at a core server"

# --- a core server dies
pkill -f "ei-server.py ei-core-1"; for pid in $(ip netns pids ${servers[0]}); do kill $pid 2>/dev/null; done
down_everywhere() { [ "$(lbctl status --format json | python3 -c '
import json, sys
rows = [r for s in json.load(sys.stdin) for r in s["servers"] if r["name"] == "ei-core-1"]
print(sum(1 for r in rows if r["state"] == "down" and r.get("reason")))')" = 19 ]; }
for _ in $(seq 300); do down_everywhere && break; sleep 0.1; done
down_everywhere || fail "ei-core-1 is not shown down with a reason in all 19 core services: $(lbctl status)"
echo "== ei-core-1 killed: status"; lbctl status CoreServerDICOM-104 | grep ei-core-1
second=$(table)
echo "== all 21 VIP:ports with ei-core-1 down"; echo "$second"
[ "$(grep -c ' OK ' <<<"$second")" = 21 ] || fail "a VIP stopped answering when a core server died"
grep -E ' OK ei-core-1$' <<<"$second" && fail "the dead core server answered"

# --- and comes back
start_core 0
for _ in $(seq 300); do all_up && break; sleep 0.1; done
all_up || fail "ei-core-1 did not come back everywhere: $(lbctl status)"
echo "== ei-core-1 back: up in every service"
kill -TERM $lbd; wait $lbd || fail "lbd did not stop cleanly"
echo "bundled example end to end: passed"
