#!/usr/bin/env python3
"""One keep-alive HTTP connection held open across operator actions.
  held-connection.py HOST DIR: connects, touches DIR/mark-ready, then for each of step1..step3 waits for the file
  DIR/mark-stepN and sends a GET on the same connection, printing "stepN ANSWER" (or "stepN FAILED ...")."""
import os
import socket
import sys
import time

host, folder = sys.argv[1], sys.argv[2]
connection = socket.create_connection((host, 80), timeout=10)
open(os.path.join(folder, "mark-ready"), "w").close()
for step in ("step1", "step2", "step3"):
    while not os.path.exists(os.path.join(folder, "mark-" + step)):
        time.sleep(0.05)
    try:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
        reply = b""
        def complete():
            if b"\r\n\r\n" not in reply:
                return False
            head, body = reply.split(b"\r\n\r\n", 1)
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            return bool(length) and len(body) >= length[0]
        while not complete():
            chunk = connection.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            reply += chunk
        print(step, reply.split(b"\r\n\r\n", 1)[1].decode().strip(), flush=True)
    except Exception as error:
        print(step, "FAILED", error, flush=True)
    open(os.path.join(folder, "mark-" + step + "-done"), "w").close()
