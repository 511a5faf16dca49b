"""The report from events written the way the sensor writes them: exact counts, open segments,
compaction bookkeeping, filters, and the three ways to count outbound attempts.

The helpers here (Capture) are shared by the other analysis tests.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Optional

import pytest

from spampots import events as ev
from spampots.analysis import metrics, ports
from spampots.analysis.cli import main as cli_main
from spampots.analysis.enrich import Enricher
from spampots.analysis.lake import Lake
from spampots.store.segments import SegmentWriter

_ids = itertools.count(1)


class Capture:
    """Builds a data directory of event segments, session by session."""

    def __init__(self, data_dir: Path, sensor: str = "br-dsl-1", day: str = "2026-01-05") -> None:
        self.data_dir = data_dir
        self.sensor = sensor
        self.t = dt.datetime.fromisoformat(day + "T10:00:00+00:00")
        self.pending: list[ev.Event] = []

    def tick(self) -> str:
        self.t += dt.timedelta(seconds=1)
        return self.t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def session(self, ip: str, port: int, protocol: str = "unknown", tcp_sig: Optional[str] = None) -> "Sess":
        return Sess(self, ip, port, protocol, tcp_sig)

    def add(self, e: ev.Event, s: "Sess", depth: int = 0, protocol: Optional[str] = None) -> None:
        ev.stamp(e, sensor=self.sensor, session=s.id, src_ip=s.ip, src_port=40000, listener_port=s.port,
                 protocol=protocol or s.protocol, depth=depth, ts=self.tick())
        self.pending.append(e)

    def flush(self, *, close: bool = True, torn: bytes = b"") -> Path:
        """Write pending events to one segment: closed (.jsonl.zst) or left open (.jsonl.zst.open)."""
        t0 = self.t.timestamp()
        w = SegmentWriter(self.data_dir, self.sensor, clock=lambda: t0)
        w.write(ev.encode_many(self.pending) + torn)
        self.pending = []
        path = w.current
        if close:
            return w.close()
        w.abandon()
        return path


class Sess:
    def __init__(self, cap: Capture, ip: str, port: int, protocol: str, tcp_sig: Optional[str] = None) -> None:
        self.cap, self.ip, self.port, self.protocol = cap, ip, port, protocol
        self.id = f"s{next(_ids):06d}"
        cap.add(ev.SessionOpen(listener_addr="0.0.0.0", tcp_sig=tcp_sig), self)

    def request(self, proxy: str, host: str, port: int, command: str = "connect", depth: int = 0,
                **kw) -> "Sess":
        self.cap.add(ev.ProxyRequest(proxy=proxy, command=command, target_host=host, target_port=port, **kw),
                     self, depth, proxy)
        return self

    def mail(self, rcpts: int, via: Optional[str] = None, depth: int = 1, subject: str = "hi",
             helo: str = "pc1", mail_from: str = "a@spam.example") -> "Sess":
        self.cap.add(ev.SmtpMessage(helo=helo, mail_from=mail_from,
                                    rcpts=[f"u{i}@dom{i % 2}.example" for i in range(rcpts)],
                                    subject=subject, via=[via] if via else [],
                                    target_host=via.split(":")[1] if via else None,
                                    target_port=25 if via else None, sha256="0" * 64, size=100),
                     self, depth if via else 0, "smtp")
        return self

    def error(self, kind: str, depth: int = 0) -> "Sess":
        self.cap.add(ev.ProtocolError(kind=kind, detail="bad"), self, depth)
        return self


def talk_like(data_dir: Path) -> Capture:
    """A small capture whose every table is known by hand (see the asserts below)."""
    c = Capture(data_dir)
    # SOCKS on 1080: three CONNECTs to :25 (2 + 1 + 0 mails), one to :6667; 3127 one CONNECT to :25 (1 mail)
    c.session("200.160.2.3", 1080).request("socks5", "mx.a.example", 25).mail(3, "socks5:mx.a.example:25") \
        .mail(5, "socks5:mx.a.example:25")
    c.session("200.160.2.3", 1080).request("socks4", "mx.b.example", 25).mail(1, "socks4:mx.b.example:25")
    c.session("8.8.8.8", 1080).request("socks5", "mx.a.example", 25)
    c.session("8.8.8.8", 1080).request("socks5", "irc.example", 6667, username="admin", password="pw",
                                       auth_method="userpass")
    c.session("1.1.1.1", 3127).request("socks4a", "mx.c.example", 25).mail(10, "socks4a:mx.c.example:25")
    # HTTP on 8080: two CONNECTs to :25 (1 mail each), one keep-alive with 2 GETs, one CONNECT :443
    c.session("1.1.1.1", 8080).request("http", "mx.a.example", 25).mail(2, "http:mx.a.example:25")
    c.session("9.9.9.9", 8080).request("http", "mx.a.example", 25).mail(2, "http:mx.a.example:25")
    c.session("9.9.9.9", 8080).request("http", "example.com", 80, "get", url="http://example.com/") \
        .request("http", "example.org", 80, "get", url="http://example.org/")
    c.session("9.9.9.9", 8080).request("http", "www.example.com", 443)
    # errors: socks5 garbage on 1080; unknown bytes on 8080 (-> HTTP by the port table); an HTTP error
    # after a good request (not an error session); an SMTP error on 25 (not an outbound attempt)
    c.session("10.1.2.3", 1080).error("socks5.bad_version")
    c.session("10.1.2.3", 8080).error("sniff.unknown")
    c.session("9.9.9.9", 8080).request("http", "mx.a.example", 25).error("http.malformed")
    # direct SMTP on 25: one message of 4 recipients, and a session with only an error
    c.session("2001:db8::1", 25, "smtp").mail(4)
    c.session("2001:db8::1", 25, "smtp").error("smtp.bad_command")
    return c


def report(data_dir: Path, first_per: str = "connection", exact_limit: int = 5_000_000,
           **kw) -> metrics.Report:
    lake = Lake(data_dir)
    lake.compact()
    con = lake.connect(**kw)
    return metrics.run(con, ports=ports.load(), enricher=Enricher(),
                       opts=metrics.Options(first_per=first_per, exact_limit=exact_limit))


def rows(rep: metrics.Report, name: str) -> list[dict]:
    r = rep.get(name)
    return [dict(zip([c.key for c in r.columns], row)) for row in r.rows]


def outbound(rep: metrics.Report, cls: str) -> dict[str, int]:
    return {row["type"]: row["requests"] for row in rows(rep, f"outbound_{cls}")}


# ---------------------------------------------------------------------------------------------
def test_talk_tables_count_what_was_sent(tmp_path: Path) -> None:
    talk_like(tmp_path).flush()
    rep = report(tmp_path)
    s = rows(rep, "summary")[0]
    assert s["emails"] == 7 and s["rcpts"] == 3 + 5 + 1 + 10 + 2 + 2 + 4
    assert s["rcpts_per_spam"] == pytest.approx(27 / 7)
    assert s["days"] == 1 and s["first_day"] == dt.date(2026, 1, 5)
    assert s["ips_mail"] == 4  # 200.160.2.3, 1.1.1.1 (two ports), 9.9.9.9, 2001:db8::1
    assert s["ips_all"] == 6  # + 8.8.8.8 and the private 10.1.2.3
    assert s["unlocated"] == 2  # 10.1.2.3 (private) and 2001:db8::1 (documentation range)
    assert s["cc_mail"] == 3  # BR, AU, US: never '--'
    by_port = {(r["port"], r["protocol"]): (r["emails"], r["service"]) for r in rows(rep, "ports")}
    assert by_port == {(1080, "SOCKS"): (3, "socks"), (3127, "SOCKS"): (1, "MyDoom"),
                       (8080, "HTTP"): (2, "http"), (25, "SMTP"): (1, "smtp")}
    assert sum(r["pct"] for r in rows(rep, "ports")) == pytest.approx(100.0)
    assert outbound(rep, "socks") == {"Out to 25/TCP": 4, "Out to other ports": 1, "Errors": 1, "Total": 6}
    assert outbound(rep, "http") == {"Out to 25/TCP": 3, "Out to other ports": 1, "GET (usually web)": 1,
                                     "Errors": 1, "Total": 6}


def test_first_per_modes(tmp_path: Path) -> None:
    talk_like(tmp_path).flush()
    # none: the keep-alive session's second GET counts too
    assert outbound(report(tmp_path, "none"), "http")["GET (usually web)"] == 2
    # source-ip: 9.9.9.9 counts once for HTTP (its first request: CONNECT :25), 1.1.1.1 once,
    # 10.1.2.3 once (its error on 8080)
    http = outbound(report(tmp_path, "source-ip"), "http")
    assert http == {"Out to 25/TCP": 2, "Out to other ports": 0, "GET (usually web)": 0, "Errors": 1, "Total": 3}
    socks = outbound(report(tmp_path, "source-ip"), "socks")
    assert socks["Total"] == 4  # 200.160.2.3, 8.8.8.8, 1.1.1.1 (3127), 10.1.2.3 (error)


def test_open_segment_with_torn_line_is_read_and_compaction_is_idempotent(tmp_path: Path) -> None:
    c = talk_like(tmp_path)
    c.flush()
    c.session("200.160.2.3", 1080).request("socks5", "mx.a.example", 25).mail(7, "socks5:mx.a.example:25")
    open_seg = c.flush(close=False, torn=b'{"event":"spampots.smtp.mess')
    assert open_seg.name.endswith(".jsonl.zst.open")
    with open(open_seg, "ab") as f:  # and half of the next frame, as a writer killed mid-write leaves it
        f.write(SegmentWriter(tmp_path, "x")._cctx.compress(b'{"event":"spampots.smtp.message"}\n' * 9)[:20])
    assert rows(report(tmp_path), "summary")[0]["emails"] == 8
    lake = Lake(tmp_path)
    assert lake.compact().segments == 0  # the closed one is in already; the open one is never compacted
    assert lake.segments().compacted == 1 and lake.segments().open == [open_seg]
    # a crash between Parquet write and manifest: the orphan part is dropped, not counted twice
    part = next((tmp_path / "lake" / "smtp_message").glob("day=*/part-*.parquet"))
    part.with_name("part-deadbeefdeadbeef-0.parquet").write_bytes(part.read_bytes())
    assert rows(report(tmp_path), "summary")[0]["emails"] == 8
    assert not part.with_name("part-deadbeefdeadbeef-0.parquet").exists()
    # rebuild gives the same numbers
    lake.compact(rebuild=True)
    assert rows(report(tmp_path), "summary")[0]["emails"] == 8


def test_session_split_over_two_compactions_counts_its_first_request_once(tmp_path: Path) -> None:
    c = Capture(tmp_path)
    s = c.session("1.1.1.1", 8080).request("http", "a.example", 80, "get", url="http://a.example/")
    c.flush()
    Lake(tmp_path).compact()
    s.request("http", "b.example", 80, "get", url="http://b.example/")
    c.flush()
    rep = report(tmp_path)
    assert outbound(rep, "http")["GET (usually web)"] == 1
    assert outbound(report(tmp_path, "none"), "http")["GET (usually web)"] == 2


def test_filters_by_day_and_sensor(tmp_path: Path) -> None:
    a = Capture(tmp_path, sensor="br-dsl-1", day="2026-01-05")
    a.session("1.1.1.1", 1080).request("socks5", "mx.example", 25).mail(2, "socks5:mx.example:25")
    a.flush()
    b = Capture(tmp_path, sensor="br-cable-2", day="2026-01-07")
    b.session("8.8.8.8", 8080).request("http", "mx.example", 25).mail(3, "http:mx.example:25")
    b.flush()
    assert rows(report(tmp_path), "summary")[0]["emails"] == 2
    assert rows(report(tmp_path, sensors=["br-cable-2"]), "summary")[0]["rcpts"] == 3
    only = report(tmp_path, day_from=dt.date(2026, 1, 6))
    assert rows(only, "summary")[0]["emails"] == 1
    assert [r["sensor"] for r in rows(only, "per_sensor")] == ["br-cable-2"]
    assert rows(report(tmp_path, day_to=dt.date(2026, 1, 4)), "summary")[0]["emails"] == 0


def test_more_tables(tmp_path: Path) -> None:
    c = talk_like(tmp_path)
    s = c.session("8.8.8.8", 1080).request("socks5", "proxy2.example", 1080)
    s.request("socks5", "mx.z.example", 25, depth=1).mail(1, "socks5:proxy2.example:1080", depth=2)
    c.add(ev.TlsHello(target_host="www.example.com", target_port=443, sni="www.example.com",
                      tls_version="TLS1.3"), s, 1, "tls")
    c.add(ev.LimitHit(limit="max_rcpts", value=100, observed=500), s)
    c.add(ev.SmtpAuth(mechanism="LOGIN", username="root", password="toor"), s, 2, "smtp")
    c.flush()
    rep = report(tmp_path)
    creds = {(r["protocol"], r["username"], r["password"]): r["attempts"] for r in rows(rep, "credentials")}
    assert creds == {("socks5", "admin", "pw"): 1, ("smtp login", "root", "toor"): 1}
    chains = {r["depth"]: r for r in rows(rep, "proxy_chains")}
    assert chains[1]["requests"] == 1 and chains[1]["sessions"] == 1 and chains[2]["emails"] == 1
    assert rows(rep, "tls_sni") == [{"sni": "www.example.com", "hellos": 1, "ips": 1, "versions": "TLS1.3"}]
    assert rows(rep, "limits")[0]["limit"] == "max_rcpts"
    mx = {r["target"]: r["emails"] for r in rows(rep, "target_mx")}
    assert mx["mx.a.example"] == 4 and mx["(direct)"] == 1
    assert {r["domain"]: r["rcpts"] for r in rows(rep, "rcpt_domains")} == {"dom0.example": 16, "dom1.example": 12}
    countries = {r["country"]: r for r in rows(rep, "top_countries")}
    assert countries["BR"]["emails"] == 3 and countries["--"]["sources"] == 2
    assert sum(r["sessions"] for r in rows(rep, "hours")) == 15
    assert rows(rep, "daily")[0]["emails"] == 8


def test_cli_report_formats(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    talk_like(tmp_path).flush()
    assert cli_main(["report", "--data-dir", str(tmp_path), "--format", "json", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tables"]["summary"]["rows"][0]["emails"] == 7
    assert doc["meta"]["first_per"] == "connection"
    md = tmp_path / "r.md"
    assert cli_main(["report", "--data-dir", str(tmp_path), "--out", str(md), "--locale", "pt", "-q"]) == 0
    text = md.read_text()
    # pt is pt_BR: the talk's numbers and its words
    assert "| Saída para 25/TCP | 4 | 66,67 |" in text and "| **Total** | **6** | **100,00** |" in text
    assert cli_main(["report", "--data-dir", str(tmp_path), "--format", "csv", "--out", str(tmp_path / "csv"),
                     "-q"]) == 0
    assert (tmp_path / "csv" / "ports.csv").read_text().startswith("port,protocol,service,emails,pct\n")
    assert cli_main(["report", "--data-dir", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "Collection summary" in out and "Outbound attempts: SOCKS" in out
    assert cli_main(["report", "--data-dir", str(tmp_path / "missing")]) == 2
    assert cli_main(["compact", "--data-dir", str(tmp_path), "-q"]) == 0


def test_register_keeps_a_global_data_dir() -> None:
    import argparse

    from spampots.analysis.cli import register

    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", type=Path, default=Path("var"))
    register(p.add_subparsers(dest="cmd"))
    assert p.parse_args(["--data-dir", "/x", "report"]).data_dir == Path("/x")
    assert p.parse_args(["report", "--data-dir", "/y"]).data_dir == Path("/y")
    args = p.parse_args(["synth", "--messages", "1_000"])
    assert args.messages == 1000 and callable(args.func)
    assert p.parse_args(["compact"]).func.__name__ == "cmd_compact"


def test_two_compactions_at_once_do_not_double_count(tmp_path: Path) -> None:
    import subprocess
    import sys

    for day in ("2026-01-05", "2026-01-06", "2026-01-07"):
        for sensor in ("a", "b"):
            c = Capture(tmp_path, sensor=sensor, day=day)
            c.session("1.1.1.1", 1080).request("socks5", "mx.example", 25).mail(1, "socks5:mx.example:25")
            c.flush()
    cmd = [sys.executable, "-m", "spampots.analysis.cli", "compact", "--data-dir", str(tmp_path), "-q"]
    procs = [subprocess.Popen(cmd) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    manifest = (tmp_path / "lake" / "_manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 6
    assert rows(report(tmp_path), "summary")[0]["emails"] == 6


def test_listener_kinds_from_sensor_start_name_offset_ports(tmp_path: Path) -> None:
    c = Capture(tmp_path)
    start = ev.SensorStart(version="t", listeners=[ev.Listener(address="127.0.0.1", port=21080, kind="socks"),
                                                   ev.Listener(address="127.0.0.1", port=20025, kind="smtp")])
    ev.stamp(start, sensor=c.sensor, session="", src_ip="", src_port=0, listener_port=0, protocol="sensor",
             depth=0, ts=c.tick())
    c.pending.append(start)
    c.session("1.1.1.1", 21080).request("socks5", "mx.example", 25).mail(1, "socks5:mx.example:25")
    c.session("1.1.1.1", 21080).error("raw.unknown_protocol")
    c.session("1.1.1.1", 20025).error("raw.unknown_protocol")
    c.flush()
    rep = report(tmp_path, day_from=dt.date(2026, 1, 5))
    assert rows(rep, "ports")[0] == {"port": 21080, "protocol": "SOCKS", "service": "socks", "emails": 1,
                                     "pct": 100.0}
    assert outbound(rep, "socks")["Errors"] == 1  # the garbage on the SOCKS listener
    assert [r.name for r in rep.results if r.name.startswith("outbound_")] == ["outbound_http", "outbound_socks"]


def test_no_compact_reads_closed_segments_from_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    talk_like(tmp_path).flush()
    assert cli_main(["report", "--data-dir", str(tmp_path), "--no-compact", "--format", "json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["tables"]["summary"]["rows"][0]["emails"] == 7
    assert not list((tmp_path / "lake").glob("*/day=*/*.parquet"))
    assert Lake(tmp_path).segments().closed  # still waiting for compaction


def test_bad_inputs_exit_2(tmp_path: Path) -> None:
    talk_like(tmp_path).flush()
    bad_db = tmp_path / "bad.mmdb"
    bad_db.write_bytes(b"not a database")
    assert cli_main(["report", "--data-dir", str(tmp_path), "--asn-db", str(bad_db), "-q"]) == 2
    assert cli_main(["report", "--data-dir", str(tmp_path), "--asn-db", str(tmp_path / "none.tsv"), "-q"]) == 2
    bad_ports = tmp_path / "ports.toml"
    bad_ports.write_text('[ports]\n2525 = { protocol = "FTP" }\n')
    assert cli_main(["report", "--data-dir", str(tmp_path), "-q"]) == 2  # <data-dir>/ports.toml is read
    bad_ports.write_text('[ports]\n2525 = { protocol = "SMTP", service = "smtp-alt" }\n')
    rep_out = tmp_path / "r.json"
    assert cli_main(["report", "--data-dir", str(tmp_path), "--out", str(rep_out), "-q"]) == 0
    assert cli_main(["report", "--data-dir", str(tmp_path), "--format", "html", "-q"]) == 2  # html needs --out


def test_talk_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    talk_like(tmp_path).flush()
    assert cli_main(["report", "--data-dir", str(tmp_path), "--talk-only", "--format", "json", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["tables"]) == ["summary", "ports", "ports_sessions", "outbound_http", "outbound_socks"]
    assert "sess_hours" not in doc["meta"]["timings"] and "sample" not in doc["meta"]["timings"]
    assert doc["tables"]["outbound_socks"]["rows"][-1]["requests"] == 6
    html = tmp_path / "t.html"
    assert cli_main(["report", "--data-dir", str(tmp_path), "--talk-only", "--out", str(html), "-q"]) == 0
    assert 'id="chart-ports"' in html.read_text() and 'id="chart-daily"' not in html.read_text()


def test_csv_report_neutralises_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Subjects and HELO names are the attacker's: no raw ESC, BEL, CR or bidi override in the CSV."""
    hostile = "\x1b]0;owned\x07\rRE: \u202etxt.exe"
    c = Capture(tmp_path)
    c.session("200.160.2.3", 25, "smtp").mail(1, subject=hostile, helo="pc\x1b[2J\x07" + hostile)
    c.flush()
    assert cli_main(["report", "--data-dir", str(tmp_path), "--format", "csv", "-q"]) == 0
    out = capsys.readouterr().out
    for ch in ("\x1b", "\x07", "\r", "\u202e"):
        assert ch not in out
    assert "\\x1b]0;owned\\x07\\x0dRE: \\u202etxt.exe" in out  # shown, not interpreted
    assert cli_main(["report", "--data-dir", str(tmp_path), "--format", "csv", "--out", str(tmp_path / "csv"),
                     "-q"]) == 0
    text = (tmp_path / "csv" / "helo.csv").read_text()
    assert "pc\\x1b[2J\\x07" in text and not any(ch in text for ch in ("\x1b", "\x07", "\r", "\u202e"))


def test_report_shows_its_steps_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal, stderr names each step of the report and counts them (step k of n);
    with stderr piped it says nothing of the kind."""
    import subprocess
    import sys

    from conftest import run_on_a_terminal

    talk_like(tmp_path).flush()
    args = ["report", "--data-dir", str(tmp_path), "--format", "json", "--out", str(tmp_path / "r.json")]
    text = run_on_a_terminal(args, timeout=120, columns=160)
    # bases, enrichment, attempts, sample, SYN fingerprints (the sig_os tables), every table
    total = len(metrics.bases_for(metrics.METRICS)) + 5 + len(metrics.METRICS)
    last = metrics.METRICS[-1].name
    for name in ("counting sessions", "base table msg_cube", "SYN fingerprints", "enriching source IPs",
                 "outbound attempts", "table summary", "table campaigns", "table daily"):
        assert name in text, name
    assert f"step 1 of {total}" in text and f"step {total} of {total}: table {last}" in text
    r = subprocess.run([sys.executable, "-m", "spampots.cli", *args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and b"step " not in r.stderr and b"\x1b[" not in r.stderr


def test_parts_older_than_a_derived_column_get_it_computed(tmp_path: Path) -> None:
    """A lake compacted before session_bucket existed (all its parts, or some: a mixed lake) reads
    the column as compaction would have written it; the footer cache notices the rewritten parts."""
    import duckdb

    c = talk_like(tmp_path)
    c.flush()
    lake = Lake(tmp_path)
    lake.compact()
    c.session("5.6.7.8", 25, "smtp").mail(3)
    c.flush()
    lake.compact()
    check = ("SELECT count(*), count(*) FILTER (WHERE session_bucket = md5_number_lower(session) % 4096) "
             "FROM smtp_message")
    n0, good = lake.connect().execute(check).fetchone()
    assert n0 == good == 8
    parts = sorted((lake.root / "smtp_message").glob("day=*/*.parquet"))
    assert len(parts) == 2  # one per compaction

    def sampled() -> dict:
        rep = metrics.run(lake.connect(), ports=ports.load(), enricher=Enricher(),
                          opts=metrics.Options(exact_limit=2))  # 8 emails: a sample of 1024 buckets in 4096
        assert "1024 in 4096" in rep.get("helo").note
        return {n: rep.get(n).rows for n in ("helo", "rcpt_domains", "subjects", "campaigns", "target_mx")}

    before = sampled()
    for p in parts:  # the first: a mixed lake; then both: all old
        duckdb.execute(f"COPY (SELECT * EXCLUDE (session_bucket) FROM read_parquet('{p}')) TO '{p}.tmp' "
                       "(FORMAT parquet)")
        Path(f"{p}.tmp").replace(p)
        n, good = lake.connect().execute(check).fetchone()
        assert n == good == n0, p
    assert sampled() == before


def test_duckdb_never_prints_its_bar_into_our_output() -> None:
    """DuckDB prints a progress bar to stdout on queries past progress_bar_time (2 s), even into a
    pipe: at the talk's scale that landed in `report --format json`. Our connections never print it."""
    import subprocess
    import sys

    code = ("from spampots.analysis.lake import new_connection; c = new_connection(); "
            "c.execute('SET progress_bar_time = 0'); "
            "c.execute('SELECT count(*) FROM range(300000000) t(i) WHERE i % 7 = 3').fetchall()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout == b"", r.stdout[:200]
