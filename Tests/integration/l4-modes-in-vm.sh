#!/usr/bin/env bash
# lbd with the three Layer 4 modes on a real kernel (scripts/ipvs-vm) and a real topology in network namespaces:
# a client on one bridge, real servers on another, the VM's own namespace as the load balancer.
# - lbd adds the VIP addresses (rtnetlink) and announces them (gratuitous ARP, unsolicited NA: captured by the
#   client), programs IPVS (an IPv6 service too; a hand-made service is reported and left alone) (checked with ipvsadm -Ln), sets the configured IPVS
#   timeouts, and fills its LB-SNAT chain for the l4-snat service;
# - real HTTP traffic flows in each mode: NAT (real servers see the client), SNAT (the real server has no route
#   back and sees the load balancer), DR (the VIP on the real servers' loopback); the --stats counters move;
# - a killed real server is drained to weight 0 (NAT) or removed (DR, on_server_failure: remove), traffic goes on
#   on the other, and it comes back when it answers again;
# - a server that is down when a reload changes its service gets its weight back when it recovers;
# - a reload that fails at the netfilter step (the kernel refuses to delete LB-SNAT while an operator's rule uses
#   it) rolls back whole: ipvsadm -Ln, iptables-save and ip addr are byte-identical to before;
# - dropping the SNAT service from the config removes its IPVS service, its rules and its VIP address;
# - a pre-existing DNAT rule on a VIP port makes lbd refuse to start, leaving the kernel exactly as it was.
source "$(dirname "$0")/lib.sh"
dir="$PWD/.ipvs-vm-cache/l4-modes"
rm -rf "$dir"; mkdir -p "$dir"
cp Tests/integration/vm/*.py Tests/integration/vm/l4-modes.sh Tests/integration/vm/topology.sh "$dir/"
out=$(IPVS_VM_TIMEOUT=400 scripts/ipvs-vm bash "$dir/l4-modes.sh" "$bin" "$dir" 2>&1) || true
echo "$out"
grep "^wait timed out" <<<"$out" && fail "a wait in the VM ran out"
section() { awk -v s="== $1" '$0 == s {on=1; next} /^== / {on=0} on' <<<"$out"; }

start=$(section start)
grep -q "TCP  10.0.0.40:80 rr" <<<"$start" || fail "NAT service not programmed"
grep -qE -- "-> 10\.0\.1\.11:8080 +Masq +100 " <<<"$start" || fail "NAT destination missing"
grep -q "TCP  10.0.0.42:80 rr persistent 60 mask 255.255.255.0" <<<"$start" || fail "DR service with persistence netmask not programmed"
grep -qE -- "-> 10\.0\.1\.12:80 +Route +100 " <<<"$start" || fail "DR destination missing"
grep -q "Timeout (tcp tcpfin udp): 1800 60 120" <<<"$(section timeouts)" || fail "IPVS timeouts not set"
grep -q "TCP  \[2001:db8::40\]:80 rr" <<<"$start" || fail "IPv6 service not programmed"
[ "$(section hand-made | tr '\n' ' ')" = "1 1 " ] || fail "a hand-made IPVS service must be reported and left alone"
announcements=$(section announcements)
mac=$(awk '/^br-c / { print $2 }' <<<"$announcements")
for vip in 10.0.0.40 10.0.0.41 10.0.0.42; do
    grep -q "^garp $vip $mac$" <<<"$announcements" || fail "no gratuitous ARP for $vip from the load balancer ($mac)"
done
grep -q "^na 2001:db8::40 $mac$" <<<"$announcements" || fail "no unsolicited neighbour advertisement for 2001:db8::40"
for vip in 10.0.0.40 10.0.0.41 10.0.0.42; do grep -q "inet $vip/32" <<<"$(section addresses)" || fail "VIP $vip not added"; done
grep -qE -- "-A LB-SNAT -d 10.0.1.13/32 -p tcp -m tcp --dport 8080 -m ipvs --vaddr 10.0.0.41(/32)? --vport 80 .*-j MASQUERADE" <<<"$(section chain)" \
    || fail "LB-SNAT rule missing"
grep -q -- "-j LB-SNAT" <<<"$(section chain)" || fail "jump to LB-SNAT missing"

nat=$(section nat)
[ "$(grep -c '^rs1 10.0.0.100$' <<<"$nat")" -ge 3 ] && [ "$(grep -c '^rs2 10.0.0.100$' <<<"$nat")" -ge 3 ] \
    || fail "NAT: expected both servers, seeing the client's own address: $nat"
[ "$(grep -c '^rs3 10.0.1.1$' <<<"$(section snat)")" = 4 ] || fail "SNAT: rs3 must see the load balancer's address"
dr=$(section dr)
[ "$(grep -cE '^rs[12] 10.0.0.100$' <<<"$dr")" = 4 ] || fail "DR: the real servers must answer, seeing the client"
[ "$(sort -u <<<"$dr" | wc -l)" = 1 ] || fail "DR: source-IP persistence must keep the client on one server"
stats=$(section stats)
for vip in 10.0.0.40:80 10.0.0.41:80; do
    value=$(grep -o "lb_ipvs_connections{virtual_service=\"$vip/tcp\"} [0-9.e+]*" <<<"$stats" | awk '{ print int($2) }' || true)
    [ "${value:-0}" -gt 0 ] || fail "the metrics endpoint does not show IPVS connections for $vip"
done
for vip in 10.0.0.40:80 10.0.0.41:80 10.0.0.42:80; do
    conns=$(awk -v v="$vip" '$2 == v { print $3 }' <<<"$stats")
    [ "${conns:-0}" -gt 0 ] || fail "ipvsadm --stats shows no connections for $vip"
done

down=$(section "rs2 down")
grep -qE -- "-> 10\.0\.1\.12:8080 +Masq +0 " <<<"$down" || fail "NAT: failed rs2 not drained to weight 0"
grep -q -- "-> 10.0.1.12:80 " <<<"$down" && fail "DR: failed rs2 not removed (on_server_failure: remove)"
[ "$(grep -c '^rs1 10.0.0.100$' <<<"$(section 'nat after')")" = 6 ] || fail "NAT: traffic did not continue on rs1"
back=$(section "rs2 back")
grep -qE -- "-> 10\.0\.1\.12:8080 +Masq +100 " <<<"$back" || fail "NAT: rs2 did not get its weight back"
grep -qE -- "-> 10\.0\.1\.12:80 +Route +100 " <<<"$back" || fail "DR: rs2 did not come back"
operator=$(section operator)
held=$(awk '/^held connection to/ { print $4 }' <<<"$operator")
[ -n "$held" ] || fail "no held connection through the NAT VIP"
grep -qE -- "-> 10\.0\.1\.1[12]:8080 +Masq +0 " <<<"$operator" || fail "lbctl drain did not set weight 0 in IPVS"
grep -q "new connections went to: $([ "$held" = rs1 ] && echo rs2 || echo rs1) $" <<<"$operator" || fail "new connections reached the drained server"
grep -qE "^  $held .* drain +0/100 " <<<"$operator" || fail "lbctl status does not show the drain"
for step in step1 step2 step3; do
    grep -q "^$step $held 10.0.0.100$" <<<"$operator" || fail "the held connection failed at $step (drain, kill -9, restart)"
done
grep -q "services: 5" <<<"$operator" || fail "the restarted lbd duplicated or dropped IPVS services"
[ "$(grep -A1 '^step3 ' <<<"$operator" | tail -1)" = 1 ] || fail "the restarted lbd did not repair exactly the deleted destination"
grep -q "Viewer-DR: drain\|rs2: halt in Viewer-DR" <<<"$operator" || fail "lbctl halt did not confirm"
after_halt=$(awk '/^after halt:/ {on=1; next} /^rs2: online/ {on=0} on' <<<"$operator")
grep -q "10.0.1.12:80 " <<<"$after_halt" && fail "halt did not remove the DR destination"
after_online=$(awk '/^after online:/ {on=1; next} on' <<<"$operator")
grep -qE -- "-> 10\.0\.1\.12:80 +Route +100 " <<<"$after_online" || fail "online did not bring rs2 back to DR"
grep -qE -- "-> 10\.0\.1\.1[12]:8080 +Masq +0 " <<<"$after_online" && fail "online did not restore the NAT weight"
mode=$(section "mode switch")
grep -q "ipvs before: 0" <<<"$mode" || fail "Mover must start in the proxy"
grep -qE -- "-> 10\.0\.1\.11:8080 +Masq +100 " <<<"$mode" || fail "lbctl mode l4-nat did not program IPVS"
grep -q "file: mode: l4-nat" <<<"$mode" && grep -q "file: mode: l7-tcp" <<<"$mode" || fail "the config file did not follow the mode"
grep -q "ipvs after: 0" <<<"$mode" || fail "switching back did not remove the IPVS service"
read -r _ total _ failed _ proxied _ kernel <<<"$(grep '^requests' <<<"$mode")"
echo "mode switch: $total requests, $failed failed, $proxied through the proxy, $kernel through IPVS"
[ "$failed" = 0 ] && [ "$proxied" -ge 2 ] && [ "$kernel" -ge 2 ] \
    || fail "the VIP was not served throughout the mode switch: $(grep -E 'FAILED|^to l|^done at' <<<"$mode")"
drift=$(section drift)
grep -q "services: 4 address: 1 snat: 1" <<<"$drift" || fail "drift (ipvsadm -C, ip addr del, iptables -F LB-SNAT) not repaired: $drift"
repairs=$(awk '/^repairs:/ { print $2 }' <<<"$drift")
[ "${repairs:-0}" -ge 2 ] && [ "${repairs:-0}" -le 3 ] || fail "repairs must be logged once each (IPVS, netfilter; the address as restored): $repairs"
recover=$(section "reload then recover")
grep -q "reload: 1 service(s) added or changed" <<<"$recover" || fail "the reload did not change Viewer-NAT: $recover"
grep -A5 "after reload:" <<<"$recover" | holds -E -- "-> 10\.0\.1\.12:8080 +Masq +0 " || fail "rs2 must stay at weight 0 across the reload while down"
grep -A5 "after reload:" <<<"$recover" | holds -E -- "-> 10\.0\.1\.11:8080 +Masq +50 " || fail "the reload did not set rs1's weight"
grep -A5 "after recovery:" <<<"$recover" | holds -E -- "-> 10\.0\.1\.12:8080 +Masq +100 " || fail "rs2 recovered after the reload but IPVS did not get its weight back: $recover"
grep -qE "^  rs2 .* up +online +100 " <<<"$recover" || fail "status does not show rs2 back: $recover"
failed_reload=$(section "failed reload")
grep -q "reload exited 1" <<<"$failed_reload" || fail "the reload that cannot delete LB-SNAT must fail: $failed_reload"
grep -q "failed at netfilter" <<<"$failed_reload" && grep -q "rolled back, nothing changed" <<<"$failed_reload" \
    || fail "the failed reload must name its step and roll back: $failed_reload"
grep -q "kernel unchanged" <<<"$failed_reload" || fail "the failed reload left the kernel changed: $failed_reload"
grep -qE "^  rs2 .* online +100 " <<<"$failed_reload" || fail "status must still show the old weight: $failed_reload"
grep -q "netfilter retries: 0" <<<"$failed_reload" || fail "a chain still in use must not be tried again: $failed_reload"
grep -q "lbd exited 0" <<<"$(section stop)" || fail "lbd did not stop cleanly"
[ "$(section stopped | tail -1)" = 4 ] || fail "IPVS services must stay when lbd stops (lbd's 4; the hand-made one went with ipvsadm -C)"

nosnat=$(section "without SNAT")
grep -q "10.0.0.41" <<<"$(grep '^TCP' <<<"$nosnat")" && fail "the removed SNAT service is still in IPVS"
grep -q "chain: 0" <<<"$nosnat" || fail "LB-SNAT chain not removed with the last SNAT service"
grep -q "address 10.0.0.41: 0" <<<"$nosnat" || fail "the SNAT VIP address lbd added was not removed"

conflict=$(section conflict)
grep -q "lbd exited 1" <<<"$conflict" || fail "lbd started despite a clashing DNAT rule"
grep -q "kernel unchanged" <<<"$conflict" || fail "the refused start changed the kernel"
grep -q 'virtual service "Viewer-SNAT" (10.0.0.41:80/tcp): host rule "-A PREROUTING -d 10.0.0.41/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.1.99:80"' <<<"$conflict" \
    || fail "the refusal does not name the clashing rule"
cleanup=$(section "cleanup on stop")
grep -q "lbd exited 0" <<<"$cleanup" || fail "lbd --cleanup-on-stop did not stop cleanly"
grep -q "services left: TCP 10.0.0.98:80 rr;$" <<<"$cleanup" || fail "cleanup must remove lbd's IPVS services and only those: $cleanup"
grep -q "chain left: 0" <<<"$cleanup" || fail "cleanup left the LB-SNAT chain"
grep -q "addresses left: 0" <<<"$cleanup" || fail "cleanup left VIP addresses lbd added"
echo "Layer 4 modes through lbd and IPVS: passed"
