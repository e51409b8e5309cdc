#!/usr/bin/env bash
# lbd's systemd readiness protocol against a listening NOTIFY_SOCKET (what systemd does for Type=notify):
# READY=1 arrives once, and at that moment the VIP port, the status/metrics port and the control socket all answer;
# `lbctl reload` and SIGHUP are each wrapped in RELOADING=1 (with MONOTONIC_USEC) and READY=1; WATCHDOG=1 comes at
# half of WATCHDOG_USEC; SIGTERM sends STOPPING=1. Then the unit file is checked with systemd-analyze verify.
source "$(dirname "$0")/lib.sh"
base=$((21000 + RANDOM % 800))
vip=$base http=$((base + 1)) backend=$((base + 11))
python3 scripts/demo-backend.py http node-1 $backend & pids+=($!)
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: Viewer
    vip: 127.0.0.1
    ports: [$vip]
    mode: l7-http
    health_check: {type: http-get, path: /, interval: 500ms, timeout: 400ms}
    real_servers:
      - {name: node-1, address: 127.0.0.1, port: $backend}
YAML
python3 Tests/integration/notify-listener.py "$work/notify.sock" "$work/notify.log" $vip $http & pids+=($!)
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: polls the condition every 50 ms
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 20))); do "$@" && return 0; sleep 0.05; done
    cat "$work/notify.log" >&2; fail "$what"
}
count() { grep -c -- "$1" "$work/notify.log" || true; }
at_least() { [ "$(count "$1")" -ge "$2" ]; }  # at_least PATTERN N: N lines of the log match
wait_for 5 "the notify listener did not start" grep -qs listening "$work/notify.log"

NOTIFY_SOCKET="$work/notify.sock" WATCHDOG_USEC=400000 "$bin/lbd" --config "$work/lb.yaml" --threads 1 \
    --socket "$work/lbd.sock" --state-dir "$work/state" --metrics "127.0.0.1:$http" > "$work/lbd.log" 2>&1 &
lbd=$!; pids+=($lbd)
wait_for 20 "no READY=1 from lbd" grep -q "READY=1" "$work/notify.log"
wait_for 5 "the listener did not probe the ports" grep -q "probe $http" "$work/notify.log"
grep -q "probe $vip open" "$work/notify.log" || fail "READY=1 came before the VIP port $vip accepted connections"
grep -q "probe $http open" "$work/notify.log" || fail "READY=1 came before the metrics port $http accepted connections"
# The control socket answered before READY=1 was sent too: lbctl works as soon as systemd reports the unit started.
"$bin/lbctl" --socket "$work/lbd.sock" status > /dev/null || fail "control socket not answering after READY=1"
[ "$(count 'READY=1')" = 1 ] || fail "READY=1 sent more than once at start"
grep -q "STATUS=starting" "$work/notify.log" || fail "no STATUS while starting"
echo "READY=1 after the VIP, metrics and control listeners were bound"

# Watchdog: WATCHDOG_USEC=400000 asks for a ping at least every 400 ms; lbd pings every 200 ms.
wait_for 5 "fewer than 5 WATCHDOG=1 pings" at_least 'WATCHDOG=1' 5
first=$(grep -m1 'WATCHDOG=1' "$work/notify.log" | cut -d' ' -f1)
fifth=$(grep 'WATCHDOG=1' "$work/notify.log" | sed -n 5p | cut -d' ' -f1)
python3 -c "import sys; gap=(float(sys.argv[2])-float(sys.argv[1]))/4; print(f'watchdog every {gap*1000:.0f} ms'); sys.exit(0 if 0.1 <= gap <= 0.4 else 1)" \
    "$first" "$fifth" || fail "watchdog pings not at half of WATCHDOG_USEC"

# lbctl reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
"$bin/lbctl" --socket "$work/lbd.sock" reload > /dev/null || fail "lbctl reload failed"
wait_for 5 "no READY=1 after lbctl reload" at_least 'READY=1' 2
grep -qE 'RELOADING=1,MONOTONIC_USEC=[0-9]+' "$work/notify.log" || fail "RELOADING=1 without MONOTONIC_USEC"
grep -vE 'WATCHDOG|^probe' "$work/notify.log" | grep -A1 'RELOADING=1' | tail -1 | holds 'READY=1' \
    || fail "RELOADING=1 not followed by READY=1"
# SIGHUP: the same.
kill -HUP $lbd
wait_for 5 "no READY=1 after SIGHUP" at_least 'READY=1' 3
[ "$(count 'RELOADING=1')" = 2 ] || fail "expected two RELOADING=1 (lbctl reload, SIGHUP)"
echo "RELOADING=1 / READY=1 around lbctl reload and SIGHUP"

# SIGTERM: STOPPING=1 before lbd exits.
kill -TERM $lbd
wait $lbd || fail "lbd did not exit cleanly"
grep -q "STOPPING=1" "$work/notify.log" || fail "no STOPPING=1 on SIGTERM"
echo "STOPPING=1 on SIGTERM"

# Without NOTIFY_SOCKET nothing changes: lbd starts and answers as before (the other scripts run it so).
unit=scripts/systemd/lbd.service
if command -v systemd-analyze > /dev/null; then
    # verify resolves ExecStart: point it at the binaries just built.
    sed -e "s#/usr/sbin/lbd#$bin/lbd#g" -e "s#/usr/bin/lbctl#$bin/lbctl#g" "$unit" > "$work/lbd.service"
    # Documentation= names the man pages: verify runs man on each, here against the work tree's pages.
    mkdir -p "$work/man/man5" "$work/man/man8"
    cp man/*.8 "$work/man/man8/"; cp man/*.5 "$work/man/man5/"
    verify=$(MANPATH="$work/man" systemd-analyze verify "$work/lbd.service" 2>&1) || { echo "$verify" >&2; fail "systemd-analyze verify failed"; }
    [ -z "$verify" ] || { echo "$verify" >&2; fail "systemd-analyze verify is not clean"; }
    echo "systemd-analyze verify: clean"
else
    fail "systemd-analyze missing (scripts/setup test installs systemd)"
fi
echo "systemd notify: passed"
