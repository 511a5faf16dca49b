"""`spampots ship`, `spampots collect`, `spampots network init|status`.

spampots/cli.py calls :func:`register`; ``python -m spampots.transport.cli``
runs the same subcommands standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tomllib
from pathlib import Path
from typing import Optional

from spampots.cli import main  # the one entry point; `python -m` this module runs it

from .config import NatsSection, load_section

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_HEARTBEAT_INTERVAL_S = 60.0


CONFIG_HELP = ("TOML config file (see `spampots example-config`), as `run` takes it: its [transport.nats] "
               "(or [nats]) table, and its [sensor] data_dir and id")


def _config_option(p: argparse.ArgumentParser) -> None:
    """--config / -c, as `run` takes it. SUPPRESS: given before a network ACTION
    (`spampots network -c FILE status`) or after it, neither default overwrites the other."""
    p.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)


def _nats_options(p: argparse.ArgumentParser) -> None:
    _config_option(p)
    g = p.add_argument_group("NATS connection (overrides the config's [transport.nats])")
    g.add_argument("--server", action="append", default=[], metavar="URL",
                   help="NATS server URL, e.g. nats://127.0.0.1:4222 (repeatable)")
    g.add_argument("--user", help="user name (with --password)")
    g.add_argument("--password", help="password")
    g.add_argument("--creds", help="NATS .creds file (user JWT + nkey seed, decentralised auth)")
    g.add_argument("--nkey", help="nkey seed file (a user seed, 'SU...')")
    g.add_argument("--stream", help="stream name (default SPAMPOTS)")
    g.add_argument("--subject-prefix", help="subject prefix (default spampots)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="stderr detail (default info)")
    from ..cli import add_log_format

    add_log_format(p)


def _data_dir_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=help)


def nats_config(args: argparse.Namespace) -> NatsSection:
    """The section from --config, with the command-line overrides applied and validated."""
    raw: dict = {}
    path = getattr(args, "config", None)
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"{path}: {e}") from None
    table = dict((raw.get("transport") or {}).get("nats") or raw.get("nats") or {})
    for key, val in (("servers", args.server or None), ("user", args.user), ("password", args.password),
                     ("creds_file", args.creds), ("nkey_seed_file", args.nkey), ("stream", args.stream),
                     ("subject_prefix", args.subject_prefix)):
        if val is not None:
            table[key] = val
    return load_section(table, str(path or "command line"))


def _run(coro_fn) -> int:  # type: ignore[no-untyped-def]
    """Run ``coro_fn(stop)`` until it returns or SIGINT/SIGTERM sets ``stop``."""
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass
        return int(await coro_fn(stop) or 0)
    return asyncio.run(main())


def _setup(args: argparse.Namespace) -> Optional[NatsSection]:
    from ..cli import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        return nats_config(args)
    except ValueError as e:
        print(f"spampots: bad NATS configuration: {e}", file=sys.stderr)
        return None


def cmd_ship(args: argparse.Namespace) -> int:
    from .shipper import Shipper

    cfg = _setup(args)
    if cfg is None:
        return 2
    from ..cli import resolve_store

    data_dir, sensor_id = resolve_store(args)

    async def go(stop: asyncio.Event) -> int:
        sh = Shipper(data_dir, sensor_id, cfg)
        task = asyncio.create_task(sh.run(stop))
        if args.until_caught_up:
            while not task.done() and not (sh.stats.caught_up and sh.status().backlog_bytes == 0):
                await asyncio.sleep(0.1)
            stop.set()
        await task
        print(f"shipped {sh.stats.events} events, {sh.stats.bodies} bodies "
              f"({sh.stats.duplicates} duplicates dropped by the broker)", file=sys.stderr)
        return 0

    return _run(go)


def cmd_collect(args: argparse.Namespace) -> int:
    from .collector import Collector

    cfg = _setup(args)
    if cfg is None:
        return 2
    from ..cli import resolve_store

    data_dir = resolve_store(args)[0]

    async def go(stop: asyncio.Event) -> int:
        col = Collector(data_dir, cfg, name=args.name, durable=args.durable)
        endpoint = None
        if args.metrics is not None:
            from ..metrics import CollectorMetrics, MetricsEndpoint, registry_for

            endpoint = MetricsEndpoint(registry_for(CollectorMetrics(col)))
            try:
                await endpoint.bind(asyncio.get_running_loop(), args.metrics_address, args.metrics)
            except OSError as e:
                print(f"spampots collect: metrics endpoint {args.metrics_address}:{args.metrics}: "
                      f"{e.strerror or e}", file=sys.stderr)
                return 2
            await endpoint.start()
        try:
            await col.run(stop)
        except RuntimeError as e:
            print(f"spampots collect: {e}", file=sys.stderr)
            return 2
        finally:
            if endpoint is not None:
                endpoint.close()
        s = col.stats
        print(f"collected {s.events} events, {s.bodies} new bodies, {s.duplicates} duplicates dropped",
              file=sys.stderr)
        return 0

    return _run(go)


def cmd_network_init(args: argparse.Namespace) -> int:
    from .network import StreamSettings, init_network
    from .wire import AuthFailed

    cfg = _setup(args)
    if cfg is None:
        return 2
    st = StreamSettings(
        retention=args.retention, max_age_days=args.max_age_days, max_bytes=args.max_bytes,
        duplicate_window_s=args.duplicate_window_s, replicas=args.replicas, ack_wait_s=args.ack_wait_s,
        max_ack_pending=args.max_ack_pending, durable=args.durable,
    )
    try:
        lines = asyncio.run(init_network(cfg, st))
    except (AuthFailed, ConnectionError) as e:
        print(f"spampots network init: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        print(f"spampots network init: the server refused: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def cmd_network_status(args: argparse.Namespace) -> int:
    from .network import network_status, render_status, status_json

    cfg = _setup(args)
    if cfg is None:
        return 2
    data_dir = getattr(args, "data_dir", None)
    interval = args.heartbeat_interval_s
    if getattr(args, "config", None):  # the central store and the sensors' interval, from the config
        from .. import config as _config
        from ..cli import sensor_section

        try:
            section = sensor_section(args.config)
        except _config.ConfigError as e:
            print(f"spampots: bad configuration: {e}", file=sys.stderr)
            return 2
        if data_dir is None and section.data_dir:
            data_dir = Path(section.data_dir)
        if interval is None:
            interval = section.heartbeat_interval_s
    st = asyncio.run(network_status(cfg, durable=args.durable, data_dir=data_dir, window_h=args.window_h,
                                    heartbeat_interval_s=interval or DEFAULT_HEARTBEAT_INTERVAL_S))
    if args.json:
        sys.stdout.buffer.write(status_json(st) + b"\n")
    else:
        print(render_status(st))
    return 1 if st.problems else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from .collector import DEFAULT_DURABLE

    s = subparsers.add_parser("ship", help="ship a data dir's events and bodies to NATS JetStream",
                              description="Store and forward: publish a local store to JetStream from "
                                          "a durable cursor (the sensor does this itself when its config "
                                          "has [transport.nats]; this runs it as its own process).")
    _nats_options(s)
    _data_dir_option(s, "the sensor's data dir (default: the config's [sensor] data_dir, else "
                        "/var/lib/spampots as root, ./var otherwise)")
    s.add_argument("--sensor-id", default=None,
                   help="the sensor whose segments are shipped (default: the config's [sensor] id, else the "
                        "host name, as `run`)")
    s.add_argument("--until-caught-up", action="store_true",
                   help="exit once everything on disk is acked (default: follow forever)")
    s.set_defaults(func=cmd_ship)

    c = subparsers.add_parser("collect", help="collect every sensor's data from JetStream into a store",
                              description="A durable pull consumer: writes events and bodies into a "
                                          "central store of the sensor's format, acks after fsync. "
                                          "Several collectors may run with the same --durable.")
    _nats_options(c)
    _data_dir_option(c, "the central store (default: the config's [sensor] data_dir, else "
                        "/var/lib/spampots as root, ./var otherwise)")
    c.add_argument("--name", default="collector",
                   help="this collector's name in the data dir (one per process sharing a data dir)")
    c.add_argument("--durable", default=DEFAULT_DURABLE, help="the durable consumer (shared by collectors)")
    c.add_argument("--metrics", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics (lag, pending, totals) on this port")
    c.add_argument("--metrics-address", default="127.0.0.1",
                   help="address of the metrics endpoint (default 127.0.0.1; anything else is reachable "
                        "by others)")
    c.set_defaults(func=cmd_collect)

    n = subparsers.add_parser("network", help="set up and watch the sensor network's JetStream streams",
                              description="Set up (init) and watch (status) the JetStream streams, bucket "
                                          "and consumer that a sensor network shares.")
    _config_option(n)
    nsub = n.add_subparsers(dest="network_command", metavar="ACTION", required=True)
    i = nsub.add_parser("init", help="create or update streams, bucket and consumer (idempotent)",
                        description="Create or update the streams, the bodies bucket and the collectors' "
                                    "durable consumer; safe to run again.")
    _nats_options(i)
    i.add_argument("--retention", choices=("workqueue", "limits"), default="workqueue",
                   help="workqueue: collected messages leave the stream (default)")
    i.add_argument("--max-age-days", type=float, default=30.0, help="drop uncollected data after this (30)")
    i.add_argument("--max-bytes", type=int, default=-1, help="stream size cap in bytes (-1: none)")
    i.add_argument("--duplicate-window-s", type=float, default=120.0,
                   help="seconds the broker drops a re-sent message id as a duplicate (120)")
    i.add_argument("--replicas", type=int, default=1, help="3 on a NATS cluster")
    i.add_argument("--ack-wait-s", type=float, default=60.0,
                   help="seconds before an unacknowledged message is delivered again (60)")
    i.add_argument("--max-ack-pending", type=int, default=20000,
                   help="messages delivered to collectors and not yet acknowledged, at most (20000)")
    i.add_argument("--durable", default=DEFAULT_DURABLE, help="the collectors' durable consumer name")
    i.set_defaults(func=cmd_network_init)
    t = nsub.add_parser("status", help="per sensor: last heartbeat, lag, backlog, availability")
    _nats_options(t)
    _data_dir_option(t, "also read heartbeats from this central store (availability; default: the "
                        "config's [sensor] data_dir, if it sets one)")
    t.add_argument("--durable", default=DEFAULT_DURABLE, help="the collectors' durable consumer name")
    t.add_argument("--window-h", type=float, default=24.0, help="availability window in hours")
    t.add_argument("--heartbeat-interval-s", type=float, default=None,
                   help="the sensors' [sensor] heartbeat_interval_s, to tell a missed heartbeat (default: "
                        f"the config's, else {DEFAULT_HEARTBEAT_INTERVAL_S:g})")
    t.add_argument("--json", action="store_true", help="print the status as one JSON object")
    t.set_defaults(func=cmd_network_status)




if __name__ == "__main__":
    sys.exit(main())
