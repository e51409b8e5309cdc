#!/usr/bin/env bash
# The IPVS test harness itself, against the real kernel: scripts/ipvs-vm boots Debian's stock kernel, IPVS and its
# scheduler modules load on demand, ipvsadm programs a service that `ipvsadm -Ln` then shows exactly, the ipvs
# netfilter match works, and the guest command's exit status comes back to the host.
source "$(dirname "$0")/lib.sh"

out=$(scripts/ipvs-vm sh -c '
    ip link add lbt0 type dummy && ip addr add 10.0.1.254/24 dev lbt0 && ip link set lbt0 up &&
    ipvsadm -A -t 10.0.0.1:104 -s wlc -p 300 &&
    ipvsadm -a -t 10.0.0.1:104 -r 10.0.1.11:11112 -m -w 100 &&
    ipvsadm -a -t 10.0.0.1:104 -r 10.0.1.12:11112 -m -w 50 &&
    iptables -t nat -A POSTROUTING -m ipvs --vaddr 10.0.0.1 --vport 104 -j MASQUERADE &&
    ipvsadm -Ln && iptables -t nat -S POSTROUTING')
echo "$out"
grep -qE "^TCP  10\.0\.0\.1:104 wlc persistent 300" <<<"$out" || fail "service not as programmed"
grep -qE "^  -> 10\.0\.1\.11:11112 +Masq +100 " <<<"$out" || fail "first destination not as programmed"
grep -qE "^  -> 10\.0\.1\.12:11112 +Masq +50 " <<<"$out" || fail "second destination not as programmed"
grep -q -- "-m ipvs --vaddr 10.0.0.1/32 --vport 104 -j MASQUERADE\|-m ipvs --vaddr 10.0.0.1 --vport 104 -j MASQUERADE" <<<"$out" \
    || fail "ipvs match rule missing"

set +e
scripts/ipvs-vm sh -c 'exit 7'
status=$?
set -e
[ "$status" -eq 7 ] || fail "exit status $status, expected 7"
echo "ipvs-vm smoke: passed"
