"""Deciding what to speak: on our listeners, and at the far end of a tunnel.

Two sans-IO pieces:

* :class:`Sniffer` waits for the client's first bytes and hands the session
  to the protocol they reveal, on any port (SOCKS sent to 8080 is served as
  SOCKS). On SMTP listeners it sends the banner first and still switches if
  the first bytes are plainly a proxy request.
* :func:`far_end` picks the handler that plays the target an abuser asked a
  proxy to reach. We never dial it: SMTP ports get our SMTP server with a
  banner naming the requested host, and everything else is sniffed again,
  which is how proxy chains (a proxy request inside a tunnel) are followed.
  587 gets a submission server (STARTTLS, then AUTH) and 465 one behind
  implicit TLS, as our own ``submission`` and ``smtps`` listeners do.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .base import MAIL_PORTS, Action, Close, Context, Handler, Tunnel, limit_event
from .http import HttpServer
from .personas import SOCKS_ONLY, SocksOnly
from .raw import RawCapture
from .smtp import AuthPolicy, SmtpServer, refusal as smtp_refusal
from .sniff import SMTP_VERBS, sniff
from .socks4 import Socks4Server
from .socks5 import Socks5Server
from .tls_hello import TlsHelloReader

SUBMISSION_PORT, SMTPS_PORT = 587, 465
#: target ports whose far end takes an AuthPolicy (the glue makes one only for these)
SUBMISSION_PORTS = frozenset({SUBMISSION_PORT, SMTPS_PORT})
#: listener kinds that take an AuthPolicy
SUBMISSION_KINDS = frozenset({"submission", "smtps"})

# First five bytes (upper-cased) that sniff() can only call "smtp": a four-letter verb and
# its separator. A greeter takes them without sniffing (the hot path of every SMTP session).
_SMTP_STARTS = frozenset(v.encode() + end for v in SMTP_VERBS if len(v) == 4 for end in (b" ", b"\r", b"\n"))


def _handler_for(kind: str, ctx: Context, first: bytes) -> Handler:
    """A handler for a sniffed protocol name."""
    if kind == "socks4":
        return Socks4Server(ctx)
    if kind == "socks5":
        return Socks5Server(ctx)
    if kind == "http":
        # CONNECT and absolute-form requests ask us to be a proxy; origin-form
        # requests (inside a tunnel) ask us to be the site itself.
        request_target = first.split(b" ", 2)[1:2]
        proxy_form = first[:8].upper() == b"CONNECT " or (
            request_target and b"://" in request_target[0][:16]
        )
        role = "proxy" if proxy_form or ctx.depth == 0 else "origin"
        return HttpServer(ctx, role=role)
    if kind == "tls":
        return TlsHelloReader(ctx)
    if kind == "smtp":
        return SmtpServer(ctx, banner_host=ctx.target_host, greet=False, now=ctx.now or None)
    return RawCapture(ctx)


class Sniffer(Handler):
    """Buffers the first bytes until ``sniff`` can name the protocol.

    ``greeter`` (SMTP listeners, mail far ends) speaks first; the sniffer then
    keeps it unless the client's first bytes are clearly another protocol.
    ``fallback`` names what unrecognised first bytes become. ``only`` (a SOCKS-only
    product's listener) judges the first byte alone, as such a server does.
    Once it has chosen, the chosen handler is its ``delegate`` (see :class:`Handler`).
    """

    __slots__ = ("ctx", "greeter", "fallback", "only", "delegate", "_buf")

    def __init__(
        self,
        ctx: Context,
        *,
        greeter: Optional[Handler] = None,
        fallback: str = "unknown",
        only: Optional[SocksOnly] = None,
    ) -> None:
        self.ctx = ctx
        self.greeter = greeter
        self.fallback = fallback
        self.only = only
        self.delegate: Optional[Handler] = None
        self._buf = b""

    @property
    def protocol(self) -> str:
        if self.delegate is not None:
            return self.delegate.protocol
        return self.greeter.protocol if self.greeter is not None else "unknown"

    def start(self) -> list[Action]:
        return self.greeter.start() if self.greeter is not None else []

    def receive(self, data: bytes) -> list[Action]:
        if self.delegate is not None:
            return self.delegate.receive(data)
        if self.greeter is not None and not self._buf and data[:5].upper() in _SMTP_STARTS:
            self.delegate = self.greeter
            return self.greeter.receive(data)
        if self.only is not None:
            return self._socks_only(self.only, data)
        self._buf += data
        kind = sniff(self._buf)
        if kind is None and len(self._buf) < 16:
            return []
        if kind == "proxy_header":  # only trusted peers' headers are parsed, by the glue
            kind = "unknown"
        if self.ctx.depth == 0 and self.greeter is None and kind in ("tls", "smtp"):
            # No open proxy speaks TLS or SMTP on its own port; answering them
            # there would make scanners file us as "ssl/unknown" or "smtp".
            kind = "unknown"
        if self.greeter is not None and kind not in ("socks4", "socks5", "http", "tls"):
            self.delegate = self.greeter
        else:
            if kind in (None, "unknown"):
                kind = self.fallback
            self.delegate = _handler_for(kind, self.ctx, self._buf)
            # A handler chosen after the fact never greets; only its replies matter.
        data, self._buf = self._buf, b""
        return self.delegate.receive(data)

    # The TLS hooks reach the sniffer itself only when its choice asked for StartTLS
    # before the glue could talk to it directly (bytes that came with a tunnel request).
    def tls_established(self, sni: Optional[str] = None) -> list[Action]:
        return self.delegate.tls_established(sni) if self.delegate is not None else []

    def tls_failed(self, detail: str) -> list[Action]:
        return self.delegate.tls_failed(detail) if self.delegate is not None else []

    def _socks_only(self, only: SocksOnly, data: bytes) -> list[Action]:
        version = {4: "socks4", 5: "socks5"}.get(data[0], "")
        if version in only.speaks:
            self.delegate = _handler_for(version, self.ctx, data)
            return self.delegate.receive(data)
        self.delegate = RawCapture(self.ctx)  # records the bytes and closes
        actions = self.delegate.receive(data)
        return [only.refusal, *actions] if only.refusal else actions

    def eof(self) -> list[Action]:
        if self.delegate is not None:
            return self.delegate.eof()
        if self._buf:
            # Undecided leftovers: the greeter (an SMTP server) reads them as its own.
            self.delegate = self.greeter or _handler_for(self.fallback, self.ctx, self._buf)
            data, self._buf = self._buf, b""
            return self.delegate.receive(data) + self.delegate.eof()
        return self.greeter.eof() if self.greeter is not None else []


def _submission(ctx: Context, auth: Optional[AuthPolicy], *, implicit_tls: bool = False) -> SmtpServer:
    """A submission server (RFC 6409): it always offers AUTH, and STARTTLS when it can,
    whatever ``[smtp]`` says about port 25."""
    persona = dataclasses.replace(ctx.persona, smtp_tls=True, smtp_auth=True)
    ctx = dataclasses.replace(ctx, persona=persona)
    return SmtpServer(ctx, banner_host=ctx.target_host, submission=True, implicit_tls=implicit_tls,
                      auth=auth, now=ctx.now or None)


def listener_handler(ctx: Context, *, kind: str, auth: Optional[AuthPolicy] = None) -> Handler:
    """The handler for a new session on a listener of ``kind`` (socks, http, smtp,
    submission, smtps); ``auth`` applies to the last two.

    Any port serves any protocol; the kind only says who speaks first and how
    unrecognised bytes are answered: an HTTP proxy says 400, a SOCKS server
    just closes, an SMTP server keeps talking SMTP. The exceptions: an ``smtps``
    listener (implicit TLS) wants a TLS handshake first, and a listener playing a
    SOCKS-only product (``personas.SOCKS_ONLY``) serves only its SOCKS versions.
    """
    if kind == "smtp":
        return Sniffer(ctx, greeter=SmtpServer(ctx, now=ctx.now or None))
    if kind == "submission":
        return Sniffer(ctx, greeter=_submission(ctx, auth))
    if kind == "smtps" and ctx.tls_available:
        return _submission(ctx, auth, implicit_tls=True)
    only = SOCKS_ONLY.get(ctx.persona.http_style)
    if only is not None and ctx.depth == 0:
        return Sniffer(ctx, only=only)
    return Sniffer(ctx, fallback="http" if kind == "http" else "unknown")


def listener_refusal(ctx: Context, *, kind: str) -> Optional[bytes]:
    """What a listener of ``kind`` says to a client refused by a connection limit before
    it closes, as the product it plays would: an SMTP server ``421 4.7.0``, an HTTP proxy
    ``503``. None: close without a word (SOCKS has no refusal before the client speaks,
    and an ``smtps`` client expects a TLS handshake first)."""
    if kind in ("smtp", "submission"):
        return smtp_refusal(ctx)
    if kind == "http" and ctx.persona.http_style not in SOCKS_ONLY:
        return HttpServer(ctx).refusal()
    return None


class _Refuse(Handler):
    """Far end for chains deeper than the limit: record and close."""

    protocol = "unknown"

    def __init__(self, actions: list[Action]) -> None:
        self._actions = actions

    def start(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def receive(self, data: bytes) -> list[Action]:
        return [Close("limit")]

    def eof(self) -> list[Action]:
        return []


def tunnel_context(ctx: Context, tunnel: Tunnel) -> Context:
    """The context one hop further down a proxy chain."""
    return dataclasses.replace(
        ctx,
        depth=ctx.depth + 1,
        via=ctx.via + (f"{tunnel.proxy}:{tunnel.host}:{tunnel.port}",),
        target_host=tunnel.host,
        target_port=tunnel.port,
    )


def far_end(inner: Context, *, auth: Optional[AuthPolicy] = None) -> Handler:
    """The handler that plays ``inner.target_host:target_port`` (see tunnel_context).

    ``auth`` is the AuthPolicy for 587/465 far ends. Without a TLS certificate
    (no ``tls_available``) a tunnel to 465 is only read for its ClientHello, as
    one to 443.
    """
    if inner.depth > inner.limits.chain_depth:
        return _Refuse([limit_event("chain_depth", inner.limits.chain_depth, inner.depth), Close("limit")])
    if inner.target_port == SMTPS_PORT and inner.tls_available:
        return _submission(inner, auth, implicit_tls=True)
    if inner.target_port == SUBMISSION_PORT:
        return Sniffer(inner, greeter=_submission(inner, auth))
    if inner.target_port in MAIL_PORTS:
        return Sniffer(inner, greeter=SmtpServer(inner, banner_host=inner.target_host, now=inner.now or None))
    return Sniffer(inner, fallback="unknown")


