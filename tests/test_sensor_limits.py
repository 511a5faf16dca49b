"""Connection limits (pure): the gate, the progress order, coalesced hits, the descriptor plan, the log filter."""

import logging

from spampots.sensor.limits import (
    STORE_RESERVE_FDS, ConnectionGate, HitCoalescer, ProgressOrder, plan_descriptors,
)
from spampots.lograte import RateLimitFilter
from spampots.sensor.shared import PROBES, SharedGate, SharedState


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_per_source_and_total_caps():
    g = ConnectionGate(max_total=5, max_per_ip=2, rate_per_ip=100, clock=Clock())
    assert g.admit("a") is None and g.admit("a") is None
    assert g.admit("a") == ("max_sessions_per_ip", 2, 3)
    for ip in "bcd":
        assert g.admit(ip) is None
    assert g.admit("e")[0] == "max_sessions"
    g.release("a")
    assert g.admit("a") is None


def test_rate_per_source_refills_and_does_not_touch_others():
    clock = Clock()
    g = ConnectionGate(max_total=1000, max_per_ip=1000, rate_per_ip=2.0, clock=clock)
    admitted = sum(g.admit("flood") is None for _ in range(10))
    assert admitted == 4  # burst = 2 s worth
    assert g.admit("other") is None
    clock.t += 1.0
    assert sum(g.admit("flood") is None for _ in range(10)) == 2
    assert g.admit("flood")[0] == "new_sessions_per_s_per_ip"


def test_prune_forgets_idle_sources():
    clock = Clock()
    g = ConnectionGate(max_total=10, max_per_ip=10, rate_per_ip=1.0, clock=clock)
    g.admit("x")
    g.release("x")
    clock.t += 10
    g.prune()
    assert g._buckets == {}


def test_full_house_is_reported_only_for_a_source_within_its_own_limits():
    g = ConnectionGate(max_total=2, max_per_ip=1, rate_per_ip=100, clock=Clock())
    assert g.admit("a") is None and g.admit("b") is None
    assert g.admit("a")[0] == "max_sessions_per_ip"  # its own cap: no room is made for it
    assert g.admit("c")[0] == "max_sessions"  # within its limits: the caller may make room
    g.release("a")
    assert g.admit("c") is None


def _shared_gates(n: int, clock: Clock, **limits) -> tuple[SharedState, list[SharedGate]]:
    st = SharedState(n, sources=256)
    return st, [SharedGate(st, k, clock=clock, **limits) for k in range(n)]


def test_shared_gate_holds_the_limits_over_workers():
    """Two workers' gates on one table: the same answers as one ConnectionGate."""
    st, (g0, g1) = _shared_gates(2, Clock(), max_total=5, max_per_ip=2, rate_per_ip=100)
    try:
        assert g0.admit("a") is None and g1.admit("a") is None
        assert g0.admit("a") == ("max_sessions_per_ip", 2, 3)
        assert g1.admit("a") == ("max_sessions_per_ip", 2, 3)
        for g, ip in zip((g0, g1, g0), "bcd"):
            assert g.admit(ip) is None
        assert g1.admit("e")[0] == "max_sessions"
        assert st.open_total() == 5 and (g0.total, g1.total) == (3, 2)
        g1.release("a")
        assert g0.admit("a") is None
    finally:
        st.close()


def test_shared_gate_rate_is_the_sources_over_workers():
    clock = Clock()
    st, gates = _shared_gates(3, clock, max_total=1000, max_per_ip=1000, rate_per_ip=2.0)
    try:
        admitted = sum(gates[i % 3].admit("flood") is None for i in range(12))
        assert admitted == 4  # burst = 2 s worth, for the sensor, not per worker
        assert gates[0].admit("other") is None
        clock.t += 1.0
        assert sum(gates[i % 3].admit("flood") is None for i in range(12)) == 2
    finally:
        st.close()


def test_a_dead_workers_sessions_are_forgotten():
    st, (g0, g1) = _shared_gates(2, Clock(), max_total=3, max_per_ip=2, rate_per_ip=100)
    try:
        assert g1.admit("a") is None and g1.admit("a") is None and g1.admit("b") is None
        assert g0.admit("a")[0] == "max_sessions_per_ip"
        st.worker_gone(1)  # killed: its column and its open count go
        assert st.open_total() == 0
        assert g0.admit("a") is None and g0.admit("a") is None
    finally:
        st.close()


def test_release_frees_a_slot_while_another_worker_holds_the_lock():
    # release writes only this worker's own cells, so it takes no lock: a session closing
    # must not wait on (or pay two fcntl calls for) another worker's admit.
    import os
    import threading

    st, (g0, g1) = _shared_gates(2, Clock(), max_total=2, max_per_ip=2, rate_per_ip=100)
    try:
        assert g0.admit("a") is None and g0.admit("a") is None
        assert g1.admit("a")[0] == "max_sessions_per_ip"
        held, go_on = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:  # another worker, inside the lock until the parent says so
            try:
                st.lock()
                os.write(held[1], b"x")
                os.read(go_on[0], 1)
            finally:
                os._exit(0)
        try:
            assert os.read(held[0], 1) == b"x"
            done = threading.Event()
            t = threading.Thread(target=lambda: (g0.release("a"), done.set()), daemon=True)
            t.start()
            assert done.wait(20), "release waited for another worker's lock"
        finally:
            os.write(go_on[1], b"x")
            os.waitpid(pid, 0)
        assert st.open_total() == 1
        assert g1.admit("a") is None  # the source's count over workers went down too
        assert g1.admit("a")[0] in ("max_sessions_per_ip", "max_sessions")
    finally:
        st.close()


def test_shared_table_reuses_rows_and_admits_past_a_full_window():
    clock = Clock()
    st = SharedState(1, sources=PROBES)  # one probe window: every source lands in it
    g = SharedGate(st, 0, clock=clock, max_total=10_000, max_per_ip=5, rate_per_ip=1.0)
    try:
        for i in range(PROBES):
            assert g.admit(f"10.0.0.{i}") is None
        assert g.admit("10.0.1.1") is None and g.untracked == 1  # no row: counted, total still held
        for i in range(PROBES):
            g.release(f"10.0.0.{i}")
        g.release("10.0.1.1")
        clock.t += 10  # buckets full again: the rows are free for new sources
        assert g.admit("10.0.2.1") is None and g.untracked == 1
        assert st.open_total() == 1
    finally:
        st.close()


def test_progress_order_puts_the_least_progress_first():
    order: ProgressOrder[str] = ProgressOrder()
    for s in ("slow1", "slow2", "busy"):
        order.add(s)
    order.progressed("slow1")  # a complete command moves it to the back
    assert order.least_progress() == "slow2"
    order.discard("slow2")
    order.progressed("gone")  # closed sessions are ignored
    assert list(order) == ["busy", "slow1"] and len(order) == 2 and "busy" in order
    order.discard("busy")
    order.discard("slow1")
    assert order.least_progress() is None


def test_hits_coalesced_per_pair_with_counts_that_add_up():
    c: HitCoalescer[tuple[str, str], str] = HitCoalescer(max_pairs=3)
    recorded = [c.offer(("a", "rate"), f"a{i}") for i in range(100)]
    assert recorded == [True] + [False] * 99
    assert c.offer(("b", "rate"), "b0") and c.offer(("a", "cap"), "x")
    assert c.full
    assert sorted(c.drain()) == [(99, "a99")]  # the first of each pair went out at once
    assert not c.full and c.drain() == []
    assert c.offer(("a", "rate"), "again")  # a new interval: its first hit at once again


def test_descriptor_plan_keeps_a_reserve_and_lowers_max_sessions():
    ample = plan_descriptors(limit=20000, in_use=20, listen_fds=11, max_sessions=4096)
    assert ample.max_sessions == 4096 and ample.backlog == 1024 and not ample.lowered
    low = plan_descriptors(limit=256, in_use=12, listen_fds=1, max_sessions=4096)
    assert low.lowered and low.wanted == 4096
    # sessions + open now + listeners + the store's reserve + one accept burst fit the limit
    assert low.max_sessions + 12 + 1 + STORE_RESERVE_FDS + low.backlog <= 256
    assert low.max_sessions >= 64 and 8 <= low.backlog < 1024
    # the queues are shortened only as far as needed when every session fits
    mid = plan_descriptors(limit=20000, in_use=20, listen_fds=22, max_sessions=4096)
    assert mid.max_sessions == 4096 and 512 < mid.backlog < 1024
    assert 4096 + 20 + 22 + STORE_RESERVE_FDS + 22 * mid.backlog <= 20000
    tiny = plan_descriptors(limit=64, in_use=30, listen_fds=22, max_sessions=4096)
    assert tiny.max_sessions == 1  # never zero: the sensor still serves, one at a time


def test_operator_log_rate_limited_per_kind_of_line():
    clock = Clock()
    f = RateLimitFilter(per_interval=3, interval_s=60, clock=clock)

    def rec(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("spampots.sensor", logging.ERROR, __file__, 1, msg, args, None)

    shown = [f.filter(rec("message not stored in session %s", i)) for i in range(100)]
    assert shown == [True] * 3 + [False] * 97  # session ids in the arguments do not make lines distinct
    assert f.filter(rec("another kind of line"))
    clock.t += 61
    r = rec("message not stored in session %s", "x")
    assert f.filter(r)
    assert r.getMessage() == "message not stored in session x (97 more like this not shown in the last 60 s)"


def test_refused_clients_hear_421_on_smtp_and_503_on_http(tmp_path):
    """Over the rate limit a real server says why before it closes (not a lost greeting)."""
    import smtplib
    import socket

    import pytest

    from conftest import start_sensor

    sp = start_sensor(tmp_path, config="[limits]\nnew_sessions_per_s_per_ip = 0.01\n")  # burst: 1 session
    try:
        def connect(port: int, src: str) -> socket.socket:
            return socket.create_connection(("127.0.0.1", sp.port(port)), timeout=10, source_address=(src, 0))

        # SMTP: the first is served, the next refused with the persona's 421
        with smtplib.SMTP(timeout=10, source_address=("127.0.0.31", 0)) as ok:
            assert ok.connect("127.0.0.1", sp.port(25))[0] == 220
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10, source_address=("127.0.0.31", 0))
        assert refused.value.smtp_code == 421
        assert refused.value.smtp_error.startswith(b"4.7.0 ") and b"too many connections" in refused.value.smtp_error

        # HTTP proxy port: a 503 page, then the close
        connect(8080, "127.0.0.32").close()
        c = connect(8080, "127.0.0.32")
        c.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
        c.close()
        assert reply.startswith(b"HTTP/1.") and b" 503 " in reply.split(b"\r\n")[0]

        # SOCKS port: nothing to say before the client speaks: closed
        connect(1080, "127.0.0.33").close()
        c = connect(1080, "127.0.0.33")
        try:
            assert c.recv(10) == b""
        except ConnectionResetError:
            pass
        c.close()
    finally:
        sp.stop()
    hits = [h for h in sp.events("spampots.limit.hit") if h.limit == "new_sessions_per_s_per_ip"]
    assert {h.src_ip for h in hits} == {"127.0.0.31", "127.0.0.32", "127.0.0.33"}
