"""SOCKS4 and SOCKS4a, server side, sans-IO.

Request (client -> server)::

    VN=4 | CD | DSTPORT (2) | DSTIP (4) | USERID ... NUL | [HOSTNAME ... NUL]

The HOSTNAME field is the 4a extension: it is present when DSTIP is 0.0.0.x
with x != 0, and the server is meant to resolve it. We never resolve; the name
is only recorded and handed to the far end we play.

Reply (server -> client), always 8 bytes::

    VN=0 | CD (0x5A granted, 0x5B rejected) | DSTPORT (2) | DSTIP (4)

Clients ignore the address in a CONNECT reply; most servers echo the request's,
and so do we.
"""

from __future__ import annotations

import ipaddress

from ..events import ProxyRequest
from .base import Action, Close, Context, Handler, Tunnel, error_event, limit_event

VERSION = 4
GRANTED = 0x5A
REJECTED = 0x5B
COMMANDS: dict[int, str] = {1: "connect", 2: "bind"}
_FIXED = 8  # VN CD DSTPORT DSTIP


class Socks4Server(Handler):
    """One SOCKS4/4a request; ends in a :class:`Tunnel` or a :class:`Close`."""

    protocol: str

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.protocol = "socks4"
        self._buf = bytearray()
        self._done = False

    def start(self) -> list[Action]:
        return []

    def receive(self, data: bytes) -> list[Action]:
        if self._done:  # after Tunnel/Close the glue owns the connection
            return []
        self._buf += data
        actions = self._parse()
        self._done = bool(actions)  # every non-empty answer is final
        return actions

    def eof(self) -> list[Action]:
        if self._done or not self._buf:
            return []
        self._done = True
        return [error_event("socks4.truncated", f"eof after {len(self._buf)} bytes of a request", bytes(self._buf))]

    def _parse(self) -> list[Action]:
        buf = self._buf
        if not buf:
            return []
        # Fail on the first bytes already: a non-SOCKS4 client is not kept waiting.
        if buf[0] != VERSION:
            return [error_event("socks4.bad_version", f"version byte {buf[0]:#04x}", bytes(buf)), Close("protocol")]
        if len(buf) >= 2 and buf[1] not in COMMANDS:
            return self._refuse("socks4.bad_command", f"command {buf[1]:#04x}")
        if len(buf) < _FIXED:
            return []

        port = int.from_bytes(buf[2:4], "big")
        ip = bytes(buf[4:8])
        is_4a = ip[:3] == b"\0\0\0" and ip[3] != 0
        if is_4a:
            self.protocol = "socks4a"

        fields: list[bytes] = []
        pos = _FIXED
        limit = self.ctx.limits.line_length
        for name in ("userid", "hostname")[: 2 if is_4a else 1]:
            nul = buf.find(0, pos, pos + limit + 1)
            if nul < 0:
                if len(buf) - pos > limit:
                    return [limit_event("line_length", limit, len(buf) - pos),
                            *self._refuse("socks4.oversized", f"{name} longer than {limit} bytes", pos, "limit")]
                return []
            fields.append(bytes(buf[pos:nul]))
            pos = nul + 1

        userid = fields[0].decode("utf-8", "backslashreplace") or None
        if is_4a:
            host = fields[1].decode("utf-8", "backslashreplace")
            if not host:
                return self._refuse("socks4.bad_hostname", "empty 4a hostname")
        else:
            host = str(ipaddress.IPv4Address(ip))

        command = COMMANDS[buf[1]]
        reply = bytes((0, GRANTED if command == "connect" else REJECTED)) + bytes(buf[2:8])
        event = ProxyRequest(
            proxy=self.protocol, command=command, target_host=host, target_port=port,
            username=userid, outcome="granted" if command == "connect" else "rejected",
            reply_code=reply[1],
        )
        if command == "connect":
            return [event, reply, Tunnel(self.protocol, host, port, rest=bytes(buf[pos:]))]
        return [event, reply, Close("server")]  # BIND: we never open a listening port

    def _refuse(self, kind: str, detail: str, at: int = 0, reason: str = "protocol") -> list[Action]:
        """Record the error, answer 'rejected' as a real server would, close."""
        reply = bytes((0, REJECTED)) + bytes(self._buf[2:8]).ljust(6, b"\0")
        return [error_event(kind, detail, bytes(self._buf[at:])), reply, Close(reason)]
