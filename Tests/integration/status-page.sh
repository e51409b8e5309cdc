#!/usr/bin/env bash
# lbd --http: the status page in a real browser (Debian's headless chromium, driven over DevTools by browser.py):
# the rendered page lists every VIP of a running lbd; a real server killed with SIGKILL shows down within two check
# intervals, without the page being reloaded; a screenshot goes to .build/status-page.png for a person to look at.
# Also: /status.json is byte for byte what `lbctl status --format json` prints, /metrics is served on --http as on
# --metrics (which keeps working), nothing but GET/HEAD is accepted, and the page loads nothing from elsewhere.
# LB_DOCS_SCREENSHOT=PATH also writes the screenshot there (docs/status-page.png is made so).
source "$(dirname "$0")/lib.sh"
set +e   # exit statuses are checked one by one below
lbctl() { "$bin/lbctl" --socket "$work/lbd.sock" "$@"; }
base=$((25000 + RANDOM % 800))
http=$((base + 1)) metrics=$((base + 2))
interval=2   # seconds between checks; fall: 1, so one failed check takes a server out
python3 scripts/demo-backend.py http ei-core-1 $((base + 11)) & pids+=($!)
python3 scripts/demo-backend.py http ei-core-2 $((base + 12)) & pids+=($!); web2=$!
python3 scripts/demo-backend.py echo ei-core-1 $((base + 21)) & pids+=($!)
python3 scripts/demo-backend.py echo ei-core-2 $((base + 22)) & pids+=($!)
python3 scripts/demo-backend.py echo ei-hl7-1 $((base + 31)) & pids+=($!)
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: CoreServerClient-80
    vip: 127.0.0.1
    ports: [$((base + 3))]
    mode: l7-http
    persistence: {type: http-cookie, cookie: LBSRV}
    health_check: {type: http-get, path: /, interval: ${interval}s, timeout: 500ms, fall: 1, rise: 1}
    real_servers:
      - {name: ei-core-1, address: 127.0.0.1, port: $((base + 11))}
      - {name: ei-core-2, address: 127.0.0.1, port: $((base + 12))}
  - name: CoreServerDICOM-104
    vip: 127.0.0.1
    ports: [$((base + 4))]
    mode: l7-tcp
    scheduler: leastconn
    health_check: {type: connect, interval: ${interval}s, timeout: 500ms}
    real_servers:
      - {name: ei-core-1, address: 127.0.0.1, port: $((base + 21))}
      - {name: ei-core-2, address: 127.0.0.1, port: $((base + 22))}
  - name: CoreServerHL7-2575
    vip: 127.0.0.1
    ports: [$((base + 5))]
    mode: l7-tcp
    health_check: {type: connect, interval: ${interval}s, timeout: 500ms}
    real_servers:
      - {name: ei-hl7-1, address: 127.0.0.1, port: $((base + 31))}
YAML
"$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" --state-dir "$work/state" \
    --http "$http" --metrics "127.0.0.1:$metrics" > "$work/lbd.log" 2>&1 & lbd=$!; pids+=($lbd)
for _ in $(seq 100); do lbctl status >/dev/null 2>&1 && break; sleep 0.1; done
grep -q "address=127.0.0.1:$http .*HTTP listening" "$work/lbd.log" || fail "--http $http did not default to 127.0.0.1"

# Wait until every server's first check passed, then some traffic and an operator action for the page to show.
for _ in $(seq 100); do ! lbctl status | holds -E ' down | unchecked | checking ' && break; sleep 0.1; done
for _ in $(seq 20); do curl -s "http://127.0.0.1:$((base + 3))/" > /dev/null; done
lbctl drain CoreServerDICOM-104 ei-core-2 > /dev/null || fail "drain failed"

# /status.json is lbctl's JSON; /metrics the same on both listeners; read-only.
# Two reads are two moments (a check may conclude between them): the same document must come back within a few tries.
same_json() { [ "$(curl -s "http://127.0.0.1:$http/status.json")" = "$(lbctl status --format json)" ]; }
for _ in $(seq 20); do same_json && break; sleep 0.1; done
same_json || fail "/status.json differs from lbctl status --format json"
curl -s "http://127.0.0.1:$http/metrics" | holds '^lb_real_server_healthy{service="CoreServerHL7-2575",server="ei-hl7-1"} 1' \
    || fail "/metrics on --http"
curl -s "http://127.0.0.1:$metrics/metrics" | holds '^lb_real_server_weight' || fail "--metrics stopped working"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$metrics/")" = 404 ] || fail "--metrics must serve only /metrics"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$http/status.json")" = 405 ] || fail "POST must be refused"
page=$(curl -s "http://127.0.0.1:$http/")
grep -qiE '(src|href)="(https?:)?//' <<<"$page" && fail "the page loads something from elsewhere"
curl -sI "http://127.0.0.1:$http/" | holds -i "^Content-Security-Policy: default-src 'none'; script-src 'self'" || fail "no CSP"
curl -s "http://127.0.0.1:$http/audit.json" | python3 -c '
import json, sys
entries = json.load(sys.stdin)
assert [(e["command"], e["user"]) for e in entries] == [("drain", "root")], entries' || fail "/audit.json"
echo "/status.json = lbctl status --format json; /metrics on --http and --metrics; GET only; no external assets"

shots=(--screenshot .build/status-page.png)
[ -n "${LB_DOCS_SCREENSHOT:-}" ] && shots+=(--screenshot "$LB_DOCS_SCREENSHOT")
python3 Tests/integration/browser.py "http://127.0.0.1:$http/?refresh=0.5" \
    --expect-service CoreServerClient-80 --expect-service CoreServerDICOM-104 --expect-service CoreServerHL7-2575 \
    --kill $web2 --server CoreServerClient-80/ei-core-2 --within $((2 * interval)) "${shots[@]}" \
    || fail "the status page in chromium"
kill -TERM $lbd; wait $lbd || fail "lbd did not stop cleanly"
echo "status page: passed"
