#!/usr/bin/env bash
# The agent's wiring, end to end: lbd with http-get health checks in front of two real servers. A server is killed
# during a bounded request loop: no request fails (redispatch), the check takes it out (logged with the reason),
# and after a restart it rejoins (logged) and serves again. Then SIGTERM drains and stops lbd.
source "$(dirname "$0")/lib.sh"

base=$((23000 + $$ % 400 * 3))
vip=$base; rs1=$((base + 1)); rs2=$((base + 2))
python3 scripts/demo-backend.py http web-1 "$rs1" & pids+=($!)
python3 scripts/demo-backend.py http web-2 "$rs2" & web2=$!; pids+=($web2)

cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: CoreServerClient-80
    vip: 127.0.0.1
    ports: [$vip]
    mode: l7-http
    health_check: {type: http-get, path: /status, expect_status: [200], interval: 200ms, timeout: 150ms, rise: 2, fall: 2}
    real_servers:
      - {name: web-1, address: 127.0.0.1, port: $rs1}
      - {name: web-2, address: 127.0.0.1, port: $rs2}
YAML
# Real servers first, so lbd's first checks find them up.
for port in "$rs1" "$rs2"; do
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done
"$bin/lbd" --config "$work/lb.yaml" --threads 2 --socket "$work/lbd.sock" --state-dir "$work/state" > "$work/lbd.log" 2>&1 & lbd=$!; pids+=($lbd)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$vip/" >/dev/null && curl -sf "http://127.0.0.1:$rs2/" >/dev/null && break; sleep 0.1; done

# 200 requests (bounded), web-2 killed after the 50th.
failed=0; served2=0
for i in $(seq 200); do
    [ "$i" -eq 50 ] && kill "$web2"
    if out=$(curl -sf --max-time 5 "http://127.0.0.1:$vip/"); then
        [[ "$out" == web-2* ]] && served2=$((served2 + 1))
    else
        failed=$((failed + 1))
    fi
done
echo "200 requests while web-2 was killed: $failed failed, web-2 served $served2 (before the kill)"
[ "$failed" -eq 0 ] || fail "$failed requests failed"
for _ in $(seq 30); do grep -q "server=web-2 service=CoreServerClient-80.*real server down" "$work/lbd.log" && break; sleep 0.1; done
grep -q "reason=connection refused (2 checks failed in a row) server=web-2 service=CoreServerClient-80 \[LBHealth\] real server down" "$work/lbd.log" \
    || fail "no 'real server down' log with the reason"

# Only transitions after the kill count from here on.
after_down() { sed -n "$(grep -n "server=web-2 service=CoreServerClient-80.*real server down" "$work/lbd.log" | tail -1 | cut -d: -f1),\$p" "$work/lbd.log"; }
python3 scripts/demo-backend.py http web-2 "$rs2" & pids+=($!)
for _ in $(seq 50); do after_down | holds "server=web-2 service=CoreServerClient-80.*real server up" && break; sleep 0.1; done
after_down | holds "server=web-2 service=CoreServerClient-80.*real server up" || fail "web-2 did not rejoin"
back=0
for _ in $(seq 10); do [[ "$(curl -sf "http://127.0.0.1:$vip/")" == web-2* ]] && back=$((back + 1)); done
[ "$back" -ge 4 ] || fail "web-2 serves only $back of 10 after rejoining"
echo "web-2 went down with its reason logged, rejoined after rise, and serves $back of 10 again"

kill -TERM "$lbd"
wait "$lbd" || fail "lbd did not exit 0 on SIGTERM"
grep -q "received SIGTERM" "$work/lbd.log" && grep -q "stopped" "$work/lbd.log" || fail "no clean stop"
echo "failover through lbd: passed"
