"""Message features and campaigns in the lake: computed once, kept next to the event tables.

Under the lake's root (lake.Lake.root)::

    message_features/part-<batch>.parquet   one row per stored body (sha256), message_features.parse
    campaigns/layouts.parquet               layout_hash -> campaign, first seen (every layout assigned)
    campaigns/reps.parquet                  the campaigns' representatives (campaigns.CampaignIndex)
    campaigns/templates.parquet             campaign -> template
    campaigns/_lock                          held while either is updated

:func:`update` parses the bodies the lake's smtp_message events name that have no features
yet (reading them from the message store), then assigns the layouts not yet assigned to
campaigns, old ones first. Both steps only ever add: a campaign's id never changes. The lake
can be rebuilt (``compact --rebuild``): features and campaigns are rebuilt from the store in
order of first appearance, which gives the same ids.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from . import campaigns as cp
from .message_features import Limits, parse

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FEATURES = "message_features"
CAMPAIGNS = "campaigns"
BATCH = 20_000  # bodies parsed per Parquet part
TEMPLATE_SAMPLE = 50  # member layouts a template is computed from

_STR = pa.string()
_LIST = pa.list_(pa.string())
FEATURE_SCHEMA = pa.schema([
    ("sha256", _STR), ("size", pa.int64()), ("subject", _STR), ("from_domain", _STR),
    ("reply_to_domain", _STR), ("message_id_shape", _STR), ("x_mailer", _STR), ("date_skew_s", pa.float64()),
    ("parts", _STR), ("n_parts", pa.int32()), ("attachments", _LIST), ("text", _STR), ("urls", _LIST),
    ("url_domains", _LIST), ("emails", _LIST), ("phones", _LIST), ("language", _STR), ("layout", _STR),
    ("layout_hash", _STR), ("tlsh", _STR), ("defects", _STR), ("missing", pa.bool_()),
])


@dataclass
class UpdateStats:
    parsed: int = 0
    missing: int = 0  # bodies named by events but not in the store (retention, another data dir, not yet)
    defects: dict[str, int] = field(default_factory=dict)
    layouts: int = 0  # newly assigned
    campaigns_new: int = 0
    campaigns: int = 0


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def feature_files(root: Path) -> list[Path]:
    return sorted((root / FEATURES).glob("part-*.parquet"))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    d = root / CAMPAIGNS
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "_lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _row(f, missing: bool = False) -> dict:
    d = msgspec.structs.asdict(f)
    d["parts"] = msgspec.json.encode(f.parts).decode()
    d["n_parts"] = len(f.parts)
    d["defects"] = json.dumps(f.defects, sort_keys=True)
    d["missing"] = missing
    return d


def _write(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp, compression="zstd")
    os.replace(tmp, path)


def update_features(con: duckdb.DuckDBPyConnection, data_dir: Path, root: Path,
                    limits: Limits = Limits(), stats: Optional[UpdateStats] = None) -> UpdateStats:
    """Parse every body named by `con`'s smtp_message view that has no features in `root`."""
    from ..store.messages import MessageStore

    stats = stats or UpdateStats()
    done = feature_files(root)
    have = f"read_parquet({_sql_list(done)})" if done else "(SELECT NULL::VARCHAR AS sha256, NULL::BOOLEAN AS missing)"
    # Bodies parsed are done; bodies found missing before are tried again when the store has them
    # now (a collector may store an event before its body), without another row while it has not.
    cands = con.execute(f"""SELECT DISTINCT sha256, sha256 IN (SELECT sha256 FROM {have} WHERE missing)
                            FROM smtp_message WHERE sha256 IS NOT NULL AND sha256 <> ''
                              AND sha256 NOT IN (SELECT sha256 FROM {have} WHERE NOT coalesce(missing, false)
                                                 AND sha256 IS NOT NULL)""").fetchall()
    if not cands:
        return stats
    store = None
    if (data_dir / "messages").is_dir():  # a reader whose lake is not in the data dir leaves nothing
        store = MessageStore(data_dir, readonly=True, scan=root != data_dir / "lake")  # there, not even -shm
    try:
        stubbed = {sha for sha, stub in cands if stub}
        stats.missing += sum(1 for sha in stubbed if store is None or sha not in store)
        want = [sha for sha, stub in cands if not stub or (store is not None and sha in store)]
        if not want:
            return stats
        con.register("_want", pa.table({"sha256": want}))
        todo = con.execute("""SELECT sha256, epoch(min(ts)), arg_min(rcpts, ts) FROM smtp_message
                              WHERE sha256 IN (SELECT sha256 FROM _want)
                              GROUP BY sha256 ORDER BY min(ts), sha256""").fetchall()
        con.unregister("_want")
        for start in range(0, len(todo), BATCH):
            rows = []
            for sha, ts, rcpts in todo[start:start + BATCH]:
                raw = None
                if store is not None:
                    try:
                        raw = store.get(sha)
                    except (KeyError, ValueError, OSError):
                        raw = None
                if raw is None:  # the event stays; the body is not here (yet) to parse
                    stats.missing += 1
                    rows.append({"sha256": sha, "missing": True})
                    continue
                f = parse(raw, received=ts, rcpts=list(rcpts or []), limits=limits, sha256=sha)
                for k, v in f.defects.items():
                    stats.defects[k] = stats.defects.get(k, 0) + v
                rows.append(_row(f))
                stats.parsed += 1
            if rows:
                _write(root / FEATURES / f"part-{uuid.uuid4().hex[:16]}.parquet", rows, FEATURE_SCHEMA)
    finally:
        if store is not None:
            store.close()
    return stats


LAYOUT_SCHEMA = pa.schema([("layout_hash", _STR), ("campaign", _STR), ("first_ts", pa.float64())])
REP_SCHEMA = pa.schema([("campaign", _STR), ("layout_hash", _STR), ("items", pa.list_(pa.int64()))])
TEMPLATE_SCHEMA = pa.schema([("campaign", _STR), ("template", _STR)])


def load_index(root: Path) -> tuple[cp.CampaignIndex, dict[str, float]]:
    """The campaigns so far, and each assigned layout's first appearance (UNIX time)."""
    d = root / CAMPAIGNS
    reps: list[cp.Rep] = []
    assigned: dict[str, str] = {}
    first: dict[str, float] = {}
    if (d / "reps.parquet").exists():
        for r in pq.read_table(d / "reps.parquet").to_pylist():
            reps.append(cp.Rep(r["campaign"], r["layout_hash"], frozenset(r["items"])))
    if (d / "layouts.parquet").exists():
        t = pq.read_table(d / "layouts.parquet")
        hashes = t.column("layout_hash").to_pylist()
        assigned = dict(zip(hashes, t.column("campaign").to_pylist()))
        if "first_ts" in t.column_names:
            first = dict(zip(hashes, t.column("first_ts").to_pylist()))
    return cp.CampaignIndex(reps=reps, assigned=assigned), first


def update_campaigns(con: duckdb.DuckDBPyConnection, root: Path,
                     stats: Optional[UpdateStats] = None) -> UpdateStats:
    """Assign the layouts of `root`'s features not yet in a campaign (see campaigns.py).

    Reads the features (one row per body: small next to the events) and, only when there are
    new layouts, the events of their bodies for when each was first seen."""
    stats = stats or UpdateStats()
    files = feature_files(root)
    if not files:
        return stats
    idx, first = load_index(root)
    stats.campaigns = len(set(idx.assigned.values()))
    con.execute(f"CREATE OR REPLACE TEMP VIEW _feat AS SELECT * FROM read_parquet({_sql_list(files)})"
                " WHERE layout_hash IS NOT NULL")
    rows = [r for r in con.execute("SELECT layout_hash, any_value(layout), count(*) FROM _feat GROUP BY 1").fetchall()
            if r[0] not in idx.assigned]
    if not rows:
        return stats
    con.register("_new", pa.table({"layout_hash": [r[0] for r in rows]}))
    ts = dict(con.execute("""SELECT f.layout_hash, epoch(min(m.ts)) FROM _feat f JOIN smtp_message m USING (sha256)
                             WHERE f.layout_hash IN (SELECT layout_hash FROM _new) GROUP BY 1""").fetchall())
    con.unregister("_new")
    known = set(idx.assigned.values())
    out = idx.add(cp.Layout(h, lay or "", ts.get(h) or 0.0, n) for h, lay, n in rows)
    first.update({h: ts.get(h) or 0.0 for h in out})
    stats.layouts += len(out)
    stats.campaigns_new += len(set(out.values()) - known)
    stats.campaigns = len(set(idx.assigned.values()))
    d = root / CAMPAIGNS
    _write(d / "reps.parquet", [{"campaign": r.campaign, "layout_hash": r.layout_hash, "items": sorted(r.items)}
                                for r in idx.reps], REP_SCHEMA)
    _write(d / "layouts.parquet", [{"layout_hash": h, "campaign": c, "first_ts": first.get(h, 0.0)}
                                   for h, c in idx.assigned.items()], LAYOUT_SCHEMA)
    _update_templates(con, root, idx, first, set(out.values()))
    return stats


def _update_templates(con: duckdb.DuckDBPyConnection, root: Path, idx: cp.CampaignIndex,
                      first: dict[str, float], touched: set[str]) -> None:
    """Templates of the `touched` campaigns, from their first TEMPLATE_SAMPLE layouts."""
    path = root / CAMPAIGNS / "templates.parquet"
    old = {r["campaign"]: r["template"] for r in pq.read_table(path).to_pylist()} if path.exists() else {}
    members: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for h, c in idx.assigned.items():
        if c in touched:
            members[c].append((first.get(h, 0.0), h))
    sample = {c: [h for _, h in sorted(ms)[:TEMPLATE_SAMPLE]] for c, ms in members.items()}
    con.register("_want", pa.table({"layout_hash": [h for hs in sample.values() for h in hs]}))
    by_hash = dict(con.execute("SELECT layout_hash, any_value(layout) FROM _feat WHERE layout_hash IN "
                               "(SELECT layout_hash FROM _want) GROUP BY 1").fetchall())
    con.unregister("_want")
    for c, hs in sample.items():
        old[c] = cp.template([by_hash[h] or "" for h in hs if h in by_hash])
    _write(path, [{"campaign": c, "template": t} for c, t in old.items()], TEMPLATE_SCHEMA)


def update(lake, *, limits: Limits = Limits(), memory_limit: Optional[str] = None,  # noqa: ANN001 - lake.Lake
           threads: Optional[int] = None) -> UpdateStats:
    """Features for new bodies, then campaigns for new layouts, under the campaigns lock.

    Its DuckDB connection has the report's bounds: `memory_limit` (default
    lake.report_memory_limit(), as `spampots report`), spilling beyond it into the lake's spill
    dir (lake.connect), and `threads` (default all cores).
    """
    from .lake import report_memory_limit

    stats = UpdateStats()
    with _locked(lake.root):
        con = lake.connect(memory_limit=memory_limit or report_memory_limit(), threads=threads)
        try:
            update_features(con, lake.data_dir, lake.root, limits, stats)
            update_campaigns(con, lake.root, stats)
        finally:
            con.close()
    return stats


def create_views(con: duckdb.DuckDBPyConnection, root: Path) -> bool:
    """Views message_features, campaign_layout, campaign_template and message_campaign
    (sha256 -> campaign) on `con`; False (and empty views) if nothing was computed yet."""
    files = feature_files(root)
    d = root / CAMPAIGNS
    have = bool(files) and (d / "layouts.parquet").exists()
    if files:
        con.execute(f"CREATE OR REPLACE VIEW message_features AS SELECT * FROM read_parquet({_sql_list(files)})"
                    " WHERE NOT coalesce(missing, false)")
    else:
        cols = ", ".join(f"NULL::{_duck(t)} AS {n}" for n, t in zip(FEATURE_SCHEMA.names, FEATURE_SCHEMA.types))
        con.execute(f"CREATE OR REPLACE VIEW message_features AS SELECT {cols} WHERE false")
    for name, fname, schema in (("campaign_layout", "layouts.parquet", LAYOUT_SCHEMA),
                                ("campaign_template", "templates.parquet", TEMPLATE_SCHEMA)):
        if (d / fname).exists():
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({_sql_list([d / fname])})")
        else:
            cols = ", ".join(f"NULL::{_duck(t)} AS {n}" for n, t in zip(schema.names, schema.types))
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {cols} WHERE false")
    con.execute("""CREATE OR REPLACE VIEW message_campaign AS
                   SELECT f.sha256, l.campaign FROM message_features f JOIN campaign_layout l USING (layout_hash)""")
    return have


def _duck(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return "VARCHAR[]"
    return {pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}.get(t, "VARCHAR")
