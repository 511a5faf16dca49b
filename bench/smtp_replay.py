"""Where the event-loop thread's time goes for one direct SMTP message, without sockets.

    python bench/smtp_replay.py [--sessions 5000] [--profile]

Replays the bytes of one smtp-source session (HELO, MAIL, 10 RCPT, DATA, a 3 KB body,
QUIT: the reads exactly as smtp-source sends them to a non-pipelining server) through

1. the SMTP handler alone (protocols/, as the listener builds it: sniffer then SmtpServer);
2. the whole session glue (sensor/session.py) on a real sensor host, with the recorder's
   loop side (the writer thread's work is not counted: each commit is taken as done at
   once) and a transport that only counts writes: no syscalls, so the figure is our own
   Python per message on the loop thread;
3. the event encodings alone (what ``Recorder.emit`` does on the loop's thread).

It prints microseconds of the loop thread's CPU per session for each (the best of three
runs), and the function calls per session that cProfile counts in (2): a figure that does
not move with the machine's load. ``--profile`` adds that profile, sorted by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import threading
import time
from pathlib import Path
from typing import Optional

from spampots import config
from spampots.events import encode
from spampots.protocols.dispatch import listener_handler
from spampots.sensor.server import Sensor
from spampots.sensor.session import Session, State
from spampots.store.recorder import Recorder, _settle

FROM = b"From: <foo@bench.example>\r\nTo: <foo@bench.example>\r\nDate: Sun,  6 Dec 2026 08:40:03 +0000 (UTC)\r\n" \
       b"Message-Id: <20261206084003.1@bench.example>\r\nSubject: test\r\n\r\n"
BODY = FROM + b"La de da de da 1.\r\n" * ((3000 - len(FROM)) // 19) + b".\r\n"
SESSION = [b"HELO bench.example\r\n", b"MAIL FROM:<foo@bench.example>\r\n",
           *[f"RCPT TO:<{n or ''}foo@bench.example>\r\n".encode() for n in range(10, -1, -1) if n != 1],
           b"DATA\r\n", BODY, b"QUIT\r\n"]


class _Sock:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def getpeername(self) -> tuple[str, int]:
        return self.peer

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 25)

    def getsockopt(self, *args: int) -> bytes:
        raise OSError("no saved SYN here")


class CountingTransport:
    """The transport calls a session makes, with no socket behind them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, peer: tuple[str, int]) -> None:
        self.loop, self.peer, self.closing, self.protocol, self.written = loop, peer, False, None, 0

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return {"peername": self.peer, "sockname": ("127.0.0.1", 25), "socket": _Sock(self.peer)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def handler_only(n: int) -> float:
    cfg = config.from_dict({})
    sensor = Sensor(cfg)
    rt = next(r for r in sensor._runtimes() if r.kind == "smtp")
    t = time.thread_time()
    for i in range(n):
        ctx = rt.context.for_session("127.0.0.1", 40000 + i % 20000, "127.0.0.1", "Sun, 06 Dec 2026")
        h = listener_handler(ctx, kind="smtp")
        h.start()
        for chunk in SESSION:
            h.receive(chunk)
            if h.delegate is not None:
                h = h.delegate
    return (time.thread_time() - t) / n * 1e6


class LoopSideRecorder(Recorder):
    """The recorder's loop side as it is (emit, encode, the hand-off once per loop pass),
    with no writer thread: the hand-off settles durable messages at once, as a commit that
    took no time would, so only the loop thread's own work is measured."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(Path("/nonexistent"), "replay", fsync=False)
        self._loop, self._loop_tid = loop, threading.get_ident()
        self._thread = threading.current_thread()  # "running"

    def _enqueue(self, items: list) -> bool:
        with self._cond:
            self._pending.clear()
        for it in items:
            if it.fut is not None:
                self._loop.call_soon_threadsafe(_settle, [(it.fut, "0" * 64, None)])  # type: ignore[union-attr]
        return True


async def glue(n: int, prof: Optional[cProfile.Profile]) -> float:
    """Loop-thread CPU per session of the session glue, host, handler and the recorder's
    loop side, minus the cost of the bare loop passes it waits through."""
    cfg = config.from_dict({"limits": {"max_sessions": 100000, "max_sessions_per_ip": 100000,
                                       "new_sessions_per_s_per_ip": 1000000}})
    sensor = Sensor(cfg)
    sensor.loop = loop = asyncio.get_running_loop()
    sensor.listeners = sensor._runtimes()
    rt = next(r for r in sensor.listeners if r.kind == "smtp")
    sensor.recorder = LoopSideRecorder(loop)
    host = sensor._session_host()
    passes = 0
    if prof:
        prof.enable()
    t = time.thread_time()
    for i in range(n):
        s = Session(host, rt)
        tr = CountingTransport(loop, ("127.0.0.1", 40000 + i % 20000))
        tr.protocol = s
        s.connection_made(tr)
        for chunk in SESSION:
            s.data_received(chunk)
            while s.state is State.DURABLE_WAIT:  # the hand-off, then the 250
                await asyncio.sleep(0)
                passes += 1
        await asyncio.sleep(0)  # connection_lost, the hand-off of its events
        passes += 1
    spent = time.thread_time() - t
    if prof:
        prof.disable()
    t = time.thread_time()
    for _ in range(passes):
        await asyncio.sleep(0)
    spent -= time.thread_time() - t
    return spent / n * 1e6


def events_only(n: int) -> float:
    from spampots.events import SessionClose, SessionOpen, SmtpMessage, stamp
    evs = [SessionOpen(listener_addr="127.0.0.1"),
           SmtpMessage(helo="bench.example", mail_from="foo@bench.example",
                       rcpts=[f"{k}foo@bench.example" for k in range(10)], size=3000, sha256="ab" * 32,
                       subject="test", header_from="<foo@bench.example>", message_id="<x@bench.example>"),
           SessionClose(duration_s=0.01, bytes_in=3500, bytes_out=400, reason="client_eof")]
    for e in evs:
        stamp(e, sensor="bench", session="0123456789abcdef", src_ip="127.0.0.1", src_port=40000,
              listener_port=25, protocol="smtp", depth=0)
    t = time.thread_time()
    for _ in range(n):
        for e in evs:
            encode(e)
    return (time.thread_time() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    n = args.sessions
    handler_only(200)  # warm up
    h = min(handler_only(n) for _ in range(3))
    e = min(events_only(n) for _ in range(3))
    g = min(asyncio.run(glue(n, None)) for _ in range(3))
    prof = cProfile.Profile()
    asyncio.run(glue(n, prof))
    stats = pstats.Stats(prof)
    calls = stats.total_calls / n  # type: ignore[attr-defined]
    print(f"per session (one message, {len(SESSION)} reads), loop thread CPU: handler {h:.1f} us, "
          f"session glue + host + recorder hand-off {g:.1f} us (of which the handler {h:.1f} and "
          f"3 event encodings {e:.1f}), no syscalls; {calls:.0f} Python and C function calls")
    if args.profile:
        stats.sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
