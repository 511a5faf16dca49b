"""The one reader of the segment log: what is on disk, in what order, and where a reader is.

Every reader of events goes through here (reports and the lake, ``spampots events``, the
shipper, the collector's recovery, the outputs), so there is one answer to each question:

* **Which file of a segment.** A segment is named ``<day>/<stem>`` (``stem`` = ``x.jsonl``,
  the file name without ``.zst.open`` or ``.zst``): it keeps its identity when its writer
  compresses it. When both the open file (``x.jsonl.zst.open``, or an older version's
  ``x.jsonl``) and ``x.jsonl.zst`` exist, the ``.zst`` is complete (it got its final name
  after its fsync) and is the one read; the open file is about to be unlinked.
* **Write order.** :func:`segment_key`: day, opening second, writer pid, then the writer's
  sequence number as a number (``-9`` before ``-10``), then the sensor.
* **Where a reader is.** A :class:`Cursor` (saved atomically, survives restarts) holds the
  byte offset (into the uncompressed lines, the same in the open and the closed file)
  reached in each segment being read, and which
  segments are done: every segment of a day before ``since_day``, and those in ``done``.
  A done-set and not just "everything before the cursor": names do not sort by time in
  every case (a sensor restarted within a second gets an unrelated pid), so an ordering
  alone could skip a segment for good. Order only decides what is read *first*.
* **Following.** :class:`Reader` reads from a cursor and then follows the log like
  ``tail -F``: frames appended to an open segment, new segments, and the compression of an
  open segment into its ``.zst`` while it is being read (the open descriptor stays valid).
  Each sensor's segments are read in order, the sensors side by side, so a collector's
  store (one open segment per remote sensor) is followed as a whole.
* **Damage** is checked and counted in a :class:`~.segments.ReadStats`, never raised, the
  same way for a pass and for a follow (``iter_file_lines``' checks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, Union

import msgspec
import zstandard

from ..events import Event, decode
from .segments import (
    EVENTS_DIR, OPEN_SUFFIX, SEGMENT_RE, DayLike, FrameReader, ReadStats, _CheckedZst, _day, _day_dirs, _Truncated,
    iter_file_lines, segment_stem, try_lock,
)

_CHUNK = 1 << 20

# -- names and order -----------------------------------------------------------------------------


def segment_id(path: Path) -> str:
    """``<day>/<stem>`` of a segment file (.jsonl.zst.open, .jsonl or .jsonl.zst)."""
    return f"{path.parent.name}/{segment_stem(path.name)}"


def segment_key(seg: str) -> tuple:
    """Write order of ``<day>/<stem>`` (or of a bare file name, within one day)."""
    day, _, stem = seg.rpartition("/")
    m = SEGMENT_RE.match(stem)
    if m is None:
        return (day, "", 0, 0, stem)
    return (day, m["opened"], int(m["pid"]), int(m["seq"]), m["sensor"])


def segment_writer(seg: str) -> str:
    """Sensor and writing process of a segment: the segments of one writer follow each other,
    while a sensor's worker processes each write their own at the same time."""
    m = SEGMENT_RE.match(seg.rpartition("/")[2])
    return f"{m['sensor']}/{m['pid']}" if m is not None else ""


def segment_files(data_dir: Union[str, Path], seg: str) -> tuple[Path, Path]:
    """(open file, ``.jsonl.zst``) paths of segment ``seg``; either may not exist. The open
    file is ``x.jsonl.zst.open``, or ``x.jsonl`` when an older version's is what is there."""
    day, _, stem = seg.partition("/")
    jsonl = Path(data_dir) / EVENTS_DIR / day / stem
    framed = jsonl.with_name(stem + OPEN_SUFFIX)
    return framed if framed.exists() or not jsonl.exists() else jsonl, jsonl.with_name(stem + ".zst")


def iter_segment_files(
    data_dir: Union[str, Path],
    *,
    since_day: DayLike = None,
    until_day: DayLike = None,
    sensor: Optional[str] = None,
    stats: Optional[ReadStats] = None,
) -> list[Path]:
    """Segments (open .jsonl.zst.open or .jsonl, and closed .jsonl.zst), days inclusive, in
    write order.

    Of twins ``x.jsonl[.zst.open]`` and ``x.jsonl.zst`` only the complete ``.zst`` is listed.
    A ``*.jsonl[.zst[.open]]`` whose name is not a segment's is not ours: it is left out, and
    counted in ``stats.ignored``.
    """
    root = Path(data_dir) / EVENTS_DIR
    out: list[Path] = []
    for day in _day_dirs(root, _day(since_day), _day(until_day)):
        try:
            names = {e.name for e in os.scandir(day) if not e.name.startswith(".")}
        except FileNotFoundError:  # removed meanwhile (retention)
            continue
        for name in sorted(names, key=lambda n: segment_key(segment_stem(n))):
            m = SEGMENT_RE.match(name)
            if m is None:
                if stats is not None and name.endswith((".jsonl", ".jsonl.zst", ".jsonl" + OPEN_SUFFIX)):
                    stats.ignored += 1
                    stats.note(day / name)
                continue
            if sensor is not None and m["sensor"] != sensor:
                continue
            if not m["zst"] and segment_stem(name) + ".zst" in names:
                continue
            out.append(day / name)
    return out


def complete_length(data_dir: Union[str, Path], seg: str) -> Optional[int]:
    """Bytes of lines of segment ``seg`` up to its last complete frame or newline (what
    recovery keeps); None while a writer holds it (it is still growing); 0 if it is gone."""
    path, zst = segment_files(data_dir, seg)
    if zst.exists():
        return _content_size(zst)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return _content_size(zst) if zst.exists() else 0  # compressed meanwhile
    try:
        if not try_lock(fd):
            return None
        if path.name.endswith(OPEN_SUFFIX):
            return FrameReader(fd).content_length()
        data = os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
    return data.rfind(b"\n") + 1


def bytes_left(path: Path, offset: int) -> int:
    """File bytes of open segment ``path`` after line offset ``offset`` (what a reader at
    ``offset`` has yet to read, as on disk). Raises FileNotFoundError if it is gone."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not path.name.endswith(OPEN_SUFFIX):
            return size - offset
        frames = FrameReader(f.fileno())
        frames.skip(offset)
        return size - frames.pos


def _content_size(path: Path) -> int:
    with open(path, "rb") as f:
        size = zstandard.get_frame_parameters(f.read(18)).content_size
    if size in (0, zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z:
            size = 0
            while chunk := z.read(_CHUNK):
                size += len(chunk)
    return size


# -- one pass ------------------------------------------------------------------------------------


def iter_file_events(path: Path, stats: ReadStats) -> Iterator[tuple[bytes, Event]]:
    """(line, event) for every valid event line of one segment; the rest counted as damage."""
    for line in iter_file_lines(path, stats):
        ev = decode_counted(line, stats, path)
        if ev is not None:
            yield line, ev


def decode_counted(line: bytes, stats: ReadStats, where: Union[str, Path]) -> Optional[Event]:
    """The event of one line, or None (counted in ``stats.undecodable``)."""
    try:
        ev = decode(line)
    except (msgspec.DecodeError, ValueError):
        stats.undecodable += 1
        stats.note(where)
        return None
    stats.events += 1
    return ev


def iter_event_lines(
    data_dir: Union[str, Path],
    *,
    since_day: DayLike = None,
    until_day: DayLike = None,
    sensor: Optional[str] = None,
    stats: Optional[ReadStats] = None,
) -> Iterator[bytes]:
    """Every complete line (without its newline), file by file, streaming; never raises for
    what it finds on disk (see :class:`ReadStats`)."""
    st = stats if stats is not None else ReadStats()
    for path in iter_segment_files(data_dir, since_day=since_day, until_day=until_day, sensor=sensor, stats=st):
        yield from iter_file_lines(path, st)


def iter_events(
    data_dir: Union[str, Path],
    *,
    since_day: DayLike = None,
    until_day: DayLike = None,
    sensor: Optional[str] = None,
    stats: Optional[ReadStats] = None,
) -> Iterator[Event]:
    """Decoded events; undecodable lines are skipped and counted in ``stats.undecodable``."""
    st = stats if stats is not None else ReadStats()
    for path in iter_segment_files(data_dir, since_day=since_day, until_day=until_day, sensor=sensor, stats=st):
        for _, ev in iter_file_events(path, st):
            yield ev


# -- durable cursors -----------------------------------------------------------------------------


class Cursor(msgspec.Struct, kw_only=True):
    segment: str = ""  # "<day>/<stem>" read last; "" = none right now
    offset: int = 0  # bytes of that segment already taken
    since_day: str = ""  # every segment of an earlier day is done
    done: list[str] = []  # done segments of since_day and later
    at: dict[str, int] = {}  # other segments partly taken (several sensors read side by side)

    def position(self, seg: str) -> int:
        return self.offset if seg == self.segment else self.at.get(seg, 0)


def pending_segments(data_dir: Path, sensor: Optional[str], cur: Cursor) -> list[str]:
    """Segments (of ``sensor``, or all) not yet done, in write order."""
    done = set(cur.done)
    files = iter_segment_files(data_dir, sensor=sensor, since_day=cur.since_day or None)
    return sorted({segment_id(p) for p in files} - done, key=segment_key)


def mark_done(cur: Cursor, seg: str, pending: list[str]) -> Cursor:
    """The cursor after ``seg`` is fully taken; ``pending`` is what remains to read."""
    done = set(cur.done) | {seg}
    since = min((p.partition("/")[0] for p in pending if p != seg), default=seg.partition("/")[0])
    since = max(since, cur.since_day)
    at = {s: o for s, o in cur.at.items() if s != seg}
    segment, offset = (cur.segment, cur.offset) if cur.segment != seg else ("", 0)
    return Cursor(segment=segment, offset=offset, since_day=since, at=at,
                  done=sorted((d for d in done if d.partition("/")[0] >= since), key=segment_key))


def advance(cur: Cursor, seg: str, offset: int) -> Cursor:
    """The cursor after the lines of ``seg`` up to ``offset`` were taken."""
    at = dict(cur.at)
    if cur.segment and cur.segment != seg:
        at[cur.segment] = cur.offset
    at.pop(seg, None)
    return msgspec.structs.replace(cur, segment=seg, offset=offset, at=at)


def is_acked(cur: Cursor, seg: str) -> bool:
    """Whether all of segment ``seg`` was taken (what retention may delete when shipping is on)."""
    return seg.partition("/")[0] < cur.since_day or seg in cur.done


def acked_checker(cursor_path: Path, sensor: str) -> Callable[[Path], bool]:
    """For retention: a segment file of ``sensor`` fully taken per the cursor on disk now
    (none yet: nothing is). Other sensors' segments: never."""
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
        raise RuntimeError(f"cursor {path} is unreadable ({e}); fix or delete it "
                           "(deleting reads everything again from the start)") from None


def save_cursor(path: Path, cur: Cursor) -> None:
    """Atomically: temp file, fsync, rename. No directory fsync: a cursor lost with a power
    cut only means reading again (the shipper's receiver drops duplicates by id)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, msgspec.json.encode(cur))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- following -----------------------------------------------------------------------------------


class SegmentTail:
    """Complete lines of one segment from a byte offset on, following it while it grows.

    An open segment is read through its file descriptor, which stays valid when the writer
    compresses it and unlinks it; of a framed one (``.zst.open``) only complete frames are
    read, so a frame being written is waited for. The segment is *finished* once its
    ``.zst`` exists (the writer wrote its last frame before compressing) and we have read to
    EOF. A ``.zst`` is checked like every reader checks it (whole frame); damage ends the
    segment and is counted in ``stats``.
    """

    def __init__(self, data_dir: Path, seg: str, offset: int, stats: Optional[ReadStats] = None) -> None:
        self.seg = seg
        self.offset = offset  # of the first byte not yet returned
        self.stats = stats if stats is not None else ReadStats()
        self._path, self._zst = segment_files(data_dir, seg)
        self._buf = bytearray()
        self._file: Optional[BinaryIO] = None  # the file under the reader
        self._f: Optional[Any] = None  # what reads lines from it: the file, its frames, a .zst decoder
        self._frames: Optional[FrameReader] = None
        self._skip = 0  # bytes of lines still to pass over to reach ``offset``
        self._bad = 0  # damaged frames counted so far
        self._compressed = False  # reading the closed .zst
        self._sealed = False  # no more bytes will be appended
        self._eof = False
        self.missing = False
        self._open()

    def _open(self) -> None:
        try:
            f = open(self._path, "rb")
        except FileNotFoundError:
            try:
                f = open(self._zst, "rb")
            except FileNotFoundError:
                self.missing = True  # pruned or deleted by hand: nothing to read
                self._sealed = self._eof = True
                return
            self._file, self._sealed, self._compressed = f, True, True
            try:
                self._f, self._skip = _CheckedZst(f), self.offset  # no random access into one frame
            except (zstandard.ZstdError, OSError) as e:
                self._damaged(e)
                return
        else:
            self._file = f
            if self._path.name.endswith(OPEN_SUFFIX):
                self._f = self._frames = FrameReader(f.fileno())
                rest, self._skip = self._frames.skip(self.offset)  # frames before it: not decompressed
                self._buf += rest
                self._count_bad()
            else:
                f.seek(self.offset)
                self._f = f
        self.stats.files += 1

    def _damaged(self, e: Exception) -> None:
        self.stats.errors += 1
        self.stats.truncated += isinstance(e, _Truncated)
        self.stats.note(self._zst)
        self._eof = self._sealed = True
        self._buf.clear()

    def _count_bad(self) -> None:
        if self._frames is not None and self._frames.bad > self._bad:
            self.stats.bad_frames += self._frames.bad - self._bad
            self._bad = self._frames.bad
            self.stats.note(self._path)

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
                self.stats.lines += 1
                out.append((self.offset, line))
            self.offset += nl + 1
        return out

    def _fill(self) -> bool:
        if self._f is None or self._eof:
            return False
        try:
            chunk = self._f.read(_CHUNK)
        except (zstandard.ZstdError, OSError) as e:
            self._damaged(e)
            return False
        self._count_bad()
        if chunk:
            n = min(self._skip, len(chunk))  # still on the way to ``offset``
            self._skip -= n
            self._buf += chunk[n:] if n else chunk
            return True
        if self._sealed:
            self._eof = True
            if self._buf or (self._frames is not None and self._frames.torn):  # a finished segment ends in half a line
                self.stats.torn += 1
                if self._compressed:  # compressed segments hold whole lines only
                    self._damaged(_Truncated("ends in half a line"))
            return False
        if self._zst.exists():  # compressed: the last write is behind us; read once more
            self._sealed = True
            return self._fill()
        return False

    @property
    def finished(self) -> bool:
        """Every complete line was returned and none will follow (bytes after the last
        newline or complete frame of a finished segment are a torn end that recovery drops)."""
        return self._eof

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._f = self._frames = None


class Line(msgspec.Struct, frozen=True, array_like=True):
    seg: str  # "<day>/<stem>"
    offset: int  # of the line's first byte in the segment's uncompressed bytes
    data: bytes  # without its newline


class Reader:
    """Lines of the log from a cursor on, then following it (``tail -F``).

    ``read`` returns the next lines (in write order per writing process) and moves the *read*
    position; ``commit`` makes that position the cursor (and saves it, when the reader has
    a cursor file): call it only once the lines were taken by whoever they are for, so a
    crash or a failed delivery reads them again and nothing is lost. ``rewind`` goes back
    to the last commit. ``sensor`` keeps to one sensor's segments; ``since_day`` starts
    a reader with no saved cursor at that day.
    """

    def __init__(
        self,
        data_dir: Union[str, Path],
        *,
        cursor_path: Optional[Path] = None,
        sensor: Optional[str] = None,
        since_day: DayLike = None,
        stats: Optional[ReadStats] = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.sensor = sensor
        self.cursor_path = cursor_path
        self.stats = stats if stats is not None else ReadStats()
        cur = load_cursor(cursor_path) if cursor_path is not None else Cursor()
        if not cur.since_day and since_day is not None:
            cur = msgspec.structs.replace(cur, since_day=_day(since_day) or "")
        self.cursor = cur  # committed
        self._read = cur  # after the lines returned so far
        self._tails: dict[str, SegmentTail] = {}  # writer (segment_writer) -> the segment being read
        self.finished: list[str] = []  # segments done since the last commit
        self.caught_up = False  # the last read found nothing new

    def read(self, max_lines: int) -> list[Line]:
        """Up to ``max_lines`` lines of one segment; [] when there is nothing new now."""
        for again in (False, True):
            tails = self._current(relist=again)
            for writer, tail in tails:
                got = tail.read(max_lines)
                if got:
                    self._tails[writer] = self._tails.pop(writer)  # the others go first next time
                    self._read = advance(self._read, tail.seg, tail.offset)
                    self.caught_up = False
                    return [Line(tail.seg, off, data) for off, data in got]
                if tail.finished:
                    self._finish(writer, tail)
        self.caught_up = True
        return []

    def _current(self, relist: bool) -> list[tuple[str, SegmentTail]]:
        """The segment being read of each writer (opening the next pending one where none is
        open, or all of them again after ``relist``)."""
        if relist or not self._tails:
            pending = pending_segments(self.data_dir, self.sensor, self._read)
            first: dict[str, str] = {}
            for seg in pending:
                first.setdefault(segment_writer(seg), seg)
            for writer, seg in first.items():
                if writer not in self._tails:
                    self._tails[writer] = SegmentTail(self.data_dir, seg, self._read.position(seg), self.stats)
        return list(self._tails.items())

    def _finish(self, writer: str, tail: SegmentTail) -> None:
        pending = pending_segments(self.data_dir, self.sensor, self._read)
        self._read = mark_done(self._read, tail.seg, pending)
        self.finished.append(tail.seg)
        tail.close()
        del self._tails[writer]

    def commit(self) -> list[str]:
        """Everything returned so far was taken: save it. Returns the segments fully taken
        since the last commit (a shipper may prune them)."""
        self.cursor = self._read
        if self.cursor_path is not None:
            save_cursor(self.cursor_path, self.cursor)
        done, self.finished = self.finished, []
        return done

    def rewind(self) -> None:
        """Forget what was read since the last commit: it is read again."""
        self._close_tails()
        self._read = self.cursor
        self.finished = []

    def _close_tails(self) -> None:
        for tail in self._tails.values():
            tail.close()
        self._tails.clear()

    def close(self) -> None:
        self._close_tails()

    def read_events(self, max_lines: int) -> list[tuple[Line, Event]]:
        """Like :meth:`read`, decoded; undecodable lines are counted in ``stats`` and left out."""
        out = []
        for line in self.read(max_lines):
            ev = decode_counted(line.data, self.stats, line.seg)
            if ev is not None:
                out.append((line, ev))
        return out
