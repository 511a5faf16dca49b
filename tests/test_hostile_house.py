"""Hostile load against a real sensor: a full house, a low descriptor limit, a flood of limit hits.

Each test reproduces an attack (many slow connections, a descriptor limit below what
max_sessions needs, one source flooding connections) and checks the sensor stays usable
and its records stay bounded. Timings are printed (they go into the issue's note) but only
completion is asserted: CI's cores are busy.
"""

from __future__ import annotations

import resource
import smtplib
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from clients import make_message
from conftest import SensorProc, connect_from, start_sensor
from spampots.sensor.limits import STORE_RESERVE_FDS

SMTP_ONLY = '[[listener]]\nport = 25\nkind = "smtp"\n'


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _slow_source(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


@contextmanager
def slow_connections(port: int, n: int, per_source: int = 60, every_s: float = 2.0) -> Iterator[list[socket.socket]]:
    """n connections from n/per_source loopback sources, each sending one byte every few
    seconds (never a whole line), as a slow-loris does to keep the idle timeout away."""
    _raise_nofile()
    socks: list[socket.socket] = []
    stop = threading.Event()

    def dribble() -> None:
        while not stop.wait(every_s):
            for s in list(socks):
                try:
                    s.send(b"x")
                except OSError:
                    pass  # closed by the sensor: refused or evicted

    try:
        for i in range(n):
            s = connect_from(_slow_source(i // per_source), port)
            if s is None:
                continue
            s.setblocking(False)
            socks.append(s)
        t = threading.Thread(target=dribble, daemon=True)
        t.start()
        yield socks
    finally:
        stop.set()
        for s in socks:
            s.close()


def smtp_transaction(port: int, source: str, timeout: float) -> float:
    """One SMTP transaction (EHLO, MAIL, RCPT, DATA -> 250); its duration in seconds."""
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout, source_address=(source, 0)) as smtp:
        smtp.ehlo("fresh.example")
        refused = smtp.sendmail("a@fresh.example", ["b@victim.example"], make_message(1))
        assert refused == {}
    return time.monotonic() - t0


def _wait_events(sp: SensorProc, name: str, n: int, timeout: float) -> list:
    return sp.events(name, wait_for=n, timeout=timeout)


def test_full_house_of_slow_connections_makes_room_for_fresh_clients(tmp_path: Path) -> None:
    # Defaults: max_sessions 4096, 64 per source, 60 s idle timeout (a byte every 2 s keeps it away).
    sp = start_sensor(tmp_path, config=SMTP_ONLY, wait_port=25)
    port = sp.port(25)
    times: list[float] = []
    failures: list[str] = []
    try:
        with slow_connections(port, 5000) as socks:
            assert len(socks) >= 4900
            opened = _wait_events(sp, "spampots.session.open", 4096, timeout=40)
            assert len(opened) >= 4096
            for i in range(20):
                try:
                    times.append(smtp_transaction(port, f"127.2.0.{i + 1}", timeout=15))
                except (OSError, smtplib.SMTPException) as exc:
                    failures.append(repr(exc))
    finally:
        sp.stop()
    print(f"\nfresh clients served: {len(times)}/20; seconds each: "
          f"{', '.join(f'{t:.3f}' for t in times)}; max {max(times, default=0):.3f}")
    assert len(times) >= 19, failures
    closes = sp.events("spampots.session.close")
    evicted = [c for c in closes if c.reason == "evicted"]
    assert evicted and all(c.src_ip.startswith("127.1.") for c in evicted)  # only slow sessions made room
    messages = sp.events("spampots.smtp.message")
    assert len(messages) == len(times)
    hits = [h for h in sp.events("spampots.limit.hit") if h.limit == "max_sessions"]
    assert hits and sum(h.count for h in hits) >= 20
    assert "Traceback" not in sp.stderr()


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files line")


def test_low_descriptor_limit_lowers_max_sessions_and_capture_goes_on(tmp_path: Path) -> None:
    # A hard limit of 256 cannot hold max_sessions = 4096: the sensor raises its soft limit
    # (64) to 256, warns once, fits max_sessions under it with a reserve for the store, and
    # makes room beyond it instead of dropping clients or failing to store mail.
    sp = start_sensor(tmp_path, config=SMTP_ONLY, wait_port=25, env_extra={"SPAMPOTS_TEST_NOFILE": "64:256"})
    port = sp.port(25)
    try:
        assert _soft_nofile(sp.proc.pid) == 256
        start = sp.events("spampots.sensor.start", wait_for=1)[0]
        effective = start.limits["max_sessions"]
        assert 32 <= effective < 256 - STORE_RESERVE_FDS
        assert sp.stderr().count("max_sessions lowered") == 1
        extra = 40
        with slow_connections(port, effective + extra, per_source=20) as socks:
            assert len(socks) == effective + extra
            # every connection was admitted (made room for), none dropped unseen
            opens = _wait_events(sp, "spampots.session.open", effective + extra + 1, timeout=20)
            assert len(opens) == effective + extra + 1  # and the wait_listening probe
            seconds = smtp_transaction(port, "127.2.0.1", timeout=15)  # the house is full
            print(f"\neffective max_sessions {effective}; a message while full took {seconds:.3f} s")
            # and the slow ones that are left still get their banners read
            newest = socks[-(effective // 2):]
            alive = 0
            for s in newest:
                s.settimeout(5)
                try:
                    alive += s.recv(100).startswith(b"220")
                except OSError:
                    pass
            assert alive == len(newest)
        message = sp.events("spampots.smtp.message", wait_for=1)
        assert len(message) == 1
    finally:
        sp.stop()
    closes = sp.events("spampots.session.close")
    assert sum(c.reason == "evicted" for c in closes) >= extra
    err = sp.stderr()
    assert "Too many open files" not in err and "Traceback" not in err and "not stored" not in err


def test_flood_of_refusals_is_a_bounded_number_of_counted_limit_hits(tmp_path: Path) -> None:
    sp = start_sensor(tmp_path, config=SMTP_ONLY + "[limits]\nmax_sessions_per_ip = 10\n"
                      "new_sessions_per_s_per_ip = 20\nlimit_hit_interval_s = 1\n", wait_port=25)
    port = sp.port(25)
    flooder = "127.3.0.1"
    _raise_nofile()
    held: list[socket.socket] = []
    attempts = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 3.0 and attempts < 3000:
            s = connect_from(flooder, port)
            if s is None:
                continue
            attempts += 1
            held.append(s)  # open until the end, so the sensor sees the source of each
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the sensor has seen every connection
            seen = sum(1 for e in sp.events("spampots.session.open") if e.src_ip == flooder)
            seen += sum(e.count for e in sp.events("spampots.limit.hit") if e.src_ip == flooder)
            if seen >= attempts:
                break
            time.sleep(0.5)
    finally:
        sp.stop()
        for s in held:
            s.close()
    opens = [e for e in sp.events("spampots.session.open") if e.src_ip == flooder]
    hits = [e for e in sp.events("spampots.limit.hit") if e.src_ip == flooder]
    refused = attempts - len(opens)
    print(f"\n{attempts} connections in {elapsed:.1f} s: {len(opens)} admitted, {refused} refused, "
          f"{len(hits)} limit.hit events")
    assert refused > 500
    assert sum(h.count for h in hits) == refused
    # per (source, limit): at most one at once and one with the count per 1 s interval (+ the stop)
    assert len(hits) <= 2 * 2 * (elapsed + 3), [(h.limit, h.count) for h in hits]


def test_dribbled_bytes_are_no_progress_and_a_stalled_session_is_closed(tmp_path: Path) -> None:
    sp = start_sensor(tmp_path, config=SMTP_ONLY + "[limits]\nprogress_timeout_s = 2\n", wait_port=25)
    port = sp.port(25)
    try:
        t0 = time.monotonic()
        loris = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.4.0.1", 0))
        assert loris.recv(100).startswith(b"220")
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.4.0.2", 0)) as client:
            client.ehlo("busy.example")
            closed_after = None
            while time.monotonic() - t0 < 12 and closed_after is None:
                try:
                    loris.send(b"x")  # a byte every 0.25 s: never idle, never a whole command
                    loris.settimeout(0.25)
                    if loris.recv(100) == b"":
                        closed_after = time.monotonic() - t0
                except socket.timeout:
                    pass
                except OSError:
                    closed_after = time.monotonic() - t0
                if int((time.monotonic() - t0) * 4) % 2 == 0:
                    assert client.noop()[0] == 250  # complete commands: progress
            assert closed_after is not None and 2 <= closed_after < 10, closed_after
            assert client.noop()[0] == 250  # the busy client outlived it
        loris.close()
    finally:
        sp.stop()
    stalled = [c for c in sp.events("spampots.session.close") if c.reason == "stalled"]
    assert [c.src_ip for c in stalled] == ["127.4.0.1"]
    hits = [h for h in sp.events("spampots.limit.hit") if h.limit == "progress_timeout_s"]
    assert [h.src_ip for h in hits] == ["127.4.0.1"] and hits[0].observed >= 2


def test_accept_errors_for_want_of_descriptors_are_counted_not_raised() -> None:
    # asyncio reports EMFILE on accept to the loop's exception handler (and retries later);
    # the sensor's handler counts it for the heartbeat and logs it at a limited rate.
    import asyncio
    import errno

    from spampots.config import Config
    from spampots.sensor.server import Sensor

    sensor = Sensor(Config())
    loop = asyncio.new_event_loop()
    try:
        sensor.loop = loop
        sensor._watch_loop_errors()
        for _ in range(50):
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": OSError(errno.EMFILE, "Too many open files")})
    finally:
        loop.close()
    assert sensor.counters["accept_errors"] == 50
