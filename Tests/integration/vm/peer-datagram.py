#!/usr/bin/env python3
"""Hostile peer messages for the pair test.
  peer-datagram.py capture INTERFACE PORT SOURCE FILE   waits for one UDP datagram from SOURCE to PORT on
                                                        INTERFACE (as the peer sent it) and saves its payload
  peer-datagram.py send HOST PORT FILE                  sends a saved payload again (a replay)
  peer-datagram.py forge HOST PORT NODE SERVICE SERVER  sends a well-formed message from NODE, putting SERVER of
                                                        SERVICE online now, with a MAC made without the secret"""
import json
import os
import socket
import struct
import sys
import time

command = sys.argv[1]
if command == "capture":
    interface, port, source, out = sys.argv[2], int(sys.argv[3]), socket.inet_aton(sys.argv[4]), sys.argv[5]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    sock.bind((interface, 0))
    sock.settimeout(30)
    while True:
        frame = sock.recv(65536)
        ip = frame[14:]
        if ip[9] != 17 or ip[12:16] != source:  # UDP from the peer (the node's own datagrams pass here too)
            continue
        header = (ip[0] & 0x0F) * 4
        destination = struct.unpack("!H", ip[header + 2:header + 4])[0]
        if destination == port:
            open(out, "wb").write(ip[header + 8:])
            break
elif command == "send":
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(open(sys.argv[4], "rb").read(), (sys.argv[2], int(sys.argv[3])))
elif command == "forge":
    now = int(time.time() * 1000)
    override = {"change": {"admin": "online", "at": now, "node": sys.argv[4]}, "server": sys.argv[6], "service": sys.argv[5]}
    body = json.dumps({"configDigest": "0", "node": sys.argv[4], "nonce": os.urandom(16).hex(), "overrides": [override],
                       "role": "master", "sentAt": now}, sort_keys=True).encode()
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(os.urandom(32) + body, (sys.argv[2], int(sys.argv[3])))
