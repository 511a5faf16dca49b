"""The report's `availability` table: hours up and gaps per sensor from heartbeats.

The SQL (metrics.AVAILABILITY_SQL) is checked against the Python rule of
spampots.transport.availability on random beat sequences, and end to end through the lake
and every renderer on a hand-made day with a silent stretch and a restart.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import statistics
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spampots import events as ev
from spampots.analysis import metrics, render
from spampots.store.segments import SegmentWriter
from spampots.transport import availability as avail

from test_analysis_pipeline import report, rows

T0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.timezone.utc)
KINDS = {"start": ev.SensorStart, "heartbeat": ev.SensorHeartbeat, "stop": ev.SensorStop}


def _sql(beats: list[tuple], sql: str = metrics.AVAILABILITY_SQL, key: int = 1) -> dict:
    """Run an availability SQL over in-memory sensor_start/heartbeat/stop tables; beats are
    (sensor, time, kind) or (sensor, time, kind, worker). Rows by their first ``key`` columns."""
    con = duckdb.connect()
    for kind in KINDS:
        worker = ", worker BIGINT" if kind == "heartbeat" else ""
        con.execute(f"CREATE TABLE sensor_{kind} (sensor VARCHAR, ts TIMESTAMP{worker})")
        sel = [(b[0], dt.datetime.fromtimestamp(b[1], dt.timezone.utc).replace(tzinfo=None))
               + ((b[3] if len(b) > 3 else 0,) if worker else ()) for b in beats if b[2] == kind]
        if sel:
            con.executemany(f"INSERT INTO sensor_{kind} VALUES (?, ?{', ?' if worker else ''})", sel)
    res = con.execute(sql)
    keys = [d[0] for d in res.description]
    return {(r[0] if key == 1 else tuple(r[:key])): dict(zip(keys, r)) for r in res.fetchall()}


def _spacings(seq: list[tuple[float, str]]) -> list[float]:
    seq = sorted(seq)
    return [b[0] - a[0] for a, b in zip(seq, seq[1:]) if a[1] == b[1] == "heartbeat" and b[0] > a[0]]


def _median_interval(seq: list[tuple[float, str]]) -> float:
    d = _spacings(seq)
    return statistics.median(d) if d else metrics.AVAILABILITY_DEFAULT_INTERVAL_S


def _worker_seq(seq: list[tuple[float, str, int]], worker: int) -> list[tuple[float, str]]:
    """A worker's beats: its heartbeats, and the sensor's starts and stops."""
    return [(t, k) for t, k, w in seq if k != "heartbeat" or w == worker]


_beat = st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 4 * 3600), st.sampled_from(
    ["heartbeat"] * 6 + ["start", "stop"]), st.sampled_from([0, 0, 1]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_beat, min_size=1, max_size=60))
def test_sql_matches_the_python_rule(raw: list[tuple[str, int, str, int]]) -> None:
    """Per sensor, and per worker of the sensors with several: the interval is read off each
    worker's own heartbeats, not off the interleaved beats of all of them."""
    t0 = T0.timestamp()
    beats = [(s, t0 + t, k, w) for s, t, k, w in raw]
    got = _sql(beats)
    assert set(got) == {b[0] for b in beats}
    per_worker = _sql(beats, metrics.AVAILABILITY_WORKERS_SQL, key=2)
    for sensor, row in got.items():
        seq = [(t, k, w) for s, t, k, w in beats if s == sensor]
        workers = sorted({w for _, k, w in seq if k == "heartbeat"}) or [0]
        d = [x for w in workers for x in _spacings(_worker_seq(seq, w))]
        interval = statistics.median(d) if d else metrics.AVAILABILITY_DEFAULT_INTERVAL_S
        _check(row, sensor, [(t, k) for t, k, _ in seq], interval)
        for w in workers if len(workers) > 1 else []:
            wseq = _worker_seq(seq, w)
            _check(per_worker.pop((sensor, w)), sensor, wseq, _median_interval(wseq))
    assert per_worker == {}  # rows only for the sensors with several workers


def _check(row: dict, sensor: str, seq: list[tuple[float, str]], interval: float) -> None:
    first, last = min(t for t, _ in seq), max(t for t, _ in seq)
    want = avail.availability([(sensor, t, k) for t, k in seq], since=first, until=last,
                              interval_s=interval, tolerance=metrics.AVAILABILITY_TOLERANCE)[sensor]
    assert row["interval_s"] == pytest.approx(interval)
    assert row["hours_covered"] == pytest.approx((last - first) / 3600)
    assert row["hours_up"] == pytest.approx(want.up_s / 3600, abs=1e-9)
    assert row["gaps"] == len(want.gaps)
    assert row["longest_gap_min"] == pytest.approx(want.longest_gap_s / 60, abs=1e-9)
    assert row["hours_up"] <= row["hours_covered"] + 1e-9


def test_two_workers_beating_side_by_side_are_one_sensor_up() -> None:
    """Two workers beating a minute apart each, a second apart from each other: the sensor's
    interval is a minute (not the second between their beats), and it is up all along;
    worker 1 hung for 10 minutes, and only its row shows the gap."""
    t0 = T0.timestamp()
    beats = [("s", t0, "start", 0)]
    beats += [("s", t0 + 60 * i, "heartbeat", 0) for i in range(1, 61)]
    beats += [("s", t0 + 60 * i + 1, "heartbeat", 1) for i in range(1, 61) if not 20 <= i < 30]
    row = _sql(beats)["s"]
    assert row["interval_s"] == 60 and row["gaps"] == 0 and row["up_pct"] == pytest.approx(100.0)
    rows = _sql(beats, metrics.AVAILABILITY_WORKERS_SQL, key=2)
    assert rows[("s", 0)]["gaps"] == 0 and rows[("s", 1)]["gaps"] == 1
    assert rows[("s", 1)]["longest_gap_min"] == pytest.approx(11.0)


def _write(data_dir: Path, sensor: str, beats: list[tuple[float, str]]) -> None:
    evs = []
    for t, kind in beats:
        e = KINDS[kind](version="test")
        ev.stamp(e, sensor=sensor, session="", src_ip="", src_port=0, listener_port=0, protocol="", depth=0,
                 ts=dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        evs.append(e)
    w = SegmentWriter(data_dir, sensor, clock=lambda: beats[0][0])
    w.write(ev.encode_many(evs))
    w.close()


def _day_with_gaps() -> list[tuple[float, str]]:
    """10:00 start, a beat a minute; silent 11:00-11:10; stop at 12:00, start again 12:30, beats to 13:00."""
    t0 = T0.timestamp()
    m = 60.0
    beats = [(t0, "start")] + [(t0 + i * m, "heartbeat") for i in range(1, 61)]
    beats += [(t0 + i * m, "heartbeat") for i in range(70, 120)] + [(t0 + 120 * m, "stop")]
    beats += [(t0 + 150 * m, "start")] + [(t0 + i * m, "heartbeat") for i in range(151, 181)]
    return beats


def test_report_table_through_the_lake_and_every_format(tmp_path: Path) -> None:
    _write(tmp_path, "br-dsl-1", _day_with_gaps())
    # a second sensor that beats every 30 s without a break
    t0 = T0.timestamp()
    _write(tmp_path, "us-vps-2", [(t0, "start")] + [(t0 + 30 * i, "heartbeat") for i in range(1, 121)])
    rep = report(tmp_path)
    got = {r["sensor"]: r for r in rows(rep, "availability")}
    a = got["br-dsl-1"]
    assert a["first_seen"] == T0.replace(tzinfo=None)
    assert a["last_seen"] == (T0 + dt.timedelta(hours=3)).replace(tzinfo=None)
    assert a["interval_s"] == 60
    assert a["hours_covered"] == pytest.approx(3.0)
    assert a["hours_up"] == pytest.approx(3.0 - 40 / 60)  # 10 min silent + 30 min stopped
    assert a["up_pct"] == pytest.approx(100 * (3.0 - 40 / 60) / 3.0)
    assert a["gaps"] == 2 and a["longest_gap_min"] == pytest.approx(30.0)
    b = got["us-vps-2"]
    assert b["interval_s"] == 30 and b["gaps"] == 0 and b["longest_gap_min"] == 0
    assert b["hours_up"] == pytest.approx(1.0) and b["up_pct"] == pytest.approx(100.0)

    # the sensor filter applies to the table too
    only = report(tmp_path, sensors=["us-vps-2"])
    assert [r["sensor"] for r in rows(only, "availability")] == ["us-vps-2"]

    md = render.markdown(rep)
    assert "## Sensor availability" in md and "| br-dsl-1 |" in md and "Longest gap (min)" in md
    doc = json.loads(render.to_json(rep))["tables"]["availability"]
    assert doc["rows"][0]["gaps"] == 2 and doc["rows"][0]["first_seen"] == "2026-01-05T10:00:00"
    csv = render.to_csv(rep)
    assert "# availability: Sensor availability\nsensor,first_seen,last_seen,hours_covered" in csv
    html = render.to_html(rep)
    assert 'id="t-availability"' in html and "br-dsl-1" in html
    csv_files = render.csv_dir(rep, tmp_path / "csv")
    assert (tmp_path / "csv" / "availability.csv") in csv_files
    buf = io.StringIO()
    render.terminal(rep, file=buf)
    assert "Sensor availability" in buf.getvalue() and "us-vps-2" in buf.getvalue()


def test_no_beats_no_rows() -> None:
    assert _sql([]) == {}
