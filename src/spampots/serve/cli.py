"""The `spampots serve` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import msgspec

from .. import config


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import add_data_dir_options

    p = subparsers.add_parser(
        "serve", help="the live web dashboard over a data dir (read-only)",
        description="Serve the dashboard: live counters, time series, map, the report's tables, Port 25 "
                    "Management, sensor health and a drill-down to each message. Binds 127.0.0.1 by default; "
                    "any other address needs [serve] token or user and password in the config.")
    add_data_dir_options(p)
    p.add_argument("--address", "--bind", dest="address", metavar="IP",
                   help="listen on this address (default: the config's [serve] address, 127.0.0.1)")
    p.add_argument("--port", type=int, metavar="N", help="listen on this port (default: [serve] port, 8025)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where derived files go when the data dir is not ours to write (as `report`)")
    p.add_argument("--asn-db", type=Path, metavar="FILE", help="AS database, as `spampots report --asn-db`")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows in the top-N tables (default 10)")
    p.add_argument("--refresh", type=float, metavar="S",
                   help="recompute the figures every S seconds (default: [serve] refresh_s, 300; 0 = never)")
    p.add_argument("--no-compact", action="store_true", help="do not compact closed segments into the lake")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..analysis.cli import check_store
    from ..cli import _data_dir
    from .app import Access, make_app
    from .queries import Figures, Settings

    prog = "spampots serve"
    cfg = config.load(Path(args.config) if getattr(args, "config", None) else None)
    serve = cfg.serve
    if args.address is not None or args.port is not None:
        serve = msgspec.structs.replace(serve, address=args.address or serve.address,
                                        port=args.port if args.port is not None else serve.port)
    problems = config.serve_problems(serve)
    if problems:
        for line in problems:
            print(f"{prog}: {line}", file=sys.stderr)
        return 2
    data_dir = _data_dir(args, cfg)
    bad = check_store(data_dir, prog)
    if bad is not None:
        return bad
    settings = Settings(data_dir=data_dir, cache_dir=args.cache_dir, asn_db=args.asn_db, top=args.top,
                        compact=not args.no_compact)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format=f"{prog}: %(message)s")
    figures = Figures(settings, quiet=True)
    refresh = args.refresh if args.refresh is not None else serve.refresh_s
    app = make_app(figures, Access(serve.token, serve.user, serve.password), refresh_s=refresh)
    host = f"[{serve.address}]" if ":" in serve.address else serve.address
    # it listens at once (the live counters work); the figures follow when computed
    logging.getLogger("spampots.serve").info("http://%s:%d/ (computing the figures)", host, serve.port)
    web.run_app(app, host=serve.address, port=serve.port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=5)
    return 0
