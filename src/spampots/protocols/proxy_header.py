"""HAProxy PROXY protocol v1 and v2 (receiver side), sans-IO.

A trusted front end (a load balancer, a port forwarder) puts one header before
the client's first byte, telling us the real source address:

v1, text, at most 107 bytes including the CRLF::

    PROXY TCP4 192.0.2.1 198.51.100.7 51234 1080\\r\\n
    PROXY TCP6 2001:db8::1 2001:db8::2 51234 1080\\r\\n
    PROXY UNKNOWN[ anything]\\r\\n

v2, binary: the 12-byte signature, one byte version (high nibble, 2) and
command (low nibble: 0 LOCAL, 1 PROXY), one byte family (high nibble: 0
UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport (low nibble: 0 UNSPEC, 1
STREAM, 2 DGRAM), a big-endian 16-bit length, then that many bytes: the
addresses (INET 4+4+2+2, INET6 16+16+2+2, UNIX 108+108) followed by TLVs,
which we skip.

LOCAL (health checks), UNKNOWN, UNSPEC and UNIX are valid headers that carry
no IP address: the result has ``src_ip is None`` and the glue keeps the real
connection endpoints, as the spec asks. Malformed input is a result with
``error`` set (a ProtocolError kind), never an exception. Only whether the header is allowed at all is a glue decision
(trusted peers only); this module just parses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Optional

V1_PREFIX = b"PROXY "
V1_MAX = 107  # spec's worst case: "PROXY UNKNOWN <39-char IPv6> <39> 65535 65535\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, ver/cmd, fam/proto, length
V2_MAX = 4096  # whole header; the spec's largest address block is 216, the rest is TLVs

# The family/transport byte: the spec's defined combinations only.
_V2_FAMILY = {0x00: "unspec", 0x11: "tcp4", 0x12: "udp4", 0x21: "tcp6", 0x22: "udp6",
              0x31: "unix_stream", 0x32: "unix_dgram"}
_V2_INET = {0x11: (4, 12), 0x12: (4, 12), 0x21: (16, 36), 0x22: (16, 36)}  # -> (address, block) bytes


@dataclass(frozen=True, slots=True)
class ProxyHeaderResult:
    """A parsed header, or why there is none (``error``, a ProtocolError kind)."""

    version: int = 0  # 1 or 2; 0 when no header was recognised
    command: str = ""  # proxy | local
    family: str = ""  # v1: tcp4, tcp6, unknown; v2: also udp4, udp6, unspec, unix_stream, unix_dgram
    src_ip: Optional[str] = None
    src_port: Optional[int] = None
    dst_ip: Optional[str] = None
    dst_port: Optional[int] = None
    rest: bytes = b""  # the client's bytes after the header
    error: Optional[str] = None  # e.g. "proxy_header.malformed"; None when valid
    detail: str = ""
    header: bytes = b""  # the header bytes (or the offending bytes on error)


def looks_like_proxy_header(prefix: bytes) -> Optional[bool]:
    """True if ``prefix`` starts a PROXY header, False if it cannot, None if too short to tell."""
    for magic in (V1_PREFIX, V2_SIGNATURE):
        if prefix.startswith(magic):
            return True
    if any(magic.startswith(prefix) for magic in (V1_PREFIX, V2_SIGNATURE)):
        return None
    return False


class ProxyHeaderParser:
    """Feed the first bytes of a connection until it returns a result.

    ``feed`` returns None while more bytes are needed. Once it has returned a
    result, later calls return the same header information with ``rest`` set
    to just the newly fed bytes, so the caller can simply pass ``rest`` on.
    """

    def __init__(self, max_v2: int = V2_MAX) -> None:
        self._buf = bytearray()
        self._max_v2 = max(max_v2, V2_FIXED + 216)  # the UNIX block must fit
        self._result: Optional[ProxyHeaderResult] = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def feed(self, data: bytes) -> Optional[ProxyHeaderResult]:
        if self._result is not None:
            return dataclasses.replace(self._result, rest=bytes(data))
        self._buf += data
        self._result = self._parse()
        if self._result is not None:
            self._buf.clear()
        return self._result

    def _parse(self) -> Optional[ProxyHeaderResult]:
        kind = looks_like_proxy_header(bytes(self._buf[: len(V2_SIGNATURE)]))
        if kind is None:
            return None
        if kind is False:
            # Not a header: hand everything back so a lenient caller can go on.
            return ProxyHeaderResult(error="proxy_header.missing", detail="no PROXY signature",
                                     rest=bytes(self._buf), header=bytes(self._buf[:V2_FIXED]))
        if self._buf.startswith(V1_PREFIX):
            return self._parse_v1()
        return self._parse_v2()

    def _parse_v1(self) -> Optional[ProxyHeaderResult]:
        buf = self._buf
        nl = buf.find(b"\n", 0, V1_MAX)
        if nl < 0:
            if len(buf) >= V1_MAX:
                return _error("proxy_header.oversized", f"v1 header without CRLF in {V1_MAX} bytes", buf[:V1_MAX])
            return None
        header, rest = bytes(buf[: nl + 1]), bytes(buf[nl + 1 :])
        line = header[:-2]
        if not header.endswith(b"\r\n") or b"\r" in line:  # the spec allows no other CR or LF
            return _error("proxy_header.malformed", "v1 header not ended by CRLF", header)
        parts = line.split(b" ")
        family = parts[1] if len(parts) > 1 else b""
        if family == b"UNKNOWN":  # the rest of the line is to be ignored
            return ProxyHeaderResult(version=1, command="proxy", family="unknown", rest=rest, header=header)
        if family not in (b"TCP4", b"TCP6") or len(parts) != 6:
            return _error("proxy_header.malformed", "v1 needs PROXY TCP4|TCP6 src dst sport dport", header)
        want = 4 if family == b"TCP4" else 6
        try:
            if b"%" in parts[2] + parts[3]:  # ipaddress takes IPv6 zone ids; the spec does not
                raise ValueError("zone id in address")
            src, dst = (ipaddress.ip_address(p.decode("ascii")) for p in parts[2:4])
            sport, dport = (_port(p) for p in parts[4:6])
        except ValueError as exc:
            return _error("proxy_header.malformed", f"v1 address or port: {exc}", header)
        if src.version != want or dst.version != want:
            return _error("proxy_header.malformed", "v1 address family mismatch", header)
        return ProxyHeaderResult(version=1, command="proxy", family=family.decode().lower(),
                                 src_ip=src.compressed, src_port=sport, dst_ip=dst.compressed,
                                 dst_port=dport, rest=rest, header=header)

    def _parse_v2(self) -> Optional[ProxyHeaderResult]:
        buf = self._buf
        if len(buf) < V2_FIXED:
            return None
        ver, cmd = buf[12] >> 4, buf[12] & 0x0F
        if ver != 2:
            return _error("proxy_header.bad_version", f"v2 version nibble {ver}", buf[:V2_FIXED])
        if cmd not in (0, 1):
            return _error("proxy_header.bad_command", f"v2 command {cmd}", buf[:V2_FIXED])
        total = V2_FIXED + int.from_bytes(buf[14:16], "big")
        if total > self._max_v2:
            return _error("proxy_header.oversized", f"v2 header of {total} bytes > {self._max_v2}", buf[:V2_FIXED])
        if len(buf) < total:
            return None
        header, rest = bytes(buf[:total]), bytes(buf[total:])
        if cmd == 0:  # LOCAL: the proxy's own connection (a health check); the block is ignored
            return ProxyHeaderResult(version=2, command="local", family="unspec", rest=rest, header=header)
        family = _V2_FAMILY.get(buf[13])
        if family is None:
            return _error("proxy_header.malformed", f"v2 family/transport {buf[13]:#04x}", header)
        if buf[13] not in _V2_INET:  # valid, but nothing we map to an IP source
            return ProxyHeaderResult(version=2, command="proxy", family=family, rest=rest, header=header)
        alen, block = _V2_INET[buf[13]]
        if total - V2_FIXED < block:
            return _error("proxy_header.malformed", f"v2 {family} block of {total - V2_FIXED} < {block} bytes", header)
        a = header[V2_FIXED:]
        src = ipaddress.ip_address(a[:alen]).compressed
        dst = ipaddress.ip_address(a[alen : 2 * alen]).compressed
        ports = a[2 * alen : 2 * alen + 4]
        return ProxyHeaderResult(version=2, command="proxy", family=family,
                                 src_ip=src, src_port=int.from_bytes(ports[:2], "big"),
                                 dst_ip=dst, dst_port=int.from_bytes(ports[2:], "big"),
                                 rest=rest, header=header)


def _port(raw: bytes) -> int:
    # Decimal, no sign or padding tricks: int() alone would accept "+80", " 80" and "8_0".
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[0] == 0x30):
        raise ValueError(f"bad port {raw[:8]!r}")
    value = int(raw)
    if value > 65535:
        raise ValueError(f"port {value} out of range")
    return value


def _error(kind: str, detail: str, data: bytes | bytearray) -> ProxyHeaderResult:
    return ProxyHeaderResult(error=kind, detail=detail, header=bytes(data))

