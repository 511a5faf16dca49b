"""A parsed view of one captured message: what it is made of, for campaigns and analysts.

:func:`parse` takes the raw bytes the sensor stored (attacker input) and returns
:class:`Features`: header facts, the MIME structure, the decoded body text, URLs and their
registered domains, e-mail addresses and phone numbers, the language, a layout (the text with
variable tokens masked) and a TLSH of it. It does no I/O: the lake (message_features_table.py)
calls it once per stored body and keeps the result.

Everything is bounded (:class:`Limits`): bytes parsed, MIME parts and depth, bytes decoded per
part, text kept, list lengths. What a bound cut, and what was malformed, is counted in
``Features.defects``; nothing raises.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import functools
import hashlib
import html
import re
from dataclasses import dataclass
from email.message import Message
from typing import Optional

import msgspec

# Languages the detector chooses among: the spam the sensors see is mostly in these, and a
# small set keeps detection fast (lingua's cost grows with the candidates).
LANGUAGES = ("ENGLISH", "PORTUGUESE", "SPANISH", "GERMAN", "FRENCH", "ITALIAN", "RUSSIAN", "CHINESE",
             "JAPANESE", "KOREAN", "DUTCH", "POLISH", "TURKISH", "ARABIC")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 1 << 20  # of the raw message parsed; the rest is ignored (counted)
    max_parts: int = 64  # MIME parts walked
    max_depth: int = 8  # multipart nesting
    max_decoded: int = 256 << 10  # bytes decoded per part
    max_text: int = 64 << 10  # characters of body text kept (and laid out)
    max_items: int = 64  # URLs, domains, addresses, phones, attachments kept


class Part(msgspec.Struct, frozen=True):
    content_type: str
    size: int  # decoded bytes (up to Limits.max_decoded)
    sha256: str  # of the decoded bytes
    filename: Optional[str] = None
    charset: Optional[str] = None
    encoding: Optional[str] = None  # Content-Transfer-Encoding


class Features(msgspec.Struct):
    sha256: str
    size: int
    subject: str = ""
    from_domain: str = ""
    reply_to_domain: str = ""
    message_id_shape: str = ""  # local part with letters -> a, digits -> 9, runs collapsed, @domain
    x_mailer: str = ""
    date_skew_s: Optional[float] = None  # Date header minus the time the sensor took the message
    parts: list[Part] = []
    attachments: list[str] = []  # file names
    text: str = ""  # decoded body text (HTML reduced to text), bounded
    urls: list[str] = []
    url_domains: list[str] = []  # registered domains (public-suffix aware), in order of appearance
    emails: list[str] = []
    phones: list[str] = []
    language: str = ""
    layout: str = ""  # subject + text with variable tokens masked (see mask())
    layout_hash: str = ""  # first 16 hex digits of the layout's sha256
    tlsh: str = ""  # of the layout; '' when too short for TLSH (< 50 bytes)
    defects: dict[str, int] = {}  # what was malformed or cut, by kind


# -- the spam-specific bits ---------------------------------------------------------------------

URL_RE = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]{1,2000}""")
EMAIL_RE = re.compile(r"(?i)\b[a-z0-9._%+-]{1,64}@(?:[a-z0-9-]{1,63}\.){1,8}[a-z]{2,24}\b")
# International and local phone shapes: 8 to 15 digits with the usual separators.
PHONE_RE = re.compile(r"(?<![\w+])(?:\+|00)?\d[\d \-.()]{6,18}\d(?!\w)")
_TAG_RE = re.compile(r"(?is)<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]{0,2000}>")
_BLOCK_RE = re.compile(r"(?i)</?(?:p|div|br|tr|li|h\d|table|td)\b")
_WS_RE = re.compile(r"[ \t\r\f\v]+")
_HREF_RE = re.compile(r"""(?i)\bhref\s*=\s*["']?([^"'\s>]{1,2000})""")
# Tokens masked in the layout: hex/alnum noise, numbers, and words mixing letters and digits.
_NUM_RE = re.compile(r"\b\d[\d.,:/-]*\b")
_NOISE_RE = re.compile(r"\b(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9_-]{4,}\b|\b[A-Fa-f0-9]{8,}\b")
# Case-noise words, long consonant runs: random tokens meant to defeat hashing.
# Case switching twice or more ("xQzTrW"; not "iPhone" or "McDonald").
_GIBBERISH_RE = re.compile(r"\b(?=[A-Za-z]*[a-z][A-Z][A-Za-z]*[a-z][A-Z])[A-Za-z]{5,}\b"
                           r"|(?i:\b[a-z]*[bcdfghjklmnpqrstvwxz]{6,}[a-z]*\b)")
_MID_RE = re.compile(r"[A-Za-z]+|\d+")
_WORD_RE = re.compile(r"\w+", re.UNICODE)


def _count(d: dict[str, int], kind: str, n: int = 1) -> None:
    d[kind] = d.get(kind, 0) + n


def _domain_of(addr: str) -> str:
    _, a = email.utils.parseaddr(addr or "")
    return a.rpartition("@")[2].strip().lower().rstrip(">. ") if "@" in a else ""


@functools.lru_cache(maxsize=1)
def _extractor():  # noqa: ANN202 - tldextract is optional at import time
    import tldextract

    # The snapshot bundled with tldextract, never fetched: the analysis makes no connection.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def registered_domain(host: str) -> str:
    """The registered domain of `host` (``a.b.example.co.uk`` -> ``example.co.uk``); the host
    itself for an IP address or an unknown suffix."""
    host = host.strip().strip(".").lower()[:253]
    if not host:
        return ""
    r = _extractor()(host)
    reg = r.top_domain_under_public_suffix if hasattr(r, "top_domain_under_public_suffix") else r.registered_domain
    return reg or host


@functools.lru_cache(maxsize=1)
def _detector():  # noqa: ANN202
    from lingua import Language, LanguageDetectorBuilder

    # Low accuracy mode (trigrams only): 0.7 s and 47 MB to load instead of 15 s and 355 MB, and the
    # same answers on the labelled corpus (spam bodies are long enough for it). Preloaded: the cost
    # is paid at the first message, not in the middle of a batch.
    return LanguageDetectorBuilder.from_languages(*(getattr(Language, n) for n in LANGUAGES)) \
        .with_low_accuracy_mode().with_preloaded_language_models().build()


def language_of(text: str) -> str:
    """ISO 639-1 code of the text's language among LANGUAGES, '' when unsure or too short."""
    words = _WORD_RE.findall(text[:2000])
    if len(words) < 3:
        return ""
    lang = _detector().detect_language_of(" ".join(words))
    return lang.iso_code_639_1.name.lower() if lang is not None else ""


def html_to_text(s: str) -> str:
    s = _BLOCK_RE.sub(lambda m: "\n" + m.group(0), s)
    return html.unescape(_TAG_RE.sub(" ", s))


def mask(text: str, names: tuple[str, ...] = ()) -> str:
    """The layout of `text`: URLs, addresses, numbers, alphanumeric noise and the recipient's
    `names` replaced by placeholders, case folded, whitespace collapsed. Two messages of one
    template with different links, recipients and random tokens get the same layout."""
    t = URL_RE.sub(" _url_ ", text)
    t = EMAIL_RE.sub(" _email_ ", t)
    t = PHONE_RE.sub(" _phone_ ", t)
    for n in names:
        if len(n) >= 3:
            t = re.sub(rf"(?i)\b{re.escape(n)}\b", " _name_ ", t)
    t = _NOISE_RE.sub(" _token_ ", t)
    t = _GIBBERISH_RE.sub(" _token_ ", t)
    t = _NUM_RE.sub(" _num_ ", t)
    lines = (_WS_RE.sub(" ", ln).strip() for ln in t.lower().splitlines())
    return "\n".join(ln for ln in lines if ln)


def recipient_names(rcpts: list[str]) -> tuple[str, ...]:
    """Words of the recipients' local parts (``john.smith@x`` -> john, smith): what spam
    personalises subjects and greetings with."""
    out: list[str] = []
    for r in rcpts[:16]:
        local = r.strip("<> ").partition("@")[0]
        out += [w for w in re.split(r"[._+\-\d]+", local) if len(w) >= 3][:4]
    return tuple(dict.fromkeys(w.lower() for w in out))


def message_id_shape(mid: str) -> str:
    mid = mid.strip().strip("<>")[:200]
    local, _, domain = mid.rpartition("@") if "@" in mid else (mid, "", "")
    shape = _MID_RE.sub(lambda m: "a" if m.group(0)[0].isalpha() else "9", local)
    return shape[:64] + ("@" + domain.lower()[:100] if domain else "")


# -- parsing ------------------------------------------------------------------------------------

def _decode(part: Message, lim: Limits, defects: dict[str, int]) -> bytes:
    try:
        raw = part.get_payload(decode=False)
        if not isinstance(raw, str):
            return b""
        if len(raw) > lim.max_decoded * 2:  # base64 is 4/3; QP at most 3x, but cut before decoding
            _count(defects, "part_cut")
            cut = email.message.Message()
            cut["Content-Transfer-Encoding"] = str(part.get("Content-Transfer-Encoding", "") or "")[:40]
            cut.set_payload(raw[: lim.max_decoded * 2])
            part = cut
        data = part.get_payload(decode=True) or b""
    except Exception:  # noqa: BLE001 - a broken transfer encoding is attacker input
        _count(defects, "bad_encoding")
        return b""
    if len(data) > lim.max_decoded:
        _count(defects, "part_cut")
        data = data[: lim.max_decoded]
    return data


def _text_of(data: bytes, charset: Optional[str], defects: dict[str, int]) -> str:
    cs = (charset or "utf-8").strip().lower()[:40]
    try:
        return data.decode(cs, errors="replace")
    except LookupError:  # an unknown charset name
        _count(defects, "bad_charset")
        return data.decode("utf-8", errors="replace")


def _walk(msg: Message, lim: Limits, defects: dict[str, int]) -> list[tuple[Message, int]]:
    """Leaf parts, depth-first, bounded by max_parts and max_depth, each with the number of its
    nearest multipart/alternative ancestor (0: none)."""
    out: list[tuple[Message, int]] = []
    stack: list[tuple[Message, int, int]] = [(msg, 0, 0)]
    seen = 0
    while stack:
        part, depth, alt = stack.pop()
        seen += 1
        if seen > lim.max_parts:
            _count(defects, "parts_cut")
            break
        if part.is_multipart():
            if depth >= lim.max_depth:
                _count(defects, "too_deep")
                continue
            kids = part.get_payload()
            if part.get_content_subtype() == "alternative":
                alt = seen
            if isinstance(kids, list):
                stack.extend((k, depth + 1, alt) for k in reversed(kids[: lim.max_parts]) if isinstance(k, Message))
            continue
        out.append((part, alt))
    return out


def _ctype(part: Message) -> str:
    try:
        return (part.get_content_type() or "text/plain").lower()[:100]
    except Exception:  # noqa: BLE001
        return "text/plain"


def _header(msg: Message, name: str, defects: dict[str, int]) -> str:
    try:
        v = msg.get(name)
        return str(v)[:998] if v is not None else ""
    except Exception:  # noqa: BLE001 - a header the policy cannot decode
        _count(defects, "bad_header")
        try:
            return str(msg.get_all(name, [""])[0])[:998]
        except Exception:  # noqa: BLE001
            return ""


def parse(raw: bytes, *, received: Optional[float] = None, rcpts: list[str] = (),  # type: ignore[assignment]
          limits: Limits = Limits(), sha256: Optional[str] = None) -> Features:
    """The features of one raw message (as stored); `received` is when the sensor took it (UNIX
    time, for the Date skew), `rcpts` its envelope recipients (their names are masked)."""
    lim = limits
    defects: dict[str, int] = {}
    sha = sha256 or hashlib.sha256(raw).hexdigest()
    size = len(raw)
    if size > lim.max_bytes:
        _count(defects, "message_cut")
        raw = raw[: lim.max_bytes]
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # noqa: BLE001
        _count(defects, "unparsable")
        msg = email.message_from_string("")
    if getattr(msg, "defects", None):
        _count(defects, "mime_defect", len(msg.defects))
    f = Features(sha256=sha, size=size, defects=defects)
    f.subject = _decoded_header(_header(msg, "Subject", defects), defects)[:998]
    f.from_domain = _domain_of(_decoded_header(_header(msg, "From", defects), defects))
    f.reply_to_domain = _domain_of(_decoded_header(_header(msg, "Reply-To", defects), defects))
    f.message_id_shape = message_id_shape(_header(msg, "Message-ID", defects))
    f.x_mailer = _header(msg, "X-Mailer", defects)[:200]
    date = _header(msg, "Date", defects)
    if date and received is not None:
        try:
            f.date_skew_s = email.utils.parsedate_to_datetime(date).timestamp() - received
        except Exception:  # noqa: BLE001 - no or a nonsense date
            _count(defects, "bad_date")
    hrefs: list[str] = []
    parts: list[Part] = []
    texts: list[str] = []
    kept = 0
    leaves = _walk(msg, lim, defects)
    # An HTML part with a plain alternative says the same: its text is the plain one's.
    plain_alts = {alt for p, alt in leaves if alt and _ctype(p) == "text/plain"}
    for part, alt in leaves:
        ctype = _ctype(part)
        data = _decode(part, lim, defects)
        try:
            fname = part.get_filename()
        except Exception:  # noqa: BLE001
            fname = None
        charset = None
        try:
            charset = part.get_content_charset()
        except Exception:  # noqa: BLE001
            _count(defects, "bad_charset")
        enc = str(part.get("Content-Transfer-Encoding", "") or "").strip().lower()[:40] or None
        if len(parts) < lim.max_items:
            parts.append(Part(ctype, len(data), hashlib.sha256(data).hexdigest(),
                              str(fname)[:200] if fname else None, charset, enc))
        if fname or not ctype.startswith("text/"):
            if fname and len(f.attachments) < lim.max_items:
                f.attachments.append(str(fname)[:200])
            continue
        if kept >= lim.max_text or (ctype == "text/html" and alt in plain_alts):
            continue
        s = _text_of(data, charset, defects)
        if ctype == "text/html":
            hrefs += _HREF_RE.findall(s[: lim.max_text])
            s = html_to_text(s[: lim.max_text * 4])
        s = s[: lim.max_text - kept]
        kept += len(s)
        texts.append(s)
    f.parts = parts
    f.text = "\n".join(texts)[: lim.max_text]
    urls = list(dict.fromkeys(u.rstrip(".,;:!?") for u in URL_RE.findall(f.text) + [
        h for h in hrefs if h.lower().startswith(("http://", "https://"))]))
    f.urls = [u[:500] for u in urls[: lim.max_items]]
    doms = []
    for u in f.urls:
        host = re.sub(r"(?i)^(?:https?://)?", "", u).split("/", 1)[0].split("?", 1)[0].split("@")[-1]
        doms.append(registered_domain(host.rsplit(":", 1)[0]))
    f.url_domains = [d for d in dict.fromkeys(doms) if d]
    f.emails = list(dict.fromkeys(e.lower() for e in EMAIL_RE.findall(f.text)))[: lim.max_items]
    f.phones = list(dict.fromkeys(re.sub(r"[^\d+]", "", p) for p in PHONE_RE.findall(URL_RE.sub(" ", f.text))
                                  if 8 <= sum(c.isdigit() for c in p) <= 15))[: lim.max_items]
    f.language = language_of(f.subject + "\n" + f.text)
    f.layout = mask(f.subject + "\n" + f.text, recipient_names(list(rcpts)))[: lim.max_text]
    f.layout_hash = hashlib.sha256(f.layout.encode()).hexdigest()[:16]
    f.tlsh = tlsh_of(f.layout)
    return f


def tlsh_of(text: str) -> str:
    """The layout's TLSH; '' when too short, or when py-tlsh (the `tlsh` extra: it builds from
    source, so it needs a C++ compiler) is not installed. Campaigns never depend on it."""
    try:
        import tlsh
    except ImportError:
        return ""
    h = tlsh.hash(text.encode("utf-8", "replace"))
    return "" if h in ("", "TNULL") else h


def _decoded_header(v: str, defects: dict[str, int]) -> str:
    if "=?" not in v:
        return v
    try:
        out = []
        for chunk, cs in email.header.decode_header(v):
            out.append(_text_of(chunk, cs, defects) if isinstance(chunk, bytes) else chunk)
        return "".join(out)
    except Exception:  # noqa: BLE001 - a broken encoded-word
        _count(defects, "bad_header")
        return v
