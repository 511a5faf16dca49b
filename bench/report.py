#!/usr/bin/env python3
"""Time `spampots report` on synthetic data sets beside a hand-written DuckDB floor query.

    python bench/report.py                       # 10M and 100M emails under /tmp/spampots-bench
    python bench/report.py --sizes 1M,10M --work DIR --threads 2

For each size: synthesise the set once (``spampots synth --format lake --ips 216888``,
reused on later runs), warm the page cache, then time in fresh processes, one run each:

* floor: the fewest queries that give the talk's three tables (no enrichment, no extras),
  written by hand against the same Parquet files;
* talk: ``spampots report --talk-only --format json``: the same three tables (and the sessions
  view of the ports), through the whole command: enrichment, views, rendering;
* report: the full ``spampots report --format json`` (every table, enrichment, sampling).

Prints one Markdown row per size (the table in docs/report.md): wall seconds, ratio,
peak RSS of each process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FLOOR = r"""
import duckdb, sys
d = sys.argv[1]
con = duckdb.connect()
if len(sys.argv) > 2:
    con.execute(f"SET threads = {int(sys.argv[2])}")
def t(name):
    return f"read_parquet('{d}/lake/{name}/*/*.parquet', hive_partitioning=true, hive_types={{'day': DATE}})"
out = {}
out["summary"] = con.execute(f"SELECT count(*), sum(n_rcpts), count(DISTINCT day), count(DISTINCT ip_key) "
                             f"FROM {t('smtp_message')}").fetchall()
out["sources"] = con.execute(f"SELECT count(DISTINCT ip_key) FROM {t('session_open')}").fetchall()
out["ports"] = con.execute(f"SELECT listener_port, proxy, count(*) FROM {t('smtp_message')} GROUP BY ALL").fetchall()
out["outbound"] = con.execute(f'''SELECT proxy, CASE WHEN target_port = 25 THEN 1 WHEN command = 'get' THEN 2 ELSE 3 END,
    count(*) FROM {t('proxy_request')} WHERE depth = 0 AND first_in_session GROUP BY ALL''').fetchall()
out["errors"] = con.execute(f'''SELECT split_part(k, '.', 1), count(*) FROM (
    SELECT session_key, arg_min(kind, ts) AS k FROM {t('protocol_error')} WHERE depth = 0 GROUP BY 1) e
    WHERE NOT EXISTS (SELECT 1 FROM {t('proxy_request')} r WHERE r.session_key = e.session_key) GROUP BY 1''').fetchall()
print(out["summary"])
"""


def _size(s: str) -> int:
    s = s.strip().upper().replace("_", "")
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KMG" else s) * mult)


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a command in a fresh process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def _du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*.parquet")) / 2**30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10M,100M")
    ap.add_argument("--work", type=Path, default=Path("/tmp/spampots-bench"))
    ap.add_argument("--threads", type=int, help="DuckDB threads for both (default: all cores)")
    args = ap.parse_args()
    py = sys.executable
    rows = []
    for label in args.sizes.split(","):
        n = _size(label)
        d = args.work / label.strip()
        if not (d / ".done").exists():
            print(f"synthesising {n:,} emails into {d} ...", file=sys.stderr)
            t = time.perf_counter()
            subprocess.run([py, "-m", "spampots.analysis.cli", "synth", "--messages", str(n), "--ips", "216888",
                            "--out", str(d), "-q"], check=True)
            (d / ".done").write_text(f"{time.perf_counter() - t:.1f}\n")
        threads = [str(args.threads)] if args.threads else []
        floor = [py, "-c", FLOOR, str(d), *threads]
        report = [py, "-m", "spampots.analysis.cli", "report", "--data-dir", str(d), "--format", "json",
                  "--out", str(d / "report.json"), "-q"] + (["--threads", *threads] if threads else [])
        _timed(floor)  # warm the page cache
        f_wall, f_rss = _timed(floor)
        t_wall, t_rss = _timed(report + ["--talk-only"])
        r_wall, r_rss = _timed(report)
        timings = json.loads((d / "report.json").read_text())["meta"]["timings"]
        rows.append((label, n, _du(d / "lake"), f_wall, f_rss, t_wall, r_wall, r_rss, timings))
    print("| emails | lake (GiB) | floor (s) | --talk-only (s) | / floor | full report (s) | / floor "
          "| floor RSS (MiB) | report RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, gib, fw, frss, tw, rw, rrss, _t in rows:
        print(f"| {n:,} | {gib:.2f} | {fw:.1f} | {tw:.1f} | {tw / fw:.2f} | {rw:.1f} | {rw / fw:.2f} "
              f"| {frss:,.0f} | {rrss:,.0f} |")
    for label, *_rest, t in rows:
        top = sorted(((v, k) for k, v in t.items() if k != "total"), reverse=True)[:6]
        print(f"\n{label}: slowest steps: " + ", ".join(f"{k} {v:.2f}s" for v, k in top), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
