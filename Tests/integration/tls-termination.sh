#!/usr/bin/env bash
# TLS termination on an l7-http VIP with the system OpenSSL, checked by real clients: curl (--cacert) and
# openssl s_client. Also an https-get health check against a real TLS server (openssl s_server).
# All traffic stays on 127.0.0.1.
source "$(dirname "$0")/lib.sh"

base=$((27000 + $$ % 400 * 2))
vip=$base; rs1=$((base + 1000)); rs2=$((base + 1001)); tlsrs=$((base + 1002)); rawrs=$((base + 1003))

# A private CA and a server certificate for "ei.example" and 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=lb test CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=ei.example" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:ei.example,IP:127.0.0.1\n' > "$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/san.ext" -out "$work/server.pem" 2>/dev/null

# A second certificate, for "viewer.example", served only to clients that ask for that name (SNI).
openssl req -newkey rsa:2048 -nodes -subj "/CN=viewer.example" -keyout "$work/viewer.key" -out "$work/viewer.csr" 2>/dev/null
printf 'subjectAltName=DNS:viewer.example\n' > "$work/viewer.ext"
openssl x509 -req -in "$work/viewer.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/viewer.ext" -out "$work/viewer.pem" 2>/dev/null

python3 scripts/demo-backend.py http web-1 "$rs1" & pids+=($!)
python3 scripts/demo-backend.py http web-2 "$rs2" & pids+=($!)
# A real server that itself speaks HTTPS, for the https-get check.
python3 Tests/integration/tls-records.py backend "$rawrs" & pids+=($!)
openssl s_server -quiet -accept "$tlsrs" -cert "$work/server.pem" -key "$work/server.key" -www >/dev/null 2>&1 & pids+=($!)

cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: CoreServerClient-8443
    vip: 127.0.0.1
    ports: [$vip]
    mode: l7-http
    persistence: {type: http-cookie}
    timeouts: {header: 1s, idle: 60s}
    tls:
      certificate: $work/server.pem
      key: $work/server.key
      sni_certificates: [{certificate: $work/viewer.pem, key: $work/viewer.key}]
    health_check: {type: connect, interval: 500ms}
    real_servers:
      - {name: web-1, address: 127.0.0.1, port: $rs1}
      - {name: web-2, address: 127.0.0.1, port: $rs2}
  - name: https-checked
    vip: 127.0.0.1
    ports: [$((vip + 1))]
    mode: l7-tcp
    health_check: {type: https-get, path: /, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}
    real_servers:
      - {name: tls-up, address: 127.0.0.1, port: $tlsrs}
      - {name: plain-http, address: 127.0.0.1, port: $rs1}
  - name: records
    vip: 127.0.0.1
    ports: [$((vip + 4))]
    mode: l7-http
    tls: {certificate: $work/server.pem, key: $work/server.key}
    health_check: {type: connect, interval: 500ms}
    real_servers: [{name: raw, address: 127.0.0.1, port: $rawrs}]
YAML
# Real servers first, so lbd's first checks find them serving.
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$rs1/" >/dev/null && curl -sfk "https://127.0.0.1:$tlsrs/" >/dev/null && break; sleep 0.1; done
metrics=$((base + 1004))
"$bin/lbd" --config "$work/lb.yaml" --threads 2 --socket "$work/lbd.sock" --state-dir "$work/state" --metrics "127.0.0.1:$metrics" > "$work/lbd.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -sf --cacert "$work/ca.pem" "https://127.0.0.1:$vip/" >/dev/null && break; sleep 0.1; done

# curl verifies the chain against our CA: the certificate and key from the config are the ones served.
response=$(curl -s -i --cacert "$work/ca.pem" --resolve "ei.example:$vip:127.0.0.1" "https://ei.example:$vip/")
grep -q "^web-[12]" <<<"$response" || fail "no answer through TLS: $response"
grep -qi "^set-cookie: LBSRV=.*; Path=/; HttpOnly; Secure" <<<"$response" || fail "cookie not marked Secure: $response"
grep -q "X-Forwarded-For: 127.0.0.1" <<<"$response" || fail "X-Forwarded-For missing"
echo "curl --cacert: verified, Secure cookie, X-Forwarded-For"

# SNI: each name gets the certificate that covers it; no name gets the default one.
subject_for() { echo | openssl s_client -connect "127.0.0.1:$vip" ${1:+-servername "$1"} 2>/dev/null | openssl x509 -noout -subject; }
grep -q "CN = viewer.example" <<<"$(subject_for viewer.example)" || fail "SNI viewer.example did not select its certificate"
grep -q "CN = ei.example" <<<"$(subject_for ei.example)" || fail "SNI ei.example did not select the default certificate"
grep -q "CN = ei.example" <<<"$(subject_for other.example)" || fail "an unknown name did not fall back to the default certificate"
curl -sf --cacert "$work/ca.pem" --resolve "viewer.example:$vip:127.0.0.1" "https://viewer.example:$vip/" >/dev/null \
    || fail "curl could not verify viewer.example"
echo "SNI: viewer.example and ei.example each get their own certificate"

# Keep-alive over TLS: several requests on one connection.
count=$(curl -s --cacert "$work/ca.pem" "https://127.0.0.1:$vip/a" "https://127.0.0.1:$vip/b" "https://127.0.0.1:$vip/c" | grep -c "^web-")
[ "$count" -eq 3 ] || fail "keep-alive over TLS answered $count of 3"

# ALPN picks http/1.1; TLS 1.2 minimum.
s_client=$(echo | openssl s_client -connect "127.0.0.1:$vip" -alpn h2,http/1.1 -CAfile "$work/ca.pem" 2>&1)
grep -q "ALPN protocol: http/1.1" <<<"$s_client" || fail "ALPN did not choose http/1.1"
grep -q "Verify return code: 0 (ok)" <<<"$s_client" || fail "s_client could not verify the chain"
if echo | openssl s_client -connect "127.0.0.1:$vip" -tls1_1 >/dev/null 2>&1; then fail "TLS 1.1 was accepted"; fi
echo "openssl s_client: ALPN http/1.1, chain verified, TLS 1.1 refused"

# Record by record: a response the server wrote at once leaves lb as one TLS record (lb encrypts what it writes
# between two flushes together), pipelined requests in one record are both answered, a 1 MiB upload arrives intact.
for _ in $(seq 50); do curl -sf --cacert "$work/ca.pem" "https://127.0.0.1:$((vip + 4))/" >/dev/null && break; sleep 0.1; done
curl -sf --cacert "$work/ca.pem" "https://127.0.0.1:$((vip + 4))/" >/dev/null || fail "the records service is not serving"
python3 Tests/integration/tls-records.py client "$((vip + 4))" "$work/ca.pem" || fail "TLS records check failed"

# close_notify: the server's shutdown is clean (s_client sees no unexpected EOF on a Connection: close request).
printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' \
    | openssl s_client -connect "127.0.0.1:$vip" -CAfile "$work/ca.pem" -quiet -ign_eof > "$work/close.out" 2> "$work/close.err" || true
grep -q "^web-" "$work/close.out" || fail "no response before close"
if grep -qi "unexpected eof" "$work/close.err"; then fail "connection closed without close_notify"; fi
echo "close_notify sent before closing"

# A request refused while its body is still coming (Content-Length with Transfer-Encoding, then 512 KiB): the client
# reads the 400, close_notify and a FIN, not a reset (lb lingers: it shuts down its side and discards the rest).
refused=$(python3 - "$vip" "$work/ca.pem" <<'PY'
import os, socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
context.check_hostname = False
s = context.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\nTransfer-Encoding: chunked\r\n\r\n")
s.sendall(b"b" * (512 * 1024))
s.settimeout(10)
answer = b""
try:
    while True:
        data = s.recv(65536)
        if not data:
            if not answer.startswith(b"HTTP/1.1 400 "):
                print("no 400: %r" % answer[:40])
                break
            # After close_notify, the connection itself must end with a FIN, not a reset.
            raw = socket.socket(fileno=os.dup(s.fileno()))
            raw.settimeout(10)  # the FIN may follow close_notify by a moment: wait for it
            try:
                print("close_notify, then FIN" if raw.recv(1) == b"" else "bytes after close_notify")
            except ConnectionResetError:
                print("close_notify, then a reset")
            except socket.timeout:
                print("close_notify, then nothing for 10 s")
            break
        answer += data
except (ConnectionResetError, ssl.SSLError) as error:
    print("%r after %d bytes" % (error, len(answer)))
PY
)
[ "$refused" = "close_notify, then FIN" ] || fail "a refused upload did not end cleanly: $refused"
echo "refused upload: 400, then close_notify and a FIN (no reset)"

# A handshake that stalls halfway (half a ClientHello) is closed at the header timeout (1 s), not at the idle
# timeout (60 s): the socket itself, measured from the client's side.
stalled=$(python3 - "$vip" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
# A TLS record header announcing a 512-byte ClientHello, then only its first bytes.
s.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]))
s.settimeout(10)
started = time.monotonic()
try:
    while s.recv(4096):
        pass
    print(f"closed {time.monotonic() - started:.1f}")
except socket.timeout:
    print("open")
except ConnectionResetError:
    print(f"closed {time.monotonic() - started:.1f}")
PY
)
case "$stalled" in
    closed\ 0.*|closed\ 1.*|closed\ 2.*) echo "stalled TLS handshake: socket $stalled s after the last byte" ;;
    *) fail "a stalled TLS handshake was not closed at the header timeout: $stalled" ;;
esac

# Plain HTTP to the TLS port is refused, and lbd keeps serving.
plain=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$vip/" || true)
[ "$plain" != "200" ] || fail "plain HTTP accepted on the TLS port"
curl -sf --cacert "$work/ca.pem" "https://127.0.0.1:$vip/" >/dev/null || fail "TLS broken after a plain client"

# https-get: the real TLS server stays up, the plain-HTTP one is down (its TLS handshake fails) and stays down,
# over three more checks of each (lb_health_checks_total counts them).
checks() { curl -s "http://127.0.0.1:$metrics/metrics" | awk -v s="server=\"$1\"" -v r="result=\"$2\"" 'index($0, "lb_health_checks_total{") == 1 && index($0, s) && index($0, r) { print $2 + 0; found = 1 } END { if (!found) print 0 }'; }
plain_failed=$(checks plain-http failed); tls_passed=$(checks tls-up passed)
wait_until '[ "$(checks plain-http failed)" -ge $((plain_failed + 3)) ] && [ "$(checks tls-up passed)" -ge $((tls_passed + 3)) ]' || true
[ "$(checks plain-http failed)" -ge $((plain_failed + 3)) ] || fail "the plain-HTTP server's https-get checks did not run (or did not fail): $(checks plain-http failed)"
[ "$(checks tls-up passed)" -ge $((tls_passed + 3)) ] || fail "the TLS server's https-get checks did not run (or did not pass): $(checks tls-up passed)"
last_transition() { grep "server=$1 service=https-checked" "$work/lbd.log" | grep -E "real server (up|down)" | tail -1; }
grep -q "real server down" <<<"$(last_transition plain-http)" || fail "https-get did not keep a plain HTTP server down"
if grep -q "real server down" <<<"$(last_transition tls-up)"; then fail "https-get holds a healthy TLS server down"; fi
echo "https-get: TLS server up, plain-HTTP server down"

# A key that does not match the certificate stops lbd before anything listens.
sed "s|$work/server.key|$work/ca.key|" "$work/lb.yaml" > "$work/bad.yaml"
sed -i "s/$vip\]/$((vip + 2))]/; s/$((vip + 1))\]/$((vip + 3))]/" "$work/bad.yaml"
if "$bin/lbd" --config "$work/bad.yaml" --socket "$work/bad.sock" > "$work/bad.log" 2>&1; then fail "lbd started with a mismatched key"; fi
grep -q "tls: private key .* does not match certificate" "$work/bad.log" || { cat "$work/bad.log" >&2; fail "no clear key error"; }
echo "mismatched key: lbd refuses to start, nothing listens"
echo "TLS termination: passed"
