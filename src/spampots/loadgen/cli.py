"""``spampots loadgen``: realistic abuse traffic against a sensor, with the ground truth.

Wire it into the main command line with :func:`register`; ``python -m
spampots.loadgen`` runs it on its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from .. import __version__
from .mix import EXAMPLE_TOML, PRESETS, MixError, load
from .run import Options, Runner, is_loopback, run
from .truth import compare, from_events

DESCRIPTION = """\
Send realistic open-proxy / open-relay abuse to a spampots sensor and print what was sent
(the ground truth: sessions by protocol and outcome, messages, recipients, distinct sources).
SOCKS4/4a/5 (with and without auth), HTTP CONNECT and absolute GET, direct SMTP, full SMTP
sessions through the tunnels, slow-loris and garbage. Loopback only unless you own the target.
"""

EPILOG = """\
examples:
  spampots run --port-offset 20000 --address 127.0.0.1 &
  spampots loadgen --port-offset 20000 --count 1000
  spampots loadgen --port-offset 20000 --duration 60 --rate 200 --garbage 0.05 --json truth.json
  spampots loadgen --port-offset 20000 --count 500 --verify ./var     # compare with the sensor's events
  spampots loadgen --example-mix > mine.toml && spampots loadgen --mix mine.toml --count 100
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to send")
    g.add_argument("--mix", default="talk", metavar="NAME|FILE",
                   help=f"a preset ({', '.join(PRESETS)}) or a TOML mix file (default: talk)")
    g.add_argument("--list-mixes", action="store_true", help="list the presets and exit")
    g.add_argument("--example-mix", action="store_true", help="print a commented TOML mix and exit")
    g.add_argument("--slowloris", type=float, default=None, metavar="F",
                   help="fraction of sessions that send one byte every --loris-interval s (overrides the mix)")
    g.add_argument("--garbage", type=float, default=None, metavar="F",
                   help="fraction of sessions sending random bytes, truncated messages or junk in tunnels")
    g.add_argument("--loris-interval", type=float, default=5.0, metavar="S", help="slow-loris byte interval (5)")
    g.add_argument("--seed", type=int, default=None, help="random seed (same seed, same sessions)")

    g = p.add_argument_group("where")
    g.add_argument("--target", default="127.0.0.1", help="sensor address (default 127.0.0.1)")
    g.add_argument("--port-offset", type=int, default=0, metavar="N",
                   help="the sensor's --port-offset: every talk port + N")
    g.add_argument("--port", action="append", default=[], metavar="TALK=REAL",
                   help="map one talk port to another port, e.g. 1080=11080 (repeatable)")
    g.add_argument("--i-own-this-target", action="store_true",
                   help="allow a target outside 127.0.0.0/8 and ::1 (only a sensor you run yourself)")

    g = p.add_argument_group("how much")
    g.add_argument("--count", type=int, default=None, metavar="N", help="sessions to run (default 100)")
    g.add_argument("--duration", type=float, default=None, metavar="S", help="run for S seconds instead")
    g.add_argument("--concurrency", type=int, default=50, metavar="N", help="sessions at once (50)")
    g.add_argument("--rate", type=float, default=0.0, metavar="R",
                   help="new sessions per second (default: as fast as the concurrency allows)")
    g.add_argument("--timeout", type=float, default=30.0, metavar="S", help="per connect / read (30)")

    g = p.add_argument_group("sources")
    g.add_argument("--sources", type=int, default=1000, metavar="N",
                   help="distinct 127.x.y.z source addresses (loopback IPv4 targets; 0: the kernel's) (1000)")
    g.add_argument("--proxy-protocol", choices=("v1", "v2"), default="",
                   help="start each session with a PROXY header carrying a public address "
                        "(the sensor must trust us: [proxy_protocol] trusted)")
    g.add_argument("--public-sources", type=int, default=1000, metavar="N",
                   help="distinct public addresses in the PROXY headers (1000)")

    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the ground truth as JSON")
    g.add_argument("--verify", type=Path, default=None, metavar="DATA_DIR",
                   help="after the run, compare the ground truth with the sensor's stored events "
                        "(exit 1 if they differ; for runs without slow-loris and garbage)")
    g.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="live progress on stderr (auto: when stderr is a terminal)")
    g.add_argument("--quiet", "-q", action="store_true", help="no table at the end")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``loadgen`` subcommand to the main ``spampots`` parser."""
    p = subparsers.add_parser("loadgen", help="send realistic abuse traffic to a sensor (loopback by default)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_loadgen)
    return p


def _resolve_target(target: str, allowed: bool) -> str:
    if target == "localhost":
        return "127.0.0.1"
    if is_loopback(target):
        return target
    if not allowed:
        raise SystemExit(f"spampots loadgen: {target} is not a loopback address; this tool sends abuse "
                         f"traffic, so it only goes elsewhere with --i-own-this-target")
    try:
        return socket.getaddrinfo(target, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        raise SystemExit(f"spampots loadgen: cannot resolve {target}: {exc}")


def _port_map(items: list[str]) -> dict[int, int]:
    out = {}
    for item in items:
        talk, sep, real = item.partition("=")
        if not sep or not talk.isdigit() or not real.isdigit():
            raise SystemExit(f"spampots loadgen: --port wants TALK=REAL, not {item!r}")
        out[int(talk)] = int(real)
    return out


def options_from_args(args: argparse.Namespace) -> Options:
    try:
        mix = load(args.mix).with_modes(slowloris=args.slowloris, garbage=args.garbage)
    except MixError as exc:
        raise SystemExit(f"spampots loadgen: {exc}")
    count = args.count if args.count is not None or args.duration is not None else 100
    for name in ("concurrency", "timeout"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"spampots loadgen: --{name} must be positive")
    return Options(
        mix=mix, target=_resolve_target(args.target, args.i_own_this_target), port_offset=args.port_offset,
        ports=_port_map(args.port), concurrency=args.concurrency, rate=args.rate, count=count,
        duration=args.duration, sources=args.sources, proxy_protocol=args.proxy_protocol,
        public_sources=args.public_sources, timeout=args.timeout, loris_interval=args.loris_interval,
        seed=args.seed,
    )


class _Progress:
    """A live line on stderr (rich)."""

    def __init__(self, total: Optional[int], duration: Optional[float]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.total, self.duration = total, duration
        self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
        self.live.start()

    def __call__(self, r: Runner) -> None:
        from rich.text import Text

        t = r.tally
        el = max(time.time() - r.wall_started, 1e-6) if r.wall_started else 0.0
        goal = f"/{self.total}" if self.total else (f" of {self.duration:.0f}s" if self.duration else "")
        fails = sum(t.failures.values())
        line = (f"loadgen {el:6.1f}s  sessions {t.done}{goal} ({r.in_flight} open, {t.done / el if el else 0:,.0f}/s)"
                f"  messages {t.messages:,}  rcpts {t.recipients:,}  sources {len(t.sources):,}"
                + (f"  [red]failures {fails}[/red]" if fails else ""))
        self.live.update(Text.from_markup(line))

    def stop(self) -> None:
        self.live.stop()


def print_truth(truth: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    sess = truth["sessions"]
    outcomes = sorted({o for v in sess["by_protocol_outcome"].values() for o in v})
    table = Table(title=f"ground truth: mix {truth['mix']}, {truth['duration_s']:.1f}s, "
                        f"{truth['sessions_per_s']:,.1f} sessions/s")
    table.add_column("protocol")
    for o in outcomes:
        table.add_column(o, justify="right")
    table.add_column("total", justify="right")
    for proto, row in sorted(sess["by_protocol_outcome"].items()):
        table.add_row(proto, *(str(row.get(o, 0)) for o in outcomes), str(sum(row.values())))
    table.add_row("[b]all[/b]", *(str(sum(r.get(o, 0) for r in sess["by_protocol_outcome"].values()))
                                  for o in outcomes), f"[b]{sess['total']}[/b]")
    console.print(table)
    lat = truth.get("latency_ms") or {}
    console.print(f"messages {truth['messages']:,} (acknowledged with 250), recipients {truth['recipients']:,}, "
                  f"distinct sources {truth['sources']:,}, ports "
                  + ", ".join(f"{p}:{n}" for p, n in sess["by_port"].items()))
    if lat:
        console.print(f"session latency ms: p50 {lat['p50']}, p90 {lat['p90']}, p99 {lat['p99']}, max {lat['max']}")
    if truth["client_failures"]:
        console.print("[red]client failures[/red]: " + ", ".join(f"{k} {v}" for k, v in
                                                                  truth["client_failures"].items()))


def verify(truth: dict[str, Any], data_dir: Path, port_offset: int, since: str, wait: float = 5.0) -> list[str]:
    """Compare with the sensor's stored events, waiting a little for group commit."""
    from ..store.catalog import iter_events

    deadline = time.time() + wait
    while True:
        observed = from_events(iter_events(data_dir), port_offset=port_offset, since=since)
        diffs = compare(truth, observed)
        if not diffs or time.time() > deadline:
            return diffs
        time.sleep(0.2)


def _iso(t: float) -> str:
    """UTC ISO 8601 with microseconds, comparable with event timestamps."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def proxy_protocol_warning(opts: Options, done: int, failed: int) -> str:
    """With --proxy-protocol, most sessions failing means the sensor took our PROXY headers for
    the client's own bytes: we are not in its [proxy_protocol] trusted. "" when all is well."""
    if not opts.proxy_protocol or not done or failed * 2 < done:
        return ""
    sources = f"our {opts.sources} sources in 127.0.0.0/8" if opts.sources else "our address"
    return (f"spampots loadgen: warning: {failed:,} of {done:,} sessions failed after a PROXY {opts.proxy_protocol} "
            f"header: the sensor probably does not trust {sources}; add them to its [proxy_protocol] trusted "
            f"(e.g. \"127.0.0.0/8\"), or run with --sources 0 from a trusted address")


def cmd_loadgen(args: argparse.Namespace) -> int:
    if args.list_mixes:
        for name, raw in PRESETS.items():
            print(f"{name:12} {raw.get('description', '')}")
        return 0
    if args.example_mix:
        sys.stdout.write(EXAMPLE_TOML)
        return 0
    opts = options_from_args(args)
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    progress = _Progress(opts.count if opts.duration is None else None, opts.duration) if show else None
    since = _iso(time.time())
    try:
        runner = run(opts, progress=progress)
    except KeyboardInterrupt:
        return 130
    finally:
        if progress is not None:
            progress.stop()
    truth = runner.tally.to_dict(
        tool="spampots loadgen", version=__version__, mix=opts.mix.name, seed=runner.seed, target=opts.target,
        port_offset=opts.port_offset, started=_iso(runner.wall_started),
        duration_s=round(runner.elapsed, 3), sessions_per_s=round(runner.tally.done / max(runner.elapsed, 1e-9), 1),
        concurrency=opts.concurrency, rate=opts.rate, proxy_protocol=opts.proxy_protocol or None,
    )
    warning = proxy_protocol_warning(opts, runner.tally.done, sum(runner.tally.failures.values()))
    if warning:
        print(warning, file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(truth, indent=2) + "\n")
    if not args.quiet:
        print_truth(truth)
    if args.verify is not None:
        diffs = verify(truth, args.verify, opts.port_offset, since)
        if diffs:
            print("sensor events differ from the ground truth:\n  " + "\n  ".join(diffs), file=sys.stderr)
            return 1
        print(f"sensor events in {args.verify} match the ground truth", file=sys.stderr)
    return 0


def main(argv: Optional[Iterable[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="spampots loadgen", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(list(argv) if argv is not None else None)
    return cmd_loadgen(args)
