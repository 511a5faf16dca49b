"""Threat-intel outputs against real receivers: hpfeeds (its own broker, started here on
loopback), the MISP feed directory (read back with PyMISP) and STIX 2.1 bundles (read back
with stix2, checked by the official validator when it is installed)."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rsyslog import free_port
from spampots.outputs import Runner
from test_outputs import Background, emit, output, stored

BROKER = shutil.which("hpfeeds-broker")


def _broker_runs() -> bool:
    if BROKER is None:
        return False
    r = subprocess.run([BROKER, "--help"], capture_output=True, timeout=60)
    return r.returncode == 0  # its extra (aiorun, aiohttp, ...) installed


needs_broker = pytest.mark.skipif(not _broker_runs(), reason="hpfeeds-broker not installed (pip install 'hpfeeds[broker]')")


class Broker:
    """hpfeeds-broker on loopback; idents from its environment authenticator."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ,
                        HPFEEDS_SENSOR_SECRET="s3cret", HPFEEDS_SENSOR_PUBCHANS="spampots.events",
                        HPFEEDS_SENSOR_SUBCHANS="spampots.events",
                        HPFEEDS_SOC_SECRET="soc", HPFEEDS_SOC_SUBCHANS="spampots.events", HPFEEDS_SOC_PUBCHANS="")

    def start(self, wait_port: object = None) -> "Broker":
        self.proc = subprocess.Popen([BROKER, "--bind", f"127.0.0.1:{self.port}", "--auth", "env"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("hpfeeds-broker did not listen")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
            self.proc = None


class Subscriber:
    """The SOC's side: ident ``soc`` subscribed to the channel, reconnecting when the broker goes."""

    def __init__(self, port: int) -> None:
        from hpfeeds import protocol as p

        self.p, self.port = p, port
        self.got: list[bytes] = []
        self.connected = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        p = self.p
        while not self._stop:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(0.2)
                    un = p.Unpacker()
                    while not self._stop:
                        try:
                            data = s.recv(65536)
                        except socket.timeout:
                            continue
                        if not data:
                            break
                        un.feed(data)
                        while un.ready():
                            op, msg = un.pop()
                            if op == p.OP_INFO:
                                s.sendall(p.msgauth(p.readinfo(msg)[1], "soc", "soc")
                                          + p.msgsubscribe("soc", "spampots.events"))
                                self.connected.set()
                            elif op == p.OP_PUBLISH:
                                self.got.append(p.readpublish(msg)[2])
            except OSError:
                pass
            self.connected.clear()
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop = True
        self.thread.join(10)


def wait_count(sub: Subscriber, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sub.got) < n and time.monotonic() < deadline:
        time.sleep(0.05)


@needs_broker
def test_hpfeeds_every_event_once_through_the_broker_killed_and_back(tmp_path):
    from spampots.store.recorder import Recorder

    data, port = tmp_path / "data", free_port()
    broker = Broker(port).start()
    sub = Subscriber(port)
    try:
        assert sub.connected.wait(30)
        cfg = output(kind="hpfeeds", port=port, ident="sensor", secret="s3cret", batch=50, timeout_s=20)
        with Recorder(data, "edge", segment_max_bytes=1 << 14) as rec:
            emit(rec, 0, 200)
            bg = Background(Runner(cfg, data))
            assert bg.caught_up()
            want = stored(data)
            wait_count(sub, sum(want.values()))
            assert collections.Counter(sub.got) == want  # every event once, as stored
            broker.stop(signal.SIGKILL)
            emit(rec, 200, 150)  # while the broker is dead: they wait in the store
            deadline = time.monotonic() + 30
            while bg.runner.failures < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert bg.runner.failures >= 1
            # the broker keeps nothing: an event published before the subscriber is back is
            # gone for it. So the output restarts once the subscriber is in again (from its cursor).
            bg.stop()
            while sub.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            broker.start()
            assert sub.connected.wait(30)
            bg = Background(Runner(cfg, data))
            assert bg.caught_up()
            want = stored(data)
            wait_count(sub, sum(want.values()))
            bg.stop()
        got = collections.Counter(sub.got)
        assert sum((want - got).values()) == 0, "lost"
        assert sum(n - 1 for n in got.values() if n > 1) == 0, "duplicated"
        assert got == want
    finally:
        sub.stop()
        broker.stop(signal.SIGKILL)


@needs_broker
def test_hpfeeds_wrong_secret_is_refused_and_nothing_is_taken(tmp_path):
    from spampots.store.recorder import Recorder

    data, port = tmp_path / "data", free_port()
    broker = Broker(port).start()
    try:
        cfg = output(kind="hpfeeds", port=port, ident="sensor", secret="wrong", timeout_s=5)
        with Recorder(data, "edge") as rec:
            emit(rec, 0, 10)
        runner = Runner(cfg, data)
        runner.output.start()
        with pytest.raises((ConnectionError, OSError)):
            runner.step()
        runner.output.stop()
        runner.reader.rewind()
        assert runner.reader.read_events(100)  # the cursor did not move: all still to send
        runner.reader.close()
    finally:
        broker.stop(signal.SIGKILL)


def _misp_loaded(feed: Path) -> dict:
    """Every event of the feed directory, loaded back with PyMISP: {uuid: MISPEvent}."""
    from pymisp import MISPEvent

    manifest = json.loads((feed / "manifest.json").read_text())
    events = {}
    for uid in manifest:
        ev = MISPEvent()
        ev.load_file(feed / f"{uid}.json")
        events[uid] = ev
    return events


def test_misp_feed_one_event_per_day_and_sensor_grown_atomically(tmp_path):
    pytest.importorskip("pymisp")
    from spampots.events import ProxyRequest, SmtpMessage, stamp
    from spampots.store.recorder import Recorder

    data = tmp_path / "data"
    cfg = output(kind="misp", name="feed", batch=40)
    feed = data / "outputs" / "feed"
    with Recorder(data, "edge") as rec:
        emit(rec, 0, 100)
        common = dict(sensor="edge", session="p1", src_ip="127.9.9.9", src_port=5, listener_port=1080,
                      protocol="socks5", depth=0)
        rec.emit(stamp(ProxyRequest(proxy="socks5", command="connect", target_host="MX.Example.NET",
                                    target_port=25), **common))
        rec.emit(stamp(SmtpMessage(mail_from="b@example.org", subject="Cheap " + "x" * 3000, size=1,
                                   sha256="ab" * 32, target_host="192.0.2.7", target_port=25), **common))
        rec.flush_sync(10)
    with Recorder(data, "other") as rec:
        emit(rec, 0, 5, sensor="other")
    runner = Runner(cfg, data)
    while runner.step():
        pass
    events = _misp_loaded(feed)
    assert len(events) == 2  # one per sensor for the one day
    by_sensor = {("edge" if "edge" in ev.info else "other"): ev for ev in events.values()}
    edge = {(a.type, a.value) for a in by_sensor["edge"].attributes}
    assert ("ip-src", "127.0.0.1") in edge and ("ip-src", "127.9.9.9") in edge
    assert ("email-src", "a0@example.com") in edge and ("email-src", "b@example.org") in edge
    assert ("sha256", "ab" * 32) in edge and ("hostname", "mx.example.net") in edge and ("ip-dst", "192.0.2.7") in edge
    subjects = [v for t, v in edge if t == "email-subject"]
    assert subjects and max(map(len, subjects)) <= 1024
    assert len(edge) == len(by_sensor["edge"].attributes)  # each value once
    # hashes.csv: MD5 of each value, with its event, as MISP's feed correlation reads it
    rows = {tuple(r.split(",")) for r in (feed / "hashes.csv").read_text().splitlines()}
    uid = by_sensor["edge"].uuid
    assert (hashlib.md5(b"127.9.9.9").hexdigest(), uid) in rows
    before = len(by_sensor["edge"].attributes)
    runner.reader.close()
    # the day's event grows; a batch sent again (crash before the cursor moved) adds nothing
    with Recorder(data, "edge") as rec:
        emit(rec, 100, 50)
    runner = Runner(cfg, data)
    runner.step()
    runner.reader.rewind()  # as after a failure: the same batch again
    while runner.step():
        pass
    runner.reader.close()
    events = _misp_loaded(feed)
    grown = {(a.type, a.value) for a in events[uid].attributes}
    assert len(events) == 2 and len(grown) == len(events[uid].attributes) > before
    assert ("ip-src", "127.0.0.150") in grown
    assert not list(feed.glob(".*tmp"))  # written, then renamed


def run_over(data: Path, n: int, cfg, close: bool = True) -> Runner:
    """Store ``n`` events of sensor edge, then run the output over all of them."""
    from spampots.store.recorder import Recorder

    with Recorder(data, "edge") as rec:
        emit(rec, 0, n)
    runner = Runner(cfg, data)
    while runner.step():
        pass
    if close:
        runner.reader.close()
    return runner


def test_misp_bounds_attributes_per_event(tmp_path):
    pytest.importorskip("pymisp")
    data = tmp_path / "data"
    run_over(data, 300, output(kind="misp", max_attributes=50))
    (ev,) = _misp_loaded(data / "outputs" / "misp").values()
    assert len(ev.attributes) == 50


def test_stix_bundles_parse_and_validate_and_a_resent_batch_changes_nothing(tmp_path):
    stix2 = pytest.importorskip("stix2")
    data = tmp_path / "data"
    runner = run_over(data, 120, output(kind="stix", batch=50), close=False)
    out = data / "outputs" / "stix"
    files = sorted(out.glob("bundle-*.json"))
    assert len(files) == len(list(range(0, sum(stored(data).values()), 50)))
    ips, hashes = set(), set()
    for f in files:
        bundle = stix2.parse(f.read_text(), allow_custom=False)
        by_type = collections.defaultdict(list)
        for o in bundle.objects:
            by_type[o.type].append(o)
        ips |= {o.value for o in by_type["ipv4-addr"]}
        hashes |= {o.hashes["SHA-256"] for o in by_type["file"]}
        assert len(by_type["indicator"]) == len(by_type["observed-data"]) == len(by_type["relationship"])
        refs = {o.id for o in bundle.objects}
        assert all(r in refs for o in by_type["observed-data"] for r in o.object_refs)
        assert all(o.created_by_ref in refs for o in by_type["indicator"])
    assert ips == {f"127.0.0.{i + 1}" for i in range(120)} and hashes == {"0" * 64}
    try:
        from stix2validator import ValidationOptions, validate_string
    except ImportError:
        validate_string = None
    if validate_string is not None:  # the official validator, strict on the 2.1 spec
        for f in files:
            result = validate_string(f.read_text(), ValidationOptions(version="2.1"))
            assert result.is_valid, [str(e) for e in result.errors]
    before = {f.name: f.read_bytes() for f in files}
    runner.reader.rewind()
    runner.reader.close()
    runner = Runner(output(kind="stix", batch=50), data)  # same cursor: nothing is new
    assert runner.step() == 0
    runner.reader.close()
    # a batch written again (the crash between write and cursor): the same file, the same objects
    again = Runner(output(kind="stix", name="stix2", batch=50, path="outputs/stix"), data)
    while again.step():
        pass
    again.reader.close()
    after = {f.name: json.loads(f.read_bytes()) for f in sorted(out.glob("bundle-*.json"))}
    assert after.keys() == before.keys()
    ids = lambda b: sorted(o["id"] for o in b["objects"])  # noqa: E731
    assert all(ids(after[n]) == ids(json.loads(before[n])) for n in before)


def test_example_config_shows_every_key_and_a_missing_library_names_the_extra():
    import subprocess
    import sys

    from spampots import config
    from spampots.outputs import need_extra

    out = subprocess.run([sys.executable, "-c", "import sys; from spampots.cli import main; sys.exit(main())",
                          "example-config"], capture_output=True, text=True, check=True).stdout
    for struct in (config.HpfeedsOutput, config.MispOutput, config.StixOutput):
        block = out.split(f'# kind = "{struct.__struct_config__.tag}"', 1)[1].split("[[output]]", 1)[0]
        for key in set(struct.__struct_fields__) - set(config.OutputBase.__struct_fields__):
            assert f"\n# {key} " in block, (struct.__name__, key)
    with pytest.raises(ImportError, match=r"spampots\[outputs\]"):
        need_extra("spampots_no_such_library")
