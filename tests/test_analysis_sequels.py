"""What the talk's sequels measured (issue 13, part 4): recipients by destination ccTLD and .br
against foreign, weekly and monthly series and their splits, the report's time zone (--tz), per-ISP
and per-network tables from the sensors' `[sensor] isp`/`network` labels, and the crossed tables
country x proxy protocol and AS x port. Exact counts over a hand-made capture; the labels also go
through a real sensor, from its config to the report.
"""

from __future__ import annotations

import datetime as dt
import json
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LAUNCHER, start_sensor
from spampots import events as ev
from spampots.analysis import metrics, ports
from spampots.analysis.cli import main as cli_main
from spampots.analysis.enrich import Enricher
from spampots.analysis.lake import Lake
from spampots.store.segments import SegmentWriter
from test_analysis_pipeline import Capture, Sess

SP = "America/Sao_Paulo"  # UTC-3 all year since 2019 (no summer time): 01:00Z is 22:00 the day before


def _mail(s: Sess, rcpts: list[str], via: str | None = None) -> Sess:
    s.cap.add(ev.SmtpMessage(helo="pc1", mail_from="a@spam.example", rcpts=rcpts, subject="hi",
                             via=[via] if via else [], target_host=via.split(":")[1] if via else None,
                             target_port=25 if via else None, sha256="0" * 64, size=100),
              s, 1 if via else 0, "smtp")
    return s


def _at(c: Capture, iso: str) -> Capture:
    c.t = dt.datetime.fromisoformat(iso)
    return c


def _start(data_dir: Path, sensor: str, iso: str, isp: str, network: str) -> None:
    e = ev.SensorStart(version="test", isp=isp, network=network,
                       listeners=[ev.Listener(address="0.0.0.0", port=1080, kind="socks")])
    t = dt.datetime.fromisoformat(iso)
    ev.stamp(e, sensor=sensor, session="", src_ip="", src_port=0, listener_port=0, protocol="sensor", depth=0,
             ts=t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    w = SegmentWriter(data_dir, sensor, clock=lambda: t.timestamp())
    w.write(ev.encode_many([e]))
    w.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sequels")
    a = Capture(d, sensor="a-dsl")
    # S1 Monday 2026-01-05; S2 Sunday 01-11; S3 Monday 01-12 01:00Z (Sunday 22:00 in Sao Paulo);
    # S4 Sunday 02-01 02:00Z (Saturday 01-31 23:00 in Sao Paulo), a session without mail.
    s1 = _at(a, "2026-01-05T10:00:00+00:00").session("200.160.2.3", 1080).request("socks5", "mx.a.example", 25)
    _mail(s1, ["a@x.com.br", "b@Y.COM.BR.", "c@mail.ru", "d@gmail.com", "e@example.xn--p1ai"],
          "socks5:mx.a.example:25")
    s2 = _at(a, "2026-01-11T12:00:00+00:00").session("8.8.8.8", 8080).request("http", "mx.b.example", 25)
    _mail(s2, ["f@[1.2.3.4]", "g@localhost", "h", "i@host.1", "j@bbc.co.uk"], "http:mx.b.example:25")
    _mail(_at(a, "2026-01-12T01:00:00+00:00").session("8.8.4.4", 25, "smtp"), ["k@uol.com.br"])
    _at(a, "2026-02-01T02:00:00+00:00").session("8.8.4.4", 1080)
    a.flush()
    b = Capture(d, sensor="b-cable")
    s = _at(b, "2026-01-05T11:00:00+00:00").session("200.160.2.3", 1080).request("socks5", "mx.a.example", 25)
    _mail(s, ["l@terra.com.br"], "socks5:mx.a.example:25")
    b.flush()
    c = Capture(d, sensor="c-none")
    _at(c, "2026-01-05T12:00:00+00:00").session("8.8.8.8", 1080)
    c.flush()
    # a-dsl moved from ADSL to fibre on 01-12; b-cable's only start came after its data; c-none has none.
    _start(d, "a-dsl", "2026-01-01T00:00:00+00:00", "Telefonica", "ADSL")
    _start(d, "a-dsl", "2026-01-12T00:30:00+00:00", "Telefonica", "Fibra")
    _start(d, "b-cable", "2026-01-20T00:00:00+00:00", "NET", "cable")
    Lake(d).compact()
    (d / "asn.tsv").write_text("200.160.0.0\t200.160.15.255\t22548\tBR\tNIC-BR\n"
                               "8.8.4.0\t8.8.8.255\t15169\tUS\tGOOGLE\n")
    return d


def _report(data_dir: Path, tz: str = "UTC") -> metrics.Report:
    return metrics.run(Lake(data_dir).connect(), ports=ports.load(), enricher=Enricher(asn_db=data_dir / "asn.tsv"),
                       opts=metrics.Options(tz=tz))


@pytest.fixture(scope="module")
def utc(data_dir: Path) -> metrics.Report:
    return _report(data_dir)


@pytest.fixture(scope="module")
def sao_paulo(data_dir: Path) -> metrics.Report:
    return _report(data_dir, SP)


def _rows(rep: metrics.Report, name: str) -> list[tuple]:
    return [tuple(round(v, 2) if isinstance(v, float) else v for v in r) for r in rep.get(name).rows]


def test_recipients_by_cctld(utc: metrics.Report) -> None:
    # .br: x.com.br and Y.COM.BR. (case and the trailing dot do not matter), uol.com.br, terra.com.br;
    # generic: .com, .xn--p1ai; none: an address literal, no dot, no domain, a number.
    assert _rows(utc, "rcpt_cctld") == [("(none)", 4, 33.33), (".br", 4, 33.33), ("generic", 2, 16.67),
                                        (".ru", 1, 8.33), (".uk", 1, 8.33)]
    assert _rows(utc, "rcpt_brazil") == [(".br (Brazil)", 4, 33.33), ("Other country codes (foreign)", 2, 16.67),
                                         ("Generic TLDs (country unknown)", 2, 16.67), ("No TLD", 4, 33.33),
                                         ("Total", 12, 100.0)]


def test_weekly_and_monthly_series(utc: metrics.Report) -> None:
    d = dt.date
    assert _rows(utc, "weekly") == [(d(2026, 1, 5), 3, 11, 4), (d(2026, 1, 12), 1, 1, 1), (d(2026, 1, 26), 0, 0, 1)]
    assert _rows(utc, "monthly") == [(d(2026, 1, 1), 4, 12, 5), (d(2026, 2, 1), 0, 0, 1)]
    week = [r[1:] for r in _rows(utc, "weekly_split") if r[0] == d(2026, 1, 5)]
    assert week == [("port", "1080", 2, 6, 3), ("port", "8080", 1, 5, 1),
                    ("protocol", "SOCKS", 2, 6, 3), ("protocol", "HTTP", 1, 5, 1),
                    ("sensor", "a-dsl", 2, 10, 2), ("sensor", "b-cable", 1, 1, 1), ("sensor", "c-none", 0, 0, 1)]
    # every split of a period adds up to the period's totals, for every period and series
    for series, split in (("daily", "daily_split"), ("weekly", "weekly_split"), ("monthly", "monthly_split")):
        totals = {r[0]: r[1:] for r in _rows(utc, series)}
        for kind in ("protocol", "port", "sensor"):
            sums: dict = {}
            for r in _rows(utc, split):
                if r[1] == kind:
                    sums[r[0]] = tuple(a + b for a, b in zip(sums.get(r[0], (0, 0, 0)), r[3:]))
            assert sums == totals, (split, kind)


def test_time_zone_moves_days_weeks_months_and_hours(utc: metrics.Report, sao_paulo: metrics.Report) -> None:
    d = dt.date
    assert _rows(sao_paulo, "weekly") == [(d(2026, 1, 5), 4, 12, 5), (d(2026, 1, 26), 0, 0, 1)]
    assert _rows(sao_paulo, "monthly") == [(d(2026, 1, 1), 4, 12, 6)]
    assert [r[0] for r in _rows(sao_paulo, "daily")] == [d(2026, 1, 5), d(2026, 1, 11), d(2026, 1, 31)]
    hours = {r[0]: r[1] for r in _rows(sao_paulo, "hours") if r[1]}
    assert hours == {7: 1, 8: 1, 9: 2, 22: 1, 23: 1}
    assert {r[0]: r[1] for r in _rows(utc, "hours") if r[1]} == {10: 1, 11: 1, 12: 2, 1: 1, 2: 1}
    assert sao_paulo.get("hours").title == f"Sessions per hour of day ({SP})"
    summary = dict(zip([c.key for c in sao_paulo.get("summary").columns], sao_paulo.get("summary").rows[0]))
    assert (summary["first_day"], summary["last_day"], summary["tz"]) == (d(2025, 12, 31), d(2026, 1, 31), SP)
    assert sao_paulo.meta["tz"] == SP and utc.meta["tz"] == "UTC"


def test_report_tz_option(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["report", "--data-dir", str(data_dir), "-q", "--asn-db", "none", "--tz", SP,
                     "--out", str(tmp_path / "r.txt")]) == 0
    text = (tmp_path / "r.txt").read_text()
    assert "Time zone (days, weeks, months, hours)" in text and SP in text
    assert cli_main(["report", "--data-dir", str(data_dir), "-q", "--asn-db", "none", "--format", "json",
                     "--tz", SP, "--out", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["meta"]["tz"] == SP and doc["tables"]["summary"]["rows"][0]["tz"] == SP
    capsys.readouterr()
    for bad in ("Mars/Olympus", "../../etc/passwd", "", "America/Sao_Paulo'"):
        with pytest.raises(SystemExit) as e:
            cli_main(["report", "--data-dir", str(data_dir), "-q", "--tz", bad])
        assert e.value.code == 2
        assert "--tz: not a time zone" in capsys.readouterr().err
    # one the system knows and DuckDB's own time zone data does not (when the system has it at all)
    code = None
    try:
        code = cli_main(["report", "--data-dir", str(data_dir), "-q", "--asn-db", "none", "--tz", "posixrules"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "--tz" in err and "posixrules" in err and "Traceback" not in err


def test_per_isp_and_network(utc: metrics.Report, sao_paulo: metrics.Report) -> None:
    # a-dsl's sessions of 01-12 and after are on fibre; b-cable takes the label of its only start,
    # though it came after; c-none never said.
    assert _rows(utc, "per_isp") == [("Telefonica", 1, 4, 3, 11, 3), ("NET", 1, 1, 1, 1, 1),
                                     ("(unlabelled)", 1, 1, 0, 0, 1)]
    assert _rows(utc, "per_network") == [("Telefonica", "ADSL", 1, 2, 2, 10, 2), ("Telefonica", "Fibra", 1, 2, 1, 1, 1),
                                         ("NET", "cable", 1, 1, 1, 1, 1),
                                         ("(unlabelled)", "(unlabelled)", 1, 1, 0, 0, 1)]
    # Labels go by day: in Sao Paulo the fibre start (00:30Z) falls on 01-11 (21:30), so all of
    # that day's traffic, S2 (09:00) included, is on fibre.
    assert _rows(sao_paulo, "per_network") == [("Telefonica", "Fibra", 1, 3, 2, 6, 2), ("NET", "cable", 1, 1, 1, 1, 1),
                                               ("Telefonica", "ADSL", 1, 1, 1, 5, 1),
                                               ("(unlabelled)", "(unlabelled)", 1, 1, 0, 0, 1)]


def test_crossed_tables(utc: metrics.Report) -> None:
    assert _rows(utc, "country_protocol") == [("BR", 2, 50.0, 100.0, 0.0, 0.0, 1), ("US", 2, 50.0, 0.0, 50.0, 50.0, 2)]
    assert _rows(utc, "as_port") == [("AS22548", "NIC-BR", 1080, "SOCKS", 2, 50.0, 1),
                                     ("AS15169", "GOOGLE", 25, "SMTP", 1, 25.0, 1),
                                     ("AS15169", "GOOGLE", 8080, "HTTP", 1, 25.0, 1)]


# -- the labels, from a real sensor's config to the report ----------------------------------------
def _check_config(tmp: Path, text: str) -> subprocess.CompletedProcess:
    cfg = tmp / "labels.toml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, str(LAUNCHER), "check-config", str(cfg)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("value", ['"   "', '"a\\tb"', '"line\\nbreak"', '"' + "x" * 65 + '"', '"bidi\\u202e"'])
def test_bad_labels_refused(tmp_path: Path, value: str) -> None:
    for key in ("isp", "network"):
        r = _check_config(tmp_path, f"[sensor]\n{key} = {value}\n")
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and f"sensor.{key}" in lines[0], r.stderr


def test_labels_from_a_real_sensor_reach_the_per_isp_table(tmp_path: Path) -> None:
    assert _check_config(tmp_path, '[sensor]\nisp = "Oi Velox"\nnetwork = ""\n').returncode == 0
    sp = start_sensor(tmp_path / "s", config='[sensor]\nisp = "Oi Velox"\nnetwork = "ADSL 2+"\n', wait_port=25)
    try:
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=30) as s:
            s.ehlo("pc1")
            s.sendmail("a@spam.example", ["x@uol.com.br", "y@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
        assert sp.events("spampots.smtp.message", wait_for=1, timeout=30)
    finally:
        sp.stop()
    start = sp.events("spampots.sensor.start")[0]
    assert (start.isp, start.network) == ("Oi Velox", "ADSL 2+")
    out = tmp_path / "r.json"
    assert cli_main(["report", "--data-dir", str(sp.data_dir), "-q", "--asn-db", "none", "--format", "json",
                     "--out", str(out)]) == 0
    tables = json.loads(out.read_text())["tables"]
    row = tables["per_network"]["rows"][0]
    assert (row["isp"], row["network"], row["sensors"], row["emails"], row["rcpts"]) == ("Oi Velox", "ADSL 2+", 1, 1, 2)
    assert row["sessions"] >= 1 and row["ips"] == 1
    assert [(r["destination"], r["rcpts"]) for r in tables["rcpt_brazil"]["rows"]][0] == (".br (Brazil)", 1)


def _period(data_dir: Path, tz: str, day_from: dt.date, day_to: dt.date) -> tuple:
    """(source IPs, emails, first day, last day) of the report over --from/--to in zone `tz`."""
    con = Lake(data_dir).connect(day_from=day_from, day_to=day_to, tz=tz)
    rep = metrics.run(con, ports=ports.load(), enricher=Enricher(asn_db=data_dir / "asn.tsv"),
                      opts=metrics.Options(tz=tz, talk_only=True))
    s = dict(zip([c.key for c in rep.get("summary").columns], rep.get("summary").rows[0]))
    return s["ips_all"], s["emails"], s["first_day"], s["last_day"]


def test_from_to_name_days_of_the_zone(data_dir: Path, tmp_path: Path) -> None:
    """--from/--to with --tz: whole local days. S3 (01-12 01:00Z) is Sunday 01-11 in Sao Paulo,
    S4 (02-01 02:00Z) is 01-31 there; in UTC they are on 01-12 and 02-01 (before: UTC days whatever
    the zone, so S3 was missed from its local day and S4 from the range that holds its local day)."""
    d = dt.date
    assert _period(data_dir, SP, d(2026, 1, 11), d(2026, 1, 11)) == (2, 2, d(2026, 1, 11), d(2026, 1, 11))
    assert _period(data_dir, "UTC", d(2026, 1, 11), d(2026, 1, 11)) == (1, 1, d(2026, 1, 11), d(2026, 1, 11))
    # days also count sensor starts: b-cable's of 01-20 00:00Z is 01-19 in Sao Paulo
    assert _period(data_dir, SP, d(2026, 1, 12), d(2026, 1, 31)) == (1, 0, d(2026, 1, 19), d(2026, 1, 31))
    assert _period(data_dir, "UTC", d(2026, 1, 12), d(2026, 1, 31)) == (1, 1, d(2026, 1, 12), d(2026, 1, 20))
    # the command line: the same selection, and its help says whose days they are
    assert cli_main(["report", "--data-dir", str(data_dir), "-q", "--asn-db", "none", "--talk-only", "--tz", SP,
                     "--from", "2026-01-11", "--to", "2026-01-11", "--format", "json",
                     "--out", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["tables"]["summary"]["rows"][0]
    assert (summary["ips_all"], summary["emails"], summary["first_day"]) == (2, 2, "2026-01-11")
    proc = subprocess.run([sys.executable, "-m", "spampots.analysis.cli", "report", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert "UTC day" not in proc.stdout and "--tz's zone" in " ".join(proc.stdout.split())
