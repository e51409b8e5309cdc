#!/usr/bin/env bash
# Runs inside scripts/ipvs-vm (see Tests/integration/l4-modes-in-vm.sh). Builds a real topology in network
# namespaces: a client on one bridge, three real servers on another, the VM's own namespace as the load balancer,
# then runs lbd on it. Prints "== section" markers and facts the host side checks.
set -uo pipefail
bin=$1 dir=$2
source "$dir/topology.sh"
ip addr add fd00:1::1/64 dev br-s nodad   # the IPv6 service's real-server network
attach client br-c 10.0.0.100 10.0.0.1
attach rs1 br-s 10.0.1.11 10.0.1.1
attach rs2 br-s 10.0.1.12 10.0.1.1
attach rs3 br-s 10.0.1.13          # SNAT's real server: no route back to the client network at all
# Direct routing: the real servers hold the DR VIP on loopback and neither answer nor announce ARP for it.
# In this test the load balancer is also the real servers' router: it must accept DR replies whose source (the
# VIP) is one of its own addresses.
sysctl -qw net.ipv4.conf.br-s.accept_local=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.br-s.rp_filter=0
for r in rs1 rs2; do
    ns $r ip addr add 10.0.0.42/32 dev lo
    ns $r sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
done
for r in rs1 rs2 rs3; do ns $r python3 "$dir/whoami-server.py" $r 80 8080 & done
listening() { ns "$1" bash -c "exec 3<>/dev/tcp/127.0.0.1/8080" 2>/dev/null; }
for r in rs1 rs2 rs3; do for _ in $(seq 300); do listening $r && break; sleep 0.1; done; done

cat > "$dir/l4.yaml" <<YAML
virtual_services:
  - name: Viewer-NAT
    vip: 10.0.0.40
    interface: br-c
    ports: [80]
    mode: l4-nat
    health_check: {type: connect, interval: 1200ms, timeout: 1s, rise: 1, fall: 2}
    real_servers:
      - {name: rs1, address: 10.0.1.11, port: 8080}
      - {name: rs2, address: 10.0.1.12, port: 8080}
  - name: Viewer-SNAT
    vip: 10.0.0.41
    interface: br-c
    ports: [80]
    mode: l4-snat
    health_check: {type: connect, interval: 1200ms, timeout: 1s, rise: 1, fall: 2}
    real_servers:
      - {name: rs3, address: 10.0.1.13, port: 8080}
  - name: Viewer-DR
    vip: 10.0.0.42
    interface: br-c
    ports: [80]
    mode: l4-dr
    on_server_failure: remove
    persistence: {type: source-ip, timeout: 60s, netmask: 255.255.255.0}
    health_check: {type: connect, interval: 1200ms, timeout: 1s, rise: 1, fall: 2}
    real_servers:
      - {name: rs1, address: 10.0.1.11}
      - {name: rs2, address: 10.0.1.12}
  - name: Mover
    vip: 10.0.0.43
    interface: br-c
    ports: [80]
    mode: l7-tcp
    health_check: {type: connect, interval: 1200ms, timeout: 1s, rise: 1, fall: 2}
    real_servers:
      - {name: rs1, address: 10.0.1.11, port: 8080}
      - {name: rs2, address: 10.0.1.12, port: 8080}
  - name: Viewer-NAT6
    vip: "2001:db8::40"
    interface: br-c
    ports: [80]
    mode: l4-nat
    health_check: {type: none}
    real_servers:
      - {name: rs1, address: "fd00:1::11", port: 8080}
ipvs:
  timeouts: {tcp: 1800s, tcp_fin: 60s, udp: 120s}
YAML
# An IPVS service made by hand before lbd: lbd must report it and leave it alone.
ipvsadm -A -t 10.0.0.99:80 -s rr
state="$dir/state"
rm -rf "$state"
run=0
start_lbd() { run=$((run + 1)); "$bin/lbd" --config "$1" --threads 1 --state-dir "$state" --reconcile-interval 2 --metrics 127.0.0.1:9780 > "$dir/lbd-$run.log" 2>&1 & lbd=$!; }
requests() {  # VIP COUNT: the answers, one per line
    for _ in $(seq "$2"); do ns client curl -s --max-time 3 "http://$1/" || echo "FAILED"; done
}

echo "== start"
ns client python3 "$dir/announcements.py" eth0 25 "$dir/announcements.ready" > "$dir/announcements.txt" &
wait_for '[ -f "$dir/announcements.ready" ]' || echo "wait timed out: the announcement listener did not start"
start_lbd "$dir/l4.yaml"
wait_for "ipvsadm -Ln | grep -q 10.0.0.42" || { echo "lbd did not program IPVS"; cat "$dir/lbd-1.log"; }
wait_for "'$bin/lbctl' status > '$dir/status.txt' 2>/dev/null && ! grep -qw checking '$dir/status.txt'" || echo "wait timed out: health checks did not conclude"
ipvsadm -Ln
echo "== timeouts"; ipvsadm -Ln --timeout
echo "== hand-made"; ipvsadm -Ln -t 10.0.0.99:80 | grep -c 10.0.0.99; grep -c "service=10.0.0.99:80/tcp .*not created by lb left alone" "$dir/lbd-1.log"
echo "== addresses"; ip -4 addr show dev br-c | grep -o 'inet [0-9./]*'
echo "== chain"; iptables -t nat -S LB-SNAT; iptables -t nat -S POSTROUTING | grep LB-SNAT
echo "== nat"; requests 10.0.0.40 8
echo "== snat"; requests 10.0.0.41 4
echo "== dr"; requests 10.0.0.42 4
# IPVS folds its per-CPU counters into the totals every two seconds: wait until they show the requests above.
ipvs_connections() { curl -s http://127.0.0.1:9780/metrics | awk -v s="lb_ipvs_connections{virtual_service=\"$1\"}" '$1 == s { print $2 + 0 }'; }
wait_for '[ "$(ipvs_connections 10.0.0.40:80/tcp)" -ge 8 ] && [ "$(ipvs_connections 10.0.0.41:80/tcp)" -ge 4 ] && [ "$(ipvs_connections 10.0.0.42:80/tcp)" -ge 4 ]' || echo "wait timed out: IPVS counters did not show the requests"
echo "== stats"; ipvsadm -Ln --stats
echo "metrics: $(curl -s http://127.0.0.1:9780/metrics | grep -E '^lb_ipvs_(connections|in_bytes)\{virtual_service="10.0.0.4[01]:80/tcp"\}' | tr '\n' ' ')"
echo "== announcements"; cat "$dir/announcements.txt"; echo "br-c $(cat /sys/class/net/br-c/address)"

echo "== rs2 down"
pkill -f "whoami-server.py rs2"
wait_for "ipvsadm -Ln | grep -qE '10.0.1.12:8080 +Masq +0 ' && ! ipvsadm -Ln | grep -q '10.0.1.12:80 '"
ipvsadm -Ln
echo "== nat after"; requests 10.0.0.40 6
echo "== rs2 back"
ns rs2 python3 "$dir/whoami-server.py" rs2 80 8080 &
wait_for "ipvsadm -Ln | grep -qE '10.0.1.12:8080 +Masq +100 ' && ipvsadm -Ln | grep -q '10.0.1.12:80 '"
ipvsadm -Ln

echo "== operator"
# A keep-alive connection through the NAT VIP stays open while its server is drained, lbd is killed with -9, a
# destination is deleted behind its back, and lbd is started again.
lbctl() { "$bin/lbctl" "$@"; }
rm -f "$dir"/mark-*
ns client python3 "$dir/held-connection.py" 10.0.0.40 "$dir" > "$dir/held.txt" &
wait_for "[ -f '$dir/mark-ready' ]"
wait_for "ipvsadm -Lnc | grep -q 'ESTABLISHED.*10.0.0.40:80'"
held_rs=$(ipvsadm -Lnc | awk '/ESTABLISHED/ && /10.0.0.40:80/ { print $NF }' | head -1)
held_name=$([ "${held_rs%%:*}" = 10.0.1.11 ] && echo rs1 || echo rs2)
echo "held connection to $held_name ($held_rs)"
lbctl drain Viewer-NAT $held_name
ipvsadm -Ln -t 10.0.0.40:80
touch "$dir/mark-step1"; wait_for "[ -f '$dir/mark-step1-done' ]"
new=$(for i in 1 2 3 4; do ns client curl -s --max-time 3 http://10.0.0.40/; done | awk '{print $1}' | sort -u | tr '\n' ' ')
echo "new connections went to: $new"
lbctl status Viewer-NAT
kill -9 $lbd; wait $lbd 2>/dev/null
ipvsadm -d -t 10.0.0.42:80 -r 10.0.1.11:80
echo "after kill -9 and a deleted destination:"; ipvsadm -Ln -t 10.0.0.42:80
touch "$dir/mark-step2"; wait_for "[ -f '$dir/mark-step2-done' ]"
start_lbd "$dir/l4.yaml"
wait_for "ipvsadm -Ln -t 10.0.0.42:80 | grep -q '10.0.1.11:80 '"
echo "after restart:"; ipvsadm -Ln
echo "services: $(ipvsadm -Ln | grep -cE '^(TCP|UDP)')"
touch "$dir/mark-step3"; wait_for "[ -f '$dir/mark-step3-done' ]"
cat "$dir/held.txt"
grep -c "IPVS: add destination 10.0.1.11:80 to 10.0.0.42:80/tcp" "$dir/lbd-$run.log"
lbctl online Viewer-NAT $held_name
lbctl halt Viewer-DR rs2
echo "after halt:"; ipvsadm -Ln -t 10.0.0.42:80
lbctl online Viewer-DR rs2
echo "after online:"; ipvsadm -Ln -t 10.0.0.42:80; ipvsadm -Ln -t 10.0.0.40:80

echo "== mode switch"
# A client requests every 100 ms while Mover goes from the proxy (l7-tcp) to the kernel (l4-nat) and back, until
# the test has seen answers after the switch back (at most 120 s: a slow emulated VM must not end it early).
# Each line: the time a request started, then the answer or FAILED with curl's exit status (28 = timed out).
stop="$dir/mover.stop"; rm -f "$stop"
ns client bash -c 'end=$((SECONDS + 120)); while [ $SECONDS -lt $end ] && [ ! -e "$1" ]; do t=$(date +%T.%N); a=$(curl -s --max-time 2 http://10.0.0.43/); r=$?; [ $r = 0 ] && echo "$t $a" || echo "$t FAILED curl exit $r"; sleep 0.1; done' _ "$stop" > "$dir/mover.txt" &
loop=$!
answered() { grep -c " $1\$" "$dir/mover.txt"; }   # requests answered through the proxy (10.0.1.1) or IPVS (10.0.0.100)
wait_for '[ "$(answered 10.0.1.1)" -ge 5 ]' || echo "wait timed out: no requests through the proxy"
echo "ipvs before: $(ipvsadm -Ln | grep -c 10.0.0.43)"
echo "to l4-nat at $(date +%T.%N)"
lbctl mode Mover l4-nat
echo "done at $(date +%T.%N)"
ipvsadm -Ln -t 10.0.0.43:80
echo "file: $(grep -A4 'name: Mover' "$dir/l4.yaml" | grep -o 'mode: .*')"
wait_for '[ "$(answered 10.0.0.100)" -ge 5 ]' || echo "wait timed out: no requests through IPVS"
echo "to l7-tcp at $(date +%T.%N)"
lbctl mode Mover l7-tcp
echo "done at $(date +%T.%N)"
echo "ipvs after: $(ipvsadm -Ln | grep -c 10.0.0.43)"
echo "file: $(grep -A4 'name: Mover' "$dir/l4.yaml" | grep -o 'mode: .*')"
back=$(wc -l < "$dir/mover.txt")
wait_for '[ "$(tail -n +$((back + 1)) "$dir/mover.txt" | grep -c " 10.0.1.1$")" -ge 3 ]' \
    || echo "wait timed out: no requests through the proxy after switching back"
touch "$stop"
wait $loop
grep FAILED "$dir/mover.txt" || true
echo "requests $(wc -l < "$dir/mover.txt") failed $(grep -c FAILED "$dir/mover.txt") via-proxy $(grep -c ' 10.0.1.1$' "$dir/mover.txt") via-ipvs $(grep -c ' 10.0.0.100$' "$dir/mover.txt")"

echo "== drift"
ipvsadm -C
ip addr del 10.0.0.42/32 dev br-c
iptables -t nat -F LB-SNAT
wait_for "ipvsadm -Ln | grep -q 10.0.0.42 && ip -4 addr show dev br-c | grep -q 10.0.0.42 && iptables -t nat -S LB-SNAT | grep -q MASQUERADE"
echo "services: $(ipvsadm -Ln | grep -cE '^(TCP|UDP)') address: $(ip -4 addr show dev br-c | grep -c 10.0.0.42) snat: $(iptables -t nat -S LB-SNAT | grep -c MASQUERADE)"
# Two more drift checks: nothing left to repair, nothing repeated.
drift_checks() { curl -s http://127.0.0.1:9780/metrics | awk '$1 == "lb_drift_checks" { print $2 + 0 }'; }
checked=$(drift_checks)
wait_for '[ "$(drift_checks)" -ge $((checked + 2)) ]' || echo "wait timed out: no more drift checks ran"
echo "repairs: $(grep -c 'differed from the config' "$dir/lbd-$run.log")"

echo "== reload then recover"
# rs2 fails; a reload changes its service (rs1's weight); rs2 recovers: its weight must come back in IPVS.
pkill -f "whoami-server.py rs2"
wait_for "ipvsadm -Ln -t 10.0.0.40:80 | grep -qE '10.0.1.12:8080 +Masq +0 '" || echo "rs2 not drained"
sed -i '0,/- {name: rs1, address: 10.0.1.11, port: 8080}/s//- {name: rs1, address: 10.0.1.11, port: 8080, weight: 50}/' "$dir/l4.yaml"
lbctl reload
echo "after reload:"; ipvsadm -Ln -t 10.0.0.40:80
ns rs2 python3 "$dir/whoami-server.py" rs2 80 8080 &
wait_for "ipvsadm -Ln -t 10.0.0.40:80 | grep -qE '10.0.1.12:8080 +Masq +100 '" || echo "rs2 did not come back"
echo "after recovery:"; ipvsadm -Ln -t 10.0.0.40:80
lbctl status Viewer-NAT

echo "== failed reload"
# An operator's rule jumps to lb's SNAT chain, so the kernel refuses to delete it: a reload that drops the last
# SNAT service (and changes a weight and adds a VIP on the way) fails at the netfilter step, after IPVS and the
# addresses were changed. Everything must be as before.
iptables -t nat -A POSTROUTING -d 10.9.9.9/32 -p tcp -j LB-SNAT
cp "$dir/l4.yaml" "$dir/l4.good"
python3 - "$dir/l4.good" "$dir/l4.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read()
start = text.index("  - name: Viewer-SNAT"); end = text.index("  - name: Viewer-DR")
text = text[:start] + text[end:]
text = text.replace("{name: rs2, address: 10.0.1.12, port: 8080}", "{name: rs2, address: 10.0.1.12, port: 8080, weight: 7}", 1)
text = text.replace("ipvs:\n", """  - name: Extra
    vip: 10.0.0.44
    interface: br-c
    ports: [80]
    mode: l4-nat
    health_check: {type: none}
    real_servers:
      - {name: rs1, address: 10.0.1.11, port: 8080}
ipvs:
""")
open(sys.argv[2], "w").write(text)
PY
# The table as ipvsadm saves it, and as it lists it less the connection counts (which change by themselves as
# connections of earlier sections expire), the rules and the addresses.
kernel_state() { ipvsadm -Sn; ipvsadm -Ln | awk '{ print $1, $2, $3, $4 }'; iptables-save | grep -v '^#'; ip addr; }
before="$(kernel_state)"
lbctl reload; echo "reload exited $?"
after="$(kernel_state)"
[ "$before" = "$after" ] && echo "kernel unchanged" || { echo "kernel CHANGED"; echo "$before" > "$dir/before.txt"; echo "$after" > "$dir/after.txt"; diff "$dir/before.txt" "$dir/after.txt"; }
lbctl status Viewer-NAT | grep rs2
# The chain in use is a lasting refusal (exit 4 from iptables-nft, like a held lock): not tried again.
echo "netfilter retries: $(grep -c 'trying again' "$dir/lbd-$run.log")"
cp "$dir/l4.good" "$dir/l4.yaml"
iptables -t nat -D POSTROUTING -d 10.9.9.9/32 -p tcp -j LB-SNAT
lbctl reload

echo "== stop"
kill -TERM $lbd; wait $lbd; echo "lbd exited $?"
echo "== log 1"; cat "$dir/lbd-1.log" "$dir/lbd-2.log"
echo "== stopped"
ipvsadm -Ln | grep -c '^TCP'

echo "== without SNAT"
grep -v -e '^  - name: Viewer-SNAT' "$dir/l4.yaml" | awk '/name: Viewer-SNAT/{skip=1} /name: Viewer-DR/{skip=0} !skip' > "$dir/l4-nosnat.yaml"
python3 - "$dir/l4.yaml" "$dir/l4-nosnat.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read()
start = text.index("  - name: Viewer-SNAT"); end = text.index("  - name: Viewer-DR")
open(sys.argv[2], "w").write(text[:start] + text[end:])
PY
start_lbd "$dir/l4-nosnat.yaml"
# grep -c reads all its input: a negated grep -q could pass on the writer's SIGPIPE under pipefail.
wait_for "[ \$(ipvsadm -Ln | grep -c 10.0.0.41) = 0 ]" || echo "SNAT service still there"
wait_for "[ \$(iptables -t nat -S 2>&1 | grep -c LB-SNAT) = 0 ] && [ \$(ip -4 addr show dev br-c | grep -c 10.0.0.41) = 0 ]" || echo "wait timed out: SNAT chain or address still there"
ipvsadm -Ln | grep '^TCP'
echo "chain: $(iptables -t nat -S 2>&1 | grep -c LB-SNAT)"
echo "address 10.0.0.41: $(ip -4 addr show dev br-c | grep -c 10.0.0.41)"
kill -TERM $lbd; wait $lbd

echo "== conflict"
iptables -t nat -A PREROUTING -d 10.0.0.41/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.1.99:80
before="$(kernel_state)"
start_lbd "$dir/l4.yaml"
wait $lbd; echo "lbd exited $?"
after="$(kernel_state)"
[ "$before" = "$after" ] && echo "kernel unchanged" || { echo "kernel CHANGED"; echo "$before" > "$dir/before.txt"; echo "$after" > "$dir/after.txt"; diff "$dir/before.txt" "$dir/after.txt"; }
cat "$dir/lbd-$run.log"

echo "== cleanup on stop"
iptables -t nat -D PREROUTING -d 10.0.0.41/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.1.99:80
ipvsadm -A -t 10.0.0.98:80 -s rr   # not lbd's: must survive the cleanup
"$bin/lbd" --config "$dir/l4.yaml" --threads 1 --state-dir "$state" --cleanup-on-stop > "$dir/lbd-cleanup.log" 2>&1 & lbd=$!
wait_for "ipvsadm -Ln | grep -q 10.0.0.41 && iptables -t nat -S LB-SNAT 2>/dev/null | grep -q MASQUERADE"
wait_for "lbctl status > /dev/null 2>&1 && [ \"\$(ip -4 addr show dev br-c | grep -cE '10\.0\.0\.4[0-3]/32')\" = 4 ]" || echo "wait timed out: VIP addresses not all added"
kill -TERM $lbd; wait $lbd; echo "lbd exited $?"
echo "services left: $(ipvsadm -Ln | grep -E '^(TCP|UDP)' | tr -s ' ' | tr '\n' ';')"
echo "chain left: $(iptables -t nat -S 2>/dev/null | grep -c LB-SNAT)"
echo "addresses left: $(ip -4 addr show dev br-c | grep -cE '10\.0\.0\.4[0-3]/32')"
