"""The store writer thread alone: CPU per message, step by step, no network.

    python bench/recorder_writer.py [--messages 6000] [--batch 5,10,20] [--rounds 3]
                                    [--baseline-src DIR] [--no-fsync-run] [--no-steps]

Two parts:

* **steps**: the writer's work for one batch done inline, each step timed with the thread's
  CPU clock: sha256 of the body, zstd compression (with the writer's dictionary once it is
  trained), the dedup lookup, the pack write, the index rows (one transaction per batch),
  ``events.encode``, the segment write and the two fdatasyncs a batch took before the journal
  (pack, then segment), and the journal record with its fdatasync that replaces them.
* **recorder**: a ``Recorder`` driven from an asyncio loop with ``emit_durable`` of 3 KB
  smtp-source-like bodies (unique, 10 recipients), a plain open and close event around
  each, in batches of B messages handed over in one loop pass (each batch awaited before
  the next); the writer thread's CPU per message from /proc. ``--baseline-src DIR`` runs
  the same with the spampots of another source tree, in alternating order, in the same run.

Only files under a temporary directory are written; nothing touches the network.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RCPTS = [f"user{i}@example.com" for i in range(10)]


def body(i: int) -> bytes:
    """An smtp-source-like message: a few headers, a unique id, "La de da" filler to 3000 bytes."""
    head = (f"From: <foo@bench.test>\r\nTo: <foo@bench.test>\r\nDate: Sun, 6 Dec 2026 08:00:00 +0000\r\n"
            f"Message-Id: <{i}.{os.getpid()}@bench.test>\r\n\r\n").encode()
    lines, n = [head], len(head)
    k = 1
    while n < 3000:
        line = b"La de da de da %d.\r\n" % k
        lines.append(line)
        n += len(line)
        k += 1
    return b"".join(lines)[:2998] + b"\r\n"


def event(i: int):
    from spampots.events import SmtpMessage
    return SmtpMessage(session=f"s{i:012x}", src_ip="127.0.0.1", src_port=40000 + i % 20000, listener_port=25,
                       sensor="bench", protocol="smtp", ts="2026-12-06T08:00:00.123456Z", helo="bench.test",
                       mail_from="foo@bench.test", rcpts=list(RCPTS), size=3000, index=1,
                       message_id=f"<{i}@bench.test>", subject=None)


def thread_cpu(ident: int) -> float:
    """CPU seconds of a thread of this process (its ``threading`` ident), nanosecond clock."""
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


# -- part 1: the steps, inline ---------------------------------------------------------------------


def steps(messages: int, batch: int, fsync: bool) -> dict[str, float]:
    """Microseconds of thread CPU per message for each step of the writer's work."""
    import zlib

    from spampots.events import encode
    from spampots.store.messages import HEADER, MAGIC, MessageStore
    from spampots.store.segments import SegmentWriter, fdatasync, write_all

    try:
        from spampots.store.journal import Journal
    except ImportError:  # an older tree: no journal step
        Journal = None  # type: ignore[assignment,misc]

    t = time.thread_time
    acc = dict.fromkeys(("sha256", "compress", "lookup", "pack write", "index", "encode", "segment write",
                         "fdatasync pack", "fdatasync segment", "journal record + fdatasync"), 0.0)
    with tempfile.TemporaryDirectory() as d:
        store = MessageStore(d, "bench")
        seg = SegmentWriter(d, "bench")
        journal = Journal(store.dir, "bench") if Journal is not None else None
        # train the dictionary first, as a running writer has
        with store.batch():
            for i in range(300):
                store.put(body(10**9 + i))
        store.sync()
        bodies = [body(i) for i in range(messages)]
        evs = [event(i) for i in range(messages)]
        for start in range(0, messages, batch):
            rows, lines, records = [], [], []
            for i in range(start, min(messages, start + batch)):
                b = bodies[i]
                t0 = t()
                digest = hashlib.sha256(b).digest()
                sha = digest.hex()
                t1 = t()
                loc = store._locate(sha)
                t2 = t()
                comp = store._cctx.compress(b)
                t3 = t()
                record = HEADER.pack(MAGIC, digest, len(b), len(comp), zlib.crc32(comp)) + comp
                store._ensure_room(len(record))
                off = store._pack_size
                write_all(store._fd, record)
                store._pack_size += len(record)
                records.append(record)
                t4 = t()
                rows.append((sha, store._pack, off, len(b), len(comp)))
                evs[i].sha256 = sha
                lines.append(encode(evs[i]))
                t5 = t()
                acc["sha256"] += t1 - t0
                acc["lookup"] += t2 - t1
                acc["compress"] += t3 - t2
                acc["pack write"] += t4 - t3
                acc["encode"] += t5 - t4
                assert loc is None
            t0 = t()
            if fsync:
                fdatasync(store._fd)
            t1 = t()
            db = store._db
            if hasattr(store, "_packed"):  # the index of binary digests and pack ids
                params = store._packed(rows)
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO bodies VALUES " + ",".join(["(?, ?, ?, ?, ?)"] * len(rows)), params)
            else:  # an older build's (--baseline-src): hex digests and pack names
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            t2 = t()
            seg.write(b"".join(lines))
            t3 = t()
            if fsync:
                seg.sync()
            t4 = t()
            acc["fdatasync pack"] += t1 - t0
            acc["index"] += t2 - t1
            acc["segment write"] += t3 - t2
            acc["fdatasync segment"] += t4 - t3
            if journal is not None and fsync:
                name, blob = str(seg.current), b"".join(lines)
                if not journal.fits(name, blob, records):
                    journal.checkpoint()
                t0 = t()
                journal.append(name, blob, records)
                acc["journal record + fdatasync"] += t() - t0
        seg.close()
        store.close()
    return {k: 1e6 * v / messages for k, v in acc.items()}


# -- part 2: the Recorder, from an asyncio loop ----------------------------------------------------


def recorder_leg(messages: int, batch: int, fsync: bool) -> tuple[float, float, float]:
    """(writer thread CPU us per message, messages per second, messages per commit)."""
    from spampots.events import SessionClose, SessionOpen
    from spampots.store import Recorder

    bodies = [body(i) for i in range(messages)]
    evs = [event(i) for i in range(messages)]

    async def main(d: str) -> tuple[float, float, float]:
        rec = Recorder(d, "bench", fsync=fsync)
        rec.start(asyncio.get_running_loop())
        for i in range(300):  # the dictionary is trained before the measurement
            await rec.emit_durable(event(10**9 + i), body(10**9 + i))
        tid = rec._thread.ident  # type: ignore[union-attr]
        b0, c0, w0 = rec.stats.batches, thread_cpu(tid), time.perf_counter()
        for start in range(0, messages, batch):
            futs = []
            for i in range(start, min(messages, start + batch)):
                rec.emit(SessionOpen(session=evs[i].session, src_ip="127.0.0.1", src_port=40000, listener_port=25))
                futs.append(rec.emit_durable(evs[i], bodies[i]))
                rec.emit(SessionClose(session=evs[i].session, src_ip="127.0.0.1", src_port=40000, listener_port=25))
            await asyncio.gather(*futs)
        c1, w1, b1 = thread_cpu(tid), time.perf_counter(), rec.stats.batches
        await rec.close()
        return 1e6 * (c1 - c0) / messages, messages / (w1 - w0), messages / max(1, b1 - b0)

    with tempfile.TemporaryDirectory() as d:
        return asyncio.run(main(d))


def _child(args: argparse.Namespace) -> None:
    """One leg in this process (the parent sets PYTHONPATH to the tree under test)."""
    if args.child == "recorder":
        cpu, rate, per = recorder_leg(args.messages, args.batch_one, not args.no_fsync)
        print(f"{cpu} {rate} {per}")
    else:
        for k, v in steps(args.messages, args.batch_one, not args.no_fsync).items():
            print(f"{k}\t{v}")


def _run_child(src: str, part: str, messages: int, batch: int, fsync: bool) -> str:
    env = dict(os.environ, PYTHONPATH=src)
    cmd = [sys.executable, __file__, "--child", part, "--messages", str(messages), "--batch-one", str(batch)]
    if not fsync:
        cmd.append("--no-fsync")
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=6000)
    ap.add_argument("--batch", default="5,10,20", help="messages per batch, comma separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-src", help="also measure the Recorder of this source tree (its src/ dir)")
    ap.add_argument("--no-fsync-run", action="store_true", help="skip the legs with fsync off")
    ap.add_argument("--no-steps", action="store_true", help="skip the step-by-step part")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--batch-one", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    here = str(Path(__file__).resolve().parent.parent / "src")
    this = os.environ.get("PYTHONPATH") or here
    batches = [int(b) for b in args.batch.split(",")]
    modes = [True] + ([] if args.no_fsync_run else [False])
    if not args.no_steps:
        for fsync in modes:
            for b in batches:
                got: dict[str, list[float]] = {}
                for _ in range(args.rounds):
                    for line in _run_child(this, "steps", args.messages, b, fsync).splitlines():
                        k, v = line.split("\t")
                        got.setdefault(k, []).append(float(v))
                med = {k: statistics.median(v) for k, v in got.items()}
                total = sum(v for k, v in med.items() if not k.startswith("journal"))
                print(f"steps, batch {b}, fsync {'on' if fsync else 'off'}: {total:.1f} us/msg (before the journal) = "
                      + ", ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
    trees = [("this build", this)] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
    for fsync in modes:
        for b in batches:
            res: dict[str, list[tuple[float, ...]]] = {}
            for rnd in range(args.rounds):
                order = trees if rnd % 2 == 0 else trees[::-1]
                for name, src in order:
                    out = _run_child(src, "recorder", args.messages, b, fsync)
                    res.setdefault(name, []).append(tuple(float(x) for x in out.split()))
            parts = []
            for name, _ in trees:
                cpu = statistics.median(r[0] for r in res[name])
                rate = statistics.median(r[1] for r in res[name])
                per = statistics.median(r[2] for r in res[name])
                parts.append(f"{name}: writer {cpu:.1f} us CPU/msg ({', '.join(f'{r[0]:.0f}' for r in res[name])}), "
                             f"{rate:,.0f} msg/s, {per:.1f} msg/commit")
            print(f"recorder, batch {b}, fsync {'on' if fsync else 'off'}, median of {args.rounds}: "
                  + " | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
