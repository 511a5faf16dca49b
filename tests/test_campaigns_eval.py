"""Campaigns, measured: a labelled corpus (24 campaigns, obfuscated as real spam is) sent through
a real sensor, directly and through SOCKS5, then grouped from the lake. The grouping must reach
an adjusted Rand index of 0.95 and merge no two labelled campaigns; the exact-subject key, the
baseline, must not (else the corpus would prove nothing)."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

pytest.importorskip("tlsh")
pytest.importorskip("lingua")
pytest.importorskip("tldextract")

from clients import ProxySMTP  # noqa: E402
from conftest import start_sensor  # noqa: E402

from spampots.analysis import campaign_eval, message_lake  # noqa: E402
from spampots.analysis.lake import Lake  # noqa: E402
from spampots.analysis.spam_corpus import Labelled, corpus  # noqa: E402

CONFIG = "[limits]\nnew_sessions_per_s_per_ip = 1000\nmax_sessions_per_ip = 500\n"


def _send(sp, msgs: list[Labelled]) -> None:
    """Each campaign from its own few sources: even campaigns straight to port 25, odd ones
    through the SOCKS5 proxy to a named MX, a handful of messages per session."""
    by_session: dict[tuple[int, int], list[Labelled]] = {}
    for k, m in enumerate(msgs):
        by_session.setdefault((m.label, k % 3), []).append(m)
    for (label, src), batch in by_session.items():
        source = f"127.0.{label + 1}.{src + 1}"
        if label % 2 == 0:
            smtp = smtplib.SMTP("127.0.0.1", sp.port(25), timeout=30, source_address=(source, 0))
        else:
            smtp = ProxySMTP(f"socks5://127.0.0.1:{sp.port(1080)}", f"mx{label}.example.net", 25, rdns=True,
                             timeout=30)
        with smtp:
            for m in batch:
                smtp.sendmail(f"bulk{label}@sender{label}.example", [m.rcpt], m.raw)


def _wait_messages(lake: Lake, n: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        con = lake.connect()
        got = con.execute("SELECT count(*) FROM smtp_message").fetchone()[0]
        con.close()
        if got >= n or time.monotonic() > deadline:
            assert got >= n, f"{got} of {n} messages recorded"
            return
        time.sleep(0.2)


def _groups(lake: Lake) -> dict[str, tuple[str, str]]:
    """message_id -> (campaign, subject) from the lake."""
    con = lake.connect()
    try:
        message_lake.create_views(con, lake.root)
        rows = con.execute("""SELECT m.message_id, c.campaign, m.subject FROM smtp_message m
                              JOIN message_campaign c USING (sha256)""").fetchall()
    finally:
        con.close()
    return {mid.strip("<>"): (c, s) for mid, c, s in rows}


def _mid(m: Labelled) -> str:
    import email

    return email.message_from_bytes(m.raw)["Message-ID"].strip("<>")


def test_labelled_campaigns_through_a_real_sensor(tmp_path: Path) -> None:
    msgs = corpus(per_campaign=14)
    assert len({m.label for m in msgs}) >= 20
    sp = start_sensor(tmp_path, config=CONFIG)
    try:
        lake = Lake(sp.data_dir, root=tmp_path / "lake")
        half = len(msgs) // 2
        _send(sp, msgs[:half])
        _wait_messages(lake, half)
        first = message_lake.update(lake)
        assert first.parsed == half and first.missing == 0
        before = _groups(lake)
        _send(sp, msgs[half:])  # more of the same campaigns arrive later
        _wait_messages(lake, len(msgs))
        second = message_lake.update(lake)
        assert second.parsed == len(msgs) - half
        after = _groups(lake)
    finally:
        sp.stop()
    # Incremental: what was assigned keeps its campaign, and the new messages join old campaigns.
    assert all(after[mid][0] == c for mid, (c, _) in before.items())
    assert second.campaigns_new == 0
    labels = [m.label for m in msgs]
    ours = campaign_eval.scores(labels, [after[_mid(m)][0] for m in msgs])
    subject = campaign_eval.scores(labels, [after[_mid(m)][1] for m in msgs])
    assert ours.ari >= 0.95, ours
    assert ours.merged == [], ours
    assert subject.ari < 0.9 and subject.merged, subject  # the corpus defeats the old key


def test_campaign_ids_are_stable_across_a_rebuild(tmp_path: Path) -> None:
    """Same data, computed again from nothing (compact --rebuild drops the lake): same ids."""
    msgs = corpus(per_campaign=4, campaigns=8, seed=3)
    sp = start_sensor(tmp_path, config=CONFIG)
    try:
        _send(sp, msgs)
        a = Lake(sp.data_dir, root=tmp_path / "a")
        _wait_messages(a, len(msgs))
        message_lake.update(a)
        b = Lake(sp.data_dir, root=tmp_path / "b")
        message_lake.update(b)
    finally:
        sp.stop()
    ga, gb = _groups(a), _groups(b)
    assert ga and ga == gb
    assert len({c for c, _ in ga.values()}) == 8


def test_a_body_stored_after_its_event_is_parsed_then(tmp_path: Path) -> None:
    """A collector may store an event before its body: the body is counted missing, then parsed
    when it is there, once (no second row, no stub left in the view)."""
    import hashlib

    from spampots import events as ev
    from spampots.store.messages import MessageStore
    from spampots.store.segments import SegmentWriter

    msgs = corpus(per_campaign=2, campaigns=3, seed=7)
    shas = [hashlib.sha256(m.raw).hexdigest() for m in msgs]
    out = []
    for k, (m, sha) in enumerate(zip(msgs, shas)):
        e = ev.SmtpMessage(mail_from="a@b.example", rcpts=[m.rcpt], sha256=sha, size=len(m.raw))
        ev.stamp(e, sensor="s1", session=f"s{k}", src_ip="127.0.0.9", src_port=4000, listener_port=25,
                 protocol="smtp", depth=0, ts=f"2026-01-05T10:00:{k:02d}.000000Z")
        out.append(e)
    w = SegmentWriter(tmp_path, "s1", clock=lambda: 1767607200.0)
    w.write(ev.encode_many(out))
    w.close()
    with MessageStore(tmp_path, "s1") as store:
        for m in msgs[:3]:
            store.put(m.raw)
    lake = Lake(tmp_path)
    first = message_lake.update(lake)
    assert (first.parsed, first.missing) == (3, 3)
    again = message_lake.update(lake)
    assert (again.parsed, again.missing) == (0, 3)
    with MessageStore(tmp_path, "s1") as store:
        for m in msgs[3:]:
            store.put(m.raw)
    last = message_lake.update(lake)
    assert (last.parsed, last.missing) == (3, 0)
    con = lake.connect()
    message_lake.create_views(con, lake.root)
    rows = con.execute("SELECT sha256, count(*) FROM message_features GROUP BY 1").fetchall()
    got = dict(con.execute("SELECT sha256, campaign FROM message_campaign").fetchall())
    con.close()
    assert sorted(r[0] for r in rows) == sorted(shas) and all(n == 1 for _, n in rows)
    assert len(set(got.values())) == 3
