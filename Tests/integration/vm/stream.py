#!/usr/bin/env python3
"""One established TCP connection held across fail-overs, checked by content.
  stream.py HOST PORT DIR: connects, touches DIR/stream-ready, then every 50 ms sends a numbered line and reads its
  echo back, until DIR/stream-stop exists. Prints "stream ok LINES lines BYTES bytes, longest wait MS ms" or
  "stream FAILED after LINES lines: REASON" (a reset, a closed connection, a wrong or missing byte)."""
import os
import socket
import sys
import time

host, port, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
connection = socket.create_connection((host, port), timeout=20)
open(os.path.join(folder, "stream-ready"), "w").close()
lines = total = 0
longest = 0.0
try:
    while not os.path.exists(os.path.join(folder, "stream-stop")):
        line = f"line {lines:06d} {'x' * 40}\n".encode()
        sent = time.monotonic()
        connection.sendall(line)
        echoed = b""
        while len(echoed) < len(line):
            chunk = connection.recv(len(line) - len(echoed))
            if not chunk:
                raise ConnectionError("closed by the other side")
            echoed += chunk
        if echoed != line:
            raise ValueError(f"echo differs: {echoed!r} for {line!r}")
        longest = max(longest, time.monotonic() - sent)
        lines += 1
        total += len(line)
        time.sleep(0.05)
    print(f"stream ok {lines} lines {total} bytes, longest wait {int(longest * 1000)} ms", flush=True)
except Exception as error:
    print(f"stream FAILED after {lines} lines: {error!r}", flush=True)
