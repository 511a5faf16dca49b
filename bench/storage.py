"""(h) Stored bytes per raw message byte, measured on a running sensor and after its stop.

    python bench/storage.py [--seconds 20] [--concurrency 100] [--repeat-messages 4000] [--workers N]
                            [--baseline-src DIR]

Leg 1, the talk mix: `spampots loadgen --mix talk` against a sensor with its default
store settings (fsync on, 64 MiB / 1 h segments); every message is unique. While the
sensor still runs, the data dir's bytes (events, message packs, the index with its
WAL) are summed and divided by the raw bytes of the messages the client saw
acknowledged; then again after a clean stop (the open segments compressed). Leg 2,
repeated bodies: smtplib clients send a few distinct messages again and again, so
deduplication does the work. Each leg reads the store back: every acknowledged
message must be there, event and body. One line per leg, with the parts
(segments open and closed, packs, index). ``--baseline-src DIR`` runs both legs again
with the spampots of another source tree (e.g. ``git archive <rev> src | tar -x -C /tmp/old``,
then ``/tmp/old/src``), in the same run, for a side-by-side figure. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import threading
import time
from pathlib import Path
from typing import Optional

from _common import OPEN_LIMITS, Sensor, machine, stored_messages

from spampots.loadgen.mix import load
from spampots.loadgen.run import Options, run


def parts(data_dir: Path) -> dict[str, int]:
    """Bytes on disk by part of the store."""
    out = {"segments_open": 0, "segments_closed": 0, "packs": 0, "index": 0, "other": 0}
    for root, _, files in os.walk(data_dir):
        for name in files:
            try:
                size = os.path.getsize(os.path.join(root, name))
            except OSError:  # compressed and removed meanwhile
                continue
            if name.endswith((".jsonl", ".jsonl.zst.open")):  # open: zstd frames (older versions: plain)
                out["segments_open"] += size
            elif name.endswith(".jsonl.zst"):
                out["segments_closed"] += size
            elif name.endswith(".pack"):
                out["packs"] += size
            elif name.startswith("index.sqlite"):
                out["index"] += size
            else:
                out["other"] += size
    return out


def line(label: str, raw: int, running: dict[str, int], stopped: dict[str, int], acked: int, check: str) -> str:
    def fmt(p: dict[str, int]) -> str:
        total = sum(p.values())
        return (f"{total / 1e6:.1f} MB = {total / raw:.2f}x raw (segments open {p['segments_open'] / 1e6:.1f} + "
                f"closed {p['segments_closed'] / 1e6:.1f}, packs {p['packs'] / 1e6:.1f} = {p['packs'] / raw:.2f}x, "
                f"index {p['index'] / 1e6:.1f} MB = {p['index'] / max(acked, 1):.0f} B/message)")
    return (f"(h) {label}: {acked:,} messages, {raw / 1e6:.1f} MB raw | running sensor: {fmt(running)} | "
            f"after stop: {fmt(stopped)} | {check}")


def check(data_dir: Path, acked: int) -> str:
    events, bodies = stored_messages(data_dir)
    if events >= acked and bodies == events:
        return f"all {acked:,} acknowledged messages in the store ({events:,} events, every body)"
    return f"STORE MISSES: {acked:,} acknowledged, {events:,} events, {bodies:,} bodies"


def talk(seconds: float, concurrency: int, workers: Optional[int], src: Optional[str] = None) -> str:
    with Sensor(OPEN_LIMITS, workers=workers, src=src) as s:
        runner = run(Options(mix=load("talk"), port_offset=s.offset, concurrency=concurrency, duration=seconds,
                             sources=1000, seed=1))
        time.sleep(1.0)  # the last batch's plain events (synced within 50 ms)
        running = parts(s.dir / "var")
        s.stop()
        stopped = parts(s.dir / "var")
        t = runner.tally
        return line("talk mix" + (" (baseline)" if src else ""), t.message_bytes, running, stopped, t.messages,
                    check(s.dir / "var", t.messages))


def repeated(messages: int, distinct: int, workers: Optional[int], src: Optional[str] = None) -> str:
    bodies = [(f"From: <news@shop{i}.example>\r\nTo: <you@example.com>\r\nSubject: offer {i}\r\n\r\n"
               + f"Buy now, offer {i}.\r\n" * (40 + i * 7)).encode() for i in range(distinct)]
    raw = 0
    acked = 0
    lock = threading.Lock()
    with Sensor(OPEN_LIMITS, workers=workers, src=src) as s:
        def client(c: int) -> None:
            nonlocal raw, acked
            sent = 0
            while sent < messages // 8:
                with smtplib.SMTP("127.0.0.1", s.port(25), timeout=30) as smtp:
                    for _ in range(20):
                        if sent >= messages // 8:
                            break
                        body = bodies[(c + sent) % distinct]
                        smtp.sendmail("news@shop.example", ["you@example.com"], body)
                        sent += 1
                        with lock:
                            raw += len(body)
                            acked += 1

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1.0)
        running = parts(s.dir / "var")
        s.stop()
        stopped = parts(s.dir / "var")
        return line(f"repeated bodies ({distinct} distinct)" + (" (baseline)" if src else ""), raw, running, stopped,
                    acked, check(s.dir / "var", acked))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--repeat-messages", type=int, default=4000)
    ap.add_argument("--distinct", type=int, default=20)
    ap.add_argument("--workers", type=int, default=None, help="sensor workers (default: one per core)")
    ap.add_argument("--baseline-src", help="also run the spampots of this source tree (its src/ dir)")
    args = ap.parse_args()
    for src in [None] + ([args.baseline_src] if args.baseline_src else []):
        print(talk(args.seconds, args.concurrency, args.workers, src), flush=True)
        if args.repeat_messages:
            print(repeated(args.repeat_messages, args.distinct, args.workers, src), flush=True)
    print(f"    workers {args.workers or 'default'} | target <= 0.3x raw on a running sensor | {machine()} | "
          f"{time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
