"""Syslog, RFC 5424, over UDP (RFC 5426), TCP (octet counting, RFC 6587) or TLS (RFC 5425).

One message per event::

    <PRI>1 TIMESTAMP HOSTNAME spampots - MSGID [spampots@32473 event="…" session="…" …] BOM{json}

HOSTNAME is the sensor id, MSGID the event's short name (``smtp.message``), the structured
data the common fields and the event's other scalar fields, and MSG the event's JSON line
as the store holds it. Parameter values are escaped per RFC 5424 6.3.3 (``"``, ``\\`` and
``]``) and cut to ``max_value`` bytes; everything that comes from an abuser is data in a
value, never syntax. 32473 is the enterprise number RFC 5612 reserves for examples:
spampots has no number of its own.

A batch is taken when the peer's TCP acknowledged every byte (the send queue is empty):
syslog has no application acknowledgement, so a receiver killed between its kernel taking
the bytes and writing them can still lose them (RELP would close that gap). UDP is lossy
by nature: nothing tells the sender what was dropped.
"""

from __future__ import annotations

import fcntl
import select
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Sequence

from ..events import COMMON_FIELDS, Event, name_of
from ..store.catalog import Line
from . import SocketOutput

SD_ID = "spampots@32473"
_SIOCOUTQ = 0x5411  # Linux: bytes in the send queue not yet acknowledged by the peer
FACILITIES = {name: i for i, name in enumerate(
    ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
     "ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3", "local4", "local5",
     "local6", "local7"))}
_SEVERITY = 6  # informational
_ACK_WAIT_S = 10.0


def escape(value: str, limit: int) -> str:
    """An RFC 5424 PARAM-VALUE: cut to ``limit`` UTF-8 bytes (on a character), then escape."""
    raw = value.encode("utf-8", "backslashreplace")
    if len(raw) > limit:
        value = raw[:limit].decode("utf-8", "ignore")
    else:
        value = raw.decode("utf-8")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(s: str, limit: int) -> str:
    """HOSTNAME / APP-NAME / MSGID: printable US-ASCII without spaces, or the nil value."""
    out = "".join(c for c in s if 33 <= ord(c) <= 126)[:limit]
    return out or "-"


def format_message(ev: Event, line: bytes, facility: int, app_name: str, max_value: int) -> bytes:
    """One RFC 5424 message (without framing)."""
    params = []
    seen = set()
    for name in ("event",) + COMMON_FIELDS + ev.__struct_fields__:
        if name in seen or name == "v":
            continue
        seen.add(name)
        value = name_of(ev) if name == "event" else getattr(ev, name)
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif not isinstance(value, str) or value == "":
            continue  # lists and tables are in the JSON only
        params.append(f'{name}="{escape(value, max_value)}"')
    head = (f"<{facility * 8 + _SEVERITY}>1 {ev.ts or '-'} {_printable(ev.sensor, 255)} "
            f"{_printable(app_name, 48)} - {_printable(name_of(ev).removeprefix('spampots.'), 32)} "
            f"[{SD_ID} {' '.join(params)}] ")
    return head.encode("utf-8") + b"\xef\xbb\xbf" + line


class SyslogOutput(SocketOutput):
    def __init__(self, cfg, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg, data_dir)
        self.facility = FACILITIES[cfg.facility]

    def start(self) -> None:
        cfg = self.cfg
        if cfg.transport == "udp":
            family = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_DGRAM)[0][0]
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.connect((cfg.host, cfg.port))
            return
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.timeout_s)
        if cfg.transport == "tls":
            ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
            try:
                sock = ctx.wrap_socket(sock, server_hostname=cfg.server_name or cfg.host)
            except BaseException:
                sock.close()
                raise
        self._sock = sock

    def write(self, batch: Sequence[tuple[Line, Event]]) -> None:
        assert self._sock is not None
        cfg = self.cfg
        msgs = [format_message(ev, ln.data, self.facility, cfg.app_name, cfg.max_value) for ln, ev in batch]
        if cfg.transport == "udp":
            for m in msgs:
                self._sock.send(m[: cfg.max_datagram])
            return
        self._sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in msgs))
        self._wait_acked()

    def _wait_acked(self) -> None:
        """Until the peer's TCP acknowledged all we sent; raise if it closed or never does."""
        raw = self._sock.fileno()  # type: ignore[union-attr]
        deadline = time.monotonic() + _ACK_WAIT_S
        poll = select.poll()
        poll.register(raw, select.POLLIN | select.POLLERR | select.POLLHUP)
        while True:
            left = struct.unpack("i", fcntl.ioctl(raw, _SIOCOUTQ, b"\0\0\0\0"))[0]
            if left == 0:
                break
            if poll.poll(5):  # a reset or a close: the queue would never drain
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver did not take {left} bytes within {_ACK_WAIT_S:g} s")
        try:  # a receiver that closed (killed, restarted) shows as EOF or a reset here
            self._sock.setblocking(False)  # type: ignore[union-attr]
            got = self._sock.recv(1)  # type: ignore[union-attr]
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        finally:
            if self._sock is not None:
                self._sock.setblocking(True)
                self._sock.settimeout(self.cfg.timeout_s)
        if not got:
            raise ConnectionError("receiver closed the connection")
        if left:
            raise ConnectionError(f"receiver went away with {left} bytes not taken")


PLUGIN = SyslogOutput
