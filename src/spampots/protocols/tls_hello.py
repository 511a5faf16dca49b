"""Read a TLS ClientHello (RFC 8446 4.1.2, RFC 5246 7.4.1.2), keep what it names, refuse.

We play the far end of a tunnel to a TLS port but hold no key for the name the
client asks for, so the handshake cannot be completed. What the hello says is
still worth keeping: the server name (SNI, RFC 6066), the ALPN list
(RFC 7301), the highest version offered (supported_versions, else
client_version) and how many cipher suites were offered. Then we answer with a
fatal handshake_failure alert, as a server that shares no cipher would, and
close.

The hello may arrive in pieces and may be fragmented over several handshake
records (RFC 8446 5.1); it is reassembled up to :data:`MAX_HELLO` bytes.
"""

from __future__ import annotations

from typing import Optional

from ..events import TlsHello
from .base import Action, Close, Context, Handler, error_event

MAX_HELLO = 16 * 1024  # a ClientHello with post-quantum key shares is ~2 KiB
HANDSHAKE, ALERT = 0x16, 0x15
CLIENT_HELLO = 1
EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS = 0, 16, 43
MAX_RECORD = 2**14 + 2048  # RFC 5246 6.2.3: the largest record a peer may send

#: fatal alerts, record version TLS 1.2: handshake_failure (40) after a good
#: hello, decode_error (50) after a malformed one
ALERT_HANDSHAKE_FAILURE = bytes((ALERT, 3, 3, 0, 2, 2, 40))
ALERT_DECODE_ERROR = bytes((ALERT, 3, 3, 0, 2, 2, 50))

VERSIONS = {0x0300: "SSL3.0", 0x0301: "TLS1.0", 0x0302: "TLS1.1", 0x0303: "TLS1.2", 0x0304: "TLS1.3"}


class Malformed(Exception):
    """Raised inside the parser only; turned into a ProtocolError."""


def _grease(value: int) -> bool:
    """RFC 8701 reserved values (0x0A0A, 0x1A1A, ...), sent to keep servers tolerant."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def version_name(value: int) -> str:
    return VERSIONS.get(value, f"0x{value:04x}")


class _Reader:
    """Bounds-checked reads over one buffer."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: Optional[int] = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise Malformed(f"needs {n} bytes at offset {self.pos}, {self.end - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> "_Reader":
        """The sub-reader of a length-prefixed vector; skips it here."""
        n = self.int(len_bytes)
        start = self.pos
        self.take(n)
        return _Reader(self.data, start, start + n)

    def left(self) -> int:
        return self.end - self.pos


def parse_client_hello(body: bytes) -> dict:
    """The fields we keep from a ClientHello body (after the 4-byte handshake header)."""
    r = _Reader(body)
    client_version = r.int(2)
    r.take(32)  # random
    session_id = r.vector(1)
    if session_id.left() > 32:
        raise Malformed("session id longer than 32 bytes")
    suites = r.vector(2)
    if suites.left() < 2 or suites.left() % 2:
        raise Malformed(f"cipher suite list of {suites.left()} bytes")
    cipher_count = sum(1 for _ in range(suites.left() // 2) if not _grease(suites.int(2)))
    if r.vector(1).left() < 1:
        raise Malformed("no compression methods")
    sni: Optional[str] = None
    alpn: list[str] = []
    highest = client_version
    if r.left():  # extensions are optional in TLS <= 1.2
        exts = r.vector(2)
        if r.left():
            raise Malformed(f"{r.left()} bytes after the extensions")
        while exts.left():
            ext_type = exts.int(2)
            ext = exts.vector(2)
            if ext_type == EXT_SERVER_NAME and ext.left():
                names = ext.vector(2)
                while names.left():
                    name_type = names.int(1)
                    name = names.vector(2)
                    if name_type == 0 and sni is None:
                        sni = name.take(name.left()).decode("ascii", "backslashreplace")
            elif ext_type == EXT_ALPN:
                protos = ext.vector(2)
                while protos.left():
                    proto = protos.vector(1)
                    alpn.append(proto.take(proto.left()).decode("ascii", "backslashreplace"))
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                offered = ext.vector(1)
                if offered.left() % 2:
                    raise Malformed("odd supported_versions length")
                versions = [v for v in (offered.int(2) for _ in range(offered.left() // 2)) if not _grease(v)]
                if versions:
                    highest = max(versions)
    return {"sni": sni, "alpn": alpn, "tls_version": version_name(highest), "cipher_count": cipher_count}


class TlsHelloReader(Handler):
    """Reassembles one ClientHello, records it, refuses the handshake."""

    protocol: str = "tls"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._buf = bytearray()  # record layer bytes not yet taken apart
        self._hello = bytearray()  # handshake bytes from the records so far
        self._done = False

    def start(self) -> list[Action]:
        return []

    def receive(self, data: bytes) -> list[Action]:
        if self._done:
            return []
        self._buf += data
        try:
            return self._records()
        except Malformed as exc:
            return self._fail("tls.malformed", str(exc))

    def eof(self) -> list[Action]:
        if self._done or not (self._buf or self._hello):
            return []
        return self._fail("tls.truncated", f"eof with {len(self._hello)} handshake and "
                                           f"{len(self._buf)} record bytes pending", close=False)

    def _records(self) -> list[Action]:
        buf = self._buf
        while len(buf) >= 5:
            if buf[0] != HANDSHAKE:
                raise Malformed(f"record type {buf[0]:#04x} before the ClientHello was complete")
            if buf[1] != 3:
                raise Malformed(f"record version {buf[1]:#04x}{buf[2]:02x}")
            length = int.from_bytes(buf[3:5], "big")
            if length == 0 or length > MAX_RECORD:
                raise Malformed(f"record length {length}")
            if len(buf) < 5 + length:
                return []
            self._hello += buf[5 : 5 + length]
            del buf[: 5 + length]
            if len(self._hello) >= 4:
                if self._hello[0] != CLIENT_HELLO:
                    raise Malformed(f"handshake type {self._hello[0]} instead of ClientHello")
                size = int.from_bytes(self._hello[1:4], "big")
                if size > MAX_HELLO:
                    return self._fail("tls.too_large", f"ClientHello of {size} bytes (limit {MAX_HELLO})")
                if len(self._hello) >= 4 + size:
                    return self._hello_done(bytes(self._hello[4 : 4 + size]))
        return []

    def _hello_done(self, body: bytes) -> list[Action]:
        fields = parse_client_hello(body)
        self._done = True
        ctx = self.ctx
        event = TlsHello(target_host=ctx.target_host or "", target_port=ctx.target_port or ctx.listener_port, **fields)
        return [event, ALERT_HANDSHAKE_FAILURE, Close("server")]

    def _fail(self, kind: str, detail: str, close: bool = True) -> list[Action]:
        self._done = True
        data = bytes(self._hello[:128]) + bytes(self._buf[:128])
        event = error_event(kind, detail, data)
        return [event, ALERT_DECODE_ERROR, Close("protocol")] if close else [event]
