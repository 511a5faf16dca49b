"""The segment log: events as JSON lines, appended, rotated, compressed.

Layout (see ``docs/store.md``)::

    <data_dir>/events/YYYY-MM-DD/<sensor>-<YYYYmmddTHHMMSS>Z-<pid>-<seq>.jsonl.zst.open  open
    <data_dir>/events/YYYY-MM-DD/<sensor>-<YYYYmmddTHHMMSS>Z-<pid>-<seq>.jsonl.zst       closed
    <data_dir>/events/YYYY-MM-DD/<sensor>-<YYYYmmddTHHMMSS>Z-<pid>-<seq>.jsonl           open, older versions

The open segment is compressed as it is written: each write (one group commit of the
recorder) is one complete zstd frame, compressed with the event dictionary shipped in
the package (small frames compress badly without one). At every write boundary the file
is a valid multi-frame zstd stream. At rotation the frames are recompressed into one
frame without a dictionary (what ``zstd -d`` and DuckDB read). Offsets into a segment
(cursors, the shipper's ids) count bytes of the uncompressed lines in every form.

A writer holds an exclusive ``flock`` on its open segment for as long as it
writes it, so :func:`recover` can tell a live writer's file (locked) from one
left by a dead process (unlocked) without trusting pids, which get reused.
A new segment is created under a hidden temporary name, locked, then renamed,
so an unlocked open segment is never a brand-new file of a live writer.

Readers never take locks: they read complete frames and complete lines only, so the open
segment (possibly ending in half a frame) and a torn last frame after a crash are fine.
"""

from __future__ import annotations

import datetime as _dt
import errno
import functools
import importlib.resources
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Union

import zstandard

try:  # POSIX; elsewhere there is no cross-process protection (documented)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("spampots.store")

EVENTS_DIR = "events"
_SENSOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SEGMENT_RE = re.compile(
    r"^(?P<sensor>.+)-(?P<opened>\d{8}T\d{6})Z-(?P<pid>\d+)-(?P<seq>\d+)\.jsonl"
    r"(?:(?P<open>\.zst\.open)|(?P<zst>\.zst))?$"
)
OPEN_SUFFIX = ".zst.open"  # after the stem "x.jsonl": the open segment, zstd frames
EVENTS_DICT_ID = 0x53500001  # the dictionary shipped as data/events-1.zdict; never changes once shipped
_READ_CHUNK = 1 << 20
_MAGIC = b"\x28\xb5\x2f\xfd"  # of a zstd frame
_BLOCK_MAX = 1 << 17  # zstd's largest block
_FRAME_MAX = 16 << 20  # lines in one frame: a bigger write is cut in several; a header claiming more is damage
_INCOMPLETE = -1
_STALE_TEMP_S = 60.0  # a hidden temp segment older than this belongs to nobody
_seq = itertools.count(1)  # process-wide, so two writers never pick the same name

DayLike = Union[str, _dt.date, None]


# -- small shared helpers (also used by messages.py) ---------------------------------------------


def segment_stem(name: str) -> str:
    """``x.jsonl`` of a segment file name in any of its forms (open, older open, closed)."""
    return name.removesuffix(OPEN_SUFFIX).removesuffix(".zst")


def is_open_name(name: str) -> bool:
    """An open segment's file name (framed, or an older version's plain ``.jsonl``)."""
    return name.endswith((".jsonl", ".jsonl" + OPEN_SUFFIX))


def check_sensor(sensor: str) -> str:
    """Sensor ids end up in file names: keep them to a safe alphabet."""
    if not isinstance(sensor, str) or not _SENSOR_RE.match(sensor):
        raise ValueError(f"invalid sensor id {sensor!r}: use letters, digits, '.', '_', '-'")
    return sensor


def try_lock(fd: int) -> bool:
    """Take an exclusive non-blocking flock on fd; False if someone else holds it."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# Appends change the file size, which fdatasync flushes too; it skips the mtime update.
fdatasync = getattr(os, "fdatasync", os.fsync)


def fsync_dir(path: Path) -> None:
    """Make a create/rename in ``path`` durable (no-op where dirs cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- writing -------------------------------------------------------------------------------------


class SegmentWriter:
    """Appends JSON lines to the current segment of one sensor; rotates and compresses.

    Not thread-safe: one thread (the recorder's writer thread) owns it. Each ``write``
    is one zstd frame that goes straight to the kernel (no user-space buffer), so a
    killed process loses nothing it wrote; ``sync`` makes it survive power loss too.
    """

    def __init__(
        self,
        data_dir: Union[str, Path],
        sensor: str,
        *,
        max_bytes: int = 64 << 20,
        max_age_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        level: int = 3,
    ) -> None:
        self.root = Path(data_dir) / EVENTS_DIR
        self.sensor = check_sensor(sensor)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        self.level = level
        self.fsyncs = 0  # data and directory fsyncs, for the recorder's stats
        self.bytes_written = 0  # to the files (frames, compressed)
        self._fd: Optional[int] = None
        self._path: Optional[Path] = None
        self._size = 0  # bytes of lines in the open segment: the offset readers count in
        self._file_size = 0  # bytes of frames in the file
        self._cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, dict_data=events_dict())
        self._rotate_at = 0.0
        self._dirty = False
        self._dirs_to_sync: list[Path] = []

    @property
    def dirty(self) -> bool:
        """Lines written since the last sync."""
        return self._dirty

    @property
    def current(self) -> Optional[Path]:
        """The open segment, or None until the next write opens one."""
        return self._path

    def write(self, data: bytes) -> None:
        """Append whole lines (callers pass ``events.encode`` output) as one zstd frame."""
        if not data:
            return
        if self._fd is None:
            self._open()
        assert self._fd is not None
        frame = b"".join(map(self._cctx.compress, _pieces(data)))  # content size and checksum in each
        try:
            write_all(self._fd, frame)
        except OSError:
            self._undo_partial()
            raise
        self._size += len(data)
        self._file_size += len(frame)
        self.bytes_written += len(frame)
        self._dirty = True

    def sync(self) -> None:
        """fsync the segment (and, once, the directories its creation touched)."""
        if self._fd is None:
            return
        if self._dirty:
            try:
                fdatasync(self._fd)
            except OSError:
                # After a failed fsync the kernel may have dropped the dirty pages: appending
                # more would hide the hole. Give the file up; recover() finishes it.
                self.abandon()
                raise
            self.fsyncs += 1
            self._dirty = False
        while self._dirs_to_sync:
            fsync_dir(self._dirs_to_sync.pop())
            self.fsyncs += 1

    def maybe_rotate(self) -> Optional[Path]:
        """Close and compress the segment if it is too big, too old, or its UTC day is over.

        Returns the new .zst, or None. Rotating at midnight keeps each day
        directory to that day's events (give or take the queueing delay).
        """
        if self._fd is None:
            return None
        if self._size >= self.max_bytes or self.clock() >= self._rotate_at:
            return self.close()
        return None

    def close(self) -> Optional[Path]:
        """fsync, compress the current segment (if any); the next write opens a new one.

        Returns the .zst, or None if there was nothing to close or no room to compress
        (disk full): then the open segment stays, complete and readable, for recover().
        """
        if self._fd is None:
            return None
        path, fd = self._path, self._fd
        if self._size == 0:  # nothing ever got in (every write failed): no empty segment left behind
            self.abandon()
            return None
        try:
            self.sync()
            # Still holding the lock while compressing: recover() keeps its hands off.
            try:
                out: Optional[Path] = compress_segment(path, level=self.level)  # type: ignore[arg-type]
            except OSError as e:
                log.warning("segment %s left uncompressed (still readable; recovery compresses it): %s",
                            path.name, e)  # type: ignore[union-attr]
                out = None
        finally:
            self._fd = self._path = None
            os.close(fd)
        return out

    def _undo_partial(self) -> None:
        """After a failed write (disk full), cut what part of its frame got in and keep the
        segment: the next write retries the same file at the same frame boundary, so a full
        disk makes no new files. If even the cut fails, give the file up as after a failed sync."""
        try:
            os.ftruncate(self._fd, self._file_size)  # type: ignore[arg-type]
        except OSError:
            self.abandon()

    def abandon(self) -> None:
        """Stop writing the current segment without compressing it (after a write error).

        The file keeps whatever reached it, maybe half a frame at the end; the next
        :func:`recover` truncates that and compresses it. New writes go to a new file,
        so the torn bytes stay at the end of their file. A file that holds nothing is
        removed at once.
        """
        if self._fd is not None:
            try:
                if self._size == 0 and os.fstat(self._fd).st_size == 0 and self._path is not None:
                    self._path.unlink(missing_ok=True)
            except OSError:
                pass
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = self._path = None

    def _open(self) -> None:
        now = self.clock()
        opened = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
        day = self.root / opened.strftime("%Y-%m-%d")
        for d in (self.root.parent, self.root, day):
            if not d.exists():
                d.mkdir(parents=True, exist_ok=True)
                self._dirs_to_sync.append(d.parent)
        self._dirs_to_sync.append(day)
        stamp = opened.strftime("%Y%m%dT%H%M%S")
        while True:
            name = f"{self.sensor}-{stamp}Z-{os.getpid()}-{next(_seq):06d}.jsonl{OPEN_SUFFIX}"
            final = day / name
            if final.exists():
                continue
            tmp = day / f".{name}.new"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue
            break
        try:
            if not try_lock(fd):  # pragma: no cover - fresh private name
                raise RuntimeError(f"cannot lock new segment {tmp}")
            os.rename(tmp, final)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._fd, self._path = fd, final
        self._size = self._file_size = 0
        self._dirty = False
        midnight = _dt.datetime.combine(opened.date() + _dt.timedelta(days=1), _dt.time(), _dt.timezone.utc)
        self._rotate_at = min(now + self.max_age_s, midnight.timestamp())


def _pieces(data: bytes) -> list[bytes]:
    """``data`` cut at line ends into pieces of at most _FRAME_MAX (one piece, as a rule)."""
    out = []
    while len(data) > _FRAME_MAX:
        cut = data.rfind(b"\n", 0, _FRAME_MAX) + 1 or _FRAME_MAX  # a longer line: cut anyway
        out.append(data[:cut])
        data = data[cut:]
    out.append(data)
    return out


def compress_segment(path: Path, *, level: int = 3) -> Path:
    """Open segment -> ``x.jsonl.zst`` (one frame, no dictionary): temp file, fsync, rename,
    fsync dir, unlink the original.

    A crash at any point leaves either the open file alone, or both (readers and
    recover() prefer the .zst, which is complete once it has its final name). The frames
    of an open segment are recompressed as one (better ratio, and plain ``zstd -d`` reads
    it); a damaged frame becomes a filler line of its length (see :class:`FrameReader`),
    so offsets into the segment stay the same.
    """
    dst = path.with_name(segment_stem(path.name) + ".zst")
    tmp = path.with_name(dst.name + ".tmp")
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    try:
        with open(path, "rb") as src, open(tmp, "wb") as out:
            # Content size in the frame header: one-shot decompressors want it, and readers
            # check with it that a closed segment is whole.
            if path.name.endswith(OPEN_SUFFIX):
                size = FrameReader(src.fileno()).content_length()
                with cctx.stream_writer(out, size=size, closefd=False) as z:
                    frames = FrameReader(src.fileno())
                    while chunk := frames.read(_READ_CHUNK):
                        z.write(chunk)
                if frames.bad:
                    log.warning("segment %s: %d damaged frame(s) kept as filler lines", path.name, frames.bad)
            else:
                cctx.copy_stream(src, out, size=os.fstat(src.fileno()).st_size)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    path.unlink()
    return dst


# -- recovery ------------------------------------------------------------------------------------


def _complete_length(fd: int, size: int, framed: bool) -> int:
    """File offset where a torn end starts: just past the last complete frame (framed), or
    past the last newline (an older version's plain segment); 0 if there is none."""
    if framed:
        frames = FrameReader(fd)
        frames.content_length()
        return frames.pos
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def recover(data_dir: Union[str, Path], *, level: int = 3) -> list[Path]:
    """Finish the segments of dead writers: truncate a torn last frame (or line), compress.

    An open segment is dead when nobody holds its lock (the kernel drops flocks when
    a process dies, whatever its pid became). Also removes stale temp files and
    an open segment whose ``.zst`` was already complete. Returns the new .zst paths.
    Safe to run while other writers work in the same data dir.

    A segment that cannot be compressed (disk full) stays a complete open segment, which
    every reader reads as it is; one warning names them and the next recovery retries.
    """
    root = Path(data_dir) / EVENTS_DIR
    done: list[Path] = []
    left: list[str] = []
    err: Optional[OSError] = None
    for day in _day_dirs(root, None, None):
        for entry in sorted(os.scandir(day), key=lambda e: e.name):
            path = Path(entry.path)
            name = entry.name
            if name.startswith("."):
                if name.endswith((".jsonl.new", OPEN_SUFFIX + ".new")):
                    try:  # a writer died between create and rename (or is in it right now)
                        if time.time() - path.stat().st_mtime > _STALE_TEMP_S and not _locked(path):
                            path.unlink()
                    except FileNotFoundError:
                        pass
            elif is_open_name(name):
                try:
                    out = _recover_one(path, level)
                except OSError as e:
                    left.append(name)
                    err = err or e
                    continue
                if out is not None:
                    done.append(out)
            elif name.endswith(".jsonl.zst.tmp"):
                stem = path.with_name(name[: -len(".zst.tmp")])
                if not _locked(stem) and not _locked(stem.with_name(stem.name + OPEN_SUFFIX)):
                    path.unlink(missing_ok=True)
    if left:
        log.warning("recovery left %d segment(s) uncompressed (still readable): %s: %s",
                    len(left), name_list(left), err)
    return done


def name_list(names: list[str], total: Optional[int] = None, shown: int = 5) -> str:
    """The first few names and how many more (of ``total``, default all of ``names``):
    one bounded log line however many files."""
    more = (len(names) if total is None else total) - min(shown, len(names))
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not try_lock(fd)
    finally:
        os.close(fd)


def _recover_one(path: Path, level: int) -> Optional[Path]:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:  # compressed meanwhile by its writer
        return None
    try:
        if not try_lock(fd):
            return None  # a live writer
        if path.with_name(segment_stem(path.name) + ".zst").exists():
            path.unlink()  # died between rename and unlink: the .zst is complete
            return None
        size = os.fstat(fd).st_size
        framed = path.name.endswith(OPEN_SUFFIX)
        keep = _complete_length(fd, size, framed)
        if keep < size:
            log.warning("segment %s: truncating torn last %s (%d bytes)", path, "frame" if framed else "line",
                        size - keep)
            os.ftruncate(fd, keep)
            os.fsync(fd)
        if keep == 0:
            path.unlink()
            return None
        return compress_segment(path, level=level)
    finally:
        os.close(fd)


# -- reading -------------------------------------------------------------------------------------

_NAMES_KEPT = 5  # damaged file names a ReadStats keeps for its report line


@dataclass
class ReadStats:
    """What a read pass met; pass one to the iterators to see it.

    Damage is counted, never raised: files that cannot be read, compressed segments cut
    short, lines that are not a valid event. :meth:`damage_line` says it in one line.
    """

    files: int = 0
    lines: int = 0
    events: int = 0
    undecodable: int = 0  # complete lines that are not a valid event
    torn: int = 0  # files that ended in half a line or frame (an open segment: normal; a .zst: damage)
    errors: int = 0  # files that could not be read (vanished, corrupt or truncated .zst)
    bad_frames: int = 0  # damaged frames of open segments, skipped (the rest of the file is read)
    truncated: int = 0  # .zst files that end before their frame does (also in errors)
    ignored: int = 0  # files in a day directory whose name is not a segment's
    damaged_files: int = 0  # files with any damage (errors, damaged lines, foreign names)
    damaged: list[str] = field(default_factory=list)  # the first few of them, for the report
    _last: str = field(default="", repr=False)

    def note(self, path: Union[str, Path]) -> None:
        """Count ``path`` as damaged (once, however many lines of it are)."""
        name = str(path)
        if name == self._last:
            return
        self._last = name
        self.damaged_files += 1
        if len(self.damaged) < _NAMES_KEPT:
            self.damaged.append(Path(name).name)

    def damage_line(self) -> str:
        """One line naming what was skipped ("" when nothing was)."""
        if not self.damaged_files:
            return ""
        what = []
        if self.errors:
            what.append(f"{self.errors} unreadable file(s)" + (f", {self.truncated} cut short" if self.truncated else ""))
        if self.bad_frames:
            what.append(f"{self.bad_frames} damaged frame(s)")
        if self.undecodable:
            what.append(f"{self.undecodable} undecodable line(s)")
        if self.ignored:
            what.append(f"{self.ignored} file(s) not named like a segment")
        return f"damaged data skipped: {'; '.join(what)}; in {name_list(self.damaged, self.damaged_files)}"

    def merge(self, other: "ReadStats") -> None:
        """Add another pass's counts (and names, up to the bound)."""
        for f in ("files", "lines", "events", "undecodable", "torn", "errors", "bad_frames", "truncated", "ignored",
                  "damaged_files"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.damaged += other.damaged[: max(0, _NAMES_KEPT - len(self.damaged))]


def _day(d: DayLike) -> Optional[str]:
    if d is None:
        return None
    if isinstance(d, _dt.datetime):
        d = d.astimezone(_dt.timezone.utc).date() if d.tzinfo else d.date()
    if isinstance(d, _dt.date):
        return d.isoformat()
    if not _DAY_RE.match(d):
        raise ValueError(f"day must be YYYY-MM-DD, got {d!r}")
    return d


def _day_dirs(root: Path, since: Optional[str], until: Optional[str]) -> list[Path]:
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    days = sorted(
        e.name for e in entries
        if e.is_dir() and _DAY_RE.match(e.name)
        and (since is None or e.name >= since) and (until is None or e.name <= until)
    )
    return [root / d for d in days]


class _Truncated(OSError):
    """A compressed segment that ends before its zstd frame does."""


def _lines(src: BinaryIO, stats: ReadStats) -> Iterator[bytes]:
    """Complete lines; a last line without its newline is not one (``stats.torn``)."""
    tail = bytearray()  # an unfinished line; linear even if a garbage tail has no newline
    while True:
        chunk = src.read(_READ_CHUNK)
        if not chunk:
            break
        cut = chunk.rfind(b"\n")
        if cut < 0:
            tail += chunk
            continue
        parts = chunk[:cut].split(b"\n")
        if tail:
            parts[0] = bytes(tail) + parts[0]
            tail.clear()
        tail += chunk[cut + 1:]
        for line in parts:
            if line.strip():
                stats.lines += 1
                yield line
    if tail:
        stats.torn += 1


class _CheckedZst:
    """A .zst read as a stream (bounded memory), raising at the end if it was cut short.

    zstd's stream reader returns what it could decode and then EOF for a truncated file,
    silently; our frames carry their content size (compress_segment), so the bytes read
    are compared with it. A bit flip fails the frame checksum, which zstd checks itself.
    """

    def __init__(self, f: BinaryIO) -> None:
        header = f.read(18)  # the longest frame header
        f.seek(0)
        try:
            self.expect = zstandard.frame_content_size(header)
        except zstandard.ZstdError:
            raise zstandard.ZstdError("not a zstd frame") from None
        self.got = 0
        self._z = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=False)

    def read(self, n: int) -> bytes:
        data = self._z.read(n)
        self.got += len(data)
        if not data and 0 <= self.expect and self.got < self.expect:
            raise _Truncated(f"cut short: {self.got:,} of {self.expect:,} bytes")
        return data


class _BadFrame(ValueError):
    def __init__(self, why: str, size: int = -1) -> None:
        super().__init__(why)
        self.size = size  # the content size its header gave, -1 if none


def _frame_span(buf: bytes, i: int) -> tuple[int, int]:
    """(end, content size) of the zstd frame at ``buf[i:]``, from its header and block
    headers only; end is ``_INCOMPLETE`` if ``buf`` stops inside it. Raises _BadFrame for
    what cannot be a frame. Content size -1: not in the header."""
    n = len(buf)
    if n - i < 5:
        if buf[i:i + 4] != _MAGIC[: n - i]:
            raise _BadFrame("not a zstd frame")
        return _INCOMPLETE, -1
    magic = int.from_bytes(buf[i:i + 4], "little")
    if magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame: no content
        if n - i < 8:
            return _INCOMPLETE, 0
        end = i + 8 + int.from_bytes(buf[i + 4:i + 8], "little")
        return (end if end <= n else _INCOMPLETE), 0
    if buf[i:i + 4] != _MAGIC:
        raise _BadFrame("not a zstd frame")
    fhd = buf[i + 4]
    if fhd & 0x08:
        raise _BadFrame("reserved bit set")
    single = fhd >> 5 & 1
    fcs_len = (single, 2, 4, 8)[fhd >> 6]
    p = i + 5 + (1 - single) + (0, 1, 2, 4)[fhd & 3]
    if n < p + fcs_len:
        return _INCOMPLETE, -1
    size = -1
    if fcs_len:
        size = int.from_bytes(buf[p:p + fcs_len], "little") + (256 if fcs_len == 2 else 0)
        if size > _FRAME_MAX:
            raise _BadFrame("content size out of range")
    p += fcs_len
    while True:
        if n < p + 3:
            return _INCOMPLETE, size
        h = int.from_bytes(buf[p:p + 3], "little")
        kind, bsize = h >> 1 & 3, h >> 3
        if kind == 3 or bsize > _BLOCK_MAX:
            raise _BadFrame("bad block header", size)
        p += 3 + (1 if kind == 1 else bsize)
        if h & 1:
            break
    p += 4 if fhd & 4 else 0
    return (p if p <= n else _INCOMPLETE), size


@functools.lru_cache(maxsize=None)
def events_dict() -> zstandard.ZstdCompressionDict:
    """The dictionary open segments are compressed with (trained on event lines; shipped,
    fixed: segments written with it need it to be read)."""
    data = importlib.resources.files("spampots").joinpath("data/events-1.zdict").read_bytes()
    d = zstandard.ZstdCompressionDict(data)
    assert d.dict_id() == EVENTS_DICT_ID
    return d


class FrameReader:
    """The lines of an open segment: its complete zstd frames, decompressed, from file offset
    ``pos`` on, read with ``pread`` (so a writer that cuts a failed write and writes again at
    the same place is read from the frame start, and several readers can share nothing).

    ``read`` returns b"" once the complete frames are exhausted; bytes after them are a frame
    being written (call ``read`` again later: the file grows) or, after a crash, a torn frame
    that recovery cuts (``torn`` says how many bytes). A damaged frame is skipped and counted
    (``bad``): it reads as one filler line of its content size (``#...#\n``, an undecodable
    line), so offsets into the lines stay those of the writer; the next frame is found by its
    magic number.
    """

    def __init__(self, fd: int, pos: int = 0) -> None:
        self.fd = fd
        self.pos = pos  # file offset of the next frame
        self.bad = 0
        self.torn = 0
        self._buf = b""  # file bytes from self._base on
        self._base = pos
        self._dctx = zstandard.ZstdDecompressor(dict_data=events_dict())
        self._plain = zstandard.ZstdDecompressor()

    def _more(self) -> bool:
        """Read more of the file into the buffer (dropping what was consumed)."""
        i = self.pos - self._base
        got = os.pread(self.fd, _READ_CHUNK, self._base + len(self._buf))
        if not got:
            return False
        self._buf = self._buf[i:] + got
        self._base = self.pos
        return True

    def _next(self) -> Optional[tuple[int, bytes]]:
        """(content size, frame bytes) of the next complete frame, or None at the end of the
        complete frames. A damaged frame comes back as (its content size, b"") when its
        header says it, else it is passed over."""
        while True:
            i = self.pos - self._base
            try:
                end, size = _frame_span(self._buf, i)
            except _BadFrame as e:
                end, size = -2, e.size
            if end == _INCOMPLETE and self._more():
                continue
            if end >= 0:
                self.torn = 0
                self.pos = self._base + end
                return size, self._buf[i:end]
            # Damage, or the end of the complete frames: a complete frame further on tells them apart.
            known = self._base + len(self._buf)
            nxt = self._resync(self.pos + 1)
            if nxt >= 0 and self._base + len(self._buf) > known:
                # The file grew meanwhile: the writer may have finished this frame and written
                # the next one. Look at this one again before calling it damaged.
                continue
            if nxt < 0:
                self.torn = len(self._buf) - (self.pos - self._base)
                # Read those bytes again next time: a writer whose write failed cuts its half
                # frame off and writes another in its place.
                self._buf, self._base = b"", self.pos
                return None
            self.bad += 1
            self.pos = nxt
            if size > 0:
                return size, b""

    def _resync(self, start: int) -> int:
        """File offset of the next complete frame at or after ``start`` (-1: none)."""
        while True:
            i = start - self._base
            j = self._buf.find(_MAGIC, i)
            retry = -1  # a frame that may complete with more bytes
            while j >= 0:
                try:
                    if _frame_span(self._buf, j)[0] >= 0:
                        return self._base + j
                    retry = j if retry < 0 else retry
                except _BadFrame:
                    pass
                j = self._buf.find(_MAGIC, j + 1)
            start = self._base + (retry if retry >= 0 else max(i, len(self._buf) - 3))
            if not self._more():
                return -1

    def _decode(self, size: int, frame: bytes) -> bytes:
        if frame and size == 0:  # a skippable frame (zstd's comments; we write none) or an empty one
            return b""
        if frame:
            try:
                dict_id = zstandard.get_frame_parameters(frame).dict_id
                dctx = self._plain if dict_id == 0 else self._dctx if dict_id == EVENTS_DICT_ID else None
                if dctx is not None:
                    out = dctx.decompress(frame)
                    if size < 0 or len(out) == size:
                        return out
            except zstandard.ZstdError:
                pass
            self.bad += 1
        return b"#" * (size - 1) + b"\n" if size > 0 else b""

    def read(self, n: int = _READ_CHUNK) -> bytes:
        """Lines of the next complete frames (about ``n`` bytes, at least one frame), b"" if none."""
        out = []
        got = 0
        while got < n:
            nxt = self._next()
            if nxt is None:
                break
            data = self._decode(*nxt)
            out.append(data)
            got += len(data)
        return b"".join(out)

    def skip(self, offset: int) -> tuple[bytes, int]:
        """Pass over ``offset`` bytes of lines (frames before it are not decompressed): the
        rest of the frame that holds that offset, and what is left to pass over when the
        complete frames ran out first."""
        left = offset
        while left > 0:
            nxt = self._next()
            if nxt is None:
                break
            size, frame = nxt
            if size < 0 or size > left:
                data = self._decode(size, frame)
                if len(data) > left:
                    return data[left:], 0
                size = len(data)
            left -= size
        return b"", left

    def content_length(self) -> int:
        """Bytes of lines in the complete frames (from ``pos``); leaves ``pos`` after them."""
        total = 0
        while (nxt := self._next()) is not None:
            size, frame = nxt
            total += size if size >= 0 else len(self._decode(size, frame))
        return total


def _open_segment(path: Path) -> BinaryIO:
    if path.name.endswith(".zst"):
        return open(path, "rb")
    try:
        return open(path, "rb")
    except FileNotFoundError:  # compressed and unlinked since listing
        return open(path.with_name(segment_stem(path.name) + ".zst"), "rb")


def iter_file_lines(path: Path, stats: ReadStats) -> Iterator[bytes]:
    """Every complete line of one segment, checked: never raises for what is on disk.

    A closed segment (.zst) must be a whole zstd frame ending in a newline: anything else
    is damage, counted and named in ``stats``, and the lines before it are still returned.
    An open segment is read up to its last complete frame; a damaged frame in it is
    skipped and counted (``stats.bad_frames``).
    """
    try:
        f = _open_segment(path)
    except FileNotFoundError:
        stats.errors += 1
        stats.note(path)
        log.warning("segment %s vanished while reading", path)
        return
    stats.files += 1
    with f:
        zst = f.name.endswith(".zst")
        torn = stats.torn
        frames = FrameReader(f.fileno()) if f.name.endswith(OPEN_SUFFIX) else None
        try:
            src = _CheckedZst(f) if zst else frames if frames is not None else f
            yield from _lines(src, stats)  # type: ignore[arg-type]
            if frames is not None:
                stats.torn += frames.torn > 0
                stats.bad_frames += frames.bad
                if frames.bad:
                    stats.note(path)
        except (zstandard.ZstdError, OSError) as e:
            stats.errors += 1
            stats.truncated += isinstance(e, _Truncated)
            stats.note(path)
            log.debug("segment %s unreadable: %s", path, e)
            return
        if zst and stats.torn > torn:  # compressed segments hold whole lines only
            stats.errors += 1
            stats.truncated += 1
            stats.note(path)


# Listing and reading in order live in the catalog (the one place that knows the layout);
# these names stay importable from here.
_MOVED = ("iter_segment_files", "iter_event_lines", "iter_events", "iter_file_events")


def __getattr__(name: str):  # noqa: ANN202 - PEP 562
    if name in _MOVED:
        from . import catalog

        return getattr(catalog, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
