"""`spampots campaigns`: list, search and show the campaigns found in the stored messages.

Compacts the lake, parses the bodies not parsed yet and assigns their layouts to campaigns
(analysis/message_lake.py), then queries (analysis/campaign_report.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    from .cli import _common

    p = sub.add_parser("campaigns", help="list, search and show spam campaigns",
                       description="Group the stored messages into campaigns (what stays constant across "
                                   "a spam operation's messages) and list them, largest first; search by URL "
                                   "domain, sender domain or text; or show one campaign (an id from the list).")
    _common(p)
    p.add_argument("campaign", nargs="?", metavar="ID", help="show this campaign (cmp-… or a prefix of 4+ hex digits)")
    p.add_argument("--url-domain", action="append", default=[], metavar="DOMAIN",
                   help="only campaigns linking to this domain or its subdomains (repeatable: all must match)")
    p.add_argument("--sender-domain", action="append", default=[], metavar="DOMAIN",
                   help="only campaigns with messages from this domain (envelope MAIL FROM or From: header)")
    p.add_argument("--text", action="append", default=[], metavar="WORDS",
                   help="only campaigns whose template, subject or text contains WORDS (case-insensitive)")
    p.add_argument("--top", type=int, default=20, metavar="N", help="campaigns listed (default 20)")
    p.add_argument("--format", choices=("terminal", "json"), default="terminal",
                   help="terminal tables (default) or JSON for scripts")
    p.add_argument("--asn-db", type=Path, metavar="FILE", help="AS database, as for `spampots report`")
    p.add_argument("--no-update", action="store_true",
                   help="do not compact, parse new messages or assign them first (show what the lake has)")
    p.set_defaults(func=cmd_campaigns)


def _update(args: argparse.Namespace, prog: str):  # noqa: ANN202 - (data_dir, Lake) or an exit code
    from . import message_lake
    from .cli import _data_dir, check_store, open_lake

    data_dir = _data_dir(args)
    bad = check_store(data_dir, prog)
    if bad is not None:
        return bad
    if args.no_update:
        args.no_compact = True
    lake = open_lake(data_dir, args, prog)
    if lake is None:
        return 2
    if not args.no_update:
        st = message_lake.update(lake)
        if not args.quiet and (st.parsed or st.layouts):
            print(f"{prog}: parsed {st.parsed:,} new messages ({st.missing:,} bodies not in the store), "
                  f"{st.layouts:,} new layouts, {st.campaigns_new:,} new campaigns", file=sys.stderr)
    return data_dir, lake


def cmd_campaigns(args: argparse.Namespace) -> int:
    from . import campaign_report, message_lake

    prog = "spampots campaigns"
    if args.campaign:
        try:
            args.campaign = campaign_report.check_id(args.campaign)
        except ValueError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
    got = _update(args, prog)
    if isinstance(got, int):
        return got
    data_dir, lake = got
    con = lake.connect()
    try:
        message_lake.create_views(con, lake.root)
        if args.campaign:
            enricher = _enricher(args, lake, prog)
            ids = campaign_report.resolve(con, [args.campaign])
            if len(ids) != 1:
                print(f"{prog}: {'no' if not ids else 'more than one'} campaign {args.campaign}"
                      + (": " + ", ".join(ids[:5]) if ids else ""), file=sys.stderr)
                return 1
            d = campaign_report.detail(con, ids[0], enricher)
            if d is None:
                print(f"{prog}: campaign {ids[0]} has no message in the events", file=sys.stderr)
                return 1
            _print_detail(d, args.format)
            return 0
        rows = campaign_report.search(con, url_domains=args.url_domain, sender_domains=args.sender_domain,
                                      text=args.text, top=args.top)
    finally:
        con.close()
    if args.format == "json":
        print(json.dumps(rows, default=str, indent=1))
        return 0
    if not rows:
        print("no campaign matches" if (args.url_domain or args.sender_domain or args.text) else "no campaigns yet")
        return 0 if not (args.url_domain or args.sender_domain or args.text) else 1
    for r in rows:
        print(f"{r['campaign']}  {r['messages']:,} messages, {r['recipients']:,} recipients, {r['sources']:,} sources, "
              f"{r['first_seen']:%Y-%m-%d %H:%M} to {r['last_seen']:%Y-%m-%d %H:%M}, "
              f"{'/'.join(r['protocols'])}, ports {','.join(map(str, r['ports']))}, "
              f"{r['url_domains']:,} URL domains, {','.join(r['languages']) or '-'}")
        print("    " + _one_line(r["template"] or "", 150))
    return 0


def _enricher(args: argparse.Namespace, lake, prog: str):  # noqa: ANN001, ANN202
    from .enrich import Enricher, resolve_asn_db

    try:
        return Enricher(resolve_asn_db(args.asn_db), cache_dir=lake.root / "_cache", quiet=True)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"{prog}: --asn-db {args.asn_db}: {e}: sources shown without AS", file=sys.stderr)
        return None


def _one_line(s: str, n: int) -> str:
    s = " / ".join(x for x in s.splitlines() if x.strip())
    return s if len(s) <= n else s[: n - 1] + "…"


def _print_detail(d: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(d, default=str, indent=1))
        return
    w = sys.stdout.write
    w(f"campaign {d['campaign']}\n")
    w(f"  {d['messages']:,} messages, {d['recipients']:,} recipients, {d['sources']:,} sources in "
      f"{d['n_ases']:,} ASes and {d['n_countries']:,} countries; first {d['first_seen']:%Y-%m-%d %H:%M:%S}, "
      f"last {d['last_seen']:%Y-%m-%d %H:%M:%S} UTC\n")
    w(f"  languages: {', '.join(d['languages']) or '-'}\n\ntemplate (* marks what varies):\n")
    for line in (d["template"] or "").splitlines():
        w(f"  | {line}\n")

    def table(title: str, rows: list, fmt_row) -> None:  # noqa: ANN001
        if rows:
            w(f"\n{title}:\n")
            for r in rows:
                w("  " + fmt_row(r) + "\n")

    table("timeline (messages per day)", d["timeline"], lambda r: f"{r[0]}  {r[1]:,}")
    table("ports and protocols", d["ports_protocols"], lambda r: f"{r[0]:>5}  {r[1]:<8} {r[2]:,}")
    table("sources", d["sources_top"],
          lambda r: f"{r[0]:<39} {r[1]:>7,}  {'AS' + str(r[2]) if r[2] else '-':<9} {r[3][:30]:<30} {r[4] or '-'}")
    table("ASes", d["ases"], lambda r: f"{r[0][:50]:<50} {r[1]:,}")
    table("countries", d["countries"], lambda r: f"{r[0]:<8} {r[1]:,}")
    table("target MX hosts", d["mx"], lambda r: f"{r[0]:<40} {r[1]:,}")
    table("URL domains", d["url_domains_top"], lambda r: f"{r[0]:<40} {r[1]:,}")
    table("URLs", d["urls"], lambda r: f"{_one_line(r[0], 80):<80} {r[1]:,}")
    table("sender domains", d["sender_domains"], lambda r: f"{r[0]:<40} {r[1]:,}")
    table("subjects", d["subjects"], lambda r: f"{_one_line(r[0] or '', 80):<80} {r[1]:,}")
