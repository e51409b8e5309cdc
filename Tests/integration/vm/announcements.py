#!/usr/bin/env python3
"""Listens on a link for announcements of addresses and prints each once:
  garp ADDRESS MAC   a gratuitous ARP (sender address == target address)
  na ADDRESS MAC     an unsolicited neighbour advertisement with the override flag
  announcements.py INTERFACE SECONDS [READY_FILE [STOP_FILE]]
READY_FILE is created once it listens; it stops after SECONDS, or as soon as STOP_FILE exists.
Each announcement is followed by "at MS" and itself again: when the client received it."""
import os
import select
import socket
import struct
import sys
import time

interface, seconds = sys.argv[1], float(sys.argv[2])
# Only ARP and IPv6 frames: a socket for every protocol also gets every frame of a transfer the client makes at the
# same time (the DICOM study of the first fail-over), which this loop under TCG cannot keep up with, and the kernel
# then drops the announcements with the rest.
sockets = []
for protocol in (0x0806, 0x86DD):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(protocol))
    sock.bind((interface, protocol))
    sock.setblocking(False)
    sockets.append(sock)
if len(sys.argv) > 3:
    open(sys.argv[3], "w").close()
seen = set()
end = time.time() + seconds
stop = sys.argv[4] if len(sys.argv) > 4 else None
pending = []
while time.time() < end and not (stop and os.path.exists(stop)):
    if not pending:
        ready, _, _ = select.select(sockets, [], [], 0.2)
        for sock in ready:
            while True:
                try:
                    frame, address = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                if address[2] != socket.PACKET_OUTGOING:
                    pending.append(frame)
        continue
    frame = pending.pop(0)
    ethertype = struct.unpack("!H", frame[12:14])[0]
    line = None
    if ethertype == 0x0806 and len(frame) >= 42:
        sender_mac, sender_ip, target_ip = frame[22:28], frame[28:32], frame[38:42]
        if sender_ip == target_ip:
            line = f"garp {socket.inet_ntoa(sender_ip)} {sender_mac.hex(':')}"
    elif ethertype == 0x86DD and len(frame) >= 54 + 24 and frame[20] == 58 and frame[54] == 136:
        flags, target = frame[58], frame[62:78]
        if flags & 0x20:
            line = f"na {socket.inet_ntop(socket.AF_INET6, target)} {frame[80:86].hex(':')}"
    if line and line not in seen:
        seen.add(line)
        print(line, flush=True)
        print(f"at {int(time.time() * 1000)} {line}", flush=True)  # when it arrived, in epoch milliseconds
