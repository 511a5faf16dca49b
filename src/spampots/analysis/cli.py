"""`spampots report`, `spampots compact`, `spampots synth`.

spampots/cli.py calls :func:`register`; ``python -m spampots.analysis.cli``
runs the same subcommands standalone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from spampots.cli import main  # the one entry point; `python -m` this module runs it

if TYPE_CHECKING:
    from ..store.segments import ReadStats
    from .lake import Lake
    from .metrics import Report

FORMATS = ("terminal", "markdown", "json", "csv", "html")
_SUFFIX = {".md": "markdown", ".markdown": "markdown", ".json": "json", ".csv": "csv", ".html": "html",
           ".htm": "html"}


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {s!r}") from None


def _count(s: str) -> int:
    try:
        n = int(s.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def _zone(s: str) -> str:
    """An IANA time zone name (America/Sao_Paulo, UTC), checked against this machine's tz database."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(s)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"not a time zone: {s!r} (an IANA name such as America/Sao_Paulo or UTC)") \
            from None
    return "UTC" if s in ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal") else s


def _key_value(s: str) -> tuple[str, str]:
    key, eq, value = s.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {s!r}")
    return key.strip(), value


def _data_dir(args: argparse.Namespace) -> Path:
    from ..cli import resolve_store

    return resolve_store(args)[0]


STORE_PARTS = ("events", "messages", "lake")  # what a spampots data dir holds (any of them)


def check_store(data_dir: Path, prog: str, *, lake_ok: bool = True) -> Optional[int]:
    """None if `data_dir` is a spampots data dir with something to read; else the exit code,
    after one line saying why (2: no such dir or not ours; 1: nothing stored yet)."""
    if not data_dir.is_dir():
        print(f"{prog}: no data directory {data_dir}", file=sys.stderr)
        return 2
    if not any((data_dir / part).is_dir() for part in STORE_PARTS):
        print(f"{prog}: {data_dir} is not a spampots data dir (no events/, messages/ or lake/ in it); "
              "give --data-dir or --config", file=sys.stderr)
        return 2
    events = data_dir / "events"
    has_events = events.is_dir() and any(events.iterdir())
    has_lake = lake_ok and (data_dir / "lake").is_dir() and any((data_dir / "lake").glob("*/day=*/*.parquet"))
    if not has_events and not has_lake:
        print(f"{prog}: no events stored in {data_dir} yet", file=sys.stderr)
        return 1
    return None


def open_lake(data_dir: Path, args: argparse.Namespace, prog: str) -> "Optional[Lake]":
    """The data dir's lake, compacted first unless --no-compact; None after one line saying why
    not (derived files go to a cache dir when the data dir is not ours to write)."""
    from .lake import Lake

    lake = Lake(data_dir, cache_dir=getattr(args, "cache_dir", None))
    try:
        lake.root.mkdir(parents=True, exist_ok=True)
        if not getattr(args, "no_compact", False) and not getattr(args, "lake", None):
            lake.compact(quiet=args.quiet)
    except PermissionError as e:
        print(f"{prog}: cannot write derived files in {lake.root} ({e.strerror}): give --cache-dir DIR",
              file=sys.stderr)
        return None
    if lake.root.parent != data_dir and getattr(args, "cache_dir", None) is None and not args.quiet:
        print(f"{prog}: {data_dir} is not ours to write: derived files go to {lake.root.parent}", file=sys.stderr)
    return lake


def _common(p: argparse.ArgumentParser, *, reads: bool = True) -> None:
    """--data-dir, --config, -q; and for commands that read the store (`reads`), --cache-dir."""
    from ..cli import add_data_dir_options

    add_data_dir_options(p)
    if reads:
        p.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                       help="where derived files (the Parquet lake, enrichment cache) go; default: the data "
                            "dir when ours to write, else $XDG_CACHE_HOME/spampots (~/.cache/spampots)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_selection(p: argparse.ArgumentParser, *, output: bool = True, tz: bool = False) -> None:
    """Period, sensors and (unless `output` is False) output: the same options for every
    report-like command. `tz`: the command has --tz, and its days are in that zone (else UTC)."""
    zone = "in --tz's zone" if tz else "UTC"
    p.add_argument("--from", dest="day_from", type=_date, metavar="DAY",
                   help=f"first day (YYYY-MM-DD, {zone}), inclusive")
    p.add_argument("--to", dest="day_to", type=_date, metavar="DAY", help=f"last day (YYYY-MM-DD, {zone}), inclusive")
    p.add_argument("--sensor", action="append", default=[], metavar="ID", help="only this sensor (repeatable)")
    if output:
        p.add_argument("--format", choices=FORMATS, help="output format (default: from --out's suffix, else terminal)")
        p.add_argument("--out", type=Path, metavar="PATH",
                       help="write here instead of stdout (csv: a directory gets one file per table)")


def add_locale(p: argparse.ArgumentParser) -> None:
    """--locale: the report's language and number style (the same for every report-like command)."""
    from ..locale import CHOICES

    p.add_argument("--locale", choices=CHOICES, default="en",
                   help="language of titles, labels, definitions and charts, and number style: en (English, "
                        "1,234.56, default) or pt_BR (Brazilian Portuguese, 1.234,56 as the talk); pt = pt_BR")


def describe_filters(args: argparse.Namespace) -> str:
    """The selection options in words, for a report's header ("" when none)."""
    filters = []
    if args.day_from or args.day_to:
        filters.append(f"days {args.day_from or '…'} to {args.day_to or '…'}")
    if args.sensor:
        filters.append("sensors " + ", ".join(args.sensor))
    return "; ".join(filters)


def write_report(report: "Report", args: argparse.Namespace, fmt: str, *, charts: Optional[dict[str, str]] = None,
                 chart_after: Optional[dict[str, str]] = None, detail: bool = False) -> None:
    """Render `report` in `fmt` to --out (csv: a directory gets one file per table) or stdout."""
    from . import render

    if fmt == "terminal":
        if args.out:
            with open(args.out, "w") as f:
                render.terminal(report, locale=args.locale, file=f, detail=detail)
        else:
            render.terminal(report, locale=args.locale, detail=detail)
        return
    if fmt == "csv" and args.out and (args.out.is_dir() or not args.out.suffix):
        render.csv_dir(report, args.out)
        return
    if fmt == "html":
        text = render.to_html(report, locale=args.locale, charts=charts or {}, chart_after=chart_after or {})
    elif fmt == "markdown":
        text = render.markdown(report, locale=args.locale, detail=detail)
    else:
        text = render.RENDERERS[fmt](report)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def output_format(args: argparse.Namespace, prog: str) -> Optional[str]:
    """The format asked for (or implied by --out); None after telling the user why not."""
    fmt = args.format or (_SUFFIX.get(args.out.suffix.lower()) if args.out else None) or \
        ("csv" if args.out and args.out.is_dir() else "terminal")
    if fmt == "html" and not args.out:
        print(f"{prog}: --format html needs --out FILE", file=sys.stderr)
        return None
    return fmt


def register(subparsers: argparse._SubParsersAction) -> None:
    from . import FIRST_PER

    p = subparsers.add_parser("report", help="the talk's tables and more, from the stored events",
                              description="Compact closed segments, then report on lake + open segments.")
    _common(p)
    add_selection(p, tz=True)
    p.add_argument("--charts", type=Path, metavar="DIR", help="also write every chart as SVG and PNG into DIR")
    p.add_argument("--first-per", choices=FIRST_PER, default="connection",
                   help="outbound attempts: count the first request per connection (default), per source IP, "
                        "or every request")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows in the top-N tables (default 10)")
    p.add_argument("--asn-db", type=Path, metavar="FILE", help="AS database: MaxMind/IPinfo .mmdb, iptoasn .tsv[.gz], "
                   "a dated RouteViews pfx2as table [.gz] or IPFire location .db "
                   "(default: the installed IPFire database, if any; none: the bundled data alone)")
    p.add_argument("--p0f-db", type=Path, metavar="FILE",
                   help="p0f.fp classifying the sources' SYN fingerprints (default: Debian's /etc/p0f/p0f.fp "
                        "when the p0f package is installed)")
    p.add_argument("--ports", type=Path, action="append", default=[], metavar="FILE",
                   help="extra port table (TOML, like spampots/data/ports.toml); repeatable")
    p.add_argument("--tz", type=_zone, default="UTC", metavar="ZONE",
                   help="IANA time zone that days, weeks, months and hours are counted in, e.g. America/Sao_Paulo "
                        "(default UTC); --from/--to name days in it")
    add_locale(p)
    p.add_argument("--no-compact", action="store_true",
                   help="do not compact closed segments first (they are read from JSON instead)")
    p.add_argument("--talk-only", action="store_true",
                   help="only the talk's tables: summary, ports (emails, sessions), outbound attempts")
    p.add_argument("--detail", action="store_true", help="terminal/markdown: also the per-day and per-hour tables")
    p.add_argument("--no-campaigns", action="store_true",
                   help="do not parse new messages into campaigns: the Campaigns table groups by subject only")
    p.add_argument("--exact-limit", type=_count, default=5_000_000, metavar="N",
                   help="above this many emails the top-N tables on message fields use the session sample (default 5M)")
    p.add_argument("--threads", type=int, metavar="N", help="DuckDB threads (default: all cores)")
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="DuckDB memory limit, e.g. 6GB (default 3GB, or 80%% of RAM if less); beyond it DuckDB "
                        "spills to <lake>/_cache/spill")
    p.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                   help="run the metric SQL on DuckDB (default) or on Apache Spark (pip install 'spampots[spark]')")
    p.add_argument("--lake", metavar="URI",
                   help="--engine spark: the lake to read (a directory, file://, hdfs://, s3a://...; default "
                        "<data-dir>/lake, compacted first); nothing but the lake is read")
    p.add_argument("--spark-master", metavar="URL",
                   help="--engine spark: e.g. spark://host:7077 (default local[*], or spark-submit's --master)")
    p.add_argument("--spark-conf", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="--engine spark: a Spark setting (repeatable)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("compact", help="compact closed event segments into the Parquet lake")
    _common(p)
    p.add_argument("--rebuild", action="store_true", help="drop the lake and compact everything again")
    p.set_defaults(func=cmd_compact)

    p = subparsers.add_parser("synth", help="write a synthetic data set with the talk's shape",
                              description="Synthetic events in the store's layout, with the proportions of the "
                                          "CERT.br SpamPots talk (see docs/report.md).")
    _common(p, reads=False)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--messages", type=_count, metavar="N", help="number of emails (default 100,000)")
    size.add_argument("--scale", type=float, metavar="F", help="1.0 = the talk's size (524,585,779 emails)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output data directory (default: --data-dir)")
    p.add_argument("--format", choices=("lake", "store"), default="lake",
                   help="lake: Parquet straight into <out>/lake (fast, any size); store: JSONL.zst event "
                        "segments as the sensor writes them (small sets; compacted by report)")
    p.add_argument("--ips", type=_count, metavar="N", help="source IP pool size (default: 216,888 x scale, at least 50)")
    p.add_argument("--days", type=int, default=466, metavar="N", help="days (default 466, as the talk)")
    p.add_argument("--start", type=_date, default=dt.date(2006, 6, 10), metavar="DAY", help="first day (default 2006-06-10)")
    p.add_argument("--sensors", type=int, default=10, metavar="N", help="number of sensors (default 10)")
    p.add_argument("--seed", type=int, default=1, metavar="N", help="random seed")
    p.set_defaults(func=cmd_synth)


def cmd_report(args: argparse.Namespace) -> int:
    from . import metrics, ports, progress
    from .enrich import Enricher, resolve_asn_db
    from .ports import PortTableError

    data_dir = _data_dir(args)
    if args.lake and args.engine != "spark":
        print("spampots report: --lake is for --engine spark (DuckDB reads <data-dir>/lake and the open segments)",
              file=sys.stderr)
        return 2
    if not args.lake:
        bad = check_store(data_dir, "spampots report")
        if bad is not None:
            return bad
    fmt = output_format(args, "spampots report")
    if fmt is None:
        return 2
    try:
        extra = [p for p in [data_dir / "ports.toml"] if p.exists()] + list(args.ports)
        port_table = ports.load(extra)
    except (OSError, PortTableError) as e:
        print(f"spampots report: port table: {e}", file=sys.stderr)
        return 2
    lake = open_lake(data_dir, args, "spampots report") if data_dir.is_dir() else None
    if lake is None:
        if data_dir.is_dir():
            return 2
        from .lake import Lake

        lake = Lake(data_dir, cache_dir=getattr(args, "cache_dir", None))  # --lake only: nothing is written
    cache_dir = lake.root / "_cache" if data_dir.is_dir() else None
    if args.engine == "spark":
        from . import spark

        if lake.base is not None and not args.lake:  # Spark reads one lake; ours lacks what the base holds
            print(f"spampots report: --engine spark reads one lake, and {lake.root} holds only what "
                  f"{lake.base} lacks: give --lake {lake.base} (compacted by its owner)", file=sys.stderr)
            return 2
        try:
            con = spark.connect(args.lake or lake.root, day_from=args.day_from, day_to=args.day_to,
                                sensors=args.sensor, master=args.spark_master, conf=args.spark_conf,
                                quiet=args.quiet, tz=args.tz)
        except spark.SparkUnavailable as e:
            print(f"spampots report: {e}", file=sys.stderr)
            return 2
        local = spark.local_path(args.lake) if args.lake else lake.root
        cache_dir = local / "_cache" if local else cache_dir
        pending = lake.segments() if not args.lake else None
        if pending and (pending.open or pending.closed) and not args.quiet:
            print(f"spampots report: Spark reads the lake only: {len(pending.open) + len(pending.closed)} "
                  "segments not compacted yet are left out", file=sys.stderr)
    else:
        from .lake import report_memory_limit

        con = lake.connect(day_from=args.day_from, day_to=args.day_to, sensors=args.sensor,
                           threads=args.threads, memory_limit=args.memory_limit or report_memory_limit(),
                           quiet=args.quiet, tz=args.tz)
    try:
        enricher = Enricher(resolve_asn_db(args.asn_db), cache_dir=cache_dir, quiet=args.quiet)
    except (OSError, ValueError, RuntimeError) as e:  # maxminddb's InvalidDatabaseError is a RuntimeError
        print(f"spampots report: --asn-db {args.asn_db}: {e}", file=sys.stderr)
        return 2
    problem = metrics.zone_problem(con, args.tz)
    if problem:
        print(f"spampots report: --tz {args.tz}: {problem}", file=sys.stderr)
        if args.engine == "spark":
            con.close()
        return 2
    if args.p0f_db is not None:
        from .fingerprints import load_db
        try:
            if not load_db(str(args.p0f_db)).refs:
                raise ValueError("no [tcp:request] signatures in it")
        except (OSError, ValueError) as e:
            print(f"spampots report: --p0f-db {args.p0f_db}: {e}", file=sys.stderr)
            return 2
    opts = metrics.Options(first_per=args.first_per, top=args.top, exact_limit=args.exact_limit,
                           talk_only=args.talk_only, tz=args.tz, p0f_db=str(args.p0f_db or ""))
    poll = None
    if args.engine == "duckdb" and progress.enabled(args.quiet):  # the running query's percent, for the bar
        con.execute("SET enable_progress_bar = true; SET enable_progress_bar_print = false")
        poll = con.query_progress
    try:
        with progress.steps("report", quiet=args.quiet, poll=poll) as step:
            report = metrics.run(con, ports=port_table, enricher=enricher, opts=opts, step=step)
    finally:
        if args.engine == "spark":
            con.close()
    if args.engine == "duckdb" and not args.talk_only and not args.no_campaigns:
        from .campaign_report import report_step  # content campaigns replace the subject-key table

        report_step(report, lake, con, enricher, top=args.top, quiet=args.quiet, memory_limit=args.memory_limit,
                    threads=args.threads)
    report.meta.update(data_dir=str(args.lake or data_dir), filters=describe_filters(args), engine=args.engine)
    tell_damage(lake.damage, "spampots report")

    inline, after = {}, {}
    if args.charts or fmt == "html":  # matplotlib: about a second to import, only when charts are drawn
        from . import charts as charts_mod

        inline = charts_mod.render(report, args.charts, svg=fmt == "html", locale=args.locale)
        after = charts_mod.CHART_AFTER
    write_report(report, args, fmt, charts=inline, chart_after=after, detail=args.detail)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from .lake import Lake

    data_dir = _data_dir(args)
    bad = check_store(data_dir, "spampots compact", lake_ok=True)
    if bad == 2:
        return bad
    lake = Lake(data_dir, cache_dir=getattr(args, "cache_dir", None))
    try:
        st = lake.compact(rebuild=args.rebuild, quiet=args.quiet)
    except PermissionError as e:
        print(f"spampots compact: cannot write the lake in {lake.root} ({e.strerror}): give --cache-dir DIR",
              file=sys.stderr)
        return 2
    tell_damage(lake.damage, "spampots compact")
    seg = lake.segments()
    if not args.quiet:
        print(f"compacted {st.segments} segments ({st.events:,} events) into {st.parts} parts over "
              f"{len(st.days)} days; {seg.compacted} segments in the lake ({lake.root}), {len(seg.open)} open",
              file=sys.stderr)
    return 0


def tell_damage(stats: "ReadStats", prog: str) -> None:
    """One line on stderr naming the damaged data a reader skipped (also with -q: data was lost)."""
    line = stats.damage_line()
    if line:
        print(f"{prog}: {line}", file=sys.stderr)


def cmd_synth(args: argparse.Namespace) -> int:
    from . import synth

    out = args.out or _data_dir(args)
    if args.scale is not None:
        scale = args.scale
    else:
        scale = (args.messages if args.messages is not None else 100_000) / synth.TALK["emails"]
    if scale <= 0 or args.days < 1 or args.sensors < 1:
        print("spampots synth: size, days and sensors must be positive", file=sys.stderr)
        return 2
    if args.format == "store" and scale * synth.TALK["emails"] > synth.STORE_FORMAT_MAX:
        print(f"spampots synth: --format store is for small sets (at most {synth.STORE_FORMAT_MAX:,} emails); "
              "use --format lake", file=sys.stderr)
        return 2
    spec = synth.Spec(scale=scale, days=args.days, start=args.start, sensors=args.sensors,
                      ips=args.ips, seed=args.seed)
    stats = synth.generate(Path(out), spec, fmt=args.format, quiet=args.quiet)
    if not args.quiet:
        print(", ".join(f"{k} {v:,}" for k, v in stats.items()) + f" -> {out}", file=sys.stderr)
    return 0




if __name__ == "__main__":
    sys.exit(main())
