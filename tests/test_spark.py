"""DuckDB and Spark give identical report tables on the same lake (issue 6).

One local Spark (local[2], 2 shuffle partitions, no UI, driver bound to 127.0.0.1: no traffic
off loopback) for the module. The lake holds a small `synth` set plus a hand-made capture with the
awkward cases: IPv4-mapped and differently spelled IPv6 sources, NULL and blank fields, regex and
escape traps in subjects, credentials, TLS hellos, limits and heartbeats with gaps. Every table of
metrics.METRICS (so a metric added later is covered) is compared row by row, in order.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyspark")

from spampots import events as ev  # noqa: E402
from spampots.analysis import dialect, metrics, ports, synth  # noqa: E402
from spampots.analysis import spark as spark_mod  # noqa: E402
from spampots.analysis.cli import main as cli_main  # noqa: E402
from spampots.analysis.enrich import Enricher  # noqa: E402
from spampots.analysis.lake import Lake, new_connection  # noqa: E402
from spampots.store.segments import SegmentWriter  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_analysis_pipeline import Capture, talk_like  # noqa: E402

# Adaptive execution re-plans every stage: on a few thousand rows that costs more than it saves.
CONF = [("spark.sql.shuffle.partitions", "2"), ("spark.ui.enabled", "false"), ("spark.sql.adaptive.enabled", "false"),
        ("spark.driver.host", "127.0.0.1"), ("spark.driver.bindAddress", "127.0.0.1")]


@pytest.fixture(scope="module")
def spark():
    session, created = spark_mod.session("local[2]", CONF)
    assert session.conf.get("spark.driver.bindAddress") == "127.0.0.1"
    yield session
    if created:
        session.stop()


def _odd_cases(c: Capture) -> None:
    """What synth never writes: the cases where the two engines could part ways."""
    c.session("::ffff:200.160.2.3", 1080).request("socks5", "mx.a.example", 25) \
        .mail(2, "socks5:mx.a.example:25", subject="Win  $1000\tnow 42", mail_from="<>")
    s = c.session("2001:DB8::1", 25, "smtp").mail(3, subject="caf\u00e9 \\d 50% \u2028 off\x0b9", helo=None)
    s.mail(1, subject="", mail_from="Bob <bob@Example.ORG> ")
    c.add(ev.SmtpAuth(mechanism="PLAIN", username="admin", password="admin"), s, 0, "smtp")
    c.add(ev.SmtpAuth(mechanism="LOGIN", username=None, password="x"), s, 0, "smtp")
    c.add(ev.LimitHit(limit="max_rcpts", value=100, observed=150), s, 0, "smtp")
    t = c.session("9.9.9.9", 8080).request("http", "www.example.com", 443)
    c.add(ev.TlsHello(target_host="www.example.com", target_port=443, sni="www.example.com",
                      tls_version="TLS1.3"), t, 1, "tls")
    c.add(ev.TlsHello(target_host="1.2.3.4", target_port=443, sni=None, tls_version="TLS1.2"), t, 1, "tls")
    c.session("10.1.2.3", 6588).error("raw.unknown_protocol")
    # SYN fingerprints (source_os, campaign_os): Windows, Linux, one no signature matches, one garbled
    for sig in ("4:113+15:0:1460:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0",
                "4:57+7:0:1460:mss*20,10:mss,sok,ts,nop,ws:df,id+:0",
                "4:57+7:0:1460:mss*20,10:mss,sok,ts,nop,ws:df,id+:0",
                "4:200+55:0:0:1024,0::ecn:0", "not a signature"):
        c.session("198.51.100.7", 1080, tcp_sig=sig).request("socks5", "mx.b.example", 25) \
            .mail(2, "socks5:mx.b.example:25", subject="Fingerprinted 1")


def _beats(data_dir: Path, sensor: str, t0: dt.datetime, kinds: list[tuple],
           labels: tuple[str, str] = ("", "")) -> None:
    """kinds: (minutes, kind) or, for a heartbeat of another worker, (minutes, kind, worker)."""
    cls = {"start": ev.SensorStart, "heartbeat": ev.SensorHeartbeat, "stop": ev.SensorStop}
    evs = []
    for minutes, kind, *worker in kinds:
        e = cls[kind](version="test")
        if worker:
            e.worker = worker[0]
        if kind == "start":
            e.listeners = [ev.Listener(address="0.0.0.0", port=21080, kind="socks")]
            e.isp, e.network = labels
        ev.stamp(e, sensor=sensor, session="", src_ip="", src_port=0, listener_port=0, protocol="", depth=0,
                 ts=(t0 + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        evs.append(e)
    w = SegmentWriter(data_dir, sensor, clock=lambda: t0.timestamp())
    w.write(ev.encode_many(evs))
    w.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("spark-lake")
    synth.generate(d, synth.Spec(scale=2_000 / synth.TALK["emails"], days=3, sensors=3, ips=40, seed=7))
    c = talk_like(d)
    _odd_cases(c)
    c.flush()
    t0 = dt.datetime(2026, 1, 5, 10, tzinfo=dt.timezone.utc)
    _beats(d, "br-dsl-1", t0, [(0, "start")] + [(i, "heartbeat") for i in range(1, 30)]
           + [(i, "heartbeat") for i in range(40, 60)] + [(60, "stop"), (75, "start"), (76, "heartbeat")],
           ("Telefonica", "ADSL"))
    _beats(d, "us-vps-2", t0, [(0, "start")] + [(i * 0.5, "heartbeat") for i in range(1, 40)])
    # two workers beating side by side; worker 1 silent for 10 minutes
    _beats(d, "de-2w-3", t0, [(0, "start")] + [(i, "heartbeat", 0) for i in range(1, 40)]
           + [(i + 0.01, "heartbeat", 1) for i in range(1, 40) if not 10 <= i < 20])
    Lake(d).compact()
    return d


def _same(a: metrics.Report, b: metrics.Report) -> None:
    assert [r.name for r in a.results] == [r.name for r in b.results]
    for x, y in zip(a.results, b.results):
        assert (x.columns, x.note) == (y.columns, y.note), x.name
        assert x.rows == y.rows, x.name


@pytest.fixture(scope="module")
def both(spark, data_dir: Path):
    """The full report, default options, on each engine; and the two connections it left."""
    lake = Lake(data_dir)
    duck = lake.connect()
    sp = spark_mod.connect(lake.root, spark=spark)
    reps = [metrics.run(con, ports=ports.load(), enricher=Enricher(), opts=metrics.Options())
            for con in (duck, sp)]
    yield reps, (duck, sp)
    sp.close()


def test_every_table_is_identical(both) -> None:
    (duck, sp), _ = both
    _same(duck, sp)
    names = [r.name for r in duck.results]
    assert set(names) >= {m.name for m in metrics.METRICS}  # every metric, whoever added it
    assert all(r.rows for r in duck.results), [r.name for r in duck.results if not r.rows]
    assert duck.get("summary").rows[0][3] > 2_000  # the synth set and the capture are both in


def test_time_zone_gives_the_same_tables(both) -> None:
    """--tz: days, weeks, months and hours bucketed in a zone (1:00Z is the day before in Sao Paulo)."""
    opts = metrics.Options(tz="America/Sao_Paulo")
    reps = [metrics.run(con, ports=ports.load(), enricher=Enricher(), opts=opts) for con in both[1]]
    _same(*reps)
    assert reps[0].get("hours").rows != both[0][0].get("hours").rows  # really shifted
    assert "Telefonica" in [r[0] for r in reps[0].get("per_isp").rows]  # the labels joined on both


@pytest.mark.parametrize("first_per", ["source-ip", "none"])
def test_outbound_attempts_in_every_counting(both, first_per: str) -> None:
    out = []
    for con in both[1]:
        con.execute(f"CREATE OR REPLACE TEMP TABLE attempts AS {metrics.attempts_sql(first_per)}")
        out.append(metrics.outbound_results(con, first_per))
    assert [(r.name, r.rows) for r in out[0]] == [(r.name, r.rows) for r in out[1]]


def test_sampled_tables_read_the_same_sample(both) -> None:
    """Above --exact-limit the top-N tables read the lake's session sample: the same rows on both."""
    for m in [m for m in metrics.METRICS if m.sampled]:
        got = []
        for con in both[1]:
            note, scale = metrics.build_sample(con, metrics.Options(exact_limit=0))
            got.append((note, scale, con.execute(m.query(metrics.Options(top=5))).fetchall()))
        assert got[0] == got[1], m.name
        assert got[0][0] and got[0][2], m.name  # really the sample, and not empty


def test_cli_with_filters(spark, data_dir: Path, tmp_path: Path) -> None:
    """`report --engine spark --lake URI` with --from/--to/--sensor: the same JSON tables as DuckDB."""
    common = ["--talk-only", "--from", "2026-01-05", "--to", "2026-01-05", "--sensor", "br-dsl-1", "-q",
              "--format", "json"]
    assert cli_main(["report", "--data-dir", str(data_dir), *common, "--out", str(tmp_path / "d.json")]) == 0
    assert cli_main(["report", "--engine", "spark", "--lake", spark_mod.lake_uri(data_dir / "lake"), *common,
                     "--out", str(tmp_path / "s.json")]) == 0
    d, s = (json.loads((tmp_path / f).read_text()) for f in ("d.json", "s.json"))
    assert s["meta"]["engine"] == "spark" and d["tables"] == s["tables"]
    assert d["tables"]["summary"]["rows"][0]["emails"] == 15  # the capture's emails only (10, and 5 fingerprinted)
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_macros_agree_on_awkward_input(spark) -> None:
    """ip_key/ip_str/norm_ip/email_domain/campaign_key: Spark's spelling gives DuckDB's values."""
    values = ["1.2.3.4", "::ffff:1.2.3.4", "::FFFF:10.0.0.1", "2001:DB8::1", "2001:db8::1", "", None, "garbage",
              "999.1.1.1", "a@b.example", "Bob <bob@EXAMPLE.org> ", "x@", "Re:  Win 1000\t$ \u2028now\x0b\x85 2",
              "caf\u00e9 \\d 50%", "  ", "O'Brien"]
    exprs = ("ip_key(norm_ip(v))", "ip_str(ip_key(norm_ip(v)))", "email_domain(v)", "campaign_key(v)",
             "proto_class(v)")
    sql = f"SELECT i, {', '.join(exprs)} FROM t ORDER BY i"
    duck = new_connection()
    duck.execute("CREATE TABLE t AS SELECT * FROM (SELECT unnest(range(?)) AS i, unnest(?::VARCHAR[]) AS v)",
                 [len(values), values])
    sp = spark_mod.SparkConnection(spark)
    spark.createDataFrame(list(enumerate(values)), "i BIGINT, v STRING").createOrReplaceTempView("t")
    assert duck.execute(sql).fetchall() == sp.execute(sql).fetchall()


def test_dialect_rules() -> None:
    sql = dialect.to_spark("""SELECT "limit", 100.0 * n / 3, x::VARCHAR, k::UBIGINT, arg_min(a, ts), 7 // 2,
                                     'a\\d"b' AS s FROM t ORDER BY n DESC, "limit" LIMIT 3""")
    assert "`limit`" in sql and "100.0D" in sql and "x::STRING" in sql and "k::DECIMAL(20,0)" in sql
    assert "min_by(a, ts)" in sql and re.search(r"7\s+DIV\s+2", sql) and "'a\\\\d\"b'" in sql
    assert "ORDER BY n DESC NULLS LAST, `limit` NULLS LAST LIMIT 3" in sql
    assert dialect.to_spark("SELECT string_agg(DISTINCT v, ' ' ORDER BY v) FROM t") == \
        "SELECT string_agg(DISTINCT v, ' ') WITHIN GROUP (ORDER BY v NULLS LAST) FROM t"
    with pytest.raises(ValueError):
        dialect.to_spark("SELECT regexp_replace(s, 'a', 'b') FROM t")  # first match only: no Spark spelling


def test_missing_pyspark_or_java_is_a_clear_error(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    assert cli_main(["report", "--data-dir", str(data_dir), "--engine", "spark", "-q"]) == 2
    assert "pip install 'spampots[spark]'" in capsys.readouterr().err
    assert cli_main(["report", "--data-dir", str(data_dir), "--lake", str(data_dir / "lake")]) == 2
    assert "--lake is for --engine spark" in capsys.readouterr().err
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "needs Java 17 or later" in spark_mod.check_java()
    old = tmp_path / "java"
    old.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    old.chmod(0o755)
    assert "is Java 11" in spark_mod.check_java()


def test_from_to_in_the_report_zone(spark, tmp_path: Path) -> None:
    """--from/--to with --tz name local days on both engines: 01:00Z and 02:30Z on 01-06 are 22:00
    and 23:30 on 01-05 in Sao Paulo (UTC-3), 02:00Z on 01-05 is 23:00 on 01-04 there."""
    c = Capture(tmp_path, sensor="br-dsl-1", day="2026-01-05")
    for iso in ("2026-01-05T02:00:00", "2026-01-05T12:00:00", "2026-01-06T01:00:00", "2026-01-06T02:30:00",
                "2026-01-06T04:00:00"):
        c.t = dt.datetime.fromisoformat(iso + "+00:00")
        c.session("200.160.2.3", 1080).request("socks5", "mx.a.example", 25).mail(1, "socks5:mx.a.example:25")
    c.flush()
    lake = Lake(tmp_path)
    lake.compact()
    day = dt.date(2026, 1, 5)
    for tz, emails in (("America/Sao_Paulo", 3), ("UTC", 2)):
        opts = metrics.Options(tz=tz, talk_only=True)
        sp = spark_mod.connect(lake.root, spark=spark, day_from=day, day_to=day, tz=tz)
        try:
            reps = [metrics.run(con, ports=ports.load(), enricher=Enricher(), opts=opts)
                    for con in (lake.connect(day_from=day, day_to=day, tz=tz), sp)]
        finally:
            sp.close()
        _same(*reps)
        summary = reps[0].get("summary").rows[0]
        assert summary[:2] == (day, day) and summary[3] == emails, tz
