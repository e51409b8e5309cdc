#!/usr/bin/env python3
"""New connections in a loop until DIR/loop-stop-NAME exists; one line per attempt: "START_MS ok" or "START_MS FAIL why".
  loop.py http URL DIR NAME       a GET on a new connection (Connection: close); ok on 200
  loop.py echo HOST PORT DIR NAME connect, send a line, read it back, close"""
import os
import socket
import sys
import time
import urllib.request

mode = sys.argv[1]
if mode == "http":
    url, folder, name = sys.argv[2], sys.argv[3], sys.argv[4]
else:
    host, port, folder, name = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
stop = os.path.join(folder, "loop-stop-" + name)
while not os.path.exists(stop):
    started = int(time.time() * 1000)
    try:
        if mode == "http":
            request = urllib.request.Request(url, headers={"Connection": "close"})
            with urllib.request.urlopen(request, timeout=5) as reply:
                reply.read()
                result = "ok" if reply.status == 200 else f"FAIL status {reply.status}"
        else:
            with socket.create_connection((host, port), timeout=5) as connection:
                connection.sendall(b"ping\n")
                echoed = b""
                while len(echoed) < 5:
                    chunk = connection.recv(5 - len(echoed))
                    if not chunk:
                        break
                    echoed += chunk
                result = "ok" if echoed == b"ping\n" else f"FAIL echoed {echoed!r}"
    except Exception as error:
        result = f"FAIL {error!r}"
    print(started, result, flush=True)
    time.sleep(0.1)
