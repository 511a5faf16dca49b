"""(a) Direct SMTP capture: spampots vs Postfix smtp-sink, with aiosmtpd as a second baseline.

    python bench/smtp_capture.py [--messages 20000] [--aiosmtpd-messages 4000] [--no-fsync-run]
                                 [--rounds 3] [--baseline-src DIR] [--no-lean] [--workers N] [--no-single]

All servers are driven by the same client, Postfix's smtp-source, with the
issue's settings: 20 parallel sessions, 10 recipients, 3000-byte messages, one
message per session (so sessions/s = messages/s; at a fixed 20 sessions in
flight the mean session latency is 20 / rate). spampots runs with its
defaults: every message and its event fdatasynced (group commit) before the
250. smtp-sink keeps nothing; aiosmtpd runs its Sink handler on plain asyncio;
"lean" (bench/lean_sink.py) is the leanest Python sink on uvloop, no parsing,
no storage: the floor for one Python process on this machine.

``--baseline-src DIR`` also runs the spampots found in another source tree (for
example ``git archive <rev> src | tar -x -C /tmp/old`` then ``/tmp/old/src``),
in the same rounds, so a change is measured side by side with what it replaces.
``--rounds N`` repeats everything N times in alternating order and prints each
round and the medians. Besides the rate, each spampots line gives the CPU per
message of the sensor's event-loop threads and of its store writer threads (summed
over the workers), the loop threads' context switches per message (and how many were
preemptions), and smtp-source's own CPU per message (the client shares the machine);
smtp-sink, the lean sink and aiosmtpd show their own CPU per message too (the floor that
the kernel's loopback TCP path and the round trips set for any server here).
spampots runs with its default workers (one per core, or ``--workers``) and, for
comparison, as one process (``1 worker``; ``--no-single`` skips it). ``bench/smtp_replay.py``
splits the loop thread's own Python work per message, without sockets.
After each spampots leg the store is read back: every message must be there, as an
event with its body.

Only smtp-source and smtp-sink are run from the postfix package, never the
Postfix daemon. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from _common import (
    OPEN_LIMITS, Sensor, children, ensure_postfix_tools, free_port, machine, smtp_source_cpu, stored_messages,
    thread_cpu,
    wait_port,
)

HERE = Path(__file__).resolve().parent


@dataclass
class Run:
    rate: float  # messages (= sessions) per second
    client_ms: float  # smtp-source CPU ms per message
    loop_ms: float = 0.0  # spampots: event-loop thread CPU ms per message
    writer_ms: float = 0.0  # spampots: store writer (and any other) threads, CPU ms per message
    stored: int = 0  # message events whose body is in the store too
    loop_cs: float = 0.0  # spampots: context switches of the event-loop threads per message,
    loop_preempted: float = 0.0  # and how many of them were involuntary (the thread was runnable)
    server_ms: float = 0.0  # a baseline server (smtp-sink, lean, aiosmtpd): its CPU ms per message


def _driven(cmd: list[str], port: int, messages: int) -> Run:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        before = sum(thread_cpu(proc.pid))
        wall, client = smtp_source_cpu(port, messages)
        server = sum(thread_cpu(proc.pid)) - before
        return Run(messages / wall, 1000 * client / messages, server_ms=1000 * server / messages)
    finally:
        proc.terminate()
        proc.wait()


def run_smtp_sink(messages: int) -> Run:
    _, sink = ensure_postfix_tools()
    port = free_port()
    cmd = [sink] + (["-u", "nobody"] if os.geteuid() == 0 else []) + [f"127.0.0.1:{port}", "1024"]
    return _driven(cmd, port, messages)


def run_lean(messages: int) -> Run:
    port = free_port()
    return _driven([sys.executable, str(HERE / "lean_sink.py"), str(port)], port, messages)


def run_aiosmtpd(messages: int) -> tuple[Optional[Run], str]:
    try:
        import aiosmtpd
    except ImportError:
        return None, "not installed (pip install aiosmtpd)"
    port = free_port()
    cmd = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Sink"]
    return _driven(cmd, port, messages), aiosmtpd.__version__


def loop_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches so far of the event-loop (main) threads of the
    sensor and its workers: a loop waits for the writer or for the network (voluntary), or is
    preempted, mostly by the client it has just woken with a reply (involuntary)."""
    vol = invol = 0
    for p in [pid, *children(pid)]:
        try:
            text = Path(f"/proc/{p}/task/{p}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return vol, invol


def run_spampots(messages: int, fsync: bool = True, src: Optional[str] = None,
                 workers: Optional[int] = None) -> Run:
    config = OPEN_LIMITS + ("" if fsync else "[store]\nfsync = false\n")
    with Sensor(config, src=src, workers=workers) as s:
        cpu0, cs0 = thread_cpu(s.pid), loop_switches(s.pid)
        wall, client = smtp_source_cpu(s.port(25), messages)
        cpu1, cs1 = thread_cpu(s.pid), loop_switches(s.pid)
        s.stop()
        events, stored = stored_messages(s.dir / "var")
    return Run(messages / wall, 1000 * client / messages, 1000 * (cpu1[0] - cpu0[0]) / messages,
               1000 * (cpu1[1] - cpu0[1]) / messages, stored,
               (cs1[0] + cs1[1] - cs0[0] - cs0[1]) / messages, (cs1[1] - cs0[1]) / messages)


def _median(runs: list[Run]) -> Run:
    if len(runs) == 1:
        return runs[0]
    pick = {f: statistics.median(getattr(r, f) for r in runs) for f in Run.__dataclass_fields__}
    pick["stored"] = min(r.stored for r in runs)
    return Run(**pick)


def _ours(label: str, r: Run, sink: Run, messages: int) -> str:
    lost = "" if r.stored == messages else f" [STORE HOLDS {r.stored} OF {messages}]"
    return (f"{label} {r.rate:,.0f} sessions/s = {r.rate:,.0f} msg/s, {r.rate / sink.rate:.2f}x smtp-sink "
            f"(session latency {20_000 / r.rate:.1f} ms; CPU/msg: loop {r.loop_ms:.3f} ms, writer "
            f"{r.writer_ms:.3f} ms, client {r.client_ms:.3f} ms; loop context switches/msg {r.loop_cs:.1f}, "
            f"{r.loop_preempted:.1f} of them preemptions; {r.stored:,} durable{lost})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000, help="messages for smtp-sink, lean and spampots")
    ap.add_argument("--aiosmtpd-messages", type=int, default=4000)
    ap.add_argument("--no-fsync-run", action="store_true", help="skip the extra spampots run with fsync off")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--baseline-src", help="also run the spampots of this source tree (its src/ dir)")
    ap.add_argument("--no-lean", action="store_true", help="skip bench/lean_sink.py")
    ap.add_argument("--workers", type=int, default=None, help="spampots workers (default: one per core)")
    ap.add_argument("--no-single", action="store_true", help="skip the one-process spampots leg")
    args = ap.parse_args()
    n = args.messages

    runs: dict[str, list[Run]] = {}
    aio_version = ""
    for rnd in range(args.rounds):
        legs = [("smtp-sink", lambda: run_smtp_sink(n)), ("spampots", lambda: run_spampots(n, workers=args.workers))]
        if not args.no_single:
            legs.append(("1 worker", lambda: run_spampots(n, workers=1)))
        if args.baseline_src:
            legs.append(("baseline", lambda: run_spampots(n, src=args.baseline_src)))
        if not args.no_lean:
            legs.append(("lean", lambda: run_lean(n)))
        if not args.no_fsync_run:
            legs.append(("fsync-off", lambda: run_spampots(n, fsync=False, workers=args.workers)))
        if rnd % 2:  # alternate the order: the machine drifts within a round
            legs = legs[:1] + legs[1:][::-1]
        for name, fn in legs:
            runs.setdefault(name, []).append(fn())
        if args.aiosmtpd_messages and rnd == 0:
            aio, aio_version = run_aiosmtpd(args.aiosmtpd_messages)
            if aio is not None:
                runs["aiosmtpd"] = [aio]
        if args.rounds > 1:
            r, s = runs["spampots"][-1], runs["smtp-sink"][-1]
            extra = ""
            if args.baseline_src:
                b = runs["baseline"][-1]
                extra = f", baseline {b.rate:,.0f} ({b.rate / s.rate:.2f}x; this build = {r.rate / b.rate:.2f}x it)"
            print(f"  round {rnd + 1}: smtp-sink {s.rate:,.0f} msg/s, spampots {r.rate:,.0f} "
                  f"({r.rate / s.rate:.2f}x){extra}", flush=True)

    med = {k: _median(v) for k, v in runs.items()}
    sink = med["smtp-sink"]
    parts = [f"smtp-sink {sink.rate:,.0f} msg/s (CPU/msg: smtp-sink {sink.server_ms:.3f} ms, client "
             f"{sink.client_ms:.3f} ms)",
             _ours(f"spampots ({args.workers or 'default'} workers)", med["spampots"], sink, n) + " | ratio "
             f"{med['spampots'].rate / sink.rate:.2f}x (goal >= 1.0x)"]
    if "1 worker" in med:
        one = med["1 worker"]
        parts.append(_ours("spampots as one process", one, sink, n)
                     + f"; the workers = {med['spampots'].rate / one.rate:.2f}x one process")
    if "baseline" in med:
        b = med["baseline"]
        parts.append(_ours(f"baseline ({args.baseline_src})", b, sink, n)
                     + f"; this build = {med['spampots'].rate / b.rate:.2f}x the baseline")
    if "fsync-off" in med:
        f = med["fsync-off"]
        parts.append(f"spampots fsync off {f.rate:,.0f} msg/s ({f.rate / sink.rate:.2f}x, loop {f.loop_ms:.3f} "
                     f"+ writer {f.writer_ms:.3f} ms CPU/msg)")
    if "lean" in med:
        le = med["lean"]
        parts.append(f"lean Python sink {le.rate:,.0f} msg/s ({le.rate / sink.rate:.2f}x, "
                     f"{le.server_ms:.3f} ms CPU/msg)")
    if "aiosmtpd" in med:
        a = med["aiosmtpd"]
        parts.append(f"aiosmtpd {aio_version} {a.rate:,.0f} msg/s ({a.rate / sink.rate:.2f}x smtp-sink, "
                     f"{a.server_ms:.3f} ms CPU/msg; "
                     f"spampots = {med['spampots'].rate / a.rate:.1f}x aiosmtpd)")
    elif aio_version:
        parts.append(f"aiosmtpd {aio_version}")
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    print(f"(a) direct SMTP capture, smtp-source -s 20 -r 10 -l 3000, 1 msg/session{rounds}: "
          + " | ".join(parts) + f" | {machine()} | {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
