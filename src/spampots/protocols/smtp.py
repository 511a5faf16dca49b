"""The SMTP server role, sans-IO (RFC 5321, 1870, 2920, 3207, 4954, 6152, 2034).

One class plays both parts: the open relay on our own port 25, and the far-end
mail server when an abuser tunnels through our proxy to host:25 (then
``banner_host`` is the name the abuser asked for, and the banner, EHLO and the
client address we "see" are those of the real MX answering our proxy).

Decisions worth knowing (each one copies what a stock MTA does, or favours
capture over pedantry where the two differ):

* Lines end at LF. In commands a CR before it is dropped; in DATA every byte is
  kept as received, so bare LF and 8-bit bodies are stored untouched.
* DATA ends at a line holding only "." where a line starts at the beginning of
  DATA or after any LF: ``<CRLF>.<CRLF>`` and also ``<LF>.<LF>``,
  ``<LF>.<CRLF>``, ``<CRLF>.<LF>``. Dot-unstuffing removes the first dot of any
  other line that starts with one (the same line notion as smtplib's
  ``(?m)^\\.`` stuffing). Bytes after an early end are read as commands, so a
  "smuggled" second message is captured as a message of its own.
* MAIL without HELO/EHLO is accepted (Postfix default, and many spam tools
  skip the greeting); HELO after EHLO, or a second EHLO, is fine and resets the
  transaction.
* ``submission=True`` plays a message submission server (RFC 6409, a Postfix
  ``submission`` service with ``smtpd_tls_security_level=encrypt`` and
  ``smtpd_tls_auth_only=yes``): while STARTTLS is possible and not yet done,
  EHLO hides AUTH and AUTH, MAIL, RCPT, DATA and VRFY get
  ``530 5.7.0 Must issue a STARTTLS command first`` (RFC 3207 4); an AUTH
  refused that way is still recorded, with any credentials its initial
  response carried. After TLS, MAIL needs AUTH (530). ``implicit_tls=True``
  (port 465, RFC 8314) asks the glue for the TLS handshake before the banner.
* AUTH PLAIN and LOGIN are always served; CRAM-MD5 (RFC 2195) when the glue
  hands us a nonce for its challenge (we have no clock or randomness), whether
  or not EHLO advertises it: capture over pedantry. :class:`AuthPolicy` decides
  whether credentials are accepted; it is plain data, and the count of earlier
  failures from the same source is kept by the glue, across sessions.
* Unknown MAIL/RCPT parameters are ignored rather than refused (555); only
  SIZE and BODY are checked. DATA with an argument is accepted.
* A DATA body is held in memory against the sensor's memory budget
  (``ctx.budget``). When the budget is spent the body is read to its end
  marker but not kept, and answered ``452 4.3.1`` (try later), as a full
  queue is by Postfix. Below the data dir's free-space floor (the glue sets
  ``budget.pool.disk_low``) DATA itself gets that ``452``, before any body.
* Error replies use Postfix's texts for every persona; the persona table
  styles the banner, greeting, 250/354/221/214 texts and the queue id.
* Close reasons: QUIT -> ``client_eof``, limits -> ``limit``, too many errors
  or a failed TLS handshake -> ``protocol``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from email.header import decode_header, make_header
from typing import Callable, Optional

from ..events import SmtpAuth, SmtpMessage, SmtpTls
from .base import Action, Close, Context, Durable, Handler, StartTLS, error_event, limit_event
from .receivebuffer import LineTooLong, ReceiveBuffer

__all__ = ["AUTH_MECHANISMS", "AUTH_POLICIES", "AuthPolicy", "SmtpServer", "STYLES"]

LF, CR, DOT = 10, 13, 46
MAX_BAD_COMMANDS = 10  # 421 after this many refused commands in a row
HEADER_FIELD_CAP = 998  # RFC 5322 line limit, applied to parsed header values
ECHO_CAP = 255  # attacker strings we echo in replies or keep as helo/addresses
BUDGET_STEP = 64 * 1024  # DATA reserves the memory budget in steps of this many bytes


# --- persona data ------------------------------------------------------------

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(out)


def _qid_postfix(seed: int, host: str) -> str:
    return f"{seed:064X}"[: 10 + seed % 3]  # short queue ids: 10-12 hex digits


def _qid_exim(seed: int, host: str) -> str:
    s = _b62(seed, 14)  # 4.96 format: time-pid-fraction, base 62
    return f"1{s[:5]}-{s[5:11]}-{s[11:13]}"


def _qid_sendmail(seed: int, host: str) -> str:
    return _b62(seed, 8) + f"{(seed >> 64) % 1_000_000:06d}"


def _qid_exchange(seed: int, host: str) -> str:
    short = host.split(".")[0].upper()
    return f"<{seed:064x}"[:33] + f"@{host}> [InternalId={(seed >> 128) % 10**13}, Hostname={short}]"


@dataclass(frozen=True, slots=True)
class Style:
    """How one MTA talks. ``replies`` override :data:`_COMMON`."""

    replies: dict[str, str]
    keywords: tuple[str, ...]  # EHLO keyword order; only implemented ones
    dated: str  # banner suffix when the glue passes a date ("" = no date)
    qid: Callable[[int, str], str]


# Placeholders: {host} our name, {helo} the client's, {ip} the client address
# we see, {addr} an address, {qid} queue id, {date}. Multi-line replies use "\n".
_COMMON: dict[str, str] = {
    "ok": "250 2.0.0 Ok",
    "vrfy": "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
    "help": "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
    "helo_syntax": "501 5.5.4 Syntax: HELO hostname",
    "ehlo_syntax": "501 5.5.4 Syntax: EHLO hostname",
    "vrfy_syntax": "501 5.5.4 Syntax: VRFY address",
    "mail_syntax": "501 5.5.4 Syntax: MAIL FROM:<address>",
    "rcpt_syntax": "501 5.5.4 Syntax: RCPT TO:<address>",
    "bad_size": "501 5.5.4 Bad SIZE parameter",
    "bad_body": "501 5.5.4 Unsupported BODY parameter",
    "nested_mail": "503 5.5.1 Error: nested MAIL command",
    "need_mail": "503 5.5.1 Error: need MAIL command",
    "need_rcpt": "503 5.5.1 Error: need RCPT command",
    "auth_required": "530 5.7.0 Authentication required",
    "size_exceeded": "552 5.3.4 Message size exceeds fixed limit",
    "too_big": "552 5.3.4 Error: message file too big",
    "no_room": "452 4.3.1 Insufficient system storage",
    "too_many_rcpts": "452 4.5.3 Error: too many recipients",
    "too_many_msgs": "421 4.7.0 {host} Error: too many messages in one session",
    "too_many_errors": "421 4.7.0 {host} Error: too many errors",
    "too_many_conns": "421 4.7.0 {host} Error: too many connections from {ip}",
    "unknown": "500 5.5.2 Error: command not recognized",
    "bad_syntax": "500 5.5.2 Error: bad syntax",
    "not_implemented": "502 5.5.1 Error: command not implemented",
    "line_too_long": "500 5.5.0 Error: line too long",
    "tls_ready": "220 2.0.0 Ready to start TLS",
    "tls_active": "554 5.5.1 Error: TLS already active",
    "tls_syntax": "501 5.5.4 Syntax: STARTTLS",
    "busy": "503 5.5.1 Error: MAIL transaction in progress",
    "auth_disabled": "503 5.5.1 Error: authentication not enabled",
    "auth_again": "503 5.5.1 Error: already authenticated",
    "auth_syntax": "501 5.5.4 Syntax: AUTH mechanism",
    "auth_mech": "504 5.5.4 Unrecognized authentication type",
    "auth_plain": "334 ",
    "auth_user": "334 VXNlcm5hbWU6",
    "auth_pass": "334 UGFzc3dvcmQ6",
    "auth_ok": "235 2.7.0 Authentication successful",
    "auth_b64": "501 5.5.2 Cannot decode response",
    "auth_abort": "501 5.7.0 Authentication aborted",
    "auth_failed": "535 5.7.8 Error: authentication failed: authentication failure",
    "tls_required": "530 5.7.0 Must issue a STARTTLS command first",
}

STYLES: dict[str, Style] = {
    "postfix": Style(
        replies={
            "banner": "220 {host} ESMTP Postfix (Debian/GNU)",
            "ehlo": "250 {host}",
            "helo": "250 {host}",
            "mail": "250 2.1.0 Ok",
            "rcpt": "250 2.1.5 Ok",
            "data": "354 End data with <CR><LF>.<CR><LF>",
            "queued": "250 2.0.0 Ok: queued as {qid}",
            "bye": "221 2.0.0 Bye",
        },
        # Debian's Postfix 3.7 order (tests/test_personas_real.py); not CHUNKING: BDAT is not served
        keywords=("PIPELINING", "SIZE", "VRFY", "ETRN", "STARTTLS", "AUTH", "ENHANCEDSTATUSCODES", "8BITMIME",
                  "DSN", "SMTPUTF8"),
        dated="",
        qid=_qid_postfix,
    ),
    "exim": Style(
        replies={
            "banner": "220 {host} ESMTP Exim 4.96",
            "ehlo": "250 {host} Hello {helo} [{ip}]",
            "helo": "250 {host} Hello {helo} [{ip}]",
            "mail": "250 2.1.0 OK",
            "rcpt": "250 2.1.5 Accepted",
            "data": '354 Enter message, ending with "." on a line by itself',
            "queued": "250 2.0.0 OK id={qid}",
            "bye": "221 2.0.0 {host} closing connection",
            "too_many_conns": "421 4.7.0 Too many concurrent SMTP connections from this IP address; "
                              "please try again later.",
            "help": "214-2.0.0 Commands supported:\n"
                    "214 2.0.0 AUTH STARTTLS HELO EHLO MAIL RCPT DATA NOOP QUIT RSET HELP",
        },
        keywords=("SIZE", "8BITMIME", "PIPELINING", "AUTH", "STARTTLS", "ENHANCEDSTATUSCODES", "HELP"),
        dated=" {date}",
        qid=_qid_exim,
    ),
    "sendmail": Style(
        replies={
            "banner": "220 {host} ESMTP Sendmail 8.17.1/8.17.1",
            "ehlo": "250 {host} Hello {helo} [{ip}], pleased to meet you",
            "helo": "250 {host} Hello {helo} [{ip}], pleased to meet you",
            "mail": "250 2.1.0 <{addr}>... Sender ok",
            "rcpt": "250 2.1.5 <{addr}>... Recipient ok",
            "data": '354 Enter mail, end with "." on a line by itself',
            "queued": "250 2.0.0 {qid} Message accepted for delivery",
            "bye": "221 2.0.0 {host} closing connection",
            "too_many_conns": "421 4.7.0 {host} Too many open connections.",
            "ok": "250 2.0.0 OK",
            "help": "214-2.0.0 This is sendmail version 8.17.1\n214-2.0.0 Topics:\n"
                    "214-2.0.0 \tHELO\tEHLO\tMAIL\tRCPT\tDATA\n214-2.0.0 \tRSET\tNOOP\tQUIT\tHELP\tVRFY\n"
                    "214 2.0.0 End of HELP info",
        },
        keywords=("ENHANCEDSTATUSCODES", "PIPELINING", "8BITMIME", "SIZE", "AUTH", "STARTTLS", "HELP"),
        dated="; {date}",
        qid=_qid_sendmail,
    ),
    "exchange": Style(
        replies={
            "banner": "220 {host} Microsoft ESMTP MAIL Service ready",
            "ehlo": "250 {host} Hello [{ip}]",
            "helo": "250 {host} Hello [{ip}]",
            "mail": "250 2.1.0 Sender OK",
            "rcpt": "250 2.1.5 Recipient OK",
            "data": "354 Start mail input; end with <CRLF>.<CRLF>",
            "queued": "250 2.6.0 {qid} Queued mail for delivery",
            "bye": "221 2.0.0 Service closing transmission channel",
            "too_many_conns": "421 4.7.0 The maximum number of concurrent connections has exceeded a limit, "
                              "closing transmission channel",
            "help": "214-This server supports the following commands:\n"
                    "214 HELO EHLO STARTTLS RCPT DATA RSET MAIL QUIT HELP AUTH",
        },
        keywords=("SIZE", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS", "AUTH", "8BITMIME"),
        dated=" at {date}",
        qid=_qid_exchange,
    ),
}


def _wire(text: str) -> bytes:
    """A reply as sent: CRLF line ends, "-" after the code on all but the last line."""
    lines = text.split("\n")
    out = b"".join(line[:3].encode() + b"-" + line[4:].encode("utf-8", "replace") + b"\r\n" for line in lines[:-1])
    return out + lines[-1].encode("utf-8", "replace") + b"\r\n"


# Replies without placeholders, encoded once per style (the hot path: 250 to RCPT, MAIL...).
_FIXED: dict[str, dict[str, bytes]] = {
    name: {key: _wire(text) for key, text in {**_COMMON, **style.replies}.items() if "{" not in text}
    for name, style in STYLES.items()
}

_NOT_IMPLEMENTED = frozenset(
    {"EXPN", "ETRN", "TURN", "ATRN", "BDAT", "SEND", "SOML", "SAML", "XCLIENT", "XFORWARD"}
)


# --- AUTH policy -------------------------------------------------------------------

AUTH_POLICIES = ("accept_all", "reject_all", "accept_after_failures")
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """How AUTH attempts are answered. The glue fills in ``failures`` and ``nonce``."""

    policy: str = "accept_all"  # one of AUTH_POLICIES
    accept_after: int = 3  # accept_after_failures: accept once a source has failed this often
    failures: int = 0  # attempts already rejected from this source (the glue's count, across sessions)
    advertise: tuple[str, ...] = ("PLAIN", "LOGIN")  # in EHLO, in this order
    nonce: str = ""  # "random.timestamp" for a CRAM-MD5 challenge; "" = no CRAM-MD5

    def accepts(self, failures: int) -> bool:
        if self.policy == "accept_all":
            return True
        if self.policy == "accept_after_failures":
            return failures >= self.accept_after
        return False

    def mechanisms(self) -> tuple[str, ...]:
        return ("PLAIN", "LOGIN", "CRAM-MD5") if self.nonce else ("PLAIN", "LOGIN")


_DEFAULT_POLICY = AuthPolicy()  # frozen: one for every handler built without a policy


# --- small helpers -------------------------------------------------------------

def _printable(s: str, cap: int = ECHO_CAP) -> str:
    """Attacker text made safe to echo inside one reply line."""
    if s.isascii() and s.isprintable():
        return s[:cap]
    return "".join(c if " " <= c <= "~" else "?" for c in s[:cap])


def refusal(ctx: Context) -> bytes:
    """What the persona's server says to a client it will not serve now (a connection limit
    of the sensor): ``421 4.7.0`` in its own words; the glue closes after it (RFC 5321 3.8)."""
    style = STYLES.get(ctx.persona.smtp_style) or STYLES["postfix"]
    text = style.replies.get("too_many_conns") or _COMMON["too_many_conns"]
    host = _hostname(ctx.persona.hostname) or "localhost"
    return _wire(text.format(host=host, ip=ctx.src_ip))


@lru_cache(maxsize=256)  # every session asks (the persona's name, or a tunnel target's)
def _hostname(name: Optional[str]) -> str:
    """A banner name: no spaces or controls (it may come from an abuser)."""
    if not name:
        return ""
    return "".join(c for c in name[:255] if "!" <= c <= "~")


@lru_cache(maxsize=256)  # bounded: tunnels bring abusers' host names (cleaned, <= 255 bytes)
def _banner_wire(text: str, host: str, ip: str, date: str) -> bytes:
    """A banner as sent: the same for every session with the same name and date (second)."""
    return _wire(text.format(host=host, ip=ip, date=date))


def _path(arg: str, prefix: str) -> Optional[tuple[str, list[str]]]:
    """Split ``FROM:<addr> PARAMS`` (also ``FROM: <addr>`` and a bare addr)."""
    if arg[: len(prefix)].upper() != prefix:
        return None
    rest = arg[len(prefix):].lstrip()
    if rest[:1] == "<":
        end = rest.find(">")
        if end < 0:
            return None
        params = rest[end + 1:]
        return rest[1:end], params.split() if params else []
    parts = rest.split()
    if not parts:
        return None
    return parts[0], parts[1:]


def _b64(text: bytes) -> Optional[bytes]:
    if text == b"=":  # RFC 4954: "=" is an empty initial response
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _header_value(raw: bytes) -> str:
    value = raw.decode("utf-8", "replace").strip()
    if "=?" in value:  # RFC 2047 encoded words; best effort, never raise
        try:
            value = str(make_header(decode_header(value)))
        except Exception:
            pass
    return value[:HEADER_FIELD_CAP]


_WANTED = {b"subject": 0, b"from": 1, b"message-id": 2}
# First bytes a wanted field's line can start with: its name's first letter, or whitespace
# that bytes.strip() removes from the name (space and tab start a continuation instead).
_WANTED_FIRST = frozenset(b"sSfFmM\r\x0b\x0c")


def parse_headers(raw: bytes, cap: int) -> list[Optional[str]]:
    """Subject, From and Message-ID from the first ``cap`` bytes of a message."""
    found: list[Optional[bytes]] = [None, None, None]
    slot = -1  # field the previous line belonged to (for unfolding)
    head = raw[:cap]
    for blank in (head.find(b"\n\r\n"), head.find(b"\n\n")):
        if blank >= 0:
            head = head[: blank + 1]  # split no further than the header block
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break  # end of the header block
        if line[:1] in (b" ", b"\t"):
            if slot >= 0:
                found[slot] += line  # type: ignore[operator]
            continue
        if line[0] not in _WANTED_FIRST:  # To:, Date:, Received:...: not one of ours
            slot = -1
            continue
        name, colon, value = line.partition(b":")
        slot = _WANTED.get(name.strip().lower(), -1) if colon else -1
        if slot >= 0 and found[slot] is not None:
            slot = -1  # the first occurrence wins
        if slot >= 0:
            found[slot] = value
    return [None if v is None else _header_value(v) for v in found]


# --- the machine ---------------------------------------------------------------

_CMD, _DATA, _AUTH, _CLOSED = range(4)

# Refused with 530 on submission until STARTTLS (RFC 3207 4 lets NOOP, EHLO, STARTTLS, QUIT
# through; like Postfix we also let HELO, RSET and HELP through).
_NEED_TLS = frozenset({"AUTH", "MAIL", "RCPT", "DATA", "VRFY"})


class SmtpServer(Handler):
    """Sans-IO SMTP server; see the module docstring for its behaviour."""

    protocol = "smtp"

    def __init__(
        self,
        ctx: Context,
        *,
        banner_host: Optional[str] = None,
        greet: bool = True,
        submission: bool = False,
        now: Optional[str] = None,
        tls: bool = False,
        implicit_tls: bool = False,
        auth: Optional[AuthPolicy] = None,
    ) -> None:
        """``now``: a date string for the banner (Exim, Sendmail, Exchange show
        one; we have no clock). ``tls``: the connection is already TLS.
        ``implicit_tls``: port 465 (RFC 8314): :meth:`start` asks the glue for
        the handshake and the banner follows :meth:`tls_established`.
        ``submission``: RFC 6409 rules, see the module docstring. ``auth``:
        how AUTH is answered (default: any credentials accepted)."""
        self.ctx = ctx
        style = ctx.persona.smtp_style if ctx.persona.smtp_style in STYLES else "postfix"
        self._style = STYLES[style]
        self._fixed = _FIXED[style]
        self._host = _hostname(banner_host) or _hostname(ctx.persona.hostname) or "localhost"
        # in a tunnel the far end would see our proxy's address, not the abuser's
        self._ip = ctx.local_ip if ctx.target_host is not None else ctx.src_ip
        self._greet = greet
        self._submission = submission
        self._date = _printable(now) if now else ""
        self.implicit_tls = implicit_tls  # Handler.implicit_tls: the glue starts TLS at once
        self._handshake = implicit_tls  # the TLS handshake comes before the banner
        self._tls = tls or implicit_tls
        self._policy = auth or _DEFAULT_POLICY
        self._failures = self._policy.failures  # this source's rejected attempts, ours included
        self._challenge: Optional[str] = None  # CRAM-MD5 challenge of the exchange in progress
        self._buf = ReceiveBuffer()
        self._line_max = ctx.limits.line_length  # read for every command (ctx never changes)
        self._state = _CMD
        self._bad = 0  # refused commands in a row
        self._pending: list[bytes] = []  # replies not yet turned into an action
        self._out: list[Action] = []
        self._helo: Optional[str] = None
        self._auth_user: Optional[str] = None
        self._auth: Optional[tuple[str, Optional[str]]] = None  # (mechanism, username so far)
        self._mail_from: Optional[str] = None
        self._rcpts: list[str] = []
        self._rcpt_limit_hit = False
        self._count = 0  # messages captured
        self._body = bytearray()  # DATA: unstuffed message so far
        self._size = 0  # DATA: unstuffed bytes seen, kept or not
        self._oversized = False
        self._no_room = False  # DATA: the memory budget refused this body (452 at its end)
        self._held = 0  # bytes of the memory budget reserved for _body
        self._bol = True  # DATA: the next byte starts a line

    # -- Handler interface

    def start(self) -> list[Action]:
        if self._handshake:
            return [StartTLS()]
        return self._banner()

    def _banner(self) -> list[Action]:
        if self._greet:
            text = self._style.replies["banner"]
            if self._date and self._style.dated:
                text += self._style.dated
            self._bad = 0
            # the client's address is part of the key only where the banner shows it
            ip = self._ip if "{ip}" in text else ""
            self._pending.append(_banner_wire(text, self._host, ip, self._date))
        return self._take()

    def receive(self, data: bytes) -> list[Action]:
        state = self._state
        if not self._buf:
            # Fast paths for what non-pipelining clients send: one whole command line per
            # read, or a whole message body with its end marker in one read. Each does
            # exactly what the general loop below would do with the same bytes.
            if state == _CMD and not self._buf.skipping:
                j = data.find(b"\n")
                if j == len(data) - 1 and j <= self._line_max:
                    self._command(data[:-2] if data[-2:-1] == b"\r" else data[:-1])
                    return self._take()
            elif state == _DATA and self._bol and not self._size and data[:1] != b"." \
                    and data.find(b"\n.") == len(data) - 4 and data.endswith(b"\n.\r\n") \
                    and len(data) - 3 <= self.ctx.limits.message_size:
                self._end_data(data[:-3])  # no dot-stuffing inside: the body is the bytes as sent
                return self._take()
        if state == _CLOSED:
            return []
        self._buf += data
        while self._state != _CLOSED:
            if self._state == _DATA:
                if not self._data():
                    break
                self._end_data()
            else:
                line = self._line()
                if line is None:
                    break
                if self._state == _AUTH:
                    self._auth_step(line)
                else:
                    self._command(line)
        return self._take()

    def eof(self) -> list[Action]:
        if self._state == _CLOSED:
            return []
        if self._state == _DATA:
            seen = self._size + len(self._buf)
            self._emit(error_event(
                "smtp.truncated_data",
                f"client left after {seen} bytes of DATA without the end marker; not captured",
                (bytes(self._body[-256:]) + bytes(self._buf))[-256:]))
        elif self._buf and not self._buf.skipping:
            self._emit(error_event("smtp.truncated_line", "unterminated command at end", bytes(self._buf)))
        self._state = _CLOSED
        self._buf.clear()
        self._drop_body()
        return self._take()

    def tls_established(self, sni: Optional[str] = None) -> list[Action]:
        """The glue finished the server-side handshake after :class:`StartTLS`;
        ``sni``: the server name from the client's ClientHello, if any."""
        self._emit(SmtpTls(outcome="established", target_host=self.ctx.target_host,
                           target_port=self.ctx.target_port, sni=sni[:255] if sni else None))
        if self._handshake:  # implicit TLS: now the banner
            self._handshake = False
            return self._take() + self._banner()
        return self._take()

    def tls_failed(self, detail: str) -> list[Action]:
        """The handshake failed: the connection is no longer usable."""
        self._emit(SmtpTls(outcome="failed", detail=detail[:512], target_host=self.ctx.target_host,
                           target_port=self.ctx.target_port))
        self._close("protocol")
        return self._take()

    # -- output

    def _reply(self, text: str, **fields: str) -> None:
        """Queue one (possibly multi-line) reply; replies in a row join into one write.
        ``helo`` and ``addr`` are attacker text, made printable here when a reply shows them."""
        if "{" in text:
            for key in ("helo", "addr"):
                if key in fields:
                    fields[key] = _printable(fields[key])
            text = text.format(host=self._host, ip=self._ip, date=self._date, **fields)
        if text[0] in "23":
            self._bad = 0
        self._pending.append(_wire(text))

    def _say(self, key: str, **fields: str) -> None:
        fixed = self._fixed.get(key)
        if fixed is not None:
            if fixed[0] in b"23":
                self._bad = 0
            self._pending.append(fixed)
            return
        self._reply(self._style.replies.get(key) or _COMMON[key], **fields)

    def _flush_replies(self) -> None:
        pending = self._pending
        self._out.append(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()

    def _emit(self, action: Action) -> None:
        if self._pending:
            self._flush_replies()
        self._out.append(action)

    def _take(self) -> list[Action]:
        pending = self._pending
        if pending and not self._out and len(pending) == 1:  # most commands: one reply, nothing else
            out = [pending[0]]
            pending.clear()
            return out
        if pending:
            self._flush_replies()
        out, self._out = self._out, []
        return out

    def _close(self, reason: str) -> None:
        self._emit(Close(reason=reason))
        self._state = _CLOSED
        self._buf.clear()

    def _refuse(self, kind: str, key: str, line: bytes, detail: str = "") -> None:
        """A refused command: recorded, answered, and counted towards 421."""
        self._emit(error_event(kind, detail or line[:200].decode("utf-8", "replace"), line))
        self._say(key)
        self._bad += 1
        if self._bad >= MAX_BAD_COMMANDS:
            self._emit(error_event("smtp.too_many_errors", f"{self._bad} refused commands in a row"))
            self._say("too_many_errors")
            self._close("protocol")

    # -- command mode

    def _line(self) -> Optional[bytes]:
        """The next complete line without its line ending, or None for "need more"."""
        while True:
            line = self._buf.next_line(self.ctx.limits.line_length)
            if not isinstance(line, LineTooLong):
                return line
            self._too_long(line.observed, line.head)
            if self._state == _CLOSED:
                return None

    def _too_long(self, observed: int, head: bytes) -> None:
        self._emit(limit_event("line_length", self.ctx.limits.line_length, observed))
        if self._state == _AUTH:
            self._auth = None
            self._state = _CMD
        self._refuse("smtp.line_too_long", "line_too_long", head, f"line of {observed}+ bytes")

    def _command(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS.get(verb)
        if self._submission and verb in _NEED_TLS and self._tls_offered():  # _tls_first(), inlined
            if verb == "AUTH":
                self._auth_before_tls(arg.strip())
            return self._refuse("smtp.tls_required", "tls_required", line, f"{verb} before STARTTLS on submission")
        if handler is not None:
            handler(self, arg.strip(), line)
        elif not verb:
            self._refuse("smtp.bad_command", "bad_syntax", line, "empty command")
        elif verb in _NOT_IMPLEMENTED:
            self._refuse("smtp.bad_command", "not_implemented", line)
        else:
            self._refuse("smtp.bad_command", "unknown", line)

    def _reset(self) -> None:
        self._mail_from = None
        self._rcpts = []
        self._rcpt_limit_hit = False

    def _auth_offered(self) -> bool:
        return self.ctx.persona.smtp_auth

    def _tls_offered(self) -> bool:
        return self.ctx.persona.smtp_tls and self.ctx.tls_available and not self._tls

    def _tls_first(self) -> bool:
        """Submission that can do TLS wants it before AUTH and mail (RFC 6409 / 3207)."""
        return self._submission and self._tls_offered()

    def _ehlo_lines(self) -> list[str]:
        out = []
        for kw in self._style.keywords:
            if kw == "SIZE":
                out.append(f"SIZE {self.ctx.limits.message_size}")
            elif kw == "AUTH":
                if self._auth_offered() and self._policy.advertise and not self._tls_first():
                    out.append("AUTH " + " ".join(self._policy.advertise))
            elif kw == "STARTTLS":
                if self._tls_offered():
                    out.append("STARTTLS")
            else:
                out.append(kw)
        return out

    def _cmd_ehlo(self, arg: str, line: bytes) -> None:
        if not arg:
            return self._refuse("smtp.bad_syntax", "ehlo_syntax", line)
        self._greeted(arg)
        # one reply, so one write: clients break on an EHLO answer in pieces
        text = self._style.replies["ehlo"] + "".join(f"\n250 {kw}" for kw in self._ehlo_lines())
        self._reply(text, helo=arg)

    def _cmd_helo(self, arg: str, line: bytes) -> None:
        if not arg:
            return self._refuse("smtp.bad_syntax", "helo_syntax", line)
        self._greeted(arg)
        self._say("helo", helo=arg)

    def _greeted(self, arg: str) -> None:
        self._helo = arg[:ECHO_CAP]
        self._reset()

    def _cmd_mail(self, arg: str, line: bytes) -> None:
        if self._mail_from is not None:
            return self._refuse("smtp.bad_sequence", "nested_mail", line)
        if self._submission and self._auth_offered() and self._auth_user is None:
            return self._refuse("smtp.bad_sequence", "auth_required", line, "MAIL before AUTH on submission")
        limits = self.ctx.limits
        if self._count >= limits.messages_per_session:
            self._emit(limit_event("messages_per_session", limits.messages_per_session, self._count + 1))
            self._say("too_many_msgs")
            return self._close("limit")
        parsed = _path(arg, "FROM:")
        if parsed is None:
            return self._refuse("smtp.bad_syntax", "mail_syntax", line)
        addr, params = parsed
        for param in params:
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not (value.isascii() and value.isdigit()):
                    return self._refuse("smtp.bad_syntax", "bad_size", line)
                size = int(value) if len(value) < 20 else 10**20
                if size > limits.message_size:
                    self._emit(limit_event("message_size", limits.message_size, size))
                    return self._say("size_exceeded")
            elif key == "BODY" and value.upper() not in ("7BIT", "8BITMIME"):
                return self._refuse("smtp.bad_syntax", "bad_body", line)
        self._mail_from = addr[:ECHO_CAP]
        self._rcpts = []
        self._rcpt_limit_hit = False
        self._say("mail", addr=addr)

    def _cmd_rcpt(self, arg: str, line: bytes) -> None:
        if self._mail_from is None:
            return self._refuse("smtp.bad_sequence", "need_mail", line)
        parsed = _path(arg, "TO:")
        if parsed is None or not parsed[0]:
            return self._refuse("smtp.bad_syntax", "rcpt_syntax", line)
        limit = self.ctx.limits.recipients
        if len(self._rcpts) >= limit:
            if not self._rcpt_limit_hit:  # once per transaction, not per extra RCPT
                self._rcpt_limit_hit = True
                self._emit(limit_event("recipients", limit, len(self._rcpts) + 1))
            return self._say("too_many_rcpts")
        addr = parsed[0][:ECHO_CAP]
        self._rcpts.append(addr)
        self._say("rcpt", addr=addr)

    def _cmd_data(self, arg: str, line: bytes) -> None:
        if self._mail_from is None:
            return self._refuse("smtp.bad_sequence", "need_mail", line)
        if not self._rcpts:
            return self._refuse("smtp.bad_sequence", "need_rcpt", line)
        low = self.ctx.budget.pool.disk_low
        if low is not None:  # the data dir is below its free-space floor: refuse before the body
            self._emit(limit_event("min_free_mb", low[0], low[1]))
            return self._say("no_room")
        self._say("data")
        self._state = _DATA
        self._body = bytearray()
        self._size = 0
        self._oversized = False
        self._no_room = False
        self._bol = True

    def _cmd_rset(self, arg: str, line: bytes) -> None:
        self._reset()
        self._say("ok")

    def _cmd_noop(self, arg: str, line: bytes) -> None:
        self._say("ok")

    def _cmd_vrfy(self, arg: str, line: bytes) -> None:
        if not arg:
            return self._refuse("smtp.bad_syntax", "vrfy_syntax", line)
        self._say("vrfy")

    def _cmd_help(self, arg: str, line: bytes) -> None:
        self._say("help")

    def _cmd_quit(self, arg: str, line: bytes) -> None:
        self._say("bye")
        self._close("client_eof")

    def _cmd_starttls(self, arg: str, line: bytes) -> None:
        if not self._tls_offered():
            if self._tls:
                return self._refuse("smtp.bad_sequence", "tls_active", line)
            return self._refuse("smtp.bad_command", "not_implemented", line, "STARTTLS not offered")
        if arg:
            return self._refuse("smtp.bad_syntax", "tls_syntax", line)
        if self._buf:  # plaintext pipelined after STARTTLS: never act on it (CVE-2011-0411 style)
            self._emit(error_event("smtp.starttls_injection",
                                   f"{len(self._buf)} bytes sent after STARTTLS before the handshake",
                                   bytes(self._buf[:256])))
            self._buf.clear()
        self._say("tls_ready")
        self._emit(StartTLS())
        self._tls = True
        self._helo = None  # RFC 3207 4.2: forget everything learnt before TLS
        self._auth_user = None
        self._reset()

    def _cmd_auth(self, arg: str, line: bytes) -> None:
        if not self._auth_offered():
            return self._refuse("smtp.bad_sequence", "auth_disabled", line)
        if self._auth_user is not None:
            return self._refuse("smtp.bad_sequence", "auth_again", line)
        if self._mail_from is not None:
            return self._refuse("smtp.bad_sequence", "busy", line)
        mech, _, initial = arg.partition(" ")
        mech, initial = mech.upper(), initial.strip()
        if not mech:
            return self._refuse("smtp.bad_syntax", "auth_syntax", line)
        if mech not in self._policy.mechanisms():
            self._emit(self._auth_event(mech[:64], outcome="rejected", judged=False))
            return self._say("auth_mech")
        self._auth = (mech, None)
        self._state = _AUTH
        if mech == "CRAM-MD5":
            # RFC 2195: the challenge is <random.timestamp@hostname>; no initial response
            self._challenge = f"<{self._policy.nonce}@{self._host}>"
            if initial:
                return self._auth_malformed(initial.encode(), "CRAM-MD5 takes no initial response")
            self._reply("334 " + base64.b64encode(self._challenge.encode()).decode())
        elif initial:
            self._auth_step(initial.encode())
        else:
            self._say("auth_plain" if mech == "PLAIN" else "auth_user")

    def _auth_event(self, mech: str, user: Optional[str] = None, password: Optional[str] = None,
                    outcome: str = "accepted", judged: bool = True) -> SmtpAuth:
        return SmtpAuth(mechanism=mech, username=user, password=password, outcome=outcome,
                        target_host=self.ctx.target_host, target_port=self.ctx.target_port,
                        policy=self._policy.policy if judged else None,
                        challenge=self._challenge if mech == "CRAM-MD5" else None)

    def _auth_before_tls(self, arg: str) -> None:
        """AUTH on submission before STARTTLS: refused (530), but its credentials are kept."""
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()[:64]
        if not mech:
            return  # no attempt to record; the refusal is
        user = password = None
        decoded = _b64(initial.strip().encode()) if initial.strip() else None
        if decoded is not None:
            text = decoded.decode("utf-8", "replace")
            if mech == "PLAIN" and text.count("\0") == 2:
                _authzid, user, password = text.split("\0")
            elif mech == "LOGIN":
                user = text
        self._emit(self._auth_event(mech, user, password, "needs_tls", judged=mech in AUTH_MECHANISMS))

    def _auth_malformed(self, line: bytes, why: str) -> None:
        mech, user = self._auth or ("PLAIN", None)
        self._auth = None
        self._state = _CMD
        self._emit(self._auth_event(mech, user, outcome="malformed"))
        self._challenge = None
        self._refuse("smtp.auth_malformed", "auth_b64", line, f"AUTH {mech}: {why}")

    def _auth_done(self, mech: str, user: str, password: str) -> None:
        """Complete credentials: the policy decides."""
        self._auth = None
        self._state = _CMD
        if self._policy.accepts(self._failures):
            self._auth_user = user
            self._emit(self._auth_event(mech, user, password, "accepted"))
            self._say("auth_ok")
        else:
            self._failures += 1
            self._emit(self._auth_event(mech, user, password, "rejected"))
            self._say("auth_failed")
            in_session = self._failures - self._policy.failures
            if in_session >= MAX_BAD_COMMANDS:  # a brute force in one session: hang up as Postfix does
                self._emit(error_event("smtp.too_many_errors", f"{in_session} failed AUTH attempts"))
                self._say("too_many_errors")
                self._close("protocol")
        self._challenge = None

    def _auth_step(self, line: bytes) -> None:
        """One client response inside an AUTH exchange."""
        mech, user = self._auth or ("PLAIN", None)
        line = line.strip()
        if line == b"*":
            self._auth = None
            self._state = _CMD
            self._challenge = None
            return self._say("auth_abort")
        decoded = _b64(line)
        if decoded is None:
            return self._auth_malformed(line, "not base64")
        text = decoded.decode("utf-8", "replace")
        if mech == "PLAIN":
            if text.count("\0") != 2:
                return self._auth_malformed(line, "PLAIN response without two NULs")
            _authzid, user, password = text.split("\0")
        elif mech == "CRAM-MD5":  # "user hexdigest"; the user name may hold spaces
            user, space, password = text.rpartition(" ")
            if not space:
                return self._auth_malformed(line, "CRAM-MD5 response without a space")
        elif user is None:  # LOGIN: the user name, then the password
            self._auth = (mech, text)
            return self._say("auth_pass")
        else:
            password = text
        self._auth_done(mech, user, password)

    # -- DATA

    def _data(self) -> bool:
        """Consume message bytes from the buffer; True once the end marker is read.

        Scans in bulk for LF followed by a dot: only those spots can be the
        end marker or need unstuffing, everything between is copied as is.
        """
        buf = self._buf
        n = len(buf)
        i = 0
        end = -1
        while True:
            if self._bol:
                if i >= n:
                    break
                if buf[i] == DOT:
                    if i + 1 >= n:
                        break  # need the next byte to decide
                    c = buf[i + 1]
                    if c == LF:
                        end = i + 2
                        break
                    if c == CR:
                        if i + 2 >= n:
                            break
                        if buf[i + 2] == LF:
                            end = i + 3
                            break
                    i += 1  # dot-stuffing: drop the first dot
                self._bol = False
            j = buf.find(b"\n.", i)
            if j < 0:
                if n > i:
                    self._keep(buf, i, n)
                    self._bol = buf[n - 1] == LF
                    i = n
                break
            self._keep(buf, i, j + 1)
            i = j + 1
            self._bol = True
        buf.drop(end if end >= 0 else i)
        return end >= 0

    def _keep(self, buf: bytearray, start: int, stop: int) -> None:
        self._size += stop - start
        if self._oversized or self._no_room:
            return
        if self._size > self.ctx.limits.message_size:
            self._oversized = True  # keep reading to the end, keep nothing
            self._drop_body()
            return
        if self._size > self._held:  # reserve in steps: one call per BUDGET_STEP, not per line
            step = max(BUDGET_STEP, self._size - self._held)
            budget = self.ctx.budget
            if not budget.reserve(step):
                # Every session's bodies together are over the sensor's budget: read on to
                # the end marker, keep nothing, and answer 452 (try later), as a full queue does.
                self._no_room = True
                self._drop_body()
                self._emit(limit_event("memory_budget", budget.pool.limit, budget.pool.used + step))
                return
            self._held += step
        with memoryview(buf) as view:
            self._body += view[start:stop]

    def _drop_body(self) -> None:
        """Forget the body so far and give its memory budget back."""
        if self._body:
            self._body = bytearray()
        if self._held:
            self.ctx.budget.release(self._held)
            self._held = 0

    def _end_data(self, raw: Optional[bytes] = None) -> None:
        """The end marker was read; ``raw``: the whole body, if not collected in ``_body``."""
        self._state = _CMD
        limits = self.ctx.limits
        if self._oversized:
            self._emit(limit_event("message_size", limits.message_size, self._size))
            self._say("too_big")
        elif self._no_room:
            self._say("no_room")  # the limit hit was recorded when the budget refused
        else:
            if raw is None:
                raw = bytes(self._body)
            self._count += 1
            sha = hashlib.sha256(raw).hexdigest()
            subject, header_from, message_id = parse_headers(raw, limits.header_bytes)
            ctx = self.ctx
            event = SmtpMessage(
                helo=self._helo, mail_from=self._mail_from or "", rcpts=self._rcpts,  # _reset: a new list
                size=len(raw), sha256=sha, subject=subject, header_from=header_from,
                message_id=message_id, via=list(ctx.via), target_host=ctx.target_host,
                target_port=ctx.target_port, tls=self._tls, auth_user=self._auth_user,
                index=self._count, submission=self._submission,
            )
            # the body's share of the budget travels with it until it is on disk
            self._emit(Durable(event=event, body=raw, reserved=self._held))
            self._held = 0
            # Distinct per connection and time, like a real queue id: the same spam sent twice
            # must not get the same id (a tell). Still deterministic for a given session.
            key = f"{sha}:{self._count}:{ctx.src_ip}:{ctx.src_port}:{ctx.now}:{ctx.depth}"
            seed = int.from_bytes(hashlib.sha256(key.encode()).digest(), "big")
            self._say("queued", qid=self._style.qid(seed, self._host))
        self._drop_body()
        self._reset()


_COMMANDS: dict[str, Callable[[SmtpServer, str, bytes], None]] = {
    "EHLO": SmtpServer._cmd_ehlo,
    "HELO": SmtpServer._cmd_helo,
    "MAIL": SmtpServer._cmd_mail,
    "RCPT": SmtpServer._cmd_rcpt,
    "DATA": SmtpServer._cmd_data,
    "RSET": SmtpServer._cmd_rset,
    "NOOP": SmtpServer._cmd_noop,
    "VRFY": SmtpServer._cmd_vrfy,
    "HELP": SmtpServer._cmd_help,
    "QUIT": SmtpServer._cmd_quit,
    "STARTTLS": SmtpServer._cmd_starttls,
    "AUTH": SmtpServer._cmd_auth,
}
