"""Sensor availability from heartbeats: hours up and the gaps between.

A sensor emits ``spampots.sensor.start``, then ``spampots.sensor.heartbeat`` every
``heartbeat_interval_s``, and ``spampots.sensor.stop`` on a clean exit. It counts as
up between two consecutive beats when they are at most ``tolerance * interval``
apart and no stop/start lies between them; any other stretch is a gap. The same
rule in SQL over the lake's ``sensor_heartbeat``/``sensor_start``/``sensor_stop``
tables is ``spampots.analysis.metrics.AVAILABILITY_SQL`` (the report's ``availability``
table; tests/test_analysis_availability.py checks the two agree). Change both together.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..events import SensorHeartbeat, SensorStart, SensorStop
from ..store.catalog import iter_events

START, BEAT, STOP = "start", "heartbeat", "stop"


@dataclass
class Availability:
    sensor: str
    up_s: float = 0.0
    window_s: float = 0.0
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (from, to), unix time
    last_beat: Optional[float] = None

    @property
    def up_fraction(self) -> float:
        return self.up_s / self.window_s if self.window_s > 0 else 0.0

    @property
    def longest_gap_s(self) -> float:
        return max((b - a for a, b in self.gaps), default=0.0)


def ts_seconds(ts: str) -> Optional[float]:
    try:
        return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def availability(
    beats: Iterable[tuple[str, float, str]],
    *,
    since: float,
    until: float,
    interval_s: float = 60.0,
    tolerance: float = 2.5,
) -> dict[str, Availability]:
    """Per sensor: up time and gaps within [since, until] from (sensor, unix time, kind) beats."""
    limit = interval_s * tolerance
    by: dict[str, list[tuple[float, str]]] = {}
    for sensor, t, kind in beats:
        by.setdefault(sensor, []).append((t, kind))
    out: dict[str, Availability] = {}
    for sensor, seq in by.items():
        seq.sort()
        av = Availability(sensor, window_s=until - since, last_beat=seq[-1][0])
        spans: list[tuple[float, float, bool]] = []  # (from, to, up)
        prev: Optional[tuple[float, str]] = None
        for t, kind in seq:
            if prev is None:  # the window opened less than one beat ago: up if this is not a start
                spans.append((since, t, t - since <= limit and kind != START))
            else:
                up = t - prev[0] <= limit and prev[1] != STOP and kind != START
                spans.append((prev[0], t, up))
            prev = (t, kind)
        assert prev is not None
        tail_up = until - prev[0] <= limit and prev[1] != STOP
        spans.append((prev[0], until, tail_up))
        for a, b, up in spans:
            a, b = max(a, since), min(b, until)
            if b <= a:
                continue
            if up:
                av.up_s += b - a
            elif av.gaps and av.gaps[-1][1] >= a:
                av.gaps[-1] = (av.gaps[-1][0], b)
            else:
                av.gaps.append((a, b))
        out[sensor] = av
    return out


def beats_from_store(data_dir: Path, since: float, until: float) -> list[tuple[str, float, str]]:
    """(sensor, time, kind) of start/heartbeat/stop events stored in [since, until]."""
    day = dt.datetime.fromtimestamp(since - 86400, dt.timezone.utc).date()
    out: list[tuple[str, float, str]] = []
    kinds = {SensorStart: START, SensorHeartbeat: BEAT, SensorStop: STOP}
    for ev in iter_events(data_dir, since_day=day):
        kind = kinds.get(type(ev))
        if kind is None:
            continue
        t = ts_seconds(ev.ts)
        if t is not None and since <= t <= until:
            out.append((ev.sensor, t, kind))
    return out
