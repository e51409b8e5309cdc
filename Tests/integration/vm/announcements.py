#!/usr/bin/env python3
"""Listens on a link for announcements of addresses and prints each once:
  garp ADDRESS MAC   a gratuitous ARP (sender address == target address)
  na ADDRESS MAC     an unsolicited neighbour advertisement with the override flag
  announcements.py INTERFACE SECONDS [READY_FILE [STOP_FILE]]
READY_FILE is created once it listens; it stops after SECONDS, or as soon as STOP_FILE exists.
Each announcement is followed by "at MS" and itself again: when the client received it."""
import os
import socket
import struct
import sys
import time

interface, seconds = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # every protocol
sock.bind((interface, 0))
if len(sys.argv) > 3:
    open(sys.argv[3], "w").close()
sock.settimeout(0.2)
seen = set()
end = time.time() + seconds
stop = sys.argv[4] if len(sys.argv) > 4 else None
while time.time() < end and not (stop and os.path.exists(stop)):
    try:
        frame = sock.recv(2048)
    except socket.timeout:
        continue
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
