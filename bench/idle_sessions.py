"""(d) Concurrent idle sessions held open: goal 50,000 at <= 512 MiB sensor RSS.

    python bench/idle_sessions.py [--sessions 50000] [--smtp-share 0.5] [--sources 250]

Raises RLIMIT_NOFILE (the sensor child inherits it), starts a sensor with high
connection limits and long timeouts, and opens the sessions from many
127.x.y.z source addresses (a few hundred sessions each, so ephemeral ports
never run out). Half go to the SOCKS port (the sensor waits for the client's
first bytes), half to port 25 (the sensor has sent its banner and holds an SMTP
session). Then it measures the sensor's RSS, checks a new session is still
served, and prints one line. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import subprocess
import time

from _common import Sensor, loopback_sources, machine, raise_nofile

from spampots.loadgen import clients
from spampots.loadgen.mix import Message, Plan
from spampots.loadgen.run import install_uvloop

CONFIG = """\
[limits]
max_sessions = 200000
max_sessions_per_ip = 200000
new_sessions_per_s_per_ip = 1000000
idle_timeout_s = 3600
session_lifetime_s = 7200
"""


async def open_idle(n: int, ports: list[int], sources: list[str], parallel: int = 1000) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    sem = asyncio.Semaphore(parallel)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((sources[i % len(sources)], 0))
            try:
                await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", ports[i % len(ports)])), 30)
            except (OSError, asyncio.TimeoutError):
                failures += 1
                s.close()
                return
            socks.append(s)

    await asyncio.gather(*(one(i) for i in range(n)))
    if failures:
        print(f"  {failures} connects failed")
    return socks


def established(ports: list[int]) -> int:
    flt = " or ".join(f"sport = :{p}" for p in ports)
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( {flt} )"], capture_output=True, text=True)
    return len(out.stdout.splitlines())


async def probe(port: int) -> float:
    """One direct SMTP session with a message; its latency in seconds."""
    t = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.254.254.254", 0))
    conn = clients.Conn(r, w, 30)
    plan = Plan(25, "smtp", "smtp", messages=[Message(3, 1000)], seed=1)
    result = await clients.run_plan(conn, plan, random.Random(1))
    conn.close()
    assert result.messages == 1
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=50000)
    ap.add_argument("--smtp-share", type=float, default=0.5, help="share of sessions on port 25 (rest on 1080)")
    ap.add_argument("--sources", type=int, default=250)
    ap.add_argument("--goal-mib", type=float, default=512)
    args = ap.parse_args()
    nofile = raise_nofile()
    install_uvloop()
    wanted = args.sessions
    capped = ""
    if args.sessions > nofile - 500:  # the sensor and this client each need one descriptor per session
        args.sessions = nofile - 500
        capped = (f" [CAPPED: RLIMIT_NOFILE hard limit is {nofile:,} and cannot be raised here (no "
                  f"CAP_SYS_RESOURCE); {wanted:,} extrapolated at {{per:.1f}} KiB/session: {{extra:,.0f}} MiB]")
    with Sensor(CONFIG) as s:
        rss0 = s.stats().rss_mib
        n_smtp = round(args.sessions * args.smtp_share)
        ports = [s.port(25)] * n_smtp + [s.port(1080)] * (args.sessions - n_smtp)
        random.Random(0).shuffle(ports)
        t0 = time.perf_counter()
        socks = asyncio.run(open_idle(args.sessions, ports, loopback_sources(args.sources)))
        t_open = time.perf_counter() - t0
        deadline = time.time() + 60
        held = 0
        while time.time() < deadline:
            held = established([s.port(25), s.port(1080)])
            if held >= len(socks):
                break
            time.sleep(0.5)
        time.sleep(2.0)  # let the sensor settle (events written, buffers freed)
        st = s.stats()
        alive = s.proc.poll() is None
        probe_s = asyncio.run(probe(s.port(25))) if alive else float("nan")
        for sock in socks:
            sock.close()
    held = min(held, len(socks))  # ss may also count a readiness probe still closing
    per = (st.rss_mib - rss0) * 1024 / max(held, 1)
    extra = rss0 + per * wanted / 1024
    capped = capped.format(per=per, extra=extra)
    if capped:
        verdict = f"not measurable here; extrapolated {'met' if extra <= args.goal_mib else 'MISSED'}"
    else:
        verdict = "met" if held >= args.sessions and st.rss_mib <= args.goal_mib else "MISSED"
    print(f"(d) idle sessions: {held:,} held open ({n_smtp:,} SMTP after the banner, {args.sessions - n_smtp:,} "
          f"SOCKS before any byte; {args.sources} sources; opened in {t_open:.1f}s) | sensor RSS {st.rss_mib:,.0f} MiB "
          f"(at start {rss0:.0f} MiB, {per:.1f} KiB per session, peak {st.hwm_mib:,.0f} MiB) | goal "
          f"{wanted:,} at <= {args.goal_mib:.0f} MiB: {verdict}{capped} | a new SMTP session meanwhile: "
          f"{probe_s * 1000:.0f} ms | RLIMIT_NOFILE {nofile:,} | {machine()} | {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
