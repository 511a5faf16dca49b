"""(a) Direct SMTP capture: spampots vs Postfix smtp-sink, with aiosmtpd as a second baseline.

    python bench/smtp_capture.py [--messages 20000] [--aiosmtpd-messages 4000] [--no-fsync-run]

All three servers are driven by the same client, Postfix's smtp-source, with the
issue's settings: 20 parallel sessions, 10 recipients, 3000-byte messages, one
message per session (so sessions/s = messages/s). spampots runs with its
defaults: every message and its event fsynced (group commit) before the 250.
smtp-sink keeps nothing; aiosmtpd runs its Sink handler on plain asyncio.
Only smtp-source and smtp-sink are run from the postfix package, never the
Postfix daemon. Prints one line: figures, baselines, ratios. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _common import OPEN_LIMITS, Sensor, ensure_postfix_tools, free_port, machine, proc_stats, smtp_source, wait_port


def run_smtp_sink(messages: int) -> float:
    _, sink = ensure_postfix_tools()
    port = free_port()
    cmd = [sink] + (["-u", "nobody"] if os.geteuid() == 0 else []) + [f"127.0.0.1:{port}", "1024"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        return messages / smtp_source(port, messages)
    finally:
        proc.terminate()
        proc.wait()


def run_aiosmtpd(messages: int) -> tuple[float, str]:
    try:
        import aiosmtpd
    except ImportError:
        return 0.0, "not installed (pip install aiosmtpd)"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
                             "-c", "aiosmtpd.handlers.Sink"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        return messages / smtp_source(port, messages), aiosmtpd.__version__
    finally:
        proc.terminate()
        proc.wait()


def run_spampots(messages: int, fsync: bool = True) -> tuple[float, float, int]:
    """messages/s, sensor CPU seconds per 1000 messages, messages found in the store."""
    from spampots.store.segments import iter_events

    config = OPEN_LIMITS + ("" if fsync else "[store]\nfsync = false\n")
    with Sensor(config) as s:
        cpu0 = proc_stats(s.pid).cpu_s
        rate = messages / smtp_source(s.port(25), messages)
        cpu = proc_stats(s.pid).cpu_s - cpu0
        s.stop()
        stored = sum(1 for e in iter_events(s.dir / "var") if type(e).__name__ == "SmtpMessage")
    return rate, 1000 * cpu / messages, stored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000, help="messages for smtp-sink and spampots")
    ap.add_argument("--aiosmtpd-messages", type=int, default=4000)
    ap.add_argument("--no-fsync-run", action="store_true", help="skip the extra spampots run with fsync off")
    args = ap.parse_args()

    sink = run_smtp_sink(args.messages)
    ours, cpu_per_k, stored = run_spampots(args.messages)
    aio, aio_version = run_aiosmtpd(args.aiosmtpd_messages)
    extra = ""
    if not args.no_fsync_run:
        nofsync, nofsync_cpu, _ = run_spampots(args.messages, fsync=False)
        extra = f" | spampots fsync off {nofsync:,.0f} msg/s ({nofsync / sink:.2f}x, {nofsync_cpu:.2f} CPU s/1k msgs)"
    aio_part = (f"aiosmtpd {aio_version} {aio:,.0f} msg/s ({aio / sink:.2f}x smtp-sink; spampots = {ours / aio:.1f}x aiosmtpd)"
                if aio else f"aiosmtpd {aio_version}")
    lost = "" if stored == args.messages else f" [STORE HOLDS {stored} OF {args.messages}]"
    print(f"(a) direct SMTP capture, smtp-source -s 20 -r 10 -l 3000, 1 msg/session: "
          f"spampots {ours:,.0f} sessions/s = {ours:,.0f} msg/s (fsync on, {stored:,} messages durable{lost}, "
          f"{cpu_per_k:.2f} CPU s/1k msgs) | smtp-sink {sink:,.0f} msg/s | ratio {ours / sink:.2f}x "
          f"(goal >= 1.0x) | {aio_part}{extra} | {machine()} | {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
