#!/usr/bin/env python3
"""One Enterprise Imaging server for the bundled example's end-to-end test: answers on every port the example
names, each with its protocol. Usage: ei-server.py NAME CERT KEY SPEC... where SPEC is http:PORT, https:PORT,
mllp:PORT or echo:PORT. HTTP(S) answers "NAME PORT" (and sets nothing); echo greets with "NAME PORT" and echoes;
mllp answers each MLLP-framed message with an ACK (MSA|AA)."""
import socket
import socketserver
import ssl
import sys
import threading

name, cert, key, specs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(cert, key)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def http_handler(port):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                body = f"{name} {port}\n".encode()
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
                self.wfile.flush()
    return Handler


def echo_handler(port):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(f"{name} {port}\n".encode())
            self.wfile.flush()
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                self.request.sendall(data)
    return Handler


class MLLPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        buffer = b""
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            buffer += data
            while b"\x1c\r" in buffer:
                message, buffer = buffer.split(b"\x1c\r", 1)
                control = b"LBCHECK"
                for segment in message.lstrip(b"\x0b").split(b"\r"):
                    if segment.startswith(b"MSH"):
                        fields = segment.split(b"|")
                        control = fields[9] if len(fields) > 9 else control
                ack = (b"MSH|^~\\&|" + name.encode() + b"|EI|LB|LB|20260101000000||ACK|" + control + b"|P|2.3\r"
                       + b"MSA|AA|" + control + b"\r")
                self.request.sendall(b"\x0b" + ack + b"\x1c\r")


def serve(kind, port):
    if kind == "mllp":
        handler = MLLPHandler
    elif kind == "echo":
        handler = echo_handler(port)
    else:
        handler = http_handler(port)
    server = Server(("0.0.0.0", port), handler)
    if kind == "https":
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


for spec in specs:
    kind, port = spec.split(":")
    threading.Thread(target=serve, args=(kind, int(port)), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
