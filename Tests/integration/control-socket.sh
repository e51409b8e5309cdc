#!/usr/bin/env bash
# The control socket against hostile or careless clients: unusable --socket paths refused with the path and the
# reason; a request followed by a half-close (nc -N, socat) answered; an over-size line answered and closed; a
# silent client answered at the read deadline; a caller who is not allowed refused as it connects.
source "$(dirname "$0")/lib.sh"
port=$((17000 + RANDOM % 800))
python3 scripts/demo-backend.py http web-1 "$((port + 1))" & pids+=($!)
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: web
    vip: 127.0.0.1
    ports: [$port]
    mode: l7-http
    health_check: {type: none}
    real_servers: [{name: web-1, address: 127.0.0.1, port: $((port + 1))}]
YAML

# Unusable paths: lbd says which path and why, and starts nothing.
refused() {  # EXPECTED-TEXT LBD-ARGUMENTS...
    local expected=$1; shift
    if (cd "$work" && "$bin/lbd" --config "$work/lb.yaml" --state-dir "$work/state" "$@") > "$work/refused.log" 2>&1; then
        fail "lbd started with $*"
    fi
    grep -qF -- "$expected" "$work/refused.log" || { cat "$work/refused.log" >&2; fail "no \"$expected\" for $*"; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "lbd listened although $* was refused"; fi
    echo "refused: $* ($expected)"
}
refused 'the control socket path must be absolute' --socket s.sock
refused '"s.sock"' --socket s.sock
touch "$work/plain-file"
refused "$work/plain-file is not a directory" --socket "$work/plain-file/lbd.sock"
refused "something other than a socket is there" --socket "$work/plain-file"
long="$work/$(printf 'x%.0s' $(seq 120))/lbd.sock"
refused "over the 107 a Unix socket path may have" --socket "$long"

sock="$work/run/lbd.sock"
"$bin/lbd" --config "$work/lb.yaml" --socket "$sock" --state-dir "$work/state" > "$work/lbd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || fail "no control socket"

client() {  # python3 client: MODE; prints the answer line, the seconds it took, and how the connection ended
    python3 - "$sock" "$1" <<'PY'
import socket, sys, time
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.settimeout(20)
started = time.monotonic()
if mode == "half-close":
    s.sendall(b'{"command":"status"}\n'); s.shutdown(socket.SHUT_WR)
elif mode == "half-close-no-newline":
    s.sendall(b'{"command":"status"}'); s.shutdown(socket.SHUT_WR)
elif mode == "oversize":
    try:
        s.sendall(b"x" * (70 * 1024))
    except OSError:
        pass
elif mode == "silent":
    pass
answer = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    end = "closed"
except socket.timeout:
    end = "still open"
except ConnectionResetError:
    end = "closed"
print(answer.decode(errors="replace").strip())
print(f"{time.monotonic() - started:.1f}")
print(end)
PY
}

out=$(client half-close)
grep -q '"ok":true' <<<"$out" && grep -q '"name":"web"' <<<"$out" || fail "half-closed request not answered: $out"
[ "$(tail -1 <<<"$out")" = closed ] || fail "connection left open after the answer"
echo "request then half-close (nc -N, socat): answered"
out=$(client half-close-no-newline)
grep -q '"ok":true' <<<"$out" || fail "a request without its newline before the half-close was not answered: $out"
echo "request without newline then half-close: answered"
if command -v nc >/dev/null; then
    out=$(printf '{"command":"status"}\n' | timeout 10 nc -N -U "$sock" || true)
    grep -q '"ok":true' <<<"$out" || fail "nc -N got no answer: $out"
    echo "nc -N -U: answered"
fi

out=$(client oversize)
grep -q '"message":"request over 64 KiB"' <<<"$out" || fail "over-size request: $out"
[ "$(tail -1 <<<"$out")" = closed ] || fail "over-size request: connection left open"
echo "over-size request: answered with an error and closed"

out=$(client silent)
grep -q 'no complete request within 5 s' <<<"$out" || fail "silent client: $out"
took=$(sed -n 2p <<<"$out")
python3 -c "import sys; sys.exit(0 if 4.5 <= float('$took') <= 8 else 1)" || fail "silent client answered after $took s"
echo "silent client: answered at the $took s read deadline and closed"

# A caller that is not allowed is refused as it connects, without sending anything (the socket is opened to
# everyone here only so that nobody can connect at all).
chmod 666 "$sock"
chmod 755 "$work" "$work/run"
out=$(runuser -u nobody -- python3 - "$sock" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1]); s.settimeout(10)
started = time.monotonic()
print(s.recv(65536).decode().strip()); print(f"{time.monotonic() - started:.1f}")
PY
)
grep -q 'permission denied' <<<"$out" || fail "nobody was not refused: $out"
python3 -c "import sys; sys.exit(0 if float('$(tail -1 <<<"$out")') < 2 else 1)" || fail "refusal waited for a request: $out"
echo "caller not allowed: refused at accept"
grep -q 'control request refused.*uid=65534' "$work/lbd.log" || holds 'uid=65534.*control request refused' "$work/lbd.log" \
    || fail "the refusal is not logged"
"$bin/lbctl" --socket "$sock" status > /dev/null || fail "lbctl status after the hostile clients"
echo "control socket: passed"
