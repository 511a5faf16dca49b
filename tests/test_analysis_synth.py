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
        assert top["pct"] == pytest.approx(e[top[key]]["pct"], abs=3.0)
        assert top[count] == pytest.approx(e[top[key]][count], rel=0.2)
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
