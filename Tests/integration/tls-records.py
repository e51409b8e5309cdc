#!/usr/bin/env python3
"""What lb's TLS termination puts on the wire, seen record by record.

  tls-records.py backend PORT        a real server that answers each request with ONE socket write: a GET with
                                     "hello" (GET /big/N: N bytes), a POST with the SHA-256 of the body it received
  tls-records.py client PORT CAFILE  through lb (TLS): counts the TLS records carrying each response, sends two
                                     pipelined GETs in one record, a 1 MiB POST and a 4 MiB download that ends
                                     with the connection, read slowly; prints one line per check and
                                     exits 1 on the first that fails
"""
import hashlib
import socket
import ssl
import sys
import threading
import time


def backend(port):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve_and_close, args=(conn,), daemon=True).start()


def serve_and_close(conn):
    try:
        serve(conn)
    except OSError:
        pass
    conn.close()


def serve(conn):
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(data) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        body, data = data[:length], data[length:]
        target = head.split(b" ")[1]
        if target.startswith(b"/big/"):
            answer = b"x" * int(target[5:])
        elif head.startswith(b"POST"):
            answer = hashlib.sha256(body).hexdigest().encode()
        else:
            answer = b"hello"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))


class RecordClient:
    """TLS over a memory BIO, so every record from the server is seen before it is decrypted."""

    def __init__(self, port, cafile):
        context = ssl.create_default_context(cafile=cafile)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self.raw = b""
        self.plain = b""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.send_pending()
                self.incoming.write(self.recv())
        self.send_pending()

    def recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise SystemExit("FAIL: lb closed the connection")
        return data

    def send_pending(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def send(self, plaintext):
        self.tls.write(plaintext)
        self.send_pending()

    def read_to_end(self):
        """Reads until the server closes: what plaintext came, and whether the TLS session ended with close_notify."""
        plain = b""
        self.incoming.write(self.raw)
        self.raw = b""
        while True:
            try:
                got = self.tls.read(65536)
                if not got:  # close_notify: OpenSSL reports the clean end as an empty read
                    return self.plain + plain, True
                plain += got
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return self.plain + plain, True
            data = self.sock.recv(65536)
            if not data:
                return self.plain + plain, False
            self.incoming.write(data)

    def response(self, body_length):
        """Reads one response with a body of body_length bytes; returns it and the number of records that carried
        bytes while it was read (records that decrypt to nothing, such as session tickets, are not counted).
        What follows it (a pipelined response) is kept for the next call."""
        records = 0
        while True:
            if b"\r\n\r\n" in self.plain:
                end = self.plain.index(b"\r\n\r\n") + 4 + body_length
                if len(self.plain) >= end:
                    response, self.plain = self.plain[:end], self.plain[end:]
                    return response, records
            while len(self.raw) < 5 or len(self.raw) < 5 + int.from_bytes(self.raw[3:5], "big"):
                self.raw += self.recv()
            size = 5 + int.from_bytes(self.raw[3:5], "big")
            record, self.raw = self.raw[:size], self.raw[size:]
            self.incoming.write(record)
            got = b""
            while True:
                try:
                    got += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
            if got:
                records += 1
                self.plain += got


def client(port, cafile):
    c = RecordClient(port, cafile)
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    response, records = c.response(5)
    if not response.endswith(b"hello") or records != 1:
        raise SystemExit(f"FAIL: a response written at once came in {records} TLS records: {response!r}")
    print("one response written at once: 1 TLS record (head and body together)")

    c.send(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    first, _ = c.response(5)
    second, _ = c.response(5)
    if not (first.endswith(b"hello") and second.endswith(b"hello")):
        raise SystemExit(f"FAIL: two pipelined requests in one record: {first!r} {second!r}")
    print("two pipelined requests in one TLS record: both answered")

    body = bytes(range(256)) * 4096  # 1 MiB, sent as records of 16 KiB that TCP splits anywhere
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    response, _ = c.response(64)
    if not response.endswith(hashlib.sha256(body).hexdigest().encode()):
        raise SystemExit(f"FAIL: the 1 MiB upload reached the server changed: {response[-64:]!r}")
    print("1 MiB upload over TLS: the server received it byte for byte")

    # The last response of a connection lb closes after it (Connection: close), to a client that reads slowly:
    # lb's queue holds the end of the body when the response completes, and the close must wait for it.
    c = RecordClient(port, cafile)
    size = 4 * 1024 * 1024
    c.send(b"GET /big/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
    time.sleep(1)  # the slow reader under test: lb fills the socket and queues the rest meanwhile
    response, _ = c.response(size)
    body = response.split(b"\r\n\r\n", 1)[1]
    if len(body) != size or body.strip(b"x"):
        raise SystemExit(f"FAIL: the last response before the close arrived cut: {len(body)} of {size} bytes")
    rest, ended_cleanly = c.read_to_end()
    if rest or not ended_cleanly:
        raise SystemExit(f"FAIL: after the last response: {len(rest)} more bytes, close_notify {ended_cleanly}")
    print("4 MiB response, then the close, to a slow reader: every byte, then close_notify")


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        backend(int(sys.argv[2]))
    else:
        client(int(sys.argv[2]), sys.argv[3])
