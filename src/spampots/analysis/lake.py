"""The Parquet lake: compaction of closed event segments, and views over lake + open segments.

Layout under ``<data_dir>/lake``::

    <table>/day=YYYY-MM-DD/part-<batch>.parquet   one table per event type (schema.py)
    _manifest.jsonl                                 one line per compacted segment

A closed segment (``events/<day>/*.jsonl.zst``, with no ``.jsonl`` twin still being
written) is compacted once; the manifest records it. Parts whose batch never reached
the manifest (a crash between the Parquet write and the manifest line) are removed
on the next run, so a segment is never counted twice. Open segments (``*.jsonl``,
possibly with a torn last line) are read straight from JSON at report time, so a
report sees data up to now. The event segments stay the source of truth: the lake
can be dropped and rebuilt (``compact --rebuild``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import duckdb

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

from . import progress, schema

MANIFEST = "_manifest.jsonl"
# Also offered unfiltered as <name>_all: what the listeners were is true whatever the report's range.
UNFILTERED = ("sensor_start",)


def _sql_str(s: str | Path) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _sql_list(paths: Iterable[Path]) -> str:
    return "[" + ", ".join(_sql_str(p) for p in paths) + "]"


def new_connection(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute(f"SET memory_limit = {_sql_str(memory_limit)}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(schema.MACROS)
    return con


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
    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.events_dir = self.data_dir / "events"
        self.root = self.data_dir / "lake"
        self.batch_bytes = 256 << 20  # compressed segment bytes compacted together

    # -- bookkeeping -------------------------------------------------------------------------
    def _manifest(self) -> dict[str, dict]:
        path = self.root / MANIFEST
        out: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    out[rec["segment"]] = rec
                except (ValueError, KeyError):
                    continue  # a torn manifest line: its batch is treated as never finished
        return out

    def _drop_orphans(self, batches: set[str]) -> None:
        for part in self.root.glob("*/day=*/part-*.parquet"):
            if part.stem.split("-")[1] not in batches:
                part.unlink()

    def segments(self) -> Segments:
        seg = Segments()
        if not self.events_dir.is_dir():
            return seg
        done = self._manifest()
        for day_dir in sorted(self.events_dir.iterdir()):
            if not day_dir.is_dir():
                continue
            for p in sorted(day_dir.iterdir()):
                if p.name.endswith(".jsonl"):
                    seg.open.append(p)
                elif p.name.endswith(".jsonl.zst"):
                    if p.with_name(p.name[:-4]).exists():
                        continue  # being closed right now: the .jsonl twin is read as open
                    if self._rel(p) in done:
                        seg.compacted += 1
                    else:
                        seg.closed.append(p)
        return seg

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
        manifest = self._manifest()
        self._drop_orphans({r["batch"] for r in manifest.values()})
        seg = self.segments()
        stats = CompactStats()
        if not seg.closed:
            return stats
        con = con or new_connection()
        with progress.bar("compacting", total=len(seg.closed), quiet=quiet) as tick:
            for files in _batches(seg.closed, self.batch_bytes):
                batch = uuid.uuid4().hex[:16]
                n, parts, days = self._compact_batch(con, files, batch)
                with open(self.root / MANIFEST, "a") as m:
                    m.write("".join(json.dumps({"segment": self._rel(p), "size": p.stat().st_size,
                                                "batch": batch}) + "\n" for p in files))
                    m.flush()
                    os.fsync(m.fileno())
                stats.segments += len(files)
                stats.events += n
                stats.parts += parts
                stats.days |= days
                tick(len(files))
        return stats

    def _compact_batch(self, con: duckdb.DuckDBPyConnection, files: Sequence[Path],
                       batch: str) -> tuple[int, int, set[str]]:
        cols = schema.json_columns()
        con.execute(f"""CREATE OR REPLACE TEMP TABLE raw AS
            SELECT * FROM read_json({_sql_list(files)}, format='newline_delimited',
                                    columns={_struct_literal(cols)}, ignore_errors=true)
            WHERE event IS NOT NULL AND ts IS NOT NULL""")
        total = con.execute("SELECT count(*) FROM raw").fetchone()[0]
        parts = 0
        days: set[str] = set()
        present = dict(con.execute("SELECT event, count(*) FROM raw GROUP BY 1").fetchall())
        for name, table in schema.TABLES.items():
            if not present.get(table.event):
                continue
            con.execute(f"""CREATE OR REPLACE TEMP TABLE t AS
                SELECT {schema.select_list(name, cols)}, ts::DATE AS day FROM raw
                WHERE event = {_sql_str(table.event)}""")
            body = self._flags(con, name, "t")
            out = self.root / name
            out.mkdir(parents=True, exist_ok=True)
            con.execute(f"""COPY ({body}) TO {_sql_str(out)} (FORMAT parquet, COMPRESSION zstd,
                PARTITION_BY (day), OVERWRITE_OR_IGNORE, FILENAME_PATTERN 'part-{batch}-{{i}}')""")
            written = [r[0] for r in con.execute("SELECT DISTINCT day FROM t").fetchall()]
            parts += len(written)
            days.update(d.isoformat() for d in written)
        con.execute("DROP TABLE IF EXISTS raw; DROP TABLE IF EXISTS t")
        return total, parts, days

    def _flags(self, con: duckdb.DuckDBPyConnection, name: str, src: str) -> str:
        """SELECT over `src` adding the per-session flags of table `name`.

        first_in_session: the earliest proxy.request of its session, where sessions already
        in the lake (same day or the day before: a session can cross midnight) count as
        having had their first request already.
        """
        if name != "proxy_request":
            return f"SELECT * FROM {src}"
        seen = self._parquet_glob(name)
        prior = "SELECT NULL::VARCHAR AS session WHERE false"
        if seen:
            prior = (f"SELECT DISTINCT session FROM read_parquet({_sql_str(seen)}, hive_partitioning=true,"
                     f" hive_types={{'day': DATE}}) WHERE day BETWEEN (SELECT min(day) - 1 FROM {src})"
                     f" AND (SELECT max(day) FROM {src}) AND session IS NOT NULL")
        return f"""SELECT s.*, (row_number() OVER (PARTITION BY s.session ORDER BY s.ts) = 1
                              AND s.session NOT IN ({prior})) AS first_in_session
                   FROM {src} s"""

    def _parquet_glob(self, table: str) -> str | None:
        d = self.root / table
        if any(d.glob("day=*/*.parquet")):
            return str(d / "day=*" / "*.parquet")
        return None

    # -- reading -----------------------------------------------------------------------------
    def connect(self, *, day_from: dt.date | None = None, day_to: dt.date | None = None,
                sensors: Sequence[str] = (), include_closed_uncompacted: bool = False,
                threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per table over lake + open segments, filtered."""
        con = new_connection(threads, memory_limit)
        seg = self.segments()
        json_files = seg.open + (seg.closed if include_closed_uncompacted else [])
        cols = schema.json_columns()
        if json_files:
            con.execute(f"""CREATE TEMP TABLE open_raw AS
                SELECT * FROM read_json({_sql_list(json_files)}, format='newline_delimited',
                                        columns={_struct_literal(cols)}, ignore_errors=true)
                WHERE event IS NOT NULL AND ts IS NOT NULL""")
        where = ["true"]
        if day_from:
            where.append(f"day >= DATE '{day_from.isoformat()}'")
        if day_to:
            where.append(f"day <= DATE '{day_to.isoformat()}'")
        if sensors:
            where.append("sensor IN (" + ", ".join(_sql_str(s) for s in sensors) + ")")
        cond = " AND ".join(where)
        self._view_cond = cond
        self._range = (day_from.isoformat() if day_from else None, day_to.isoformat() if day_to else None)
        for name, table in schema.TABLES.items():
            lake_cols = schema.lake_columns(name)
            pieces = []
            glob = self._parquet_glob(name)
            if glob:
                have = {r[0] for r in con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet({_sql_str(glob)}, hive_partitioning=true,"
                    f" union_by_name=true, hive_types={{'day': DATE}})").fetchall()}
                sel = ", ".join(f'"{c}"' if c in have else f'NULL::{t} AS "{c}"' for c, t in lake_cols)
                pieces.append(f"SELECT {sel} FROM read_parquet({_sql_str(glob)}, hive_partitioning=true,"
                              f" union_by_name=true, hive_types={{'day': DATE}})")
            if json_files:
                src = (f"(SELECT {schema.select_list(name, cols)}, ts::DATE AS day FROM open_raw"
                       f" WHERE event = {_sql_str(table.event)})")
                body = self._flags(con, name, src) if glob or name != "proxy_request" else \
                    self._flags_open_only(src)
                pieces.append(f"SELECT {', '.join(chr(34) + c + chr(34) for c, _ in lake_cols)} FROM ({body})")
            if not pieces:
                pieces.append("SELECT " + ", ".join(f'NULL::{t} AS "{c}"' for c, t in lake_cols) + " WHERE false")
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM ({' UNION ALL '.join(pieces)}) WHERE {cond}")
            if name in UNFILTERED:
                con.execute(f"CREATE VIEW {name}_all AS {' UNION ALL '.join(pieces)}")
        return con

    def sample_view(self, con: duckdb.DuckDBPyConnection, table: str, name: str,
                    fraction: float) -> tuple[int, int]:
        """View `name`: `table` over every k-th compacted file (k = 1/fraction), filtered as the views.

        Sampling whole files (a day each) saves decoding the skipped ones, which a row sample
        would not. Open segments are not in the sample. Returns (files used, files in range).
        """
        lo, hi = self._range
        files = [f for f in sorted((self.root / table).glob("day=*/*.parquet"))
                 if (lo is None or f.parent.name[4:] >= lo) and (hi is None or f.parent.name[4:] <= hi)]
        step = max(1, round(1 / fraction)) if fraction > 0 else 1
        picked = files[::step]
        if picked:
            cols = ", ".join(f'"{c}"' for c, _ in schema.lake_columns(table))
            body = (f"SELECT {cols} FROM read_parquet({_sql_list(picked)}, hive_partitioning=true,"
                    f" union_by_name=true, hive_types={{'day': DATE}})")
        else:
            body = f"SELECT * FROM {table} WHERE false"
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM ({body}) WHERE {self._view_cond}")
        return len(picked), len(files)

    @staticmethod
    def _flags_open_only(src: str) -> str:
        return (f"SELECT s.*, row_number() OVER (PARTITION BY s.session ORDER BY s.ts) = 1 AS first_in_session"
                f" FROM {src} s")


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
