"""A tiny DNS responder on a loopback address, for scanners that resolve names themselves.

nmap's socks-open-proxy resolves www.google.com before asking the proxy for it.
The tests must not let that query reach the machine's real resolver, so nmap is
pointed (--dns-servers) at this stub, which answers every A query with an
address from TEST-NET-1. The address only travels inside the SOCKS request to
our sensor; nothing ever connects to it.
"""

from __future__ import annotations

import socket
import struct
import threading

ANSWER_IP = "192.0.2.80"


class DnsStub:
    def __init__(self, host: str = "127.53.0.1", port: int = 53) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.host = host
        self.queries: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "DnsStub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self.answer(data)
            if reply:
                self.sock.sendto(reply, peer)  # back to the loopback client only

    def answer(self, query: bytes) -> bytes:
        if len(query) < 12:
            return b""
        qid, _flags, qd = struct.unpack("!HHH", query[:6])
        pos, labels = 12, []
        while pos < len(query) and query[pos]:
            n = query[pos]
            labels.append(query[pos + 1:pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        question = query[12:pos + 5]
        qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0] if pos + 3 <= len(query) else 0
        self.queries.append(".".join(labels))
        header_ok = struct.pack("!HHHHHH", qid, 0x8180, 1, 1 if qtype == 1 else 0, 0, 0)
        if qtype != 1:
            return header_ok + question
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ANSWER_IP)
        return header_ok + question + rr
