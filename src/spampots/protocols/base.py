"""The contract between the sans-IO protocol machines and the asyncio glue.

A handler is fed bytes and answers with a list of *actions*, in order:

* ``bytes``            send these bytes to the client
* an ``Event``         record it (fire and forget; flushed by group commit)
* :class:`Durable`     record the event *and* the message body, and send
                       nothing that follows until both are on disk. This is
                       how "250 after DATA only once the message is durable"
                       is expressed without I/O in the protocol.
* :class:`Tunnel`      the client was granted a connection to host:port; from
                       now on we play that far end (the sensor hands the
                       rest of the session to the SMTP handler for port 25,
                       else to the sniffer). Any bytes after the request
                       are in ``rest``.
* :class:`StartTLS`    upgrade the connection to TLS (server side) now; the
                       handler keeps receiving the decrypted bytes.
* :class:`Close`       close the connection after sending what came before.

Besides :meth:`Handler.receive`, the glue calls the hooks of :class:`Handler`
(start, eof, tls_established, tls_failed) and reads ``implicit_tls`` and
``delegate``; the base class gives every one a default.

Handlers never see sockets, clocks or files. Everything they need to know
about their surroundings is in :class:`Context`.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import Optional, Union

from ..events import Event, LimitHit, ProtocolError
from .budget import Account, unlimited


# Target ports whose far end is a mail server that speaks first (RFC 5321 / 6409).
MAIL_PORTS = frozenset({25, 587, 2525})


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-session protocol limits (connection limits live in the sensor)."""

    line_length: int = 4096  # bytes in one command / header line
    header_bytes: int = 65536  # total bytes of a request or message header
    message_size: int = 10 * 1024 * 1024  # bytes of one DATA / HTTP body
    recipients: int = 100  # RCPT TO per message
    payload_keep: int = 4096  # first bytes kept of an unknown tunnel payload
    messages_per_session: int = 1000
    chain_depth: int = 8  # deeper proxy chains are closed


@dataclass(frozen=True, slots=True)
class Persona:
    """What this sensor looks like; chosen per sensor by ``personas.py``."""

    smtp_style: str = "postfix"  # postfix, exim, sendmail, exchange
    hostname: str = "mail.example.net"  # our own name in banners
    http_style: str = "squid"  # squid, apache, ccproxy, tinyproxy, ...
    judge_style: str = "azenv"  # azenv, plain, table
    smtp_tls: bool = True  # advertise and implement STARTTLS
    smtp_auth: bool = True  # advertise AUTH PLAIN LOGIN
    variant: int = 0  # a stable number from the sensor id: which release a product shows (personas.version)


@dataclass(frozen=True, slots=True)
class Context:
    """The surroundings of one handler, as plain data."""

    src_ip: str = "127.0.0.1"
    src_port: int = 0
    listener_port: int = 0
    local_ip: str = "127.0.0.1"  # the address the client reached us on
    persona: Persona = field(default_factory=Persona)
    limits: Limits = field(default_factory=Limits)
    depth: int = 0  # tunnel depth (0: directly on our listener)
    via: tuple[str, ...] = ()  # hops so far, "socks5:host:port"
    target_host: Optional[str] = None  # the far end we are playing, if in a tunnel
    target_port: Optional[int] = None
    tls_available: bool = False  # the glue can do StartTLS
    now: str = ""  # RFC 5322 date at session start, for banners that show one
    # the session's share of the sensor's memory budget (see budget.py); tunnels keep it
    budget: Account = field(default_factory=unlimited)

    def for_session(self, src_ip: str, src_port: int, local_ip: str, now: str) -> "Context":
        """This (listener's) context for one new session: ``dataclasses.replace`` with these
        four fields and a fresh budget account, at a third of its cost (it runs for every connection)."""
        return Context(src_ip, src_port, self.listener_port, local_ip, self.persona, self.limits, self.depth,
                       self.via, self.target_host, self.target_port, self.tls_available, now, self.budget.fresh())


@dataclass(frozen=True, slots=True)
class Durable:
    event: Event
    body: bytes
    reserved: int = 0  # memory budget the body holds: the glue releases it once the body is stored


@dataclass(frozen=True, slots=True)
class Tunnel:
    proxy: str  # socks4, socks4a, socks5, http
    host: str
    port: int
    rest: bytes = b""


@dataclass(frozen=True, slots=True)
class StartTLS:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    reason: str = "server"


Action = Union[bytes, Event, Durable, Tunnel, StartTLS, Close]


class Handler:
    """The whole contract between a protocol machine and the glue: every hook the
    glue calls is here, so it never probes a handler for optional ones.

    Handlers subclass this and override what they use; the defaults do nothing.
    Hooks return actions, like :meth:`receive`.
    """

    __slots__ = ()

    #: protocol name stamped on this handler's events (may change, e.g. socks4 -> socks4a)
    protocol: str = "unknown"
    #: the client speaks TLS first (port 465, RFC 8314): :meth:`start` answers
    #: :class:`StartTLS`, and the glue begins the handshake at once, with no greeting delay
    implicit_tls: bool = False
    #: set once this handler has handed the session over to another one (the sniffer,
    #: when the first bytes named the protocol): the glue then talks to that one directly
    delegate: Optional["Handler"] = None

    def start(self) -> list[Action]:
        """Actions on connect (a banner for server-speaks-first protocols)."""
        return []

    def receive(self, data: bytes) -> list[Action]:
        """Feed bytes from the client."""
        raise NotImplementedError

    def eof(self) -> list[Action]:
        """The client closed or the session ends: flush what is pending."""
        return []

    def tls_established(self, sni: Optional[str] = None) -> list[Action]:
        """The server-side handshake asked for by :class:`StartTLS` is done; ``sni``: the
        server name of the client's ClientHello, if any. Bytes received from now on are
        the decrypted ones."""
        return []

    def tls_failed(self, detail: str) -> list[Action]:
        """The handshake failed (``detail`` says how); the glue closes the connection
        after these actions, whatever they are."""
        return []


# Linux's default ephemeral port range (net.ipv4.ip_local_port_range).
_EPHEMERAL_LO, _EPHEMERAL_HI = 32768, 60999


def dialled_port(ctx: "Context", host: str, port: int) -> int:
    """The local port we would have used dialling host:port for this client: stable per
    (client address, target), inside Linux's ephemeral range, so answers agree across requests."""
    key = f"{ctx.src_ip}|{ctx.src_port}|{host}|{port}".encode("utf-8", "backslashreplace")
    return _EPHEMERAL_LO + zlib.crc32(key) % (_EPHEMERAL_HI - _EPHEMERAL_LO + 1)


def error_event(kind: str, detail: str = "", data: bytes = b"") -> ProtocolError:
    return ProtocolError(kind=kind, detail=detail, data_b64=base64.b64encode(data[:256]).decode())


def limit_event(limit: str, value: int | float, observed: int | float) -> LimitHit:
    return LimitHit(limit=limit, value=value, observed=observed)
