"""`spampots policy port25` and `spampots notify`. The lead's spampots/cli.py calls :func:`register`;
``python -m spampots.policy.cli`` runs them standalone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

# Shared with `spampots report`: the same options mean the same thing.
from spampots.analysis.cli import (_common, _count, _data_dir, add_selection, check_store, describe_filters,
                                   open_lake, output_format, tell_damage, write_report)


if TYPE_CHECKING:
    import duckdb

    from spampots.analysis.enrich import Enricher


def _positive(s: str) -> int:
    n = _count(s)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


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

    n = subparsers.add_parser(
        "notify", help="one abuse report per network hosting abusing sources (CSV, JSON, text body)",
        description="Group the sources that used the honeypot (proxy requests, emails) by AS or country and "
                    "write, per network, a CSV, a JSON and a plain-text notification from a template, plus "
                    "index.csv/index.json, into --out DIR. Without --out, only the summary is printed.")
    _common(n)
    add_selection(n, output=False)  # here --out is a directory of reports and --format the summary's
    n.add_argument("--format", choices=("terminal", "markdown", "json", "csv"),
                   help="format of the summary printed on stdout: terminal (default), markdown, json, csv")
    n.add_argument("--out", type=Path, metavar="DIR",
                   help="write the reports into DIR (new or empty); without it, only print the summary")
    n.add_argument("--by", choices=("asn", "country"), default="asn",
                   help="group by AS (default; the AS name when --asn-db gives no number) or by country")
    n.add_argument("--asn-db", type=Path, metavar="FILE", help="AS database: MaxMind/IPinfo .mmdb or iptoasn .tsv[.gz]")
    n.add_argument("--min-emails", type=_count, default=1, metavar="N",
                   help="only networks that sent at least N emails (default 1; 0 adds proxy-only networks)")
    n.add_argument("--top", type=_positive, metavar="N", help="only the N networks with most emails (default: all)")
    n.add_argument("--evidence", type=_count, default=5, metavar="N", help="evidence lines per network (default 5)")
    n.add_argument("--body-ips", type=_count, default=50, metavar="N",
                   help="IPs listed in the text body (default 50; the CSV and JSON list all)")
    n.add_argument("--template", type=Path, metavar="FILE",
                   help="the notification template (string.Template $placeholders; default: the packaged one)")
    n.add_argument("--no-compact", action="store_true", help="do not compact closed segments first")
    n.set_defaults(func=cmd_notify)


def _open(args: argparse.Namespace, prog: str) -> Optional[tuple["duckdb.DuckDBPyConnection", "Enricher"]]:
    """(lake connection, enricher) for the selection, or None after saying why not (exit 2)."""
    from spampots.analysis.enrich import Enricher

    lake = open_lake(_data_dir(args), args, prog)
    if lake is None:
        return None
    con = lake.connect(day_from=args.day_from, day_to=args.day_to, sensors=args.sensor)
    tell_damage(lake.damage, prog)
    try:
        enricher = Enricher(args.asn_db, cache_dir=lake.root / "_cache", quiet=args.quiet)
    except (OSError, ValueError, RuntimeError) as e:  # maxminddb's InvalidDatabaseError is a RuntimeError
        print(f"{prog}: --asn-db {args.asn_db}: {e}", file=sys.stderr)
        return None
    return con, enricher


def cmd_port25(args: argparse.Namespace) -> int:
    from spampots.analysis import charts

    from . import port25

    data_dir = _data_dir(args)
    bad = check_store(data_dir, "spampots policy port25")
    if bad is not None:
        return bad
    fmt = output_format(args, "spampots policy port25")
    if fmt is None:
        return 2
    opened = _open(args, "spampots policy port25")
    if opened is None:
        return 2
    con, enricher = opened
    report = port25.run(con, enricher=enricher, top=args.top)
    report.meta.update(data_dir=str(data_dir), filters=describe_filters(args), title="spampots policy port25")
    svg = (charts.render(report, None, charts=charts.POLICY_CHARTS, sources=charts.POLICY_SOURCES)
           if fmt == "html" else None)
    write_report(report, args, fmt, charts=svg, chart_after=charts.POLICY_CHART_AFTER)
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    """Exit 0 (also when no network is found: the summary says so and the index is empty), 2 on bad input."""
    from spampots.analysis import render

    from . import notify

    prog = "spampots notify"
    data_dir = _data_dir(args)
    bad = check_store(data_dir, prog)
    if bad == 2:  # an empty store is a summary saying so (exit 0), as an empty selection
        return bad
    fmt = args.format or "terminal"
    if args.out and (args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir()))):
        print(f"{prog}: --out {args.out} must be a new or empty directory (no stale report can be mixed in)",
              file=sys.stderr)
        return 2
    try:  # checked before the lake work: a typo in a placeholder fails fast
        template = notify.load_template(args.template)
    except notify.TemplateError as e:
        print(f"{prog}: --template {args.template or '(packaged)'}: {e}", file=sys.stderr)
        return 2
    opened = _open(args, prog)
    if opened is None:
        return 2
    con, enricher = opened
    opts = notify.Options(by=args.by, min_emails=args.min_emails, top=args.top, evidence=args.evidence,
                          body_ips=args.body_ips)
    note = notify.collect(con, enricher=enricher, opts=opts, days=(args.day_from, args.day_to))
    note.meta.update(data_dir=str(data_dir), filters=describe_filters(args))
    if args.out:
        notify.write(args.out, note, template, opts, quiet=args.quiet)
    if not note.networks:
        print(f"{prog}: no network to notify in this selection"
              + (f" ({note.meta['filters']})" if note.meta["filters"] else "")
              + (f"; {note.left_out:,} below --min-emails or beyond --top" if note.left_out else "")
              + (f"; {note.not_located['ips']:,} source IPs in no network" if note.not_located["ips"] else ""),
              file=sys.stderr)
    report = notify.summary(note)
    if fmt == "terminal":
        render.terminal(report)
    else:
        text = render.RENDERERS[fmt](report)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.out and not args.quiet:
        print(f"{prog}: wrote {len(note.networks):,} network reports and the index into {args.out}", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="spampots")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
