#!/usr/bin/env bash
# The audit trail against a running lbd over its real control socket: drain as root and as a member of the control
# group (nobody, group nogroup) each leave one JSON line in STATE_DIR/audit.log with the caller's uid and user name;
# a refused action is recorded with its error; lbctl reload, SIGHUP, halt and mode are recorded; lbctl audit shows them (text,
# JSON, --since); an action whose line cannot be written is refused and changes nothing.
source "$(dirname "$0")/lib.sh"
set +e   # exit statuses are checked one by one below
lbctl() { "$bin/lbctl" --socket "$work/lbd.sock" "$@"; }
as_group_member() { setpriv --reuid=65534 --regid="$(getent group nogroup | cut -d: -f3)" --clear-groups "$bin/lbctl" --socket "$work/lbd.sock" "$@"; }
base=$((23000 + RANDOM % 800))
python3 scripts/demo-backend.py http node-1 $((base + 11)) & pids+=($!)
python3 scripts/demo-backend.py http node-2 $((base + 12)) & pids+=($!)
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: Viewer
    vip: 127.0.0.1
    ports: [$base]
    mode: l7-http
    health_check: {type: http-get, path: /, interval: 500ms, timeout: 400ms}
    real_servers:
      - {name: node-1, address: 127.0.0.1, port: $((base + 11))}
      - {name: node-2, address: 127.0.0.1, port: $((base + 12))}
YAML
chmod 755 "$work"   # the group member must reach the socket inside
"$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" --state-dir "$work/state" \
    --control-group nogroup > "$work/lbd.log" 2>&1 & lbd=$!; pids+=($lbd)
for _ in $(seq 100); do lbctl status >/dev/null 2>&1 && break; sleep 0.1; done
log="$work/state/audit.log"

lbctl drain Viewer node-2 >/dev/null || fail "drain as root failed"
as_group_member drain --server node-1 >/dev/null || fail "drain as a member of the control group failed"
out=$(lbctl drain Viewer node-9 2>&1); [ $? = 1 ] || fail "drain of an unknown server must fail: $out"
lbctl reload >/dev/null || fail "lbctl reload failed"
kill -HUP $lbd
for _ in $(seq 100); do [ "$(wc -l < "$log")" -ge 5 ] && break; sleep 0.05; done
lbctl status >/dev/null   # a status is not an action: no line

[ "$(wc -l < "$log")" = 5 ] || { cat "$log" >&2; fail "expected 5 lines in $log"; }
python3 - "$log" <<'PY' || fail "audit.log content"
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1])]
root, member, refused, reload, hangup = lines
assert (root["uid"], root["user"], root["command"], root["targets"], root["result"]) == \
    (0, "root", "drain", {"service": "Viewer", "server": "node-2"}, "ok"), root
assert "error" not in root, root
assert (member["uid"], member["user"], member["command"], member["targets"], member["result"]) == \
    (65534, "nobody", "drain", {"server": "node-1"}, "ok"), member
assert refused["result"] == "failed" and 'no real server named "node-9"' in refused["error"], refused
assert (reload["command"], reload["user"], reload["result"]) == ("reload", "root", "ok"), reload
assert (hangup["command"], hangup["user"], hangup["result"]) == ("reload", "SIGHUP", "ok") and "uid" not in hangup, hangup
assert all(line["time"].endswith("Z") for line in lines), lines
print("audit.log: 5 lines, drain by root (uid 0) and by nobody (uid 65534), a refusal, lbctl reload, SIGHUP")
PY

# lbctl audit, as root and as the group member: the same lines.
text=$(lbctl audit) || fail "lbctl audit failed"
echo "$text"
grep -qE "^TIME +USER +UID +COMMAND +TARGETS +RESULT$" <<<"$text" || fail "audit table header"
grep -qE " root +0 +drain +Viewer/node-2 +ok$" <<<"$text" || fail "root's drain not shown"
grep -qE " nobody +65534 +drain +node-1 \(every service\) +ok$" <<<"$text" || fail "nobody's drain not shown"
grep -qE ' SIGHUP +- +reload +- +ok$' <<<"$text" || fail "the SIGHUP reload not shown"
[ "$(as_group_member audit --format json)" = "$(lbctl audit --format json)" ] || fail "the group member sees another trail"
second=$(sed -n 2p "$log" | python3 -c 'import json, sys; print(json.load(sys.stdin)["time"])')
lbctl audit --since "$second" --format json | python3 -c '
import json, sys
entries = json.load(sys.stdin)
assert [e["user"] for e in entries] == ["nobody", "root", "root", "SIGHUP"], entries
' || fail "--since $second"
[ "$(lbctl audit --since 1h --format json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 5 ] || fail "--since 1h"
out=$(lbctl audit --since yesterday-ish 2>&1); [ $? = 64 ] || fail "a bad --since must be a usage error: $out"

# A trail that cannot be written refuses the action, and the server keeps its state.
mv "$log" "$work/audit.saved"; mkdir "$log"
out=$(lbctl online Viewer node-2 2>&1); rc=$?
[ $rc = 1 ] && grep -q "audit trail .*audit.log: cannot open" <<<"$out" && grep -q "nothing changed" <<<"$out" \
    || fail "an action that cannot be recorded must be refused ($rc: $out)"
grep -qE "^  node-2 .* drain " <<<"$(lbctl status Viewer)" || fail "the refused online changed node-2"
rmdir "$log"; mv "$work/audit.saved" "$log"
lbctl online Viewer node-2 >/dev/null || fail "online after the trail is back"
[ "$(wc -l < "$log")" = 6 ] || fail "the online was not recorded"
# halt and mode are recorded with their targets too.
lbctl halt Viewer node-1 >/dev/null || fail "halt failed"
lbctl mode Viewer l7-tcp >/dev/null || fail "mode failed"
tail -2 "$log" | python3 -c '
import json, sys
halt, mode = (json.loads(line) for line in sys.stdin)
assert (halt["command"], halt["targets"], halt["result"]) == ("halt", {"service": "Viewer", "server": "node-1"}, "ok"), halt
assert (mode["command"], mode["targets"], mode["result"]) == ("mode", {"service": "Viewer", "mode": "l7-tcp"}, "ok"), mode
' || fail "halt and mode in the trail"
lbctl audit | tail -1 | holds -E " root +0 +mode +Viewer → l7-tcp +ok$" || fail "lbctl audit: the mode switch"
kill -TERM $lbd; wait $lbd || fail "lbd did not stop cleanly"
echo "audit trail: passed"
