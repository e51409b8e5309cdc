#!/usr/bin/env bash
# Runs inside scripts/ipvs-vm (see Tests/integration/high-availability-in-vm.sh): two lbd nodes as a pair, each in
# a network namespace of its own with keepalived, between a client bridge and a real-server bridge. Prints
# "== section" markers and facts that the host side checks.
set -uo pipefail
bin=$1 dir=$2 runs=${3:-5}
export PATH=$PATH:/usr/sbin:/sbin
ns() { ip netns exec "$@"; }
now() { date +%s%3N; }
modprobe ip_vs 2>/dev/null
for bridge in br-c br-s; do
    ip link add $bridge type bridge && ip link set $bridge up
    # No IGMP snooping: the IPVS sync daemons' multicast reaches the other node without a querier.
    echo 0 > /sys/class/net/$bridge/bridge/multicast_snooping
done
link() {  # NAMESPACE BRIDGE INTERFACE ADDRESS
    ip link add "v-$1-$3" type veth peer name "$3" netns "$1"
    ip link set "v-$1-$3" master "$2" up
    ns "$1" ip addr add "$4/24" dev "$3"
    ns "$1" ip link set "$3" up
}
for n in client lb-1 lb-2 rs1 rs2; do ip netns add $n; ns $n ip link set lo up; done
link client br-c eth0 10.0.0.100
link lb-1 br-c eth0 10.0.0.2; link lb-1 br-s eth1 10.0.1.2
link lb-2 br-c eth0 10.0.0.3; link lb-2 br-s eth1 10.0.1.3
link rs1 br-s eth0 10.0.1.11; link rs2 br-s eth0 10.0.1.12
# NAT: the real servers answer through the pair's floating gateway, which moves with the master role.
for r in rs1 rs2; do ns $r ip route add default via 10.0.1.1; done
for r in rs1 rs2; do
    ns $r python3 "$dir/whoami-server.py" $r 8080 > /dev/null 2>&1 &
    ns $r python3 "$dir/echo-server.py" 7007 > /dev/null 2>&1 &
    mkdir -p "$dir/$r"
    ns $r storescp --disable-host-lookup --aetitle ANY-SCP -od "$dir/$r" -uf 11112 > /dev/null 2>&1 &
done
for r in rs1 rs2; do for p in 8080 7007 11112; do
    for _ in $(seq 300); do ns $r bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null && break; sleep 0.1; done
done; done

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/peer.key"; chmod 600 "$dir/peer.key"
cat > "$dir/pair.yaml" <<YAML
virtual_services:
  - name: Echo-NAT
    vip: 10.0.0.40
    ports: [7]
    mode: l4-nat
    health_check: {type: connect, interval: 1s, timeout: 800ms, rise: 1, fall: 2}
    real_servers:
      - {name: rs1, address: 10.0.1.11, port: 7007}
      - {name: rs2, address: 10.0.1.12, port: 7007}
  - name: PACS-NAT
    vip: 10.0.0.40
    ports: [104]
    mode: l4-nat
    health_check: {type: dicom-echo, called_ae: ANY-SCP, interval: 2s, timeout: 1500ms}
    real_servers:
      - {name: rs1, address: 10.0.1.11, port: 11112}
      - {name: rs2, address: 10.0.1.12, port: 11112}
  - name: Viewer
    vip: 10.0.0.41
    ports: [80]
    mode: l7-http
    persistence: {type: http-cookie}
    health_check: {type: http-get, path: /, interval: 1s, timeout: 800ms, rise: 1, fall: 2}
    real_servers:
      - {name: rs1, address: 10.0.1.11, port: 8080}
      - {name: rs2, address: 10.0.1.12, port: 8080}
high_availability:
  virtual_router_id: 51
  advert_interval: 1s
  preempt: false
  nodes:
    - {name: lb-1, address: 10.0.0.2, interface: eth0, priority: 250}
    - {name: lb-2, address: 10.0.0.3, interface: eth0, priority: 200}
  floating_addresses:
    - {address: 10.0.1.1/24, interface: eth1}
  connection_sync: {interface: eth0}
  peer_port: 9977
  peer_secret_file: $dir/peer.key
YAML

declare -A pid
start_node() {  # NODE: its state (keepalived's files, overrides) under /run, its log on the shared tree
    mkdir -p /run/$1
    # `ip netns exec` itself, not the ns function: $! must be lbd's pid, not a subshell's.
    ip netns exec $1 "$bin/lbd" --config "$dir/pair.yaml" --node $1 --threads 1 --socket /run/$1/lbd.sock --state-dir /run/$1 \
        --reconcile-interval 2 >> "$dir/$1.log" 2>&1 &
    pid[$1]=$!
}
lbctl() { local node=$1; shift; "$bin/lbctl" --socket /run/$node/lbd.sock "$@"; }
# grep without -q reads to the end: under pipefail, -q's early exit can fail the pipeline (SIGPIPE in the writer).
has() { grep "$@" > /dev/null; }
holds() { ns $1 ip -4 addr show | has "inet $2/"; }
holds_all() { holds $1 10.0.0.40 && holds $1 10.0.0.41 && holds $1 10.0.1.1; }
holds_none() { ! holds $1 10.0.0.40 && ! holds $1 10.0.0.41 && ! holds $1 10.0.1.1; }
role() { lbctl $1 status 2>/dev/null | awk '/^pair: this node/ { print tolower($6) }'; }
oks_since() { awk -v t="$2" '$1 >= t && $2 == "ok"' "$1" | wc -l; }   # FILE MS: a loop's answered attempts since MS
wait_for() {  # SECONDS COMMAND...: true once COMMAND succeeds
    local until=$(( $(now) + $1 * 1000 )); shift
    while [ "$(now)" -lt $until ]; do "$@" && return 0; sleep 0.05; done
    return 1
}
other() { [ $1 = lb-1 ] && echo lb-2 || echo lb-1; }
master() { holds lb-1 10.0.0.40 && echo lb-1 || echo lb-2; }

start_node lb-1; start_node lb-2
echo "== start"
wait_for 30 eval 'holds_all lb-1 || holds_all lb-2' || echo "no node took the VIPs"
m=$(master); b=$(other $m)
wait_for 15 eval '[ "$(role $b)" = backup ] && [ "$(role $m)" = master ]' || echo "roles not settled: $m $(role $m), $b $(role $b)"
wait_for 15 eval 'ns $b ipvsadm -Ln | has -E -- "-> 10.0.1.12:7007 +Masq +100 "' || echo "backup's checks not up"
echo "master $m"; echo "backup $b"
holds_all $m && echo "$m holds every VIP and floating address"
holds_none $b && echo "$b holds none"
ns $b ss -ltnH | awk '{ print $4 }' | has '^10.0.0.41:80$' && echo "$b listens on 10.0.0.41:80"
[ "$(ns lb-1 ipvsadm -Ln)" = "$(ns lb-2 ipvsadm -Ln)" ] && echo "ipvsadm -Ln identical on both"
echo "== ipvs $m"; ns $m ipvsadm -Ln
echo "== daemons $b"; ns $b ipvsadm -L --daemon
echo "== status $m"; lbctl $m status
echo "== status $b"; lbctl $b status
pinned=$(ns client curl -s -c "$dir/cookies" http://10.0.0.41/ | awk '{ print $1 }')
echo "cookie from $m pins to ${pinned:-nothing}"

echo "== drain"
lbctl $m drain Echo-NAT rs2
t0=$(now)   # the drain is in force on $m once lbctl has answered
if wait_for 10 eval 'ns $b ipvsadm -Ln -t 10.0.0.40:7 | has -E -- "-> 10.0.1.12:7007 +Masq +0 "'; then
    echo "drain on $m followed by $b in $(( $(now) - t0 )) ms"
fi
lbctl $b status Echo-NAT | grep -E '^  rs2 '

echo "== refusals"
# The forged message would put the drained rs2 back online if it were believed.
ns client python3 "$dir/peer-datagram.py" forge 10.0.0.3 9977 lb-1 Echo-NAT rs2
refused() { grep 'peer message refused' "$dir/lb-2.log" | grep "$1" > /dev/null; }
wait_for 10 refused 'MAC does not match' && echo "forged message refused and logged"
ns lb-2 python3 "$dir/peer-datagram.py" capture eth0 9977 10.0.0.2 "$dir/captured.bin" &
wait_for 10 test -s "$dir/captured.bin"
sleep 1.1   # the refusal log is rate-limited to a line a second; this waits out the previous line
for _ in 1 2 3; do
    ns client python3 "$dir/peer-datagram.py" send 10.0.0.3 9977 "$dir/captured.bin"
    wait_for 2 refused 'seen before' && { echo "replayed message refused and logged"; break; }
done
ns lb-2 ipvsadm -Ln -t 10.0.0.40:7 | has -E -- "-> 10.0.1.12:7007 +Masq +0 " && echo "the refused messages changed nothing"

# One established connection through the l4-nat VIP for every fail-over and fail-back below; one DICOM study
# (slowed by a rate limit on the client's link, so the first fail-over happens during it).
ns client python3 "$dir/stream.py" 10.0.0.40 7 "$dir" > "$dir/stream.out" 2>&1 &
stream=$!
wait_for 10 test -f "$dir/stream-ready" || echo "the stream did not connect"
for run in $(seq $runs); do
    m=$(master); b=$(other $m)
    kind=kill; [ $run -gt 3 ] && kind=link
    # The fail-over only once the standby holds the stream's connection (keepalived issue 1076).
    wait_for 20 eval 'ns $b ipvsadm -Lnc | has "ESTABLISHED.*10.0.0.100:[0-9]* *10.0.0.40:7 "' \
        || echo "run $run: $b has not synced the stream's connection"
    rm -f "$dir/loop-stop-http$run"
    ns client python3 "$dir/loop.py" http http://10.0.0.41/ "$dir" http$run > "$dir/http$run.out" 2>&1 &
    loop=$!
    rm -f "$dir/garp-ready$run" "$dir/garp-stop$run"
    ns client python3 "$dir/announcements.py" eth0 120 "$dir/garp-ready$run" "$dir/garp-stop$run" > "$dir/garp$run.out" 2>&1 &
    garp=$!
    wait_for 10 test -f "$dir/garp-ready$run" || echo "wait timed out: the client's announcement listener did not start"
    if [ $run = 1 ]; then
        ns client tc qdisc add dev eth0 root tbf rate 12mbit burst 32kbit latency 400ms
        ns client storescu -aec ANY-SCP 10.0.0.40 104 "$dir"/study/*.dcm > "$dir/storescu.out" 2>&1 &
        store=$!
        wait_for 30 eval '[ -n "$(ls "$dir/rs1" "$dir/rs2")" ]' || echo "the study did not start"
    fi
    # Requests flow before the fail-over: three answered.
    wait_for 30 eval '[ "$(oks_since "$dir/http$run.out" 0)" -ge 3 ]' || echo "wait timed out: no requests answered before the fail-over"
    # The moment the VIP appears on the backup, from the kernel's own timestamped address events (polling through
    # ip netns exec would add its own delay, large under TCG).
    ns $b ip -ts -4 monitor address > "$dir/monitor$run.out" 2>&1 &
    monitor=$!
    # It listens once it reports a change of a probe address (one the take-over does not involve); a change made
    # before it subscribed is never reported, so the probe is added and removed again until one is.
    monitor_listens() {
        ns $b ip addr add 127.0.0.99/32 dev lo; ns $b ip addr del 127.0.0.99/32 dev lo
        grep -q 127.0.0.99 "$dir/monitor$run.out"
    }
    wait_for 10 monitor_listens || echo "wait timed out: the address monitor did not start"
    t0=$(now)
    if [ $kind = kill ]; then
        kill -9 $(cat /run/$m/keepalived-vrrp.pid) $(cat /run/$m/keepalived.pid) ${pid[$m]}
    else
        ns $m ip link set eth0 down; ns $m ip link set eth1 down
    fi
    wait_for 20 eval 'holds_all $b'
    kill $monitor; wait $monitor 2>/dev/null
    # The take-over is complete when the last of the three addresses is in place (the announcements follow it).
    added=$(awk '/inet (10\.0\.0\.4[01]|10\.0\.1\.1)\// && !/^\[.*\] Deleted/ && !seen[$5]++ { gsub(/[][]/, "", $1); last = $1 } END { print last }' "$dir/monitor$run.out")
    t1=$(date -d "$added" +%s%3N 2>/dev/null || now)
    echo "takeover run $run ($kind): $(( t1 - t0 )) ms, $b holds the VIPs, killed at $t0 (VIP added at ${added:-?})"
    # Requests flow after the take-over: ten answered by the new master. For the client the take-over is complete
    # once its gratuitous ARP for the l7-http VIP has arrived too (the host side counts from the later of the two),
    # so the ten are counted from then.
    new_mac=$(ns $b ip link show eth0 | awk '/link\/ether/ { print $2 }')
    announced_at() { awk -v m="$new_mac" '$1 == "at" && $3 == "garp" && $4 == "10.0.0.41" && $5 == m { print $2; exit }' "$dir/garp$run.out"; }
    wait_for 20 eval '[ -n "$(announced_at)" ]' || echo "wait timed out: no gratuitous ARP for 10.0.0.41 from $b"
    since=$(announced_at); [ -n "$since" ] && [ "$since" -gt "$t1" ] || since=$t1
    wait_for 30 eval '[ "$(oks_since "$dir/http$run.out" "$since")" -ge 10 ]' || echo "wait timed out: no requests answered after the take-over"
    if [ $run = 1 ]; then
        # The persistence cookie that the old master set still pins to the same server on the new one.
        served=$(for _ in 1 2 3; do ns client curl -s -b "$dir/cookies" http://10.0.0.41/ | awk '{ print $1 }'; done | sort -u | tr '\n' ' ')
        echo "run 1: the cookie from $m is served by ${served:-nothing}on $b"
    fi
    if [ $run = 1 ]; then
        wait $store; echo "storescu exit $?"; ns client tc qdisc del dev eth0 root
    fi
    touch "$dir/loop-stop-http$run"; wait $loop
    # The new master's gratuitous ARP for the VIP (the host side checks it); the listener stops once it is seen.
    wait_for 20 grep -qx "garp 10.0.0.40 $new_mac" "$dir/garp$run.out" || true
    touch "$dir/garp-stop$run"; wait $garp
    echo "mac $new_mac" >> "$dir/garp$run.out"
    if [ $run = 1 ]; then
        # A change made while the other node is down: it must catch up when it returns (the newest change wins).
        lbctl $b drain Viewer rs2
    fi
    # The old master returns: it must stay backup (preempt: false).
    if [ $kind = kill ]; then
        # A killed keepalived leaves its addresses behind, like a crashed host whose links are still up; a
        # returning lbd starts keepalived, which removes them on entering BACKUP.
        start_node $m
    else
        ns $m ip link set eth0 up; ns $m ip link set eth1 up
    fi
    wait_for 30 eval '[ "$(role $m)" = backup ] && holds_none $m' && echo "run $run: $m is back as backup and holds nothing"
    holds_all $b && echo "run $run: $b still holds the VIPs"
    if [ $run = 1 ]; then
        wait_for 10 eval 'lbctl $m status Viewer | has -E "^  rs2 .* drain "' && echo "run 1: $m caught up with the drain made while it was down"
        lbctl $m online Viewer rs2
        wait_for 10 eval 'lbctl $b status Viewer | has -E "^  rs2 .* online "' && echo "run 1: the online on $m reached $b"
    fi
done
touch "$dir/stream-stop"; wait $stream
cat "$dir/stream.out"

echo "== after"
m=$(master); b=$(other $m)
ns $m ipvsadm -Ln -t 10.0.0.40:7 | has -E -- "-> 10.0.1.12:7007 +Masq +0 " && echo "rs2 still drained on $m"
echo "== status $m"; lbctl $m status
echo "== status $b"; lbctl $b status

echo "== standby"
rm -f "$dir/loop-stop-echo"
ns client python3 "$dir/loop.py" echo 10.0.0.40 7 "$dir" echo > "$dir/echo.out" 2>&1 &
loop=$!
wait_for 30 eval '[ "$(oks_since "$dir/echo.out" 0)" -ge 10 ]' || echo "wait timed out: no connections answered before the hand-over"
lbctl $m ha standby
wait_for 20 eval 'holds_all $b && holds_none $m' && echo "standby on $m: $b holds the VIPs"
handed=$(now)
wait_for 30 eval '[ "$(oks_since "$dir/echo.out" "$handed")" -ge 10 ]' || echo "wait timed out: no connections answered after the hand-over"
touch "$dir/loop-stop-echo"; wait $loop
echo "new connections during the hand-over: $(grep -c ' ok$' "$dir/echo.out") ok, $(grep -c FAIL "$dir/echo.out") failed"
grep FAIL "$dir/echo.out" | head -3
echo "role of $m: $(role $m)"
lbctl $m status | has 'standby: lbctl ha resume' && echo "status on $m says standby"
lbctl $m ha resume
wait_for 20 eval '[ "$(role $m)" = backup ]' && holds_none $m && echo "resume on $m: backup, holds nothing"
lbctl $m online Echo-NAT rs2
wait_for 10 eval 'ns $b ipvsadm -Ln -t 10.0.0.40:7 | has -E -- "-> 10.0.1.12:7007 +Masq +100 "' && echo "online on $m followed by $b"

echo "== reload"
# A new VIP in the same file on both nodes: keepalived is given it, and only the master holds it.
m=$(master); b=$(other $m)
python3 - "$dir/pair.yaml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
extra = """  - name: HL7
    vip: 10.0.0.42
    ports: [2575]
    mode: l4-nat
    health_check: {type: none}
    real_servers:
      - {name: rs1, address: 10.0.1.11, port: 7007}
high_availability:"""
open(path, "w").write(text.replace("high_availability:", extra, 1))
PY
lbctl lb-1 reload; lbctl lb-2 reload
wait_for 20 eval 'holds $m 10.0.0.42' && ! holds $b 10.0.0.42 && echo "after the reload $m holds the new VIP and $b does not"
[ "$(role $m)" = master ] && echo "$m is still master after the reload"
lbctl $m status | has "configs: the same virtual services on both nodes" && echo "configs match after the reload"

echo "== stop"
for n in lb-1 lb-2; do kill -TERM ${pid[$n]} 2>/dev/null; done
for n in lb-1 lb-2; do wait ${pid[$n]} 2>/dev/null; done
for n in lb-1 lb-2; do holds_none $n && echo "$n released every address on stop"; done
pgrep -x keepalived > /dev/null && echo "keepalived left running" || echo "no keepalived left"
for n in lb-1 lb-2; do echo "== log $n"; cat "$dir/$n.log"; done
