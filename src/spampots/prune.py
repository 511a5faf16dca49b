"""``spampots prune``: one retention pass by hand ([store] keep_days), e.g. for a collector.

A running sensor prunes its own data dir; this is for data dirs no sensor looks after
(a collector's) and for a look first (``--dry-run``). Run it as the user that owns the
data dir. Message packs are only pruned when no other process writes into the data dir
(a live writer may store a duplicate into an old pack at any moment); segments always.
"""

from __future__ import annotations

import argparse
import sys

from . import config

MAX_PASSES = 10_000  # each pass is bounded; this bounds the command


def cmd_prune(args: argparse.Namespace) -> int:
    from .store.messages import MessageStore
    from .store.retention import PruneStats, live_writers, prune

    cfg = config.load(getattr(args, "config", None))
    data_dir = config.resolve_data_dir(getattr(args, "data_dir", None), cfg)
    if not (data_dir / "events").is_dir() and not (data_dir / "messages").is_dir():
        print(f"spampots prune: {data_dir} holds no spampots data", file=sys.stderr)
        return 2
    keep = cfg.store.keep_days if args.keep_days is None else args.keep_days
    if not keep > 0:  # also NaN
        print("spampots prune: keep_days is 0 (keep forever): set [store] keep_days or give --keep-days",
              file=sys.stderr)
        return 2
    sensor = cfg.sensor_id
    acked = None
    if cfg.transport.nats is not None:  # only what the broker acknowledged
        from .store.catalog import acked_checker
        from .transport.shipper import SHIP_DIR

        acked = acked_checker(data_dir / SHIP_DIR / f"{sensor}.cursor", sensor)
    others = live_writers(data_dir)
    store = None
    if others:
        print(f"spampots prune: message packs left alone while {', '.join(others)} write(s) into "
              f"{data_dir} (a running sensor prunes its own)", file=sys.stderr)
    elif (data_dir / "messages").is_dir():
        store = MessageStore(data_dir, readonly=True) if args.dry_run else MessageStore(data_dir, sensor)
    total = PruneStats()
    try:
        for _ in range(1 if args.dry_run else MAX_PASSES):
            st = prune(data_dir, keep, store=store, acked=acked, dry_run=args.dry_run)
            for f in ("segments", "segment_bytes", "days", "packs", "pack_bytes", "bodies"):
                setattr(total, f, getattr(total, f) + getattr(st, f))
            total.kept_unacked, total.kept_packs, total.more = st.kept_unacked, st.kept_packs, st.more
            total.removed += st.removed
            if not st.more:
                break
    finally:
        if store is not None:
            store.close()
    for name in total.removed if args.verbose or args.dry_run else ():
        print(name)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"spampots prune (keep_days = {keep:g}): {verb} {total.line()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from .cli import add_data_dir_options

    p = subparsers.add_parser(
        "prune", help="delete data older than [store] keep_days (closed segments, whole message packs)",
        description="One retention pass over a data dir: closed event segments of days older than "
                    "keep_days, and whole message packs none of whose bodies a kept event names. With "
                    "[transport.nats] configured, only segments the broker acknowledged. A running "
                    "sensor does this by itself every hour.")
    add_data_dir_options(p)  # --data-dir and --config, as every reader of a data dir
    p.add_argument("--keep-days", type=float, default=None, help="override [store] keep_days (days, > 0)")
    p.add_argument("--dry-run", "-n", action="store_true", help="list what would go, delete nothing")
    p.add_argument("--verbose", "-v", action="store_true", help="list every file deleted")
    p.set_defaults(func=cmd_prune)
