"""The workers' figures board: each worker's figures, readable by every other worker.

The metrics endpoint and the sensor's stop event tell the sensor's figures, not one
worker's: whichever worker answers reads every worker's latest figures here. One memory
file (``memfd``) made by the supervisor before it forks the workers, one slot per worker;
only worker k writes slot k (about once a second, at each scrape and when it stops), as
an encoded :class:`~spampots.metrics.Figures`.

A slot has two halves: the writer fills the half not in use, then flips the slot's index
to it, each half guarded by a sequence number (odd while written). A reader never waits
on a lock, and a worker killed mid-write leaves its last complete figures readable: its
successor starts from them, so the sensor's counters never go back.
"""

from __future__ import annotations

import os
import struct
from typing import Optional

import msgspec

from ..metrics import Figures
from .shared import shared_memory

HALF = 1 << 20  # bytes per half slot: the figures' labels are bounded (see metrics.MAX_KINDS)
_INDEX = struct.Struct("<Q")  # the half in use (0 or 1)
_HALF_HEAD = struct.Struct("<QI")  # sequence number (odd: being written), payload length
_SLOT = _INDEX.size + 2 * (_HALF_HEAD.size + HALF)
_TRIES = 50

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Figures).decode


class FigureBoard:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.fd, self.mem = shared_memory("spampots-figures", _SLOT * workers)

    def _half(self, k: int, h: int) -> int:
        return _SLOT * k + _INDEX.size + h * (_HALF_HEAD.size + HALF)

    def write(self, k: int, figures: Figures) -> bool:
        """Worker k's figures (False if they do not fit: the previous ones stay)."""
        data = _encode(figures)
        if len(data) > HALF:
            return False
        mem = self.mem
        (cur,) = _INDEX.unpack_from(mem, _SLOT * k)
        h = 1 - (cur & 1)
        at = self._half(k, h)
        seq, _ = _HALF_HEAD.unpack_from(mem, at)
        seq += 1 + (seq & 1)  # odd: being written
        _HALF_HEAD.pack_into(mem, at, seq, len(data))
        mem[at + _HALF_HEAD.size:at + _HALF_HEAD.size + len(data)] = data
        _HALF_HEAD.pack_into(mem, at, seq + 1, len(data))
        _INDEX.pack_into(mem, _SLOT * k, h)
        return True

    def read(self, k: int) -> Optional[Figures]:
        """Worker k's latest complete figures; None before it first wrote any."""
        mem = self.mem
        for _ in range(_TRIES):
            (cur,) = _INDEX.unpack_from(mem, _SLOT * k)
            for h in (cur & 1, 1 - (cur & 1)):  # the half in use; the other if it is being rewritten
                at = self._half(k, h)
                seq, n = _HALF_HEAD.unpack_from(mem, at)
                if seq == 0 or seq & 1 or n > HALF:
                    continue
                data = bytes(mem[at + _HALF_HEAD.size:at + _HALF_HEAD.size + n])
                if _HALF_HEAD.unpack_from(mem, at)[0] != seq:
                    continue
                try:
                    return _decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
            if all(_HALF_HEAD.unpack_from(mem, self._half(k, h))[0] == 0 for h in (0, 1)):
                return None
        return None

    def read_all(self) -> list[Figures]:
        return [f for k in range(self.workers) if (f := self.read(k)) is not None]

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)
