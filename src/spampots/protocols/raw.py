"""Keep what a client sends when we cannot tell what it speaks.

Inside a tunnel (e.g. to port 6667 or 22) the far end is someone we do not
play: we keep the first ``limits.payload_keep`` bytes, count the rest, answer
nothing and leave closing to the glue's idle timer (the client may still be
waiting for a server that speaks first). One :class:`TunnelPayload` is
emitted per handler, on ``eof()`` or an earlier ``flush()``.

On our own listener (depth 0) unrecognised bytes are a protocol error: they
are recorded and the connection is closed at once, as a real proxy would.
"""

from __future__ import annotations

import base64

from ..events import TunnelPayload
from .base import Action, Close, Context, Handler, error_event


class RawCapture(Handler):
    """Counts and keeps the head of an unknown byte stream."""

    protocol: str = "raw"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._kept = bytearray()
        self._size = 0
        self._flushed = False

    def start(self) -> list[Action]:
        return []

    def receive(self, data: bytes) -> list[Action]:
        if self._flushed:
            return []
        self._size += len(data)
        room = self.ctx.limits.payload_keep - len(self._kept)
        if room > 0:
            self._kept += data[:room]
        if self.ctx.depth == 0:
            error = error_event("raw.unknown_protocol", f"{len(data)} bytes of no known protocol", data)
            return [error, *self.flush(), Close("protocol")]
        return []

    def eof(self) -> list[Action]:
        return self.flush()

    def flush(self) -> list[Action]:
        """The payload event, once; later calls (and data) are ignored."""
        if self._flushed:
            return []
        self._flushed = True
        ctx = self.ctx
        return [TunnelPayload(
            target_host=ctx.target_host or "",
            target_port=ctx.target_port or ctx.listener_port,
            size=self._size,
            data_b64=base64.b64encode(bytes(self._kept)).decode("ascii"),
        )]
