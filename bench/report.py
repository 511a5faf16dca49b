#!/usr/bin/env python3
"""Time `spampots report` beside a hand-written DuckDB floor, on the same lake, same numbers.

    python bench/report.py --sizes 1M,10M --work DIR          # synthesise (once) and time
    python bench/report.py --sets full=/data/big/lake-full     # data dirs that exist already

For each set, in fresh processes:

* floor: the fewest queries a person would write by hand for the talk's tables (summary counts,
  ports by emails and by sessions, outbound attempts), straight on the lake's Parquet files: no
  enrichment, no views, no rendering. It prints its numbers as JSON.
* talk: ``spampots report --talk-only --format json``, the whole command. Its first run (which
  fills the enrichment cache) is timed apart; then floor and talk alternate, `--runs` times each,
  and the medians are compared.
* report: the full ``spampots report --format json`` (every table; sampled tables say so).

The floor's numbers must equal the report's (emails, recipients, days, IPs, every row of the
ports tables and of the outbound attempts): the bench stops if they differ. AS and country
counts need enrichment, which the floor does not do, so they are not compared.

Prints one Markdown row per set (the table in docs/report.md): median wall and CPU seconds (user +
system: what a busy machine does not change), the ratios to the floor, peak RSS of each process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = r"""
import duckdb, json, os, sys
d, ports = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
con.execute("SET enable_progress_bar_print = false")  # else its bar lands in our JSON on long queries
if len(sys.argv) > 3:
    con.execute(f"SET threads = {int(sys.argv[3])}")
def t(name):
    return f"read_parquet('{d}/lake/{name}/*/*.parquet', hive_partitioning=true, hive_types={{'day': DATE}})"
have = lambda name: os.path.isdir(f"{d}/lake/{name}")
port_proto = "(VALUES " + ", ".join(f"({p}, '{c}')" for p, c in ports.items()) + ") AS pp(port, protocol)"
out = {}
out["ports"] = con.execute(f'''SELECT listener_port, CASE WHEN proxy IN ('socks4', 'socks4a', 'socks5') THEN 'SOCKS'
    WHEN proxy = 'http' THEN 'HTTP' WHEN proxy = '' OR proxy IS NULL THEN 'SMTP' ELSE upper(proxy) END,
    count(*), sum(n_rcpts) FROM {t('smtp_message')} GROUP BY ALL''').fetchall()
out["sessions"] = con.execute(f"SELECT listener_port, count(*) FROM {t('session_open')} GROUP BY 1").fetchall()
days = " UNION ".join(f"SELECT DISTINCT day FROM {t(n)}" for n in
                      ("smtp_message", "session_open", "sensor_start", "sensor_heartbeat") if have(n))
out["days"] = con.execute(f"SELECT count(*) FROM ({days})").fetchone()[0]
out["ips"] = con.execute(f'''WITH m AS (SELECT DISTINCT ip_key FROM {t('smtp_message')}),
    s AS (SELECT DISTINCT ip_key FROM {t('session_open')})
    SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM (SELECT * FROM m UNION SELECT * FROM s))''').fetchone()
out["requests"] = con.execute(f'''SELECT CASE WHEN proxy = 'http' THEN 'HTTP' ELSE 'SOCKS' END,
    CASE WHEN target_port = 25 THEN 'to 25/TCP' WHEN lower(command) = 'get' THEN 'GET' ELSE 'to other ports' END,
    count(*) FROM {t('proxy_request')} WHERE depth = 0 AND first_in_session GROUP BY ALL''').fetchall()
out["errors"] = con.execute(f'''WITH e AS (
    SELECT session_key, arg_min(lower(split_part(kind, '.', 1)), ts) AS k, any_value(listener_port) AS port
    FROM {t('protocol_error')} WHERE depth = 0 GROUP BY 1)
    SELECT c, count(*) FROM (
      SELECT CASE WHEN k IN ('socks', 'socks4', 'socks4a', 'socks5') THEN 'SOCKS' WHEN k = 'http' THEN 'HTTP'
                  ELSE coalesce(pp.protocol, 'OTHER') END AS c
      FROM e LEFT JOIN {port_proto} ON pp.port = e.port
      WHERE NOT EXISTS (SELECT 1 FROM {t('proxy_request')} r WHERE r.session_key = e.session_key))
    WHERE c <> 'SMTP' GROUP BY 1''').fetchall()
print(json.dumps(out))
"""

LABELS = {"to 25/TCP": "Out to 25/TCP", "to other ports": "Out to other ports", "GET": "GET (usually web)"}


def _size(s: str) -> int:
    s = s.strip().upper().replace("_", "")
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KMG" else s) * mult)


def _timed(cmd: list[str], out: Path | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of a command in a fresh process; stdout to `out`.

    CPU seconds (user + system, all threads) say the same on a busy machine as on an idle one,
    where wall seconds do not: the ratio to the floor is given in both."""
    t = time.perf_counter()
    with open(out or os.devnull, "w") as f:
        p = subprocess.Popen(cmd, stdout=f)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd[:6])} ...")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def _du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*.parquet")) / 2**30


def same_numbers(floor: dict, report: dict) -> list[str]:
    """Where the floor's numbers and the report's talk tables differ (empty: identical)."""
    t = report["tables"]
    bad = []
    s = t["summary"]["rows"][0]
    emails = sum(r[2] for r in floor["ports"])
    rcpts = sum(r[3] for r in floor["ports"])
    for key, want in (("emails", emails), ("rcpts", rcpts), ("days", floor["days"]),
                      ("ips_mail", floor["ips"][0]), ("ips_all", floor["ips"][1])):
        if s[key] != want:
            bad.append(f"summary {key}: report {s[key]}, floor {want}")
    by_port = {(r["port"], r["protocol"]): r["emails"] for r in t["ports"]["rows"]}
    if by_port != {(p, c): n for p, c, n, _ in floor["ports"]}:
        bad.append("ports (by emails) differ")
    if {r["port"]: r["sessions"] for r in t["ports_sessions"]["rows"]} != dict(map(tuple, floor["sessions"])):
        bad.append("ports (by sessions) differ")
    want: dict[str, dict[str, int]] = {}
    for cls, cat, n in floor["requests"]:
        want.setdefault(cls, {})[LABELS[cat]] = n
    for cls, n in floor["errors"]:
        want.setdefault(cls, {})["Errors"] = n
    for cls in ("HTTP", "SOCKS"):
        got = {r["type"]: r["requests"] for r in t[f"outbound_{cls.lower()}"]["rows"] if r["type"] != "Total"}
        if {k: v for k, v in got.items() if v} != want.get(cls, {}):
            bad.append(f"outbound {cls}: report {got}, floor {want.get(cls)}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="", help="synthetic sets to make (once) under --work, e.g. 1M,10M")
    ap.add_argument("--sets", default="", help="existing data dirs, LABEL=DIR,... (their lake is read as is)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/spampots-bench"))
    ap.add_argument("--runs", type=int, default=3, help="timed runs of floor and talk each (median)")
    ap.add_argument("--threads", type=int, help="DuckDB threads for both (default: all cores)")
    ap.add_argument("--memory-limit", help="report's --memory-limit (default: the report's own)")
    ap.add_argument("--no-full", action="store_true", help="skip the full report")
    args = ap.parse_args()
    py = sys.executable
    sets: list[tuple[str, Path]] = []
    for label in filter(None, args.sizes.split(",")):
        n = _size(label)
        d = args.work / label.strip()
        if not (d / ".done").exists():
            print(f"synthesising {n:,} emails into {d} ...", file=sys.stderr)
            subprocess.run([py, "-m", "spampots.analysis.cli", "synth", "--messages", str(n), "--ips", "216888",
                            "--out", str(d), "-q"], check=True)
            (d / ".done").write_text("")
        sets.append((label.strip(), d))
    for item in filter(None, args.sets.split(",")):
        label, _, d = item.partition("=")
        sets.append((label, Path(d)))
    from spampots.analysis import ports

    port_json = json.dumps({p: i.protocol for p, i in ports.load().items()})
    threads = [str(args.threads)] if args.threads else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        for label, d in sets:
            floor_json, talk_json, full_json = (Path(tmp) / f"{label}-{x}.json" for x in ("floor", "talk", "full"))
            floor = [py, "-c", FLOOR, str(d), port_json, *threads]
            report = [py, "-m", "spampots.analysis.cli", "report", "--data-dir", str(d), "--format", "json", "-q"]
            report += ["--threads", *threads] if threads else []
            report += ["--memory-limit", args.memory_limit] if args.memory_limit else []
            _timed(floor)  # warm the page cache
            first, *_ = _timed(report + ["--talk-only", "--out", str(talk_json)])  # fills the enrichment cache
            f_runs, t_runs = [], []
            for _ in range(args.runs):
                f_runs.append(_timed(floor, floor_json))
                t_runs.append(_timed(report + ["--talk-only", "--out", str(talk_json)]))
            bad = same_numbers(json.loads(floor_json.read_text()), json.loads(talk_json.read_text()))
            if bad:
                raise SystemExit(f"{label}: the floor and the report disagree:\n  " + "\n  ".join(bad))
            full = (float("nan"), float("nan"), float("nan"))
            if not args.no_full:
                full = _timed(report + ["--out", str(full_json)])
            emails = json.loads(talk_json.read_text())["tables"]["summary"]["rows"][0]["emails"]
            fw, tw = (statistics.median(r[0] for r in runs) for runs in (f_runs, t_runs))
            fc, tc = (statistics.median(r[2] for r in runs) for runs in (f_runs, t_runs))
            rows.append((emails, _du(d / "lake"), fw, fc, tw, tc, first, max(r[1] for r in f_runs),
                         max(r[1] for r in t_runs), *full))
            print(f"{label}: floor {fw:.2f}s ({fc:.2f} CPU s), talk {tw:.2f}s ({tc:.2f} CPU s): {tw / fw:.2f}x wall, "
                  f"{tc / fc:.2f}x CPU; first talk {first:.2f}s; full {full[0]:.1f}s ({full[2]:.1f} CPU s, "
                  f"{full[1]:,.0f} MiB); same numbers", file=sys.stderr)
    print("| emails | lake (GiB) | floor (s) | --talk-only (s) | / floor | floor CPU (s) | --talk-only CPU (s) "
          "| / floor | first --talk-only (s) | full report (s) | full CPU (s) | floor RSS (MiB) "
          "| --talk-only RSS (MiB) | full RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, gib, fw, fc, tw, tc, first, frss, trss, rw, rrss, rc in rows:
        print(f"| {n:,} | {gib:.2f} | {fw:.2f} | {tw:.2f} | {tw / fw:.2f} | {fc:.2f} | {tc:.2f} | {tc / fc:.2f} "
              f"| {first:.2f} | {rw:.1f} | {rc:.1f} | {frss:,.0f} | {trss:,.0f} | {rrss:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
