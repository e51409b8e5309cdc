#!/usr/bin/env bash
# lbctl against a running lbd over its real control socket, with real HTTP and TCP traffic on loopback:
# status (text and JSON); drain under load (0 failed requests, the drained server gets no new ones); drain keeps an
# established TCP connection working, halt closes it; online brings the server back; --server acts on every VIP
# that has it; overrides survive an lbd restart; a caller who is neither root nor in the control group is refused.
source "$(dirname "$0")/lib.sh"
set +e   # exit statuses are checked one by one below
lbctl() { "$bin/lbctl" --socket "$work/lbd.sock" "$@"; }
base=$((17000 + RANDOM % 800))
web=$base tcp=$((base + 1))
python3 scripts/demo-backend.py http node-1 $((base + 11)) & pids+=($!)
python3 scripts/demo-backend.py http node-2 $((base + 12)) & pids+=($!)
python3 scripts/demo-backend.py echo node-1 $((base + 21)) & pids+=($!)
python3 scripts/demo-backend.py echo node-2 $((base + 22)) & pids+=($!)
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: Viewer
    vip: 127.0.0.1
    ports: [$web]
    mode: l7-http
    health_check: {type: http-get, path: /, interval: 500ms, timeout: 400ms}
    real_servers:
      - {name: node-1, address: 127.0.0.1, port: $((base + 11))}
      - {name: node-2, address: 127.0.0.1, port: $((base + 12))}
  - name: DICOM
    vip: 127.0.0.1
    ports: [$tcp]
    mode: l7-tcp
    health_check: {type: connect, interval: 500ms, timeout: 400ms}
    real_servers:
      - {name: node-1, address: 127.0.0.1, port: $((base + 21))}
      - {name: node-2, address: 127.0.0.1, port: $((base + 22))}
YAML
start_lbd() {
    "$bin/lbd" --config "$work/lb.yaml" --threads 2 --socket "$work/lbd.sock" --state-dir "$work/state" \
        --metrics "127.0.0.1:$((base + 3))" >> "$work/lbd.log" 2>&1 &
    lbd=$!; pids+=($lbd)
    for _ in $(seq 100); do lbctl status >/dev/null 2>&1 && return; sleep 0.1; done
    fail "lbd's control socket did not answer"
}
start_lbd
# Every server reports "checking" until its first check passes: wait for that, not for a fixed time.
all_checked() { lbctl status --format json 2>/dev/null | python3 -c '
import json, sys
sys.exit(0 if all(r["health"] == "up" for s in json.load(sys.stdin) for r in s["servers"]) else 1)'; }
for _ in $(seq 100); do all_checked && break; sleep 0.1; done
all_checked || fail "the first checks did not pass: $(lbctl status)"

status=$(lbctl status) || fail "lbctl status failed"
echo "$status"
grep -qE "^Viewer +l7-http 127.0.0.1 +$web/tcp +up" <<<"$status" || fail "status: Viewer row"
grep -qE "^  node-2 +127.0.0.1:$((base + 12)) +up +up +online +100 " <<<"$status" || fail "status: node-2 row"
lbctl status --format json | python3 -c '
import json, sys
services = json.load(sys.stdin)
assert [s["name"] for s in services] == ["Viewer", "DICOM"], services
assert all(server["admin"] == "online" and server["health"] == "up" for s in services for server in s["servers"])
' || fail "status JSON"

# Drain under load: 400 keep-alive-free requests, node-2 drained after the first 100.
python3 - "$web" > "$work/load.txt" <<'PY' &
import sys, time, urllib.request
port = int(sys.argv[1])
for i in range(400):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            print(i, response.status, response.read().split(b"\n")[0].decode(), flush=True)
    except Exception as error:
        print(i, "FAILED", error, flush=True)
PY
load=$!
for _ in $(seq 200); do [ "$(wc -l < "$work/load.txt")" -ge 100 ] && break; sleep 0.05; done
lbctl drain Viewer node-2 | holds "node-2: drain in Viewer" || fail "drain did not confirm"
drained_at=$(wc -l < "$work/load.txt")
wait $load
failed=$(grep -c FAILED "$work/load.txt" || true)
[ "$failed" = 0 ] || fail "$failed requests failed during the drain"
[ "$(wc -l < "$work/load.txt")" = 400 ] || fail "load did not complete"
late=$(awk -v from=$((drained_at + 2)) '$1 >= from && $3 == "node-2"' "$work/load.txt" | wc -l)
[ "$late" = 0 ] || fail "node-2 got $late new requests after the drain"
echo "drain under load: 400 requests, 0 failed, node-2 none after request $drained_at"
grep -qE "^  node-2 .* drain +up +drain +0/100 " <<<"$(lbctl status Viewer)" || fail "status does not show the drain"

# Prometheus metrics show the same.
metrics=$(curl -s "http://127.0.0.1:$((base + 3))/metrics") || fail "no metrics endpoint"
grep -q '^lb_real_server_admin_online{service="Viewer",server="node-2"} 0' <<<"$metrics" || fail "metrics: drained node-2"
grep -q '^lb_real_server_healthy{service="Viewer",server="node-1"} 1' <<<"$metrics" || fail "metrics: health"
grep -q '^lb_real_server_state{service="Viewer",server="node-2",state="drain"} 1' <<<"$metrics" || fail "metrics: state of drained node-2"
grep -q '^lb_real_server_configured_weight{service="Viewer",server="node-2"} 100' <<<"$metrics" || fail "metrics: configured weight"
connections=$(awk -F' ' '/^lb_real_server_connections\{service="Viewer",server="node-1"\}/ { print int($2) }' <<<"$metrics")
[ "${connections:-0}" -ge 200 ] || fail "metrics: node-1 connections ($connections)"
grep -qE '^lb_health_check_seconds\{service="DICOM",server="node-2"\} [0-9.e-]+$' <<<"$metrics" || fail "metrics: check latency"
from=$(awk '/^lb_real_server_bytes_from_server\{service="Viewer",server="node-1"\}/ { print int($2) }' <<<"$metrics")
[ "${from:-0}" -gt 10000 ] || fail "metrics: bytes from node-1 ($from)"

# An established TCP connection to the server being drained keeps working; halt closes it.
python3 - "$tcp" "$work" <<'PY' > "$work/tcp.txt" &
import socket, sys, time, os
port, work = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port)); s.settimeout(10)
print("greeting", s.recv(100).decode().strip(), flush=True)
open(f"{work}/tcp-ready", "w").close()
while not os.path.exists(f"{work}/tcp-drained"): time.sleep(0.05)
s.sendall(b"still here\n"); print("after drain", s.recv(100).decode().strip(), flush=True)
open(f"{work}/tcp-echoed", "w").close()
data = s.recv(100)
print("after halt", "closed" if data == b"" else data, flush=True)
PY
held=$!
for _ in $(seq 100); do [ -f "$work/tcp-ready" ] && break; sleep 0.05; done
server=$(awk '/greeting/ { print $4 }' "$work/tcp.txt")
[ -n "$server" ] || fail "no TCP greeting"
lbctl drain DICOM "$server" >/dev/null || fail "drain DICOM $server"
touch "$work/tcp-drained"
for _ in $(seq 100); do [ -f "$work/tcp-echoed" ] && break; sleep 0.05; done
for i in 1 2 3; do
    greeting=$(python3 -c "import socket; s = socket.create_connection(('127.0.0.1', $tcp)); print(s.recv(100).decode().strip())")
    [ "$greeting" = "hello from $server" ] && fail "a new TCP connection went to drained $server"
done
lbctl halt DICOM "$server" >/dev/null || fail "halt DICOM $server"
wait $held
cat "$work/tcp.txt"
grep -q "after drain still here" "$work/tcp.txt" || fail "the established connection stopped working on drain"
grep -q "after halt closed" "$work/tcp.txt" || fail "halt did not close the established connection"

# Overrides survive a restart.
kill -TERM $lbd; wait $lbd
start_lbd
grep -qE "^  node-2 .* drain " <<<"$(lbctl status Viewer)" || fail "the drain did not survive the restart"
grep -qE "^  $server .* halt " <<<"$(lbctl status DICOM)" || fail "the halt did not survive the restart"
for i in 1 2 3 4; do curl -s "http://127.0.0.1:$web/" | head -1; done | holds node-2 && fail "drained node-2 served after restart"

# --server: one node, every VIP.
lbctl online --server node-2 | holds "node-2: online in Viewer, DICOM" || fail "online --server"
lbctl online DICOM "$server" >/dev/null
both_serve() { [ "$(for i in 1 2 3 4; do curl -s "http://127.0.0.1:$web/" | head -1; done | sort -u | wc -l)" = 2 ]; }
wait_until both_serve || fail "node-2 not back"
lbctl drain --server node-1 >/dev/null
grep -qE "^  node-1 .* drain " <<<"$(lbctl status DICOM)" || fail "drain --server missed DICOM"
lbctl online --server node-1 >/dev/null

# Reload: an invalid file changes nothing and lbctl prints where the error is; a valid one applies the difference.
cp "$work/lb.yaml" "$work/lb.good"
sed -i 's/    mode: l7-tcp/    mode: l7-tcp\n    weigth: 5/' "$work/lb.yaml"
out=$(lbctl reload 2>&1); rc=$?
[ $rc = 1 ] && grep -qE "lb.yaml:[0-9]+:5: error: .*unknown key \"weigth\"" <<<"$out" && grep -q "nothing changed" <<<"$out" \
    || fail "an invalid reload must print file:line and change nothing ($rc: $out)"
cp "$work/lb.good" "$work/lb.yaml"
cat >> "$work/lb.yaml" <<YAML
  - name: Extra
    vip: 127.0.0.1
    ports: [$((base + 2))]
    mode: l7-http
    health_check: {type: none}
    real_servers: [{name: node-1, address: 127.0.0.1, port: $((base + 11))}]
YAML
out=$(lbctl reload) || fail "reload failed: $out"
grep -q "reload: 1 service(s) added or changed, 0 removed" <<<"$out" || fail "reload summary: $out"
curl -s "http://127.0.0.1:$((base + 2))/" | head -1 | holds node-1 || fail "the reloaded service does not serve"
cp "$work/lb.good" "$work/lb.yaml"
kill -HUP $lbd
for _ in $(seq 50); do grep -q "SIGHUP: reload: 0 service(s) added or changed, 1 removed" "$work/lbd.log" && break; sleep 0.1; done
grep -q "SIGHUP: reload: 0 service(s) added or changed, 1 removed" "$work/lbd.log" || fail "SIGHUP did not reload"
curl -s --max-time 2 "http://127.0.0.1:$((base + 2))/" >/dev/null && fail "the removed service still serves"

# Mode switch, live: Viewer from l7-http to l7-tcp and back while a client keeps requesting.
python3 - "$web" > "$work/mode-load.txt" <<'PY' &
import sys, time, urllib.request
port, end = int(sys.argv[1]), time.time() + 4
while time.time() < end:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            print(response.status, response.read().split(b"\n")[0].decode(), flush=True)
    except Exception as error:
        print("FAILED", error, flush=True)
    time.sleep(0.02)
PY
modeload=$!
# Each switch happens while requests flow: at least ten answered before it, ten more before the next.
answered_at_least() {
    wait_until "[ \$(wc -l < '$work/mode-load.txt') -ge $1 ]" || fail "the load stopped: $(wc -l < "$work/mode-load.txt") requests"
}
answered_at_least 10
out=$(lbctl mode Viewer l7-tcp) || fail "mode switch failed: $out"
grep -q "Viewer: l7-http → l7-tcp" <<<"$out" || fail "mode switch message: $out"
grep -A3 "name: Viewer" "$work/lb.yaml" | holds "mode: l7-tcp" || fail "the config file was not updated"
grep -A3 "name: Viewer" "$work/lb.yaml.bak" | holds "mode: l7-http" || fail "the previous config was not kept as .bak"
grep -qE "^Viewer +l7-tcp " <<<"$(lbctl status Viewer)" || fail "status does not show the new mode"
answered_at_least $(( $(wc -l < "$work/mode-load.txt") + 10 ))
lbctl mode Viewer l7-http >/dev/null || fail "switching back failed"
wait $modeload
total=$(wc -l < "$work/mode-load.txt"); failed=$(grep -c FAILED "$work/mode-load.txt")
echo "mode switch under load: $total requests, $failed failed"
[ "$total" -gt 20 ] && [ "$failed" = 0 ] || fail "the mode switch lost requests ($failed of $total)"
out=$(lbctl mode Viewer l4-dr 2>&1); rc=$?
[ $rc = 1 ] && grep -q "nothing changed" <<<"$out" || fail "an impossible mode switch must be refused ($rc: $out)"

# Errors: unknown names; a peer that is neither root nor in the control group.
out=$(lbctl drain Viewer node-9 2>&1); rc=$?
[ $rc = 1 ] && grep -q 'no real server named "node-9" in "Viewer"' <<<"$out" || fail "unknown server not reported ($rc: $out)"
out=$(lbctl drain Nope node-1 2>&1); rc=$?
[ $rc = 1 ] && grep -q 'no virtual service named "Nope"' <<<"$out" || fail "unknown service not reported ($rc: $out)"
chmod 755 "$work"; chmod 666 "$work/lbd.sock"   # let the file through, so the peer check itself is tested
out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$bin/lbctl" --socket "$work/lbd.sock" status 2>&1); rc=$?
[ $rc = 1 ] && grep -q "permission denied" <<<"$out" || fail "a non-root peer was not refused ($rc: $out)"
grep -q "uid=65534 .*control request refused" "$work/lbd.log" || fail "the refusal was not logged"
kill -TERM $lbd; wait $lbd || fail "lbd did not stop cleanly"

# A control group: its members may use the socket (mode 0660, group-owned), others still may not.
"$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" --state-dir "$work/state" \
    --control-group nogroup >> "$work/lbd.log" 2>&1 & lbd=$!; pids+=($lbd)
for _ in $(seq 100); do lbctl status >/dev/null 2>&1 && break; sleep 0.1; done
[ "$(stat -c '%a %G' "$work/lbd.sock")" = "660 nogroup" ] || fail "socket mode with a control group: $(stat -c '%a %G' "$work/lbd.sock")"
setpriv --reuid=65534 --regid=65534 --clear-groups "$bin/lbctl" --socket "$work/lbd.sock" status >/dev/null \
    || fail "a member of the control group was refused"
out=$(setpriv --reuid=1 --regid=1 --clear-groups "$bin/lbctl" --socket "$work/lbd.sock" status 2>&1); rc=$?
[ $rc = 1 ] || [ $rc = 2 ] || fail "a caller outside the group must be refused ($rc: $out)"
kill -TERM $lbd; wait $lbd || fail "lbd did not stop cleanly"
echo "lbctl against a running lbd: passed"
