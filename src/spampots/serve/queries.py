"""The dashboard's figures: the report's own metric SQL over one snapshot of the lake.

A :class:`Snapshot` is one DuckDB connection over the data dir as it was when taken, with
the report's tables (metrics.run, the same code as `spampots report`), then the Port 25
Management tables (policy.port25.run, on a second connection: it redefines some of the
report's base tables; it is the slow part, so the report's tables are served before it is
done). The JSON is built once per snapshot, so a page load costs no query; drill-downs are
small queries on the snapshot's connection, under a lock.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..analysis import metrics, ports, render
from ..analysis.enrich import Enricher, resolve_asn_db
from ..analysis.lake import Lake, report_memory_limit
from ..policy import port25

SHA256 = re.compile(r"^[0-9a-f]{64}$")
BUCKETS = ("day", "week", "month")
SPLITS = {"protocol": "proto_class(proxy)", "port": "listener_port::VARCHAR", "sensor": "sensor"}
MEASURES = ("emails", "sessions", "requests")
P25_TOP = 20  # rows of the per-country/AS Port 25 tables, as `spampots policy port25`
MAX_ROWS = 200  # drill-down lists: the newest this many
BODY_MAX = 256 * 1024  # message body shown as text: at most this many bytes (the .eml has them all)
SERIES_KEYS_MAX = 12  # a split into more series than this folds the smallest into "other"

# Drill-down dimensions: what a bar or row names, and the condition on smtp_message (m) /
# session_open (s). Country and AS go through ip_info, the report's enrichment of each source.
_DIMS: dict[str, tuple[str, Optional[str]]] = {
    "day": ("m.day = ?::DATE", "s.day = ?::DATE"),
    "week": ("date_trunc('week', m.day) = ?::DATE", "date_trunc('week', s.day) = ?::DATE"),
    "month": ("date_trunc('month', m.day) = ?::DATE", "date_trunc('month', s.day) = ?::DATE"),
    "port": ("m.listener_port = ?::INTEGER", "s.listener_port = ?::INTEGER"),
    "sensor": ("m.sensor = ?", "s.sensor = ?"),
    "protocol": ("proto_class(m.proxy) = ?", None),
    "country": ("i.country = ?", "i.country = ?"),
    "asn": ("i.as_id = ?", "i.as_id = ?"),
    "campaign": ("m.sha256 IN (SELECT sha256 FROM message_campaign WHERE campaign = ?)", None),
    "helo": ("m.helo = ?", None),
    "subject": ("m.subject = ?", None),
    "src_ip": ("m.src_ip = ?", "s.src_ip = ?"),
    "session": ("m.session = ?", "s.session = ?"),
}
DIMS = tuple(_DIMS)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    cache_dir: Optional[Path] = None
    asn_db: Optional[Path] = None
    top: int = 10
    compact: bool = True


def _bucket(b: str) -> str:
    return {"day": "day", "week": "date_trunc('week', day)::DATE", "month": "date_trunc('month', day)::DATE"}[b]


class Snapshot:
    """The figures of the data dir at one moment (see the module's docstring)."""

    def __init__(self, settings: Settings, lake: Lake, enricher: Enricher) -> None:
        t0 = time.perf_counter()
        self.settings = settings
        self.lock = threading.Lock()
        self.timings: dict[str, float] = {}
        table = ports.load([p for p in [settings.data_dir / "ports.toml"] if p.exists()])
        self.con = lake.connect(memory_limit=report_memory_limit())  # as `report`: spills past it
        self._step("connect", t0)
        t = time.perf_counter()
        opts = metrics.Options(top=settings.top)
        report = metrics.run(self.con, ports=table, enricher=enricher, opts=opts)
        # the campaigns the report shows (content campaigns in place of the subject-key table)
        from ..analysis.campaign_report import report_step

        report_step(report, lake, self.con, enricher, top=settings.top)
        report.meta.update(data_dir=str(settings.data_dir), filters="", engine="duckdb")
        self.report = json.loads(render.to_json(report))
        self._step("report", t)
        t = time.perf_counter()
        # the map: the report's own top_countries SQL, with every country
        countries = next(m for m in metrics.METRICS if m.name == "top_countries")
        rows = self.con.execute(countries.query(metrics.Options(top=1000))).fetchall()
        self.countries = [{c.key: render._jsonable(v) for c, v in zip(countries.columns, r)} for r in rows]
        self._step("countries", t)
        t = time.perf_counter()
        self.health = self._health()
        self._step("health", t)
        self.taken = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.port25: Optional[dict[str, Any]] = None  # add_port25 fills it in
        self.seconds = time.perf_counter() - t0
        self._encode()

    @property
    def version(self) -> str:
        """Changes when the page should load the figures again."""
        return f"{self.taken}/{2 if self.port25 is not None else 1}"  # grows as a string: newer is larger

    def add_port25(self, lake: Lake, enricher: Enricher) -> None:
        """The Port 25 Management tables: `policy port25`'s queries on a connection of their own
        (they define tables of the same names as the report's), over the lake as it is now."""
        t = time.perf_counter()
        con = lake.connect(memory_limit=report_memory_limit())  # as `policy port25`
        try:
            p25 = port25.run(con, enricher=enricher, top=P25_TOP)
        finally:
            con.close()
        self._step("port25", t)
        self.seconds += self.timings["port25"]
        self.port25 = json.loads(render.to_json(p25))
        self._encode()

    def _encode(self) -> None:
        self.overview_json = json.dumps(
            {"report": self.report, "port25": self.port25, "countries": self.countries, "health": self.health,
             "taken": self.taken, "version": self.version, "seconds": round(self.seconds, 3),
             "timings": {k: round(v, 3) for k, v in self.timings.items()}},
            ensure_ascii=False, default=str).encode()

    def _step(self, name: str, since: float) -> None:
        self.timings[name] = time.perf_counter() - since

    def _health(self) -> list[dict[str, Any]]:
        """Per sensor: its last heartbeat (uptime, version, age), from sensor_heartbeat."""
        rows = self.con.execute("""
            SELECT sensor, max(ts) AS last_heartbeat, arg_max(uptime_s, ts) AS uptime_s,
                   arg_max(version, ts) AS version, count(*) AS heartbeats,
                   epoch(now()::TIMESTAMP - max(ts)) AS age_s
            FROM sensor_heartbeat GROUP BY sensor ORDER BY sensor""").fetchall()
        keys = ("sensor", "last_heartbeat", "uptime_s", "version", "heartbeats", "age_s")
        return [{k: render._jsonable(v) for k, v in zip(keys, r)} for r in rows]

    def close(self) -> None:
        with self.lock:
            self.con.close()

    def _rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        with self.lock:
            cur = self.con.execute(sql, params)
            keys = [d[0] for d in cur.description]
            return [{k: render._jsonable(v) for k, v in zip(keys, r)} for r in cur.fetchall()]

    def series(self, bucket: str, split: str, measure: str) -> dict[str, Any]:
        """Emails, sessions or proxy requests per day, week or month, split by protocol, port or
        sensor: sums over the report's base tables (msg_cube, sess_cube, req_cube)."""
        if bucket not in BUCKETS or split not in SPLITS or measure not in MEASURES:
            raise ValueError("bad series")
        table, value = {"emails": ("msg_cube", "emails"), "sessions": ("sess_cube", "sessions"),
                        "requests": ("req_cube", "requests")}[measure]
        key = SPLITS[split]
        if measure == "sessions" and split == "protocol":
            key = "coalesce((SELECT protocol FROM port_names p WHERE p.port = listener_port), '?')"
        elif measure == "requests" and split == "port":
            raise ValueError("proxy requests are not kept per listener port in the report's tables")
        where = "WHERE depth = 0" if measure == "requests" else ""
        rows = self._rows(f"""SELECT {_bucket(bucket)} AS t, {key} AS k, sum({value})::BIGINT AS n
                              FROM {table} {where} GROUP BY ALL ORDER BY t, k""", [])
        totals: dict[str, int] = {}
        for r in rows:
            totals[str(r["k"])] = totals.get(str(r["k"]), 0) + r["n"]
        ranked = sorted(totals, key=lambda k: (-totals[k], k))
        keep = ranked if len(ranked) <= SERIES_KEYS_MAX else ranked[:SERIES_KEYS_MAX - 1]
        points: dict[str, dict[str, int]] = {}
        for r in rows:
            k = str(r["k"]) if str(r["k"]) in keep else "other"
            slot = points.setdefault(r["t"], {})
            slot[k] = slot.get(k, 0) + r["n"]
        keys = keep + (["other"] if len(keep) < len(totals) else [])
        return {"bucket": bucket, "split": split, "measure": measure, "keys": keys,
                "points": [{"t": t, "values": v} for t, v in sorted(points.items())]}

    def drill(self, filters: dict[str, str]) -> dict[str, Any]:
        """The sessions and messages a bar or row stands for (the newest MAX_ROWS of each)."""
        unknown = set(filters) - set(_DIMS)
        if unknown or not filters:
            raise ValueError("unknown or no filter")
        m_cond = [_DIMS[d][0] for d in filters]
        params = list(filters.values())
        messages = self._rows(f"""
            SELECT m.ts, m.sensor, m.session, m.src_ip, m.listener_port AS port, proto_class(m.proxy) AS protocol,
                   m.helo, m.mail_from, m.n_rcpts AS rcpts, m.subject, m.sha256, m.target_host
            FROM smtp_message m LEFT JOIN ip_info i ON i.ip_key = m.ip_key
            WHERE {' AND '.join(m_cond)} ORDER BY m.ts DESC LIMIT {MAX_ROWS}""", params)
        if all(_DIMS[d][1] for d in filters):
            s_cond = " AND ".join(_DIMS[d][1] for d in filters)  # type: ignore[misc]
            s_params = params
        else:  # a message-only filter: the sessions of the matching messages
            s_cond = f"""s.session IN (SELECT m.session FROM smtp_message m LEFT JOIN ip_info i
                         ON i.ip_key = m.ip_key WHERE {' AND '.join(m_cond)})"""
            s_params = params
        sessions = self._rows(f"""
            SELECT s.ts, s.sensor, s.session, s.src_ip, s.listener_port AS port, i.country, i.as_name
            FROM session_open s LEFT JOIN ip_info i ON i.ip_key = s.ip_key
            WHERE {s_cond} ORDER BY s.ts DESC LIMIT {MAX_ROWS}""", s_params)
        return {"filters": filters, "sessions": sessions, "messages": messages, "limit": MAX_ROWS}

    def message_events(self, sha: str) -> list[dict[str, Any]]:
        return self._rows("""SELECT ts, sensor, session, src_ip, src_port, listener_port AS port, helo, mail_from,
                                    rcpts, subject, header_from, message_id, via, target_host, target_port, size
                             FROM smtp_message WHERE sha256 = ? ORDER BY ts LIMIT 50""", [sha])


def message_view(raw: bytes) -> dict[str, Any]:
    """Headers (name, value) and the body as text, for showing; never HTML. The parts of a
    multipart message are shown as their text, one after the other, with their type."""
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw[:4 * BODY_MAX])
    headers = [(str(k), str(v)) for k, v in msg.items()[:500]]
    head_end = raw.find(b"\r\n\r\n")
    head_end = raw.find(b"\n\n") if head_end < 0 else head_end
    body = raw[head_end:].lstrip(b"\r\n") if head_end >= 0 else b""
    parts = []
    for part in msg.walk() if msg.is_multipart() else [msg]:
        if part.is_multipart():
            continue
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:  # a broken transfer encoding: shown raw below
            payload = b""
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload[:BODY_MAX].decode(charset, "replace")
        except LookupError:
            text = payload[:BODY_MAX].decode("utf-8", "replace")
        parts.append({"type": part.get_content_type(), "text": text, "bytes": len(payload)})
        if len(parts) >= 20:
            break
    return {"headers": headers, "size": len(raw), "parts": parts,
            "raw_body": body[:BODY_MAX].decode("utf-8", "replace"), "truncated": len(body) > BODY_MAX}


class Figures:
    """The current snapshot, replaced by a fresh one on refresh (old readers keep theirs)."""

    def __init__(self, settings: Settings, *, quiet: bool = True) -> None:
        self.settings = settings
        self.lake = Lake(settings.data_dir, cache_dir=settings.cache_dir)
        self.enricher = Enricher(resolve_asn_db(settings.asn_db),
                                 cache_dir=self.lake.root / "_cache", quiet=quiet)
        self.current: Optional[Snapshot] = None
        self._refreshing = threading.Lock()

    def refresh(self) -> Snapshot:
        with self._refreshing:
            if self.settings.compact:
                try:
                    self.lake.compact(quiet=True)
                except PermissionError:
                    pass  # a data dir not ours to write: the segments are read as JSON
            snap = Snapshot(self.settings, self.lake, self.enricher)
            old, self.current = self.current, snap
            if old is not None:
                old.close()
            # the report's tables are served from here on; the Port 25 ones (slower) follow
            snap.add_port25(self.lake, self.enricher)
        return snap

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
