#!/usr/bin/env bash
# lb's IPVS netlink client against the real kernel, inside scripts/ipvs-vm: the Swift suite IPVSKernelTests
# programs services and destinations, reads them back by dump, and compares with `ipvsadm -Ln`.
source "$(dirname "$0")/lib.sh"
tests="$bin/lbPackageTests.xctest"
[ -x "$tests" ] || fail "build the tests first (swift build --build-tests)"
# Real-server addresses must be routable unicast for IPVS to accept them: a dummy link gives them a route.
scripts/ipvs-vm sh -c "ip link add lbt0 type dummy && ip addr add 10.0.1.254/24 dev lbt0 && ip link set lbt0 up &&
    LB_IPVS_KERNEL=1 $tests --testing-library swift-testing --filter IPVSKernelTests" | tee "$work/out"
grep -qE "Test run with [0-9]+ tests? in 1 suite passed" "$work/out" || fail "the kernel suite did not pass"
echo "IPVS netlink against the kernel: passed"
