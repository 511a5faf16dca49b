#!/usr/bin/env python3
"""Time `spampots synth` beside a baseline revision of it, in the same run.

    python bench/synth.py --sizes 1M,10M --baseline bf05b92      # work under /tmp/spampots-bench-synth

For each size, the baseline (the package as it was at --baseline, exported with `git archive`)
and this tree each write a lake of that many emails (`synth --format lake`), one after the other,
each in a fresh process under /usr/bin/time -v. Printed per run: wall seconds, CPU seconds
(user + system, all processes), the peak RSS of the largest process, the peak summed PSS of the
process tree (sampled every 0.5 s: workers share pages, PSS counts them once), the rows and the
size on disk. On a shared machine the wall time follows the other load; the CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _size(s: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KM]?)", s.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s}")
    return int(float(m.group(1)) * {"": 1, "K": 1_000, "M": 1_000_000}[m.group(2)])


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def run(src: Path, emails: int, out: Path) -> dict:
    """One synth run of `emails` with the package under `src`; its figures."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "spampots.analysis.cli", "synth", "--messages",
           str(emails), "--out", str(out)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_pss(p) for p in _tree(proc.pid)[1:]))
        time.sleep(0.5)
    wall = time.time() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        raise SystemExit(f"synth failed ({src}):\n{err[-3000:]}")

    def field(name: str) -> float:
        return float(re.search(re.escape(name) + r".*?: ([\d.]+)", err).group(1))

    rows = re.search(r"smtp_message ([\d,]+)", err)
    du = subprocess.run(["du", "-sb", str(out)], capture_output=True, text=True).stdout.split()[0]
    return {"wall": wall, "cpu": field("User time (seconds)") + field("System time (seconds)"),
            "rss": field("Maximum resident set size (kbytes)") / 1024, "pss": peak / 2**20,
            "emails": rows.group(1) if rows else "?", "disk": int(du) / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1M,10M", help="comma-separated sizes (K, M suffixes)")
    ap.add_argument("--baseline", default="bf05b92", help="git revision of the baseline synth")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "spampots-bench-synth")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = args.work / f"src-{args.baseline}"
    if not base.exists():
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], capture_output=True,
                             check=True).stdout
        tmp = Path(tempfile.mkdtemp(dir=args.work))
        with tarfile.open(fileobj=__import__("io").BytesIO(tar)) as t:
            t.extractall(tmp, filter="data")
        (tmp / "src").rename(base)
    print(f"| emails | code | wall (s) | CPU (s) | max RSS, one process (MiB) | peak PSS, all (MiB) | disk (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size in (_size(s) for s in args.sizes.split(",")):
        for name, src in ((f"baseline {args.baseline}", base), ("this tree", ROOT / "src")):
            r = run(src, size, args.work / "out")
            print(f"| {size:,} | {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss']:.0f} | {r['pss']:.0f} | "
                  f"{r['disk']:.0f} |", flush=True)
    shutil.rmtree(args.work / "out", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
