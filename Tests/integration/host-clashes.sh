#!/usr/bin/env bash
# The host clash scan against real netfilter, in a network namespace of its own: lbd refuses to start beside a
# native nftables DNAT on its VIP port, beside host rules (nftables or iptables) that use lb's firewall mark, and
# beside policy routes that use lb's mark or routing table — each refusal names the rule, and nothing is applied
# (no VIP address, no LB-TPROXY chain, no policy rule). Then, with the host's iptables being the legacy variant
# and another program holding the xtables lock past iptables-restore's --wait, lbd tries again and starts.
source "$(dirname "$0")/lib.sh"
set +e
ns=lbh-$$
trap 'cleanup; ip netns del $ns 2>/dev/null' EXIT
in_ns() { ip netns exec $ns "$@"; }
ip netns add $ns || fail "cannot create a network namespace"
in_ns ip link set lo up
in_ns ip link add lan0 type veth peer name lan1 && in_ns ip link set lan1 up && in_ns ip link set lan0 up && in_ns ip addr add 10.9.5.1/24 dev lan0
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: Viewer-T
    vip: 10.9.5.10
    interface: lan0
    ports: [80]
    mode: l7-tcp
    transparent: true
    health_check: {type: connect, interval: 1s}
    real_servers: [{name: web-1, address: 10.9.6.11, port: 8080}]
YAML

# lbd must exit 1 on its own, naming the rule; the namespace must hold nothing of lb's afterwards.
refused() {  # description, expected text in the log
    local log="$work/refused.log"
    in_ns "$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" --state-dir "$work/state" \
        > "$log" 2>&1 & local lbd=$!
    for _ in $(seq 100); do kill -0 $lbd 2>/dev/null || break; sleep 0.1; done
    kill -0 $lbd 2>/dev/null && { kill $lbd; cat "$log" >&2; fail "$1: lbd is still running"; }
    wait $lbd; local status=$?
    [ $status -eq 1 ] || { cat "$log" >&2; fail "$1: lbd exited $status, not 1"; }
    grep -qF -- "$2" "$log" || { cat "$log" >&2; fail "$1: the refusal does not say: $2"; }
    in_ns ip -4 addr show dev lan0 | holds 10.9.5.10 && fail "$1: the VIP address was added"
    in_ns iptables-save 2>/dev/null | holds LB-TPROXY && fail "$1: LB-TPROXY was made"
    in_ns ip -4 rule show | holds "lookup 19522" && fail "$1: lb's policy rule was made"
    echo "refused: $1"
}

in_ns nft -f - <<'NFT' || fail "nft cannot load a ruleset"
table ip hostnat {
  chain pre {
    type nat hook prerouting priority -100;
    ip daddr 10.9.5.10 tcp dport 80 dnat to 10.9.6.99:80
  }
}
NFT
refused "native nftables DNAT on the VIP port" \
    'host rule "ip daddr 10.9.5.10 tcp dport 80 dnat to 10.9.6.99:80" (nftables table ip hostnat, chain pre) would redirect the VIP'"'"'s traffic before lb sees it'
in_ns nft delete table ip hostnat

in_ns nft -f - <<'NFT'
table inet marks {
  chain pre {
    type filter hook prerouting priority -150;
    meta mark set 0x4c42
  }
}
NFT
refused "nftables rule setting lb's mark" \
    'host rule "meta mark set 0x00004c42" (nftables table inet marks, chain pre) uses firewall mark 0x4c42'
in_ns nft delete table inet marks

in_ns iptables -t mangle -A OUTPUT -p tcp -j MARK --set-mark 0x4c42 || fail "iptables cannot add a rule"
refused "iptables rule setting lb's mark" 'host rule "-A OUTPUT -p tcp -j MARK --set-xmark 0x4c42/0xffffffff" (table mangle, chain OUTPUT) uses firewall mark 0x4c42'
in_ns iptables -t mangle -D OUTPUT -p tcp -j MARK --set-mark 0x4c42

in_ns ip -4 rule add fwmark 0x4c42 lookup 100 priority 500
refused "policy rule for lb's mark" 'host rule "500:	from all fwmark 0x4c42 lookup 100" (ip -4 rule) routes packets with lb'"'"'s firewall mark'
in_ns ip -4 rule del fwmark 0x4c42 lookup 100 priority 500

in_ns ip -4 route add 10.1.0.0/16 dev lan0 table 19522
refused "route in lb's routing table" 'host rule "10.1.0.0/16 dev lan0 scope link" (ip -4 route show table 19522) is a route in routing table 19522'
in_ns ip -4 route del 10.1.0.0/16 dev lan0 table 19522

# The legacy iptables variant, chosen for lbd by PATH as update-alternatives would for the whole host, with its
# lock file moved into the scratch folder (XTABLES_LOCKFILE) so only this test's programs contend for it.
mkdir -p "$work/legacy"
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s "$(command -v "${tool/tables/tables-legacy}")" "$work/legacy/$tool"
done
export XTABLES_LOCKFILE="$work/xtables.lock"
# The holder keeps the lock until lbd has logged its retry (then lets go), so the first attempt must fail.
flock "$XTABLES_LOCKFILE" sh -c "while [ ! -f '$work/release' ] && kill -0 $$ 2>/dev/null; do sleep 0.05; done" & holder=$!; pids+=($holder)
for _ in $(seq 100); do flock -n "$XTABLES_LOCKFILE" true || break; sleep 0.05; done
flock -n "$XTABLES_LOCKFILE" true && fail "the lock holder did not take the xtables lock"
PATH="$work/legacy:$PATH" ip netns exec $ns "$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" \
    --state-dir "$work/state" --cleanup-on-stop > "$work/lbd.log" 2>&1 & lbd=$!; pids+=($lbd)
for _ in $(seq 300); do
    grep -q "trying again" "$work/lbd.log" && break
    kill -0 $lbd 2>/dev/null || fail "lbd stopped while the xtables lock was held"
    sleep 0.1
done
grep -q "exit 4: .*xtables lock.*trying again (attempt 2 of 3)" "$work/lbd.log" || fail "no retry after exit status 4 was logged"
"$bin/lbctl" --socket "$work/lbd.sock" status >/dev/null 2>&1 && fail "lbd answered before its netfilter rules were in place"
touch "$work/release"
for _ in $(seq 100); do
    "$bin/lbctl" --socket "$work/lbd.sock" status >/dev/null 2>&1 && break
    kill -0 $lbd 2>/dev/null || fail "lbd stopped after the xtables lock was released"
    sleep 0.1
done
"$bin/lbctl" --socket "$work/lbd.sock" status >/dev/null 2>&1 || fail "lbd did not start after the xtables lock was released"
grep "trying again" "$work/lbd.log"
in_ns iptables-legacy -t mangle -S LB-TPROXY | holds -- "-s 10.9.6.11/32 -p tcp -m tcp --sport 8080 -m socket --transparent" \
    || fail "LB-TPROXY (legacy) does not hold the service's rule"
in_ns ip -4 rule show | holds "fwmark 0x4c42 lookup 19522" || fail "lb's policy rule missing"
kill -TERM $lbd; wait $lbd
in_ns iptables-legacy -t mangle -S 2>/dev/null | holds LB-TPROXY && fail "LB-TPROXY left after --cleanup-on-stop"
echo "host clash scan and xtables lock retry: passed"
