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
from conftest import SensorProc, start_sensor

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
            s = socket.socket()
            s.bind((_slow_source(i // per_source), 0))
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
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
