"""SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), server side, sans-IO.

Client -> server, in order::

    greeting   VER=5 | NMETHODS | METHODS (NMETHODS bytes)
    [auth]     VER=1 | ULEN | UNAME | PLEN | PASSWD              (only if we chose 0x02)
    request    VER=5 | CMD | RSV | ATYP | DST.ADDR | DST.PORT (2)

ATYP 1: 4 bytes IPv4; 3: one length byte then a name; 4: 16 bytes IPv6.
Every answer is one whole packet in one ``bytes`` action: clients such as
curl and python-socks read the reply as a unit. Clients may pipeline the
greeting and the request in one segment, so parsing continues over the buffer
after each answer.

Any username and password are accepted; names are recorded, never resolved.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Optional

from ..events import ProxyRequest
from .base import Action, Close, Context, Handler, Tunnel, dialled_port, error_event

VERSION = 5
AUTH_VERSION = 1
NO_AUTH = 0x00
USERPASS = 0x02
NO_ACCEPTABLE = 0xFF
COMMANDS: dict[int, str] = {1: "connect", 2: "bind", 3: "udp_associate"}

# REP codes (RFC 1928 section 6)
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08

_ADDR_LEN = {1: 4, 4: 16}  # ATYP -> fixed address length (3, a name, is variable)


class _State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    DONE = "done"


def reply(rep: int, bound_ip: bytes = bytes(4), bound_port: int = 0) -> bytes:
    """A request reply with an IPv4 bound address (10 bytes)."""
    return bytes((VERSION, rep, 0, 1)) + bound_ip + bound_port.to_bytes(2, "big")


class Socks5Server(Handler):
    """One SOCKS5 negotiation; ends in a :class:`Tunnel` or a :class:`Close`."""

    protocol: str = "socks5"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._buf = bytearray()
        self._state = _State.GREETING
        self._auth_method = "none"
        self._username: Optional[str] = None
        self._password: Optional[str] = None
        self._steps = {
            _State.GREETING: self._greeting,
            _State.AUTH: self._auth,
            _State.REQUEST: self._request,
        }

    def start(self) -> list[Action]:
        return []

    def receive(self, data: bytes) -> list[Action]:
        if self._state is _State.DONE:  # after Tunnel/Close the glue owns the connection
            return []
        self._buf += data
        out: list[Action] = []
        while self._state is not _State.DONE:
            step = self._steps[self._state]()
            if step is None:  # need more bytes
                break
            out += step
        return out

    def eof(self) -> list[Action]:
        if self._state is _State.DONE or (self._state is _State.GREETING and not self._buf):
            return []
        stage = self._state.value
        self._state = _State.DONE
        detail = f"eof in {stage} after {len(self._buf)} bytes"
        if self._username is not None:  # keep credentials even when no request follows
            detail += f"; username={self._username!r} password={self._password!r}"
        return [error_event("socks5.truncated", detail, bytes(self._buf))]

    # Each step returns None while it needs more bytes, else consumes its
    # packet from the buffer and returns its actions (possibly moving state).

    def _greeting(self) -> Optional[list[Action]]:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != VERSION:
            return self._fail("socks5.bad_version", f"greeting version {buf[0]:#04x}")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return None
        methods = bytes(buf[2 : 2 + buf[1]])
        del buf[: 2 + len(methods)]
        # A client that offers username/password has credentials to send: ask for them (as a
        # Dante configured "socksmethod: username none" does) and record them; any pair is
        # accepted. Clients that offer only "no auth" (scanners, most tools) get it.
        if USERPASS in methods:
            self._state = _State.AUTH
            return [bytes((VERSION, USERPASS))]
        if NO_AUTH in methods:
            self._state = _State.REQUEST
            return [bytes((VERSION, NO_AUTH))]
        return self._fail("socks5.no_acceptable_method", f"methods offered: {methods.hex() or 'none'}",
                          answer=bytes((VERSION, NO_ACCEPTABLE)), data=methods)

    def _auth(self) -> Optional[list[Action]]:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != AUTH_VERSION:
            return self._fail("socks5.bad_version", f"auth version {buf[0]:#04x}",
                              answer=bytes((AUTH_VERSION, 0xFF)))
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        self._username = bytes(buf[2 : 2 + ulen]).decode("utf-8", "backslashreplace")
        self._password = bytes(buf[3 + ulen : end]).decode("utf-8", "backslashreplace")
        self._auth_method = "userpass"
        del buf[:end]
        self._state = _State.REQUEST
        return [bytes((AUTH_VERSION, 0x00))]

    def _request(self) -> Optional[list[Action]]:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != VERSION:
            return self._fail("socks5.bad_version", f"request version {buf[0]:#04x}")
        if len(buf) < 4:
            return None
        atyp = buf[3]
        if atyp == 3:
            if len(buf) < 5:
                return None
            addr_start, addr_len = 5, buf[4]
        elif atyp in _ADDR_LEN:
            addr_start, addr_len = 4, _ADDR_LEN[atyp]
        else:
            return self._fail("socks5.bad_address_type", f"ATYP {atyp:#04x}",
                              answer=reply(ADDRESS_TYPE_NOT_SUPPORTED))
        end = addr_start + addr_len + 2
        if len(buf) < end:
            return None

        raw_addr = bytes(buf[addr_start : addr_start + addr_len])
        port = int.from_bytes(buf[end - 2 : end], "big")
        cmd = buf[1]
        if atyp == 3:
            host = raw_addr.decode("utf-8", "backslashreplace")
        else:
            host = ipaddress.ip_address(raw_addr).compressed
        if cmd not in COMMANDS:
            return self._fail("socks5.bad_command", f"CMD {cmd:#04x} for {host}:{port}",
                              answer=reply(COMMAND_NOT_SUPPORTED))
        if not host:
            return self._fail("socks5.bad_address", "empty domain name", answer=reply(GENERAL_FAILURE))
        rest = bytes(buf[end:])
        del buf[:]
        self._state = _State.DONE

        command = COMMANDS[cmd]
        granted = command == "connect"
        rep = SUCCEEDED if granted else COMMAND_NOT_SUPPORTED
        event = ProxyRequest(
            proxy="socks5", command=command, target_host=host, target_port=port,
            auth_method=self._auth_method, username=self._username, password=self._password,
            outcome="granted" if granted else "unsupported", reply_code=rep,
        )
        if not granted:  # BIND / UDP ASSOCIATE would need real sockets of ours
            return [event, reply(rep), Close("server")]
        return [event, reply(SUCCEEDED, self._bound_ip(), dialled_port(self.ctx, host, port)),
                Tunnel("socks5", host, port, rest=rest)]

    def _fail(self, kind: str, detail: str, answer: bytes = b"", data: Optional[bytes] = None) -> list[Action]:
        self._state = _State.DONE
        event = error_event(kind, detail, bytes(self._buf) if data is None else data)
        return [event, answer, Close("protocol")] if answer else [event, Close("protocol")]

    def _bound_ip(self) -> bytes:
        """The address a real proxy would report: ours, if it is IPv4."""
        try:
            ip = ipaddress.ip_address(self.ctx.local_ip)
        except ValueError:
            return bytes(4)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # dual-stack socket
            ip = ip.ipv4_mapped
        return ip.packed if ip.version == 4 else bytes(4)

