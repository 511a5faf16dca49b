"""Real clients used by the integration tests: smtplib through python-socks proxies, curl."""

from __future__ import annotations

import shutil
import socket
import smtplib
import subprocess
from email.message import EmailMessage
from typing import Optional

from python_socks._abc import SyncResolver, SyncSocketStream
from python_socks.sync import Proxy


class ProxySMTP(smtplib.SMTP):
    """smtplib, connecting through a SOCKS4/4a/5 or HTTP CONNECT proxy (python-socks)."""

    def __init__(self, proxy_url: str, host: str, port: int, rdns: Optional[bool] = None, **kw) -> None:
        self.proxy_url = proxy_url
        self.rdns = rdns
        super().__init__(host, port, **kw)

    def _get_socket(self, host, port, timeout):
        proxy = Proxy.from_url(self.proxy_url, rdns=self.rdns)
        return proxy.connect(dest_host=host, dest_port=port, timeout=timeout or 10)


def make_message(i: int, *, subject: Optional[str] = None, body: Optional[str] = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Sender {i} <sender{i}@spam.example>"
    msg["To"] = "victim@example.org"
    msg["Subject"] = subject if subject is not None else f"Cheap meds #{i}"
    msg["Message-ID"] = f"<m{i}@spam.example>"
    msg.set_content(body if body is not None else f"Hello {i}\n.leading dot\n..two dots\nend\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def send_messages(smtp: smtplib.SMTP, messages: list[bytes], rcpts: list[str]) -> None:
    for raw in messages:
        smtp.sendmail("sender@spam.example", rcpts, raw)


def curl(*args: str, timeout: float = 20, input_bytes: Optional[bytes] = None) -> subprocess.CompletedProcess:
    exe = shutil.which("curl")
    assert exe, "curl is required (apt-get install curl)"
    return subprocess.run([exe, "-sS", "--max-time", "10", *args], capture_output=True, timeout=timeout,
                          input=input_bytes)


class HandlerStream(SyncSocketStream):
    """python-socks' stream interface, answered by one of our sans-IO handlers instead of a socket:
    a real client library's bytes in, our replies out. `one_reply_per_packet`: each client packet
    must get at most one reply (SOCKS5's rule)."""

    def __init__(self, handler, *, one_reply_per_packet: bool = False) -> None:
        self.handler = handler
        self.one_reply = one_reply_per_packet
        self.inbox = bytearray()
        self.actions: list = []

    def write(self, data: bytes) -> None:
        actions = self.handler.receive(data)
        self.actions += actions
        replies = [a for a in actions if isinstance(a, bytes)]
        assert not self.one_reply or len(replies) <= 1, "one reply per client packet"
        self.inbox += b"".join(replies)

    def read_exactly(self, n: int) -> bytes:
        assert len(self.inbox) >= n, "the reply was not sent whole"
        out = bytes(self.inbox[:n])
        del self.inbox[:n]
        return out

    def read(self, max_bytes: int = 65536) -> bytes:
        return self.read_exactly(min(max_bytes, len(self.inbox)))

    def close(self) -> None:
        pass


class NoResolver(SyncResolver):
    """Fails the test if the client library tries to resolve a name itself."""

    def resolve(self, host, port=0, family=socket.AF_UNSPEC):
        raise AssertionError("the client was asked to resolve")
