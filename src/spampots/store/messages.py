"""The message store: bodies content-addressed by SHA-256, zstd-compressed, in pack files.

Layout (see ``docs/store.md``)::

    <data_dir>/messages/pack-<sensor>-<NNNNNN>.pack   append-only records, the source of truth
    <data_dir>/messages/pack-<sensor>.lock            flock held by the one writer of that sensor
    <data_dir>/messages/index.sqlite                  sha256 -> where; a cache rebuilt from packs

Record = 60-byte header + compressed bytes::

    0   8  magic b"SPMPACK1"
    8  32  sha256 of the raw body (binary)
    40  8  raw length        (u64 little-endian)
    48  8  compressed length (u64 little-endian)
    56  4  crc32 of the compressed bytes (u32 little-endian)
    60  -  zstd frame

Writers append a record with one ``write`` before indexing it, so the index
never gets ahead of what the kernel holds. SQLite runs with synchronous=OFF:
the packs are fsynced before anything is acknowledged, and on open the index
is reconciled against them (rows beyond a pack's end dropped, unindexed tail
records added, a torn last record truncated), so a lost or stale index row
costs a rescan, never a message. If the index file is damaged (``PRAGMA quick_check``
on open) it is rebuilt; if it cannot be written (disk full) the writer indexes the
packs in memory until its next start.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import mmap
import os
import random
import re
import sqlite3
import struct
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Union

import zstandard

from .segments import check_sensor, fdatasync, fsync_dir, try_lock, write_all

log = logging.getLogger("spampots.store")

MESSAGES_DIR = "messages"
INDEX_NAME = "index.sqlite"
MAGIC = b"SPMPACK1"
HEADER = struct.Struct("<8s32sQQI")  # magic, sha256, raw_len, comp_len, crc32
HEADER_SIZE = HEADER.size  # 60
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # every record's data is one zstd frame
PACK_RE = re.compile(r"^pack-(?P<sensor>.+)-(?P<n>\d{6,})\.pack$")
DICT_RE = re.compile(r"^dict-(?P<id>\d+)-(?P<writer>.+)\.zdict$")
DICT_SAMPLES = 256  # bodies a writer compresses alone before it trains its dictionary
DICT_BYTES = 16 << 10  # dictionary size: the talk mix's bodies shrink from 0.29x to 0.20x
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_READ_FDS = 64
_OPEN_BUSY_S = 30.0  # how long a store opened by several workers at once retries a locked index
_BUSY_MS = 5000  # sqlite3's default busy wait, once the store is open
_WAL_PAGES = 64  # the index's write-ahead log is checkpointed at this many pages
# The writer thread shares the GIL with the sensor's event loop, and every C call that lets
# the GIL go may cost a hand-off back and forth: a batch of bodies is stored with one
# lookup, one pack write and one index insert instead of one of each per body.
_HASH_CHUNK = 2047  # hashlib lets the GIL go for an update of 2048 bytes or more
_HASH_HELD = 16 << 10  # bodies up to this size are hashed holding it (a few us)
_ROWS_PER_INSERT = 150  # 750 parameters: under SQLite's oldest limit of 999
_LOOKUPS_PER_SELECT = 500


def _insert_sql(n: int) -> str:
    return "INSERT OR REPLACE INTO bodies VALUES " + ",".join(["(?, ?, ?, ?, ?)"] * n)


def _sha256(body: bytes) -> bytes:
    """SHA-256 of ``body``; a small body in updates under hashlib's GIL-release size."""
    if len(body) > _HASH_HELD:
        return hashlib.sha256(body).digest()
    h = hashlib.sha256()
    view = memoryview(body)
    for i in range(0, len(body), _HASH_CHUNK):
        h.update(view[i:i + _HASH_CHUNK])
    return h.digest()

# About 50 bytes a body: the sha256 as its 32 bytes and the pack as a number. Earlier versions
# kept a table ``blobs`` of hex digests and pack names (~120 bytes a body, as much as a small
# compressed body); a writer opening such an index drops it and re-indexes the packs.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a reader's id -> name stays true
    name TEXT NOT NULL UNIQUE                -- file name inside messages/
);
CREATE TABLE IF NOT EXISTS bodies (
    sha256   BLOB PRIMARY KEY,   -- the 32-byte digest
    pack     INTEGER NOT NULL,   -- packs.id
    offset   INTEGER NOT NULL,   -- of the record header
    raw_len  INTEGER NOT NULL,
    comp_len INTEGER NOT NULL
) WITHOUT ROWID;
"""
# No index on (pack, offset): it would take as many bytes per body as the table. The queries
# by pack (reconciling at open, retention's few packs per pass) scan the table instead.
_OLD_TABLE = "blobs"
_SELECT_LOC = ("SELECT b.sha256, p.name, b.offset, b.raw_len, b.comp_len FROM bodies b "
               "JOIN packs p ON p.id = b.pack")
_PACK_ID = "(SELECT id FROM packs WHERE name = ?)"

#: an index row as the store hands it around: (sha256 hex, pack name, offset, raw_len, comp_len)
Row = tuple[str, str, int, int, int]


class CorruptRecord(ValueError):
    """A record exists in the index but its bytes do not check out."""


class _IndexDamaged(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damaged pages behind an intact header."""


def _damaged(e: sqlite3.DatabaseError) -> bool:
    """Damage in the index file itself (rebuild it), not a full disk or a lock (do not)."""
    name = getattr(e, "sqlite_errorname", None) or ""
    return isinstance(e, _IndexDamaged) or name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) \
        or (not name and type(e) is sqlite3.DatabaseError)


def _busy(e: sqlite3.DatabaseError) -> bool:
    name = getattr(e, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def disk_full(e: BaseException) -> bool:
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorname", None) or "") == "SQLITE_FULL"
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _check_index(db: sqlite3.Connection) -> None:
    """Read every page of the index (a header can be intact in front of damaged pages)."""
    rows = db.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise _IndexDamaged("; ".join(str(r[0]) for r in rows[:3]))


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _insert_rows(db: sqlite3.Connection, rows: list[Row], *, replace: bool) -> None:
    """Insert rows naming their pack by name (added to ``packs`` if new)."""
    for pack in {r[1] for r in rows}:
        db.execute("INSERT OR IGNORE INTO packs(name) VALUES (?)", (pack,))
    db.executemany(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO bodies "
                   f"VALUES (?, {_PACK_ID}, ?, ?, ?)",
                   [(bytes.fromhex(sha), pack, offset, raw_len, comp_len)
                    for sha, pack, offset, raw_len, comp_len in rows])


def _delete_pack(db: sqlite3.Connection, pack: str, *, forget: bool) -> None:
    db.execute(f"DELETE FROM bodies WHERE pack = {_PACK_ID}", (pack,))
    if forget:
        db.execute("DELETE FROM packs WHERE name = ?", (pack,))


class Location(NamedTuple):
    pack: str
    offset: int
    raw_len: int
    comp_len: int


class _Scanned(NamedTuple):
    sha: str
    offset: int
    raw_len: int
    comp_len: int


def pack_name(sensor: str, n: int) -> str:
    return f"pack-{sensor}-{n:06d}.pack"


def _valid_at(mm: Union[mmap.mmap, bytes], off: int, size: int) -> Optional[_Scanned]:
    """The record at ``off`` if it is complete and its CRC checks, else None."""
    if off + HEADER_SIZE > size:
        return None
    magic, digest, raw_len, comp_len, crc = HEADER.unpack_from(mm, off)
    end = off + HEADER_SIZE + comp_len
    if magic != MAGIC or end > size:
        return None
    data = mm[off + HEADER_SIZE:end]
    # A zeroed header has a "valid" CRC of nothing: demand a real zstd frame too.
    if not data.startswith(ZSTD_MAGIC) or zlib.crc32(data) != crc:
        return None
    return _Scanned(digest.hex(), off, raw_len, comp_len)


def scan_pack(path: Path, start: int = 0) -> tuple[list[_Scanned], int, int]:
    """Valid records from ``start``; returns (records, end of the last good record, file size).

    A bad record followed by a good one (found by searching for the magic) is
    damage in the middle: logged and skipped. A bad record with nothing good
    after it is a torn tail, reported by ``good_end < size``.
    """
    size = path.stat().st_size
    if start >= size:
        return [], start, size
    found: list[_Scanned] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size = len(mm)
        off = good_end = start
        while off < size:
            rec = _valid_at(mm, off, size)
            if rec is None:
                nxt = mm.find(MAGIC, off + 1)
                while nxt >= 0 and _valid_at(mm, nxt, size) is None:
                    nxt = mm.find(MAGIC, nxt + 1)
                if nxt < 0:
                    break  # torn tail
                log.error("pack %s: %d damaged bytes at offset %d skipped", path, nxt - off, off)
                off = nxt
                continue
            found.append(rec)
            off = good_end = off + HEADER_SIZE + rec.comp_len
    return found, good_end, size


class MessageStore:
    """Content-addressed message bodies. Not thread-safe: one owner thread.

    ``readonly=True`` is for readers in other processes while a sensor writes:
    it reads the index as it is (rows the writer committed are visible at
    once; bodies written by a writer that crashed stay invisible until some
    writer opens the store and re-indexes). Without an index file it scans
    the packs into an in-memory index. ``scan=True`` (with readonly) always
    does: SQLite opening the index read-only still creates its ``-shm`` file
    where it may, which root reading a sensor's data dir must not leave behind.
    """

    def __init__(
        self,
        data_dir: Union[str, Path],
        sensor: str = "local",
        *,
        pack_max_bytes: int = 256 << 20,
        level: int = 3,
        readonly: bool = False,
        scan: bool = False,
    ) -> None:
        self.dir = Path(data_dir) / MESSAGES_DIR
        self._scan = scan
        self.sensor = check_sensor(sensor)
        self.pack_max_bytes = pack_max_bytes
        self.readonly = readonly
        self.fsyncs = 0
        self.bytes_written = 0
        self.level = level
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._dctx = zstandard.ZstdDecompressor()
        self._dctxs: dict[int, zstandard.ZstdDecompressor] = {}  # dictionary id -> its decompressor
        self._samples: Optional[list[bytes]] = None  # bodies kept to train the dictionary on
        self._readers: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lock_fd: Optional[int] = None
        self._fd: Optional[int] = None  # the pack we append to
        self._pack: Optional[str] = None
        self._pack_size = 0
        self._dirty = False
        self._dirs_to_sync: list[Path] = []
        self._foreign: set[str] = set()  # packs of dedup hits, fsynced on our next sync()
        self.hit_packs: set[str] = set()  # packs of dedup hits since retention last cleared it
        self._sync_error: Optional[OSError] = None
        self._staged: Optional[dict[str, Row]] = None  # index rows of the batch open now
        self._pack_ids: dict[str, int] = {}  # pack name -> packs.id, for the rows we insert
        self._closed = False
        if readonly:
            self._db = self._open_db_readonly()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / f"pack-{sensor}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(self._lock_fd):
            os.close(self._lock_fd)
            raise RuntimeError(f"another process writes messages for sensor {sensor!r} in {self.dir}")
        try:
            try:
                self._db = self._open_db()
                self._reconcile()
            except (sqlite3.Error, OSError) as e:
                if not disk_full(e):
                    raise
                # No room to bring the index up to date: the packs are the truth, so index them
                # in memory; the next start (with room) re-indexes from the file's last row.
                log.warning("index %s cannot be written (%s): indexing the packs in memory until the "
                            "next start", self.dir / INDEX_NAME, e)
                if hasattr(self, "_db"):
                    self._db.close()
                self._pack_ids.clear()
                self._db = self._memory_index()
            self._open_last_pack()
            self._load_dictionary()
        except BaseException:
            self.close()
            raise

    # -- index -----------------------------------------------------------------------------------

    def _open_db(self) -> sqlite3.Connection:
        path = self.dir / INDEX_NAME
        busy_until = time.monotonic() + _OPEN_BUSY_S
        attempt = 1
        while attempt <= 2:
            # A long busy wait while opening (workers start together); _reconcile sets it back.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_OPEN_BUSY_S)
            try:
                db.execute("PRAGMA journal_mode=WAL")  # locked by a worker opening at once: retried below
                # OFF is safe here: the index is a cache; see the module docstring.
                db.execute("PRAGMA synchronous=OFF")
                # A small WAL: checkpoint every 64 pages (256 KiB) and cut the file back to that
                # size after one, instead of letting it sit at the 4 MiB default. It is part of a
                # running sensor's stored bytes (0.007x of the talk mix at 1 MiB, 37k messages);
                # the checkpoints it costs are page writes without fsync (synchronous=OFF).
                db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
                db.execute(f"PRAGMA journal_size_limit={_WAL_PAGES * 4096}")
                db.executescript(_SCHEMA)
                _check_index(db)
                return db
            except sqlite3.DatabaseError as e:
                db.close()
                if _busy(e) and time.monotonic() < busy_until:
                    # Workers open a new store at the same moment: creating the schema (or the
                    # switch to WAL) can deadlock, and SQLite then says "locked" at once instead
                    # of waiting in its busy handler. The loser tries again.
                    time.sleep(random.uniform(0.01, 0.05))
                    continue
                if attempt == 2 or not _damaged(e):
                    raise
                log.error("index %s damaged (%s): rebuilding it from the packs", path, e)
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
                attempt += 1
        raise AssertionError("unreachable")

    def _open_db_readonly(self) -> sqlite3.Connection:
        path = self.dir / INDEX_NAME
        if path.exists() and not self._scan:
            db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            try:
                _check_index(db)
                if _has_table(db, "bodies"):
                    return db
                db.close()
                log.info("index %s is of an older version (until a writer opens the store): "
                         "scanning packs in memory", path)
            except sqlite3.DatabaseError as e:
                db.close()
                log.warning("index %s unreadable (%s): scanning packs in memory", path, e)
        return self._memory_index()

    def _memory_index(self) -> sqlite3.Connection:
        """An index of every valid record in the packs, in memory (nothing is written)."""
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.executescript(_SCHEMA)
        for name in self._pack_names():
            found, _, _ = scan_pack(self.dir / name)
            self._index(db, name, found)
        return db

    def _pack_names(self) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.dir) if PACK_RE.match(e.name)]
        except FileNotFoundError:
            return []
        return sorted(names)

    @staticmethod
    def _index(db: sqlite3.Connection, pack: str, found: list[_Scanned]) -> None:
        _insert_rows(db, [(r.sha, pack, r.offset, r.raw_len, r.comp_len) for r in found], replace=False)

    def _reconcile(self) -> None:
        """Bring the index in line with the packs (they win), truncating torn tails."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # another writer (a worker) may open the index at the same time
        migrated = False
        try:
            if _has_table(db, _OLD_TABLE):  # an older version's layout: re-index every pack
                log.info("index %s is of an older version: re-indexing the packs", self.dir / INDEX_NAME)
                db.execute(f"DROP TABLE {_OLD_TABLE}")
                migrated = True
            names = self._pack_names()
            ends = dict(db.execute(
                f"SELECT p.name, max(b.offset + {HEADER_SIZE} + b.comp_len) FROM bodies b "
                "JOIN packs p ON p.id = b.pack GROUP BY b.pack"
            ).fetchall())
            for (gone,) in db.execute("SELECT name FROM packs").fetchall():
                if gone not in names:
                    if gone in ends:
                        log.warning("pack %s is gone: dropping its index rows", gone)
                    _delete_pack(db, gone, forget=True)
            for name in names:
                path = self.dir / name
                start = ends.get(name, 0)
                size = path.stat().st_size
                if start > size:  # the index outlived pack bytes (crash with synchronous=OFF)
                    log.warning("pack %s shorter than its index: dropping rows past %d", name, size)
                    db.execute(
                        f"DELETE FROM bodies WHERE pack = {_PACK_ID} AND offset + {HEADER_SIZE} + comp_len > ?",
                        (name, size),
                    )
                    start = db.execute(
                        f"SELECT coalesce(max(offset + {HEADER_SIZE} + comp_len), 0) FROM bodies "
                        f"WHERE pack = {_PACK_ID}", (name,),
                    ).fetchone()[0]
                found, good_end, size = scan_pack(path, start)
                self._index(db, name, found)
                if found:
                    log.info("pack %s: indexed %d records past offset %d", name, len(found), start)
                if good_end < size:
                    self._truncate_if_idle(path, good_end, size)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT (disk full) has already rolled back
                db.execute("ROLLBACK")
            raise
        db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")  # open: back to sqlite3's usual wait
        if migrated:
            try:  # give the old table's pages back to the file system (another writer may be busy)
                db.execute("VACUUM")
            except sqlite3.Error as e:
                log.info("index %s: not compacted after the re-index (%s)", self.dir / INDEX_NAME, e)

    def _truncate_if_idle(self, path: Path, good_end: int, size: int) -> None:
        m = PACK_RE.match(path.name)
        owner = m["sensor"] if m else ""
        lock_fd = None
        if owner != self.sensor:  # somebody else's pack: only if its writer is gone
            lock_fd = os.open(self.dir / f"pack-{owner}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            if not try_lock(lock_fd):
                os.close(lock_fd)
                return  # a live writer is appending; its tail is not torn
        try:
            log.warning("pack %s: truncating torn last record (%d bytes)", path, size - good_end)
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, good_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)

    # -- writing ---------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.readonly:
            raise PermissionError("message store opened read-only")
        if self._closed:
            raise ValueError("message store is closed")

    def _open_last_pack(self) -> None:
        mine = [(int(m["n"]), name) for name in self._pack_names()
                if (m := PACK_RE.match(name)) and m["sensor"] == self.sensor]
        if mine:
            self._open_pack(max(mine)[1], create=False)

    def _open_pack(self, name: str, *, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(self.dir / name, flags, 0o644)
        if create:
            self._dirs_to_sync.append(self.dir)
        self._fd, self._pack, self._pack_size = fd, name, os.fstat(fd).st_size

    def _ensure_room(self, record_len: int) -> None:
        if self._fd is not None and (
            self._pack_size == 0 or self._pack_size + record_len <= self.pack_max_bytes
        ):
            return
        n = 1
        if self._pack is not None:
            n = int(PACK_RE.match(self._pack)["n"]) + 1  # type: ignore[index]
            self._close_pack()
        while (self.dir / pack_name(self.sensor, n)).exists():
            n += 1
        self._open_pack(pack_name(self.sensor, n), create=True)

    def _close_pack(self) -> None:
        if self._fd is None:
            return
        if self._dirty:  # rotation: the old pack is complete and durable before we move on
            os.fsync(self._fd)
            self.fsyncs += 1
            self._dirty = False
        os.close(self._fd)
        self._fd = self._pack = None

    def put(self, body: bytes, sha256: Optional[str] = None) -> tuple[str, bool]:
        """Store ``body`` unless an intact copy exists; returns (sha256 hex, newly stored).

        ``sha256``, if given, is checked against the body (ValueError on mismatch).
        The bytes reach the kernel before this returns; call :meth:`sync` for disk.
        """
        sha, new, _ = self.put_keep(body, sha256)
        return sha, new

    def put_keep(self, body: bytes, sha256: Optional[str] = None) -> tuple[str, bool, bytes]:
        """:meth:`put`, also returning the whole pack record that holds the body (the new one,
        or the intact copy found): the recorder journals it (store/journal.py)."""
        self._check_writable()
        digest = _sha256(body)
        sha = digest.hex()
        if sha256 is not None and sha256.lower() != sha:
            raise ValueError(f"sha256 {sha256!r} does not match the body ({sha})")
        record = self._reuse(sha, self._locate(sha))
        if record is not None:
            return sha, False, record
        comp = self._cctx.compress(body)
        if self._samples is not None:
            self._sample(body)
        record = HEADER.pack(MAGIC, digest, len(body), len(comp), zlib.crc32(comp)) + comp
        self._append(record, sha, len(body), len(comp))
        return sha, True, record

    def _reuse(self, sha: str, loc: Optional[Location]) -> Optional[bytes]:
        """The intact pack record of a body already stored at ``loc`` (a dedup hit), noting its
        pack; None when there is none, or its bytes are bad (then the body is stored again)."""
        if loc is None:
            return None
        record = self._intact_record(sha, loc)
        if record is None:
            log.warning("index row for %s points at bad bytes: storing the body again", sha)
        elif loc.pack != self._pack:
            self._foreign.add(loc.pack)  # maybe not yet fsynced by its writer
            self.hit_packs.add(loc.pack)  # named again: retention keeps it (retention.py)
        return record

    def put_many(self, items: list[tuple[bytes, Optional[str]]]) -> list[Union[tuple[str, bool, bytes], Exception]]:
        """:meth:`put_keep` for each ``(body, sha256)``, with one index lookup and one pack write
        per call instead of one of each per body. Each item's result, or its exception (a wrong sha256, a failed write): one item's
        failure is its own. Use inside :meth:`batch` (the index rows are inserted at its end)."""
        self._check_writable()
        out: list = [None] * len(items)
        shas: list[str] = []
        for k, (body, given) in enumerate(items):
            digest = _sha256(body)
            sha = digest.hex()
            shas.append(sha)
            if given is not None and given.lower() != sha:
                out[k] = ValueError(f"sha256 {given!r} does not match the body ({sha})")
        staged = self._staged or {}
        found = self._locate_many([sha for k, sha in enumerate(shas) if out[k] is None and sha not in staged])
        first: dict[str, int] = {}  # sha -> the item of this call that stores it
        new: list[int] = []
        for k, sha in enumerate(shas):
            if out[k] is not None or sha in first:
                continue
            record = self._reuse(sha, Location(*staged[sha][1:]) if sha in staged else found.get(sha))
            if record is not None:
                out[k] = (sha, False, record)
                continue
            first[sha] = k
            new.append(k)
        if new:
            bodies = [items[k][0] for k in new]
            records = [HEADER.pack(MAGIC, bytes.fromhex(shas[k]), len(b), len(c), zlib.crc32(c)) + c
                       for k, b, c in zip(new, bodies, self._compress_many(bodies))]
            errors = self._append_many([(r, shas[k], len(items[k][0]), len(r) - HEADER_SIZE)
                                        for k, r in zip(new, records)])
            for k, r, e in zip(new, records, errors):
                out[k] = e if e is not None else (shas[k], True, r)
        for k, sha in enumerate(shas):  # copies of a body stored by this call
            if out[k] is None:
                stored = out[first[sha]]
                out[k] = stored if isinstance(stored, Exception) else (sha, False, stored[2])
        return out

    def _compress_many(self, bodies: list[bytes]) -> list[bytes]:
        # One compress call per body: zstandard's multi_compress_to_buffer takes one call but
        # sets up its context each time, 10x the cost of three small bodies with a dictionary.
        out = []
        for body in bodies:
            out.append(self._cctx.compress(body))
            if self._samples is not None:
                self._sample(body)
        return out

    def _locate_many(self, shas: list[str]) -> dict[str, Location]:
        found: dict[str, Location] = {}
        for i in range(0, len(shas), _LOOKUPS_PER_SELECT):
            part = [bytes.fromhex(s) for s in shas[i:i + _LOOKUPS_PER_SELECT]]
            rows = self._db.execute(f"{_SELECT_LOC} WHERE b.sha256 IN (" + ",".join("?" * len(part)) + ")", part)
            for digest, *loc in rows:
                found[digest.hex()] = Location(*loc)
        return found

    def _append_many(self, recs: list[tuple[bytes, str, int, int]]) -> list[Optional[Exception]]:
        """Append records (record, sha, raw_len, comp_len), as many per write as fit in the pack."""
        errors: list[Optional[Exception]] = [None] * len(recs)
        i = 0
        while i < len(recs):
            try:
                self._ensure_room(len(recs[i][0]))
            except Exception as e:
                errors[i] = e
                i += 1
                continue
            j, end = i + 1, self._pack_size + len(recs[i][0])
            while j < len(recs) and end + len(recs[j][0]) <= self.pack_max_bytes:
                end += len(recs[j][0])
                j += 1
            offset = self._pack_size
            try:
                write_all(self._fd, b"".join(r[0] for r in recs[i:j]))  # type: ignore[arg-type]
            except Exception as e:
                self._undo_partial(offset)
                errors[i:j] = [e] * (j - i)
                i = j
                continue
            for record, sha, raw_len, comp_len in recs[i:j]:
                self._index_row((sha, self._pack, offset, raw_len, comp_len))  # type: ignore[arg-type]
                offset += len(record)
            self.bytes_written += offset - self._pack_size
            self._pack_size, self._dirty = offset, True
            i = j
        return errors

    def _index_row(self, row: Row) -> None:
        if self._staged is not None:
            self._staged[row[0]] = row  # committed at the end of the batch, after its sync
        else:
            self._db.execute(_insert_sql(1), self._packed([row]))

    def _pack_id(self, name: str) -> int:
        """packs.id of ``name``, added if new (outside any transaction: a rolled-back id
        must not stay in the cache). Ids are never reused, so the cache stays true."""
        pid = self._pack_ids.get(name)
        if pid is None:
            self._db.execute("INSERT OR IGNORE INTO packs(name) VALUES (?)", (name,))
            pid = self._pack_ids[name] = self._db.execute(
                "SELECT id FROM packs WHERE name = ?", (name,)).fetchone()[0]
        return pid

    def _packed(self, rows: list[Row]) -> list:
        """The flat parameters of a multi-row insert of ``rows``, as the table stores them."""
        out: list = []
        for sha, pack, offset, raw_len, comp_len in rows:
            out += (bytes.fromhex(sha), self._pack_id(pack), offset, raw_len, comp_len)
        return out

    def put_record(self, record: bytes) -> bool:
        """Store a whole pack record (a journaled one) unless an intact copy of its body
        exists; True if it was written. ValueError if the record does not check."""
        self._check_writable()
        rec = _valid_at(record, 0, len(record))
        if rec is None or HEADER_SIZE + rec.comp_len != len(record):
            raise ValueError("not a valid pack record")
        loc = self._locate(rec.sha)
        if loc is not None and self._intact_record(rec.sha, loc) is not None:
            return False
        self._append(record, rec.sha, rec.raw_len, rec.comp_len)
        return True

    def _append(self, record: bytes, sha: str, raw_len: int, comp_len: int) -> None:
        self._ensure_room(len(record))
        assert self._fd is not None and self._pack is not None
        offset = self._pack_size
        try:
            write_all(self._fd, record)
        except BaseException:
            self._undo_partial(offset)
            raise
        self._pack_size += len(record)
        self._dirty = True
        self.bytes_written += len(record)
        self._index_row((sha, self._pack, offset, raw_len, comp_len))

    # -- the compression dictionary ------------------------------------------------------------
    # Spam bodies share most of their words, headers and markup with each other, far more than
    # a 3 KB body with itself. Each writer trains one zstd dictionary on its first DICT_SAMPLES
    # bodies and compresses with it from then on. The dictionary is a file of its own,
    # ``dict-<id>-<writer>.zdict``, durable before any record uses it; a record's zstd frame
    # names its dictionary's id, so any reader finds it. Records before it stay plain frames.

    def _load_dictionary(self) -> None:
        """Compress with this writer's newest dictionary, or start sampling for one."""
        mine = []
        for e in os.scandir(self.dir):
            m = DICT_RE.match(e.name)
            if m and m["writer"] == self.sensor:
                mine.append((e.stat().st_mtime, e.name))
        if not mine:
            self._samples = []
            return
        name = max(mine)[1]
        try:
            data = (self.dir / name).read_bytes()
            self._cctx = zstandard.ZstdCompressor(level=self.level, dict_data=zstandard.ZstdCompressionDict(data))
        except (OSError, zstandard.ZstdError) as e:
            log.warning("compression dictionary %s unusable (%s): training a new one", name, e)
            self._samples = []

    def _sample(self, body: bytes) -> None:
        samples = self._samples
        assert samples is not None
        samples.append(body[:65536])
        if len(samples) < DICT_SAMPLES:
            return
        self._samples = None  # one attempt per writer: a failure leaves plain frames
        try:
            d = zstandard.train_dictionary(DICT_BYTES, samples, level=self.level)
            data = d.as_bytes()
            name = f"dict-{d.dict_id()}-{self.sensor}.zdict"
            tmp = self.dir / f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / name)
            fsync_dir(self.dir)  # on disk before a record that needs it is acknowledged
            self.fsyncs += 2
            self._cctx = zstandard.ZstdCompressor(level=self.level, dict_data=zstandard.ZstdCompressionDict(data))
        except (OSError, zstandard.ZstdError) as e:
            log.warning("no compression dictionary for %s (%s): bodies stay compressed alone", self.sensor, e)

    def _decompressor(self, comp: bytes, sha: str) -> zstandard.ZstdDecompressor:
        try:
            dict_id = zstandard.get_frame_parameters(comp).dict_id
        except zstandard.ZstdError as e:
            raise CorruptRecord(f"{sha}: {e}") from None
        if not dict_id:
            return self._dctx
        dctx = self._dctxs.get(dict_id)
        if dctx is None:
            prefix = f"dict-{dict_id}-"
            try:
                name = next(e.name for e in os.scandir(self.dir) if e.name.startswith(prefix)
                            and DICT_RE.match(e.name))
                data = (self.dir / name).read_bytes()
            except (StopIteration, OSError):
                raise CorruptRecord(f"{sha}: compression dictionary {dict_id} is missing") from None
            dctx = self._dctxs[dict_id] = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(data))
        return dctx

    def _undo_partial(self, offset: int) -> None:
        """After a failed write (disk full), cut the half record so the pack stays clean."""
        try:
            os.ftruncate(self._fd, offset)  # type: ignore[arg-type]
        except OSError:
            log.error("pack %s: cannot truncate a partial record; starting a new pack", self._pack)
            fd, self._fd = self._fd, None  # keep _pack: the next put rotates to the next number
            try:
                if self._dirty:
                    os.fsync(fd)  # type: ignore[arg-type]
                    self.fsyncs += 1
            except OSError as e:
                self._sync_error = e  # earlier puts are not durable: the next sync() says so
            finally:
                self._dirty = False
                os.close(fd)  # type: ignore[arg-type]

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Puts inside share one index transaction, committed when the block ends.

        Call :meth:`sync` inside the block: the index rows then commit only after the bytes
        they name are on disk. One commit per put cost a WAL append and eight file locks.
        The rows wait in memory until then, and the write transaction (``BEGIN IMMEDIATE``)
        holds the index's lock only for their insert: the writers of one data dir (a
        sensor's workers, a collector) share the index, and none waits on another's fsync.
        A failed commit is rolled back and raised (sqlite3.Error): treat the batch's puts as
        not stored (their records are indexed from the pack on the next open). Nested use
        joins the outer batch. Up to ``_ROWS_PER_INSERT`` rows go in one multi-row
        ``INSERT``, its own transaction (one statement: a single step of SQLite, which lets
        the GIL go once instead of once per row); more take an explicit transaction.
        """
        self._check_writable()
        if self._staged is not None:
            yield
            return
        self._staged = {}
        try:
            yield
            rows = list(self._staged.values())
        finally:
            self._staged = None
        if not rows:
            return
        db = self._db
        if len(rows) <= _ROWS_PER_INSERT:
            db.execute(_insert_sql(len(rows)), self._packed(rows))
            return
        parts = [self._packed(rows[i:i + _ROWS_PER_INSERT]) for i in range(0, len(rows), _ROWS_PER_INSERT)]
        db.execute("BEGIN IMMEDIATE")
        try:
            for part in parts:
                db.execute(_insert_sql(len(part) // 5), part)
            db.execute("COMMIT")
        except sqlite3.Error:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def sync(self) -> None:
        """fsync what we wrote, new directory entries, and packs we deduplicated against."""
        self._check_writable()
        if self._sync_error is not None:
            err, self._sync_error = self._sync_error, None
            raise err
        if self._fd is not None and self._dirty:
            fdatasync(self._fd)  # appends only: the size change is flushed too
            self.fsyncs += 1
            self._dirty = False
        while self._dirs_to_sync:
            fsync_dir(self._dirs_to_sync.pop())
            self.fsyncs += 1
        while self._foreign:
            name = self._foreign.pop()
            fd = os.open(self.dir / name, os.O_RDONLY)
            try:
                os.fsync(fd)
                self.fsyncs += 1
            finally:
                os.close(fd)

    def forget_pack(self, name: str) -> None:
        """Retention deleted ``name`` (its index rows first): close our reader of it."""
        fd = self._readers.pop(name, None)
        if fd is not None:
            os.close(fd)
        self._foreign.discard(name)
        self._pack_ids.pop(name, None)

    # -- index rows by pack (retention, store/retention.py) --------------------------------------
    # Run in the writer's thread. They take no transaction of their own: wrap them in
    # :meth:`index_transaction` where several must be one.

    @contextmanager
    def index_transaction(self) -> Iterator[None]:
        """One write transaction of the index (``BEGIN IMMEDIATE``), rolled back if the block raises."""
        self._check_writable()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT (disk full) has already rolled back
                db.execute("ROLLBACK")
            raise

    def pack_rows(self, pack: str) -> list[Row]:
        """The index rows of ``pack``: (sha256 hex, pack, offset, raw_len, comp_len)."""
        return [(d.hex(), *rest) for d, *rest in self._db.execute(f"{_SELECT_LOC} WHERE b.pack = {_PACK_ID}", (pack,))]

    def has_pack_rows(self, pack: str) -> bool:
        return self._db.execute(f"SELECT 1 FROM bodies WHERE pack = {_PACK_ID} LIMIT 1", (pack,)).fetchone() is not None

    def delete_pack_rows(self, pack: str, *, forget: bool = False) -> None:
        """Take ``pack``'s rows out of the index; ``forget`` also its name (the file goes)."""
        self._check_writable()
        _delete_pack(self._db, pack, forget=forget)
        if forget:
            self._pack_ids.pop(pack, None)

    def restore_rows(self, rows: list[Row]) -> None:
        """Put rows back (from :meth:`pack_rows`); a body indexed meanwhile keeps its row."""
        self._check_writable()
        _insert_rows(self._db, rows, replace=False)

    # -- reading ---------------------------------------------------------------------------------

    def _locate(self, sha: str) -> Optional[Location]:
        if self._staged and sha in self._staged:
            return Location(*self._staged[sha][1:])
        row = self._db.execute(f"{_SELECT_LOC} WHERE b.sha256 = ?", (bytes.fromhex(sha),)).fetchone()
        return Location(*row[1:]) if row else None

    def location(self, sha256: str) -> Optional[Location]:
        """Where a body lives (pack, offset, raw_len, comp_len), or None."""
        sha = sha256.lower()
        return self._locate(sha) if _SHA_RE.match(sha) else None

    def _read_fd(self, pack: str) -> int:
        fd = self._readers.get(pack)
        if fd is not None:
            self._readers.move_to_end(pack)
            return fd
        fd = os.open(self.dir / pack, os.O_RDONLY)
        self._readers[pack] = fd
        if len(self._readers) > _MAX_READ_FDS:
            os.close(self._readers.popitem(last=False)[1])
        return fd

    def _record(self, sha: str, loc: Location) -> bytes:
        """The compressed bytes at ``loc``, after checking header and CRC."""
        return self._whole_record(sha, loc)[HEADER_SIZE:]

    def _whole_record(self, sha: str, loc: Location) -> bytes:
        """The record (header and frame) at ``loc``, checked."""
        try:
            data = os.pread(self._read_fd(loc.pack), HEADER_SIZE + loc.comp_len, loc.offset)
        except FileNotFoundError:
            raise CorruptRecord(f"{sha}: pack {loc.pack} is missing") from None
        rec = _valid_at(data, 0, len(data))
        if rec is None or rec.sha != sha or rec.raw_len != loc.raw_len or rec.comp_len != loc.comp_len:
            raise CorruptRecord(f"{sha}: bad record at {loc.pack}:{loc.offset}")
        return data

    def _intact_record(self, sha: str, loc: Location) -> Optional[bytes]:
        try:
            return self._whole_record(sha, loc)
        except (CorruptRecord, OSError):
            return None

    def get(self, sha256: str) -> bytes:
        """The exact raw body. KeyError if unknown; CorruptRecord if it fails CRC or SHA-256."""
        sha = sha256.lower()
        loc = self._locate(sha) if _SHA_RE.match(sha) else None
        if loc is None:
            raise KeyError(sha256)
        comp = self._record(sha, loc)
        try:
            raw = self._decompressor(comp, sha).decompress(comp, max_output_size=loc.raw_len)
        except zstandard.ZstdError as e:
            raise CorruptRecord(f"{sha}: {e}") from None
        if len(raw) != loc.raw_len or hashlib.sha256(raw).hexdigest() != sha:
            raise CorruptRecord(f"{sha}: decompressed body does not match its sha256")
        return raw

    def __contains__(self, sha256: object) -> bool:
        return isinstance(sha256, str) and _SHA_RE.match(sha256.lower()) is not None \
            and self._locate(sha256.lower()) is not None

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM bodies").fetchone()[0]

    def iter_shas(self) -> Iterator[str]:
        """Every indexed sha256 (hex), in pack order."""
        cur = self._db.execute("SELECT b.sha256 FROM bodies b JOIN packs p ON p.id = b.pack ORDER BY p.name, b.offset")
        for (digest,) in cur:
            yield digest.hex()

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """fsync and close everything; idempotent."""
        if self._closed:
            return
        try:
            if not self.readonly and hasattr(self, "_db"):
                self.sync()
        finally:
            self._closed = True
            self._close_pack()
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()
            if hasattr(self, "_db"):
                self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "MessageStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
