#!/usr/bin/env python3
"""Real peers for the clinical health checks, on loopback.
  clinical-peers.py verification-scp AE PORT [require-called] [status HEX]   pynetdicom Verification SCP
  clinical-peers.py mllp PORT CODE [TEXT]                                   HL7 listener answering MSA-1 = CODE
"""
import socket
import sys
import threading


def verification_scp(ae_title, port, options):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(Verification)
    ae.require_called_aet = "require-called" in options
    handlers = []
    if "status" in options:
        status = int(options[options.index("status") + 1], 16)
        handlers.append((evt.EVT_C_ECHO, lambda event: status))
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=handlers)


def mllp(port, code, text):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)

    def serve(connection):
        data = b""
        try:
            while b"\x1c\r" not in data:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                data += chunk
            message = data[data.index(b"\x0b") + 1:data.index(b"\x1c")].decode()
            msh = message.split("\r")[0].split("|")
            control_id = msh[9] if len(msh) > 9 else ""
            ack = f"MSH|^~\\&|ENGINE|HOSP|LB|LB|20260101000000||ACK|{control_id}|P|2.3\rMSA|{code}|{control_id}|{text}\r"
            connection.sendall(b"\x0b" + ack.encode() + b"\x1c\r")
        finally:
            connection.close()

    while True:
        connection, _ = server.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()


if __name__ == "__main__":
    if sys.argv[1] == "verification-scp":
        verification_scp(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        mllp(int(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
