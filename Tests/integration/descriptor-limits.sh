#!/usr/bin/env bash
# Descriptors: lbd raises its soft RLIMIT_NOFILE to the hard limit; at the limit it pauses accepting (no busy loop,
# one log line per interval) and recovers when clients leave; refusals at max_connections are logged at a bounded
# rate.
source "$(dirname "$0")/lib.sh"
port=$((17800 + RANDOM % 800))
python3 scripts/demo-backend.py http web-1 "$((port + 9))" & pids+=($!)
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: web
    vip: 127.0.0.1
    ports: [$port]
    mode: l7-http
    health_check: {type: none}
    real_servers: [{name: web-1, address: 127.0.0.1, port: $((port + 9))}]
  - name: small
    vip: 127.0.0.1
    ports: [$((port + 1))]
    mode: l7-http
    limits: {max_connections: 2}
    health_check: {type: none}
    real_servers: [{name: web-1, address: 127.0.0.1, port: $((port + 9))}]
YAML
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$((port + 9))/" >/dev/null && break; sleep 0.1; done
start_lbd() {  # SOFT HARD: lbd under these descriptor limits; sets lbd_pid
    ( ulimit -Sn "$1"; ulimit -Hn "$2"; exec "$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" \
        --state-dir "$work/state" ) > "$work/lbd.log" 2>&1 &
    lbd_pid=$!
    pids+=("$lbd_pid")
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && return 0; sleep 0.1; done
    fail "lbd does not serve"
}
stop_lbd() { kill "$lbd_pid"; wait "$lbd_pid" 2>/dev/null || true; }

start_lbd 256 4096
soft=$(awk '/^Max open files/ {print $4}' "/proc/$lbd_pid/limits")
[ "$soft" = 4096 ] || fail "soft descriptor limit is $soft, not the hard limit 4096"
echo "soft limit 256 raised to the hard limit: $soft"

# 60 clients against a limit of 2: every refusal is real, the log holds one line for the interval.
python3 - "$((port + 1))" "$work" <<'PY' &
import os, socket, sys, time
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(60)]
deadline = time.time() + 10
while not os.path.exists(f"{sys.argv[2]}/release") and time.time() < deadline:
    time.sleep(0.05)
PY
holders=$!
for _ in $(seq 100); do grep -q "connection refused: limit reached" "$work/lbd.log" && break; sleep 0.1; done
touch "$work/release"; wait $holders
lines=$(grep -c "connection refused: limit reached" "$work/lbd.log" || true)
[ "$lines" -ge 1 ] && [ "$lines" -le 2 ] || fail "$lines refusal lines for 58 refusals"
echo "58 refusals at max_connections: $lines log line(s)"
stop_lbd

# At the descriptor limit: clients hold every descriptor lbd can open.
start_lbd 64 64
cpu() { awk '{print $14 + $15}' "/proc/$lbd_pid/stat"; }
python3 - "$port" "$work" > "$work/flood.out" <<'PY' &
import os, socket, sys, time
port, work = int(sys.argv[1]), sys.argv[2]
held = []
for _ in range(120):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
    except OSError:
        break
print(len(held), flush=True)
deadline = time.time() + 15   # held until the script has measured (bounded)
while not os.path.exists(f"{work}/flood-done") and time.time() < deadline:
    time.sleep(0.05)
PY
flood=$!
# The clients have connected (the backlog takes what lbd cannot accept) once the flood reports its count.
for _ in $(seq 100); do [ -s "$work/flood.out" ] && break; sleep 0.1; done
[ -s "$work/flood.out" ] || fail "the flood did not connect"
before=$(cpu)
sleep 2   # the measurement window: lbd's CPU over two seconds at the limit (not a wait for anything)
after=$(cpu)
ticks=$((after - before))
hz=$(getconf CLK_TCK)
echo "lbd used $ticks ticks of CPU in 2 s at the descriptor limit (busy loop: $((2 * hz)))"
[ "$ticks" -lt $((2 * hz / 5)) ] || fail "lbd spins at the descriptor limit ($ticks ticks in 2 s)"
lines=$(grep -c "not accepting for" "$work/lbd.log" || true)
[ "$lines" -eq 1 ] || fail "$lines 'not accepting' lines in 3 s (one per 10 s expected)"
grep "not accepting for" "$work/lbd.log" | holds "descriptor_limit=64" || fail "the log line does not give the limit"
touch "$work/flood-done"; wait "$flood"
echo "clients held: $(cat "$work/flood.out"); one log line: $(grep -o 'not accepting for.*' "$work/lbd.log" | head -1)"
# The clients are gone: lbd accepts again.
for _ in $(seq 50); do curl -sf --max-time 2 "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.2; done
curl -sf --max-time 2 "http://127.0.0.1:$port/" >/dev/null || fail "lbd did not recover after the clients left"
echo "descriptor limits: passed"
