#!/usr/bin/env python3
"""A stand-in for systemd's side of sd_notify(3): a Unix datagram socket that records every message lbd sends.

  notify-listener.py SOCKET LOG PORT...

Each datagram becomes one line in LOG: "<seconds since start> <KEY=VALUE,...>". When a datagram carries READY=1,
the listener at once tries a TCP connection to 127.0.0.1:PORT for each PORT and appends "probe PORT open" or
"probe PORT refused" right after it, so the log shows what was bound at the moment lbd said it was ready.
"""
import os
import socket
import sys
import time

path, log_path, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
if os.path.exists(path):
    os.unlink(path)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
listener.bind(path)
start = time.monotonic()
with open(log_path, "a", buffering=1) as log:
    log.write("listening\n")
    while True:
        message = listener.recv(4096).decode()
        fields = ",".join(line for line in message.split("\n") if line)
        log.write(f"{time.monotonic() - start:.3f} {fields}\n")
        if "READY=1" in message.split("\n"):
            for port in ports:
                probe = socket.socket()
                probe.settimeout(1)
                try:
                    probe.connect(("127.0.0.1", port))
                    log.write(f"probe {port} open\n")
                except OSError as error:
                    log.write(f"probe {port} refused {error}\n")
                finally:
                    probe.close()
