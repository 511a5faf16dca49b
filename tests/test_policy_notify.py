"""`spampots notify` on a capture whose every figure is known by hand.

AS numbers come from a small iptoasn TSV (--asn-db), so the networks do not depend on the
bundled GeoLite2 data. Timestamps: Capture ticks one second per event from 10:00:00 UTC,
a session's open event included.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from pathlib import Path

import pytest

from spampots.analysis.enrich import Enricher
from spampots.analysis.lake import Lake
from spampots.policy import notify
from spampots.policy.cli import main as policy_main
from test_analysis_pipeline import Capture
from test_policy_port25 import mail_to

EVIL_SUBJECT = "Hello\r\nBcc: x@y \x1b[31mred\u202eevil"
EVIL_HELO = "pc\nX-Injected: 1"
TSV = "\n".join("\t".join(r) for r in [
    ("200.160.0.0", "200.160.15.255", "22548", "BR", "NIC.br"),
    ("8.8.8.0", "8.8.8.255", "15169", "US", "GOOGLE"),
    ("1.1.1.0", "1.1.1.255", "13335", "AU", "CLOUDFLARENET"),
    ("5.5.5.0", "5.5.5.255", "6805", "DE", "=cmd|' /C calc'!A0"),
    ("9.9.9.0", "9.9.9.255", "19281", "US", "QUAD9-AS-1"),
    ("7.7.7.0", "7.7.7.255", "64500", "US", "EVIL\x1b[31mNET\u202eX"),
]) + "\n"
NOW = dt.datetime(2026, 3, 1, 12, 0, 0)


def capture(data_dir: Path) -> None:
    c = Capture(data_dir, sensor="br-dsl-1", day="2026-01-05")
    # AS22548: two IPs; 200.160.2.3 sends 3 emails over SOCKS (and 1 more in February), .4 one over HTTP
    c.session("200.160.2.3", 1080).request("socks5", "mx.a.example", 25).mail(3, "socks5:mx.a.example:25") \
        .mail(5, "socks5:mx.a.example:25")                                              # :01-:04
    c.session("200.160.2.3", 1080).request("socks4", "mx.b.example", 25).mail(1, "socks4:mx.b.example:25")  # :05-:07
    c.session("200.160.2.4", 8080).request("http", "mx.a.example", 25) \
        .mail(2, "http:mx.a.example:25", subject=EVIL_SUBJECT, helo=EVIL_HELO)         # :08-:10
    c.session("8.8.8.8", 1080).request("socks5", "mx.a.example", 25)                   # :11-:12, no mail
    mail_to(c.session("5.5.5.5", 25, "smtp"), 4, None)                                 # :13-:14 open relay
    mail_to(c.session("9.9.9.9", 8080).request("http", "smtp.mail.example", 587), 2,
            "http:smtp.mail.example:587")                                              # :15-:17
    c.session("9.9.9.9", 8080).request("http", "example.com", 80, "get", url="http://example.com/") \
        .request("http", "example.org", 80, "get", url="http://example.org/\x1b[2J")    # :18-:20
    mail_to(c.session("10.1.2.3", 25, "smtp"), 1, None)                                # :21-:22 private
    mail_to(c.session("7.7.7.7", 1080).request("socks5", "smtp.x.example", 465), 1,
            "socks5:smtp.x.example:465")                                               # :23-:25
    c.session("7.7.7.8", 1080).error("socks5.bad_version")                             # no use
    c.flush()
    d = Capture(data_dir, sensor="us-cable-1", day="2026-02-10")
    d.session("200.160.2.3", 1080).request("socks5", "mx.c.example", 25).mail(6, "socks5:mx.c.example:25")
    d.session("1.1.1.1", 3128).request("http", "irc.example", 6667)                   # no mail
    d.flush(close=False)  # an open segment: read from JSON


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("notify")
    capture(root / "var")
    (root / "asn.tsv").write_text(TSV)
    Lake(root / "var").compact()
    return root


def collect(data: Path, **kw) -> notify.Notification:
    days = kw.pop("days", (None, None))
    sensors = kw.pop("sensors", ())
    con = Lake(data / "var").connect(day_from=days[0], day_to=days[1], sensors=sensors)
    return notify.collect(con, enricher=Enricher(data / "asn.tsv", cache_dir=data / "cache"),
                          opts=notify.Options(**kw), days=days)


def table(note: notify.Notification) -> list[tuple]:
    return [(n.rank, n.key, n.ips, n.sessions, n.emails, n.rcpts) for n in note.networks]


# -- figures -------------------------------------------------------------------------------------
def test_networks_by_asn(data: Path) -> None:
    note = collect(data)
    # ties on emails and sessions are broken by key: 'AS64500' < 'AS6805'
    assert table(note) == [(1, "AS22548", 2, 4, 5, 17), (2, "AS19281", 1, 2, 1, 2),
                           (3, "AS64500", 1, 1, 1, 1), (4, "AS6805", 1, 1, 1, 4)]
    assert note.not_located == dict(ips=1, sessions=1, emails=1)  # 10.1.2.3; 7.7.7.8 only erred: no use
    assert note.left_out == 2  # AS15169 and AS13335 sent no mail
    assert note.period == (dt.date(2026, 1, 5), dt.date(2026, 2, 10))
    nic = note.networks[0]
    assert (nic.as_number, nic.as_name, nic.countries, nic.stem) == (22548, "NIC.br", ["BR"], "AS22548")
    assert (nic.first_seen, nic.last_seen) == (dt.datetime(2026, 1, 5, 10, 0, 2), dt.datetime(2026, 2, 10, 10, 0, 3))
    assert [(r["ip"], r["sessions"], r["emails"], r["rcpts"], r["our_ports"], r["protocols"], r["target_ports"])
            for r in nic.ip_rows] == [("200.160.2.3", 3, 4, 15, [1080], ["socks4", "socks5"], [25]),
                                      ("200.160.2.4", 1, 1, 2, [8080], ["http"], [25])]
    assert [(s["our_port"], s["protocol"], s["target_port"], s["sessions"], s["emails"], s["rcpts"])
            for s in nic.services] == [(1080, "socks5", 25, 2, 3, 14), (1080, "socks4", 25, 1, 1, 1),
                                       (8080, "http", 25, 1, 1, 2)]
    # emails first, one per IP before a second of any: all five are emails, shown in time order
    assert [(e["ts"].strftime("%m-%d %H:%M:%S"), e["src_ip"], e["kind"]) for e in nic.evidence] == [
        ("01-05 10:00:03", "200.160.2.3", "email"), ("01-05 10:00:04", "200.160.2.3", "email"),
        ("01-05 10:00:07", "200.160.2.3", "email"), ("01-05 10:00:10", "200.160.2.4", "email"),
        ("02-10 10:00:03", "200.160.2.3", "email")]
    relay = note.networks[3]
    assert [(s["our_port"], s["protocol"], s["target_port"]) for s in relay.services] == [(25, "smtp", None)]


def test_filters(data: Path) -> None:
    assert table(collect(data, min_emails=0)) == [
        (1, "AS22548", 2, 4, 5, 17), (2, "AS19281", 1, 2, 1, 2), (3, "AS64500", 1, 1, 1, 1),
        (4, "AS6805", 1, 1, 1, 4), (5, "AS13335", 1, 1, 0, 0), (6, "AS15169", 1, 1, 0, 0)]
    assert table(collect(data, min_emails=2)) == [(1, "AS22548", 2, 4, 5, 17)]
    top = collect(data, top=2)
    assert table(top) == [(1, "AS22548", 2, 4, 5, 17), (2, "AS19281", 1, 2, 1, 2)]
    assert top.left_out == 4
    feb = collect(data, days=(dt.date(2026, 2, 1), None))
    assert table(feb) == [(1, "AS22548", 1, 1, 1, 6)] and feb.period == (dt.date(2026, 2, 1), dt.date(2026, 2, 10))
    assert table(collect(data, sensors=["us-cable-1"], min_emails=0)) == [
        (1, "AS22548", 1, 1, 1, 6), (2, "AS13335", 1, 1, 0, 0)]
    assert len(collect(data, evidence=2).networks[0].evidence) == 2


def test_by_country(data: Path) -> None:
    note = collect(data, by="country")
    assert table(note) == [(1, "BR", 2, 4, 5, 17), (2, "US", 3, 4, 2, 3), (3, "DE", 1, 1, 1, 4)]
    us = note.networks[1]
    assert (us.as_number, us.as_name, us.countries) == (None, None, ["US"])
    assert [(r["ip"], r["as_number"], r["emails"]) for r in us.ip_rows] == [
        ("9.9.9.9", 19281, 1), ("7.7.7.7", 64500, 1), ("8.8.8.8", 15169, 0)]
    assert note.left_out == 1 and note.not_located["ips"] == 1


def test_bundled_names_without_asn_db(data: Path) -> None:
    """Without --asn-db the bundled data has AS names only: the network is the name."""
    con = Lake(data / "var").connect()
    note = notify.collect(con, enricher=Enricher(None, cache_dir=data / "cache-bundled"))
    assert all(n.as_number is None and n.key == n.as_name and not n.key.startswith("AS")
               for n in note.networks)
    assert sum(n.emails for n in note.networks) + note.not_located["emails"] == 9


# -- files ---------------------------------------------------------------------------------------
def written(data: Path, tmp_path: Path, **kw) -> Path:
    template = notify.load_template(kw.pop("template", None))
    opts = notify.Options(**kw)
    note = collect(data, **kw)
    out = tmp_path / "out"
    notify.write(out, note, template, opts, now=NOW)
    return out


def test_per_network_files(data: Path, tmp_path: Path) -> None:
    out = written(data, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{k}.{s}" for k in ("AS22548", "AS19281", "AS64500", "AS6805") for s in ("csv", "json", "txt")]
        + ["index.csv", "index.json"])
    assert (out / "AS22548.csv").read_text() == (
        "ip,first_seen,last_seen,sessions,emails,recipients,our_ports,protocols,target_ports,as_number,as_name,"
        "country\n"
        "200.160.2.3,2026-01-05T10:00:02Z,2026-02-10T10:00:03Z,3,4,15,1080,socks4 socks5,25,22548,NIC.br,BR\n"
        "200.160.2.4,2026-01-05T10:00:09Z,2026-01-05T10:00:10Z,1,1,2,8080,http,25,22548,NIC.br,BR\n")
    line = "2026-01-05T10:00:{}Z  9.9.9.9 port 40000 -> our port 8080/http: "
    assert json.loads((out / "AS19281.json").read_text()) == {
        "network": {"key": "AS19281", "by": "asn", "as_number": 19281, "as_name": "QUAD9-AS-1", "countries": ["US"]},
        "time_zone": "UTC", "period": {"from": "2026-01-05", "to": "2026-02-10"}, "generated": "2026-03-01T12:00:00Z",
        "totals": {"ips": 1, "sessions": 2, "emails": 1, "recipients": 2, "first_seen": "2026-01-05T10:00:16Z",
                   "last_seen": "2026-01-05T10:00:20Z"},
        "ips": [{"ip": "9.9.9.9", "first_seen": "2026-01-05T10:00:16Z", "last_seen": "2026-01-05T10:00:20Z",
                 "sessions": 2, "emails": 1, "recipients": 2, "our_ports": [8080], "protocols": ["http"],
                 "target_ports": [80, 587], "as_number": 19281, "as_name": "QUAD9-AS-1", "country": "US"}],
        "services": [{"our_port": 8080, "protocol": "http", "target_port": 587, "sessions": 1, "emails": 1,
                      "recipients": 2},
                     {"our_port": 8080, "protocol": "http", "target_port": 80, "sessions": 1, "emails": 0,
                      "recipients": 0}],
        "evidence": [
            {"time": "2026-01-05T10:00:16Z", "ip": "9.9.9.9", "src_port": 40000, "our_port": 8080, "protocol": "http",
             "kind": "request", "command": "CONNECT", "target_host": "smtp.mail.example", "target_port": 587,
             "url": None, "recipients": 0, "helo": None, "subject": None,
             "line": line.format(16) + "CONNECT smtp.mail.example:587"},
            {"time": "2026-01-05T10:00:17Z", "ip": "9.9.9.9", "src_port": 40000, "our_port": 8080, "protocol": "http",
             "kind": "email", "command": "MAIL", "target_host": "smtp.mail.example", "target_port": 587,
             "url": None, "recipients": 2, "helo": None, "subject": None,
             "line": line.format(17) + "email to smtp.mail.example:587, 2 recipients"},
            {"time": "2026-01-05T10:00:19Z", "ip": "9.9.9.9", "src_port": 40000, "our_port": 8080, "protocol": "http",
             "kind": "request", "command": "GET", "target_host": "example.com", "target_port": 80,
             "url": "http://example.com/", "recipients": 0, "helo": None, "subject": None,
             "line": line.format(19) + "GET http://example.com/"},
            {"time": "2026-01-05T10:00:20Z", "ip": "9.9.9.9", "src_port": 40000, "our_port": 8080, "protocol": "http",
             "kind": "request", "command": "GET", "target_host": "example.org", "target_port": 80,
             "url": "http://example.org/\x1b[2J", "recipients": 0, "helo": None, "subject": None,
             "line": line.format(20) + "GET http://example.org/\\x1b[2J"}]}
    # no sensor name anywhere in what goes to a network
    for p in out.iterdir():
        if p.stem != "index":
            assert "br-dsl-1" not in p.read_text() and "us-cable-1" not in p.read_text()


def test_index(data: Path, tmp_path: Path) -> None:
    out = written(data, tmp_path, min_emails=0, top=5)
    rows = list(csv.DictReader(io.StringIO((out / "index.csv").read_text())))
    assert [(r["rank"], r["network"], r["ips"], r["emails"], r["files"]) for r in rows] == [
        ("1", "AS22548", "2", "5", "AS22548"), ("2", "AS19281", "1", "1", "AS19281"),
        ("3", "AS64500", "1", "1", "AS64500"), ("4", "AS6805", "1", "1", "AS6805"),
        ("5", "AS13335", "1", "0", "AS13335")]
    assert rows[3]["as_name"] == "'=cmd|' /C calc'!A0"  # never a spreadsheet formula
    doc = json.loads((out / "index.json").read_text())
    assert doc["meta"]["not_located"] == {"ips": 1, "sessions": 1, "emails": 1}
    assert (doc["meta"]["left_out"], doc["meta"]["by"], doc["meta"]["time_zone"]) == (1, "asn", "UTC")
    assert doc["meta"]["period"] == {"from": "2026-01-05", "to": "2026-02-10"}
    assert doc["networks"][0] == {
        "rank": 1, "network": "AS22548", "as_number": 22548, "as_name": "NIC.br", "countries": ["BR"], "ips": 2,
        "sessions": 4, "emails": 5, "recipients": 17, "first_seen": "2026-01-05T10:00:02Z",
        "last_seen": "2026-02-10T10:00:03Z", "files": "AS22548", "contact": ""}


def test_default_body(data: Path, tmp_path: Path) -> None:
    text = (written(data, tmp_path) / "AS22548.txt").read_text()
    assert text.startswith("To the abuse team of AS22548 NIC.br\n")
    assert "All times are in UTC." in text
    assert "Between 2026-01-05T10:00:02Z and 2026-02-10T10:00:03Z, 2 address(es)" in text
    assert ("  IP address   First seen (UTC)      Last seen (UTC)       Sessions  Emails  Recipients\n"
            "  200.160.2.3  2026-01-05T10:00:02Z  2026-02-10T10:00:03Z         3       4          15\n"
            "  200.160.2.4  2026-01-05T10:00:09Z  2026-01-05T10:00:10Z         1       1           2\n") in text
    assert ("  Our port  Protocol  Target port  Sessions  Emails  Recipients\n"
            "      1080  socks5    25                  2       3          14\n"
            "      1080  socks4    25                  1       1           1\n"
            "      8080  http      25                  1       1           2\n") in text
    assert ("  2026-01-05T10:00:03Z  200.160.2.3 port 40000 -> our port 1080/socks5: email to mx.a.example:25, "
            "3 recipients, HELO \"pc1\", subject \"hi\"\n") in text
    assert "The same data, with every address, is in AS22548.csv and AS22548.json\n(attached, or on request)" in text
    assert text.endswith("Report made by spampots on 2026-03-01T12:00:00Z for 2026-01-05 to 2026-02-10 (UTC).\n")
    relay = (tmp_path / "out" / "AS6805.txt").read_text()
    assert "-> our port 25/smtp: email (direct), 4 recipients\n" in relay


def test_attacker_strings_neutralised(data: Path, tmp_path: Path) -> None:
    out = written(data, tmp_path)
    text = (out / "AS22548.txt").read_text()
    assert ('  2026-01-05T10:00:10Z  200.160.2.4 port 40000 -> our port 8080/http: email to mx.a.example:25, '
            '2 recipients, HELO "pc\\x0aX-Injected: 1", subject "Hello\\x0d\\x0aBcc: x@y \\x1b[31mred\\u202eevil"\n'
            ) in text
    evil = (out / "AS64500.txt").read_text()
    assert evil.startswith("To the abuse team of AS64500 EVIL\\x1b[31mNET\\u202eX\n")
    for body in (text, evil, (out / "AS19281.txt").read_text()):
        assert all(ch.isprintable() or ch == "\n" for ch in body)  # no CR, ESC, bidi override left raw
        assert not any(ln.startswith(("Bcc:", "X-Injected:")) for ln in body.splitlines())
    assert "GET http://example.org/\\x1b[2J" in (out / "AS19281.txt").read_text()
    assert (out / "AS64500.csv").read_text().splitlines()[1].endswith(",64500,EVIL\\x1b[31mNET\\u202eX,US")
    raw = (out / "AS22548.json").read_bytes()
    assert raw.isascii()  # exact values, escaped: \r\n and U+202E are never raw bytes
    subjects = [e["subject"] for e in json.loads(raw)["evidence"]]
    assert EVIL_SUBJECT in subjects


def test_neutralise_and_stems() -> None:
    n = notify.neutralise
    assert n("a\r\nBcc: x@y\x1b[31m\u202e\u2066\x85\u2028\u200bz\U000e0001") == \
        "a\\x0d\\x0aBcc: x@y\\x1b[31m\\u202e\\u2066\\x85\\u2028\\u200bz\\U000e0001"
    assert n("São Paulo – ok") == "São Paulo – ok" and n(None) == ""
    long = n("x" * 500)
    assert len(long) == notify.MAX_LEN and long.endswith("…")
    assert n("\n" * 100, cap=10) == "\\x0a\\x0a\\…"
    assert notify._quoted('a" , subject "b\\x0d') == '"a\\" , subject \\"b\\\\x0d"'
    s = notify.safe_stem
    assert s("AS64500") == "AS64500" and s("BR") == "BR" and s("QUAD9-AS-1") == "QUAD9-AS-1"
    for key in ("../../etc/passwd", "/abs", "a\\b", "NIC.br", "index", "CON", "", ".", "..", "x" * 60,
                "Telefonica Brasil S.A", "a\x00b", "\u202eevil"):
        stem = s(key)
        assert stem != key and all(c.isalnum() or c in "-_" for c in stem) and not stem.startswith(("-", "_"))
        assert 0 < len(stem) <= 49 and stem.isascii()
    assert s("../../etc/passwd").startswith("etc_passwd-")
    assert s("br", {"br"}) != "br" and s("BR", {"br"}).startswith("BR-")


# -- template ------------------------------------------------------------------------------------
def test_custom_template(data: Path, tmp_path: Path) -> None:
    t = tmp_path / "t.txt"
    t.write_text("Net $network ($network_name, ${country}) sent $emails emails to $recipients recipients "
                 "from $ips IPs; times in $timezone; $$5.\n$evidence\n")
    out = written(data, tmp_path, template=t, top=1, evidence=1)
    assert (out / "AS22548.txt").read_text() == (
        "Net AS22548 (AS22548 NIC.br, BR) sent 5 emails to 17 recipients from 2 IPs; times in UTC; $5.\n"
        "  2026-01-05T10:00:03Z  200.160.2.3 port 40000 -> our port 1080/socks5: email to mx.a.example:25, "
        "3 recipients, HELO \"pc1\", subject \"hi\"\n")
    # every placeholder of the packaged template is known, and every known one is documented
    assert set(notify.load_template().get_identifiers()) <= set(notify.PLACEHOLDERS)
    doc = (Path(__file__).parents[1] / "docs" / "policy.md").read_text()
    assert [k for k in notify.PLACEHOLDERS if f"`${k}`" not in doc] == []
    assert [k for k in notify.BASES if f"`{k}`" not in doc] == []


@pytest.mark.parametrize("text, message", [
    ("Dear $network, $nope and ${alsonot}\n", "unknown placeholder(s): $alsonot, $nope"),
    ("Costs 5$ only\n", "write $$ for a dollar sign"),
])
def test_bad_template(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                      message: str) -> None:
    t = tmp_path / "t.txt"
    t.write_text(text)
    with pytest.raises(notify.TemplateError, match=re.escape(message)):
        notify.load_template(t)
    assert policy_main(["notify", "--data-dir", str(data / "var"), "--template", str(t),
                        "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written


# -- command line --------------------------------------------------------------------------------
def test_cli(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    var, tsv = str(data / "var"), str(data / "asn.tsv")
    out = tmp_path / "out"
    assert policy_main(["notify", "--data-dir", var, "--asn-db", tsv, "--out", str(out), "-q",
                        "--format", "json", "--by", "country", "--top", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["network"], r["emails"], r["first_day"]) for r in doc["tables"]["notify_networks"]["rows"]] == \
        [("BR", 5, "2026-01-05"), ("US", 2, "2026-01-05")]
    assert doc["meta"]["title"] == "spampots notify"
    assert sorted(p.name for p in out.iterdir()) == ["BR.csv", "BR.eml", "BR.json", "BR.txt", "US.csv", "US.eml",
                                                     "US.json", "US.txt", "index.csv", "index.json"]
    assert "To the abuse team of US\n" in (out / "US.txt").read_text()
    # the terminal summary, nothing written without --out
    assert policy_main(["notify", "--data-dir", var, "--asn-db", tsv, "--min-emails", "0"]) == 0
    shown = capsys.readouterr().out
    assert "AS22548" in shown and "AS15169" in shown and "1 source IPs (1 emails) are in no network" in shown
    # bad input: exit 2 with a reason
    assert policy_main(["notify", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "no data directory" in capsys.readouterr().err
    assert policy_main(["notify", "--data-dir", var, "--out", str(out)]) == 2  # not empty
    assert "must be a new or empty directory" in capsys.readouterr().err
    assert policy_main(["notify", "--data-dir", var, "--asn-db", str(tmp_path / "nope.tsv")]) == 2
    with pytest.raises(SystemExit) as e:
        policy_main(["notify", "--data-dir", var, "--format", "html"])
    assert e.value.code == 2


def test_cli_empty_selection(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing to notify is not an error: exit 0, a message, an empty index."""
    out = tmp_path / "empty"
    assert policy_main(["notify", "--data-dir", str(data / "var"), "--from", "2030-01-01", "--out", str(out),
                        "-q", "--format", "csv"]) == 0
    cap = capsys.readouterr()
    assert "no network to notify in this selection (days 2030-01-01 to …)" in cap.err
    assert sorted(p.name for p in out.iterdir()) == ["index.csv", "index.json"]
    assert (out / "index.csv").read_text() == ",".join(notify.INDEX_COLUMNS) + "\n"
    assert json.loads((out / "index.json").read_text())["networks"] == []
    assert cap.out.startswith("# notify_networks: Networks to notify (by AS)\nrank,network,")


def test_top_level_command(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spampots.cli import main

    assert main(["notify", "--data-dir", str(data / "var"), "--asn-db", str(data / "asn.tsv"),
                 "--format", "markdown", "--top", "1"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# spampots notify\n") and "| 1 | AS22548 | NIC.br | BR | 2 | 4 | 5 | 17 |" in md
