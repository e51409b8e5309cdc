#!/usr/bin/env bash
# lbd's l7-http against HAProxy (the reference) with the same hostile requests and responses, to one strict backend
# that logs what it parsed (Tests/integration/http-differential.py). Asserted for lbd: no smuggled or extra
# request reaches the backend, no response reaches another client, every case answered or closed in time. HAProxy's
# outcome is printed beside each case; where lbd is stricter, docs/layer7.md says so.
source "$(dirname "$0")/lib.sh"
command -v haproxy >/dev/null || fail "haproxy missing: apt-get install haproxy"
base=$((18600 + RANDOM % 300))
lb=$base ha=$((base + 1)) be=$((base + 2))
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: web
    vip: 127.0.0.1
    ports: [$lb]
    mode: l7-http
    timeouts: {header: 2s, body: 2s, idle: 10s}
    health_check: {type: none}
    real_servers: [{name: be, address: 127.0.0.1, port: $be}]
YAML
cat > "$work/haproxy.cfg" <<CFG
defaults
    mode http
    timeout connect 2s
    timeout client 3s
    timeout server 3s
    timeout http-request 2s
frontend f
    bind 127.0.0.1:$ha
    default_backend b
backend b
    http-reuse always
    server be 127.0.0.1:$be
CFG
haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 & pids+=($!)
"$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" --state-dir "$work/state" > "$work/lbd.log" 2>&1 & pids+=($!)
for port in $lb $ha; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
python3 Tests/integration/http-differential.py "$lb" "$ha" "$be" | tee "$work/differential.txt" || fail "lbd failed the differential test"
echo "HTTP differential test against HAProxy: passed"
