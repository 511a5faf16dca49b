"""``spampots status``: one sensor's health from its data dir, read only.

The figures come from the sensor's newest lifecycle events (``spampots.sensor.start``,
``heartbeat`` or ``stop``, found by reading its segments newest first) and from the disk
now (free space, the shipping cursor). A sensor of several workers has one heartbeat per
worker: the sensor's figures are the newest heartbeat of each worker added up, and each
worker gets a line of its own. The stop event has the figures of all workers together.
The exit status is 0 when healthy, 1 when not (one ``unhealthy:`` line per reason), 2
when there is nothing to judge.

Unhealthy when:
* the sensor never started in this data dir, or its newest lifecycle event is a stop;
* nothing was heard for more than ``STALE_BEATS`` heartbeat intervals (it died, or hangs);
* with workers: one of them was not heard for that long (it hangs, or keeps dying);
* the data dir has less free space than ``--min-free-mb``;
* with shipping: bytes wait for the broker and nothing was acked for ``--ship-stale-s``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Union

import msgspec

from . import config
from .events import MESSAGE, SESSION_CLOSE, PROXY_REQUEST, SensorHeartbeat, SensorStart, SensorStop, decode
from .metrics import Figures, disk_free_bytes, event_fields, sensor_total
from .store.catalog import iter_segment_files
from .store.segments import SEGMENT_RE, ReadStats, iter_file_lines

STALE_BEATS = 3  # heartbeats missed before a running sensor counts as gone
DEFAULT_MIN_FREE_MB = 100.0
DEFAULT_SHIP_STALE_S = 300.0
_MAX_SEGMENTS = 500  # segments read back for the newest lifecycle event
_START_SEGMENTS = 24  # and then at most this many more for its start (listeners, heartbeat interval)

Lifecycle = Union[SensorStart, SensorHeartbeat, SensorStop]


class SensorState(msgspec.Struct, kw_only=True):
    newest: Optional[Lifecycle] = None  # the newest start, heartbeat or stop
    start: Optional[SensorStart] = None  # the start it belongs to, when found
    figures: Optional[Union[SensorHeartbeat, SensorStop]] = None  # the newest with figures
    beats: dict[int, SensorHeartbeat] = {}  # the newest heartbeat of each worker (since the start, if found)


def read_state(data_dir: Path, sensor: str) -> SensorState:
    """The sensor's newest lifecycle events, reading its segments newest first."""
    st = SensorState()
    stats = ReadStats()
    files = iter_segment_files(data_dir, sensor=sensor, stats=stats)
    more = _START_SEGMENTS
    for path in reversed(files[-_MAX_SEGMENTS:]):
        if st.figures is not None:
            if more == 0:
                break  # a long-running sensor: its heartbeats say enough
            more -= 1
        found: list[Lifecycle] = []
        for line in iter_file_lines(path, stats):
            if b'"spampots.sensor.' not in line:
                continue
            try:
                ev = decode(line)
            except (msgspec.DecodeError, ValueError):
                continue
            if isinstance(ev, (SensorStart, SensorHeartbeat, SensorStop)):
                found.append(ev)
        for ev in reversed(found):
            # Newest by time, not by file: a sensor's workers write segments side by side,
            # and the stop (worker 0's) may sit in a file that sorts before another's beats.
            if st.newest is None or ev.ts > st.newest.ts:
                st.newest = ev
            if isinstance(ev, (SensorHeartbeat, SensorStop)) and (st.figures is None or ev.ts > st.figures.ts):
                st.figures = ev
            if isinstance(ev, SensorHeartbeat):
                seen = st.beats.get(ev.worker)
                if seen is None or ev.ts > seen.ts:
                    st.beats[ev.worker] = ev
            if isinstance(ev, SensorStart):
                st.start = ev
                break
        if st.start is not None:
            break
    if st.start is not None:  # beats of an earlier run are not this one's
        st.beats = {k: b for k, b in st.beats.items() if b.ts >= st.start.ts}
    return st


def beat_figures(ev: Union[SensorHeartbeat, SensorStop]) -> Figures:
    """A heartbeat's (or stop's) figures, to add up with metrics.sensor_total."""
    events = []
    for t in ev.tallies:
        for name, n in ((SESSION_CLOSE, t.sessions), (MESSAGE, t.messages), (PROXY_REQUEST, t.proxy_requests)):
            if n:
                events.append((name, t.port, t.protocol, n))
    f = Figures(worker=getattr(ev, "worker", 0), counters=dict(ev.counters), events=events,
                recipients=[(t.port, t.protocol, t.recipients) for t in ev.tallies if t.recipients],
                errors=dict(ev.errors), limits=dict(ev.limit_hits))
    h = ev.health
    if h is not None:
        f.sessions_open, f.recorder_queue, f.store_errors = h.sessions_open, h.recorder_queue, h.store_errors
        f.fsync_counts, f.fsync_sum, f.fsync_max = [h.fsyncs], h.fsync_seconds_sum, h.fsync_seconds_max
        f.disk_free_bytes, f.disk_low = h.disk_free_bytes, h.disk_low
        f.ship_backlog_bytes, f.ship_last_ack_age_s = h.ship_backlog_bytes, h.ship_last_ack_age_s
    return f


def _sum_of_beats(beats: list[SensorHeartbeat]) -> SensorHeartbeat:
    """The workers' newest heartbeats added up, as one heartbeat (the newest's time)."""
    newest = max(beats, key=lambda b: b.ts)
    total = event_fields(sensor_total([beat_figures(b) for b in beats]))
    return msgspec.structs.replace(newest, worker=-1, **total)


def sensors_in(data_dir: Path) -> set[str]:
    out = set()
    for p in iter_segment_files(data_dir):
        m = SEGMENT_RE.match(p.name)
        if m:
            out.add(m["sensor"])
    return out


def _age(ts: str, now: float) -> float:
    from .transport.availability import ts_seconds

    t = ts_seconds(ts)
    return max(0.0, now - t) if t is not None else float("inf")


def _dur(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(s)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def report(data_dir: Path, sensor: str, *, min_free_mb: float, ship_stale_s: float,
           interval_s: float, shipping: bool, now: Optional[float] = None) -> tuple[list[str], list[str]]:
    """(lines to print, reasons it is unhealthy)."""
    now = time.time() if now is None else now
    st = read_state(data_dir, sensor)
    lines: list[str] = []
    bad: list[str] = []
    ev = st.newest
    if ev is None:
        return [f"sensor {sensor} in {data_dir}: never started here"], [
            f"no spampots.sensor.start of sensor {sensor} in {data_dir}"]
    if st.start is not None and st.start.heartbeat_interval_s > 0:
        interval_s = st.start.heartbeat_interval_s
    age = _age(ev.ts, now)
    if isinstance(ev, SensorStop):
        lines.append(f"sensor {sensor} in {data_dir}: stopped {_dur(age)} ago ({ev.ts}), "
                     f"after {_dur(ev.uptime_s)} up")
        bad.append(f"sensor stopped at {ev.ts}")
    else:
        up = ev.uptime_s if isinstance(ev, SensorHeartbeat) else 0.0
        lines.append(f"sensor {sensor} in {data_dir}: running, up {_dur(up + age)}; last heard "
                     f"{_dur(age)} ago ({ev.ts}), heartbeat every {interval_s:g} s")
        if age > STALE_BEATS * interval_s:
            bad.append(f"no heartbeat for {_dur(age)} (more than {STALE_BEATS} intervals of "
                       f"{interval_s:g} s): the sensor died or hangs")
    if st.start is not None:
        lines.append("listeners: " + (" ".join(f"{x.port}/{x.kind}" for x in st.start.listeners) or "none")
                     + (f"; failed: {' '.join(str(x.port) for x in st.start.failed)}" if st.start.failed else ""))
    workers = st.start.workers if st.start is not None else 1
    fig = st.figures
    if isinstance(ev, SensorStop):
        fig = ev  # the sensor's figures, all workers together
    elif st.beats and (workers > 1 or len(st.beats) > 1):
        fig = _sum_of_beats(list(st.beats.values()))
    if workers > 1 or len(st.beats) > 1:
        # a worker's silence is its own reason only while the sensor as a whole is heard
        heard = not isinstance(ev, SensorStop) and age <= STALE_BEATS * interval_s
        lines += _worker_lines(st, workers, interval_s, now, running=heard, bad=bad)
    if fig is not None:
        added = isinstance(fig, SensorHeartbeat) and fig.worker == -1
        lines.append(f"figures of {fig.ts}" + (f" ({len(st.beats)} workers added up)" if added else "") + ":")
        for t in fig.tallies:
            lines.append(f"  port {t.port} {t.protocol}: sessions {t.sessions}, messages {t.messages}, "
                         f"recipients {t.recipients}, proxy requests {t.proxy_requests}")
        if fig.errors:
            lines.append("  protocol errors: " + ", ".join(f"{k} {v}" for k, v in sorted(fig.errors.items())))
        if fig.limit_hits:
            lines.append("  limit hits: " + ", ".join(f"{k} {v}" for k, v in sorted(fig.limit_hits.items())))
        h = fig.health
        if h is not None:
            mean = h.fsync_seconds_sum / h.fsyncs * 1000 if h.fsyncs else 0.0
            lines.append(f"  sessions open {h.sessions_open}, recorder queue {h.recorder_queue}, "
                         f"store errors {h.store_errors}, fsyncs {h.fsyncs} (mean {mean:.2f} ms, "
                         f"max {h.fsync_seconds_max * 1000:.2f} ms)")
        if fig.counters.get("accept_errors"):
            lines.append(f"  accept errors {fig.counters['accept_errors']}")
    free = disk_free_bytes(data_dir)
    if free >= 0:
        lines.append(f"disk: {_mb(free)} free in {data_dir} (floor {min_free_mb:g} MB)")
        if free < min_free_mb * 1e6:
            bad.append(f"disk: {_mb(free)} free in {data_dir}, below the floor of {min_free_mb:g} MB "
                       "(a sensor with this [store] min_free_mb refuses mail with 452 until there is room)")
    lines += _shipping(data_dir, sensor, st, now, ship_stale_s, shipping, bad)
    return lines, bad


def _worker_lines(st: SensorState, workers: int, interval_s: float, now: float, *, running: bool,
                  bad: list[str]) -> list[str]:
    """One line per worker: when it was last heard, and what it holds and stored."""
    since = _age(st.start.ts, now) if st.start is not None else float("inf")
    out = []
    for k in range(max(workers, max(st.beats, default=-1) + 1)):
        b = st.beats.get(k)
        if b is None:
            out.append(f"worker {k}: no heartbeat yet")
            if running and since > STALE_BEATS * interval_s:
                bad.append(f"worker {k}: no heartbeat since the start {_dur(since)} ago")
            continue
        age = _age(b.ts, now)
        opened = b.health.sessions_open if b.health is not None else 0
        out.append(f"worker {k}: last heard {_dur(age)} ago, up {_dur(b.uptime_s + age)}, sessions open {opened}, "
                   f"messages {sum(t.messages for t in b.tallies)}")
        if running and age > STALE_BEATS * interval_s:
            bad.append(f"worker {k}: no heartbeat for {_dur(age)} (more than {STALE_BEATS} intervals of "
                       f"{interval_s:g} s): it hangs, or dies again and again")
    return out


def _shipping(data_dir: Path, sensor: str, st: SensorState, now: float, stale_s: float,
              configured: bool, bad: list[str]) -> list[str]:
    from .store.catalog import load_cursor
    from .transport.shipper import SHIP_DIR, backlog

    cursor_path = data_dir / SHIP_DIR / f"{sensor}.cursor"
    exists = cursor_path.exists()
    if not (exists or configured):
        return []
    try:
        cursor = load_cursor(cursor_path)
    except RuntimeError as e:
        bad.append(str(e))
        return []
    waiting, segs = backlog(data_dir, sensor, cursor)
    if exists:
        since = now - cursor_path.stat().st_mtime
        line = f"shipping: {waiting:,} bytes in {segs} segments not acked; last ack {_dur(since)} ago"
    else:
        since = _age(st.start.ts, now) if st.start is not None else float("inf")
        line = f"shipping: {waiting:,} bytes in {segs} segments not acked; nothing acked yet"
    if waiting and since > stale_s:
        bad.append(f"shipping: {waiting:,} bytes wait and nothing was acked for {_dur(since)} "
                   f"(more than {stale_s:g} s)")
    return [line]


def cmd_status(args: argparse.Namespace) -> int:
    cfg = config.load(getattr(args, "config", None))
    data_dir = config.resolve_data_dir(getattr(args, "data_dir", None), cfg)
    if not data_dir.is_dir():
        print(f"spampots status: no data directory {data_dir}", file=sys.stderr)
        return 2
    sensor = args.sensor or cfg.sensor.id
    if not sensor:
        found = sensors_in(data_dir)
        sensor = found.pop() if len(found) == 1 else cfg.sensor_id
    min_free = args.min_free_mb
    if min_free is None:
        min_free = getattr(cfg.store, "min_free_mb", None) or DEFAULT_MIN_FREE_MB
    lines, bad = report(data_dir, sensor, min_free_mb=min_free, ship_stale_s=args.ship_stale_s,
                        interval_s=cfg.sensor.heartbeat_interval_s, shipping=cfg.transport.nats is not None)
    print("\n".join(lines))
    for reason in bad:
        print(f"unhealthy: {reason}")
    if not bad:
        print("healthy")
    return 1 if bad else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from .cli import add_data_dir_options

    p = subparsers.add_parser(
        "status", help="one sensor's health and figures from its data dir; exit 1 when unhealthy",
        description="Print one sensor's figures (from its newest heartbeat or stop, and the disk now) "
                    "and judge its health, reading only. Exit 0 healthy, 1 unhealthy (with one "
                    "'unhealthy:' line per reason), 2 nothing to judge.")
    add_data_dir_options(p)  # --data-dir and --config, as every reader of a data dir
    p.add_argument("--sensor", default=None,
                   help="sensor id (default: the config's, else the only sensor in the data dir, "
                        "else the host name)")
    p.add_argument("--min-free-mb", type=float, default=None,
                   help="unhealthy below this much free space in the data dir (default: the config's "
                        f"[store] min_free_mb, where the sensor refuses mail; {DEFAULT_MIN_FREE_MB:g} when that is 0)")
    p.add_argument("--ship-stale-s", type=float, default=DEFAULT_SHIP_STALE_S,
                   help="with shipping: unhealthy when bytes wait and nothing was acked for this long "
                        f"(default {DEFAULT_SHIP_STALE_S:g})")
    p.set_defaults(func=cmd_status)
