#!/usr/bin/env python3
"""The client side of the bundled example's end-to-end test: one request per VIP:port in the protocol of the
service; prints one row per VIP:port: "VIP:PORT KIND OK SERVER" or "VIP:PORT KIND FAILED REASON".
Usage: ei-client.py DEMO_CA TEST_CA STUDY_DIR."""
import http.client
import socket
import ssl
import subprocess
import sys

demo_ca, test_ca, study = sys.argv[1], sys.argv[2], sys.argv[3]
core, web, plain_web = "10.20.0.10", "10.20.0.20", "10.20.0.21"
table = [(core, 80, "http"), (core, 104, "dicom"), (core, 110, "dicom"), (core, 81, "http"), (core, 2310, "mllp"),
         (core, 2311, "mllp"), (core, 2762, "dicom"), (core, 4447, "echo"), (core, 5222, "echo"), (core, 5223, "echo"),
         (core, 7443, "echo"), (core, 6514, "echo"), (core, 8080, "http"), (core, 8443, "https"), (core, 9080, "http"),
         (core, 9081, "http"), (core, 10080, "http"), (core, 10123, "echo"), (core, 10124, "echo"),
         (web, 443, "tls-passthrough"), (plain_web, 80, "http")]


def http_get(vip, port, context=None, host=None):
    if context:
        connection = http.client.HTTPSConnection(vip, port, timeout=10, context=context)
        if host:
            connection = http.client.HTTPSConnection(host, port, timeout=10, context=context)
            connection.sock = context.wrap_socket(socket.create_connection((vip, port), timeout=10), server_hostname=host)
    else:
        connection = http.client.HTTPConnection(vip, port, timeout=10)
    connection.request("GET", "/")
    response = connection.getresponse()
    body = response.read().decode().strip()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}: {body[:60]}")
    return body.split()[0]


def run(vip, port, kind):
    if kind == "http":
        return http_get(vip, port)
    if kind == "https":
        context = ssl.create_default_context(cafile=demo_ca)
        return http_get(vip, port, context, host="ei-viewer.example.org")
    if kind == "tls-passthrough":
        return http_get(vip, port, ssl.create_default_context(cafile=test_ca))
    if kind == "echo":
        with socket.create_connection((vip, port), timeout=10) as s:
            greeting = s.recv(100).decode().split()
            s.sendall(b"ping\n")
            if s.recv(100) != b"ping\n":
                raise RuntimeError("no echo")
            return greeting[0]
    if kind == "mllp":
        with socket.create_connection((vip, port), timeout=10) as s:
            s.sendall(b"\x0bMSH|^~\\&|TEST|TEST|EI|EI|20260101000000||ADT^A01|E2E1|P|2.3\rPID|1||123\r\x1c\r")
            reply = b""
            while b"\x1c\r" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            if b"MSA|AA|E2E1" not in reply:
                raise RuntimeError(f"no AA: {reply!r}")
            return reply.split(b"|")[2].decode()
    if kind == "dicom":
        echo = subprocess.run(["echoscu", "-aec", "EI-CORE", vip, str(port)], capture_output=True, text=True, timeout=30)
        if echo.returncode != 0:
            raise RuntimeError(f"echoscu: {echo.stderr.strip()[:80]}")
        if port == 104:
            store = subprocess.run(["storescu", "-aec", "EI-CORE", "--scan-directories", vip, str(port), study],
                                   capture_output=True, text=True, timeout=60)
            if store.returncode != 0:
                raise RuntimeError(f"storescu: {store.stderr.strip()[:80]}")
            return "study-stored"
        return "echo-ok"
    raise RuntimeError(f"unknown kind {kind}")


for vip, port, kind in table:
    try:
        print(f"{vip}:{port} {kind} OK {run(vip, port, kind)}", flush=True)
    except Exception as error:
        print(f"{vip}:{port} {kind} FAILED {error}", flush=True)
