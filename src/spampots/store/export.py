"""Export stored messages as .eml files or an mboxrd mailbox, byte for byte.

mboxrd: a line of the body matching ``^>*From `` gets one more ``>``; the
reader removes exactly one, so quoting is reversible. Each message is written
as ``From_ line`` + quoted body + ``\\n``, and the reader strips exactly that
one ``\\n``: a body keeps its own line endings (CRLF from SMTP stays CRLF) and
a body without a final newline comes back without one. Bodies ending in a
newline (every SMTP DATA) therefore get the customary blank line before the
next ``From `` line.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import time
from pathlib import Path
from typing import Iterable, Literal, Mapping, Optional, Union

from ..events import SmtpMessage
from .messages import CorruptRecord, MessageStore
from .segments import fsync_dir

log = logging.getLogger("spampots.store")

Format = Literal["mbox", "eml"]
MBOX_NAME = "messages.mbox"
_QUOTE = re.compile(rb"^(>*From )", re.M)
_UNQUOTE = re.compile(rb"^>(>*From )", re.M)
_FROM_LINE = re.compile(rb"^From ", re.M)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,200}$")
_UNSAFE = re.compile(r"[^\x21-\x7e]")


def mbox_quote(body: bytes) -> bytes:
    return _QUOTE.sub(rb">\1", body)


def mbox_unquote(body: bytes) -> bytes:
    return _UNQUOTE.sub(rb"\1", body)


def from_line(event: Optional[SmtpMessage] = None) -> bytes:
    """``From <envelope sender> <asctime>``; MAILER-DAEMON and now when unknown.

    The sender is attacker-supplied: anything outside printable ASCII (spaces,
    newlines) is dropped so it cannot break the mailbox.
    """
    sender = _UNSAFE.sub("", event.mail_from)[:256] if event is not None else ""
    when: Optional[_dt.datetime] = None
    if event is not None and event.ts:
        try:
            when = _dt.datetime.fromisoformat(event.ts.replace("Z", "+00:00"))
        except ValueError:
            when = None
    if when is None:
        when = _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is not None:
        when = when.astimezone(_dt.timezone.utc)
    stamp = time.asctime(when.timetuple())
    return f"From {sender or 'MAILER-DAEMON'} {stamp}\n".encode("ascii")


def _mbox_entry(body: bytes, event: Optional[SmtpMessage]) -> bytes:
    return from_line(event) + mbox_quote(body) + b"\n"


def read_mbox(path: Union[str, Path]) -> list[bytes]:
    """The message bodies of an mboxrd file written by this module, exactly."""
    data = Path(path).read_bytes()
    starts = [m.start() for m in _FROM_LINE.finditer(data)] + [len(data)]
    out: list[bytes] = []
    for start, end in zip(starts, starts[1:]):
        nl = data.find(b"\n", start, end)
        content = data[nl + 1:end] if nl >= 0 else b""
        if content.endswith(b"\n"):
            content = content[:-1]
        out.append(mbox_unquote(content))
    return out


def write_atomic(path: Path, chunks: Iterable[bytes], *, durable: bool = False) -> None:
    """Replace ``path`` with the chunks: a reader (or a crash) sees the old file or the new one.
    ``durable``: fsync the file and the rename too (feeds others pull); exports need not pay it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def _check_fmt(fmt: str) -> None:
    if fmt not in ("mbox", "eml"):
        raise ValueError(f"export format must be 'mbox' or 'eml', not {fmt!r}")


def export_messages(
    store: MessageStore,
    shas: Iterable[str],
    fmt: Format,
    out_dir: Union[str, Path],
    *,
    events: Optional[Mapping[str, SmtpMessage]] = None,
    damaged: Optional[list[str]] = None,
) -> int:
    """Write the bodies of ``shas``; returns how many were exported.

    eml: ``<sha256>.eml`` each. mbox: one ``messages.mbox`` (replaced as a
    whole), with the envelope sender and time of ``events[sha]`` when given.
    Unknown shas are logged and skipped; damaged ones (CRC or SHA-256 wrong) are
    skipped and added to ``damaged`` when given (the caller reports them in one
    line), else logged.
    """
    _check_fmt(fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = events or {}
    count = 0

    def bodies() -> Iterable[tuple[str, bytes]]:
        nonlocal count
        for raw_sha in shas:
            sha = raw_sha.strip().lower()
            if not _SHA_RE.match(sha):
                log.warning("export: %r is not a sha256, skipped", raw_sha)
                continue
            try:
                body = store.get(sha)
            except KeyError:
                log.warning("export: %s not in the store, skipped", sha)
                continue
            except CorruptRecord as e:
                if damaged is None:
                    log.error("export: %s skipped: %s", sha, e)
                else:
                    damaged.append(sha)
                continue
            count += 1
            yield sha, body

    if fmt == "eml":
        for sha, body in bodies():
            write_atomic(out / f"{sha}.eml", [body])
    else:
        write_atomic(out / MBOX_NAME, (_mbox_entry(body, events.get(sha)) for sha, body in bodies()))
    return count


def export_raw(body: bytes, fmt: Format, out_dir: Union[str, Path], name: str) -> Path:
    """Export bytes that did not come from the store (e.g. stdin) as ``<name>.eml|.mbox``."""
    _check_fmt(fmt)
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid export name {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.{fmt}"
    write_atomic(path, [body if fmt == "eml" else _mbox_entry(body, None)])
    return path
