"""An attacker costs a bounded amount of memory: backpressure and the memory budget.

* Backpressure: a client that pipelines commands (HELP, NOOP, RCPT past the
  limit, HTTP requests) and never reads the replies, directly or through a
  SOCKS5 or HTTP CONNECT tunnel, must not make the sensor queue replies without
  end; once it reads, it gets every reply, well formed.
* The memory budget: DATA bodies and HTTP header blocks of all sessions share
  ``[limits] memory_budget_mb``. Past it SMTP answers ``452 4.3.1`` and HTTP
  ``503``, each recorded as a ``memory_budget`` limit hit, and every byte of it
  comes back when the sessions end.
* All at once: endless DATA, pipelining without reading and thousands of slow
  connections keep the sensor's RSS at or below 512 MB.
"""

from __future__ import annotations

import asyncio
import re
import resource
import selectors
import socket
import ssl
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest

from conftest import assert_healthy, rss_mib, start_sensor
from spampots import config
from spampots.events import LimitHit
from spampots.protocols.base import Context, Limits
from spampots.protocols.budget import MemoryBudget
from spampots.protocols.http import HttpServer
from spampots.protocols.smtp import SmtpServer

MIB = 1024 * 1024
FAST = "new_sessions_per_s_per_ip = 100000\nmax_sessions_per_ip = 1000\n"


# -- the budget itself, sans-IO ------------------------------------------------------------

def test_smtp_data_past_the_budget_is_452_and_the_budget_comes_back() -> None:
    pool = MemoryBudget(300_000)
    base = Context(limits=Limits(message_size=1_000_000), budget=pool.account())

    def session() -> SmtpServer:
        smtp = SmtpServer(base.for_session("192.0.2.1", 1, "127.0.0.1", ""), greet=False)
        smtp.receive(b"EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
        return smtp

    first, second = session(), session()
    first.receive(b"x" * 200_000 + b"\r\n")  # held, unterminated
    assert 200_000 <= pool.used <= 300_000
    acts = second.receive(b"y" * 200_000 + b"\r\n")
    hits = [a for a in acts if isinstance(a, LimitHit)]
    assert [(h.limit, h.value) for h in hits] == [("memory_budget", 300_000)]
    acts = second.receive(b"more\r\n.\r\n")  # read to the end, kept nothing
    assert b"452 4.3.1 Insufficient system storage\r\n" in b"".join(a for a in acts if isinstance(a, bytes))
    assert not [a for a in acts if type(a).__name__ == "Durable"]
    acts = first.receive(b".\r\n")
    durable = [a for a in acts if type(a).__name__ == "Durable"][0]
    assert durable.body.startswith(b"xxx")
    # the refused body gave its share back; the stored one holds it until the glue has it on disk
    assert pool.used == durable.reserved >= len(durable.body)
    first.ctx.budget.release(durable.reserved)
    assert pool.used == 0
    third = session()
    third.receive(b"z" * 100_000)
    assert pool.used > 0
    third.eof()  # released when the client leaves mid-DATA
    assert pool.used == 0
    fourth = session()
    fourth.receive(b"z" * 100_000)
    fourth.ctx.budget.close()  # and whatever a handler holds when its session ends
    assert pool.used == 0


def test_http_header_block_past_the_budget_is_503() -> None:
    pool = MemoryBudget(100_000)
    base = Context(budget=pool.account())
    slow = HttpServer(base.for_session("192.0.2.1", 1, "127.0.0.1", ""))
    # 1.2 KB of tiny fields: their parsed form costs far more than the bytes, and is charged so
    slow.receive(b"GET http://example.com/ HTTP/1.1\r\n" + b"a:\r\n" * 300)
    assert 40_000 < pool.used < 100_000
    other = HttpServer(base.for_session("192.0.2.2", 1, "127.0.0.1", ""))
    acts = other.receive(b"GET http://example.com/ HTTP/1.1\r\n" + b"X-Filler: 0123456789\r\n" * 300)
    out = b"".join(a for a in acts if isinstance(a, bytes))
    assert out.startswith(b"HTTP/1.") and b" 503 " in out.split(b"\r\n", 1)[0]
    assert [a.limit for a in acts if isinstance(a, LimitHit)] == ["memory_budget"]
    assert other.ctx.budget.held == 0
    acts = slow.receive(b"\r\n")  # the slow one completes and is answered
    assert b" 200 " in b"".join(a for a in acts if isinstance(a, bytes)).split(b"\r\n", 1)[0]
    assert pool.used == 0


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_memory_budget_must_be_finite_and_positive(value: str) -> None:
    cfg = config.from_dict({"limits": {"memory_budget_mb": float(value)}})
    with pytest.raises(config.ConfigError, match="memory_budget_mb"):
        config.validate(cfg)
    config.validate(config.from_dict({"limits": {"memory_budget_mb": 0.5}}))


# -- backpressure against a real sensor --------------------------------------------------

def recv_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def open_smtp(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    recv_until(s, b"\r\n")
    return s


def open_socks5(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x05\x01\x00")
    assert recv_until(s, b"\x05\x00")[:2] == b"\x05\x00"
    host = b"mx1.hotmail.com"
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack(">H", 25))
    reply = b""
    while len(reply) < 10:
        reply += s.recv(10 - len(reply))
    assert reply[1] == 0, reply
    recv_until(s, b"\r\n")  # the far end's banner
    return s


def open_connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"CONNECT mx1.hotmail.com:25 HTTP/1.1\r\nHost: mx1.hotmail.com:25\r\n\r\n")
    head = recv_until(s, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"\r\n" not in head.split(b"\r\n\r\n", 1)[1]:
        recv_until(s, b"\r\n")  # the far end's banner
    return s


def open_starttls(port: int) -> socket.socket:
    s = open_smtp(port)
    s.sendall(b"EHLO a.example\r\n")
    ehlo = recv_until(s, b"250 ")
    while not ehlo.endswith(b"\r\n"):
        ehlo += recv_until(s, b"\r\n")
    assert b"STARTTLS" in ehlo
    s.sendall(b"STARTTLS\r\n")
    assert recv_until(s, b"\r\n").startswith(b"220")
    return ssl._create_unverified_context().wrap_socket(s)


BLOCKED = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def pipeline_without_reading(sock: socket.socket, pid: int, prefix: bytes, unit: bytes,
                             seconds: float) -> tuple[bytes, float]:
    """Send ``prefix`` then ``unit`` over and over (b"": nothing more) for ``seconds``, never reading.
    Returns the bytes still to send (whole units only are ever split) and the peak RSS."""
    sock.setblocking(False)
    chunk = unit * max(1, 65536 // len(unit)) if unit else b""
    pending = memoryview(prefix + chunk)
    peak = 0.0
    deadline = time.monotonic() + seconds
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_WRITE)
    while time.monotonic() < deadline:
        if not pending:  # all sent: wait out the time, still not reading
            time.sleep(0.1)
        elif sel.select(0.1):
            try:
                n = sock.send(pending)
            except BLOCKED:
                n = 0
            pending = pending[n:]
            if not pending and chunk:
                pending = memoryview(chunk)
        peak = max(peak, rss_mib(pid))
    sel.close()
    return bytes(pending), peak


def finish_and_read(sock: socket.socket, rest: bytes, timeout: float = 60.0) -> bytes:
    """Send ``rest`` while reading everything until the sensor closes."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    out = bytearray()
    view = memoryview(rest)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, ev in sel.select(1.0):
            if ev & selectors.EVENT_WRITE and view:
                try:
                    view = view[sock.send(view):]
                except BLOCKED:
                    pass
                if not view:
                    sel.modify(sock, selectors.EVENT_READ)
            while ev & selectors.EVENT_READ:  # a TLS socket may hold more than select sees
                try:
                    data = sock.recv(1 << 20)
                except BLOCKED:
                    break
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    data = b""
                if not data:
                    sel.close()
                    return bytes(out)
                out += data
    sel.close()
    raise AssertionError(f"no end of replies after {timeout}s ({len(out)} bytes read)")


SMTP_REPLY = re.compile(rb"(\d{3}[ -][^\r\n]*\r\n)+\Z")

# (name, how to open, SMTP commands before the flood, the command repeated)
CASES = [
    ("help", open_smtp, b"", b"HELP\r\n"),
    ("noop", open_smtp, b"EHLO a.example\r\n", b"NOOP\r\n"),
    ("rcpt", open_smtp, b"EHLO a.example\r\nMAIL FROM:<a@b.example>\r\n", b"RCPT TO:<victim@c.example>\r\n"),
    ("help-socks5", open_socks5, b"", b"HELP\r\n"),
    ("help-connect", open_connect, b"", b"HELP\r\n"),
    ("help-starttls", open_starttls, b"EHLO a.example\r\n", b"HELP\r\n"),
]


@pytest.fixture(scope="module")
def pressure_sensor(tmp_path_factory):
    # persona sendmail: the longest HELP reply (~200 bytes for 6 sent), the worst amplification
    sp = start_sensor(tmp_path_factory.mktemp("pressure"),
                      config=f'[smtp]\npersona = "sendmail"\n[limits]\n{FAST}recipients = 5\n'
                             "messages_per_session = 1000000\n")  # HTTP closes after that many requests
    yield sp
    sp.stop()


@pytest.mark.parametrize("name,opener,prefix,unit", CASES, ids=[c[0] for c in CASES])
def test_pipelining_without_reading_stops_the_reading(pressure_sensor, name, opener, prefix, unit):
    sp = pressure_sensor
    port = sp.port(1080) if opener is open_socks5 else sp.port(8080) if opener is open_connect else sp.port(25)
    sock = opener(port)
    try:
        base = rss_mib(sp.proc.pid)
        rest, peak = pipeline_without_reading(sock, sp.proc.pid, prefix, unit, seconds=4.0)
        # Without backpressure this grows by tens of MB per second (1.75 GB in 30 s).
        print(f"{name}: sensor RSS {base:.1f} MiB, peak {peak:.1f} MiB while flooded")
        assert peak - base < 16, (name, base, peak)
        # Now it reads: every command gets its reply, each well formed, then QUIT's.
        replies = finish_and_read(sock, rest + b"QUIT\r\n")
    finally:
        sock.close()
    assert SMTP_REPLY.match(replies), replies[-300:]
    lines = replies.split(b"\r\n")
    assert lines[-2].startswith(b"221 "), lines[-3:]
    codes = Counter(line[:3] for line in lines if line[3:4] == b" ")
    if name == "rcpt":
        assert codes[b"250"] == 5 + 1 + 1 and codes[b"452"] > 1000, codes  # 5 recipients, EHLO, MAIL
    else:
        assert codes[b"214"] + codes[b"250"] > 1000, codes
    assert_healthy(sp)


def test_pipelined_messages_without_reading_are_all_stored(pressure_sensor):
    """Each message pauses reading until it is on disk, and undrained replies pause it too:
    the two pauses compose, and every 250 the client finally reads is a stored message."""
    sp = pressure_sensor
    n = 1000
    # 40 HELPs per message: ~8 MB of replies in all, more than the kernel's socket buffers
    # (4 MB at most for the sensor's send buffer, and ours is kept small) can take unread
    unit = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: p\r\n\r\nbody\r\n.\r\n"
    unit += b"HELP\r\n" * 40
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", sp.port(25)))
    client_port = sock.getsockname()[1]
    try:
        recv_until(sock, b"\r\n")
        payload = b"EHLO a.example\r\n" + unit * n
        rest, _ = pipeline_without_reading(sock, sp.proc.pid, payload, b"", seconds=3.0)
        replies = finish_and_read(sock, rest + b"QUIT\r\n", timeout=120)
    finally:
        sock.close()
    assert SMTP_REPLY.match(replies), replies[-300:]
    codes = Counter(line[:3] for line in replies.split(b"\r\n") if line[3:4] == b" ")
    assert codes[b"354"] == n and replies.count(b" Message accepted for delivery\r\n") == n, codes
    opened = [e.session for e in sp.events("spampots.session.open") if e.src_port == client_port]
    stored = [e for e in sp.events("spampots.smtp.message") if e.session == opened[-1]]
    assert len(stored) == n
    assert_healthy(sp)


def test_pipelined_http_requests_without_reading_stop_the_reading(pressure_sensor):
    sp = pressure_sensor
    sock = socket.create_connection(("127.0.0.1", sp.port(8080)), timeout=10)
    request = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nUser-Agent: flood\r\n\r\n"
    try:
        base = rss_mib(sp.proc.pid)
        rest, peak = pipeline_without_reading(sock, sp.proc.pid, b"", request, seconds=4.0)
        print(f"http: sensor RSS {base:.1f} MiB, peak {peak:.1f} MiB while flooded")
        assert peak - base < 16, (base, peak)
        closing = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        replies = finish_and_read(sock, rest + closing)
    finally:
        sock.close()
    assert replies.startswith(b"HTTP/1.1 200 ")
    assert replies.count(b"HTTP/1.1 200 ") > 100
    assert_healthy(sp)


# -- the memory budget against a real sensor ---------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import hostile_memory  # noqa: E402  (the benchmark's attack, run smaller here)


async def send_message(port: int, src: str, size: int, end: bool = True,
                       hold: Optional[asyncio.Event] = None) -> bytes:
    """One SMTP message of ``size`` body bytes; the reply to its end (b"" with ``end=False``:
    the client leaves mid-DATA). ``hold``: wait for it before the end marker."""
    r, w = await hostile_memory._open(port, src)
    try:
        await hostile_memory._reply(r)
        for cmd in (b"EHLO c.example", b"MAIL FROM:<a@c.example>", b"RCPT TO:<v@d.example>", b"DATA"):
            w.write(cmd + b"\r\n")
            await hostile_memory._reply(r)
        line = b"z" * 1022 + b"\r\n"
        for _ in range(size // len(line)):
            w.write(line)
            await w.drain()
        if hold is not None:
            await hold.wait()
        if not end:
            return b""
        w.write(b".\r\n")
        return await hostile_memory._reply(r, timeout=60)
    finally:
        w.transport.abort()


def test_budget_refuses_with_452_and_comes_back_when_sessions_end(tmp_path):
    sp = start_sensor(tmp_path, wait_port=25,
                      config=f"[limits]\n{FAST}memory_budget_mb = 8\nmessage_size = 4194304\n")
    port = sp.port(25)
    try:
        async def scenario() -> tuple[list[bytes], list[bytes]]:
            # 3 bodies of 2.5 MiB held open, and one of 3 MiB: 10.5 MiB wanted, 8 MiB in the budget
            go = asyncio.Event()
            held = [asyncio.ensure_future(send_message(port, "127.40.0.1", 5 * MIB // 2, hold=go)) for _ in range(3)]
            await asyncio.sleep(0.5)
            last = await send_message(port, "127.40.0.1", 3 * MIB)
            go.set()
            first = await asyncio.gather(*held) + [last]
            # two clients leave mid-DATA while holding 3.5 MiB each
            await asyncio.gather(*(send_message(port, "127.40.0.2", 3 * MIB + MIB // 2, end=False) for _ in range(2)))
            await asyncio.sleep(1.0)  # their sessions end
            # every byte came back: two bodies of 3.9 MiB (7.8 of 8 MiB) fit side by side
            second = await asyncio.gather(*(send_message(port, "127.40.0.3", 3900 * 1024) for _ in range(2)))
            return list(first), list(second)

        first, second = asyncio.run(scenario())
        codes = Counter(reply[:9] for reply in first)
        assert set(codes) <= {b"250 2.0.0", b"452 4.3.1"}, first
        assert codes[b"452 4.3.1"] >= 1 and codes[b"250 2.0.0"] >= 1, first
        assert all(reply.startswith(b"250 2.0.0") for reply in second), second
        stored = sp.events("spampots.smtp.message", wait_for=codes[b"250 2.0.0"] + 2)
        assert len(stored) == codes[b"250 2.0.0"] + 2
        assert_healthy(sp)
    finally:
        sp.stop()
    # repeated hits of one source are coalesced (a count per interval), flushed at stop
    hits = [e for e in sp.events("spampots.limit.hit") if e.limit == "memory_budget"]
    assert sum(h.count for h in hits) >= codes[b"452 4.3.1"] and hits[0].value == 8 * MIB, hits


def test_combined_attack_keeps_rss_under_512_mb(tmp_path):
    """100 stalled DATA bodies, 4 pipeliners and 5,000 slow connections at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    slow = min(5000, (hard - 1000) // 2)  # this process and the sensor each hold one descriptor per session
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the sensor inherits it
    try:
        sp = start_sensor(tmp_path, wait_port=25, config=hostile_memory.config())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, slow * 2 + 1000), hard))
    try:
        out = asyncio.run(hostile_memory.combined_attack(sp.port(25), sp.port(8080), data=100, pipeliners=4,
                                                         slow=slow, hold=5.0))
        peak = peak_rss_bytes(sp.proc.pid)
        print(f"combined attack: peak RSS {peak / MIB:.0f} MiB, {out}"[:400])
        assert sp.proc.poll() is None, "the sensor died"
        assert out.data_sent == 100 and out.pipeliners == 4 and out.slow >= slow * 0.95, out
        assert peak <= 512 * 10**6, peak
        # every session's share came back: a body as big as the largest fits again
        reply = asyncio.run(send_message(sp.port(25), "127.40.0.9", 9 * MIB))
        assert reply.startswith(b"250 2.0.0"), reply
        assert_healthy(sp)
    finally:
        sp.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    hits = [e for e in sp.events("spampots.limit.hit") if e.limit == "memory_budget"]
    assert sum(h.count for h in hits) >= 50, hits  # 100 x 9.75 MiB wanted, 256 MiB in the budget


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
