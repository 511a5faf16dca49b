"""Retention ([store] keep_days): old closed data goes, nothing still needed does.

Bodies are content-addressed and shared: a message today may be a duplicate of a body
stored in an old pack. The store here is built by the store's own writers, with clocks
and mtimes set into the past; the last test runs a real sensor on a small tmpfs (root).
"""

from __future__ import annotations

import datetime as dt
import os
import smtplib
import socket
import time
from pathlib import Path

import pytest

from conftest import start_sensor
from spampots.events import SmtpMessage, encode
from spampots.store import MessageStore, iter_events, iter_segment_files
from spampots.store.retention import DAY_S, live_writers, prune
from spampots.store.segments import SegmentWriter
from spampots.store.catalog import Cursor, acked_checker, save_cursor

SENSOR = "test-sensor"
NOW = time.time()
BODIES = {name: (b"Subject: %s\r\n\r\nbody of %s\r\n" % (name.encode(), name.encode())) for name in
          ("old", "shared", "unacked", "fresh", "open")}


def _sha(name: str) -> str:
    import hashlib

    return hashlib.sha256(BODIES[name]).hexdigest()


def _message(name: str, ts: float) -> bytes:
    when = dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()
    return encode(SmtpMessage(sha256=_sha(name), subject=name, mail_from="a@b.example", rcpts=["c@d.example"],
                              size=len(BODIES[name]), v=1, ts=when, sensor=SENSOR, session="s1",
                              src_ip="127.0.0.9", src_port=1, listener_port=25, protocol="smtp"))


def _segment(data: Path, ts: float, names: list[str], *, close: bool = True) -> Path:
    w = SegmentWriter(data, SENSOR, clock=lambda: ts)
    w.write(b"".join(_message(n, ts) for n in names))
    w.sync()
    path = w.current
    assert path is not None
    if close:
        return w.close()  # type: ignore[return-value]
    os.close(w._fd)  # a writer that died: an unlocked .jsonl, left for recovery  # type: ignore[arg-type]
    return path


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d")


def build(data: Path) -> dict[str, Path]:
    """Ten days ago: 'old' and 'shared'; nine days ago: 'unacked'; today: 'shared' again
    (a duplicate, stored once) and 'fresh'. One body per pack (tiny pack_max_bytes)."""
    old, older = NOW - 9 * DAY_S, NOW - 10 * DAY_S
    segs = {
        "A": _segment(data, older, ["old", "shared"]),
        "B": _segment(data, old, ["unacked"]),
        "dead": _segment(data, older + 60, ["open"], close=False),  # an old .jsonl: never deleted
        "C": _segment(data, NOW, ["shared", "fresh"]),
    }
    packs = {}
    with MessageStore(data, SENSOR, pack_max_bytes=1) as store:
        for name in ("old", "shared", "unacked", "open", "fresh"):
            store.put(BODIES[name])
            packs[name] = data / "messages" / store.location(_sha(name)).pack  # type: ignore[union-attr]
    for name in ("old", "shared", "unacked", "open"):
        os.utime(packs[name], (older, older))
    return {**segs, **{f"pack:{k}": v for k, v in packs.items()}}


def assert_consistent(data: Path) -> None:
    """Every message event left has its body, and the index names only packs that exist."""
    with MessageStore(data, readonly=True) as store:
        for ev in iter_events(data):
            if isinstance(ev, SmtpMessage):
                assert store.get(ev.sha256) == BODIES[ev.subject] if ev.subject in BODIES else store.get(ev.sha256)
        packs = {p.name for p in (data / "messages").glob("*.pack")}
        for sha in store.iter_shas():
            assert store.location(sha).pack in packs  # type: ignore[union-attr]


def test_prune_keeps_what_is_named_and_open(tmp_path: Path) -> None:
    data = tmp_path / "var"
    f = build(data)
    with MessageStore(data, SENSOR) as store:
        dry = prune(data, 5, store=store, dry_run=True)
        assert all(p.exists() for p in f.values())  # a dry run deletes nothing
        st = prune(data, 5, store=store)
    assert (dry.segments, dry.packs) == (st.segments, st.packs) == (2, 2), (dry, st)
    assert not f["A"].exists() and not f["B"].exists()
    assert f["dead"].exists() and f["C"].exists()  # open segments and young ones stay
    assert not f["pack:old"].exists() and not f["pack:unacked"].exists()
    assert f["pack:shared"].exists()  # old pack, but today's duplicate names its body
    assert f["pack:open"].exists()  # named by the old .jsonl, which stays
    assert f["pack:fresh"].exists()
    assert st.kept_packs == 2 and st.bodies == 2
    assert_consistent(data)
    with MessageStore(data, SENSOR) as store:  # a writer reopening: nothing to re-index, nothing lost
        assert set(store.iter_shas()) == {_sha(n) for n in ("shared", "open", "fresh")}
    assert prune(data, 5).segments == 0  # nothing more to do


def test_prune_with_a_transport_keeps_what_the_broker_has_not_acked(tmp_path: Path) -> None:
    data = tmp_path / "var"
    f = build(data)
    cursor = data / "ship" / f"{SENSOR}.cursor"
    cursor.parent.mkdir()
    save_cursor(cursor, Cursor(since_day=_day(NOW - 9 * DAY_S)))  # A's day is acked, B's not
    with MessageStore(data, SENSOR) as store:
        st = prune(data, 5, store=store, acked=acked_checker(cursor, SENSOR))
    assert not f["A"].exists() and f["B"].exists()
    assert st.kept_unacked == 1
    assert f["pack:unacked"].exists()  # named by the un-acked segment
    assert not f["pack:old"].exists()
    assert_consistent(data)
    # without any cursor nothing is acknowledged: nothing goes
    data2 = tmp_path / "var2"
    f2 = build(data2)
    with MessageStore(data2, SENSOR) as store:
        st2 = prune(data2, 5, store=store, acked=acked_checker(data2 / "ship" / "none.cursor", SENSOR))
    assert st2.segments == 0 and st2.packs == 0 and f2["A"].exists() and f2["pack:old"].exists()


def test_prune_is_bounded_and_off_by_default(tmp_path: Path) -> None:
    data = tmp_path / "var"
    f = build(data)
    assert prune(data, 0).segments == 0  # keep_days = 0: keep forever
    st = prune(data, 5, max_segments=1)
    assert st.segments == 1 and st.more
    assert prune(data, 5).segments == 1
    assert f["C"].exists()
    assert live_writers(data) == []
    with MessageStore(data, "someone-else"):  # another writer lives: its lock is seen
        assert live_writers(data, mine=SENSOR) == ["someone-else"]


# -- a real sensor on a small disk ----------------------------------------------------------------

@pytest.fixture
def disk(tmp_path: Path):
    from test_store_diskfull import tmpfs

    yield from tmpfs(tmp_path, "32m")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sensor_retention_with_an_unacked_cursor(disk: Path, tmp_path: Path) -> None:
    """The sensor prunes on its own a few seconds after start; shipping is configured (to a
    broker that is not there), so only what the cursor acknowledged goes; every message it
    answered 250 to is still there with its body, including a duplicate of an old body."""
    f = build(disk)
    cursor = disk / "ship" / f"{SENSOR}.cursor"
    cursor.parent.mkdir()
    save_cursor(cursor, Cursor(since_day=_day(NOW - 9 * DAY_S)))
    config = ("[store]\nkeep_days = 5\nmin_free_mb = 1\n[limits]\nnew_sessions_per_s_per_ip = 1000\n"
              f"[transport.nats]\nservers = [\"nats://127.0.0.1:{_closed_port()}\"]\nconnect_timeout_s = 1\n"
              "retry_max_s = 2\n")
    sp = start_sensor(tmp_path / "run", config=config, data_dir=disk, args=("--user", ""))
    try:
        for name in ("shared", "new"):  # 'shared' duplicates the body in the old pack
            body = BODIES.get(name, b"Subject: new\r\n\r\nnew\r\n")
            with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=20) as s:
                s.sendmail("a@b.example", ["c@d.example"], body)
        deadline = time.monotonic() + 30
        while "retention (keep_days = 5): deleted" not in sp.stderr() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        assert sp.stop(timeout=30) == 0
    log = sp.stderr()
    # A, and the dead writer's segment of that day (recovered and compressed at start)
    assert "retention (keep_days = 5): deleted 2 segment(s)" in log, log[-3000:]
    assert "kept 1 old segment(s) the broker has not acknowledged" in log
    assert "Traceback" not in log
    assert not f["A"].exists() and f["B"].exists()  # B was never acknowledged
    assert not f["pack:old"].exists() and not f["pack:open"].exists()
    assert f["pack:shared"].exists() and f["pack:unacked"].exists()
    assert_consistent(disk)
    subjects = [ev.subject for ev in iter_events(disk) if isinstance(ev, SmtpMessage)]
    assert subjects.count("shared") == 2 and "new" in subjects
    assert len(iter_segment_files(disk)) >= 3


def test_prune_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from spampots.cli import main

    data = tmp_path / "var"
    f = build(data)
    assert main(["prune", "--data-dir", str(data)]) == 2  # keep_days = 0: says so, does nothing
    assert "keep forever" in capsys.readouterr().err
    assert main(["prune", "--data-dir", str(data), "--keep-days", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete 2 segment(s)" in out and "messages/" + f["pack:old"].name in out
    assert f["A"].exists() and f["pack:old"].exists()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[sensor]\nid = "{SENSOR}"\n[store]\nkeep_days = 5\n')
    assert main(["prune", "--config", str(cfg), "--data-dir", str(data)]) == 0
    assert "deleted 2 segment(s)" in capsys.readouterr().out
    assert not f["A"].exists() and not f["pack:old"].exists() and f["pack:shared"].exists()
    assert_consistent(data)
    assert main(["prune", "--data-dir", str(tmp_path / "nothing"), "--keep-days", "1"]) == 2


def test_store_settings_are_validated() -> None:
    import msgspec

    from spampots import config

    for bad in ("-1", "nan", "inf"):
        for key in ("min_free_mb", "keep_days"):
            with pytest.raises(config.ConfigError, match=f"store.{key}"):
                config.validate(msgspec.toml.decode(f"[store]\n{key} = {bad}\n", type=config.Config))
    cfg = config.Config()
    assert (cfg.store.min_free_mb, cfg.store.keep_days) == (256, 0)
    config.validate(msgspec.toml.decode("[store]\nmin_free_mb = 0\nkeep_days = 0\n", type=config.Config))
    example = msgspec.toml.decode(config.example_toml(), type=config.Config)
    assert example.store.min_free_mb == 256 and example.store.keep_days == 0


# -- several writers of one index: a sensor's workers -----------------------------------------------

def test_retired_packs_take_no_new_duplicates_and_come_back_when_named(tmp_path: Path) -> None:
    """Two writers share the index (worker 0 and worker 1). Once worker 0 retired the old packs,
    worker 1 cannot dedup into them (it stores the body anew); a pack named by a kept event
    gets its rows back, one re-indexed meanwhile by a starting writer stays, the rest goes."""
    from spampots.store.retention import PruneStats, pack_candidates, referenced, retire_packs, settle_packs

    data = tmp_path / "var"
    f = build(data)  # packs of writer test-sensor; 'shared' and 'open' are named by kept events
    with MessageStore(data, f"{SENSOR}.w0") as w0, MessageStore(data, f"{SENSOR}.w1") as w1:
        prune(data, 5)  # the segments only (no store): A and B go
        cands = pack_candidates(data, NOW - 5 * DAY_S)
        assert {f[f"pack:{n}"].name for n in ("old", "shared", "unacked", "open")} <= set(cands)
        st = PruneStats()
        retired = retire_packs(w0, cands, st)
        assert w0.location(_sha("old")) is None and w1.location(_sha("old")) is None
        sha, new = w1.put(BODIES["old"])  # a duplicate now: stored again, in w1's own pack
        assert new and w1.location(sha).pack.startswith(f"pack-{SENSOR}.w1-")  # type: ignore[union-attr]
        settle_packs(w0, retired, referenced(data), st)
    assert not f["pack:old"].exists() and not f["pack:unacked"].exists()
    assert f["pack:shared"].exists() and f["pack:open"].exists()
    assert (st.packs, st.kept_packs) == (2, 2)
    assert_consistent(data)
    with MessageStore(data, readonly=True) as store:
        assert store.get(_sha("old")) == BODIES["old"] and store.get(_sha("shared")) == BODIES["shared"]

    # a writer starting between retire and settle re-indexes the packs: they stay
    data2 = tmp_path / "var2"
    f2 = build(data2)
    with MessageStore(data2, f"{SENSOR}.w0") as w0:
        st2 = PruneStats()
        retired = retire_packs(w0, pack_candidates(data2, NOW - 5 * DAY_S), st2)
        MessageStore(data2, f"{SENSOR}.w1").close()  # a restarted worker reconciles the index
        settle_packs(w0, retired, set(), st2)
    assert st2.packs == 0 and f2["pack:old"].exists()
    assert_consistent(data2)


def test_a_worker_that_does_not_answer_leaves_every_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Worker 0's retention with a real recorder: while another live worker does not pass the
    barrier, every retired pack gets its rows back (and is tried again on the next pass);
    once that worker is gone (what it acknowledged is on disk), the pass goes through."""
    import asyncio

    from spampots.protocols.budget import MemoryBudget
    from spampots.sensor import upkeep as up
    from spampots.store.recorder import Recorder

    data = tmp_path / "var"
    f = build(data)
    monkeypatch.setattr(up, "BARRIER_WAIT_S", 0.3)
    worker1 = {"alive": True}

    async def passes() -> list:
        rec = Recorder(data, SENSOR, pack_writer=f"{SENSOR}.w0")
        rec.start(asyncio.get_running_loop())
        u = up.Upkeep(up.UpkeepSettings(sensor_id=SENSOR, keep_days=5), MemoryBudget(1 << 20), data_dir=data)
        u.attach(rec, worker=0, workers=2, alive=lambda k: worker1["alive"])
        try:
            first = await u.prune()
            named = set(u._named)
            worker1["alive"] = False
            return [first, named, await u.prune()]
        finally:
            await rec.close()

    with caplog.at_level("WARNING", logger="spampots.store"):
        first, named, second = asyncio.run(passes())
    assert "worker(s) 1 did not answer" in caplog.text
    assert first.packs == 0 and named == set()
    # A and B went on the first pass, and the dead writer's segment (recovered at start): their packs go
    assert first.segments == 3 and second.packs == 3 and f["pack:shared"].exists() and f["pack:fresh"].exists()
    assert not any(f[f"pack:{n}"].exists() for n in ("old", "unacked", "open"))
    assert_consistent(data)


def test_sensor_with_workers_prunes_every_workers_packs(tmp_path: Path) -> None:
    """A sensor of two workers: worker 0 prunes the old closed packs of both workers' writers
    while they run; a pack named by a kept event (today's duplicate) and the packs the
    workers write now stay; every message answered 250 is there with its body."""
    data = tmp_path / "var"
    old = NOW - 10 * DAY_S
    _segment(data, old, ["old", "shared"])
    _segment(data, NOW, ["fresh"])
    packs: dict[str, Path] = {}
    for k in (0, 1):  # each worker's writer: one old body per pack, then a last pack it writes on
        with MessageStore(data, f"{SENSOR}.w{k}", pack_max_bytes=1) as store:
            for name in (("old", "shared") if k else ("unacked", "open")) + ("fresh",) * (k == 0):
                store.put(BODIES[name])
                packs[name] = data / "messages" / store.location(_sha(name)).pack  # type: ignore[union-attr]
    for name in ("old", "shared", "unacked", "open"):
        os.utime(packs[name], (old, old))
    config = ("[sensor]\nworkers = 2\n[store]\nkeep_days = 5\nmin_free_mb = 0\n"
              "[limits]\nnew_sessions_per_s_per_ip = 1000\n")
    sp = start_sensor(tmp_path / "run", config=config, data_dir=data, wait_port=25, args=("--user", ""))
    sent = []
    try:
        for n in range(10):  # fresh connections: both workers take some
            body = BODIES["shared"] if n == 0 else b"Subject: new %d\r\n\r\nnew\r\n" % n
            with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=20) as s:
                s.sendmail("a@b.example", ["c@d.example"], body)
            sent.append(body)
        deadline = time.monotonic() + 40
        while "retention (keep_days = 5): deleted" not in sp.stderr() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        assert sp.stop(timeout=60) == 0
    log = sp.stderr()
    assert "retention (keep_days = 5): deleted 1 segment(s)" in log, log[-3000:]
    assert "left alone" not in log and "Traceback" not in log
    assert not packs["old"].exists() and not packs["unacked"].exists() and not packs["open"].exists()
    assert packs["shared"].exists()  # today's duplicate names its body
    assert packs["fresh"].exists()  # worker 0's last pack: it writes on there
    assert (data / "messages" / f"retention-{SENSOR}.w1.passed").exists()  # worker 1's writer passed the barrier
    with MessageStore(data, readonly=True) as store:
        for body in sent:
            import hashlib

            assert store.get(hashlib.sha256(body).hexdigest()) == body
        packs_now = {p.name for p in (data / "messages").glob("*.pack")}
        assert all(store.location(sha).pack in packs_now for sha in store.iter_shas())  # type: ignore[union-attr]
