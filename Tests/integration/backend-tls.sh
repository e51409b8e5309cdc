#!/usr/bin/env bash
# TLS towards the real servers (backend_tls) with real peers: openssl s_server as an HTTPS real server with a
# certificate from a test CA.
# - l7-http terminating TLS and re-encrypting: curl gets the s_server page through lbd; the https-get check verifies
#   the server's certificate against ca_file and finds it up;
# - the same server checked against another CA: down, with the reason in lbctl status;
# - backend_tls towards a plain-HTTP server: the client gets 502 and the log names the cause.
source "$(dirname "$0")/lib.sh"
lbctl() { "$bin/lbctl" --socket "$work/lbd.sock" "$@"; }
base=$((19000 + RANDOM % 800))
cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=test CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=other CA" -keyout other.key -out other.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=core-1" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out server.pem 2>/dev/null
cd - >/dev/null
openssl s_server -accept $((base + 11)) -cert "$work/server.pem" -key "$work/server.key" -www -quiet >/dev/null 2>&1 & pids+=($!)
python3 scripts/demo-backend.py http plain $((base + 12)) & pids+=($!)
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: Viewer-TLS
    vip: 127.0.0.1
    ports: [$base]
    mode: l7-http
    tls: {certificate: $PWD/examples/certs/demo-viewer.pem, key: $PWD/examples/certs/demo-viewer.key}
    backend_tls: {ca_file: $work/ca.pem}
    health_check: {type: https-get, path: /, interval: 500ms, timeout: 400ms, rise: 1, fall: 1}
    real_servers: [{name: core-1, address: 127.0.0.1, port: $((base + 11))}]
  - name: Wrong-CA
    vip: 127.0.0.1
    ports: [$((base + 1))]
    mode: l7-http
    backend_tls: {ca_file: $work/other.pem}
    health_check: {type: https-get, path: /, interval: 500ms, timeout: 400ms, rise: 1, fall: 1}
    real_servers: [{name: core-1, address: 127.0.0.1, port: $((base + 11))}]
  - name: Plain-Server
    vip: 127.0.0.1
    ports: [$((base + 2))]
    mode: l7-http
    backend_tls: {verify: none}
    health_check: {type: connect, interval: 500ms, timeout: 400ms}
    real_servers: [{name: plain, address: 127.0.0.1, port: $((base + 12))}]
YAML
"$bin/lbctl" config check "$work/lb.yaml" || fail "config check"
"$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" --state-dir "$work/state" >> "$work/lbd.log" 2>&1 &
pids+=($!)
wait_until "lbctl status Viewer-TLS 2>/dev/null | holds -E '^  core-1 .* up +up '" || fail "the https-get check with ca_file did not find core-1 up: $(lbctl status)"
body=$(curl -s --cacert examples/certs/demo-ca.pem --resolve "ei-viewer.example.org:$base:127.0.0.1" "https://ei-viewer.example.org:$base/") \
    || fail "curl through the re-encrypting VIP failed"
grep -q "s_server" <<<"$body" || fail "the answer did not come from the TLS real server: $body"
echo "re-encryption: curl → lbd (demo certificate) → s_server (test CA, verified): $(grep -o 's_server -accept [0-9]*' <<<"$body" | head -1)"

wait_until "lbctl status Wrong-CA | holds -E '^  core-1 .* down +down '" || fail "a certificate from another CA was accepted: $(lbctl status Wrong-CA)"
reason=$(lbctl status Wrong-CA | grep '^  core-1')
grep -q "certificate was not accepted" <<<"$reason" || fail "status does not say why: $reason"
echo "wrong CA: $(sed 's/  */ /g' <<<"$reason")"

code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((base + 2))/")
[ "$code" = 502 ] || fail "a plain server behind backend_tls must give 502, got $code"
wait_until "grep -q 'plain text on a TLS connection' '$work/lbd.log'" || fail "the log does not name the cause"
echo "plain server behind backend_tls: 502, logged: $(grep -o 'real server answered plain text[^(]*' "$work/lbd.log" | head -1)"
echo "backend TLS: passed"
