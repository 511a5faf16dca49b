#!/usr/bin/env python3
"""Train a zstd dictionary for open event segments (docs/store.md, *The open segment*).

Run at development time only. The shipped dictionary, src/spampots/data/events-1.zdict (id
0x53500001), never changes once shipped: segments written with it must stay readable. A
better one is shipped as a new file with a new id, and store/segments.py learns to read
both. This makes such a file from event lines of the talk's mix made by `spampots synth`
(or from the event segments of any data dir given with --from):

    python3 scripts/make_events_dict.py events-2.zdict --id 0x53500002
    python3 bench/segment_frames.py   # compare it with the shipped one on this traffic
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import zstandard

from spampots.store.segments import EVENTS_DICT_ID, ReadStats, iter_file_lines, iter_segment_files

SIZE = 16 << 10  # the shipped one's size: larger gained nothing on small frames (measured)


def lines_of(data_dir: Path, limit: int) -> list[bytes]:
    out: list[bytes] = []
    for path in iter_segment_files(data_dir):
        for line in iter_file_lines(path, ReadStats()):
            out.append(line)
            if len(out) >= limit:
                return out
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the dictionary file to write (never the shipped one)")
    ap.add_argument("--id", type=lambda s: int(s, 0), required=True, help="its dictionary id, e.g. 0x53500002")
    ap.add_argument("--from", dest="source", type=Path, help="a data dir whose event segments to train on")
    ap.add_argument("--messages", type=int, default=20000, help="emails for `spampots synth` (default 20,000)")
    ap.add_argument("--lines", type=int, default=200000, help="event lines to train on at most")
    args = ap.parse_args()
    if args.id == EVENTS_DICT_ID or not 0 < args.id < 2**31:
        print(f"--id must be a new id in 1..2^31-1, not the shipped {EVENTS_DICT_ID:#x}", file=sys.stderr)
        return 2
    if args.out.name == "events-1.zdict":
        print("refusing to overwrite the shipped dictionary's name", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source is None:
            source = Path(tmp)
            subprocess.run([sys.executable, "-m", "spampots.cli", "synth", "--format", "store", "--quiet",
                            "--messages", str(args.messages), "--out", str(source)], check=True)
        lines = lines_of(source, args.lines)
    if len(lines) < 1000:
        print(f"only {len(lines)} event lines: too few to train on", file=sys.stderr)
        return 1
    d = zstandard.train_dictionary(SIZE, lines, dict_id=args.id, level=3)
    args.out.write_bytes(d.as_bytes())
    print(f"{args.out}: {len(d.as_bytes()):,} bytes, id {args.id:#x}, trained on {len(lines):,} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
