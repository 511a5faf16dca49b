"""Compression of event lines per zstd frame size: what an open segment costs on disk.

    python bench/segment_frames.py [--data-dir DIR] [--seconds 10]

An open segment is written as one zstd frame per group commit (docs/store.md). This
bench takes event lines (of DIR's segments, or of a talk-mix run of ``--seconds`` against
a fresh sensor), cuts them into frames of 1, 4, 16 and 64 lines and prints, per frame
size and level, the ratio (line bytes / frame bytes) and the compression CPU per KB of
lines: without a dictionary, with the dictionary shipped in the package, and with one
trained on the first half of these very lines (measured on the second half), so the
shipped dictionary is compared with the best it could be on this traffic. The last
line is one frame for everything, what rotation writes. Loopback only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import zstandard

from spampots.store.catalog import iter_event_lines
from spampots.store.segments import events_dict


def talk_lines(seconds: float) -> list[bytes]:
    from _common import OPEN_LIMITS, Sensor

    from spampots.loadgen.mix import load
    from spampots.loadgen.run import Options, run

    with Sensor(OPEN_LIMITS) as s:
        run(Options(mix=load("talk"), port_offset=s.offset, concurrency=100, duration=seconds, sources=1000, seed=3))
        time.sleep(1.0)
        s.stop()
        return [x + b"\n" for x in iter_event_lines(s.dir / "var")]


def measure(lines: list[bytes], k: int, level: int, d: Optional[zstandard.ZstdCompressionDict]) -> tuple[float, float]:
    frames = [b"".join(lines[i:i + k]) for i in range(0, len(lines), k)]
    c = zstandard.ZstdCompressor(level=level, write_checksum=True, dict_data=d)
    t = time.process_time()
    out = sum(len(c.compress(f)) for f in frames)
    cpu = time.process_time() - t
    raw = sum(map(len, frames))
    return raw / out, cpu * 1e6 / (raw / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, help="read this store's event lines instead of a fresh run")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    lines = [x + b"\n" for x in iter_event_lines(args.data_dir)] if args.data_dir else talk_lines(args.seconds)
    half = len(lines) // 2
    own = zstandard.train_dictionary(16384, lines[:half], level=3)
    test = lines[half:]
    raw = sum(map(len, test))
    print(f"{len(test):,} event lines, {raw / 1e6:.1f} MB, {raw / len(test):.0f} B per line (the second half)")
    for k in (1, 4, 16, 64):
        for level in (1, 3):
            cells = []
            for name, d in (("no dictionary", None), ("shipped", events_dict()), ("own", own)):
                ratio, us = measure(test, k, level, d)
                cells.append(f"{name} {ratio:.1f}x {us:.1f} us/KB")
            print(f"{k:3d} lines/frame ({raw / len(test) * k / 1024:5.1f} KB) level {level} | " + " | ".join(cells))
    one = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(b"".join(test))
    print(f"one frame, level 3, no dictionary (rotation): {raw / len(one):.1f}x")


if __name__ == "__main__":
    main()
