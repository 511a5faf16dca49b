"""hpfeeds (the honeynet feed protocol, the ``hpfeeds`` 3.x package): each event's JSON line,
as the store holds it, published on one channel with the sensor's ident and secret.

hpfeeds has no acknowledgement. With ``confirm`` (the default) the output subscribes to its
own channel on the same connection and takes a batch only once the broker sent every event
of it back: the broker fans a publish out to its subscribers in the order it read them, so
our copy back means the broker handled it. A subscriber that is not connected at that moment
still misses it: the broker keeps nothing. Without ``confirm``, a batch is taken once sent.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Sequence

from ..events import Event
from ..store.catalog import Line
from . import SocketOutput, need_extra

log = logging.getLogger("spampots.outputs")
REQUIRES = "hpfeeds.protocol"  # spampots[outputs]


class HpfeedsOutput(SocketOutput):
    def __init__(self, cfg: Any, data_dir: Path) -> None:
        super().__init__(cfg, data_dir)
        self.proto = need_extra(REQUIRES)
        self.secret = cfg.secret or os.environ.get("SPAMPOTS_HPFEEDS_SECRET", "")
        self.too_big = 0  # lines over the protocol's message limit, skipped
        self._unpacker: Any = None

    def start(self) -> None:
        cfg, p = self.cfg, self.proto
        self._sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.timeout_s)
        self._unpacker = p.Unpacker()
        op, data = self._next_message(time.monotonic() + cfg.timeout_s)
        if op != p.OP_INFO:
            raise ConnectionError(f"broker did not start with INFO (op {op})")
        _name, rand = p.readinfo(data)
        msg = p.msgauth(rand, cfg.ident, self.secret)
        if cfg.confirm:
            msg += p.msgsubscribe(cfg.ident, cfg.channel)
        self._sock.sendall(msg)

    def write(self, batch: Sequence[tuple[Line, Event]]) -> None:
        assert self._sock is not None
        cfg, p = self.cfg, self.proto
        limit = p.MAXBUF - 512  # room for the header, ident and channel
        payloads = [ln.data for ln, _ in batch if len(ln.data) <= limit]
        if len(payloads) < len(batch):
            self.too_big += len(batch) - len(payloads)
            log.warning("output %s: %d event(s) over hpfeeds' %d-byte limit skipped", cfg.name or cfg.kind,
                        len(batch) - len(payloads), limit)
        self._sock.sendall(b"".join(p.msgpublish(cfg.ident, cfg.channel, d) for d in payloads))
        if cfg.confirm:
            self._confirm(len(payloads))

    def _confirm(self, n: int) -> None:
        """Until the broker sent our ``n`` publishes back."""
        p = self.proto
        deadline = time.monotonic() + self.cfg.timeout_s
        while n:
            op, data = self._next_message(deadline)
            if op == p.OP_PUBLISH:
                ident, chan, _ = p.readpublish(data)
                n -= ident == self.cfg.ident and chan == self.cfg.channel
            elif op == p.OP_ERROR:
                raise ConnectionError(f"broker: {p.readerror(data)[:200]}")

    def _next_message(self, deadline: float) -> tuple[int, bytes]:
        """The next whole message from the broker; raises on close, error or timeout."""
        assert self._sock is not None
        while not self._unpacker.ready():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("broker did not answer")
            self._sock.settimeout(left)
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("broker closed the connection")
            self._unpacker.feed(data)
        return self._unpacker.pop()


PLUGIN = HpfeedsOutput
