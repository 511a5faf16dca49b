"""The segment log: events as JSON lines, appended, rotated, compressed.

Layout (see ``docs/store.md``)::

    <data_dir>/events/YYYY-MM-DD/<sensor>-<YYYYmmddTHHMMSS>Z-<pid>-<seq>.jsonl      open
    <data_dir>/events/YYYY-MM-DD/<sensor>-<YYYYmmddTHHMMSS>Z-<pid>-<seq>.jsonl.zst  closed

A writer holds an exclusive ``flock`` on its open segment for as long as it
writes it, so :func:`recover` can tell a live writer's file (locked) from one
left by a dead process (unlocked) without trusting pids, which get reused.
A new segment is created under a hidden temporary name, locked, then renamed,
so an unlocked ``.jsonl`` is never a brand-new file of a live writer.

Readers never take locks: they read complete lines only, so the open segment
(possibly ending in half a line) and a torn last line after a crash are fine.
"""

from __future__ import annotations

import datetime as _dt
import errno
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
    r"^(?P<sensor>.+)-(?P<opened>\d{8}T\d{6})Z-(?P<pid>\d+)-(?P<seq>\d+)\.jsonl(?P<zst>\.zst)?$"
)
_READ_CHUNK = 1 << 20
_STALE_TEMP_S = 60.0  # a hidden temp segment older than this belongs to nobody
_seq = itertools.count(1)  # process-wide, so two writers never pick the same name

DayLike = Union[str, _dt.date, None]


# -- small shared helpers (also used by messages.py) ---------------------------------------------


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

    Not thread-safe: one thread (the recorder's writer thread) owns it. ``write``
    goes straight to the kernel (no user-space buffer), so a killed process loses
    nothing it wrote; ``sync`` makes it survive power loss too.
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
        self.bytes_written = 0
        self._fd: Optional[int] = None
        self._path: Optional[Path] = None
        self._size = 0
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
        """Append whole lines (callers pass ``events.encode`` output)."""
        if not data:
            return
        if self._fd is None:
            self._open()
        assert self._fd is not None
        try:
            write_all(self._fd, data)
        except OSError:
            self._undo_partial()
            raise
        self._size += len(data)
        self.bytes_written += len(data)
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
        (disk full): then the complete .jsonl stays, readable, for recover() to compress.
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
        """After a failed write (disk full), cut what part of it got in and keep the segment:
        the next write retries the same file, so a full disk makes no new files. If even
        the cut fails, give the file up as after a failed sync."""
        try:
            os.ftruncate(self._fd, self._size)  # type: ignore[arg-type]
        except OSError:
            self.abandon()

    def abandon(self) -> None:
        """Stop writing the current segment without compressing it (after a write error).

        The file keeps whatever reached it, maybe half a line at the end; the next
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
            name = f"{self.sensor}-{stamp}Z-{os.getpid()}-{next(_seq):06d}.jsonl"
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
        self._size, self._dirty = 0, False
        midnight = _dt.datetime.combine(opened.date() + _dt.timedelta(days=1), _dt.time(), _dt.timezone.utc)
        self._rotate_at = min(now + self.max_age_s, midnight.timestamp())


def compress_segment(path: Path, *, level: int = 3) -> Path:
    """``x.jsonl`` -> ``x.jsonl.zst``: temp file, fsync, rename, fsync dir, unlink the original.

    A crash at any point leaves either the .jsonl alone, or both (readers and
    recover() prefer the .zst, which is complete once it has its final name).
    """
    dst = path.with_name(path.name + ".zst")
    tmp = path.with_name(path.name + ".zst.tmp")
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    try:
        with open(path, "rb") as src, open(tmp, "wb") as out:
            # Content size in the frame header: one-shot decompressors want it.
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


def _complete_length(fd: int, size: int) -> int:
    """Offset just past the last newline (0 if none): where a torn line starts."""
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
    """Finish the segments of dead writers: truncate a torn last line, compress.

    A ``.jsonl`` is dead when nobody holds its lock (the kernel drops flocks when
    a process dies, whatever its pid became). Also removes stale temp files and
    a ``.jsonl`` whose ``.zst`` was already complete. Returns the new .zst paths.
    Safe to run while other writers work in the same data dir.

    A segment that cannot be compressed (disk full) stays a complete ``.jsonl``, which
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
            if name.endswith(".jsonl"):
                try:
                    out = _recover_one(path, level)
                except OSError as e:
                    left.append(name)
                    err = err or e
                    continue
                if out is not None:
                    done.append(out)
            elif name.endswith(".jsonl.zst.tmp"):
                if not _locked(path.with_name(name[: -len(".zst.tmp")])):
                    path.unlink(missing_ok=True)
            elif name.startswith(".") and name.endswith(".jsonl.new"):
                try:  # a writer died between create and rename (or is in it right now)
                    if time.time() - path.stat().st_mtime > _STALE_TEMP_S and not _locked(path):
                        path.unlink()
                except FileNotFoundError:
                    pass
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
        if path.with_name(path.name + ".zst").exists():
            path.unlink()  # died between rename and unlink: the .zst is complete
            return None
        size = os.fstat(fd).st_size
        keep = _complete_length(fd, size)
        if keep < size:
            log.warning("segment %s: truncating torn last line (%d bytes)", path, size - keep)
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
    torn: int = 0  # files that ended in half a line (an open segment: normal; a .zst: damage)
    errors: int = 0  # files that could not be read (vanished, corrupt or truncated .zst)
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
        if self.undecodable:
            what.append(f"{self.undecodable} undecodable line(s)")
        if self.ignored:
            what.append(f"{self.ignored} file(s) not named like a segment")
        return f"damaged data skipped: {'; '.join(what)}; in {name_list(self.damaged, self.damaged_files)}"

    def merge(self, other: "ReadStats") -> None:
        """Add another pass's counts (and names, up to the bound)."""
        for f in ("files", "lines", "events", "undecodable", "torn", "errors", "truncated", "ignored",
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


def _open_segment(path: Path) -> BinaryIO:
    if path.name.endswith(".zst"):
        return open(path, "rb")
    try:
        return open(path, "rb")
    except FileNotFoundError:  # compressed and unlinked since listing
        return open(path.with_name(path.name + ".zst"), "rb")


def iter_file_lines(path: Path, stats: ReadStats) -> Iterator[bytes]:
    """Every complete line of one segment, checked: never raises for what is on disk.

    A closed segment (.zst) must be a whole zstd frame ending in a newline: anything else
    is damage, counted and named in ``stats``, and the lines before it are still returned.
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
        try:
            yield from _lines(_CheckedZst(f) if zst else f, stats)  # type: ignore[arg-type]
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
