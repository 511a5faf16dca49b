"""The writer's journal: one fdatasync per group commit makes its bodies and events durable.

A batch of messages has to reach two files, the pack (bodies) and the segment (events), and
an ``smtp.message`` event on disk must never name a body that is not. Syncing both costs two
fdatasyncs per batch. Instead the recorder writes one journal record per batch, holding the
batch's pack records and its message event lines, and syncs only the journal before the
``250``; the pack and the segment are written at once but synced together at the plain-event
cadence (a *checkpoint*), after which the journal's records are redundant and it starts over.

Layout: ``messages/journal-<writer>.bin``, one per pack writer (guarded by that writer's pack
lock), a fixed-size file of zeros (128 KiB) written at start, so a record overwrites blocks
that already exist and its data sync carries no metadata (``pwritev`` with ``RWF_DSYNC``:
write and sync in one call; ``pwrite`` and ``fdatasync`` where that is missing); removed at
a clean shutdown.
Records::

    0   8  magic b"SPMJRNL1"
    8   8  sequence number (u64 little-endian), one more than the record before
    16  4  payload length (u32)
    20  4  crc32 of bytes 8..20 and the payload
    24  -  payload: u16 segment name length, u32 lines length, the segment's path relative
           to the data dir, the event lines, then whole pack records (messages.HEADER + frame)

A checkpoint rewinds to offset 0 and zeroes the first header (not synced: if that is lost
the old records are replayed, which changes nothing: see :func:`missing_lines`). Reading starts at 0
and follows the records while each one checks and its sequence number is one more than the
last, so the records of an earlier round further on (lower numbers) and a torn last record
end the chain. Numbers start from the clock (microseconds) when a writer starts, above any
older round's; a record whose write or sync failed is written over by the next one.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator, NamedTuple

from .segments import ReadStats, fdatasync, fsync_dir, iter_file_lines, segment_stem, write_all

log = logging.getLogger("spampots.store")

MAGIC = b"SPMJRNL1"
_HEAD = struct.Struct("<8sQII")  # magic, seq, payload length, crc32
_PAYLOAD = struct.Struct("<HI")  # segment name length, lines length
_RWF_DSYNC = getattr(os, "RWF_DSYNC", None) if hasattr(os, "pwritev") else None
JOURNAL_BYTES = 128 << 10  # about 50 ms of a busy writer's records; a bigger batch syncs pack and segment


class Entry(NamedTuple):
    segment: str  # where the lines were (to be) written, relative to the data dir
    lines: bytes
    records: list[bytes]  # whole pack records


def journal_name(writer: str) -> str:
    return f"journal-{writer}.bin"


def _records(blob: memoryview) -> Iterator[bytes]:
    from .messages import HEADER, HEADER_SIZE

    off = 0
    while off + HEADER_SIZE <= len(blob):
        comp_len = HEADER.unpack_from(blob, off)[3]
        end = off + HEADER_SIZE + comp_len
        yield bytes(blob[off:end])
        off = end


class Journal:
    """One writer's journal file. Not thread-safe: the recorder's writer thread owns it."""

    def __init__(self, messages_dir: Path, writer: str, size: int = JOURNAL_BYTES) -> None:
        self.path = messages_dir / journal_name(writer)
        self.fsyncs = 0
        self.bytes_written = 0
        # Sequence numbers start from the clock (us): a new writer's records number above any
        # older round's, so stale records can never continue its chain.
        self._seq = time.time_ns() // 1000
        self._pos = 0  # where the next record goes; 0: nothing since the last checkpoint
        if not self.path.exists():
            tmp = self.path.with_name(f".{self.path.name}.new")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, bytes(size))
                os.fsync(fd)
            except OSError:  # a full disk: leave no half-made file behind
                tmp.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fsync_dir(messages_dir)
        self._fd = os.open(self.path, os.O_RDWR)
        self._dsync = _RWF_DSYNC is not None
        self.size = os.fstat(self._fd).st_size

    @property
    def pending(self) -> bool:
        """Records written since the last checkpoint."""
        return self._pos > 0

    def read(self) -> list[Entry]:
        """The records of the current round (what a crash may have left unsynced elsewhere)."""
        data = os.pread(self._fd, self.size, 0)
        out: list[Entry] = []
        off, seq = 0, None
        while off + _HEAD.size <= len(data):
            magic, n, length, crc = _HEAD.unpack_from(data, off)
            end = off + _HEAD.size + length
            if magic != MAGIC or end > len(data) or (seq is not None and n != seq + 1):
                break
            if zlib.crc32(data[off + 8:off + 20] + data[off + _HEAD.size:end]) != crc:
                break
            view = memoryview(data)[off + _HEAD.size:end]
            name_len, lines_len = _PAYLOAD.unpack_from(view, 0)
            p = _PAYLOAD.size
            name = bytes(view[p:p + name_len]).decode()
            lines = bytes(view[p + name_len:p + name_len + lines_len])
            out.append(Entry(name, lines, list(_records(view[p + name_len + lines_len:]))))
            off, seq = end, n
        self._seq = max(self._seq, seq or 0)
        return out

    @property
    def nearly_full(self) -> bool:
        """Less than a quarter left: time for a checkpoint, so that the next batch fits."""
        return self.size - self._pos < self.size // 4

    def fits(self, segment: str, lines: bytes, records: list[bytes]) -> bool:
        need = _HEAD.size + _PAYLOAD.size + len(segment.encode()) + len(lines) + sum(map(len, records))
        return self._pos + need <= self.size

    def append(self, segment: str, lines: bytes, records: list[bytes]) -> None:
        """Write one record and fdatasync it (call :meth:`fits` first)."""
        name = segment.encode()
        payload = b"".join([_PAYLOAD.pack(len(name), len(lines)), name, lines, *records])
        seq = self._seq + 1  # taken only once the record is durable: a failed one is written over
        tail = struct.pack("<QI", seq, len(payload))
        rec = MAGIC + tail + struct.pack("<I", zlib.crc32(tail + payload)) + payload
        if self._dsync:  # write and data sync in one call (one GIL hand-off less)
            try:
                n = os.pwritev(self._fd, [rec], self._pos, _RWF_DSYNC)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self._dsync = False  # a kernel or file system without it
            else:
                if n != len(rec):  # within the file this does not happen; be sure anyway
                    raise OSError(errno.EIO, f"journal: short write ({n} of {len(rec)} bytes)")
        if not self._dsync:
            os.pwrite(self._fd, rec, self._pos)  # within the file: one write, no size change
            fdatasync(self._fd)
        self._seq = seq
        self._pos += len(rec)
        self.bytes_written += len(rec)
        self.fsyncs += 1

    def checkpoint(self) -> None:
        """Everything journaled is synced in its pack and segment: start the next round."""
        if self._pos:
            os.pwrite(self._fd, bytes(_HEAD.size), 0)
            self._pos = 0

    def close(self, *, remove: bool = False) -> None:
        """``remove``: after a clean shutdown (everything synced) the file goes; the next start
        writes a fresh one."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if remove:
                self.path.unlink(missing_ok=True)


def missing_lines(data_dir: Path, entries: list[Entry]) -> bytes:
    """The journaled event lines that are not in the segment they were written to.

    A segment that no longer exists at all (retention removed it) counts as having them:
    such a record is from a round long checkpointed whose zeroed header was lost.
    """
    wanted: dict[str, Counter[bytes]] = {}
    for e in entries:
        c = wanted.setdefault(e.segment, Counter())
        c.update(line for line in e.lines.split(b"\n") if line)
    have: dict[str, Counter[bytes]] = {}
    for name, want in wanted.items():
        path = data_dir / name
        if path.exists() or path.with_name(segment_stem(path.name) + ".zst").exists():  # open, or closed since
            have[name] = Counter(line for line in iter_file_lines(path, ReadStats()) if line in want)
    out: list[bytes] = []
    for e in entries:  # in journal order
        found = have.get(e.segment)
        for line in e.lines.split(b"\n"):
            if not line or found is None:
                continue
            if found[line] > 0:
                found[line] -= 1
            else:
                out.append(line + b"\n")
    return b"".join(out)

