"""(d) Concurrent idle sessions held open: goal 50,000 at <= 512 MB total sensor RSS.

    python bench/idle_sessions.py [--sessions 50000] [--workers 4] [--smtp-share 0.5] [--sources 250]

Raises RLIMIT_NOFILE (the children inherit it), starts a sensor with high
connection limits, long timeouts and its metrics endpoint, and opens the sessions
from many 127.x.y.z source addresses (a few hundred sessions each, so ephemeral
ports never run out), in several client processes (each under the descriptor
limit, like each sensor worker). Half go to the SOCKS port (the sensor waits for
the client's first bytes), half to port 25 (the sensor has sent its banner and
holds an SMTP session). The sessions held are the sensor's own count: the sum of
``spampots_sessions_open`` over its workers' metrics endpoints (port + k), not the
kernel's connections (those include connections the sensor never accepted). Then
it sums the RSS (and PSS: pages the forked workers share counted once) of the
supervisor and its workers, checks a new session is still served, and prints one
line. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import socket
import time
import urllib.request
from pathlib import Path

from _common import Sensor, children, loopback_sources, machine, port_free, raise_nofile

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


def _client(n: int, ports: list[int], sources: list[str], conn) -> None:
    """One client process: open n sessions, report how many, hold them until told."""
    install_uvloop()
    socks = asyncio.run(open_idle(n, ports, sources))
    conn.send(len(socks))
    conn.recv()
    for sock in socks:
        sock.close()


def sessions_open(metrics_port: int, workers: int) -> int:
    """The sensor's own count of open sessions: spampots_sessions_open summed over workers."""
    total = 0
    for k in range(workers):
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + k}/metrics", timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("spampots_sessions_open "):
                    total += int(float(line.split()[1]))
    return total


def pss_mib(pid: int) -> float:
    """Proportional set size: each page shared by n processes counts 1/n (fork shares pages)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_ports(n: int) -> int:
    for _ in range(200):
        base = random.randrange(20000, 60000)
        if all(port_free(base + k) for k in range(n)):
            return base
    raise RuntimeError("no free ports for the metrics endpoints")


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
    ap.add_argument("--workers", type=int, default=4, help="sensor worker processes (each holds its share)")
    ap.add_argument("--smtp-share", type=float, default=0.5, help="share of sessions on port 25 (rest on 1080)")
    ap.add_argument("--sources", type=int, default=250)
    ap.add_argument("--goal-mb", type=float, default=512, help="goal for the sensor's total RSS, in MB (10^6)")
    args = ap.parse_args()
    nofile = raise_nofile()
    per_process = nofile - 500  # what one process (a client, or a worker) can hold
    clients_n = max(1, -(-args.sessions // per_process))
    workers = args.workers
    if -(-args.sessions // workers) > per_process:
        workers = -(-args.sessions // per_process)
        print(f"  {args.workers} workers cannot hold {args.sessions:,} under RLIMIT_NOFILE {nofile:,}: {workers} workers")
    mport = free_ports(workers)
    config = CONFIG + f"[metrics]\nenable = true\nport = {mport}\n"
    with Sensor(config, workers=workers) as s:
        rss0 = s.stats().rss_mib
        n_smtp = round(args.sessions * args.smtp_share)
        ports = [s.port(25)] * n_smtp + [s.port(1080)] * (args.sessions - n_smtp)
        random.Random(0).shuffle(ports)
        sources = loopback_sources(args.sources)
        t0 = time.perf_counter()
        ctx = multiprocessing.get_context("fork")
        procs, pipes = [], []
        share = -(-args.sessions // clients_n)
        for c in range(clients_n):
            mine = ports[c * share:(c + 1) * share]
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_client, args=(len(mine), mine, sources[c::clients_n] or sources, child))
            p.start()
            procs.append(p)
            pipes.append(parent)
        opened = sum(pipe.recv() for pipe in pipes)
        t_open = time.perf_counter() - t0
        deadline = time.time() + 60
        held = 0
        while time.time() < deadline:
            held = sessions_open(mport, workers)
            if held >= opened:
                break
            time.sleep(0.5)
        time.sleep(2.0)  # let the sensor settle (events written, buffers freed)
        held = sessions_open(mport, workers)
        st = s.stats()
        pids = [s.pid] + children(s.pid)
        pss = sum(pss_mib(p) for p in pids)
        alive = s.proc.poll() is None and len(pids) == workers + 1
        probe_s = asyncio.run(probe(s.port(25))) if alive else float("nan")
        for pipe in pipes:
            pipe.send("close")
        for p in procs:
            p.join(60)
    mb = st.rss_mib * 1.048576
    per = (st.rss_mib - rss0) * 1024 / max(held, 1)
    verdict = "met" if held >= args.sessions and mb <= args.goal_mb else "MISSED"
    print(f"(d) idle sessions: {held:,} held open by the sensor (its own count; {opened:,} connected: "
          f"{n_smtp:,} SMTP after the banner, {args.sessions - n_smtp:,} SOCKS before any byte; {args.sources} sources; "
          f"{clients_n} client processes; opened in {t_open:.1f}s) | {workers} workers, total RSS "
          f"{st.rss_mib:,.0f} MiB = {mb:,.0f} MB (PSS {pss:,.0f} MiB; at start {rss0:.0f} MiB, {per:.1f} KiB per "
          f"session, peaks summed {st.hwm_mib:,.0f} MiB) | goal {args.sessions:,} at <= {args.goal_mb:.0f} MB: "
          f"{verdict} | a new SMTP session meanwhile: {probe_s * 1000:.0f} ms | RLIMIT_NOFILE {nofile:,} per "
          f"process | {machine()} | {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
