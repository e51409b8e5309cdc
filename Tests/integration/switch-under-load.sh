#!/usr/bin/env bash
# Listening sockets are kept: a live l7-http → l7-tcp → l7-http switch, ten times, and ten reloads that change a
# weight, each under a bounded load of short connections (a new connection per request, four clients at once), lose
# no connection. ROUNDS (default 5) repeats the whole run; every round's counts are printed.
source "$(dirname "$0")/lib.sh"
rounds=${ROUNDS:-5}
lbctl() { "$bin/lbctl" --socket "$work/lbd.sock" "$@"; }
base=$((18000 + RANDOM % 800))
python3 scripts/demo-backend.py http node-1 $((base + 11)) & pids+=($!)
python3 scripts/demo-backend.py http node-2 $((base + 12)) & pids+=($!)
config() {
    cat <<YAML
virtual_services:
  - name: Viewer
    vip: 127.0.0.1
    ports: [$base]
    mode: l7-http
    health_check: {type: connect, interval: 500ms, timeout: 400ms}
    real_servers:
      - {name: node-1, address: 127.0.0.1, port: $((base + 11)), weight: $1}
      - {name: node-2, address: 127.0.0.1, port: $((base + 12))}
YAML
}
config 100 > "$work/lb.yaml"
"$bin/lbd" --config "$work/lb.yaml" --threads 2 --socket "$work/lbd.sock" --state-dir "$work/state" >> "$work/lbd.log" 2>&1 &
lbd=$!; pids+=($lbd)
for _ in $(seq 100); do lbctl status >/dev/null 2>&1 && break; sleep 0.1; done
lbctl status >/dev/null || fail "lbd's control socket did not answer"

# At least `count` requests, each on a new connection, from four clients; stops by itself when `stop` exists and
# the count is reached (bounded: at most 60 s).
start_load() {
    rm -f "$work/stop" "$work/load.txt"
    python3 - "$base" "$work" > "$work/load.txt" <<'PY' &
import http.client, os, sys, threading, time
port, work = int(sys.argv[1]), sys.argv[2]
count, deadline = 2000, time.time() + 60
done, lock, output = [0], threading.Lock(), threading.Lock()
def say(line):
    with output:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
def client():
    while time.time() < deadline:
        with lock:
            if done[0] >= count and os.path.exists(f"{work}/stop"):
                return
            done[0] += 1
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/", headers={"Connection": "close"})
            response = connection.getresponse()
            body = response.read()
            say(str(response.status) + " " + body.splitlines()[0].decode())
            connection.close()
        except Exception as error:
            say(f"FAILED {error!r}")
threads = [threading.Thread(target=client) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
PY
    load=$!
    for _ in $(seq 100); do [ -s "$work/load.txt" ] && return; sleep 0.05; done
    fail "the load did not start"
}

# Spreads the changes over the load: waits until the clients have made `n` more requests.
after_requests() {
    local target=$(( $(wc -l < "$work/load.txt") + $1 ))
    for _ in $(seq 400); do [ "$(wc -l < "$work/load.txt")" -ge "$target" ] && return; sleep 0.025; done
    fail "the load stalled"
}

finish_load() {
    touch "$work/stop"
    wait $load
    total=$(wc -l < "$work/load.txt")
    failed=$(grep -c FAILED "$work/load.txt" || true)
    notok=$(grep -vc '^200 ' "$work/load.txt" || true)
}

summary=()
for round in $(seq "$rounds"); do
    start_load
    for i in $(seq 10); do
        lbctl mode Viewer l7-tcp >/dev/null || fail "round $round: switch $i to l7-tcp failed"
        after_requests 40
        lbctl mode Viewer l7-http >/dev/null || fail "round $round: switch $i back to l7-http failed"
        after_requests 40
    done
    finish_load
    grep -qE "^Viewer +l7-http " <<<"$(lbctl status Viewer)" || fail "round $round: status does not show l7-http"
    line="round $round: 10 × l7-http → l7-tcp → l7-http under load: $total requests, $failed failed"
    echo "$line"; summary+=("$line")
    [ "$total" -ge 2000 ] && [ "$failed" = 0 ] && [ "$notok" = "$failed" ] || { grep -v '^200 ' "$work/load.txt" | head >&2; fail "$line"; }

    start_load
    for i in $(seq 10); do
        config $((i * 10)) > "$work/lb.yaml"
        out=$(lbctl reload) || fail "round $round: reload $i failed: $out"
        grep -q "1 service(s) added or changed" <<<"$out" || fail "round $round: reload $i changed nothing: $out"
        after_requests 80
    done
    finish_load
    line="round $round: 10 reloads changing a weight under load: $total requests, $failed failed"
    echo "$line"; summary+=("$line")
    [ "$total" -ge 2000 ] && [ "$failed" = 0 ] && [ "$notok" = "$failed" ] || { grep -v '^200 ' "$work/load.txt" | head >&2; fail "$line"; }
    config 100 > "$work/lb.yaml"; lbctl reload >/dev/null || fail "round $round: reload back failed"
done
switches=$(grep -c "mode Viewer l7-http → l7-tcp: 1 service(s) added or changed" "$work/lbd.log" || true)
[ "$switches" = $((rounds * 10)) ] || fail "lbd logged $switches switches to l7-tcp, expected $((rounds * 10))"
printf '%s\n' "${summary[@]}"
echo "switch and reload under load: passed"
