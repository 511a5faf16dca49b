"""The Parquet lake: compaction of closed event segments, and views over lake + open segments.

Layout under the lake's root (``<data_dir>/lake``, or a cache dir: see :func:`lake_root`)::

    <table>/day=YYYY-MM-DD/part-<batch>.parquet   one table per event type (schema.py)
    _manifest.jsonl                                 one line per compacted segment

A closed segment (``events/<day>/*.jsonl.zst``, with no open twin still being
written) is compacted once; the manifest records it. Parts whose batch never reached
the manifest (a crash between the Parquet write and the manifest line) are removed
on the next run, so a segment is never counted twice. Open segments (``*.jsonl.zst.open``,
zstd frames with the store's dictionary, possibly with a torn last frame; an older
version's ``*.jsonl``) are read at report time through the store's reader, so a report
sees data up to now. The event segments stay the source of truth: the lake
can be dropped and rebuilt (``compact --rebuild``).

Derived files never go where they do not belong: a reader that may not write the data dir
(an analyst with read access, or root on a sensor's dir owned by its user) keeps its lake in a
cache dir of its own, and reads the data dir's own lake, if there is one, as a read-only base:
what the base holds is not compacted again.

DuckDB never reads a segment unchecked: each one is first read through the store's checked
reader (``store.segments.iter_file_events``: whole zstd frame, strict event decoding), and a
damaged one is replaced by a temporary copy of its valid lines. What was skipped is counted
in ``Lake.damage`` and named in one line by the commands.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import duckdb

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

from ..store.catalog import iter_file_events, iter_segment_files
from ..store.segments import OPEN_SUFFIX, ReadStats, is_open_name, segment_stem
from . import progress, schema

MANIFEST = "_manifest.jsonl"
# Also offered unfiltered as <name>_all: what the listeners were is true whatever the report's range.
UNFILTERED = ("sensor_start",)


def _sql_str(s: str | Path) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _sql_list(paths: Iterable[Path]) -> str:
    return "[" + ", ".join(_sql_str(p) for p in paths) + "]"


# The report's DuckDB memory limit unless --memory-limit says otherwise: the talk-scale report
# (524.6M emails) stays under 4 GB RSS with it; DuckDB spills big hash tables to disk instead.
REPORT_MEMORY_LIMIT = 3 << 30


def report_memory_limit() -> str:
    """REPORT_MEMORY_LIMIT, or DuckDB's own default (80% of RAM) on a machine with less than that."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 0
    limit = min(REPORT_MEMORY_LIMIT, int(ram * 0.8)) if ram else REPORT_MEMORY_LIMIT
    return f"{limit >> 20}MB"


def new_connection(threads: int | None = None, memory_limit: str | None = None, *,
                   ordered: bool = False, temp_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with our macros. `ordered`: keep ORDER BY in what COPY writes;
    `temp_dir`: where DuckDB spills what exceeds its memory limit (else its default, ./.tmp)."""
    con = duckdb.connect()
    # DuckDB's own bar would print into stdout (a report piped as JSON) on queries past 2 s:
    # our progress (analysis/progress.py) polls query_progress instead, on stderr and a terminal only.
    con.execute("SET enable_progress_bar_print = false")
    if temp_dir is not None:
        con.execute(f"SET temp_directory = {_sql_str(temp_dir)}")
    # The views are bound again by every query: keep the Parquet footers in memory, not re-read each time.
    con.execute("SET parquet_metadata_cache = true")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute(f"SET memory_limit = {_sql_str(memory_limit)}")
    con.execute(f"SET preserve_insertion_order = {'true' if ordered else 'false'}")
    con.execute(schema.MACROS)
    return con


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/spampots, else ~/.cache/spampots."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "spampots"


def _may_write(data_dir: Path) -> bool:
    """True if this process may keep its lake in the data dir: it can write there, and it is not
    root on a dir that belongs to someone else (root's files there would lock the owner out)."""
    try:
        st = data_dir.stat()
    except OSError:
        return False
    if os.geteuid() == 0 and st.st_uid != 0:
        return False
    lake = data_dir / "lake"
    if lake.exists():
        manifest = lake / MANIFEST
        return os.access(lake, os.W_OK | os.X_OK) and (not manifest.exists() or os.access(manifest, os.W_OK))
    return os.access(data_dir, os.W_OK | os.X_OK)


def lake_root(data_dir: Path | str, cache_dir: Path | str | None = None) -> Path:
    """Where the lake of `data_dir` is written: ``<data_dir>/lake`` when this process may write
    there (and no `cache_dir` is named), else ``<cache dir>/<name>-<hash of the path>/lake``."""
    data_dir = Path(data_dir)
    if cache_dir is None and _may_write(data_dir):
        return data_dir / "lake"
    where = Path(os.path.abspath(data_dir))
    try:
        where = where.resolve()
    except OSError:
        pass
    key = re.sub(r"[^A-Za-z0-9._-]", "-", where.name)[:40] or "root"
    key += "-" + hashlib.sha256(str(where).encode()).hexdigest()[:12]
    return Path(cache_dir or default_cache_dir()) / key / "lake"


@dataclass
class Segments:
    closed: list[Path] = field(default_factory=list)  # compactable, not yet in the lake
    open: list[Path] = field(default_factory=list)  # still being written
    compacted: int = 0


@dataclass
class CompactStats:
    segments: int = 0
    events: int = 0
    parts: int = 0
    days: set[str] = field(default_factory=set)


class Lake:
    def __init__(self, data_dir: Path | str, *, cache_dir: Path | str | None = None,
                 root: Path | str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.events_dir = self.data_dir / "events"
        self.root = Path(root) if root is not None else lake_root(self.data_dir, cache_dir)
        # The data dir's own lake, read-only, when ours is elsewhere (see the module's doc).
        in_place = self.data_dir / "lake"
        self.base: Path | None = in_place if self.root != in_place and in_place.is_dir() else None
        self.batch_bytes = 256 << 20  # compressed segment bytes compacted together
        self.damage = ReadStats()  # what compaction and connect() skipped, for the report line
        self._told: set[str] = set()  # damaged segments connect() has counted already
        self._told_ignored = False  # files not named like a segment: counted by the first listing only

    # -- bookkeeping -------------------------------------------------------------------------
    def _manifest(self, root: Path | None = None) -> dict[str, dict]:
        path = (root or self.root) / MANIFEST
        out: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    out[rec["segment"]] = rec
                except (ValueError, KeyError):
                    continue  # a torn manifest line: its batch is treated as never finished
        return out

    def _views(self) -> tuple[dict[str, dict], dict[str, dict], set[str]]:
        """(base manifest, our manifest, our batches superseded by the base).

        A segment the base compacted after we did (the owner ran compact since) is read from the
        base only: our whole batch holding it is dropped, and its other segments are compacted again.
        """
        base = self._manifest(self.base) if self.base is not None else {}
        own = self._manifest()
        superseded = {rec["batch"] for seg, rec in own.items() if seg in base}
        return base, {k: r for k, r in own.items() if r["batch"] not in superseded}, superseded

    def _drop_orphans(self, batches: set[str]) -> None:
        for part in self.root.glob("*/day=*/part-*.parquet"):
            if part.stem.split("-")[1] not in batches:
                part.unlink()

    def segments(self, stats: ReadStats | None = None) -> Segments:
        """The store's segments (its own listing, in write order) split by what the lake holds."""
        seg = Segments()
        base, own, _ = self._views()
        done = {**base, **own}
        listing = ReadStats()
        for p in iter_segment_files(self.data_dir, stats=listing):
            if is_open_name(p.name):
                seg.open.append(p)
            elif self._rel(p) in done:
                seg.compacted += 1
            else:
                seg.closed.append(p)
        if stats is not None and listing.ignored and not self._told_ignored:
            self._told_ignored = True
            stats.merge(listing)
        return seg

    @staticmethod
    def _checked(files: Sequence[Path], work: Path, damage: ReadStats,
                 tick: progress.Tick | None = None) -> tuple[list[Path], int]:
        """The files DuckDB may read, and how many valid events they hold (`tick`: one per file).

        Each segment is read once through the store's checked reader; a damaged one is
        replaced by a copy of its valid lines in `work` (damage is rare: no copy otherwise),
        and so is an open framed one (DuckDB knows neither its dictionary nor torn frames).
        """
        out: list[Path] = []
        events = 0
        for p in files:
            before = damage.damaged_files
            events += sum(1 for _ in iter_file_events(p, damage))
            if tick is not None:
                tick(1)
            if damage.damaged_files == before and not p.name.endswith(OPEN_SUFFIX):
                out.append(p)
                continue
            clean = work / segment_stem(p.name)
            with open(clean, "wb") as f:
                f.writelines(line + b"\n" for line, _ in iter_file_events(p, ReadStats()))
            out.append(clean)
        return out, events

    def _rel(self, p: Path) -> str:
        return str(p.relative_to(self.data_dir))

    # -- compaction --------------------------------------------------------------------------
    def compact(self, *, rebuild: bool = False, quiet: bool = True,
                con: duckdb.DuckDBPyConnection | None = None) -> CompactStats:
        """Compact every closed segment not yet in the lake; returns what was done.

        Holds an exclusive lock on lake/_compact.lock, so two reports started together never
        compact the same segment twice (the second waits, then finds nothing left to do).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "_compact.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            return self._compact_locked(rebuild=rebuild, quiet=quiet, con=con)

    def _compact_locked(self, *, rebuild: bool, quiet: bool,
                        con: duckdb.DuckDBPyConnection | None) -> CompactStats:
        if rebuild and self.root.exists():
            for child in self.root.iterdir():
                if child.name not in ("_cache", "_compact.lock"):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        for left in self.root.glob("_checked-*"):  # left by a killed run (no reader runs now: we hold the lock)
            shutil.rmtree(left, ignore_errors=True)
        _, manifest, superseded = self._views()
        if superseded:  # rewrite our manifest without them (atomically), then their parts go as orphans
            tmp = self.root / (MANIFEST + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in manifest.values()))
            os.replace(tmp, self.root / MANIFEST)
        self._drop_orphans({r["batch"] for r in manifest.values()})
        seg = self.segments(self.damage)
        stats = CompactStats()
        if not seg.closed:
            return stats
        con = con or new_connection(ordered=True)
        batches = list(_batches(seg.closed, self.batch_bytes))
        for i, files in enumerate(batches):
            batch = uuid.uuid4().hex[:16]
            n, parts, days = self._compact_batch(con, files, batch, quiet=quiet,
                                                 label=f" {i + 1}/{len(batches)}" if len(batches) > 1 else "")
            with open(self.root / MANIFEST, "a") as m:
                m.write("".join(json.dumps({"segment": self._rel(p), "size": p.stat().st_size,
                                            "batch": batch}) + "\n" for p in files))
                m.flush()
                os.fsync(m.fileno())
            stats.segments += len(files)
            stats.events += n
            stats.parts += parts
            stats.days |= days
        return stats

    def _compact_batch(self, con: duckdb.DuckDBPyConnection, files: Sequence[Path], batch: str, *,
                       quiet: bool = True, label: str = "") -> tuple[int, int, set[str]]:
        """Compact one batch of segments; progress (on a terminal) in two phases: segments checked
        (each read through the store's checked reader), then lake tables written."""
        cols = schema.json_columns()
        with tempfile.TemporaryDirectory(prefix="_checked-", dir=self.root) as work:
            with progress.bar(f"compacting{label}: segments checked", total=len(files), quiet=quiet) as tick:
                checked, valid = self._checked(files, Path(work), self.damage, tick)
            con.execute(f"""CREATE OR REPLACE TEMP TABLE raw AS
                SELECT * FROM read_json({_sql_list(checked)}, format='newline_delimited',
                                        columns={_struct_literal(cols)}, ignore_errors=true)
                WHERE event IS NOT NULL AND ts IS NOT NULL""")
        total = con.execute("SELECT count(*) FROM raw").fetchone()[0]
        if total < valid:  # valid events DuckDB could not take (no usable ts): counted, not hidden
            self.damage.undecodable += valid - total
            self.damage.note(files[0] if len(files) == 1 else f"{files[0].name} (+{len(files) - 1} in its batch)")
        parts_total = 0
        days: set[str] = set()
        present = dict(con.execute("SELECT event, count(*) FROM raw GROUP BY 1").fetchall())
        names = [name for name, table in schema.TABLES.items() if present.get(table.event)]
        with progress.bar(f"compacting{label}: lake tables written", total=len(names), quiet=quiet) as tick:
            for name in names:
                parts, written = self._write_table(con, name, batch)
                parts_total += parts
                days.update(d.isoformat() for d in written)
                tick(1)
        con.execute("DROP TABLE IF EXISTS raw; DROP TABLE IF EXISTS t")
        return total, parts_total, days

    def _write_table(self, con: duckdb.DuckDBPyConnection, name: str, batch: str) -> tuple[int, list]:
        """One table's rows of the batch in `raw` into the lake; returns (parts, days written)."""
        con.execute(f"""CREATE OR REPLACE TEMP TABLE t AS
            SELECT {schema.select_list(name, schema.json_columns())}, ts::DATE AS day FROM raw
            WHERE event = {_sql_str(schema.TABLES[name].event)}""")
        write_parts(con, self._flags(con, name, "t"), self.root, name, f"part-{batch}-{{i}}")
        written = [r[0] for r in con.execute("SELECT DISTINCT day FROM t").fetchall()]
        return len(written), written

    def _flags(self, con: duckdb.DuckDBPyConnection, name: str, src: str) -> str:
        """SELECT over `src` adding the per-session flags of table `name`.

        first_in_session: the earliest proxy.request of its session, where sessions already
        in the lake (same day or the day before: a session can cross midnight) count as
        having had their first request already.
        """
        if name != "proxy_request":
            return f"SELECT * FROM {src}"
        seen = self._parquet_files(name)
        prior = "SELECT NULL::VARCHAR AS session WHERE false"
        if seen:
            prior = (f"SELECT DISTINCT session FROM read_parquet({_sql_list(seen)}, hive_partitioning=true,"
                     f" hive_types={{'day': DATE}}) WHERE day BETWEEN (SELECT min(day) - 1 FROM {src})"
                     f" AND (SELECT max(day) FROM {src}) AND session IS NOT NULL")
        return f"""SELECT s.*, (row_number() OVER (PARTITION BY s.session ORDER BY s.ts) = 1
                              AND s.session NOT IN ({prior})) AS first_in_session
                   FROM {src} s"""

    # -- reading -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _base_lock(self) -> Iterator[None]:
        """A shared lock on the base lake while we list it: its owner's compaction holds the
        exclusive one, so no half-written batch is seen (read-only: flock needs no write access)."""
        path = self.base / "_compact.lock" if self.base is not None else None
        try:
            f = open(path, "rb") if path is not None else None
        except OSError:
            f = None
        try:
            if f is not None and fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            yield
        finally:
            if f is not None:
                f.close()

    def _parquet_files(self, table: str) -> list[Path]:
        """The table's parts: the base's (read under its lock, see connect) and ours, but for
        our batches the base supersedes."""
        superseded = self._views()[2] if self.base is not None else set()
        out = _parts(self.base / table) if self.base is not None else []
        return out + [p for p in _parts(self.root / table) if p.stem.split("-")[1] not in superseded]

    def connect(self, *, day_from: dt.date | None = None, day_to: dt.date | None = None,
                sensors: Sequence[str] = (), threads: int | None = None,
                memory_limit: str | None = None, quiet: bool = True, tz: str = "UTC") -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per table over lake + segments, filtered.

        `day_from`/`day_to`: days in zone `tz` (the report's --tz), see schema.period_where.

        `quiet`: no progress bar of the segments read from JSON (shown on a terminal otherwise).

        The views read a snapshot taken under a shared lock: the lake files as they are now, and
        every segment not in the lake (open ones, and closed ones not compacted) read from JSON
        into memory. A segment compressed by the sensor between listing and reading is listed
        again, so it is read exactly once, as JSON.
        """
        con = new_connection(threads, memory_limit, temp_dir=self.root / "_cache" / "spill")
        cols = schema.json_columns()
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "_compact.lock", "a") as lock, self._base_lock():
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_SH)
            for attempt in range(5):
                damage = ReadStats()
                seg = self.segments(damage)
                json_files = seg.open + seg.closed
                try:
                    with tempfile.TemporaryDirectory(prefix="_checked-", dir=self.root) as work:
                        with progress.bar("reading segments not in the lake", total=len(json_files),
                                          quiet=quiet or len(json_files) < 2) as tick:
                            checked, _ = self._checked(json_files, Path(work), damage, tick)
                        if checked:  # a TEMP TABLE: read now, so the checked copies can go
                            con.execute(f"""CREATE OR REPLACE TEMP TABLE open_raw AS
                                SELECT * FROM read_json({_sql_list(checked)}, format='newline_delimited',
                                                        columns={_struct_literal(cols)}, ignore_errors=true)
                                WHERE event IS NOT NULL AND ts IS NOT NULL""")
                    break
                except duckdb.IOException:  # a segment compressed (renamed) since the listing
                    if attempt == 4:
                        raise
            # A report connects more than once (its tables, then the campaigns) over the same
            # segments: damage already told is not told again; a pass that met new damage is.
            if not set(damage.damaged) <= self._told:
                self.damage.merge(damage)
                self._told.update(damage.damaged)
            files = {name: self._parquet_files(name) for name in schema.TABLES}
            files.update({f"{n}_sample": self._parquet_files(f"{n}_sample") for n in schema.SAMPLED})
        where = ["true"] + schema.period_where(day_from, day_to, tz)
        if sensors:
            where.append("sensor IN (" + ", ".join(_sql_str(s) for s in sensors) + ")")
        cond = " AND ".join(where)
        shapes = _Shapes(self.root / "_cache" / "parquet-shapes.json")
        for name, table in schema.TABLES.items():
            lake_cols = schema.lake_columns(name)
            empty = "SELECT " + ", ".join(f'NULL::{t} AS "{c}"' for c, t in lake_cols) + " WHERE false"
            lake = [_parquet_select(con, name, files[name], shapes)] if files[name] else []
            fresh = []
            if json_files:
                src = (f"(SELECT {schema.select_list(name, cols)}, ts::DATE AS day FROM open_raw"
                       f" WHERE event = {_sql_str(table.event)})")
                fresh.append(f"SELECT {', '.join(chr(34) + c + chr(34) for c, _ in lake_cols)}"
                             f" FROM ({self._flags(con, name, src)})")
            union = " UNION ALL ".join(lake + fresh) or empty
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM ({union}) WHERE {cond}")
            if name in UNFILTERED:
                con.execute(f"CREATE VIEW {name}_all AS {union}")
            if name in schema.SAMPLED:
                sample = files[f"{name}_sample"]
                pieces = [_parquet_select(con, f"{name}_sample", sample, shapes)] if sample else []
                # rows not yet compacted: the same sessions as compaction will keep
                pieces += [f"SELECT * FROM ({f}) WHERE {schema.sample_pred(name)}" for f in fresh]
                con.execute(f"CREATE VIEW {name}_sample AS SELECT * FROM ({' UNION ALL '.join(pieces) or empty})"
                            f" WHERE {cond}")
        shapes.save()
        # What the queries may want to know: derived columns computed at read time (costly per row).
        con.execute("CREATE TEMP TABLE computed_columns (\"table\" VARCHAR, \"column\" VARCHAR)")
        if shapes.computed:
            con.executemany("INSERT INTO computed_columns VALUES (?, ?)", sorted(shapes.computed))
        return con


def write_parts(con: duckdb.DuckDBPyConnection, select: str, root: Path, table: str, pattern: str) -> int:
    """Write rows of `table` under root/<table>/day=.../<pattern>.parquet, sorted by ip_key.

    Sorted by source, a day's file compresses ip_key well and the per-IP GROUP BY runs about
    2x faster. Sampled tables (schema.SAMPLED) also get their <table>_sample rows.
    """
    targets = [(table, select)]
    if table in schema.SAMPLED:
        targets.append((f"{table}_sample", f"SELECT * FROM ({select}) WHERE {schema.sample_pred(table)}"))
    rows = []
    for name, sql in targets:
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        rows.append(con.execute(f"""COPY ({sql} ORDER BY day, ip_key) TO {_sql_str(out)} (FORMAT parquet,
            COMPRESSION zstd, PARTITION_BY (day), OVERWRITE_OR_IGNORE, FILENAME_PATTERN '{pattern}')""").fetchone()[0])
    return rows[0]


class _Shapes:
    """How many schema elements each Parquet part has, kept in the lake's cache by path, size and
    mtime: reading every footer of a big lake (one file per table and day) costs about a second
    per report, and a part never changes once written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.known: dict[str, list[int]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.seen: dict[str, list[int]] = {}
        self.dirty = False
        self.computed: set[tuple[str, str]] = set()  # (table, derived column) some parts lack

    def sizes(self, con: duckdb.DuckDBPyConnection, files: list[Path]) -> set[int]:
        stamps = {}
        for f in files:
            st = f.stat()
            stamps[str(f)] = [st.st_size, st.st_mtime_ns]
        new = [f for f, st in stamps.items() if self.known.get(f, [None, None])[:2] != st]
        if new:
            self.dirty = True
            for name, n in con.execute(f"SELECT file_name, count(*) FROM parquet_schema({_sql_list(new)}) "
                                       "GROUP BY file_name").fetchall():
                self.known[name] = stamps[name] + [n]
        for f in stamps:
            self.seen[f] = self.known[f]
        return {self.seen[f][2] for f in stamps}

    def save(self) -> None:
        """Keep what this connection saw (parts since removed drop out); best effort."""
        if not self.dirty and len(self.seen) == len(self.known):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.seen))
            os.replace(tmp, self.path)
        except OSError:
            pass


def _parquet_select(con: duckdb.DuckDBPyConnection, table: str, files: list[Path], shapes: _Shapes) -> str:
    """SELECT of every lake column of `table` from Parquet `files`.

    Columns that no file has (a field added to events.py after they were written) read as
    NULL of their type, derived columns (schema.DERIVED) as their expression over the event's
    fields. Fields are never removed, so the newest file's schema is the union.
    When every file has as many schema elements as the newest (the common case: one writer
    version), the files are read without union_by_name, which would otherwise make DuckDB
    read every footer again each time a query binds the view.
    """
    newest = max(files, key=lambda f: (f.parent.name, f.stat().st_mtime))
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_str(newest)})").fetchall()}
    mixed = len(shapes.sizes(con, files)) > 1
    src = (f"read_parquet({_sql_list(files)}, hive_partitioning=true, union_by_name={str(mixed).lower()},"
           f" hive_types={{'day': DATE}})")
    base = table.removesuffix("_sample")
    derived = {n: f"({e})::{t}" for n, t, e in schema.DERIVED["*"] + schema.DERIVED.get(base, ())}
    cols = []
    for c, t in schema.lake_columns(base):
        if c in derived and (c not in have or mixed):  # parts older than the column: computed as compaction would
            shapes.computed.add((table, c))
            cols.append(f'coalesce("{c}", {derived[c]}) AS "{c}"' if c in have else f'{derived[c]} AS "{c}"')
        else:
            cols.append(f'"{c}"' if c in have else f'NULL::{t} AS "{c}"')
    return f"SELECT {', '.join(cols)} FROM {src}"


def _parts(table_dir: Path) -> list[Path]:
    """The Parquet parts under table_dir/day=*/, sorted (os.scandir: the listing of a big lake
    is part of every report's fixed cost)."""
    out: list[str] = []
    try:
        days = [e.path for e in os.scandir(table_dir) if e.name.startswith("day=") and e.is_dir()]
    except FileNotFoundError:
        return []
    for d in days:
        out.extend(e.path for e in os.scandir(d) if e.name.endswith(".parquet") and e.is_file())
    return [Path(p) for p in sorted(out)]


def _batches(files: list[Path], max_bytes: int) -> Iterable[list[Path]]:
    batch: list[Path] = []
    size = 0
    for p in files:
        batch.append(p)
        size += p.stat().st_size
        if size >= max_bytes or len(batch) >= 5000:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _struct_literal(cols: dict[str, str]) -> str:
    return "{" + ", ".join(f"{_sql_str(k)}: {_sql_str(v)}" for k, v in cols.items()) + "}"
