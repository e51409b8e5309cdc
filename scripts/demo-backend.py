#!/usr/bin/env python3
"""Small real servers for the quickstart demo, on loopback only.

  demo-backend.py http NAME PORT   HTTP/1.1 server answering every GET with "NAME" and the headers it saw
  demo-backend.py echo NAME PORT   TCP server that greets with NAME and echoes what it receives
"""
import http.server
import socket
import socketserver
import sys
import threading


def http_server(name, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = (f"{name}\nX-Forwarded-For: {self.headers.get('X-Forwarded-For', '')}\n"
                    f"Cookie: {self.headers.get('Cookie', '')}\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def echo_server(name, port):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                self.request.sendall(f"hello from {name}\n".encode())
                while data := self.request.recv(65536):
                    self.request.sendall(data)
                self.request.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # health checks connect and leave at once

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    kind, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"http": http_server, "echo": echo_server}[kind](name, port)
