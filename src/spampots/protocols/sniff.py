"""Decide the protocol from a connection's first bytes, on any port.

Abusers scan every port with every protocol, so the listener does not trust
its port number: a SOCKS5 greeting on :8080 is served as SOCKS5. Silence
(server-speaks-first SMTP) is the glue's business, decided by a timer. A port
playing a SOCKS-only product does not sniff at all: ``dispatch.Sniffer`` judges
its first byte alone, as that product does.

:func:`sniff` returns None while the bytes so far are a prefix of more than
one possibility (``b"GE"``, a lone ``b"\\x05"``); after :data:`SNIFF_MAX`
bytes it always decides.
"""

from __future__ import annotations

from typing import Callable, Optional

from .proxy_header import looks_like_proxy_header

SNIFF_MAX = 16

#: RFC 9110 methods an HTTP proxy client may start with (plus PATCH, RFC 5789).
HTTP_METHODS: tuple[str, ...] = ("CONNECT", "GET", "POST", "HEAD", "PUT", "OPTIONS", "DELETE", "TRACE", "PATCH")

#: SMTP commands a client may open with, when it does not wait for the banner.
SMTP_VERBS: tuple[str, ...] = (
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "AUTH", "STARTTLS",
)

# Methods are case-sensitive (RFC 9110 9.1); all-lowercase is accepted because
# sloppy scanners send it. SMTP verbs are case-insensitive (RFC 5321 2.4).
_HTTP_TOKENS = tuple(m.encode() + b" " for m in HTTP_METHODS) + tuple(m.lower().encode() + b" " for m in HTTP_METHODS)
_SMTP_TOKENS = tuple(v.encode() + end for v in SMTP_VERBS for end in (b" ", b"\r", b"\n"))


def _tokens(head: bytes, tokens: tuple[bytes, ...]) -> Optional[bool]:
    if any(head.startswith(t) for t in tokens):
        return True
    return None if any(t.startswith(head) for t in tokens) else False


def _bytes(head: bytes, first: int, ok: Callable[[int], bool]) -> Optional[bool]:
    """``first`` then one byte accepted by ``ok``."""
    if head[0] != first:
        return False
    return None if len(head) < 2 else ok(head[1])


def _tls(head: bytes) -> Optional[bool]:
    # A TLS record header: handshake (0x16), then legacy version 3.0 .. 3.4.
    if head[0] != 0x16 or (len(head) >= 2 and head[1] != 0x03):
        return False
    return None if len(head) < 3 else head[2] <= 0x04


_RULES: tuple[tuple[str, Callable[[bytes], Optional[bool]]], ...] = (
    ("socks4", lambda h: _bytes(h, 0x04, lambda cd: cd in (1, 2))),
    ("socks5", lambda h: _bytes(h, 0x05, lambda nmethods: nmethods >= 1)),
    ("tls", _tls),
    ("proxy_header", looks_like_proxy_header),
    ("http", lambda h: _tokens(h, _HTTP_TOKENS)),
    ("smtp", lambda h: _tokens(h.upper(), _SMTP_TOKENS)),
)


def sniff(first: bytes) -> Optional[str]:
    """'socks4', 'socks5', 'http', 'tls', 'smtp', 'proxy_header', 'unknown', or None (need more bytes)."""
    if not first:
        return None
    head = bytes(first[:SNIFF_MAX])
    undecided = False
    for name, rule in _RULES:
        verdict = rule(head)
        if verdict:
            return name
        undecided = undecided or verdict is None
    return None if undecided and len(head) < SNIFF_MAX else "unknown"
