"""Health and metrics: a real Prometheus scrapes a real sensor, and `spampots status` judges it.

Run as root, the sensor drops to nobody after binding: the scrapes then also show the
endpoint works after the drop (it is bound before, like the listeners).
"""

from __future__ import annotations

import json
import shutil
import smtplib
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from clients import ProxySMTP, make_message
from conftest import start_sensor, wait_listening
from nats_fixture import nats_server  # noqa: F401 (fixture)

PROMETHEUS = shutil.which("prometheus")
CLI = [sys.executable, "-m", "spampots.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def sample(text: str, name: str) -> float:
    """The sum of every sample of ``name`` in an exposition."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    assert seen, f"{name} not in the exposition"
    return total


def _metrics_sensor(tmp: Path, extra: str = ""):
    port = free_port()
    cfg = (f"[sensor]\nheartbeat_interval_s = 1\n[metrics]\nenable = true\nport = {port}\n"
           "[limits]\nnew_sessions_per_s_per_ip = 1000\n" + extra)
    sp = start_sensor(tmp, config=cfg)
    wait_listening(port, proc=sp.proc)
    return sp, port


def _send_known_traffic(sp) -> tuple[int, int]:
    """Messages with known recipient counts, direct and through a SOCKS5 tunnel:
    (messages, recipients)."""
    with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
        s.sendmail("a@spam.example", ["v1@victim.example"], make_message(1))
        s.sendmail("a@spam.example", ["v1@victim.example", "v2@victim.example", "v3@victim.example"],
                   make_message(2))
    with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
        s.sendmail("b@spam.example", ["v4@victim.example", "v5@victim.example"], make_message(3))
    with ProxySMTP(f"socks5://127.0.0.1:{sp.port(1080)}", "mx.victim.example", 25, timeout=10) as s:
        s.sendmail("c@spam.example", ["v6@victim.example"], make_message(4))
    return 4, 7


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")
def test_real_prometheus_scrapes_what_was_sent(tmp_path):
    sp, mport = _metrics_sensor(tmp_path / "s")
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: spampots\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{mport}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=log, stderr=subprocess.STDOUT)

    def query(q: str):
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                res = json.load(r)["data"]["result"]
        except OSError:
            return None
        return float(res[0]["value"][1]) if res else None

    def wait_for(q: str, want: float, timeout: float = 60.0) -> float | None:
        deadline = time.time() + timeout
        got = None
        while time.time() < deadline:
            got = query(q)
            if got == want:
                break
            time.sleep(0.5)
        return got

    try:
        assert wait_for("up", 1.0) == 1.0, (tmp_path / "prometheus.log").read_text()[-2000:]
        messages, rcpts = _send_known_traffic(sp)
        assert wait_for("sum(spampots_messages_total)", messages) == messages
        assert wait_for("sum(spampots_recipients_total)", rcpts) == rcpts
        assert wait_for('sum(spampots_proxy_requests_total{protocol="socks5"})', 1.0) == 1.0
        # per listener port: the tunnelled message counts on the SOCKS port
        assert wait_for(f'spampots_messages_total{{port="{sp.port(25)}",protocol="smtp"}}', 3.0) == 3.0
        assert wait_for(f'spampots_messages_total{{port="{sp.port(1080)}",protocol="smtp"}}', 1.0) == 1.0
        assert (query("spampots_fsync_seconds_count") or 0) > 0
        assert query("spampots_disk_free_bytes") > 0
        assert query("spampots_recorder_queue_depth") is not None
    finally:
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()
        sp.stop()


def test_endpoint_is_loopback_and_survives_hostile_clients(tmp_path):
    sp, mport = _metrics_sensor(tmp_path / "s")
    try:
        # bound on 127.0.0.1 only (the default): no socket on another address of ours
        held = [socket.create_connection(("127.0.0.1", mport), timeout=5) for _ in range(30)]  # idle clients
        try:
            text = scrape(mport)  # the oldest idle ones made room
            assert sample(text, "spampots_sessions_open") == 0
            junk = socket.create_connection(("127.0.0.1", mport), timeout=5)
            junk.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 9000)  # one write, just over the bound
            reply = junk.recv(200)
            assert reply.startswith(b"HTTP/1.1 431")
            junk.close()
            with pytest.raises(urllib.error.HTTPError) as e:
                scrape(mport, "/../../etc/passwd")
            assert e.value.code == 404
        finally:
            for s in held:
                s.close()
        assert sp.proc.poll() is None
        cfg = sp.config_path.read_text()
        assert "address" not in cfg  # the default made it loopback
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", mport), timeout=2).close()
    finally:
        sp.stop()


def test_metrics_address_must_be_an_ip_address(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[metrics]\nenable = true\naddress = ""\n')
    r = subprocess.run([*CLI, "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2 and "metrics.address" in r.stderr


# -- spampots status ----------------------------------------------------------------------------

def status(sp, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "status", "--data-dir", str(sp.data_dir), "--sensor", "test-sensor", *extra],
                          capture_output=True, text=True, timeout=60)


def _wait_heartbeat_with(sp, pred, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        beats = sp.events("spampots.sensor.heartbeat")
        if beats and pred(beats[-1]):
            return beats[-1]
        time.sleep(0.2)
    raise AssertionError("no heartbeat with the expected figures")


def test_status_healthy_then_stopped(tmp_path):
    sp, mport = _metrics_sensor(tmp_path / "s")
    try:
        messages, rcpts = _send_known_traffic(sp)
        _wait_heartbeat_with(sp, lambda hb: sum(t.messages for t in hb.tallies) == messages
                             and sum(t.sessions for t in hb.tallies) >= 3)
        r = status(sp)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "running" in r.stdout and r.stdout.rstrip().endswith("healthy")
        assert f"port {sp.port(25)} smtp: sessions 2, messages 3, recipients 6" in r.stdout
        assert f"port {sp.port(1080)} smtp:" in r.stdout and "messages 1, recipients 1" in r.stdout
        # the same figures as the endpoint
        text = scrape(mport)
        assert sample(text, "spampots_messages_total") == messages
        assert sample(text, "spampots_recipients_total") == rcpts
        # a disk floor above what is free
        r = status(sp, "--min-free-mb", "1e12")
        assert r.returncode == 1 and "unhealthy: disk:" in r.stdout
    finally:
        sp.stop()
    r = status(sp)
    assert r.returncode == 1
    assert "stopped" in r.stdout and "unhealthy: sensor stopped at" in r.stdout
    assert "messages 3, recipients 6" in r.stdout  # the stop event's figures


def test_status_stale_after_a_crash(tmp_path):
    sp, _ = _metrics_sensor(tmp_path / "s")
    try:
        sp.events("spampots.sensor.heartbeat", wait_for=1, timeout=20)
        assert status(sp).returncode == 0
    finally:
        sp.kill9()  # no stop event: only the silence tells
    deadline = time.time() + 30
    while True:
        r = status(sp)
        if r.returncode == 1 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert r.returncode == 1, r.stdout
    assert "unhealthy: no heartbeat for" in r.stdout and "running" in r.stdout


def test_status_shipping_backlog_stale(tmp_path):
    sp, _ = _metrics_sensor(tmp_path / "s")
    sp.events("spampots.sensor.heartbeat", wait_for=1, timeout=20)
    sp.stop()
    ship = sp.data_dir / "ship"
    ship.mkdir()
    cursor = ship / "test-sensor.cursor"
    cursor.write_text("{}")  # nothing acked: every segment waits
    old = time.time() - 3600
    import os
    os.utime(cursor, (old, old))
    r = status(sp)
    assert "shipping:" in r.stdout and "unhealthy: shipping:" in r.stdout
    r = status(sp, "--ship-stale-s", "7200")
    assert "unhealthy: shipping:" not in r.stdout


def test_status_on_a_dir_without_the_sensor(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    r = subprocess.run([*CLI, "status", "--data-dir", str(d), "--sensor", "nobody-here"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unhealthy: no spampots.sensor.start" in r.stdout
    r = subprocess.run([*CLI, "status", "--data-dir", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 2 and "no data directory" in r.stderr


# -- shipping and collecting ---------------------------------------------------------------------

def test_shipper_and_collector_figures(tmp_path, nats_server):
    """The sensor shows its backlog draining and the broker's acks; `collect --metrics`
    shows its lag and what it stored; status judges the shipping healthy."""
    import asyncio

    from spampots.transport.config import NatsSection
    from spampots.transport.network import StreamSettings, init_network

    asyncio.run(init_network(NatsSection(servers=[nats_server.url]), StreamSettings()))
    sp, mport = _metrics_sensor(tmp_path / "s", f'[transport.nats]\nservers = ["{nats_server.url}"]\n'
                                                 "retry_max_s = 0.5\npoll_interval_s = 0.05\n")
    cport = free_port()
    central = tmp_path / "central"
    col = subprocess.Popen([*CLI, "collect", "--server", nats_server.url, "--data-dir", str(central),
                            "--metrics", str(cport)], stdout=subprocess.DEVNULL,
                           stderr=open(tmp_path / "collect.log", "wb"))
    try:
        messages, _ = _send_known_traffic(sp)
        sp.events("spampots.smtp.message", wait_for=messages, timeout=20)
        deadline = time.time() + 40
        while time.time() < deadline:
            text = scrape(mport)
            if "spampots_ship_last_ack_age_seconds" in text and sample(text, "spampots_ship_backlog_bytes") == 0:
                break
            time.sleep(0.3)
        assert sample(text, "spampots_ship_backlog_bytes") == 0
        assert sample(text, "spampots_ship_connected") == 1
        assert 0 <= sample(text, "spampots_ship_last_ack_age_seconds") < 40
        wait_listening(cport, proc=col)
        deadline = time.time() + 40
        while time.time() < deadline:
            ctext = scrape(cport)
            if sample(ctext, "spampots_collector_events_total") >= messages and \
                    sample(ctext, "spampots_collector_pending_messages") == 0:
                break
            time.sleep(0.3)
        assert sample(ctext, "spampots_collector_events_total") >= messages
        assert sample(ctext, "spampots_collector_pending_messages") == 0
        assert sample(ctext, "spampots_collector_connected") == 1
        assert sample(ctext, "spampots_collector_lag_seconds") >= 0
        r = subprocess.run([*CLI, "status", "--config", str(sp.config_path), "--data-dir", str(sp.data_dir),
                            "--sensor", "test-sensor"], capture_output=True, text=True, timeout=60)
        assert "shipping:" in r.stdout and "last ack" in r.stdout
        assert "unhealthy: shipping" not in r.stdout
    finally:
        col.terminate()
        col.wait(20)
        sp.stop()
