"""`synth` reproduces the talk's proportions, and its two output formats report the same."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pytest

from spampots.analysis import synth
from spampots.analysis.cli import main as cli_main
from spampots.analysis.lake import Lake
from spampots.store.segments import ReadStats, iter_events

from conftest import run_on_a_terminal
from test_analysis_pipeline import outbound, report, rows

TALK_OUTBOUND = {
    "http": {"Out to 25/TCP": 97.62, "Out to other ports": 0.12, "GET (usually web)": 0.25, "Errors": 2.01},
    "socks": {"Out to 25/TCP": 87.31, "Out to other ports": 1.97, "Errors": 10.72},
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert cli_main(["synth", "--messages", "60_000", "--out", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def reports(synthetic: Path) -> dict:
    out = {mode: report(synthetic, mode) for mode in ("connection", "none", "source-ip")}
    out["sampled"] = report(synthetic, exact_limit=10_000)  # 6x the limit: sample buckets of the whole table
    out["stored"] = report(synthetic, exact_limit=900)  # over 64x: the lake's stored 1-in-64 sample
    return out


def test_report_of_synthetic_set_has_the_talks_shape(reports: dict) -> None:
    rep = reports["connection"]
    s = rows(rep, "summary")[0]
    assert s["emails"] == 60_000
    assert s["days"] == 466 and s["first_day"] == dt.date(2006, 6, 10) and s["last_day"] == dt.date(2007, 9, 18)
    assert s["rcpts_per_spam"] == pytest.approx(9.16, abs=0.05)
    # the pool is 216,888 x scale, at least 50; IPs are real, AS-named, never private
    assert s["ips_all"] == pytest.approx(synth.Spec(scale=60_000 / synth.TALK["emails"]).pool, rel=0.05)
    assert s["unlocated"] == 0 and s["asns_all"] >= 5 and s["cc_all"] >= 3
    ports = {r["port"]: r["pct"] for r in rows(rep, "ports")}
    assert set(ports) == set(synth.PORT_MIX)
    for port, pct in synth.PORT_MIX.items():
        assert ports[port] == pytest.approx(pct, abs=0.15), port
    protocols = {r["port"]: r["protocol"] for r in rows(rep, "ports")}
    assert protocols[1080] == protocols[3127] == "SOCKS" and protocols[25] == "SMTP" and protocols[8080] == "HTTP"
    for cls, talk in TALK_OUTBOUND.items():
        got = {r["type"]: r["pct"] for r in rows(rep, f"outbound_{cls}")}
        for cat, pct in talk.items():
            assert got[cat] == pytest.approx(pct, abs=0.25 if pct < 1 else 0.1), (cls, cat)
    # the heavy tail: the top 10% of sources send far more than 10% of the mail
    top = rows(rep, "top_countries")
    assert top[0]["emails"] >= top[-1]["emails"]


def test_counting_modes_differ_only_where_they_should(reports: dict) -> None:
    conn = outbound(reports["connection"], "http")
    every = outbound(reports["none"], "http")
    assert every["Out to 25/TCP"] == conn["Out to 25/TCP"]
    assert every["GET (usually web)"] > conn["GET (usually web)"]  # keep-alive GETs
    per_ip = outbound(reports["source-ip"], "socks")
    assert per_ip["Total"] <= rows(reports["connection"], "summary")[0]["ips_all"]


def test_store_format_and_lake_format_report_the_same(tmp_path: Path) -> None:
    lake_dir, store_dir = tmp_path / "lake", tmp_path / "store"
    args = ["--messages", "3000", "--days", "12", "--sensors", "3", "-q"]
    assert cli_main(["synth", "--out", str(lake_dir), *args]) == 0
    assert cli_main(["synth", "--out", str(store_dir), "--format", "store", *args]) == 0
    segs = Lake(store_dir).segments()
    assert len(segs.closed) == 12 * 3 and not segs.open
    stats = ReadStats()  # every line decodes as the sensor's own events would
    kinds = Counter(type(e).__name__ for e in iter_events(store_dir, stats=stats))
    assert stats.undecodable == 0 and stats.torn == 0 and kinds["SmtpMessage"] == 3000
    assert kinds["SensorStart"] == 3
    assert (store_dir / "messages").is_dir()  # the template bodies, in the message store
    a, b = report(lake_dir), report(store_dir)
    for ra, rb in zip(a.results, b.results):
        assert ra.rows == rb.rows, ra.name


def test_store_format_refuses_big_sets(tmp_path: Path) -> None:
    assert cli_main(["synth", "--out", str(tmp_path), "--format", "store", "--messages", "10_000_000", "-q"]) == 2


def test_heavy_tables_from_the_session_sample_estimate_the_exact_ones(reports: dict, synthetic: Path) -> None:
    exact, sampled = reports["connection"], reports["sampled"]
    assert "683 in 4096 sessions" in sampled.get("rcpt_domains").note and not exact.get("rcpt_domains").note
    assert "1 session in 64" in reports["stored"].get("rcpt_domains").note
    for name, key, count in (("rcpt_domains", "domain", "rcpts"), ("target_mx", "target", "emails")):
        e = {r[key]: r for r in rows(exact, name)}
        top = rows(sampled, name)[0]
        assert top[key] == rows(exact, name)[0][key]
        # An email's recipients are all in its MX's domain and a session keeps one MX, so both tables
        # are clustered by session: the sample holds ~270 sessions here, a standard error of ~2.5 points.
        assert top["pct"] == pytest.approx(e[top[key]]["pct"], abs=6.0)
        assert top[count] == pytest.approx(e[top[key]][count], rel=0.3)
    # the talk's tables never sample
    for name in ("summary", "ports", "outbound_http", "outbound_socks"):
        assert exact.get(name).rows == sampled.get(name).rows == reports["stored"].get(name).rows
    # the sample is 1 session in 64, in the lake as its own table
    assert any((synthetic / "lake" / "smtp_message_sample").glob("day=*/*.parquet"))


def test_the_heavy_tables_read_no_fewer_rows_for_more_data() -> None:
    """No cliff where sampling starts: the rows the sampled tables read (expected: emails x buckets
    read / all buckets) are never fewer than min(emails, limit), and never drop as the data grows
    by more than one bucket's worth (the bound is a whole number of buckets)."""
    from spampots.analysis import metrics, schema

    limit = 5_000_000
    sizes = sorted({int(limit * f) for f in (0.5, 0.99, 1, 1.0001, 1.01, 1.5, 2, 3, 10, 63.9, 64, 64.1, 100, 105)}
                   | {n * 1_000_000 for n in range(1, 700, 7)})
    rows = [n * metrics.sample_buckets(n, limit) / schema.BUCKETS for n in sizes]
    for n, r in zip(sizes, rows):
        assert r >= min(n, limit), n
    # expected rows rise to the limit, stay within one bucket's worth above it, then grow again
    for (n1, r1), (n2, r2) in zip(zip(sizes, rows), zip(sizes[1:], rows[1:])):
        assert r2 >= r1 - n2 / schema.BUCKETS, (n1, r1, n2, r2)


def _intermediate(out: str, label: str) -> list[tuple[int, int]]:
    """(done, total) pairs shown after `label` with 0 < done < total."""
    import re

    pairs = re.findall(re.escape(label) + r"[^\r\n]*?([\d,]+)/([\d,]+)", out)
    return [(int(a.replace(",", "")), int(b.replace(",", ""))) for a, b in pairs
            if 0 < int(a.replace(",", "")) < int(b.replace(",", ""))]


def test_synth_and_compact_show_real_progress_on_a_terminal_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "d"
    args = ["synth", "--messages", "40_000", "--days", "150", "--sensors", "3", "--format", "store", "--out", str(out)]
    shown = run_on_a_terminal(args)
    assert _intermediate(shown, "synth: emails written"), shown[-2000:]
    shown = run_on_a_terminal(["compact", "--data-dir", str(out)])
    assert _intermediate(shown, "segments checked"), shown[-2000:]
    # not a terminal: no bars (only synth's closing line of counts)
    r = subprocess.run([sys.executable, "-m", "spampots.analysis.cli", *args[:-1], str(tmp_path / "e")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("session_open"), r.stderr
    r = subprocess.run([sys.executable, "-m", "spampots.analysis.cli", "compact", "--data-dir", str(tmp_path / "e")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "checked" not in r.stderr and "\x1b" not in r.stderr, r.stderr


def test_sources_are_the_talks_population_of_access_and_hosting_networks() -> None:
    from spampots.analysis import synth_sources
    from spampots.analysis.enrich import bundled

    pool = synth_sources.ip_pool(synth.TALK["ips"], synth.TALK["days"], seed=1)
    assert len(set(pool.ips)) == 216_888 and (pool.asns, pool.countries) == (3_006, 165)
    # the names the report sees (the same bundled data): none of a bank, police or government
    _cc, names, _private = bundled().lookup_v4(pool.ip_ints)
    assert all(names) and not [n for n in set(names) if synth_sources.AVOID.search(n)]
    assert len(set(names)) == 3_006
    # heavy-tailed: the top 1% of sources weigh more than a third of all
    w = sorted(pool.weight, reverse=True)
    assert sum(w[: len(w) // 100]) > sum(w) / 3
    small = synth_sources.ip_pool(413, 466, seed=1)  # a sample of the same population
    assert len(set(small.ips)) == 413 and set(small.ips) <= set(pool.ips) and small.asns > 100


def test_days_have_weekly_cycles_and_every_total_stays_exact() -> None:
    import numpy as np

    spec = synth.Spec(scale=1.0)
    W = np.diff(synth.day_weights(spec)).astype(float)
    weekday = np.array([(spec.start + dt.timedelta(days=d)).weekday() for d in range(spec.days)])
    assert W[weekday >= 5].mean() < 0.85 * W[weekday < 5].mean() and W.std() / W.mean() > 0.2
    ss = synth.streams(spec)
    assert sum(s.emails for s in ss) == synth.TALK["emails"]
    for cls, cats in synth.OUTBOUND.items():
        n = {s.category: s.n for s in ss if s.cls == cls}
        assert n["other"] + n["submit"] == cats["other"] and n["to25"] == cats["to25"]
    # not everything is "prevented": submission tunnels carry 0.5% of the proxied mail at full size
    sub = sum(s.emails for s in ss if s.category == "submit")
    assert 0.004 < sub / synth.TALK["emails"] < 0.006


def test_daily_series_of_a_synthetic_set_is_not_flat(reports: dict) -> None:
    per_day = [r["emails"] for r in rows(reports["connection"], "daily")]
    assert len(per_day) == 466 and max(per_day) > 2 * min(per_day)


def test_synth_writes_every_derived_column_as_compaction_would(tmp_path: Path) -> None:
    """session_bucket (the report's sampling) is md5_number_lower(session) % BUCKETS on every row."""
    import duckdb

    from spampots.analysis import schema

    synth.generate(tmp_path, synth.Spec(scale=20_000 / synth.TALK["emails"], days=3, sensors=2, seed=3), quiet=True)
    con = duckdb.connect()
    n, filled, same = con.execute(
        f"""SELECT count(*), count(session_bucket),
                   sum((session_bucket = md5_number_lower(session) % {schema.BUCKETS})::INT)
            FROM read_parquet('{tmp_path}/lake/smtp_message/*/*.parquet')""").fetchone()
    assert n == 20_000 and filled == n and same == n
