"""Two real sensors with [transport.nats] ship to one collector through a real nats-server."""

from __future__ import annotations

import collections
import hashlib
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clients import ProxySMTP, make_message
from conftest import start_sensor
from nats_fixture import nats_server  # noqa: F401 (fixture)
from spampots.store.messages import MessageStore
from spampots.store.segments import iter_event_lines

pytest.importorskip("nats")
CLI = [sys.executable, "-m", "spampots.cli"]


def test_sensors_ship_to_a_collector(nats_server, tmp_path):  # noqa: F811
    url = nats_server.url
    init = subprocess.run([*CLI, "network", "init", "--server", url, "--ack-wait-s", "3"],
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    cfg = (f'[transport.nats]\nservers = ["{url}"]\nretry_max_s = 0.5\npoll_interval_s = 0.05\n'
           f'status_interval_s = 0.5\n[sensor]\nheartbeat_interval_s = 0.5\n')
    central = tmp_path / "central"
    collector = subprocess.Popen([*CLI, "collect", "--server", url, "--data-dir", str(central)],
                                 stderr=subprocess.PIPE, text=True)
    # Data dirs under a world-searchable directory, so the sensors can drop root and still ship.
    base = Path(tempfile.mkdtemp(prefix="spampots-e2e-"))
    base.chmod(0o755)
    sensors = [start_sensor(tmp_path / f"s{i}", config=cfg, args=("--sensor-id", f"edge{i}"),
                            data_dir=base / f"s{i}") for i in (1, 2)]
    sent = []
    try:
        for i, sp in enumerate(sensors):
            with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
                for j in range(3):
                    raw = make_message(1000 * i + j, subject=f"edge{i}-{j}")
                    s.sendmail("a@spam.example", ["v@victim.example"], raw)
                    sent.append(raw)
            with ProxySMTP(f"socks5://127.0.0.1:{sp.port(1080)}", "mx.e2e.example", 25, rdns=True, timeout=10) as s:
                raw = make_message(1000 * i + 99, subject=f"edge{i}-tunnel")
                s.sendmail("a@spam.example", ["w@victim.example"], raw)
                sent.append(raw)
        time.sleep(1.5)  # a few heartbeats
    finally:
        for sp in sensors:
            assert sp.stop() == 0
    want = collections.Counter()
    for sp in sensors:
        want.update(iter_event_lines(sp.data_dir))
    deadline = time.time() + 60
    while time.time() < deadline:
        got = collections.Counter(iter_event_lines(central)) if central.exists() else collections.Counter()
        if got == want:
            break
        time.sleep(0.3)
    collector.terminate()
    err = collector.communicate(timeout=20)[1]
    assert got - want == collections.Counter(), "duplicated or foreign events in the central store"
    assert want - got == collections.Counter(), f"events not collected:\n{err[-2000:]}"
    with MessageStore(central, readonly=True) as store:
        for raw in sent:
            assert store.get(hashlib.sha256(raw).hexdigest()) == raw
    shutil.rmtree(base, ignore_errors=True)
    # the sensors' heartbeats reached the centre: the network knows they were up
    assert any(b'"spampots.sensor.heartbeat"' in line and b'"edge1"' in line for line in got)
