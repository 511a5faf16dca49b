#!/usr/bin/env python3
"""Time `spampots serve` on a synthetic lake: first paint with every panel, and live latency.

    python bench/serve.py                       # 10M emails under /tmp/spampots-bench/10M
    python bench/serve.py --size 1M --work DIR --loads 5 --live 5

Steps, all on loopback:

1. the lake: ``spampots synth --messages N --ips 216888`` (as bench/report.py, reused);
2. baselines, in the same run: ``spampots report --format json`` and ``spampots policy port25
   --format json`` on that lake, the same metric SQL the dashboard runs when it starts (and
   on each refresh);
3. ``spampots serve``: seconds until it listens (at once: the live counters work), until the
   report's tables are served, and until every figure is (Port 25 Management comes last); then
   the first paint: headless chromium (selenium) loads the
   page from a fresh tab, and the page marks the time (performance.now(), from navigation
   start) when every panel has drawn; `--loads` runs, median and worst;
4. live: a real sensor on the same data dir (a copy made of hard links); each round sends one message with smtplib and
   times until the page's "Messages today" counter shows it; `--live` rounds.

Prints one Markdown table (the figures in docs/dashboard.md).
"""

from __future__ import annotations

import argparse
import json
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OPEN_LIMITS, free_port, machine, pick_offset, wait_port  # noqa: E402


def _size(s: str) -> int:
    s = s.strip().upper().replace("_", "")
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KMG" else s) * mult)


def browser():  # noqa: ANN201
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800",
              "--disable-background-networking", "--no-first-run"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def wait_for(cond, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.005)
    raise TimeoutError(what)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="10M")
    ap.add_argument("--work", type=Path, default=Path("/tmp/spampots-bench"))
    ap.add_argument("--loads", type=int, default=5, help="page loads timed (default 5)")
    ap.add_argument("--live", type=int, default=5, help="live rounds timed (default 5)")
    args = ap.parse_args()
    py = sys.executable
    n = _size(args.size)
    d = args.work / args.size.strip()
    if not (d / ".done").exists():
        print(f"synthesising {n:,} emails into {d} ...", file=sys.stderr)
        t = time.perf_counter()
        subprocess.run([py, "-m", "spampots.analysis.cli", "synth", "--messages", str(n), "--ips", "216888",
                        "--out", str(d), "-q"], check=True)
        (d / ".done").write_text(f"{time.perf_counter() - t:.1f}\n")

    with tempfile.TemporaryDirectory(prefix="spampots-bench-serve-") as tmp:
        t = time.perf_counter()
        subprocess.run([py, "-m", "spampots.cli", "report", "--data-dir", str(d), "--format", "json",
                        "--out", f"{tmp}/report.json", "-q"], check=True)
        report_s = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([py, "-m", "spampots.cli", "policy", "port25", "--data-dir", str(d), "--format", "json",
                        "--out", f"{tmp}/port25.json", "-q"], check=True)
        port25_s = time.perf_counter() - t

        # the live rounds' sensor writes into a copy made of hard links (no bytes copied), so
        # the synthetic set stays as it was for the other benchmarks
        data = Path(tmp) / "data"
        subprocess.run(["cp", "-al", str(d), str(data)], check=True)
        offset = pick_offset()
        cfg = Path(tmp) / "sensor.toml"
        cfg.write_text(OPEN_LIMITS)
        sensor = subprocess.Popen([py, "-m", "spampots.cli", "run", "--config", str(cfg), "--data-dir", str(data),
                                   "--port-offset", str(offset), "--address", "127.0.0.1", "--sensor-id", "bench-live", "--user", "",
                                   "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = free_port()
        t = time.perf_counter()
        serve = subprocess.Popen([py, "-m", "spampots.cli", "serve", "--data-dir", str(data), "--port", str(port),
                                  "--refresh", "0", "-q"], stdout=subprocess.DEVNULL)
        drv = None
        try:
            wait_port(port, timeout=600, proc=serve)
            listen_s = time.perf_counter() - t

            def overview() -> dict | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=60) as r:
                        return json.loads(r.read())
                except urllib.error.HTTPError:  # 503 while being computed
                    return None
            wait_for(overview, 1800, "the report's figures")
            report_ready_s = time.perf_counter() - t
            ov = wait_for(lambda: (o := overview()) and o["port25"] is not None and o, 1800, "all figures")
            ready_s = time.perf_counter() - t
            steps = ov["report"]["meta"]["timings"]
            print(f"figures: {ov['seconds']:.1f} s ({ov['timings']}), of which the report's metrics "
                  f"{steps['total']:.1f} s", file=sys.stderr)
            wait_port(25 + offset, timeout=60, proc=sensor)
            drv = browser()
            url = f"http://127.0.0.1:{port}/"
            paints = []
            for i in range(args.loads + 1):  # the first load warms the browser's own caches: not counted
                drv.get("about:blank")
                drv.get(url)
                ms = wait_for(lambda: drv.execute_script("return document.body.dataset.readyMs"), 120, "first paint")
                if i:
                    paints.append(float(ms) / 1000)
                slow = drv.execute_script("return performance.getEntriesByType('resource').concat("
                                          "performance.getEntriesByType('navigation')).map(e => "
                                          "[e.name.replace(location.origin, ''), Math.round(e.duration)])")
                print(f"load {i}: {ms} ms; slowest: {sorted(slow, key=lambda x: -x[1])[:3]}", file=sys.stderr)
            lags = []
            for i in range(args.live):
                def count() -> int:
                    text = drv.execute_script("return document.getElementById('live-messages').textContent")
                    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1
                before = wait_for(lambda: count() >= 0 and str(count()), 30, "live counter")
                with smtplib.SMTP("127.0.0.1", 25 + offset, timeout=30) as s:
                    s.sendmail("a@bench.example", ["b@bench.example"], f"Subject: live {i}\r\n\r\nx\r\n".encode())
                sent = time.perf_counter()  # the 250 is back: the event is on disk
                wait_for(lambda: count() > int(before), 30, "the counter to move")
                lags.append(time.perf_counter() - sent)
                time.sleep(0.3)
        finally:
            if drv is not None:
                drv.quit()
            serve.terminate()
            serve.wait(30)
            sensor.terminate()
            sensor.wait(30)

    lake_gib = sum(f.stat().st_size for f in (d / "lake").rglob("*.parquet")) / 2**30
    print(f"machine: {machine()}")
    print("| emails | lake (GiB) | report (s) | policy port25 (s) | serve listens (s) | report's tables served (s) "
          "| all figures (s) | first paint median (s) | first paint worst (s) | live median (s) | live worst (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {n:,} | {lake_gib:.2f} | {report_s:.1f} | {port25_s:.1f} | {listen_s:.1f} | {report_ready_s:.1f} | {ready_s:.1f} "
          f"| {statistics.median(paints):.2f} | {max(paints):.2f} | {statistics.median(lags):.2f} | {max(lags):.2f} |")
    ok = max(paints) <= 2.0 and max(lags) <= 2.0
    print(("within" if ok else "OUTSIDE") + " the 2 s goals (first paint, live)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
