"""Ready-to-send abuse reports for `spampots notify`: RFC 5965 ARF, or X-ARF v0.2, one per network.

ARF (``--report arf``, the default) is ``multipart/report; report-type=feedback-report`` with the
three parts RFC 5965 section 2 asks for: the human-readable text (the notification body, whose
evidence lines are already sanitised), a ``message/feedback-report`` (``Feedback-Type: abuse``,
section 3.1/3.2 fields) and the sample message as ``message/rfc822`` or its headers only as
``text/rfc822-headers``. X-ARF (``--report xarf``) is the v0.2 mail: ``X-XARF: PLAIN``,
``multipart/mixed`` with the text, a YAML ``report.txt`` and the sample (or the evidence lines).

Every value we put in a header or report field went through :func:`notify.neutralise` (no line
break can reach a header). The sample is the evidence itself and is enclosed as bytes: CRLF line
ends, NUL removed, lines cut at 998 octets and the whole at ``MAX_SAMPLE``, so it stays a body
part a relay accepts and never becomes part of our own header.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import uuid
from dataclasses import dataclass
from email.charset import QP, Charset
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from io import BytesIO
from typing import Any, Callable, Optional

from spampots import __version__

from .contacts import valid_address
from .notify import Network, Notification, network_name, neutralise, utc

REPORTS = ("arf", "xarf")
SAMPLES = ("rfc822", "headers")
MAX_SAMPLE = 256 << 10  # bytes of the sample message kept in a report
MAX_LINE = 998  # RFC 5322 line limit, CRLF excluded
USER_AGENT = f"spampots/{__version__}"
XARF_SCHEMA = "http://www.x-arf.org/schema/abuse_mail-spam_0.1.0.json"
_POLICY = compat32.clone(linesep="\r\n")
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP


@dataclass
class ArfOptions:
    report: str = "arf"  # arf | xarf
    sample: str = "rfc822"  # rfc822: the whole message; headers: text/rfc822-headers
    reporter: str = "spampots@localhost"  # From: of the reports
    # sha256 -> the raw message, or None when the store no longer has it (retention, another box)
    read_sample: Optional[Callable[[str], Optional[bytes]]] = None


def clean_sample(raw: bytes, headers_only: bool) -> tuple[bytes, bool]:
    """(the sample as safe body bytes, whether it was cut). CRLF line ends, no NUL, no line over
    998 octets, at most MAX_SAMPLE bytes; with `headers_only`, the header block only."""
    text = raw.replace(b"\x00", b"").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if headers_only:
        text = text.split(b"\n\n", 1)[0] + b"\n"
    cut = len(text) > MAX_SAMPLE
    lines = text[:MAX_SAMPLE].split(b"\n")
    if cut and len(lines) > 1:
        lines = lines[:-1]  # a whole last line, not half of one
    cut |= any(len(ln) > MAX_LINE for ln in lines)
    out = b"\r\n".join(ln[:MAX_LINE] for ln in lines)
    return (out if out.endswith(b"\r\n") else out + b"\r\n"), cut


def _date(t: Optional[dt.datetime]) -> str:
    """RFC 5322 date of a lake timestamp (naive UTC)."""
    t = t or dt.datetime.now(dt.timezone.utc)
    return email.utils.format_datetime(t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t)


def _header(value: str) -> Any:
    return value if value.isascii() else Header(value, "utf-8")


def _sample_part(n: Network, opts: ArfOptions, for_xarf: bool) -> tuple[Optional[Message], str]:
    """The enclosed sample (message/rfc822 or text/rfc822-headers) and a line for the human text."""
    s = n.sample
    raw = opts.read_sample(s["sha256"]) if s and s.get("sha256") and opts.read_sample else None
    if raw is None:
        return None, ("The sample message is not enclosed: the store no longer holds it." if s else "")
    body, cut = clean_sample(raw, opts.sample == "headers")
    part = Message(policy=compat32)
    if opts.sample == "headers" and not for_xarf:
        part["Content-Type"] = "text/rfc822-headers"
    elif opts.sample == "headers":
        part["Content-Type"] = 'text/plain; name="headers.txt"'
    else:
        part["Content-Type"] = "message/rfc822"
    part["Content-Transfer-Encoding"] = "7bit" if body.isascii() else "8bit"
    part["Content-Disposition"] = "inline"
    part.set_payload(body.decode("ascii", "surrogateescape"))  # written back byte for byte
    what = "its headers" if opts.sample == "headers" else "the message"
    line = (f"Enclosed, as a sample, {what} received at {utc(s['ts'])} from {neutralise(s['src_ip'])} port "
            f"{s['src_port']}, envelope sender {_angle(s['mail_from'])}" + (" (cut to size)." if cut else "."))
    return part, line


def _angle(addr: Any) -> str:
    return "<" + neutralise(addr or "", cap=200) + ">"


def _outer(msg: Message, n: Network, note: Notification, opts: ArfOptions, now: dt.datetime) -> None:
    first, last = note.period
    msg["From"] = opts.reporter
    if n.contacts:
        msg["To"] = ", ".join(n.contacts)
    what = "spam through a honeypot" if n.emails else "abuse of a honeypot"  # --min-emails 0: proxy use only
    msg["Subject"] = _header(f"Abuse report: {network_name(n)}, {what}, {first} to {last}")
    msg["Date"] = email.utils.format_datetime(now)
    domain = opts.reporter.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = email.utils.make_msgid("spampots", domain=domain)


def _feedback_fields(n: Network, note: Notification) -> list[tuple[str, str]]:
    """RFC 5965 section 3.1 (required) and 3.2 (optional) fields; abuser strings neutralised."""
    s = n.sample or {}
    ip = s.get("src_ip") or (n.ip_rows[0]["ip"] if n.ip_rows else "")
    fields = [("Feedback-Type", "abuse"), ("User-Agent", USER_AGENT), ("Version", "1")]
    if s.get("mail_from") is not None:
        fields.append(("Original-Mail-From", _angle(s["mail_from"])))
    fields += [("Arrival-Date", _date(s.get("ts") or n.first_seen)), ("Source-IP", neutralise(ip)),
               ("Incidents", str(max(n.emails, 1)))]
    if valid_address(s.get("mail_from") or ""):  # a plain address only: no domain after an injected line
        fields.append(("Reported-Domain", s["mail_from"].rpartition("@")[2].lower()))
    return fields


def _human(text: str, sample_line: str) -> MIMEText:
    if sample_line:
        text = text.rstrip("\n") + "\n\n" + sample_line + "\n"
    return MIMEText(text, "plain", _UTF8_QP)


def arf(n: Network, note: Notification, text: str, opts: ArfOptions, now: dt.datetime) -> bytes:
    """One RFC 5965 report for network `n`; `text` is its notification body."""
    sample, line = _sample_part(n, opts, for_xarf=False)
    if sample is None:  # the third part is required: the envelope we saw, as headers
        sample = MIMEText(_envelope(n), "rfc822-headers", "us-ascii")
    msg = MIMEMultipart("report", report_type="feedback-report")
    _outer(msg, n, note, opts, now)
    report = Message(policy=compat32)
    report["Content-Type"] = "message/feedback-report"
    fields = Message(policy=compat32)
    for k, v in _feedback_fields(n, note):
        fields[k] = v
    report.set_payload([fields])
    for part in (_human(text, line), report, sample):
        msg.attach(part)
    return _flatten(msg)


def _envelope(n: Network) -> str:
    """Without the message: what the sensor saw of it, as header lines (the HELO, the sender)."""
    s = n.sample or {}
    if not s:
        return "X-Spampots-Note: no email from this network, only proxy requests\n"
    return (f"Received: from {neutralise(s.get('helo') or 'unknown', cap=200)} ([{neutralise(s['src_ip'])}]); "
            f"{_date(s['ts'])}\nReturn-Path: {_angle(s.get('mail_from'))}\n"
            "X-Spampots-Note: message body no longer stored\n")


def xarf_report(n: Network, opts: ArfOptions, report_id: str, attachment: str) -> str:
    """The YAML part of X-ARF v0.2 (every value a double-quoted scalar, so nothing in it is YAML syntax)."""
    s = n.sample or {}
    ip = s.get("src_ip") or (n.ip_rows[0]["ip"] if n.ip_rows else "")
    fields = [("Reported-From", opts.reporter), ("Category", "abuse"), ("Report-Type", "mail-spam"),
              ("Service", "smtp"), ("Version", "0.2"), ("User-Agent", USER_AGENT), ("Report-ID", report_id),
              ("Date", _date(s.get("ts") or n.first_seen)), ("Source", neutralise(ip)),
              ("Source-Type", "ipv6" if ":" in ip else "ipv4"), ("Attachment", attachment),
              ("Schema-URL", XARF_SCHEMA)]
    return "".join(f"{k}: {json.dumps(v, ensure_ascii=True)}\n" for k, v in fields)


def xarf(n: Network, note: Notification, text: str, opts: ArfOptions, now: dt.datetime) -> bytes:
    """One X-ARF v0.2 report for network `n`."""
    sample, line = _sample_part(n, opts, for_xarf=True)
    if sample is None:
        sample = MIMEText(_envelope(n), "plain", "us-ascii")
    attachment = sample.get_content_type()
    msg = MIMEMultipart("mixed")
    _outer(msg, n, note, opts, now)
    msg["X-XARF"] = "PLAIN"
    report = MIMEText(xarf_report(n, opts, f"{uuid.uuid4()}@spampots", attachment), "plain", "utf-8")
    report.set_param("name", "report.txt")
    for part in (_human(text, line), report, sample):
        msg.attach(part)
    return _flatten(msg)


def build(n: Network, note: Notification, text: str, opts: ArfOptions, now: dt.datetime) -> bytes:
    return (arf if opts.report == "arf" else xarf)(n, note, text, opts, now)


def _flatten(msg: Message) -> bytes:
    buf = BytesIO()
    BytesGenerator(buf, mangle_from_=False, policy=_POLICY).flatten(msg)
    return buf.getvalue()
