#!/usr/bin/env python3
"""Differential test of lbd's l7-http against HAProxy: the same hostile requests and responses through both, to one
backend that parses strictly (RFC 9112, only `Transfer-Encoding: chunked` exactly and one decimal Content-Length)
and logs exactly the requests it parsed.

Asserted for lbd (HAProxy's results are printed beside them, for the record):
  - the backend never parses a request the client did not send as a request (a target containing "smuggled"),
    nor more requests than the client sent, nor anything unparsable;
  - no response ever reaches a different client: every response body names its own request, and a victim client
    sent right after each case gets its own answer;
  - every case is answered or closed within the timeouts.
Usage: http-differential.py LBD_PORT HAPROXY_PORT BACKEND_PORT
"""
import re
import socket
import sys
import threading
import time

LBD, HAPROXY, BACKEND = (int(p) for p in sys.argv[1:4])
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
N = str(len(SMUGGLED)).encode()      # its length, for Content-Length
X = b"%x" % len(SMUGGLED)           # and in hex, for a chunk size


def chunk(data):
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


# --- the backend -------------------------------------------------------------------------------------------------

log_lock = threading.Lock()
parsed = []      # (target, method, headers) of every request the backend parsed
invalid = []     # reasons for unparsable input

HOSTILE_RESPONSES = [
    ("coding other than chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nbody-{tag}"),
    ("capitalised Chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n%s"),
    ("two lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nbody-{tag}"),
    ("length and chunked", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n%s"),
    ("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbody-{tag}\r\n0\r\n\r\n"),
    ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n"),
    ("unsolicited 101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
    ("100 then final", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\nbody-{tag}"),
    ("204 with a body", b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\nbody-{tag}"),
    ("extra response after the body", b"HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\nbody-{tag}HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npwned!"),
    ("incomplete extra response", b"HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\nbody-{tag}HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npwn"),
    ("negative length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nbody-{tag}"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: {len}\r\n\r\nbody-{tag}"),
    ("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nbody-{tag}"),
    ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: {len}\n\nbody-{tag}"),
    ("length over the body, then close", b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nbody-{tag}"),
    ("close-delimited", b"HTTP/1.1 200 OK\r\n\r\nbody-{tag}"),
    ("NUL in a header", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: {len}\r\n\r\nbody-{tag}"),
]


def response_for(target):
    tag = target.encode()
    body = b"body-" + tag
    match = re.match(r"/resp/(\d+)/", target)
    if not match:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), False
    template = HOSTILE_RESPONSES[int(match.group(1))][1]
    if b"%s" in template:
        return template % chunk(body), False
    text = template.replace(b"{tag}", tag).replace(b"{len}", str(len(body)).encode())
    return text, b"500" in template or b"\r\n\r\nbody" in template and b"Content-Length" not in template


def strict_parse(data):
    """(request, consumed) | None (need more) | str (invalid)"""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None if len(data) < 65536 else "head over 64 KiB"
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[0].isupper():
        return "request line %r" % lines[0][:80]
    headers = []
    for line in lines[1:]:
        if b":" not in line or line[:1] in (b" ", b"\t"):
            return "header line %r" % line[:80]
        name, value = line.split(b":", 1)
        if not name or b" " in name or b"\t" in name:
            return "header name %r" % name[:80]
        headers.append((name.lower(), value.strip(b" \t")))
    te = [v for n, v in headers if n == b"transfer-encoding"]
    cl = [v for n, v in headers if n == b"content-length"]
    offset = end + 4
    body = b""
    if te:
        if te != [b"chunked"] or cl:
            return "framing TE %r CL %r" % (te, cl)
        while True:
            eol = data.find(b"\r\n", offset)
            if eol < 0:
                return None
            try:
                size = int(data[offset:eol], 16)
            except ValueError:
                return "chunk size %r" % data[offset:eol][:20]
            offset = eol + 2
            if size == 0:
                while True:
                    eol = data.find(b"\r\n", offset)
                    if eol < 0:
                        return None
                    blank = eol == offset
                    offset = eol + 2
                    if blank:
                        return (parts[0].decode(), parts[1].decode(), headers, body), offset
            if len(data) < offset + size + 2:
                return None
            body += data[offset:offset + size]
            if data[offset + size:offset + size + 2] != b"\r\n":
                return "chunk end"
            offset += size + 2
    if cl:
        if len(cl) != 1 or not cl[0].isdigit():
            return "Content-Length %r" % cl
        length = int(cl[0])
        if len(data) < offset + length:
            return None
        body = data[offset:offset + length]
        offset += length
    return (parts[0].decode(), parts[1].decode(), headers, body), offset


def serve(connection):
    data = b""
    connection.settimeout(30)
    try:
        while True:
            chunk_ = connection.recv(65536)
            if not chunk_:
                return
            data += chunk_
            while data:
                result = strict_parse(data)
                if result is None:
                    break
                if isinstance(result, str):
                    with log_lock:
                        invalid.append(result)
                    return
                (method, target, headers, body), consumed = result
                data = data[consumed:]
                with log_lock:
                    parsed.append((target, method, headers))
                reply, close_after = response_for(target)
                connection.sendall(reply)
                if close_after:
                    return
    except OSError:
        pass
    finally:
        connection.close()


BACKEND_LISTENING = threading.Event()


def backend():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", BACKEND))
    listener.listen(512)
    BACKEND_LISTENING.set()
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()


# --- the hostile requests ----------------------------------------------------------------------------------------

def requests():
    cases = []
    add = lambda name, data, sent=1: cases.append((name, data, sent))
    for method in (b"GET", b"POST"):
        for value in (b"Chunked", b"CHUNKED", b"chunked ", b" chunked", b"chunked, chunked", b"gzip, chunked",
                      b"identity", b"chunked;q=1", b"\tchunked", b"xchunked", b"chunked, identity", b"identity, chunked"):
            add(b"%s TE %r" % (method, value), method + b" {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: " + value
                + b"\r\n\r\n" + chunk(SMUGGLED))
        add(method + b" TE twice", method + b" {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk(SMUGGLED))
        add(method + b" TE then CL", method + b" {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 4\r\n\r\n" + chunk(SMUGGLED))
        add(method + b" CL then TE", method + b" {t} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk(SMUGGLED))
        add(method + b" space before colon", method + b" {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n"
            + chunk(SMUGGLED))
        add(method + b" obs-fold TE", method + b" {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
            + chunk(SMUGGLED))
    for value in (b"5, 5", b"+" + N, b"-1", b"0x" + X, b" " + N + b" ", N + b" " + N, b"99999999999999999999", b"%se0" % N, b""):
        add(b"CL %r" % value, b"POST {t} HTTP/1.1\r\nHost: t\r\nContent-Length: " + value + b"\r\n\r\n" + SMUGGLED)
    add(b"two different CL", b"POST {t} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: " + N + b"\r\n\r\n" + SMUGGLED)
    add(b"CL twice same", b"POST {t} HTTP/1.1\r\nHost: t\r\nContent-Length: " + N + b"\r\nContent-Length: " + N + b"\r\n\r\n" + SMUGGLED)
    add(b"Connection: content-length", b"POST {t} HTTP/1.1\r\nHost: t\r\nContent-Length: " + N + b"\r\n"
        b"Connection: content-length\r\n\r\n" + SMUGGLED)
    add(b"Connection: transfer-encoding", b"POST {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: transfer-encoding\r\n\r\n" + chunk(SMUGGLED))
    add(b"Connection: host", b"GET {t} HTTP/1.1\r\nHost: t\r\nConnection: host, close\r\n\r\n")
    add(b"two Hosts", b"GET {t} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    add(b"Host list", b"GET {t} HTTP/1.1\r\nHost: a, b\r\n\r\n")
    add(b"absolute URI contradicting Host", b"GET http://a.example{t} HTTP/1.1\r\nHost: b.example\r\n\r\n")
    add(b"absolute URI with userinfo", b"GET http://user@b.example{t} HTTP/1.1\r\nHost: b.example\r\n\r\n")
    add(b"Host with a space", b"GET {t} HTTP/1.1\r\nHost: a b\r\n\r\n")
    add(b"HTTP/1.2", b"GET {t} HTTP/1.2\r\nHost: t\r\n\r\n")
    add(b"HTTP/2.0 line", b"GET {t} HTTP/2.0\r\nHost: t\r\n\r\n")
    add(b"lowercase method", b"get {t} HTTP/1.1\r\nHost: t\r\n\r\n")
    add(b"space in target", b"GET {t} x HTTP/1.1\r\nHost: t\r\n\r\n")
    add(b"tab separator", b"GET\t{t} HTTP/1.1\r\nHost: t\r\n\r\n")
    add(b"bare LF lines", b"GET {t} HTTP/1.1\nHost: t\nTransfer-Encoding: chunked\n\n" + chunk(SMUGGLED))
    add(b"NUL in a header", b"GET {t} HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n")
    add(b"header without colon", b"GET {t} HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n")
    add(b"chunk extension", b"POST {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + X + b";ext=1\r\n" + SMUGGLED + b"\r\n0\r\n\r\n")
    add(b"chunk size overflow", b"POST {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff1\r\n" + SMUGGLED + b"\r\n0\r\n\r\n")
    add(b"chunk shorter than its size", b"POST {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10\r\nab\r\n0\r\n\r\n" + SMUGGLED)
    add(b"LF-only chunk lines", b"POST {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + X + b"\n" + SMUGGLED + b"\n0\n\n")
    add(b"trailer with Content-Length", b"POST {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\nContent-Length: " + N + b"\r\n\r\n")
    add(b"CONNECT", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
    add(b"Upgrade", b"GET {t} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + SMUGGLED)
    add(b"HTTP/1.0 with chunked", b"POST {t} HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(SMUGGLED))
    add(b"HTTP/1.0 keep-alive", b"GET {t} HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
    add(b"TRACE with a body", b"TRACE {t} HTTP/1.1\r\nHost: t\r\nContent-Length: " + N + b"\r\n\r\n" + SMUGGLED)
    add(b"GET with a body", b"GET {t} HTTP/1.1\r\nHost: t\r\nContent-Length: " + N + b"\r\n\r\n" + SMUGGLED)
    add(b"OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 1)
    add(b"pipelined pair", b"GET {t} HTTP/1.1\r\nHost: t\r\n\r\nGET {t}/second HTTP/1.1\r\nHost: t\r\n\r\n", 2)
    return cases


def exchange(port, data, wait=4.0):
    """Sends data, reads until the proxy closes or `wait` passes; returns (bytes, seconds, closed)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(wait)
    started = time.monotonic()
    received = b""
    closed = False
    try:
        s.sendall(data)
        while True:
            part = s.recv(65536)
            if not part:
                closed = True
                break
            received += part
    except socket.timeout:
        pass
    except OSError:
        closed = True
    s.close()
    return received, time.monotonic() - started, closed


def run(label, port, index, name, template, sent):
    tag = "/c%d-%s" % (index, label)
    data = template.replace(b"{t}", tag.encode())
    with log_lock:
        before, invalid_before = len(parsed), len(invalid)
    received, seconds, closed = exchange(port, data)
    time.sleep(0.05)
    with log_lock:
        mine = [p for p in parsed[before:] if tag in p[0] or "smuggled" in p[0]]
        unparsable = invalid[invalid_before:]
    problems = []
    if unparsable:
        problems.append("backend could not parse what it received: %s" % unparsable)
    smuggled = [p for p in mine if "smuggled" in p[0]]
    if smuggled:
        problems.append("backend parsed a smuggled request")
    if len([p for p in mine if tag in p[0]]) > sent:
        problems.append("backend saw %d requests for %d sent" % (len(mine), sent))
    foreign = [b for b in re.findall(rb"body-(/c\d+-\w+|/victim-\d+)", received) if not b.decode().startswith(tag)]
    if foreign or b"pwned" in received:
        problems.append("response of another request: %r" % (foreign or "pwned"))
    status = received.split(b"\r\n", 1)[0].decode(errors="replace") if received else ("closed" if closed else "nothing")
    if not received and not closed:
        problems.append("neither answered nor closed within %.0f s" % seconds)
    # A victim right after: it must get its own answer.
    victim = "/victim-%d" % index
    answer, _, _ = exchange(port, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % victim.encode())
    if b"body-" + victim.encode() not in answer or b"pwned" in answer:
        problems.append("victim got %r" % answer[-60:])
    return status, seconds, problems


def main():
    threading.Thread(target=backend, daemon=True).start()
    if not BACKEND_LISTENING.wait(10):
        sys.exit("the logging backend did not start")
    failures = 0
    rows = []
    cases = requests()
    responses = [("response: " + name, b"GET /resp/%d/{t} HTTP/1.1\r\nHost: t\r\n\r\n" % k, 1)
                 for k, (name, _) in enumerate(HOSTILE_RESPONSES)]
    for index, (name, template, sent) in enumerate(cases + [(n.encode(), t, s) for n, t, s in responses]):
        name = name.decode(errors="replace") if isinstance(name, bytes) else name
        lb = run("lb", LBD, index, name, template, sent)
        ha = run("ha", HAPROXY, index, name, template, sent)
        if lb[2]:
            failures += 1
        rows.append((name, lb, ha))
        print("%-40s lbd: %-32s %4.1fs %s | haproxy: %-32s %s" % (
            name[:40], lb[0][:32], lb[1], "FAIL " + "; ".join(lb[2]) if lb[2] else "ok",
            ha[0][:32], ("(" + "; ".join(ha[2]) + ")") if ha[2] else "ok"), flush=True)
    print("%d request cases, %d response cases; backend: %d requests parsed, %d unparsable inputs"
          % (len(cases), len(responses), len(parsed), len(invalid)))
    if len(cases) < 60 or len(responses) < 15:
        print("corpus too small"); return 1
    print("lbd: %d case(s) failed" % failures)
    return 1 if failures else 0


sys.exit(main())
