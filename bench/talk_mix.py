"""(c) The talk mix at full speed: session latency p50/p99, sensor CPU and RSS.

    python bench/talk_mix.py [--seconds 20] [--concurrency 100] [--sources 1000]

A sensor with its default configuration (fsync on, the talk's ports, default
limits) takes `spampots loadgen --mix talk` from 1000 loopback sources, as fast
as the concurrency allows: SOCKS4/4a/5 and HTTP CONNECT to 25/TCP with 1-3
messages of 9.16 recipients on average, GETs, other ports, errors and direct
SMTP in the talk's shares. Latency is per session, as the client sees it (connect
to close). One line of figures; the store is read back afterwards (every message the
client saw acknowledged, event and body). Loopback only.
"""

from __future__ import annotations

import argparse
import resource
import time

from _common import Sensor, machine, stored_messages

from spampots.loadgen.mix import load
from spampots.loadgen.run import Options, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--sources", type=int, default=1000)
    args = ap.parse_args()
    with Sensor("") as s:
        st0 = s.stats()
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        runner = run(Options(mix=load("talk"), port_offset=s.offset, concurrency=args.concurrency,
                             duration=args.seconds, sources=args.sources, seed=1))
        st1 = s.stats()
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        s.stop()
        events, bodies = stored_messages(s.dir / "var")
    t, el = runner.tally, runner.elapsed
    lat = t.latency_ms()
    client_cpu = (me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime) / el
    fails = sum(t.failures.values())
    store = (f"all {t.messages:,} acknowledged messages in the store" if events >= t.messages and bodies == events
             else f"STORE MISSES: {t.messages:,} acknowledged, {events:,} events, {bodies:,} bodies")
    print(f"(c) talk mix, {args.concurrency} sessions at once, {args.sources} sources, {el:.0f}s: "
          f"{t.done / el:,.0f} sessions/s, {t.messages / el:,.0f} msg/s, {t.recipients / el:,.0f} rcpt/s | "
          f"session latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.0f} ms | "
          f"sensor CPU {(st1.cpu_s - st0.cpu_s) / el:.0%} of a core, RSS {st1.rss_mib:.0f} MiB "
          f"(start {st0.rss_mib:.0f}, peak {st1.hwm_mib:.0f}) | loadgen CPU {client_cpu:.0%}"
          f"{f' | client failures {dict(t.failures)}' if fails else ''} | {store} | {machine()} | {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
