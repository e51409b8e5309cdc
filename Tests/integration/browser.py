#!/usr/bin/env python3
"""Drives Debian's headless chromium over the DevTools protocol (a websocket), standard library only.

  browser.py URL --expect-service NAME... --kill PID --server SERVICE/SERVER --within SECONDS
             --screenshot PATH [--screenshot PATH...]

Opens URL once, waits until the rendered page lists every expected virtual service, marks the page's window
(a navigation or reload would drop the mark), kills PID (a real server), and measures how long the page takes to
show SERVICE/SERVER down (and its reason, when /status.json carries one) without being reloaded. Fails (exit 1)
if that takes longer than --within seconds. Screenshots are taken at the end.
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


class DevTools:
    """One websocket to one page target; requests by id, events ignored."""

    def __init__(self, ws_url):
        host_port, path = ws_url[len("ws://"):].split("/", 1)
        host, port = host_port.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("devtools closed the websocket handshake")
            response += chunk
        if b" 101 " not in response.split(b"\r\n")[0]:
            raise RuntimeError(f"devtools refused the websocket: {response[:200]!r}")
        self.buffer = response.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0

    def _read(self, count):
        while len(self.buffer) < count:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("devtools closed the websocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _receive(self):
        message = b""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode in (0x1, 0x2, 0x0):
                message += payload
                if first & 0x80:
                    return json.loads(message)
            elif opcode == 0x8:
                raise RuntimeError("devtools closed the websocket")

    def call(self, method, **params):
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


def wait_for(what, timeout, condition):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"FAIL: {what} (waited {timeout} s)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--expect-service", action="append", default=[])
    parser.add_argument("--kill", type=int, required=True)
    parser.add_argument("--server", required=True, help="SERVICE/SERVER that the kill takes down")
    parser.add_argument("--within", type=float, required=True)
    parser.add_argument("--screenshot", action="append", default=[])
    args = parser.parse_args()
    service, server = args.server.split("/", 1)
    base = args.url.split("?")[0].rstrip("/")

    chromium = shutil.which("chromium") or sys.exit("FAIL: chromium missing (scripts/setup test installs it)")
    profile = tempfile.mkdtemp(prefix="lb-chromium-")
    browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                "--window-size=1440,900", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        wait_for("chromium did not open its DevTools port", 30,
                 lambda: os.path.exists(port_file) and open(port_file).read().strip())
        port = int(open(port_file).read().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        tools.call("Page.navigate", url=args.url)

        listed = lambda: tools.evaluate(
            "JSON.stringify([...document.querySelectorAll('section.service')].map(s => s.dataset.service))")
        wait_for(f"the page does not list every VIP {args.expect_service}", 20,
                 lambda: set(args.expect_service) <= set(json.loads(listed() or "[]")))
        print(f"page lists the VIPs: {json.loads(listed())}")
        row = f"document.querySelector('section[data-service=\"{service}\"] tr[data-server=\"{server}\"]')"
        if tools.evaluate(f"{row}?.dataset.health") != "up":
            sys.exit(f"FAIL: {service}/{server} is not shown up before the kill")
        mark = os.urandom(8).hex()
        tools.evaluate(f"window.lbTestMark = '{mark}'")
        updates_before = int(tools.evaluate("document.body.dataset.updates") or 0)

        os.kill(args.kill, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(f"{service}/{server} not shown down within {args.within} s of the kill", args.within,
                 lambda: tools.evaluate(f"{row}?.dataset.health") == "down")
        seconds = time.monotonic() - killed
        if tools.evaluate("window.lbTestMark") != mark:
            sys.exit("FAIL: the page was reloaded (the window's mark is gone)")
        updates_after = int(tools.evaluate("document.body.dataset.updates") or 0)
        print(f"page shows {service}/{server} down {seconds:.2f} s after the kill, without a reload "
              f"({updates_after - updates_before} in-place updates)")

        status = json.load(urllib.request.urlopen(base + "/status.json", timeout=10))
        entry = next(s for v in status if v["name"] == service for s in v["servers"] if s["name"] == server)
        reason = entry.get("reason")
        if not reason:
            sys.exit(f"FAIL: /status.json carries no reason for the down server: {entry}")
        wait_for(f"the page does not show the reason {reason!r}", 5,
                 lambda: reason in (tools.evaluate(f"{row}?.innerText") or ""))
        print(f"page shows the reason: {reason}")

        # The last transitions: the newest row is this server going down, with the same reason.
        newest = "document.querySelector('#transitions tbody tr')"
        wait_for("the page's last transitions do not start with the server going down", 5,
                 lambda: tools.evaluate(f"{newest}?.dataset.server") == f"{service}/{server}"
                 and tools.evaluate(f"{newest}?.dataset.health") == "down"
                 and reason in (tools.evaluate(f"{newest}?.innerText") or ""))
        transitions = json.load(urllib.request.urlopen(base + "/transitions.json", timeout=10))
        if (transitions[0]["service"], transitions[0]["server"], transitions[0]["health"]) != (service, server, "down"):
            sys.exit(f"FAIL: /transitions.json does not start with the server going down: {transitions[:3]}")
        print(f"last transitions ({len(transitions)} listed) start with: {tools.evaluate(newest + '.innerText')!r}")

        tools.evaluate("window.scrollTo(0, 0)")
        for path in args.screenshot:
            shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "wb") as file:
                file.write(base64.b64decode(shot["data"]))
            print(f"screenshot: {path}")
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
