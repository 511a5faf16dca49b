"""`spampots campaigns` (list, search, show) and `spampots export --campaign cmp-…`, on messages
sent through a real sensor."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tlsh")
pytest.importorskip("lingua")
pytest.importorskip("tldextract")

from conftest import start_sensor  # noqa: E402
from test_campaigns_eval import CONFIG, _send, _wait_messages  # noqa: E402

from spampots.analysis import message_lake  # noqa: E402
from spampots.analysis.lake import Lake  # noqa: E402
from spampots.analysis.spam_corpus import corpus  # noqa: E402

CLI = [sys.executable, "-m", "spampots.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("campaigns")
    msgs = corpus(per_campaign=3, campaigns=8, seed=5)
    sp = start_sensor(tmp, config=CONFIG)
    try:
        _send(sp, msgs)
        _wait_messages(Lake(sp.data_dir, root=tmp / "probe"), len(msgs))
    finally:
        sp.stop()
    return sp.data_dir, msgs


def _by_label(data: Path) -> dict[int, str]:
    """label -> campaign id: the CLI lists the campaigns, the lake says which envelope domain
    (the test sends each campaign from its own, sender<label>.example) each one's messages had."""
    r = _cli("campaigns", "--format", "json", "--top", "100", "-q", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    listed = {row["campaign"] for row in json.loads(r.stdout)}
    lake = Lake(data)
    con = lake.connect()
    message_lake.create_views(con, lake.root)
    rows = con.execute("""SELECT DISTINCT c.campaign, m.sender_domain FROM smtp_message m
                          JOIN message_campaign c USING (sha256)""").fetchall()
    con.close()
    out = {int(dom.removeprefix("sender").removesuffix(".example")): cid for cid, dom in rows}
    assert len(rows) == len(out) and set(out.values()) == listed
    return out


def test_list_search_show_and_export(captured, tmp_path: Path) -> None:
    data, msgs = captured
    ids = _by_label(data)
    assert len(ids) == 8 and len(set(ids.values())) == 8
    dd = ["--data-dir", str(data), "-q"]
    # search by sender domain (envelope), text, URL domain
    r = _cli("campaigns", "--sender-domain", "sender5.example", "--format", "json", *dd)
    assert [row["campaign"] for row in json.loads(r.stdout)] == [ids[5]]
    r = _cli("campaigns", "--text", "replica watches", "--format", "json", *dd)
    assert [row["campaign"] for row in json.loads(r.stdout)] == [ids[5]]
    r = _cli("campaigns", "--text", "no campaign says this", *dd)
    assert r.returncode == 1 and "no campaign matches" in r.stdout
    d = json.loads(_cli("campaigns", ids[3], "--format", "json", *dd).stdout)
    dom = d["url_domains_top"][0][0]
    r = _cli("campaigns", "--url-domain", dom, "--format", "json", *dd)
    assert [row["campaign"] for row in json.loads(r.stdout)] == [ids[3]]
    # odd labels came through SOCKS5 to a named MX, even ones straight to port 25
    assert d["protocols"] == ["socks5"] and d["mx"][0][0] == "mx3.example.net"
    d4 = json.loads(_cli("campaigns", ids[4], "--format", "json", *dd).stdout)
    assert d4["protocols"] == ["direct"] and d4["sources"] == 3 and d4["messages"] == 3
    assert "*" in d4["template"] and "pills without prescription" in d4["template"]
    # the terminal detail shows the template and the sections
    r = _cli("campaigns", ids[4][:8], *dd)
    assert r.returncode == 0 and "template" in r.stdout and "ports and protocols" in r.stdout
    # export by the new id: exactly the campaign's bodies
    r = _cli("export", "--format", "eml", "--out", str(tmp_path / "x"), "--campaign", ids[4], "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    names = {p.name for p in (tmp_path / "x").iterdir()}
    lake = Lake(data)
    con = lake.connect()
    message_lake.create_views(con, lake.root)
    want = {r[0] for r in con.execute("SELECT sha256 FROM message_campaign WHERE campaign = ?", [ids[4]]).fetchall()}
    con.close()
    assert len(want) == 3 and names == {f"{sha}.eml" for sha in want}
    for p in (tmp_path / "x").iterdir():
        assert p.name == hashlib.sha256(p.read_bytes()).hexdigest() + ".eml"
    r = _cli("campaigns", "cmp-zz", *dd)
    assert r.returncode == 2 and "cmp- and 4 to 12 hex digits" in r.stderr


def test_report_tables_and_html_detail(captured, tmp_path: Path) -> None:
    data, _ = captured
    ids = _by_label(data)
    r = _cli("report", "--format", "json", "-q", "--top", "50", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    tables = json.loads(r.stdout)["tables"]
    assert {row["campaign"] for row in tables["campaigns"]["rows"]} == set(ids.values())
    assert tables["subject_campaigns"]["rows"]  # the old subject key is still there, under its own name
    # odd campaigns came through SOCKS5 (one client address), even ones straight, from 3 sources each
    strat = {(r["protocol"], r["sources"]): r["campaigns"] for r in tables["campaign_strategies"]["rows"]}
    assert strat == {("SOCKS", "1"): 4, ("SMTP", "2-10"): 4}
    details = [k for k in tables if k.startswith("campaign_cmp-")]
    assert len(details) == 5
    facts = {row["field"]: row["value"] for row in tables[details[0]]["rows"]}
    assert {"Template", "Timeline (per day)", "Sources", "Ports and protocols", "URLs"} <= set(facts)
    html = tmp_path / "r.html"
    r = _cli("report", "--out", str(html), "-q", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    text = html.read_text()
    assert f"Campaign {details[0].removeprefix('campaign_')}" in text and "Ports and protocols" in text


def test_campaign_os_counts_the_campaigns_table(captured) -> None:
    """campaign_os groups the fingerprinted emails by the same cmp- campaigns as the Campaigns table
    (it grouped by the subject key before), and by subject with --no-campaigns."""
    data, _ = captured
    ids = set(_by_label(data).values())
    r = _cli("report", "--format", "json", "-q", "--top", "50", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    tables = json.loads(r.stdout)["tables"]
    emails = {row["campaign"]: row["emails"] for row in tables["campaigns"]["rows"]}
    by_os: dict[str, int] = {}
    for row in tables["campaign_os"]["rows"]:
        by_os[row["campaign"]] = by_os.get(row["campaign"], 0) + row["emails"]
    assert set(by_os) == ids  # every session on loopback kept its SYN: every campaign is there
    assert by_os == emails
    r = _cli("report", "--format", "json", "-q", "--top", "50", "--no-campaigns", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    keys = {row["campaign"] for row in json.loads(r.stdout)["tables"]["campaign_os"]["rows"]}
    assert keys and not keys & ids and all(len(k) == 16 for k in keys)  # subject keys


def test_campaign_update_keeps_the_report_memory_limit(captured, tmp_path: Path) -> None:
    """message_lake.update's own DuckDB connection has the report's memory limit (default or
    --memory-limit) and spills into the lake's spill dir; it had DuckDB's 80% of RAM before."""
    from spampots.analysis.lake import new_connection, report_memory_limit

    data, _ = captured

    class Watched(Lake):
        def connect(self, **kw):  # noqa: ANN003, ANN201
            con = super().connect(**kw)
            self.seen.append(con.execute("SELECT current_setting('memory_limit'), "
                                         "current_setting('temp_directory')").fetchone())
            return con

    def setting(limit: str) -> str:
        con = new_connection(memory_limit=limit)
        try:
            return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        finally:
            con.close()

    for limit, want in ((None, report_memory_limit()), ("300MB", "300MB")):
        lake = Watched(data, root=tmp_path / f"lake-{limit}")  # a lake of its own: the messages are parsed anew
        lake.seen = []
        lake.compact()
        st = message_lake.update(lake, memory_limit=limit)
        assert st.parsed > 0
        assert lake.seen == [(setting(want), str(lake.root / "_cache" / "spill"))]
