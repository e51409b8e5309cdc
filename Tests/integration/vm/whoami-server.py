#!/usr/bin/env python3
"""A real server for the Layer 4 tests: answers every GET with its name and the client address it saw.
  whoami-server.py NAME PORT [PORT...]"""
import http.server
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection can carry several requests

    def do_GET(self):
        body = f"{sys.argv[1]} {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


servers = [http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), Handler) for port in sys.argv[2:]]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
