"""The receive buffer the line-based protocols (SMTP, HTTP) share, in the style of h11's
``_receivebuffer.py``: bytes received and not yet consumed, and the one line splitter.

It is a ``bytearray`` so the bulk scanners (SMTP's DATA, HTTP's bodies) keep working on it
directly; they consume with :meth:`drop` (never ``del``), so the remembered scan position,
which keeps a slow sender's partial line from being searched again on every read (quadratic
otherwise), stays true.
"""

from __future__ import annotations

from typing import NamedTuple, Union

_HEAD = 256  # bytes of an overlong line kept for its event


class LineTooLong(NamedTuple):
    observed: int  # bytes of the line seen so far (the whole line when it ended)
    head: bytes  # its first bytes, for the record


class ReceiveBuffer(bytearray):
    __slots__ = ("_scan", "skipping")

    def __init__(self) -> None:
        super().__init__()
        self._scan = 0  # this many leading bytes are known to hold no LF
        # The rest of an overlong line is being dropped up to its LF. Read-only outside; a
        # plain attribute, not a property: SMTP's fast path reads it for every command.
        self.skipping = False

    def drop(self, n: int) -> None:
        """Consume the first n bytes."""
        del self[:n]
        self._scan = max(0, self._scan - n)

    def clear(self) -> None:
        super().clear()
        self._scan = 0

    def next_line(self, limit: int, *, skip_overlong: bool = True) -> Union[bytes, LineTooLong, None]:
        """The next line without its LF (and a CR before it), None for "need more bytes", or
        LineTooLong for a line of more than `limit` bytes.

        A line is too long as soon as more than limit + 1 bytes (the +1: a CR whose LF is yet
        to come) arrive without an LF. Then, with `skip_overlong`, the bytes are dropped and so
        is the rest of that line when it comes; without it they stay (the caller ends the
        session and may record them).
        """
        while True:
            j = self.find(b"\n", self._scan)
            if j < 0:
                if self.skipping:
                    self.clear()
                elif len(self) > limit + 1:
                    overlong = LineTooLong(len(self), bytes(self[:_HEAD]))
                    if skip_overlong:
                        self.skipping = True
                        self.clear()
                    return overlong
                else:
                    self._scan = len(self)
                return None
            line = bytes(self[:j])
            del self[: j + 1]
            self._scan = 0
            if self.skipping:
                self.skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                return LineTooLong(len(line), line[:_HEAD])
            return line
