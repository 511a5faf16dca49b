"""(b) SOCKS5 -> SMTP tunnelled capture vs (a) direct SMTP capture, same sensor, same client.

    python bench/socks5_capture.py [--seconds 15] [--concurrency 200] [--workers N] [--baseline-src DIR]

smtp-source cannot speak SOCKS, so both legs are driven by `spampots loadgen`'s
client (raw bytes on uvloop) with smtp-source's settings but more sessions at
once: one message per session, 10 recipients, 3000 bytes, 200 sessions at once
by default. Abusers run many tunnels at once; at 20 the SOCKS5 leg is bound by
the far end's simulated 20 ms connect time, not by the sensor (``--concurrency 20``
shows that). Leg 1: direct SMTP on
25+offset; leg 2: SOCKS5 CONNECT mx:25 on 1080+offset, then the same SMTP. The
ratio is leg 2 / leg 1 (goal >= 0.8x). The far end's simulated connect time
(``[sensor] tunnel_greeting_delay_s``, 20 ms by default) is part of a tunnel's
cost; a second SOCKS5 leg with it at 0 shows the sensor's own cost. Each leg's
sensor CPU share is printed: near 100% the sensor is the bottleneck, well below
it the client or the fsync wait is. ``--baseline-src DIR`` runs the same legs
against the spampots of another source tree too (see bench/smtp_capture.py).
After each leg the store is read back: every message the client saw acknowledged
must be there, event and body, or the line says how many are missing.
Loopback only.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional

from _common import OPEN_LIMITS, Sensor, machine, stored_messages, supports

from spampots.loadgen.mix import load
from spampots.loadgen.run import Options, run


MISSING: list[str] = []  # store check failures, printed with the figures


def leg(mix: str, seconds: float, concurrency: int, config: str = OPEN_LIMITS,
        src: Optional[str] = None, workers: Optional[int] = None) -> tuple[float, float, float, int]:
    """sessions/s, messages/s, sensor CPU share (of one core; all workers), client failures."""
    with Sensor(config, src=src, workers=workers) as s:
        cpu0 = s.stats().cpu_s
        runner = run(Options(mix=load(mix), port_offset=s.offset, concurrency=concurrency, duration=seconds,
                             sources=250, timeout=30, seed=1))
        cpu = (s.stats().cpu_s - cpu0) / runner.elapsed
        s.stop()
        t = runner.tally
        events, bodies = stored_messages(s.dir / "var")
        if events < t.messages or bodies < events:
            MISSING.append(f"{mix}: {t.messages:,} acknowledged, {events:,} message events, {bodies:,} bodies stored")
        return t.done / runner.elapsed, t.messages / runner.elapsed, cpu, sum(t.failures.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--workers", type=int, default=None, help="sensor workers (default: one per core)")
    ap.add_argument("--baseline-src", help="also run the spampots of this source tree (its src/ dir)")
    args = ap.parse_args()
    builds = [("", None)] + ([(f" [baseline {args.baseline_src}]", args.baseline_src)] if args.baseline_src else [])
    for label, src in builds:
        w = args.workers if not src else None
        d_sess, d_msg, d_cpu, d_fail = leg("smtp", args.seconds, args.concurrency, src=src, workers=w)
        s_sess, s_msg, s_cpu, s_fail = leg("socks5-smtp", args.seconds, args.concurrency, src=src, workers=w)
        extra = ""
        if supports("sensor", "tunnel_greeting_delay_s"):
            z_sess, z_msg, z_cpu, _ = leg("socks5-smtp", args.seconds, args.concurrency,
                                          OPEN_LIMITS + "[sensor]\ntunnel_greeting_delay_s = 0\n", src=src,
                                          workers=w)
            extra = (f" | with tunnel_greeting_delay_s = 0: {z_msg:,.0f} msg/s ({z_msg / d_msg:.2f}x, "
                     f"sensor CPU {z_cpu:.0%})")
        fails = f" [client failures: direct {d_fail}, socks5 {s_fail}]" if d_fail or s_fail else ""
        store = (f" | STORE MISSES: {'; '.join(MISSING)}" if MISSING
                 else " | every acknowledged message in the store (event and body)")
        MISSING.clear()
        print(f"(b){label} SOCKS5->SMTP tunnelled capture, loadgen client, {args.concurrency} sessions, 1 msg x "
              f"10 rcpt x 3000 B, fsync on: {s_sess:,.0f} sessions/s = {s_msg:,.0f} msg/s (sensor CPU {s_cpu:.0%}) | "
              f"(a) direct SMTP, same client: {d_msg:,.0f} msg/s (sensor CPU {d_cpu:.0%}) | ratio "
              f"{s_msg / d_msg:.2f}x (goal >= 0.8x){extra}{fails}{store} | workers "
              f"{w or 'default'} | {machine()} | {time.strftime('%Y-%m-%d')}",
              flush=True)


if __name__ == "__main__":
    main()
