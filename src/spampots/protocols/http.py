"""HTTP/1.x server side (RFC 9110, 9112), sans-IO: the open proxy and the sites behind it.

``role="proxy"``: we are the open proxy on our own listener.

* ``CONNECT host:port`` is granted: one ``200 Connection established`` write,
  then a :class:`Tunnel` (bytes pipelined after the request go in ``rest``).
* Absolute-form requests (``GET http://host/ HTTP/1.1``) are answered with an
  emulated origin response; nothing is ever resolved or dialled. A POST to a
  mail port carries an SMTP dialogue in its body: the body is fed to our
  :class:`SmtpServer` playing that host, its events (a captured message is a
  :class:`Durable`) are passed on and its replies become the response body.
* Origin-form requests visit the proxy itself and get its own page.

``role="origin"``: we are ``ctx.target_host`` at the end of a tunnel; requests
are answered as that site. Both roles answer proxy-judge requests with a page
that echoes the request headers (see ``http_persona.py``).

Parsing is incremental over one buffer: request line, header fields (bounded by
``line_length`` and ``header_bytes``), a body framed by Content-Length or
chunked coding (bounded by ``message_size``; only its size and SHA-256 are
kept), keep-alive and pipelining. The header block is held against the
sensor's memory budget (``ctx.budget``): past it, ``503`` and close. Each response is one ``bytes`` action
(header block and body together): checkers such as nmap read one segment.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as _dt
import hashlib
import html
import ipaddress
import json
import re
import zlib
from dataclasses import dataclass, field
from email.utils import format_datetime, parsedate_to_datetime
from http import HTTPStatus
from typing import Optional
from urllib.parse import parse_qs

from ..events import Event, HttpRequest, ProxyRequest
from .base import (
    MAIL_PORTS, Action, Close, Context, Durable, Handler, Tunnel, dialled_port, error_event, limit_event,
)
from .receivebuffer import LineTooLong, ReceiveBuffer
from .http_persona import (
    GENERIC_SITES, HTTPBIN_HEADERS, HTTPBIN_HOSTS, JUDGE_HEADERS, JUDGE_LAYOUTS, JUDGE_MARKERS, NOT_FOUND, SITES, STYLES,
    Head, Headers, JudgeLayout, ProxyStyle, Site,
)
from .personas import version as product_version
from .smtp import SmtpServer

__all__ = ["HttpServer", "parse_authority", "parse_proxy_auth"]

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
SMTP_REPLY_CAP = 64 * 1024  # SMTP replies echoed in one POST response body
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
BUDGET_STEP = 4096  # a header block reserves the memory budget in steps of this many bytes
FIELD_COST = 160  # memory of one parsed header field beyond its bytes (a list and two str)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)\Z")
_CTL = re.compile(rb"[\x00-\x20\x7f]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=]+\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}\Z")
_DIGEST_USER = re.compile(r'username\s*=\s*"([^"]*)"', re.I)

_LINE, _HEADERS, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _DONE = range(8)
_STATE_NAMES = ("request line", "headers", "body", "chunk size", "chunk data", "chunk end", "trailers", "done")
_TOO_LONG = object()


# --- small parsers, public for the sake of tests and other protocol modules ---

def parse_authority(text: str) -> Optional[tuple[str, Optional[int]]]:
    """``host[:port]`` or ``[v6]:port`` -> (host, port or None); None if malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        try:
            host = ipaddress.IPv6Address(text[1:end]).compressed
        except ValueError:
            return None
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text or not _REG_NAME.match(host):  # an unbracketed IPv6 address, or junk
            return None
    if not port_text:  # RFC 3986 allows "host:" (default port)
        return host, None
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def parse_proxy_auth(value: str) -> tuple[str, Optional[str], Optional[str], bool]:
    """Proxy-Authorization -> (method, username, password, well_formed).

    A malformed Basic credential keeps the raw header value as the username,
    so nothing the client sent is lost."""
    scheme, _, cred = value.strip().partition(" ")
    cred = cred.strip()
    method = scheme.lower()
    if method == "basic":
        try:
            decoded = base64.b64decode(cred, validate=True).decode("utf-8", "backslashreplace")
        except (binascii.Error, ValueError):
            return method, value, None, False
        user, sep, password = decoded.partition(":")
        if not sep:
            return method, value, None, False
        return method, user, password, True
    if method == "digest":
        m = _DIGEST_USER.search(cred)
        return method, m.group(1) if m else None, None, True
    return method or "unknown", cred or None, None, bool(method)


def http_date(now: str) -> tuple[str, Optional[int]]:
    """The glue's RFC 5322 session date as an IMF-fixdate and epoch seconds ("" / None if absent)."""
    if not now:
        return "", None
    try:
        when = parsedate_to_datetime(now)
    except (TypeError, ValueError, IndexError):
        return "", None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    when = when.astimezone(_dt.timezone.utc)
    return format_datetime(when, usegmt=True), int(when.timestamp())


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` placeholders (templates hold literal braces, so no str.format)."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    version: str
    minor: int
    headers: list[list[str]] = field(default_factory=list)
    host: Optional[str] = None  # set once the target is understood
    port: int = 0
    path: str = "/"
    proxied: bool = False  # absolute-form through us as a proxy
    keep_alive: bool = True
    chunked: bool = False
    body_size: int = 0
    sha: Optional["hashlib._Hash"] = None
    smtp: Optional[SmtpServer] = None
    smtp_depth: int = 0
    smtp_replies: bytearray = field(default_factory=bytearray)

    def header(self, name: str) -> Optional[str]:
        """The first value of a header field (names are case-insensitive)."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def tokens(self, *names: str) -> list[str]:
        """Comma-separated list elements of all fields with these names, in order, lower case."""
        return [t.strip().lower() for key, value in self.headers if key.lower() in names
                for t in value.split(",") if t.strip()]


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    content_type: str
    body: bytes
    headers: Headers = ()
    role: str = "origin"  # HttpRequest.role
    head: Optional[Head] = None  # the proxy product's own layout (http_persona.Head)
    error: str = ""  # the product's name for what went wrong ({error} in its templates)


class HttpServer(Handler):
    """One HTTP connection; see the module docstring."""

    protocol: str = "http"

    def __init__(self, ctx: Context, *, role: str = "proxy") -> None:
        if role not in ("proxy", "origin"):
            raise ValueError(f"role must be 'proxy' or 'origin', not {role!r}")
        self.ctx = ctx
        self.role = role
        style_name = ctx.persona.http_style if ctx.persona.http_style in STYLES else "squid"
        self._style: ProxyStyle = STYLES[style_name]
        self._version = product_version(style_name, ctx.persona.variant)
        self._judge: JudgeLayout = JUDGE_LAYOUTS.get(ctx.persona.judge_style) or JUDGE_LAYOUTS["azenv"]
        self._date, self._epoch = http_date(ctx.now)
        # the port we serve on: the tunnel's target when we play a chained proxy
        self._port = ctx.target_port if ctx.depth and ctx.target_port else ctx.listener_port
        self._buf = ReceiveBuffer()
        self._state = _LINE
        self._req: Optional[_Request] = None
        self._head_bytes = 0
        self._head_cost = 0  # memory the header block takes, as charged to the budget
        self._held = 0  # memory budget reserved for the header block being read
        self._remaining = 0  # body bytes still due (Content-Length or current chunk)
        self._overlong = 0  # length of the last line found too long
        self._answered = 0
        self._out: list[Action] = []
        self._steps = {
            _LINE: self._request_line, _HEADERS: self._header_line, _BODY: self._body_data,
            _CHUNK_SIZE: self._chunk_size, _CHUNK_DATA: self._body_data, _CHUNK_END: self._chunk_end,
            _TRAILERS: self._trailer_line,
        }

    # -- Handler interface

    def start(self) -> list[Action]:
        return []

    def refusal(self) -> bytes:
        """The proxy's own ``503`` page, for a client the sensor will not serve now (a
        connection limit): sent at once, before any request, then the glue closes."""
        return self._render(None, self._error_answer(503), keep=False)

    def receive(self, data: bytes) -> list[Action]:
        if self._state == _DONE:  # after Tunnel/Close the glue owns the connection
            return []
        self._buf += data
        while self._state != _DONE and self._steps[self._state]():
            pass
        return self._take()

    def eof(self) -> list[Action]:
        if self._state == _DONE or (self._state == _LINE and not self._buf):
            return []
        req = self._req
        detail = f"eof in {_STATE_NAMES[self._state]} with {len(self._buf)} bytes pending"
        if req is not None:
            detail += f"; {req.method} {req.target[:200]}"
        self._out.append(error_event("http.truncated", detail, bytes(self._buf)))
        if req is not None and req.smtp is not None:
            self._forward(req, req.smtp.eof())
        self._state = _DONE
        self._buf.clear()
        self._release()
        return self._take()

    # -- input

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _line(self) -> object:
        """The next line without its LF (and CR), None for more bytes, or _TOO_LONG."""
        line = self._buf.next_line(self.ctx.limits.line_length, skip_overlong=False)
        if isinstance(line, LineTooLong):
            self._overlong = line.observed
            return _TOO_LONG
        return line

    def _count_head(self, line: bytes) -> bool:
        """Add a header line to the header budget; False (and a 431) when over."""
        self._head_bytes += len(line) + 2
        limit = self.ctx.limits.header_bytes
        if self._head_bytes > limit:
            self._fail(431, limit_event("header_bytes", limit, self._head_bytes), "limit")
            return False
        # 64 KiB of two-byte fields is 16,384 parsed fields, some 3 MB: charge what they cost
        self._head_cost += len(line) + FIELD_COST
        if self._head_cost > self._held:
            step = max(BUDGET_STEP, self._head_cost - self._held)
            budget = self.ctx.budget
            if not budget.reserve(step):  # all sessions' buffers are over the sensor's budget
                self._fail(503, limit_event("memory_budget", budget.pool.limit, budget.pool.used + step), "limit")
                return False
            self._held += step
        return True

    def _release(self) -> None:
        """The header block is gone (answered, tunnelled or failed): give its budget back."""
        self._head_cost = 0
        if self._held:
            self.ctx.budget.release(self._held)
            self._held = 0

    def _request_line(self) -> bool:
        line = self._line()
        if line is None:
            # Bytes that can never start a request (binary probes, a TLS hello)
            # are refused now rather than after line_length bytes.
            method = bytes(self._buf[:64]).lstrip(b"\r\n").split(b" ", 1)[0]
            if method and not _TOKEN.match(method):
                return self._malformed("not an HTTP request", bytes(self._buf))
            return False
        limits = self.ctx.limits
        if line is _TOO_LONG:
            return self._fail(414, limit_event("line_length", limits.line_length, self._overlong), "limit")
        assert isinstance(line, bytes)
        if not line:  # RFC 9112 2.2: empty lines before a request are ignored
            return True
        parts = line.split(b" ")
        if len(parts) < 3:
            return self._malformed("request line is not 'method target version'", line)
        method, version = parts[0], parts[-1]
        target = b" ".join(parts[1:-1]).strip(b" ")
        m = _VERSION.match(version)
        if not _TOKEN.match(method) or m is None or not target or _CTL.search(target):
            return self._malformed("bad request line", line)
        if m.group(1) != b"1":
            return self._fail(505, error_event("http.bad_version", version.decode("ascii"), line), "protocol")
        self._req = _Request(
            method=method.decode("ascii"),
            target=target.decode("utf-8", "backslashreplace"),
            version=version.decode("ascii"),
            minor=int(m.group(2)),
        )
        self._head_bytes = 0
        if not self._count_head(line):
            return False
        self._state = _HEADERS
        return True

    def _header_line(self) -> bool:
        line = self._line()
        if line is None:
            return False
        if line is _TOO_LONG:
            limit = self.ctx.limits.line_length
            return self._fail(431, limit_event("line_length", limit, self._overlong), "limit")
        assert isinstance(line, bytes) and self._req is not None
        if not self._count_head(line):
            return False
        if not line:
            return self._headers_done()
        headers = self._req.headers
        if line[0] in b" \t":  # obs-fold (RFC 9112 5.2): unfold into the previous value
            if not headers:
                return self._malformed("continuation line before any header", line)
            headers[-1][1] = (headers[-1][1] + " " + line.strip(b" \t").decode("utf-8", "backslashreplace")).strip()
            return True
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            return self._malformed("bad header field", line)
        headers.append([name.decode("ascii"), value.strip(b" \t").decode("utf-8", "backslashreplace")])
        return True

    def _trailer_line(self) -> bool:
        line = self._line()
        if line is None:
            return False
        if line is _TOO_LONG:
            limit = self.ctx.limits.line_length
            return self._fail(431, limit_event("line_length", limit, self._overlong), "limit")
        assert isinstance(line, bytes)
        if not self._count_head(line):
            return False
        if not line:
            self._respond()
        return True

    def _headers_done(self) -> bool:
        req = self._req
        assert req is not None
        limits = self.ctx.limits
        length = 0
        codings = req.tokens("transfer-encoding")
        lengths = set(req.tokens("content-length"))
        if codings:
            if codings[-1] != "chunked":  # RFC 9112 6.3: the length cannot be known
                return self._fail(400, error_event("http.bad_transfer_encoding", ", ".join(codings)[:200]),
                                  "protocol")
            req.chunked = True
            if lengths:  # both framings: a smuggling attempt; answer, then close
                self._out.append(error_event("http.te_and_cl", "Transfer-Encoding and Content-Length"))
                req.keep_alive = False
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                return self._fail(400, error_event("http.bad_length", ", ".join(sorted(lengths))[:200]), "protocol")
            length = int(next(iter(lengths)))
            if length > limits.message_size:
                return self._fail(413, limit_event("message_size", limits.message_size, length), "limit",
                                  record=self._resolve_target(req))
        if req.method.upper() == "CONNECT":
            return self._connect(req)
        if not self._resolve_target(req):
            return self._fail(400, error_event("http.bad_target", req.target[:200]), "protocol")
        conn = req.tokens("connection", "proxy-connection") if self.role == "proxy" else req.tokens("connection")
        req.keep_alive = req.keep_alive and "close" not in conn and (req.minor >= 1 or "keep-alive" in conn)
        if req.chunked or length:
            req.sha = hashlib.sha256()
            if "100-continue" in req.tokens("expect") and req.minor >= 1:
                self._out.append(CONTINUE)
            if req.proxied and req.method.upper() == "POST" and req.port in MAIL_PORTS:
                self._smtp_body(req)
        if req.chunked:
            self._state = _CHUNK_SIZE
        elif length:
            self._remaining = length
            self._state = _BODY
        else:
            self._respond()
        return True

    def _body_data(self) -> bool:
        n = min(self._remaining, len(self._buf))
        if n == 0:
            return False
        req = self._req
        assert req is not None and req.sha is not None
        chunk = bytes(self._buf[:n])
        self._buf.drop(n)
        self._remaining -= n
        req.body_size += n
        req.sha.update(chunk)
        if req.smtp is not None:
            self._forward(req, req.smtp.receive(chunk))
        if self._remaining == 0:
            if req.chunked:
                self._state = _CHUNK_END
            else:
                self._respond()
        return True

    def _chunk_size(self) -> bool:
        line = self._line()
        if line is None:
            return False
        req = self._req
        assert req is not None
        if line is _TOO_LONG:
            return self._fail(400, error_event("http.bad_chunk", "chunk size line too long", bytes(self._buf)),
                              "protocol", record=True)
        assert isinstance(line, bytes)
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if not _HEX.match(size_text):
            return self._fail(400, error_event("http.bad_chunk", "bad chunk size", line), "protocol", record=True)
        size = int(size_text, 16)
        limit = self.ctx.limits.message_size
        if req.body_size + size > limit:
            return self._fail(413, limit_event("message_size", limit, req.body_size + size), "limit", record=True)
        if size == 0:
            self._state = _TRAILERS
            self._head_bytes = 0
        else:
            self._remaining = size
            self._state = _CHUNK_DATA
        return True

    def _chunk_end(self) -> bool:
        buf = self._buf
        if buf[:2] == b"\r\n" or buf[:1] == b"\n":
            buf.drop(2 if buf[:1] == b"\r" else 1)
            self._state = _CHUNK_SIZE
            return True
        if len(buf) < 2 and buf[:1] in (b"", b"\r"):
            return False
        return self._fail(400, error_event("http.bad_chunk", "chunk data not followed by CRLF", bytes(buf)),
                          "protocol", record=True)

    # -- what the request asks for

    def _resolve_target(self, req: _Request) -> bool:
        """Fill host, port, path and proxied from the request-target; False if it is malformed."""
        target = req.target
        scheme = _SCHEME.match(target)
        if scheme is not None:  # absolute-form
            rest = target[scheme.end() :]
            cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
            authority = rest[:cut].rpartition("@")[2]  # userinfo is never used for routing
            parsed = parse_authority(authority)
            if parsed is None:
                return False
            path = rest[cut:]
            req.path = path if path.startswith("/") else "/" + path
            req.host = parsed[0]
            req.port = parsed[1] or DEFAULT_PORTS.get(scheme.group(1).lower(), 80)
            req.proxied = self.role == "proxy"
            if self.role == "origin" and self.ctx.target_port:
                req.port = self.ctx.target_port
            return True
        if not (target.startswith("/") or target == "*"):
            return False
        req.path = target
        host_field = req.header("host")
        parsed = parse_authority(host_field) if host_field else None
        if self.role == "origin":
            req.host = parsed[0] if parsed else (self.ctx.target_host or self.ctx.local_ip)
            req.port = self.ctx.target_port or (parsed[1] if parsed else None) or 80
        else:  # a visit to the proxy itself
            req.host = parsed[0] if parsed else self.ctx.local_ip
            req.port = self._port
        return True

    def _auth(self, req: _Request) -> tuple[str, Optional[str], Optional[str]]:
        value = req.header("proxy-authorization")
        if value is None:
            return "none", None, None
        method, user, password, ok = parse_proxy_auth(value)
        if not ok:
            self._out.append(error_event("http.bad_proxy_auth", value[:200], value.encode("utf-8", "replace")))
        return method, user, password

    def _connect(self, req: _Request) -> bool:
        parsed = parse_authority(req.target)
        if parsed is None or parsed[1] is None:
            return self._fail(400, error_event("http.bad_authority", f"CONNECT {req.target[:200]}"), "protocol")
        host, port = parsed
        method, user, password = self._auth(req)
        rest = bytes(self._buf)
        self._buf.clear()
        self._state = _DONE
        self._release()
        head = self._style.connect_line + "\r\n" + "".join(
            f"{k}: {self._mine(v)}\r\n" for k, v in self._style.connect_headers) + "\r\n"
        self._out += [
            ProxyRequest(proxy="http", command="connect", target_host=host, target_port=port,
                         auth_method=method, username=user, password=password, outcome="granted", reply_code=200),
            head.encode("latin-1", "replace"),
            Tunnel("http", host, port, rest=rest),
        ]
        return False

    def _smtp_body(self, req: _Request) -> None:
        """Play the mail server the POST is aimed at, one tunnel hop further."""
        assert req.host is not None
        ctx = self.ctx
        inner = dataclasses.replace(
            ctx, target_host=req.host, target_port=req.port, depth=ctx.depth + 1,
            via=ctx.via + (f"http:{req.host}:{req.port}",),
            tls_available=False,  # no STARTTLS inside an HTTP body
        )
        req.smtp = SmtpServer(inner, banner_host=req.host, greet=False)
        req.smtp_depth = inner.depth
        self._forward(req, req.smtp.start())

    def _forward(self, req: _Request, actions: list[Action]) -> None:
        """Pass the SMTP server's events on (at its tunnel depth); keep its replies for our body."""
        for action in actions:
            if isinstance(action, bytes):
                room = SMTP_REPLY_CAP - len(req.smtp_replies)
                req.smtp_replies += action[: max(room, 0)]
            elif isinstance(action, Durable):
                action.event.depth = req.smtp_depth
                self._out.append(action)
            elif isinstance(action, Event):
                action.depth = req.smtp_depth
                self._out.append(action)
            # Close (QUIT) ends the dialogue; the HTTP response still follows.

    # -- answers

    def _mine(self, template: str) -> str:
        """A proxy-style template about ourselves."""
        template = template.replace("{server}", self._style.server)
        return fill(template, host=self.ctx.persona.hostname, port=str(self._port), version=self._version)

    def _respond(self) -> None:
        req = self._req
        assert req is not None and req.host is not None
        if req.smtp is not None:
            self._forward(req, req.smtp.eof())
            answer = _Answer(200, "text/plain", bytes(req.smtp_replies), role="proxy")
        else:
            answer = self._answer(req)
        self._record(req, answer.status, answer.role)
        # a proxy refusing a visit to itself closes, as Squid and tinyproxy do
        keep = req.keep_alive and not (self.role == "proxy" and not req.proxied and answer.status >= 400)
        self._out.append(self._render(req, answer, keep=keep))
        self._answered += 1
        self._req = None
        self._release()
        self._state = _LINE
        if not keep:
            self._finish("client_eof" if not req.keep_alive else "protocol")
        elif self._answered >= self.ctx.limits.messages_per_session:
            limit = self.ctx.limits.messages_per_session
            self._out.append(limit_event("messages_per_session", limit, self._answered))
            self._finish("limit")

    def _answer(self, req: _Request) -> _Answer:
        """The emulated response: the proxy's own page, a judge page or the site's page."""
        assert req.host is not None
        if self.role == "proxy" and not req.proxied:
            return self._self_page(req)
        method = req.method.upper()
        path = req.path.split("?", 1)[0].split("#", 1)[0]
        if method in ("GET", "HEAD", "POST") and self._is_judge(req.host, path):
            return self._judge_page(req)
        role = "proxy" if req.proxied else "origin"
        if method in ("GET", "HEAD", "POST") and req.host.lower().rstrip(".") in HTTPBIN_HOSTS:
            echo = self._httpbin(req, method, path)
            if echo is not None:
                return echo
        site = self._site(req.host)
        headers = tuple((k, v) for k, v in site.headers if v)
        if method == "OPTIONS":
            return _Answer(200, "", b"", headers + (("Allow", "GET, HEAD, POST, OPTIONS"),), role)
        if method not in ("GET", "HEAD", "POST"):
            allow = (("Allow", "GET, HEAD, POST, OPTIONS"),)
            return _Answer(405, NOT_FOUND.content_type, self._status_page(405), headers + allow, role)
        page = site.pages.get(path) or site.pages.get("*") or NOT_FOUND
        body = fill(page.body, host=html.escape(req.host), ip=self.ctx.local_ip)
        return _Answer(page.status, page.content_type, body.encode("utf-8"), headers, role)

    @staticmethod
    def _site(host: str) -> Site:
        """The well-known site of that name, else a stock page chosen by a stable hash."""
        name = host.lower().rstrip(".")
        return SITES.get(name) or GENERIC_SITES[zlib.crc32(name.encode("utf-8", "replace")) % len(GENERIC_SITES)]

    @staticmethod
    def _is_judge(host: str, path: str) -> bool:
        where = f"{host}{path}".lower()
        return any(marker in where for marker in JUDGE_MARKERS)

    @staticmethod
    def _status_page(status: int) -> bytes:
        phrase = f"{status} {HTTPStatus(status).phrase}"
        return NOT_FOUND.body.replace("404 Not Found", phrase).encode("ascii")

    def _judge_page(self, req: _Request) -> _Answer:
        """What a judge script shows when reached through an elite proxy: the
        proxy's address, no forwarding headers, the client's own headers."""
        assert req.host is not None
        variables = [("HTTP_" + name.upper().replace("-", "_"), value) for name, value in self._forwarded_headers(req)]
        key = f"{self.ctx.src_ip}|{self.ctx.src_port}|{req.host}|{req.port}".encode("utf-8", "replace")
        variables += [
            ("REMOTE_ADDR", self.ctx.local_ip),
            ("REMOTE_PORT", str(dialled_port(self.ctx, req.host, req.port))),
            ("REQUEST_METHOD", req.method),
            ("REQUEST_URI", req.path),
        ]
        if self._epoch is not None:
            variables += [("REQUEST_TIME_FLOAT", f"{self._epoch}.{zlib.crc32(key) % 1000000:06d}"),
                          ("REQUEST_TIME", str(self._epoch))]
        layout = self._judge
        escape = html.escape if layout.html else (lambda s: s)
        body = layout.head + "".join(
            fill(layout.line, name=name, value=escape(value)) for name, value in variables) + layout.tail
        return _Answer(200, layout.content_type, body.encode("utf-8", "replace"), JUDGE_HEADERS, "judge")

    def _forwarded_headers(self, req: _Request) -> list[tuple[str, str]]:
        """The request headers as the origin sees them through an elite proxy: Host added if
        missing, the client's Proxy-* headers (hop-by-hop to the proxy) dropped."""
        out = [(name, value) for name, value in req.headers if not name.lower().startswith("proxy-")]
        if req.header("host") is None:
            out.insert(0, ("Host", req.host if req.port == 80 else f"{req.host}:{req.port}"))
        return out

    def _httpbin(self, req: _Request, method: str, path: str) -> Optional[_Answer]:
        """httpbin.org's echo endpoints, which many proxy checkers use as their judge: a JSON
        echo of what arrived, with the proxy's address as origin. None: not an echo path."""
        assert req.host is not None
        if path not in ("/get", "/headers", "/user-agent", "/post") and not path.startswith("/anything"):
            return None
        if (path == "/get" and method == "POST") or (path == "/post" and method != "POST"):
            return _Answer(405, NOT_FOUND.content_type, self._status_page(405), HTTPBIN_HEADERS, "judge")
        headers: dict[str, str] = {}
        for name, value in self._forwarded_headers(req):
            key = "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        key = f"{self.ctx.src_ip}|{self.ctx.src_port}|{req.path}".encode("utf-8", "replace")
        headers["X-Amzn-Trace-Id"] = (f"Root=1-{(self._epoch or 0):08x}-"
                                      f"{hashlib.sha256(key).hexdigest()[:24]}")
        query = req.path.split("?", 1)[1].split("#", 1)[0] if "?" in req.path else ""
        args = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(query, keep_blank_values=True).items()}
        url = f"http://{req.host}{'' if req.port == 80 else f':{req.port}'}{req.path.split('#', 1)[0]}"
        doc: dict[str, object]
        if path == "/headers":
            doc = {"headers": headers}
        elif path == "/user-agent":
            doc = {"user-agent": headers.get("User-Agent")}
        elif path in ("/get",):
            doc = {"args": args, "headers": headers, "origin": self.ctx.local_ip, "url": url}
        else:  # /post and /anything: the body is not kept, so it echoes as empty
            doc = {"args": args, "data": "", "files": {}, "form": {}, "headers": headers, "json": None,
                   "origin": self.ctx.local_ip, "url": url}
            if path.startswith("/anything"):
                doc["method"] = method
        body = json.dumps(doc, indent=2, sort_keys=True, separators=(", ", ": "), ensure_ascii=False) + "\n"
        return _Answer(200, "application/json", body.encode("utf-8", "replace"), HTTPBIN_HEADERS, "judge")

    def _self_page(self, req: _Request) -> _Answer:
        style = self._style
        page = style.self_page
        if page is None:  # a forward proxy refuses a visit to itself as a bad URL
            return self._error_answer(400, "visit", url=html.escape(req.target))
        return _Answer(page.status, page.content_type, self._mine(page.body).encode("utf-8"),
                       (("Server", self._mine(style.server)),), head=style.self_head)

    def _error_answer(self, status: int, why: str = "", *, url: str = "") -> _Answer:
        """The proxy's own error page; ``why`` is "visit", "garbage" or "" (see ProxyStyle)."""
        if self.role == "origin":  # the site's web server refuses, not a proxy
            site = self._site(self.ctx.target_host or "")
            server = tuple((k, v) for k, v in site.headers if k == "Server" and v)
            return _Answer(status, NOT_FOUND.content_type, self._status_page(status), server)
        style = self._style
        error = style.error_names.get(why, style.error_names.get("", ""))
        page = style.error_pages.get(why, style.error_page)
        body = fill(self._mine(page), code=str(status), reason=HTTPStatus(status).phrase, error=error,
                    detail=error, url=url, date=self._date)
        headers = (("Server", self._mine(style.server)),) + tuple((k, self._mine(v)) for k, v in style.error_headers)
        return _Answer(status, style.error_content_type, body.encode("utf-8"), headers,
                       head=style.error_head, error=error)

    def _render_head(self, answer: _Answer, head: Head, *, keep: bool) -> bytes:
        """The product's own layout: its status-line version and reason, its header order."""
        if not head.version:
            return answer.body
        lines = [f"{head.version} {answer.status} {head.reason or HTTPStatus(answer.status).phrase}"]
        for name, value in head.headers:
            if value:
                lines.append(f"{name}: {fill(self._mine(value), error=answer.error)}")
            elif name == "Date" and self._date:
                lines.append(f"Date: {self._date}")
            elif name == "Content-Type" and answer.content_type:
                lines.append(f"Content-Type: {answer.content_type}")
            elif name == "Content-Length":
                lines.append(f"Content-Length: {len(answer.body)}")
            elif name == "Connection":
                lines.append("Connection: keep-alive" if keep else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + answer.body

    def _render(self, req: Optional[_Request], answer: _Answer, *, keep: bool) -> bytes:
        if answer.head is not None:
            return self._render_head(answer, answer.head, keep=keep)
        lines = [f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}"]
        relay = [f"{k}: {self._mine(v)}" for k, v in self._style.relay_headers] if req and req.proxied else []
        if self._style.relay_first:
            lines += relay
            relay = []
        if self._date:
            lines.append(f"Date: {self._date}")
        lines += [f"{k}: {v}" for k, v in answer.headers]
        if answer.status not in (204, 304):
            if answer.content_type:
                lines.append(f"Content-Type: {answer.content_type}")
            lines.append(f"Content-Length: {len(answer.body)}")
        lines += relay
        lines.append("Connection: keep-alive" if keep else "Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        if (req is not None and req.method.upper() == "HEAD") or answer.status in (204, 304):
            return head
        return head + answer.body

    def _record(self, req: _Request, status: int, role: str, rejected: bool = False) -> None:
        assert req.host is not None
        if req.proxied:
            method, user, password = self._auth(req)
            self._out.append(ProxyRequest(
                proxy="http", command=req.method.lower(), target_host=req.host, target_port=req.port,
                url=req.target, auth_method=method, username=user, password=password,
                outcome="rejected" if rejected else "granted", reply_code=status,
            ))
        self._out.append(HttpRequest(
            role=role, method=req.method, target=req.target, host=req.host, port=req.port,
            version=req.version, headers=req.headers, body_size=req.body_size,
            body_sha256=req.sha.hexdigest() if req.sha is not None and req.body_size else None,
            user_agent=req.header("user-agent"), status=status,
        ))

    # -- failures

    def _malformed(self, detail: str, line: bytes) -> bool:
        return self._fail(400, error_event("http.malformed", detail, line), "protocol", why="garbage")

    def _fail(self, status: int, event: Event, reason: str, *, record: bool = False, why: str = "") -> bool:
        """Record why, answer with the proxy's error page, close. ``record``: the
        request target is known, so the request itself is recorded too."""
        self._out.append(event)
        req = self._req
        if record and req is not None and req.host is not None:
            self._record(req, status, "proxy" if req.proxied else "origin", rejected=True)
        self._out.append(self._render(None, self._error_answer(status, why), keep=False))
        self._finish(reason)
        return False

    def _finish(self, reason: str) -> None:
        if self._req is not None and self._req.smtp is not None:  # before Close: nothing after it is run
            self._forward(self._req, self._req.smtp.eof())
        self._out.append(Close(reason))
        self._state = _DONE
        self._buf.clear()
        self._release()
