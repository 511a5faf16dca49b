"""Where a shipper is in its local store: the durable cursor and a tail reader.

Segments are named ``<day>/<stem>`` here (``stem`` = the file name without
``.zst``, so a segment keeps its identity when it is compressed). The cursor
holds the segment being shipped and the byte offset (into its uncompressed
lines) up to which the broker acked, plus which segments are done: every
segment of a day before ``since_day``, and those listed in ``done``.

Why a done-set and not just "everything sorted before the cursor": segment names
do not sort by time in every case (``...-4242-10.jsonl`` sorts before
``...-4242-9.jsonl`` when both were opened in the same second, and a sensor
restarted within a second gets an unrelated pid), so an ordering alone could
skip a segment for good. Order only decides what is shipped *first*:
:func:`segment_key` sorts by day, opening time, sequence number (as a number).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import msgspec
import zstandard

from ..store.segments import EVENTS_DIR, SEGMENT_RE, iter_segment_files

_CHUNK = 1 << 20


class Cursor(msgspec.Struct, kw_only=True):
    segment: str = ""  # "<day>/<stem>" being shipped; "" = none right now
    offset: int = 0  # bytes of that segment already acked
    since_day: str = ""  # every segment of an earlier day is shipped
    done: list[str] = []  # shipped segments of since_day and later


def segment_id(path: Path) -> str:
    """``<day>/<stem>`` of a segment file (.jsonl or .jsonl.zst)."""
    name = path.name[:-4] if path.name.endswith(".zst") else path.name
    return f"{path.parent.name}/{name}"


def segment_key(seg: str) -> tuple:
    """Sort key: day, opening time, then the writer's sequence number as a number."""
    day, _, stem = seg.partition("/")
    m = SEGMENT_RE.match(stem)
    if m is None:
        return (day, "", 0, 0, stem)
    return (day, m["opened"], int(m["seq"]), int(m["pid"]), stem)


def pending_segments(data_dir: Path, sensor: str, cur: Cursor) -> list[str]:
    """Segments of ``sensor`` not yet done, in shipping order (the cursor's one included)."""
    done = set(cur.done)
    files = iter_segment_files(data_dir, sensor=sensor, since_day=cur.since_day or None)
    return sorted({segment_id(p) for p in files} - done, key=segment_key)


def mark_done(cur: Cursor, seg: str, pending: list[str]) -> Cursor:
    """The cursor after ``seg`` is fully acked; ``pending`` is what remains to ship."""
    done = set(cur.done) | {seg}
    since = min((p.partition("/")[0] for p in pending if p != seg), default=seg.partition("/")[0])
    since = max(since, cur.since_day)
    return Cursor(segment="", offset=0, since_day=since,
                  done=sorted((d for d in done if d.partition("/")[0] >= since), key=segment_key))


def is_acked(cur: Cursor, seg: str) -> bool:
    """Whether the broker acknowledged all of segment ``seg`` (``<day>/<stem>``): what
    retention may delete when shipping is on."""
    return seg.partition("/")[0] < cur.since_day or seg in cur.done


def acked_checker(cursor_path: Path, sensor: str) -> "Callable[[Path], bool]":
    """For retention: a segment file of ``sensor`` the broker has acknowledged, per the cursor
    on disk now (none yet: nothing is acknowledged). Other sensors' segments: never."""
    cur = load_cursor(cursor_path)

    def acked(path: Path) -> bool:
        m = SEGMENT_RE.match(path.name)
        return m is not None and m["sensor"] == sensor and is_acked(cur, segment_id(path))

    return acked


def load_cursor(path: Path) -> Cursor:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Cursor)
    except FileNotFoundError:
        return Cursor()
    except (msgspec.DecodeError, msgspec.ValidationError, OSError) as e:
        raise RuntimeError(f"shipping cursor {path} is unreadable ({e}); fix or delete it "
                           "(deleting re-ships everything; the collector drops the duplicates)") from None


def save_cursor(path: Path, cur: Cursor) -> None:
    """Atomically: temp file, fsync, rename. No directory fsync: a cursor lost with a
    power cut only means re-shipping, and the collector removes duplicates."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, msgspec.json.encode(cur))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class SegmentTail:
    """Complete lines of one segment from a byte offset on, following it while it grows.

    An open ``.jsonl`` is read through its file descriptor, which stays valid when the
    writer compresses it and unlinks it. The segment is *finished* once its ``.zst``
    exists (the writer wrote its last line before compressing) and we have read to EOF.
    """

    def __init__(self, data_dir: Path, seg: str, offset: int) -> None:
        self.seg = seg
        self.offset = offset  # of the first byte not yet returned
        day, _, stem = seg.partition("/")
        self._jsonl = Path(data_dir) / EVENTS_DIR / day / stem
        self._zst = self._jsonl.with_name(stem + ".zst")
        self._buf = bytearray()
        self._f: Optional[BinaryIO] = None
        self._sealed = False  # no more bytes will be appended
        self._eof = False
        self.missing = False
        self._open()

    def _open(self) -> None:
        try:
            f = open(self._jsonl, "rb")
            f.seek(self.offset)
        except FileNotFoundError:
            try:
                raw = open(self._zst, "rb")
            except FileNotFoundError:
                self.missing = True  # pruned or deleted by hand: nothing to read
                self._sealed = self._eof = True
                return
            f = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[assignment]
            self._sealed = True
            left = self.offset
            while left > 0:  # no random access into a zstd frame: skip what is acked
                got = f.read(min(left, _CHUNK))
                if not got:
                    break
                left -= len(got)
        self._f = f

    def read(self, max_lines: int) -> list[tuple[int, bytes]]:
        """Up to ``max_lines`` (offset, line without newline); blank lines are skipped."""
        out: list[tuple[int, bytes]] = []
        while len(out) < max_lines:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if not self._fill():
                    break
                continue
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.strip():
                out.append((self.offset, line))
            self.offset += nl + 1
        return out

    def _fill(self) -> bool:
        if self._f is None or self._eof:
            return False
        chunk = self._f.read(_CHUNK)
        if chunk:
            self._buf += chunk
            return True
        if self._sealed:
            self._eof = True
            return False
        if self._zst.exists():  # compressed: the last write is behind us; read once more
            self._sealed = True
            return self._fill()
        return False

    @property
    def finished(self) -> bool:
        """Every complete line was returned and none will follow (bytes after the last
        newline of a finished segment are a torn line that recovery drops)."""
        return self._eof

    @property
    def size_left(self) -> int:
        """Bytes on disk not yet returned (approximate for a compressed segment)."""
        try:
            return max(0, self._jsonl.stat().st_size - self.offset)
        except FileNotFoundError:
            try:
                return self._zst.stat().st_size if self.offset == 0 else 0
            except FileNotFoundError:
                return 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
