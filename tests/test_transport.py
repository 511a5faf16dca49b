"""Shippers -> real nats-server (JetStream) -> collector, on loopback.

The collector's store must equal the union of the sensors' stores: every event
line and every body byte for byte, none lost, none twice, through broker and
collector crashes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nats_fixture import nats_server, nats_server_auth, nats_server_tls  # noqa: F401 (fixtures)
from spampots.events import SensorHeartbeat, SessionOpen, SmtpMessage, stamp
from spampots.store.messages import MessageStore
from spampots.store.recorder import Recorder
from spampots.store.segments import iter_event_lines, iter_segment_files
from spampots.transport.collector import Collector
from spampots.transport.config import NatsSection
from spampots.transport.network import StreamSettings, init_network, network_status, render_status
from spampots.transport.shipper import Shipper

pytest.importorskip("nats")


# -- helpers ---------------------------------------------------------------------------------------


def cfg_for(url: str, **kw) -> NatsSection:
    base = dict(servers=[url], retry_max_s=0.3, ack_timeout_s=2.0, poll_interval_s=0.05,
                status_interval_s=0.3, connect_timeout_s=1.0, auth_retry_s=0.5)
    base.update(kw)
    return NatsSection(**base)


def _common(sensor: str, i: int) -> dict:
    return dict(sensor=sensor, session=f"{sensor}-s{i}", src_ip=f"198.51.100.{i % 250 + 1}",
                src_port=1024 + i % 60000, listener_port=25, protocol="smtp", depth=0)


def capture(rec: Recorder, sensor: str, start: int, n: int, *, every: int = 10, big: bool = False) -> None:
    """n sessions; every ``every``-th carries a message (bodies repeat, as spam does)."""
    rnd = random.Random(f"{sensor}{start}")
    for i in range(start, start + n):
        rec.emit(stamp(SessionOpen(listener_addr="127.0.0.1"), **_common(sensor, i)))
        if i % every == 0:
            body = (f"From: a@example.com\r\nSubject: offer {i % 37}\r\n\r\n".encode()
                    + bytes(rnd.getrandbits(8) for _ in range(64)).hex().encode() + b"\r\n")
            if big and i == start:  # incompressible, over the server's 1 MiB max_payload
                body = b"Subject: big\r\n\r\n" + os.urandom(1_500_000)
            ev = SmtpMessage(mail_from="a@example.com", rcpts=["v@example.net"], size=len(body), index=1)
            rec.emit_durable_sync(stamp(ev, **_common(sensor, i)), body)
    rec.emit(stamp(SensorHeartbeat(version="test", uptime_s=float(n)), **dict(_common(sensor, 0), session="",
                                                                              protocol="sensor")))
    rec.flush_sync(10)


def make_sensor(root: Path, sensor: str, n: int, **kw) -> Path:
    d = root / sensor
    with Recorder(d, sensor, segment_max_bytes=kw.pop("segment_max_bytes", 1 << 16)) as rec:
        capture(rec, sensor, 0, n, **kw)
    return d


def lines(d: Path) -> collections.Counter:
    return collections.Counter(iter_event_lines(d))


def bodies(d: Path) -> dict[str, bytes]:
    with MessageStore(d, readonly=True) as s:
        return {sha: s.get(sha) for sha in s.iter_shas()}


def union(dirs: list[Path]) -> tuple[collections.Counter, dict[str, bytes]]:
    ev: collections.Counter = collections.Counter()
    bd: dict[str, bytes] = {}
    for d in dirs:
        ev.update(lines(d))
        bd.update(bodies(d))
    return ev, bd


def assert_same(central: Path, dirs: list[Path]) -> None:
    want_ev, want_bd = union(dirs)
    got_ev = lines(central)
    assert sum(want_ev.values()) > 0
    assert got_ev - want_ev == collections.Counter(), "extra or duplicated events in the central store"
    assert want_ev - got_ev == collections.Counter(), "events lost"
    got_bd = bodies(central)
    assert set(got_bd) == set(want_bd)
    assert all(got_bd[s] == want_bd[s] for s in want_bd)


async def wait_for(cond, timeout: float, what: str, detail=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} {detail()}")
        await asyncio.sleep(0.05)


def total(dirs: list[Path]) -> int:
    return sum(sum(1 for _ in iter_event_lines(d)) for d in dirs)


# -- unit parts (no broker) ------------------------------------------------------------------------


def test_config_validation_names_each_problem(tmp_path):
    assert NatsSection().validate() == []
    bad = NatsSection(servers=["127.0.0.1:4222"], user="u", stream="a b", subject_prefix="x.*",
                      batch_size=0, ack_timeout_s=0, tls_cert=str(tmp_path / "nope.pem"))
    errs = "\n".join(bad.validate())
    for key in ("servers", "user and", "stream", "subject_prefix", "batch_size", "ack_timeout_s",
                "tls_cert and", "no such file"):
        assert key in errs, key
    both = NatsSection(user="u", password="p", creds_file=__file__)
    assert any("one kind of credentials" in e for e in both.validate())


def test_tail_follows_a_growing_segment_through_rotation(tmp_path):
    from spampots.store.catalog import SegmentTail, segment_id

    rec = Recorder(tmp_path, "edge")
    rec.start()
    capture(rec, "edge", 0, 5, every=1000)
    seg = segment_id(iter_segment_files(tmp_path)[0])
    tail = SegmentTail(tmp_path, seg, 0)
    first = tail.read(100)
    assert len(first) == 7 and not tail.finished  # 5 sessions, 1 message, 1 heartbeat
    capture(rec, "edge", 5, 3, every=1000)
    more = tail.read(100)
    assert len(more) == 4 and more[0][0] == tail.offset - sum(len(ln) + 1 for _, ln in more)
    rec.close_sync(10)  # compresses: the tail sees the end
    assert tail.read(100) == [] and tail.finished
    # resuming in the compressed segment from a byte offset
    again = SegmentTail(tmp_path, seg, first[-1][0])
    assert [ln for _, ln in again.read(100)] == [first[-1][1]] + [ln for _, ln in more]


def test_availability_hours_up_and_gaps():
    from spampots.transport.availability import availability

    beats = [("a", t, "heartbeat") for t in range(0, 3600, 60)]
    beats += [("b", 0.0, "start")] + [("b", t, "heartbeat") for t in range(60, 1200, 60)]
    beats += [("b", 1200.0, "stop"), ("b", 2400.0, "start")]
    beats += [("b", t, "heartbeat") for t in range(2460, 3600, 60)]
    av = availability(beats, since=0, until=3600, interval_s=60)
    assert av["a"].up_s == pytest.approx(3600) and av["a"].gaps == []
    assert av["b"].up_s == pytest.approx(1200 + 1200) and av["b"].gaps == [(1200.0, 2400.0)]


def test_network_status_takes_a_config_as_run_does(tmp_path):
    """`spampots network status` reads --config as `run` does (before or after the action):
    its [transport.nats], its [sensor] data_dir (the central store, for availability) and
    its heartbeat_interval_s; a flag on the command line still wins."""
    import json

    from spampots.events import SensorStart, encode_many
    from spampots.store.segments import SegmentWriter

    store = tmp_path / "central"
    now = time.time()
    evs = []
    for i, t in enumerate([now - 3000 + 100 * k for k in range(30)]):  # a beat every 100 s
        e = SensorStart(version="t") if i == 0 else SensorHeartbeat(version="t")
        stamp(e, sensor="s1", session="", src_ip="", src_port=0, listener_port=0, protocol="", depth=0,
              ts=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000000Z")
        evs.append(e)
    w = SegmentWriter(store, "s1", clock=lambda: now - 3000)
    w.write(encode_many(evs))
    w.close()
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[sensor]\ndata_dir = "{store}"\nheartbeat_interval_s = 30\n'
                   f'[transport.nats]\nservers = ["nats://127.0.0.1:{closed}"]\nconnect_timeout_s = 0.5\n')
    cli = [sys.executable, "-m", "spampots.cli"]
    for argv in (["network", "--config", str(cfg), "status", "--json"],
                 ["network", "status", "-c", str(cfg), "--json"]):
        r = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr  # the broker is not there: a problem, said so
        doc = json.loads(r.stdout)
        assert any("broker" in p for p in doc["problems"])
        row = doc["sensors"]["s1"]["collected"]  # read from the config's data_dir
        assert row["up_s"] == 0  # beats 100 s apart are too far apart for the config's 30 s interval
    r = subprocess.run([*cli, "network", "status", "-c", str(cfg), "--json", "--heartbeat-interval-s", "60"],
                       capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout)["sensors"]["s1"]["collected"]["up_s"] > 2800  # within 2.5 x 60 s: up
    r = subprocess.run([*cli, "network", "-c", str(tmp_path / "none.toml"), "status"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "none.toml: no such file" in r.stderr


class _FakeMsg:
    """Just what Collector.handle uses of a JetStream message."""

    def __init__(self, subject: str, data: bytes, headers: dict, seq: int) -> None:
        self.subject, self.data, self.headers = subject, data, headers
        self.metadata = type("M", (), {"num_delivered": 1,
                                       "sequence": type("S", (), {"stream": seq})()})()
        self.acked = self.naked = False

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay: float = 0) -> None:
        self.naked = True


def _event_msgs(src: Path, sensor: str) -> list[_FakeMsg]:
    """Event messages without smtp.message ones (those would wait for their bodies)."""
    evs = [ln for ln in iter_event_lines(src) if b'"spampots.smtp.message"' not in ln]
    return [_FakeMsg(f"spampots.{sensor}.events", ln, {"Nats-Msg-Id": f"{sensor}:x:{i}"}, i)
            for i, ln in enumerate(evs)]


def _crash(col: Collector) -> None:
    """Drop the collector as a SIGKILL would: no compression, no final fsync, locks released."""
    for w in col._writers.values():
        w.abandon()
    col._writers.clear()
    col._db.close()
    col._store._closed = True  # its fds go with the process
    for fd in [col._store._fd, col._store._lock_fd]:
        if fd is not None:
            os.close(fd)
    col._db = col._store = None


def test_collector_intents_make_redelivery_exactly_once(tmp_path, monkeypatch):
    from spampots.transport import collector as colmod

    src = make_sensor(tmp_path, "edge1", 60, every=1000)
    msgs = _event_msgs(src, "edge1")
    a, b, c = msgs[:20], msgs[20:40], msgs[40:]
    central = tmp_path / "central"
    cfg = NatsSection()

    col = Collector(central, cfg)
    col.open()
    asyncio.run(col.handle(None, a))
    assert all(m.acked for m in a)
    # crash after the intents of b are durable, before its lines are written
    real_write = colmod._Writer.write
    monkeypatch.setattr(colmod._Writer, "write", lambda self, data: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        asyncio.run(col.handle(None, b))
    monkeypatch.setattr(colmod._Writer, "write", real_write)
    assert not any(m.acked for m in b)
    _crash(col)

    col = Collector(central, cfg)
    col.open()  # b's intents point past the end of the segment: forgotten
    redelivered = _event_msgs(src, "edge1")
    asyncio.run(col.handle(None, redelivered[:40]))  # a again (duplicates) and b (new)
    assert col.stats.duplicates == 20 and col.stats.events == 20
    # crash after c's lines are durable but before they are marked done
    asyncio.run(col.handle(None, c))
    col._db.execute("UPDATE seen SET done = 0 WHERE id LIKE 'edge1:x:4%' OR id LIKE 'edge1:x:5%'")
    _crash(col)

    col = Collector(central, cfg)
    col.open()  # c's lines are on disk: its intents are settled as done
    asyncio.run(col.handle(None, _event_msgs(src, "edge1")))
    assert col.stats.duplicates == len(msgs) and col.stats.events == 0
    col.close()
    assert lines(central) == collections.Counter(m.data for m in msgs)


# -- against a real broker -------------------------------------------------------------------------


def test_three_sensors_to_one_collector_equals_the_union(tmp_path, nats_server):
    dirs = [make_sensor(tmp_path, "edge1", 600), make_sensor(tmp_path, "edge2", 400),
            make_sensor(tmp_path, "edge3", 300, big=True)]
    central = tmp_path / "central"
    cfg = cfg_for(nats_server.url)
    pruned = cfg_for(nats_server.url, prune_after_ack=True)
    want = total(dirs)
    closed_before = [p for p in iter_segment_files(dirs[0]) if p.name.endswith(".zst")]
    assert len(closed_before) > 1

    async def main() -> Collector:
        await init_network(cfg, StreamSettings())
        stop = asyncio.Event()
        shippers = [Shipper(d, d.name, pruned if d.name == "edge1" else cfg) for d in dirs]
        col = Collector(central, cfg)
        tasks = [asyncio.create_task(s.run(stop)) for s in shippers] + [asyncio.create_task(col.run(stop))]
        await wait_for(lambda: col.stats.events >= want and all(s.stats.caught_up for s in shippers),
                       30, "the collector to hold every event")
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would arrive now
        st = await network_status(cfg, data_dir=central)
        text = render_status(st)
        assert all(name in text for name in ("edge1", "edge2", "edge3")), text
        assert st.sensors["edge2"].ship is not None and st.sensors["edge2"].ship.last_heartbeat is not None
        assert st.messages == 0 and st.consumer["pending"] == 0
        stop.set()
        await asyncio.gather(*tasks)
        return col

    # edge1 prunes: read its union before it ships
    want_ev, want_bd = union(dirs)
    col = asyncio.run(main())
    assert col.stats.events == want and col.stats.duplicates == 0
    assert lines(central) == want_ev
    got = bodies(central)
    assert got.keys() == want_bd.keys() and all(got[s] == want_bd[s] for s in got)
    assert any(len(b) > 1_000_000 for b in got.values())  # went through the object store
    assert not any(p.exists() for p in closed_before), "edge1's acked closed segments are pruned"
    assert iter_segment_files(dirs[1]), "edge2 does not prune"


def test_collector_drops_republished_events_after_the_duplicate_window(tmp_path, nats_server):
    d = make_sensor(tmp_path, "edge1", 200)
    central = tmp_path / "central"
    cfg = cfg_for(nats_server.url)

    async def ship_all() -> Shipper:
        stop = asyncio.Event()
        sh = Shipper(d, "edge1", cfg)
        t = asyncio.create_task(sh.run(stop))
        await wait_for(lambda: sh.stats.caught_up and sh.stats.events > 0, 20, "shipping")
        stop.set()
        await t
        return sh

    async def main() -> Collector:
        await init_network(cfg, StreamSettings(duplicate_window_s=1.0))
        await ship_all()
        await asyncio.sleep(1.5)
        for f in (d / "ship").iterdir():  # forget everything: the sensor ships it all again
            f.unlink()
        again = await ship_all()
        assert again.stats.duplicates == 0  # past the window: the broker took them twice
        stop = asyncio.Event()
        col = Collector(central, cfg)
        t = asyncio.create_task(col.run(stop))
        await wait_for(lambda: col.stats.events + col.stats.duplicates >= 2 * total([d]), 20, "collecting")
        stop.set()
        await t
        return col

    col = asyncio.run(main())
    assert col.stats.duplicates == total([d])
    assert_same(central, [d])


# The issue's scenario: the broker comes back a minute later (long enough for the shippers' backoff
# to reach its cap). SPAMPOTS_TEST_BROKER_DOWN_S shortens it for quick local runs.
BROKER_DOWN_S = float(os.environ.get("SPAMPOTS_TEST_BROKER_DOWN_S", "60"))


def test_broker_killed_mid_stream_loses_nothing_and_duplicates_nothing(tmp_path, nats_server):
    dirs = [tmp_path / "edge1", tmp_path / "edge2"]
    central = tmp_path / "central"
    cfg = cfg_for(nats_server.url)
    recs = [Recorder(d, d.name, segment_max_bytes=1 << 15) for d in dirs]
    for r in recs:
        r.start()

    def keep_capturing(rec: Recorder, name: str, stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            capture(rec, name, i, 50)
            i += 50
            time.sleep(0.1)

    async def main() -> tuple[Collector, list[Shipper]]:
        # deliveries the broker made but never saw acked come back after ack_wait
        await init_network(cfg, StreamSettings(ack_wait_s=3.0))
        stop, writers_stop = asyncio.Event(), threading.Event()
        writers = [threading.Thread(target=keep_capturing, args=(r, d.name, writers_stop)) for r, d in zip(recs, dirs)]
        for w in writers:
            w.start()
        shippers = [Shipper(d, d.name, cfg) for d in dirs]
        col = Collector(central, cfg)
        tasks = [asyncio.create_task(s.run(stop)) for s in shippers] + [asyncio.create_task(col.run(stop))]
        await wait_for(lambda: col.stats.events > 500, 20, "traffic to flow")
        nats_server.kill()
        down_at = total(dirs)
        await asyncio.sleep(BROKER_DOWN_S)  # the sensors keep capturing while the broker is gone
        assert total(dirs) > down_at, "local capture continued"
        assert all(s.stats.state == "unreachable" for s in shippers)
        nats_server.start()
        await asyncio.sleep(1.0)
        writers_stop.set()
        for w in writers:
            w.join()
        want = total(dirs)
        await wait_for(lambda: col.stats.events >= want and all(s.stats.caught_up for s in shippers),
                       75, "catching up after the broker returned",  # backoff cap 30 s + catch-up
                       lambda: f"want {want}: {col.stats} {[s.stats for s in shippers]}")
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        return col, shippers

    col, shippers = asyncio.run(main())
    for r in recs:
        r.close_sync(10)
    assert all(s.stats.failures >= 1 for s in shippers)
    assert_same(central, dirs)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spampots.transport.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def test_collector_and_shipper_killed_and_restarted(tmp_path, nats_server):
    dirs = [make_sensor(tmp_path, f"edge{i}", 3000, segment_max_bytes=1 << 17) for i in (1, 2)]
    central = tmp_path / "central"
    cfg = cfg_for(nats_server.url)
    # what the killed collector had fetched but not acked comes back after ack_wait
    asyncio.run(init_network(cfg, StreamSettings(ack_wait_s=3.0)))
    want = total(dirs)
    net = ["--server", nats_server.url, "--log-level", "debug"]

    def central_count() -> int:
        return sum(1 for _ in iter_event_lines(central)) if central.exists() else 0

    ship = [_spawn(["ship", *net, "--data-dir", str(d), "--sensor-id", d.name], tmp_path / "ship.log")
            for d in dirs]
    col = _spawn(["collect", *net, "--data-dir", str(central)], tmp_path / "collect.log")
    try:
        deadline = time.time() + 20
        while central_count() < want // 4 and time.time() < deadline:
            time.sleep(0.02)
        col.kill()  # SIGKILL mid-stream: intents, segments and acks in every state
        ship[0].kill()
        col.wait()
        ship[0].wait()
        killed_at = central_count()
        assert 0 < killed_at < want
        ship[0] = _spawn(["ship", *net, "--data-dir", str(dirs[0]), "--sensor-id", "edge1"], tmp_path / "ship.log")
        col = _spawn(["collect", *net, "--data-dir", str(central)], tmp_path / "collect.log")
        deadline = time.time() + 40
        while central_count() < want and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # redeliveries would land now
    finally:
        for p in (*ship, col):
            p.terminate()
        for p in (*ship, col):
            p.wait(15)
    assert_same(central, dirs)


def refused_then_fixed(tmp_path: Path, good: NatsSection, bad: NatsSection, caplog,
                       refused_words: str, states: tuple[str, ...] = ("auth-failed",)) -> list[str]:
    """A shipper with ``bad`` credentials while the sensor captures; then ``good``. Returns the
    ERROR lines logged; checks the central store got everything exactly once."""
    d = tmp_path / "edge1"
    central = tmp_path / "central"

    def refused() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR and refused_words in r.getMessage()]

    async def main() -> None:
        await init_network(good, StreamSettings())
        rec = Recorder(d, "edge1")
        rec.start()
        stop = asyncio.Event()
        sh = Shipper(d, "edge1", bad)
        t = asyncio.create_task(sh.run(stop))
        for k in range(4):  # the sensor keeps capturing meanwhile
            await asyncio.to_thread(capture, rec, "edge1", k * 100, 100)
            await asyncio.sleep(0.4)
        await wait_for(lambda: refused(), 20, "the refusal")
        assert sh.stats.state in states and sh.stats.events == 0 and sh.stats.failures >= 2
        stop.set()
        await t
        await rec.close()
        stop = asyncio.Event()
        sh, col = Shipper(d, "edge1", good), Collector(central, good)
        tasks = [asyncio.create_task(sh.run(stop)), asyncio.create_task(col.run(stop))]
        await wait_for(lambda: col.stats.events >= total([d]), 20, "shipping with good credentials")
        stop.set()
        await asyncio.gather(*tasks)

    with caplog.at_level(logging.INFO, logger="spampots.transport"):
        asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(refused()) == 1, f"one clear line, not one per retry: {errors}"
    assert "capture continues in the local store" in refused()[0] and "edge1" in refused()[0]
    assert sum(lines(d).values()) == total([d]) > 400
    assert_same(central, [d])
    return refused()


def test_wrong_credentials_refused_clearly_and_capture_continues(tmp_path, nats_server_auth, caplog):
    good = cfg_for(nats_server_auth.url, user="sensor", password="right")
    bad = cfg_for(nats_server_auth.url, user="sensor", password="wrong")
    (line,) = refused_then_fixed(tmp_path, good, bad, caplog, "refused the credentials")
    assert "capture continues" in line


def test_tls_with_our_ca_ships_and_an_unknown_ca_is_refused_clearly(tmp_path, nats_server_tls, caplog):
    d = make_sensor(tmp_path, "edge1", 100)
    central = tmp_path / "central"
    good = cfg_for(nats_server_tls.url, tls_ca=str(nats_server_tls.tls[0]))
    untrusted = cfg_for(nats_server_tls.url)  # system CAs do not know our broker

    async def main() -> Shipper:
        await init_network(good, StreamSettings())
        stop = asyncio.Event()
        bad = Shipper(d, "edge1", untrusted)
        t = asyncio.create_task(bad.run(stop))
        await wait_for(lambda: bad.stats.failures >= 2, 10, "two refused attempts")
        stop.set()
        await t
        assert bad.stats.events == 0 and bad.stats.state == "stopped"
        stop = asyncio.Event()
        sh, col = Shipper(d, "edge1", good), Collector(central, good)
        tasks = [asyncio.create_task(sh.run(stop)), asyncio.create_task(col.run(stop))]
        await wait_for(lambda: col.stats.events >= total([d]), 20, "shipping over TLS")
        stop.set()
        await asyncio.gather(*tasks)
        return sh

    with caplog.at_level(logging.INFO, logger="spampots.transport"):
        asyncio.run(main())
    tls_lines = [r.getMessage() for r in caplog.records if "TLS with NATS failed" in r.getMessage()]
    assert len(tls_lines) == 1 and "certificate" in tls_lines[0].lower(), tls_lines
    assert_same(central, [d])


def test_throughput_one_shipper_one_collector(tmp_path, nats_server, capsys):
    n = 20000
    d = make_sensor(tmp_path, "edge1", n, segment_max_bytes=8 << 20)
    want = total([d])
    central = tmp_path / "central"
    cfg = cfg_for(nats_server.url, batch_size=512)

    async def main() -> tuple[float, float]:
        await init_network(cfg, StreamSettings())
        stop = asyncio.Event()
        sh = Shipper(d, "edge1", cfg)
        t0 = time.perf_counter()
        t = asyncio.create_task(sh.run(stop))
        await wait_for(lambda: sh.stats.events >= want, 60, "shipping")
        ship_s = time.perf_counter() - t0
        stop.set()
        await t
        stop = asyncio.Event()
        col = Collector(central, cfg)
        t0 = time.perf_counter()
        t = asyncio.create_task(col.run(stop))
        await wait_for(lambda: col.stats.events >= want, 60, "collecting")
        col_s = time.perf_counter() - t0
        stop.set()
        await t
        return ship_s, col_s

    ship_s, col_s = asyncio.run(main())
    with capsys.disabled():
        print(f"\nthroughput: {want} events ({n // 10} with bodies): shipped {want / ship_s:,.0f} events/s, "
              f"collected {want / col_s:,.0f} events/s (fsync on)")
    assert want / ship_s > 500 and want / col_s > 500
    assert_same(central, [d])
