"""Hostile memory: the sensor's peak RSS under a combined attack, goal <= 512 MB.

    python bench/hostile_memory.py [--data 100] [--pipeliners 4] [--slow 5000] [--hold 20] [--baseline-src DIR]

All at once, from many 127.x.y.z sources (at most 60 sessions per address):

* ``--data`` sessions send a DATA body just under ``message_size`` and then stall
  without the end marker (a byte every few seconds keeps the idle timer off):
  without a memory budget each holds ~10 MiB;
* ``--pipeliners`` connections pipeline ``HELP`` and never read the replies;
* ``--slow`` connections send one byte every few seconds.

It runs the attack twice in the same run: against a sensor with the default
``memory_budget_mb`` (256), and as the baseline against one whose budget is
out of reach (``memory_budget_mb = 1000000``). For each it prints the peak RSS
(VmHWM), the ``memory_budget`` limit hits and how many DATA bodies were
refused. Loopback only. The test ``tests/test_hostile_memory.py`` runs the same
attack, smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Optional

MIB = 1024 * 1024
PER_SOURCE = 60  # below max_sessions_per_ip (64)
HOLD_EVERY_S = 5.0  # a stalled DATA session sends one more byte this often
SLOW_EVERY_S = 3.0  # a slow connection sends one byte this often
SLOW_SMTP = b"EHLO slow-" + b"a" * 200 + b".example\r\n"
SLOW_HTTP = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX-Slow: " + b"b" * 200 + b"\r\n\r\n"


def config(budget_mb: Optional[float] = None, sessions: int = 10000) -> str:
    """Limits for the attack: max_sessions above what it opens, so no session is evicted or
    refused for a full house, and the per-source limits at their defaults."""
    budget = f"memory_budget_mb = {budget_mb}\n" if budget_mb is not None else ""
    return f"[limits]\nmax_sessions = {sessions}\nnew_sessions_per_s_per_ip = 100000\n{budget}"


def sources(prefix: int, n: int) -> list[str]:
    """Addresses 127.<prefix>.x.y for n sessions, PER_SOURCE sessions each."""
    need = (n + PER_SOURCE - 1) // PER_SOURCE
    addrs = [f"127.{prefix}.{1 + i // 250}.{1 + i % 250}" for i in range(need)]
    return [addrs[i // PER_SOURCE] for i in range(n)]


@dataclass
class Outcome:
    data_sent: int = 0  # DATA sessions that sent their whole body
    data_failed: int = 0
    pipeliners: int = 0  # connected and flooding
    slow: int = 0  # slow connections opened
    slow_failed: int = 0
    replies: list[bytes] = field(default_factory=list)  # what the DATA sessions got at the end, if anything


async def _open(port: int, src: str, timeout: float = 30.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), timeout)


async def _reply(r: asyncio.StreamReader, timeout: float = 30.0) -> bytes:
    """One SMTP reply (all its lines); b"" at EOF."""
    out = b""
    while True:
        line = await asyncio.wait_for(r.readline(), timeout)
        out += line
        if not line or line[3:4] != b"-":
            return out


async def stalled_data(port: int, src: str, size: int, stop: asyncio.Event, out: Outcome) -> None:
    """MAIL, RCPT, DATA, ``size`` bytes of body, then a byte now and then until ``stop``."""
    try:
        r, w = await _open(port, src)
        await _reply(r)  # banner
        for cmd in (b"EHLO attacker.example", b"MAIL FROM:<a@attacker.example>", b"RCPT TO:<v@victim.example>",
                    b"DATA"):
            w.write(cmd + b"\r\n")
            await _reply(r)
        line = b"x" * 998 + b"\r\n"
        chunk = line * 64
        sent = 0
        while sent + len(chunk) <= size:
            w.write(chunk)
            await w.drain()
            sent += len(chunk)
        out.data_sent += 1
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), HOLD_EVERY_S)
            except asyncio.TimeoutError:
                w.write(b"y")
                await w.drain()
        w.transport.abort()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        out.data_failed += 1


async def pipeliner(port: int, src: str, stop: asyncio.Event, out: Outcome) -> None:
    """HELP, HELP, ... and never a read, until ``stop``."""
    try:
        r, w = await _open(port, src)
    except (OSError, asyncio.TimeoutError):
        return
    out.pipeliners += 1
    chunk = b"HELP\r\n" * 10000
    try:
        while not stop.is_set():
            w.write(chunk)
            drain = asyncio.ensure_future(w.drain())
            halt = asyncio.ensure_future(stop.wait())
            await asyncio.wait({drain, halt}, return_when=asyncio.FIRST_COMPLETED)
            halt.cancel()
            if not drain.done():
                drain.cancel()
                break
    except OSError:
        pass
    w.transport.abort()


async def slow_connections(smtp_port: int, http_port: int, n: int, stop: asyncio.Event, out: Outcome,
                           opened: asyncio.Event) -> None:
    """``n`` connections, half SMTP half HTTP, each sending one byte every SLOW_EVERY_S."""
    sem = asyncio.Semaphore(500)
    writers: list[tuple[asyncio.StreamWriter, bytes]] = []
    srcs = sources(30, n)

    async def one(i: int) -> None:
        async with sem:
            try:
                _, w = await _open(http_port if i % 2 else smtp_port, srcs[i])
            except (OSError, asyncio.TimeoutError):
                out.slow_failed += 1
                return
            writers.append((w, SLOW_HTTP if i % 2 else SLOW_SMTP))

    await asyncio.gather(*(one(i) for i in range(n)))
    out.slow = len(writers)
    opened.set()
    ticks = 6  # each tick feeds a sixth of them: each gets a byte every SLOW_EVERY_S
    for tick in itertools.count():
        if stop.is_set():
            break
        for j in range(tick % ticks, len(writers), ticks):
            w, script = writers[j]
            if not w.is_closing():
                pos = (tick // ticks) % len(script)
                w.write(script[pos:pos + 1])
        try:
            await asyncio.wait_for(stop.wait(), SLOW_EVERY_S / ticks)
        except asyncio.TimeoutError:
            pass
    for w, _ in writers:
        w.transport.abort()


async def combined_attack(smtp_port: int, http_port: int, *, data: int = 100, data_size: int = 10 * MIB - 256 * 1024,
                          pipeliners: int = 4, slow: int = 5000, hold: float = 20.0) -> Outcome:
    """Run the three attacks at once; ``hold`` seconds after every DATA body is sent, stop."""
    out = Outcome()
    stop = asyncio.Event()
    opened = asyncio.Event()
    slow_task = asyncio.ensure_future(slow_connections(smtp_port, http_port, slow, stop, out, opened))
    await opened.wait()
    pipes = [asyncio.ensure_future(pipeliner(smtp_port, src, stop, out)) for src in sources(31, pipeliners)]
    datas = [asyncio.ensure_future(stalled_data(smtp_port, src, data_size, stop, out)) for src in sources(32, data)]
    deadline = time.monotonic() + 300
    while out.data_sent + out.data_failed < data and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(hold)
    stop.set()
    await asyncio.gather(slow_task, *pipes, *datas)
    return out


def main() -> None:
    from _common import Sensor, machine, raise_nofile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=int, default=100)
    ap.add_argument("--pipeliners", type=int, default=4)
    ap.add_argument("--slow", type=int, default=5000)
    ap.add_argument("--hold", type=float, default=20.0, help="seconds to hold the attack once all bodies are sent")
    ap.add_argument("--goal-mb", type=float, default=512)
    ap.add_argument("--no-baseline", action="store_true", help="skip the run without a reachable budget")
    ap.add_argument("--baseline-src", help="also attack the build in this src dir (e.g. from git archive), "
                                           "with its own defaults")
    args = ap.parse_args()
    nofile = raise_nofile()
    runs = [("budget 256 MiB (default)", None, None)]
    if not args.no_baseline:
        runs.append(("baseline, no budget", 1e6, None))
    if args.baseline_src:
        runs.append((f"build at {args.baseline_src}", None, args.baseline_src))
    for label, budget, src in runs:
        with Sensor(config(budget), src=src) as s:
            rss0 = s.stats().rss_mib
            t = time.perf_counter()
            out = asyncio.run(combined_attack(s.port(25), s.port(8080), data=args.data, pipeliners=args.pipeliners,
                                              slow=args.slow, hold=args.hold))
            wall = time.perf_counter() - t
            st = s.stats()
            alive = s.proc.poll() is None
            s.stop()
            hits = _budget_hits(s.dir / "var")
        peak_mb = st.hwm_mib * MIB / 1e6
        verdict = "met" if peak_mb <= args.goal_mb and alive else "MISSED"
        print(f"hostile memory, {label}: peak RSS {st.hwm_mib:,.0f} MiB ({peak_mb:,.0f} MB; at start {rss0:.0f} MiB) "
              f"| goal <= {args.goal_mb:.0f} MB: {verdict} | {out.data_sent}/{args.data} stalled DATA bodies of "
              f"{(10 * MIB - 256 * 1024) / MIB:.2f} MiB, {out.pipeliners} pipeliners, {out.slow:,} slow connections "
              f"({out.slow_failed} failed) | memory_budget hits {hits} | {wall:.0f} s | "
              f"{'alive' if alive else 'DIED'} | RLIMIT_NOFILE {nofile:,} | {machine()} | {time.strftime('%Y-%m-%d')}")


def _budget_hits(data_dir) -> int:
    from spampots.events import LimitHit
    from spampots.store.segments import iter_events
    return sum(1 for e in iter_events(data_dir) if isinstance(e, LimitHit) and e.limit == "memory_budget")


if __name__ == "__main__":
    random.seed(0)
    main()
