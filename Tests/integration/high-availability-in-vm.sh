#!/usr/bin/env bash
# Two lbd nodes as a pair on a real kernel (scripts/ipvs-vm): namespaces client | lb-1, lb-2 | rs1, rs2 on two
# bridges, keepalived (VRRPv3, unicast) started by each lbd, the IPVS sync daemons in both roles.
# - exactly one node holds every VIP and the floating gateway; the other is backup, listening (IP_FREEBIND), with
#   the same ipvsadm -Ln;
# - a drain on the master reaches the backup's IPVS over the peer channel; a forged and a replayed peer message
#   are refused, logged, and change nothing;
# - five fail-overs (three kill -9 of the master's keepalived and lbd, two with its links down): the backup holds
#   the VIPs within 3 × advert_interval + 1 s, the client sees its gratuitous ARP, one established connection
#   through the l4-nat VIP carries on through all of them (fail-backs included) without a lost byte, every HTTP
#   request to the l7-http VIP started after a take-over succeeds, and a DICOM study sent during the first
#   fail-over arrives byte-identical; the old master returns as backup (preempt: false) and the drain holds;
# - lbctl ha standby hands the role over with no failed new connection on the l4-nat VIP; lbctl ha resume makes the
#   node backup again; a change made while a node is down reaches it when it returns; a reload adding a VIP
#   reaches keepalived without moving the role; lbd's SIGTERM releases every address and stops keepalived.
source "$(dirname "$0")/lib.sh"
dir="$PWD/.ipvs-vm-cache/pair"
rm -rf "$dir"; mkdir -p "$dir"
make_study "$dir/study" 4 1024
cp Tests/integration/vm/{pair.sh,echo-server.py,stream.py,loop.py,peer-datagram.py,announcements.py,whoami-server.py} "$dir/"
runs=${HA_RUNS:-5}
out=$(IPVS_VM_TIMEOUT=900 IPVS_VM_MEMORY=1536 scripts/ipvs-vm bash "$dir/pair.sh" "$bin" "$dir" "$runs" 2>&1) || true
echo "$out" > "$dir/out.txt"
section() { awk -v s="== $1" 'index($0, s) == 1 {on=1; next} /^== / {on=0} on' <<<"$out"; }
show() { echo "$out" | grep -vE '^== log|^[0-9]{4}-' | head -200; }
grep "wait timed out" <<<"$out" && { show; fail "a wait in the VM ran out"; }

start=$(section start)
m=$(awk '/^master / { print $2 }' <<<"$start"); b=$(awk '/^backup / { print $2 }' <<<"$start")
[ -n "$m" ] && [ -n "$b" ] || { show; fail "the pair did not elect a master"; }
for fact in "$m holds every VIP and floating address" "$b holds none" "$b listens on 10.0.0.41:80" "ipvsadm -Ln identical on both"; do
    holds -xF "$fact" <<<"$start" || { show; fail "at start: not \"$fact\""; }
done
section "daemons $b" | holds -E "master sync daemon .*eth0.*syncid=51" || { show; fail "no master sync daemon on $b"; }
section "daemons $b" | holds -E "backup sync daemon .*eth0.*syncid=51" || { show; fail "no backup sync daemon on $b"; }
section "status $m" | holds "^pair: this node $m is MASTER" || { show; fail "lbctl status on $m does not say master"; }
section "status $b" | holds "^pair: this node $b is BACKUP" || { show; fail "lbctl status on $b does not say backup"; }
section "status $b" | holds "^  peer $m (10.0.0.[23]): reachable, master" || { show; fail "lbctl status on $b does not show the peer"; }
section "status $b" | holds "configs: the same virtual services on both nodes" || { show; fail "lbctl status: configs not compared"; }

pinned=$(sed -nE 's/^cookie from lb-[12] pins to (rs[12])$/\1/p' <<<"$out")
[ -n "$pinned" ] || { show; fail "no persistence cookie from the master"; }
holds -E "^run 1: the cookie from lb-[12] is served by $pinned on lb-[12]$" <<<"$out" \
    || { show; fail "the persistence cookie did not survive the take-over (pinned to $pinned)"; }
echo "persistence cookie: pinned to $pinned by the master, the same server after the take-over"
drain=$(section drain)
# The node names as the drain step printed them (the step reads the roles itself).
followed=$(grep -oE "^drain on lb-[12] followed by lb-[12] in [0-9]+ ms" <<<"$drain" | grep -oE "[0-9]+ ms" || true)
[ -n "$followed" ] || { show; fail "the drain on one node did not reach the other"; }
[ "${followed% ms}" -le 2000 ] || fail "the drain took $followed to reach the other node (at most 2 s)"
holds -E "^  rs2 .* drain " <<<"$drain" || { show; fail "lbctl status on $b does not show rs2 drained"; }

refusals=$(section refusals)
for fact in "forged message refused and logged" "replayed message refused and logged" "the refused messages changed nothing"; do
    holds -xF "$fact" <<<"$refusals" || { show; fail "peer channel: not \"$fact\""; }
done

times=()
for run in $(seq $runs); do
    line=$(grep "^takeover run $run " <<<"$out" || true)
    [ -n "$line" ] || { show; fail "fail-over run $run did not happen"; }
    ms=$(sed -E 's/.*: ([0-9]+) ms.*/\1/' <<<"$line"); killed=$(sed -E 's/.*killed at ([0-9]+).*/\1/' <<<"$line")
    new=$(sed -E 's/.*ms, (lb-[12]) holds.*/\1/' <<<"$line")
    [ "$ms" -le 4000 ] || fail "run $run: the take-over took $ms ms (at most 3 × 1 s + 1 s)"
    times+=("$ms")
    # The gratuitous ARP from the new master, seen by the client.
    mac=$(awk '/^mac / { print $2 }' "$dir/garp$run.out")
    holds -x "garp 10.0.0.40 $mac" "$dir/garp$run.out" || { cat "$dir/garp$run.out"; fail "run $run: the client saw no gratuitous ARP for 10.0.0.40 from $new"; }
    # HTTP through the l7-http VIP: every request started after the take-over succeeded. For the client the
    # take-over is complete once the new master's address is in place and its gratuitous ARP for that VIP has
    # arrived (until then the client still sends to the old master's MAC).
    took=$(( killed + ms ))
    announced=$(awk -v m="$mac" '$1 == "at" && $3 == "garp" && $4 == "10.0.0.41" && $5 == m { print $2; exit }' "$dir/garp$run.out")
    [ -n "$announced" ] || { cat "$dir/garp$run.out"; fail "run $run: the client saw no gratuitous ARP for 10.0.0.41 from $new"; }
    [ "$announced" -gt "$took" ] && took=$announced
    late=$(awk -v t=$took '$1 > t && $2 != "ok"' "$dir/http$run.out" | wc -l)
    after=$(awk -v t=$took '$1 > t' "$dir/http$run.out" | wc -l)
    around=$(grep -c FAIL "$dir/http$run.out" || true)
    [ "$after" -gt 0 ] || { cat "$dir/garp$run.out"; tail -3 "$dir/http$run.out"; fail "run $run: no HTTP request after the take-over (complete at $took)"; }
    [ "$late" = 0 ] || { awk -v t=$took '$1 > t && $2 != "ok"' "$dir/http$run.out" | head -3; fail "run $run: $late HTTP requests failed after the take-over"; }
    echo "run $run: take-over $ms ms; HTTP: $(wc -l < "$dir/http$run.out") requests, $around failed before the take-over completed, 0 of $after after"
    holds -E "^run $run: lb-[12] is back as backup and holds nothing$" <<<"$out" || { show; fail "run $run: the old master did not return as backup"; }
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
echo "take-over times (ms): ${times[*]}; median $(sed -n "$(( (runs + 1) / 2 ))p" <<<"$sorted"), min $(head -1 <<<"$sorted"), max $(tail -1 <<<"$sorted")"

stream=$(grep "^stream " <<<"$out" || true)
holds "^stream ok" <<<"$stream" || { show; fail "the established l4-nat connection did not survive: ${stream:-no result}"; }
echo "$stream (through $runs fail-overs)"
holds -x "storescu exit 0" <<<"$out" || { cat "$dir/storescu.out"; fail "storescu failed during the fail-over"; }
python3 Tests/integration/compare-datasets.py "$dir/study" "$dir/rs1" "$dir/rs2" || fail "the DICOM study sent during the fail-over differs"

holds -E "^run 1: lb-[12] caught up with the drain made while it was down$" <<<"$out" || { show; fail "a node that was down did not catch up"; }
holds -E "^run 1: the online on lb-[12] reached lb-[12]$" <<<"$out" || { show; fail "the online did not reach the peer"; }
after=$(section after)
holds "^rs2 still drained on " <<<"$after" || { show; fail "the drain was lost in the fail-overs"; }

standby=$(section standby)
holds ": .* holds the VIPs$" <<<"$standby" || { show; fail "lbctl ha standby did not hand the role over"; }
counts=$(grep "^new connections during the hand-over" <<<"$standby")
holds ", 0 failed$" <<<"$counts" || { show; fail "connections failed during lbctl ha standby: $counts"; }
holds -E " [1-9][0-9]* ok," <<<"$counts" || fail "no connection was tried during lbctl ha standby"
echo "lbctl ha standby: $counts"
holds "^role of lb-[12]: fault$" <<<"$standby" || { show; fail "the node in standby is not in fault"; }
holds "^status on lb-[12] says standby$" <<<"$standby" || { show; fail "lbctl status does not show the standby"; }
holds "^resume on lb-[12]: backup, holds nothing$" <<<"$standby" || { show; fail "lbctl ha resume"; }
holds "^online on lb-[12] followed by lb-[12]$" <<<"$standby" || { show; fail "online did not reach the peer"; }

reload=$(section reload)
holds "holds the new VIP and .* does not$" <<<"$reload" || { show; fail "a reload adding a VIP did not reach keepalived"; }
holds "is still master after the reload$" <<<"$reload" || { show; fail "the reload moved the master role"; }
holds -x "configs match after the reload" <<<"$reload" || { show; fail "the configs do not match after reloading both"; }
stop=$(section stop)
for n in lb-1 lb-2; do holds -x "$n released every address on stop" <<<"$stop" || { show; fail "$n kept addresses after SIGTERM"; }; done
holds -x "no keepalived left" <<<"$stop" || fail "keepalived outlived lbd"
echo "high availability in the VM: passed"
