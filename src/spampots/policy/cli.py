"""`spampots policy port25`. The lead's spampots/cli.py calls :func:`register`;
``python -m spampots.policy.cli`` runs it standalone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

# Shared with `spampots report`: the same options mean the same thing.
from spampots.analysis.cli import _common, _data_dir, add_selection, output_format


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("policy", help="estimate what an anti-spam policy would have prevented")
    sub = p.add_subparsers(dest="policy", required=True)
    q = sub.add_parser("port25", help="what Port 25 Management at the sensor's ISP would have prevented",
                       description="Prevented: tunnels to 25/TCP and open-relay use of our port 25. Not prevented: "
                                   "tunnels to 587/465/other ports, web GETs, authenticated submission.")
    _common(q)
    add_selection(q)
    q.add_argument("--top", type=int, default=20, metavar="N", help="rows of the per-country/AS tables (default 20)")
    q.add_argument("--asn-db", type=Path, metavar="FILE", help="AS database: MaxMind/IPinfo .mmdb or iptoasn .tsv[.gz]")
    q.add_argument("--locale", choices=("en", "pt"), default="en", help="number style: 1,234.56 or 1.234,56")
    q.add_argument("--no-compact", action="store_true", help="do not compact closed segments first")
    q.set_defaults(func=cmd_port25)


def cmd_port25(args: argparse.Namespace) -> int:
    from spampots.analysis import render
    from spampots.analysis.enrich import Enricher
    from spampots.analysis.lake import Lake

    from . import port25

    data_dir = _data_dir(args)
    if not data_dir.is_dir():
        print(f"spampots policy port25: no data directory {data_dir}", file=sys.stderr)
        return 2
    fmt = output_format(args, "spampots policy port25")
    if fmt is None:
        return 2
    lake = Lake(data_dir)
    if not args.no_compact:
        lake.compact(quiet=args.quiet)
    con = lake.connect(day_from=args.day_from, day_to=args.day_to, sensors=args.sensor)
    try:
        enricher = Enricher(args.asn_db, cache_dir=lake.root / "_cache", quiet=args.quiet)
    except (OSError, ValueError, RuntimeError) as e:  # maxminddb's InvalidDatabaseError is a RuntimeError
        print(f"spampots policy port25: --asn-db {args.asn_db}: {e}", file=sys.stderr)
        return 2
    report = port25.run(con, enricher=enricher, top=args.top)
    filters = []
    if args.day_from or args.day_to:
        filters.append(f"days {args.day_from or '…'} to {args.day_to or '…'}")
    if args.sensor:
        filters.append("sensors " + ", ".join(args.sensor))
    report.meta.update(data_dir=str(data_dir), filters="; ".join(filters))

    if fmt == "terminal":
        if args.out:
            with open(args.out, "w") as f:
                render.terminal(report, locale=args.locale, file=f)
        else:
            render.terminal(report, locale=args.locale)
        return 0
    if fmt == "csv" and args.out and (args.out.is_dir() or not args.out.suffix):
        render.csv_dir(report, args.out)
        return 0
    if fmt == "html":
        text = render.to_html(report, locale=args.locale)
    elif fmt == "markdown":
        text = render.markdown(report, locale=args.locale)
    else:
        text = render.RENDERERS[fmt](report)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="spampots")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
