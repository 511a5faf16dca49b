"""`spampots policy port25` on a capture whose every figure is known by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from spampots import events as ev
from spampots.analysis.enrich import Enricher
from spampots.analysis.lake import Lake
from spampots.policy import port25
from spampots.policy.cli import main as policy_main
from test_analysis_pipeline import Capture, Sess


def mail_to(s: Sess, rcpts: int, via: Optional[str], *, submission: bool = False) -> Sess:
    """A message through `via` ("proto:host:port", depth 1) or direct (depth 0)."""
    host, port = (via.split(":")[1], int(via.split(":")[2])) if via else (None, None)
    s.cap.add(ev.SmtpMessage(mail_from="a@spam.example", rcpts=[f"u{i}@d.example" for i in range(rcpts)],
                             via=[via] if via else [], target_host=host, target_port=port,
                             submission=submission, auth_user="bob" if submission else None,
                             sha256="0" * 64, size=100),
              s, 1 if via else 0, "smtp")
    return s


def capture(data_dir: Path) -> None:
    c = Capture(data_dir, sensor="br-dsl-1", day="2026-01-05")
    # prevented: tunnels to 25 (SOCKS x3, one without mail; HTTP x1), open relay on our 25
    c.session("200.160.2.3", 1080).request("socks5", "mx.a.example", 25).mail(3, "socks5:mx.a.example:25") \
        .mail(5, "socks5:mx.a.example:25")
    c.session("200.160.2.3", 1080).request("socks4", "mx.b.example", 25).mail(1, "socks4:mx.b.example:25")
    c.session("8.8.8.8", 1080).request("socks5", "mx.a.example", 25)
    c.session("1.1.1.1", 8080).request("http", "mx.a.example", 25).mail(2, "http:mx.a.example:25")
    mail_to(c.session("5.5.5.5", 25, "smtp"), 4, None)
    # not prevented: tunnel to 587, two GETs in one session, authenticated submission, tunnel to 465
    mail_to(c.session("9.9.9.9", 8080).request("http", "smtp.mail.example", 587), 2, "http:smtp.mail.example:587")
    c.session("9.9.9.9", 8080).request("http", "example.com", 80, "get", url="http://example.com/") \
        .request("http", "example.org", 80, "get", url="http://example.org/")
    mail_to(c.session("6.6.6.6", 587, "smtp"), 3, None, submission=True)
    mail_to(c.session("7.7.7.7", 1080).request("socks5", "smtp.x.example", 465), 1, "socks5:smtp.x.example:465")
    # neither: a session with only an error is not a use
    c.session("10.1.2.3", 1080).error("socks5.bad_version")
    c.flush()
    d = Capture(data_dir, sensor="us-cable-1", day="2026-02-10")
    d.session("200.160.2.3", 1080).request("socks5", "mx.c.example", 25).mail(6, "socks5:mx.c.example:25")
    d.session("4.4.4.4", 3128).request("http", "irc.example", 6667)
    d.flush(close=False)  # an open segment: read from JSON


def run(data_dir: Path, **kw) -> dict[str, list[dict]]:
    lake = Lake(data_dir)
    lake.compact()
    rep = port25.run(lake.connect(**kw))
    return {r.name: [dict(zip([c.key for c in r.columns], row)) for row in r.rows] for r in rep.results}


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    capture(tmp_path)
    return tmp_path


def test_outcome_and_categories(data: Path) -> None:
    t = run(data)
    out = {r["outcome"]: r for r in t["port25_outcome"]}
    strip = lambda r: {k: v for k, v in r.items() if k not in ("outcome", "category", "emails_pct")}  # noqa: E731
    assert strip(out["prevented"]) == dict(sessions=6, emails=6, rcpts=21, ips=4)
    assert strip(out["not prevented"]) == dict(sessions=5, emails=3, rcpts=6, ips=4)
    assert strip(out["total"]) == dict(sessions=11, emails=9, rcpts=27, ips=8)
    assert out["prevented"]["emails_pct"] == pytest.approx(200 / 3)
    assert [r["outcome"] for r in t["port25_outcome"]] == ["prevented", "not prevented", "total"]
    cats = {r["category"]: (r["outcome"], r["sessions"], r["emails"], r["rcpts"], r["ips"])
            for r in t["port25_categories"]}
    assert cats == {
        "tunnel to 25/TCP": ("prevented", 5, 5, 17, 3),
        "open relay on our 25/TCP": ("prevented", 1, 1, 4, 1),
        "tunnel to 587/TCP": ("not prevented", 1, 1, 2, 1),
        "tunnel to 465/TCP": ("not prevented", 1, 1, 1, 1),
        "authenticated submission": ("not prevented", 1, 1, 3, 1),
        "web GET": ("not prevented", 1, 0, 0, 1),
        "tunnel to other ports": ("not prevented", 1, 0, 0, 1),
        "all": ("total", 11, 9, 27, 8),
    }


def test_splits(data: Path) -> None:
    t = run(data)
    key = ("emails_prevented", "emails_not", "sessions_prevented", "sessions_not", "rcpts_prevented",
           "rcpts_not", "ips_prevented", "ips_not")
    by = lambda name, dim: {r[dim]: tuple(r[k] for k in key) for r in t[name]}  # noqa: E731
    assert by("port25_by_sensor", "sensor") == {"br-dsl-1": (5, 3, 5, 4, 15, 6, 4, 3),
                                                "us-cable-1": (1, 0, 1, 1, 6, 0, 1, 1)}
    assert by("port25_by_month", "month") == {"2026-01": (5, 3, 5, 4, 15, 6, 4, 3),
                                              "2026-02": (1, 0, 1, 1, 6, 0, 1, 1)}
    assert by("port25_by_protocol", "protocol") == {"SOCKS": (4, 1, 4, 1, 15, 1, 2, 1),
                                                    "HTTP": (1, 1, 1, 3, 2, 2, 1, 2),
                                                    "SMTP": (1, 1, 1, 1, 4, 3, 1, 1)}
    assert t["port25_by_sensor"][0]["prevented_pct"] == pytest.approx(62.5)


def test_concentration(data: Path) -> None:
    rows = {r["scope"]: r for r in run(data)["port25_concentration"]}
    assert {r["unit"] for r in run(data)["port25_concentration"]} == {"source IP"}  # no AS without enrichment
    # 200.160.2.3 sent 4 of the 9 emails; 6 mailing IPs, so the top 1% and 10% are both that one IP
    assert (rows["all spam"]["sources"], rows["all spam"]["emails"], rows["all spam"]["top1"],
            rows["all spam"]["top10"]) == (6, 9, 1, 1)
    assert rows["all spam"]["top1_share"] == pytest.approx(400 / 9)
    assert rows["prevented"]["top10_share"] == pytest.approx(400 / 6)
    assert (rows["not prevented"]["sources"], rows["not prevented"]["top1_share"]) == (3, pytest.approx(100 / 3))


def test_concentration_top_ten_percent(tmp_path: Path) -> None:
    # 20 IPs: ip i sends i+1 emails through a tunnel to 25; top 1% = 1 IP (20), top 10% = 2 IPs (20 + 19)
    c = Capture(tmp_path)
    for i in range(20):
        s = c.session(f"192.0.2.{i + 1}", 1080).request("socks5", "mx.a.example", 25)
        for _ in range(i + 1):
            s.mail(1, "socks5:mx.a.example:25")
    c.flush()
    row = run(tmp_path)["port25_concentration"][0]
    assert (row["unit"], row["scope"], row["sources"], row["emails"], row["top1"], row["top10"]) == \
        ("source IP", "all spam", 20, 210, 1, 2)
    assert row["top1_share"] == pytest.approx(2000 / 210)
    assert row["top10_share"] == pytest.approx(3900 / 210)


def test_statement_and_filters(data: Path) -> None:
    t = run(data)
    assert t["port25_statement"][0]["statement"].startswith(
        "66.7% of the captured spam (6 emails, from 4 source IPs) relied on outbound 25/TCP")
    assert "other 33.3% (3 emails)" in t["port25_statement"][0]["statement"]
    only = run(data, sensors=["us-cable-1"])
    assert [(r["outcome"], r["sessions"], r["emails"]) for r in only["port25_outcome"]] == \
        [("prevented", 1, 1), ("not prevented", 1, 0), ("total", 2, 1)]
    assert only["port25_statement"][0]["statement"].startswith("100.0% of the captured spam (1 emails")


def test_empty_capture(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    t = run(tmp_path)
    assert t["port25_statement"][0]["statement"].startswith("No spam was captured")
    assert t["port25_outcome"] == [dict(outcome="total", sessions=0, emails=0, emails_pct=None,
                                        rcpts=0, ips=0)]


def test_cli_formats(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_main(["policy", "port25", "--data-dir", str(data), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tables"]["port25_outcome"]["rows"][0] == {
        "outcome": "prevented", "sessions": 6, "emails": 6, "emails_pct": pytest.approx(66.666667), "rcpts": 21,
        "ips": 4}
    assert "definition" in doc["tables"]["port25_by_month"]
    out = tmp_path / "out"
    out.mkdir()
    assert policy_main(["policy", "port25", "--data-dir", str(data), "--from", "2026-02-01",
                        "--out", str(out / "p.md")]) == 0
    md = (out / "p.md").read_text()
    assert "100.00" in md and "relied on outbound 25/TCP" in md
    assert md.startswith("# spampots policy port25\n")
    assert policy_main(["policy", "port25", "--data-dir", str(data), "--out", str(out / "p.html")]) == 0
    page = (out / "p.html").read_text()
    assert "Per month (trend)" in page and "<title>spampots policy port25</title>" in page
    assert "<h1>spampots policy port25</h1>" in page and "<h1>spampots report" not in page
    # the stacked chart, inline SVG placed after the per-month table: months as text, both series
    chart = page[page.index('<figure id="chart-port25_month"><svg'):]
    assert page.index('id="port25_by_month"') < page.index("chart-port25_month")
    chart = chart[: chart.index("</figure>")]
    assert "2026-01" in chart and "2026-02" in chart and "not prevented" in chart and "<script" not in chart
    assert policy_main(["policy", "port25", "--data-dir", str(data), "--format", "csv",
                        "--out", str(out / "csv")]) == 0
    assert (out / "csv" / "port25_by_protocol.csv").read_text().splitlines()[1].startswith("HTTP,1,1,50.0")
    assert policy_main(["policy", "port25", "--data-dir", str(data)]) == 0
    assert "relied on outbound 25/TCP" in capsys.readouterr().out
    assert policy_main(["policy", "port25", "--data-dir", str(tmp_path / "missing")]) == 2


def test_listener_kinds_from_sensor_start(tmp_path: Path) -> None:
    """With --port-offset the smtp listener is not on 25: sensor.start says what it is."""
    c = Capture(tmp_path)
    start = ev.SensorStart(version="t", listeners=[ev.Listener(address="0.0.0.0", port=20025, kind="smtp"),
                                                   ev.Listener(address="0.0.0.0", port=2525, kind="submission")])
    ev.stamp(start, sensor=c.sensor, session="", src_ip="", src_port=0, listener_port=0, protocol="sensor",
             depth=0, ts=c.tick())
    c.pending.append(start)
    mail_to(c.session("5.5.5.5", 20025, "smtp"), 2, None)  # open relay on the smtp listener
    mail_to(c.session("5.5.5.6", 2525, "smtp"), 1, None)  # a submission listener, no AUTH: not port 25
    c.flush()
    cats = {r["category"]: (r["sessions"], r["emails"]) for r in run(tmp_path)["port25_categories"]}
    assert cats == {"open relay on our 25/TCP": (1, 1), "direct SMTP on other ports": (1, 1), "all": (2, 2)}


def test_every_query_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "policy.md").read_text()
    names = [q.name for q in port25.QUERIES] + list(port25.BASES) + ["port25_statement"]
    assert [n for n in names if f"`{n}`" not in doc] == []


def test_country_and_asn(data: Path) -> None:
    lake = Lake(data)
    lake.compact()
    rep = port25.run(lake.connect(), enricher=Enricher(None, cache_dir=data / "cache"), top=20)
    country = {r[0]: r for r in rep.get("port25_by_country").rows}
    # 200.160.2.3 (NIC.br) sent all 4 of Brazil's emails, all through tunnels to 25
    assert country["BR"][1:4] == (4, 0, 100.0)
    assert sum(r[1] + r[2] for r in country.values()) == 9
    asn = rep.get("port25_by_asn").rows
    assert sum(r[2] + r[3] for r in asn) == 9 and asn[0][2] == 4
    units = {(r[0], r[1]): r for r in rep.get("port25_concentration").rows}
    assert units[("AS", "all spam")][3] == 9  # every mailing source located, so every email counted
    assert units[("AS", "all spam")][5] == pytest.approx(400 / 9)
    assert port25.run(lake.connect(), enricher=None, top=1).get("port25_by_country").rows == \
        [("??", 6, 3, pytest.approx(200 / 3), 6, 5, 21, 6, 4, 4)]


def test_statement_is_a_paragraph_to_paste(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The sentence meant for a letter to an ISP is prose in every format, never a number cell."""
    import re

    assert policy_main(["policy", "port25", "--data-dir", str(data), "--out", str(tmp_path / "p.html")]) == 0
    page = (tmp_path / "p.html").read_text()
    para = re.search(r'<p class="statement" id="t-port25_statement">([^<]*)</p>', page)
    assert para and para.group(1).startswith("66.7% of the captured spam (6 emails")
    assert not re.search(r"<td[^>]*>[^<]*relied on", page) and "p.statement{" in page
    assert policy_main(["policy", "port25", "--data-dir", str(data), "--out", str(tmp_path / "p.md")]) == 0
    md = (tmp_path / "p.md").read_text().splitlines()
    line = next(x for x in md if "relied on outbound" in x)
    assert line.startswith("66.7% of the captured spam") and "|" not in line
    assert policy_main(["policy", "port25", "--data-dir", str(data), "--locale", "pt_BR",
                        "--out", str(tmp_path / "pt.md")]) == 0
    assert "66,7% do spam capturado (6 e-mails, de 4 IPs de origem) dependeu de saída para 25/TCP: a Gerência " \
           "da Porta 25 no provedor o teria barrado." in (tmp_path / "pt.md").read_text()


def test_as_named_once(data: Path) -> None:
    """With AS names alone (no AS numbers), the AS column is empty: the name is shown once."""
    lake = Lake(data)
    lake.compact()
    rep = port25.run(lake.connect(), enricher=Enricher(None, cache_dir=data / "cache"), top=20)
    rows = rep.get("port25_by_asn").rows
    assert rows
    for r in rows:
        assert r[0] != r[1], r
        assert r[0] == "" or (r[0].startswith("AS") and r[0][2:].isdigit()), r


def test_bases_are_grouped_not_one_row_per_email(tmp_path: Path) -> None:
    """A session of many emails is a few base rows (10M-email lake: 14-20 s with one row per email
    and session and windows over them, 4 s grouped), and the first email still names the session."""
    c = Capture(tmp_path, sensor="br-dsl-1", day="2026-01-05")
    s = c.session("200.160.2.3", 8080).request("http", "smtp.mail.example", 587)
    mail_to(s, 2, "http:smtp.mail.example:587")  # its first email: the session is a tunnel to 587
    for _ in range(40):
        mail_to(s, 1, "http:mx.a.example:25")
    c.flush()
    lake = Lake(tmp_path)
    lake.compact()
    con = lake.connect()
    rep = port25.run(con)
    assert con.execute("SELECT count(*) FROM p25_mail").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM p25_facts").fetchone()[0] == 2
    cats = {r[1]: r[2:5] for r in rep.get("port25_categories").rows}
    assert cats["tunnel to 587/TCP"] == (1, 1, pytest.approx(100 / 41))
    assert cats["tunnel to 25/TCP"][:2] == (0, 40)
    assert {r[0]: r[1:5] for r in rep.get("port25_by_protocol").rows}["HTTP"] == (40, 1, pytest.approx(4000 / 41), 0)


def test_policy_connection_has_the_report_memory_limit(data: Path) -> None:
    """`policy port25` and `notify` read the lake within the report's memory limit (DuckDB's own
    default, 80% of RAM, before), spilling into the lake's spill dir."""
    from spampots.analysis.lake import new_connection, report_memory_limit
    from spampots.cli import build_parser
    from spampots.policy.cli import _open

    args = build_parser().parse_args(["policy", "port25", "--data-dir", str(data), "-q", "--asn-db", "none"])
    con, _ = _open(args, "spampots policy port25")
    ref = new_connection(memory_limit=report_memory_limit())
    want = ref.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory')").fetchone() == \
        (want, str(data / "lake" / "_cache" / "spill"))


def test_dashboard_connections_have_the_report_memory_limit(data: Path) -> None:
    """`spampots serve` computes the report's and the Port 25 tables within the same memory
    limit as `report` and `policy port25` (DuckDB's 80% of RAM before), on the same figures."""
    from spampots.analysis.lake import new_connection, report_memory_limit
    from spampots.serve.queries import Figures, Settings

    want = new_connection(memory_limit=report_memory_limit()).execute(
        "SELECT current_setting('memory_limit')").fetchone()[0]
    figures = Figures(Settings(data_dir=data))
    try:
        snap = figures.refresh()
        assert snap.con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == want
        assert snap.port25 is not None and snap.port25["tables"]
    finally:
        figures.close()
