"""`spampots notify --send`: submit the reports through the operator's relay, rate-limited, once.

The relay's settings come from a small TOML file (``--relay-config FILE``, table ``[relay]``) and
from ``SPAMPOTS_RELAY_*`` environment variables, which win; never from the command line, where a
password would show in ``ps`` and in shell history. Submission is always port-587 style: STARTTLS
(the certificate checked against the system's CAs or ``cafile``), then AUTH when a username is
set; a relay that offers no STARTTLS gets nothing.

The sent log (JSON lines, one per message accepted by the relay, fsynced before the next is
sent) is the memory across runs: a network is mailed once per period (``--from``/``--to``, else
the days of the first and last use). It is locked for the whole run, so two runs at once cannot
both send.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import smtplib
import ssl
import stat
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .contacts import valid_address

ENV = "SPAMPOTS_RELAY_"
KEYS = {"host": str, "port": int, "username": str, "password": str, "sender": str, "cafile": str,
        "rate": float, "sent_log": str, "timeout": float}


class RelayError(ValueError):
    """Relay settings that cannot be used."""


@dataclass
class Relay:
    host: str = ""
    port: int = 587
    username: str = ""
    password: str = field(default="", repr=False)
    sender: str = ""  # envelope sender (MAIL FROM) and the reports' From: unless --reporter
    cafile: str = ""  # CA bundle for the relay's certificate (default: the system's)
    rate: float = 6.0  # messages per minute at most
    sent_log: str = ""  # default: notify-sent.jsonl beside the config file (or in the working dir)
    timeout: float = 60.0


def load_relay(path: Optional[Path], environ: Mapping[str, str] = os.environ) -> Relay:
    """The relay settings from `path` (optional) and the environment; RelayError says what is wrong."""
    values: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
                mode = os.fstat(f.fileno()).st_mode
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise RelayError(f"{path}: {e}") from None
        table = doc.get("relay")
        if not isinstance(table, dict) or set(doc) - {"relay"}:
            raise RelayError(f"{path}: want one [relay] table")
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise RelayError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
        if table.get("password") and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise RelayError(f"{path} holds a password and others can read it: chmod 600 it, or use "
                             f"{ENV}PASSWORD")
        values.update(table)
        base = Path(path).resolve().parent
    for key in KEYS:
        if ENV + key.upper() in environ:
            values[key] = environ[ENV + key.upper()]
    relay = Relay()
    for key, value in values.items():
        try:
            kind = KEYS[key]
            if kind is str and not isinstance(value, str):
                raise ValueError("want a string")
            setattr(relay, key, kind(value))
        except (TypeError, ValueError) as e:
            raise RelayError(f"relay {key}: {e}") from None
    if not relay.host:
        raise RelayError(f"no relay host: set host in [relay] or {ENV}HOST")
    if not 0 < relay.port < 65536:
        raise RelayError("relay port must be 1-65535")
    if not valid_address(relay.sender):
        raise RelayError(f"relay sender must be a plain address (user@domain), not {relay.sender!r}")
    if not 0 < relay.rate <= 600:
        raise RelayError("relay rate must be > 0 and <= 600 messages per minute")
    if not 0 < relay.timeout <= 600:
        raise RelayError("relay timeout must be > 0 and <= 600 seconds")
    if bool(relay.username) != bool(relay.password):
        raise RelayError("relay username and password go together")
    relay.sent_log = str(base / (relay.sent_log or "notify-sent.jsonl"))
    return relay


class SentLog:
    """What was sent, one JSON line per message; ``(network, from, to)`` is the key."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RelayError(f"another notify --send holds {self.path}") from None
        self.sent: set[tuple[str, str, str]] = set()
        self.damaged = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    r = json.loads(line)
                    self.sent.add((r["network"], r["from"], r["to"]))
                except (ValueError, KeyError, TypeError):
                    self.damaged += 1  # a torn last line from a crash: that message counts as not sent

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self.sent

    def add(self, key: tuple[str, str, str], **extra: Any) -> None:
        line = json.dumps({"network": key[0], "from": key[1], "to": key[2], **extra}, ensure_ascii=True)
        os.write(self._fd, line.encode() + b"\n")
        os.fsync(self._fd)  # on disk before the next message goes: a crash never sends twice
        self.sent.add(key)

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class Outgoing:
    network: str
    period: tuple[str, str]
    recipients: list[str]
    message: bytes
    message_id: str = ""


@dataclass
class Result:
    sent: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the sent log
    failed: list[tuple[str, str]] = field(default_factory=list)


def send_all(items: list[Outgoing], relay: Relay, log: SentLog, *, sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] = lambda s: None) -> Result:
    """Send `items` in order, at most `relay.rate` per minute, each network once per period.
    A message the relay refuses is reported and skipped; a lost connection stops the run."""
    res = Result()
    todo = [i for i in items if (i.network, *i.period) not in log]
    res.skipped = [i.network for i in items if (i.network, *i.period) in log]
    if not todo:
        return res
    gap = 60.0 / relay.rate
    last: Optional[float] = None
    ctx = ssl.create_default_context(cafile=relay.cafile or None)
    with smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout) as smtp:
        smtp.ehlo()
        if not smtp.has_extn("starttls"):
            raise RelayError(f"{relay.host}:{relay.port} offers no STARTTLS: nothing sent")
        smtp.starttls(context=ctx)
        smtp.ehlo()
        if relay.username:
            smtp.login(relay.username, relay.password)
        for item in todo:
            if last is not None and clock() - last < gap:
                sleep(gap - (clock() - last))
            last = clock()
            try:
                smtp.sendmail(relay.sender, item.recipients, item.message)
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as e:
                res.failed.append((item.network, str(e)))
                say(f"{item.network}: refused by the relay: {e}")
                continue
            log.add((item.network, *item.period), recipients=item.recipients, message_id=item.message_id,
                    sent=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            res.sent.append(item.network)
            say(f"{item.network}: sent to {', '.join(item.recipients)}")
    return res
