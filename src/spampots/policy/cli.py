"""`spampots policy port25` and `spampots notify`. spampots/cli.py calls :func:`register`;
``python -m spampots.policy.cli`` runs them standalone."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

# Shared with `spampots report`: the same options mean the same thing.
from spampots.analysis.cli import (_common, _count, _data_dir, add_locale, add_selection, check_store,
                                   describe_filters, open_lake, output_format, tell_damage, write_report)
from spampots.cli import main  # the one entry point; `python -m` this module runs it


if TYPE_CHECKING:
    import duckdb

    from spampots.analysis.enrich import Enricher
    from spampots.store.messages import MessageStore

    from .contacts import Contacts
    from .notify import Notification
    from .send import Relay


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
    q.add_argument("--asn-db", type=Path, metavar="FILE", help="AS database: MaxMind/IPinfo .mmdb, iptoasn .tsv[.gz] or IPFire location .db "
                   "(default: the installed IPFire database, if any; none: the bundled data alone)")
    add_locale(q)
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
    n.add_argument("--asn-db", type=Path, metavar="FILE", help="AS database: MaxMind/IPinfo .mmdb, iptoasn .tsv[.gz] or IPFire location .db "
                   "(default: the installed IPFire database, if any; none: the bundled data alone)")
    n.add_argument("--min-emails", type=_count, default=1, metavar="N",
                   help="only networks that sent at least N emails (default 1; 0 adds proxy-only networks)")
    n.add_argument("--top", type=_positive, metavar="N", help="only the N networks with most emails (default: all)")
    n.add_argument("--evidence", type=_count, default=5, metavar="N", help="evidence lines per network (default 5)")
    n.add_argument("--body-ips", type=_count, default=50, metavar="N",
                   help="IPs listed in the text body (default 50; the CSV and JSON list all)")
    n.add_argument("--template", type=Path, metavar="FILE",
                   help="the notification template (string.Template $placeholders; default: the packaged one)")
    n.add_argument("--no-compact", action="store_true", help="do not compact closed segments first")
    r = n.add_argument_group("reports ready to send (with --out: <network>.eml per network)")
    r.add_argument("--report", choices=("arf", "xarf"), default="arf",
                   help="format of <network>.eml: RFC 5965 ARF (default) or X-ARF v0.2")
    r.add_argument("--sample", choices=("rfc822", "headers"), default="rfc822",
                   help="enclose the sample message whole (message/rfc822, default) or its headers only")
    r.add_argument("--reporter", metavar="ADDRESS",
                   help="From: of the reports (default: the relay's sender, else spampots@localhost)")
    r.add_argument("--contacts", type=Path, metavar="FILE",
                   help="CSV of network,address rows (AS64500 or a CIDR, an abuse address): the recipients")
    r.add_argument("--send", action="store_true",
                   help="submit the reports through the relay (STARTTLS, AUTH), once per network and period")
    r.add_argument("--relay-config", type=Path, metavar="FILE",
                   help="TOML with a [relay] table; SPAMPOTS_RELAY_* variables override it (never the password "
                        "on the command line)")
    n.set_defaults(func=cmd_notify)


def _open(args: argparse.Namespace, prog: str) -> Optional[tuple["duckdb.DuckDBPyConnection", "Enricher"]]:
    """(lake connection, enricher) for the selection, or None after saying why not (exit 2)."""
    from spampots.analysis.enrich import Enricher, resolve_asn_db
    from spampots.analysis.lake import report_memory_limit

    lake = open_lake(_data_dir(args), args, prog)
    if lake is None:
        return None
    # the report's memory bound: beyond it DuckDB spills into the lake's spill dir
    con = lake.connect(day_from=args.day_from, day_to=args.day_to, sensors=args.sensor,
                       memory_limit=report_memory_limit())
    tell_damage(lake.damage, prog)
    try:
        enricher = Enricher(resolve_asn_db(args.asn_db), cache_dir=lake.root / "_cache", quiet=args.quiet)
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
    svg = (charts.render(report, None, charts=charts.POLICY_CHARTS, sources=charts.POLICY_SOURCES,
                         locale=args.locale)
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
    prepared = _prepare_reports(args, prog)
    if prepared is None:
        return 2
    book, relay = prepared
    opened = _open(args, prog)
    if opened is None:
        return 2
    con, enricher = opened
    from .arf import ArfOptions

    reporter = args.reporter or (relay.sender if relay else "") or "spampots@localhost"
    store = _MessageReader(data_dir) if args.out else None
    opts = notify.Options(by=args.by, min_emails=args.min_emails, top=args.top, evidence=args.evidence,
                          body_ips=args.body_ips,
                          arf=ArfOptions(report=args.report, sample=args.sample, reporter=reporter,
                                         read_sample=store))
    note = notify.collect(con, enricher=enricher, opts=opts, days=(args.day_from, args.day_to))
    note.meta.update(data_dir=str(data_dir), filters=describe_filters(args))
    if book is not None:
        for net in note.networks:
            net.contacts = book.for_ips(net.ip_rows)
        note.meta["contacts"] = str(args.contacts)
    if args.out:
        try:
            notify.write(args.out, note, template, opts, quiet=args.quiet)
        finally:
            if store is not None:
                store.close()
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
    if args.send:
        assert relay is not None and args.out is not None
        return _send(note, relay, args.out, prog)
    return 0


def _prepare_reports(args: argparse.Namespace, prog: str) -> Optional[tuple[Optional["Contacts"], Optional["Relay"]]]:
    """The contacts and relay settings, checked before any lake work; None after saying why not."""
    from .contacts import ContactsError, load, valid_address
    from .send import RelayError, load_relay

    if args.reporter is not None and not valid_address(args.reporter):
        print(f"{prog}: --reporter must be a plain address (user@domain)", file=sys.stderr)
        return None
    book = relay = None
    if args.contacts is not None:
        try:
            book = load(args.contacts)
        except ContactsError as e:
            print(f"{prog}: --contacts {args.contacts}: {e}", file=sys.stderr)
            return None
    if args.send:
        if args.out is None or book is None:
            print(f"{prog}: --send needs --out DIR (the reports it sends) and --contacts FILE (their recipients)",
                  file=sys.stderr)
            return None
        try:
            relay = load_relay(args.relay_config)
        except RelayError as e:
            print(f"{prog}: relay: {e}", file=sys.stderr)
            return None
    return book, relay


class _MessageReader:
    """sha256 -> the stored message, None when the store does not have it (or cannot be read).
    The store is opened on first use: a selection without email never touches it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.store: Optional["MessageStore"] = None
        self.tried = False

    def __call__(self, sha: str) -> Optional[bytes]:
        from spampots.store.messages import MessageStore

        if not self.tried:
            self.tried = True
            try:
                self.store = MessageStore(self.data_dir, readonly=True)
            except (OSError, ValueError, RuntimeError, sqlite3.Error):
                self.store = None
        try:
            return self.store.get(sha) if self.store is not None else None
        except (KeyError, OSError, ValueError):  # CorruptRecord is a ValueError
            return None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _send(note: "Notification", relay: "Relay", out: Path, prog: str) -> int:
    """Exit 0 when every report with a recipient went (or had gone before), 1 otherwise."""
    import smtplib
    import ssl

    from .send import Outgoing, RelayError, SentLog, send_all

    period = tuple(d.isoformat() if d else "" for d in note.period)
    items = []
    for n in note.networks:
        if not n.contacts:
            continue
        raw = (out / f"{n.stem}.eml").read_bytes()
        mid = next((ln.split(b":", 1)[1].strip().decode() for ln in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                    if ln.lower().startswith(b"message-id:")), "")
        items.append(Outgoing(n.key, period, n.contacts, raw, mid))  # type: ignore[arg-type]
    try:
        log = SentLog(Path(relay.sent_log))
    except (OSError, RelayError) as e:
        print(f"{prog}: sent log: {e}", file=sys.stderr)
        return 1
    try:
        res = send_all(items, relay, log, say=lambda s: print(f"{prog}: {s}", file=sys.stderr))
    except (OSError, smtplib.SMTPException, ssl.SSLError, RelayError) as e:
        print(f"{prog}: relay {relay.host}:{relay.port}: {e} (the sent log holds what went)", file=sys.stderr)
        return 1
    finally:
        log.close()
    print(f"{prog}: sent {len(res.sent):,}, already sent before {len(res.skipped):,}, refused "
          f"{len(res.failed):,}; sent log {relay.sent_log}", file=sys.stderr)
    return 1 if res.failed else 0




if __name__ == "__main__":
    sys.exit(main())
