"""Quick sensor figures: SOCKS5 -> SMTP sessions/s on loopback, and RSS with idle sessions.

    python bench/sensor_quick.py [--seconds 10] [--concurrency 20] [--idle 1000]

Starts a sensor (a free port offset: ``$SPAMPOTS_BENCH_OFFSET`` if set, temp data dir, fsync on), drives it with a lean
asyncio client (raw bytes, so the client costs little), and prints one line of
figures. RSS is the sensor's whole: its process and its workers. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import children, pick_offset, proc_stats  # noqa: E402

BODY = b"Subject: bench\r\nFrom: a@b.example\r\n\r\n" + b"x" * 2900 + b"\r\n"


async def socks5_smtp_session(port: int, n_msgs: int, rcpts: int) -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"\x05\x01\x00")
    await r.readexactly(2)
    host = b"mx.bench.example"
    w.write(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + (25).to_bytes(2, "big"))
    await r.readexactly(10)
    await r.readline()  # banner
    w.write(b"EHLO bench\r\n")
    while not (await r.readline())[3:4] == b" ":
        pass
    for i in range(n_msgs):
        cmds = b"MAIL FROM:<s@b.example>\r\n" + b"".join(b"RCPT TO:<r%d@v.example>\r\n" % j for j in range(rcpts))
        w.write(cmds + b"DATA\r\n")
        for _ in range(rcpts + 2):
            await r.readline()
        w.write(BODY + b"%d\r\n.\r\n" % random.getrandbits(48))
        line = await r.readline()
        assert line.startswith(b"250"), line
    w.write(b"QUIT\r\n")
    await r.readline()
    w.close()
    return n_msgs


async def drive(port: int, seconds: float, concurrency: int, n_msgs: int, rcpts: int) -> tuple[int, int]:
    sessions = msgs = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal sessions, msgs
        while time.perf_counter() < deadline:
            n = await socks5_smtp_session(port, n_msgs, rcpts)
            msgs += n
            sessions += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sessions, msgs


def rss_kb(pid: int) -> int:
    """The sensor's RSS: the process and its workers (the supervisor alone holds no session)."""
    total = 0.0
    for p in [pid] + children(pid):
        try:
            total += proc_stats(p).rss_mib
        except OSError:  # gone meanwhile
            continue
    return int(total * 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--messages", type=int, default=1, help="messages per session")
    ap.add_argument("--rcpts", type=int, default=10)
    ap.add_argument("--idle", type=int, default=1000, help="idle sessions to hold open for the RSS figure")
    ap.add_argument("--tunnel-greeting-delay", type=float, default=0.02,
                    help="[sensor] tunnel_greeting_delay_s for the run (0: CPU-bound figure)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    offset = pick_offset((1080,))  # checked free; $SPAMPOTS_BENCH_OFFSET fixes it
    tmp = tempfile.mkdtemp(prefix="spampots-bench-")
    cfg = Path(tmp) / "c.toml"
    cfg.write_text(f"[sensor]\ntunnel_greeting_delay_s = {args.tunnel_greeting_delay}\n"
                   "[[listener]]\nport = 1080\nkind = \"socks\"\n[limits]\nmax_sessions = 100000\nmax_sessions_per_ip = 100000\n"
                   "new_sessions_per_s_per_ip = 100000\n")
    proc = subprocess.Popen([sys.executable, "-m", "spampots.cli", "run", "--config", str(cfg), "--data-dir",
                             tmp + "/var", "--port-offset", str(offset), "--address", "127.0.0.1",
                             "--log-level", "warning", "--user", ""])
    port = 1080 + offset
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        rss0 = rss_kb(proc.pid)
        sessions, msgs = asyncio.run(drive(port, args.seconds, args.concurrency, args.messages, args.rcpts))
        print(f"socks5->smtp: {sessions / args.seconds:,.0f} sessions/s, {msgs / args.seconds:,.0f} messages/s "
              f"(concurrency {args.concurrency}, {args.messages} msg x {args.rcpts} rcpt x {len(BODY)} B, fsync on, "
              f"tunnel greeting delay {args.tunnel_greeting_delay * 1000:g} ms)")

        async def hold() -> int:
            conns = []
            for i in range(args.idle):
                src = f"127.0.{1 + i // 250}.{1 + i % 250}"
                conns.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)))
            await asyncio.sleep(1.0)
            rss = rss_kb(proc.pid)
            for _, w in conns:
                w.close()
            return rss

        rss_before = rss_kb(proc.pid)
        rss_idle = asyncio.run(hold())
        print(f"idle sessions: {args.idle} held, sensor RSS {rss_idle / 1024:,.1f} MiB "
              f"(before {rss_before / 1024:,.1f} MiB, at start {rss0 / 1024:,.1f} MiB, "
              f"{(rss_idle - rss_before) / max(args.idle, 1):,.1f} KiB per session)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
