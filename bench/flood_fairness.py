"""One source floods, another is served: the victim's latencies with and without the flood.

    python bench/flood_fairness.py [--seconds 4] [--clients 60]

The figures the resilience test used to assert (tests/test_resilience.py now checks only
behaviour: every victim session completes, the flood is held by its per-source limits).
A sensor with ``max_sessions_per_ip = 20`` and ``new_sessions_per_s_per_ip = 20``; the
flooder (127.0.0.2) runs ``--clients`` SOCKS5 connections at once, half of them holding
theirs; the victim (127.0.0.3) runs direct-SMTP and SOCKS5->SMTP sessions one after the
other, 0.2 s apart. Baseline in the same run: the victim alone. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Sensor, machine  # noqa: E402

from spampots.loadgen import clients  # noqa: E402
from spampots.loadgen.clients import Conn  # noqa: E402
from spampots.loadgen.mix import Message, Plan  # noqa: E402

CONFIG = "[limits]\nmax_sessions_per_ip = 20\nnew_sessions_per_s_per_ip = 20\nidle_timeout_s = 3\n"
FLOODER, VICTIM = "127.0.0.2", "127.0.0.3"


async def connect(port: int, src: str, timeout: float = 5.0) -> Conn:
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), timeout)
    return Conn(r, w, timeout)


async def victim(sp: Sensor, until: float) -> list[float]:
    out, i = [], 0
    while time.monotonic() < until:
        port, proto = (25, "smtp") if i % 2 else (1080, "socks5")
        plan = Plan(port, proto, "smtp", target_host="mx1.hotmail.com", target_port=25,
                    messages=[Message(rcpts=3, size=800)], seed=i)
        t = time.monotonic()
        conn = await connect(sp.port(port), VICTIM, 30)
        try:
            res = await clients.run_plan(conn, plan, random.Random(i))
        finally:
            conn.close()
        if res.messages == 1:
            out.append(time.monotonic() - t)
        i += 1
        await asyncio.sleep(0.2)
    return out


async def flood(sp: Sensor, until: float, hold: bool, n: Counter) -> None:
    while time.monotonic() < until:
        try:
            conn = await connect(sp.port(1080), FLOODER)
        except (OSError, asyncio.TimeoutError):
            n["refused"] += 1
            continue
        n["connected"] += 1
        if hold:
            await conn.to_eof(timeout=1.0)
        conn.close()


async def run(sp: Sensor, seconds: float, flooders: int) -> tuple[list[float], Counter]:
    n: Counter = Counter()
    until = time.monotonic() + seconds
    floods = [asyncio.ensure_future(flood(sp, until, i % 2 == 0, n)) for i in range(flooders)]
    await asyncio.sleep(0.3 if flooders else 0)
    lat = await victim(sp, until)
    await asyncio.gather(*floods)
    return lat, n


def line(name: str, lat: list[float], n: Counter, seconds: float) -> str:
    if not lat:
        return f"{name}: no victim session completed"
    q = statistics.quantiles(lat, n=20, method="inclusive") if len(lat) > 1 else lat * 19
    s = (f"{name}: {len(lat)} victim sessions in {seconds:g} s, latency median {statistics.median(lat) * 1000:.0f} ms, "
         f"p95 {q[18] * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")
    if n:
        s += f"; flood: {n['connected']:,} connections ({n['connected'] / seconds:,.0f}/s), {n['refused']:,} refused at connect"
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=60)
    a = ap.parse_args()
    print(machine())
    with Sensor(CONFIG) as sp:
        base = asyncio.run(run(sp, a.seconds, 0))
        flooded = asyncio.run(run(sp, a.seconds, a.clients))
    print(line("baseline (no flood)", *base, a.seconds))
    print(line(f"under a flood of {a.clients} clients", *flooded, a.seconds))


if __name__ == "__main__":
    main()
