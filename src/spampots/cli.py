"""The ``spampots`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from . import __version__, config

if TYPE_CHECKING:
    from .events import Event
    from .store.segments import ReadStats

_HEX64 = re.compile(rb"^[0-9a-fA-F]{64}$")
_HEX_PREFIX = re.compile(r"^[0-9a-fA-F]{8,64}$")
# Imported only by the analysis commands; missing on a sensor-only install (no [analysis] extra).
ANALYSIS_MODULES = frozenset({"duckdb", "pyarrow", "numpy", "matplotlib", "geoip2fast", "maxminddb",
                              "lingua", "tldextract", "aiohttp"})
LOG_FORMATS = ("text", "json")
DATA_DIR_HELP = (f"where events and messages are stored (default: the config's [sensor] data_dir, else "
                 f"{config.ROOT_DATA_DIR} as root, ./var otherwise)")
CONFIG_HELP = "the sensor's TOML config (see `spampots example-config`): its [sensor] data_dir and id are used"


def add_data_dir_options(p: argparse.ArgumentParser, *, config_option: bool = True) -> None:
    """--data-dir and --config, the same for every command that reads a data dir.
    SUPPRESS: a subcommand's default never overwrites what an outer parser set."""
    p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=DATA_DIR_HELP)
    if config_option:
        p.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)


def sensor_section(path: Optional[Path]) -> config.SensorSection:
    """The [sensor] table of a config file (defaults without one). Only that table is read, so a
    file that holds just [transport.nats] (or the old [nats]) serves too."""
    if path is None:
        return config.SensorSection()
    import tomllib

    import msgspec

    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise config.ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise config.ConfigError(f"{path}: cannot read it as TOML: {exc}") from None
    try:
        section = msgspec.convert(raw.get("sensor") or {}, config.SensorSection)
    except msgspec.ValidationError as exc:
        raise config.ConfigError(f"{path}: sensor: {exc}") from None
    config.validate(config.Config(sensor=section))
    return section


def resolve_store(args: argparse.Namespace) -> tuple[Path, str]:
    """(data dir, sensor id) of a command, by the one rule: --data-dir, else --config's
    [sensor] data_dir, else the default; the id from --sensor-id, else the config's, else the host's."""
    section = sensor_section(getattr(args, "config", None))
    cfg = config.Config(sensor=section)
    sensor_id = getattr(args, "sensor_id", None) or cfg.sensor_id
    return config.resolve_data_dir(getattr(args, "data_dir", None), cfg), sensor_id


def _data_dir(args: argparse.Namespace, cfg: Optional[config.Config] = None) -> Path:
    if cfg is not None:
        return config.resolve_data_dir(getattr(args, "data_dir", None), cfg)
    return resolve_store(args)[0]


def _load_config(args: argparse.Namespace) -> config.Config:
    return config.load(Path(args.config) if getattr(args, "config", None) else None)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (journald, log shippers): ts, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        import time

        obj = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """The root logger on stderr, as text lines or JSON lines (--log-format)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def add_log_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="stderr lines as text (default) or one JSON object per line (journald, log shippers)")


def lock_holder(path: Path) -> Optional[int]:
    """The pid holding a flock on `path` (Linux /proc/locks), None if unknown or unlocked."""
    try:
        st = path.stat()
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 2267 08:01:1234 0 EOF" ("->" marks a waiter)
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            pid, inode = int(parts[4]), int(parts[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if inode == st.st_ino:
            return pid
    return None


# -- run -----------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .sensor import privileges
    from .sensor.privileges import PrivilegeError
    from .sensor.server import Sensor, StartupError, install_uvloop

    os.umask(privileges.UMASK)  # files 0640, directories 0750: captured data is not for everyone
    cfg = _load_config(args)
    if args.port_offset:
        cfg = config.with_port_offset(cfg, args.port_offset)
    if args.address is not None:
        cfg = config.with_address(cfg, args.address)
    if args.sensor_id:
        cfg.sensor.id = args.sensor_id
    if args.user is not None:
        cfg.sensor.user = args.user
    if args.log_level:
        cfg.sensor.log_level = args.log_level
    if args.workers is not None:
        cfg.sensor.workers = args.workers
    if args.metrics is not None:
        cfg.metrics = config.MetricsSection(enable=True, address=cfg.metrics.address, port=args.metrics)
    config.validate(cfg)
    configure_logging(cfg.sensor.log_level, args.log_format)
    # absolute, but not resolved: a data dir that is a symlink is refused, not followed
    data_dir = Path(os.path.abspath(_data_dir(args, cfg)))
    # The store's writer thread hands results back to the loop; a shorter GIL
    # switch interval cuts that latency (+15-20% capture rate in bench (a)).
    sys.setswitchinterval(0.0005)
    workers = config.worker_count(cfg)
    try:
        if workers > 1:
            from .sensor.workers import Supervisor

            return Supervisor(cfg, workers, strict=args.strict).run(data_dir)
        install_uvloop()
        return asyncio.run(Sensor(cfg, strict=args.strict).run(data_dir))
    except (StartupError, PrivilegeError) as exc:
        pid = lock_holder(data_dir / "messages" / f"pack-{cfg.sensor_id}.lock")
        if pid is not None and pid != os.getpid():
            print(f"spampots: data dir {data_dir} is in use by process {pid} (sensor {cfg.sensor_id!r}): "
                  "stop it, or give this sensor another --data-dir or --sensor-id", file=sys.stderr)
        else:
            print(f"spampots: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config.load(Path(args.file))
    lst = cfg.listeners
    data = str(config.resolve_data_dir(None, cfg))
    if args.data_dir is not None:  # what `run` checks before binding, as the user it runs as
        from .sensor import privileges

        data = str(args.data_dir)
        try:
            acct = (privileges.account(cfg.sensor.user, cfg.sensor.group)
                    if privileges.running_as_root() and cfg.sensor.user else None)
            privileges.check_data_dir(Path(args.data_dir), acct)
        except privileges.PrivilegeError as exc:
            print(f"spampots: {exc}", file=sys.stderr)
            return 2
    print(f"{args.file}: OK. sensor {cfg.sensor_id!r}, data in {data!r}, "
          f"{len(lst)} listeners: " + ", ".join(f"{x.port}/{x.kind}" for x in lst))
    return 0


def cmd_example_config(args: argparse.Namespace) -> int:
    sys.stdout.write(config.example_toml())
    return 0


# -- reading the store -----------------------------------------------------------
def _tell_damage(stats: "ReadStats", prog: str) -> None:
    from .analysis.cli import tell_damage  # the one wording for every reader

    tell_damage(stats, prog)


def _message_events(data_dir: Path, prog: str) -> dict[str, object]:
    from .events import SmtpMessage
    from .store.catalog import ReadStats, iter_events

    out: dict[str, object] = {}
    st = ReadStats()
    for ev in iter_events(data_dir, stats=st):
        if isinstance(ev, SmtpMessage) and ev.sha256 not in out:
            out[ev.sha256] = ev
    _tell_damage(st, prog)
    return out


def _full_sha(data_dir: Path, given: str, prog: str) -> Optional[str]:
    """The one stored hash that `given` (a full hash or a prefix of 8+ hex digits) names;
    None after saying why not."""
    from .store.messages import MessageStore

    if not _HEX_PREFIX.match(given):
        print(f"{prog}: {given!r} is not a SHA-256 or a prefix of at least 8 hex digits", file=sys.stderr)
        return None
    sha = given.lower()
    if len(sha) == 64:
        return sha
    if not data_dir.is_dir():
        print(f"{prog}: no data directory {data_dir}", file=sys.stderr)
        return None
    with MessageStore(data_dir, readonly=True) as store:
        found = sorted({s for s in store.iter_shas() if s.startswith(sha)})
    if len(found) == 1:
        return found[0]
    if not found:
        print(f"{prog}: no message whose hash starts with {sha} in {data_dir}", file=sys.stderr)
    else:
        shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        print(f"{prog}: {sha} is ambiguous: {shown}", file=sys.stderr)
    return None


def cmd_show(args: argparse.Namespace) -> int:
    from .store.messages import MessageStore

    data_dir = _data_dir(args)
    sha = _full_sha(data_dir, args.sha256, "spampots show")
    if sha is None:
        return 2
    if args.event:
        from .events import encode
        from .store.catalog import ReadStats, iter_events
        found = 0
        st = ReadStats()
        for ev in iter_events(data_dir, stats=st):
            if getattr(ev, "sha256", None) == sha:
                sys.stdout.buffer.write(encode(ev))
                found += 1
        _tell_damage(st, "spampots show")
        if not found:
            print(f"spampots: no event for message {sha}", file=sys.stderr)
            return 1
        return 0
    from .store.messages import CorruptRecord
    store = MessageStore(data_dir, readonly=True)
    try:
        body = store.get(sha)
    except KeyError:
        print(f"spampots: no message {sha} in {data_dir}", file=sys.stderr)
        return 1
    except CorruptRecord as e:
        print(f"spampots: message {sha} is damaged in the store: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0


def _select(events: dict[str, object], args: argparse.Namespace,
            only: Optional[set[str]] = None) -> list[str]:
    shas = []
    for sha, ev in events.items():
        if only is not None and sha not in only:
            continue
        if args.sensor and getattr(ev, "sensor") != args.sensor:
            continue
        if args.day and not getattr(ev, "ts").startswith(args.day):
            continue
        if args.src_ip and getattr(ev, "src_ip") != args.src_ip:
            continue
        shas.append(sha)
    return shas


def _shas_from_text(data: bytes) -> Optional[list[str]]:
    """stdin holding sha256 lines or JSON events -> their shas; None if it is a raw message."""
    lines = [ln.strip() for ln in data.splitlines() if ln.strip()]
    if not lines:
        return []
    if all(_HEX64.match(ln) for ln in lines):
        return [ln.decode().lower() for ln in lines]
    if all(ln.startswith(b"{") for ln in lines):
        import msgspec
        shas = []
        for ln in lines:
            try:
                obj = msgspec.json.decode(ln)
            except msgspec.DecodeError:
                return None
            if isinstance(obj, dict) and isinstance(obj.get("sha256"), str):
                shas.append(obj["sha256"])
        return shas
    return None


def cmd_export(args: argparse.Namespace) -> int:
    from .store.export import export_messages, export_raw
    from .store.messages import MessageStore

    data_dir = _data_dir(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    selectors = args.sha256 or args.sensor or args.day or args.src_ip or args.campaign or args.all
    if not selectors and not sys.stdin.isatty():
        data = sys.stdin.buffer.read()
        shas = _shas_from_text(data)
        if not data.strip():
            print("spampots export: nothing selected and nothing on stdin: use --sha256, --sensor, --day, "
                  "--src-ip, --campaign or --all, or pipe sha256 lines / events / a message", file=sys.stderr)
            return 2
        if shas == []:
            print("spampots export: the events on stdin name no message (no sha256 field)", file=sys.stderr)
            return 2
        if shas is None:  # a raw message, e.g. from `spampots show SHA`
            import hashlib
            name = hashlib.sha256(data).hexdigest()
            export_raw(data, args.format, out, name)
            print(f"exported 1 message to {out}", file=sys.stderr)
            return 0
    elif not selectors:
        print("spampots export: say what to export: --sha256, --sensor, --day, --src-ip, --campaign, --all, "
              "or pipe sha256 lines / events / a message on stdin", file=sys.stderr)
        return 2
    if not data_dir.is_dir():  # a raw message on stdin (above) needs no store
        print(f"spampots export: no data directory {data_dir}", file=sys.stderr)
        return 2
    events = _message_events(data_dir, "spampots export")
    if selectors and args.sha256:
        shas = list(args.sha256)
    elif args.all and not (args.sensor or args.day or args.src_ip or args.campaign):
        shas = None  # every body in the store, with or without an event left to describe it
    elif selectors:
        only = None
        if args.campaign:
            from .analysis.campaign import campaign_shas, check_key
            try:
                keys = [check_key(k) for k in args.campaign]
            except ValueError as e:
                print(f"spampots export: {e}", file=sys.stderr)
                return 2
            only = campaign_shas(data_dir, keys, cache_dir=getattr(args, "cache_dir", None))
        shas = _select(events, args, only)
        if not shas:
            print("spampots export: no stored message matches the selection", file=sys.stderr)
            return 1
    damaged: list[str] = []
    with MessageStore(data_dir, readonly=True) as store:
        if shas is None:
            shas = list(store.iter_shas())
            if not shas:
                print("spampots export: the store holds no message", file=sys.stderr)
                return 1
        missing = [s for s in shas if s not in store]
        if missing:
            print(f"spampots export: {len(missing)} message(s) not in the store, e.g. {missing[0]}",
                  file=sys.stderr)
        wanted = set(shas)
        n = export_messages(store, [s for s in shas if s in store], args.format, out,
                            events={s: e for s, e in events.items() if s in wanted},  # type: ignore[misc]
                            damaged=damaged)
    if damaged:
        print(f"spampots export: {len(damaged)} damaged message(s) skipped, e.g. {damaged[0]}", file=sys.stderr)
    print(f"exported {n} message(s) to {out}", file=sys.stderr)
    return 0 if not missing and not damaged else 1


def event_names(given: Iterable[str]) -> set[str]:
    """Full event names for `given`: full (spampots.smtp.message) or short (smtp.message) names.
    Raises ValueError naming the unknown ones and the known short names."""
    from .events import EVENT_TYPES

    out, unknown = set(), []
    for name in given:
        full = name if name.startswith("spampots.") else f"spampots.{name}"
        (out.add(full) if full in EVENT_TYPES else unknown.append(name))
    if unknown:
        known = ", ".join(n.removeprefix("spampots.") for n in EVENT_TYPES)
        raise ValueError(f"unknown event name {', '.join(map(repr, unknown))}; known: {known}")
    return out


def event_filter(args: argparse.Namespace) -> "Callable[[Event], bool]":
    """What `events` keeps: --event (full or short names; unknown ones raise ValueError),
    --since (a UTC day or time, ISO 8601), --sensor, --src-ip."""
    wanted = event_names(args.event or ())
    since, sensor, src_ip = args.since or "", args.sensor, args.src_ip

    def keep(ev: "Event") -> bool:
        return ((not wanted or type(ev).__struct_config__.tag in wanted) and ev.ts >= since
                and (sensor is None or ev.sensor == sensor) and (src_ip is None or ev.src_ip == src_ip))

    return keep


def cmd_events(args: argparse.Namespace) -> int:
    from .events import encode
    from .store.catalog import ReadStats, Reader, iter_events

    try:
        keep = event_filter(args)
    except ValueError as e:
        print(f"spampots events: {e}", file=sys.stderr)
        return 2
    data_dir = _data_dir(args)
    if not data_dir.is_dir():
        print(f"spampots events: no data directory {data_dir}", file=sys.stderr)
        return 2
    st = ReadStats()
    since_day = args.since[:10] if args.since else None
    out = sys.stdout.buffer
    try:
        if not args.follow:
            for ev in iter_events(data_dir, since_day=since_day, sensor=args.sensor, stats=st):
                if keep(ev):
                    out.write(encode(ev))
        else:  # until interrupted: the reader follows new lines and segments like tail -F
            reader = Reader(data_dir, sensor=args.sensor, since_day=since_day, stats=st)
            while True:
                got = reader.read_events(1000)
                out.write(b"".join(encode(ev) for _, ev in got if keep(ev)))
                out.flush()
                if reader.caught_up:
                    time.sleep(args.poll)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # | head
        sys.stderr.close()
        return 0
    _tell_damage(st, "spampots events")
    return 0


def cmd_forward(args: argparse.Namespace) -> int:
    """Run the config's [[output]] tables over a data dir (a collector's, say) until stopped."""
    import signal

    from .outputs import run_outputs

    try:
        cfg = _load_config(args)
    except config.ConfigError as e:
        print(f"spampots forward: {e}", file=sys.stderr)
        return 2
    data_dir = _data_dir(args, cfg)
    if not cfg.output:
        print("spampots forward: the config has no [[output]] table (see `spampots example-config`)",
              file=sys.stderr)
        return 2
    if not data_dir.is_dir():
        print(f"spampots forward: no data directory {data_dir}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, args.log_format)

    async def forward() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        for r in await run_outputs(cfg.output, data_dir, stop):
            logging.getLogger("spampots.outputs").info("output %s: %d events sent, %d failures",
                                                       r.name, r.sent, r.failures)

    try:
        asyncio.run(forward())
    except RuntimeError as e:  # an unreadable cursor
        print(f"spampots forward: {e}", file=sys.stderr)
        return 1
    return 0


# -- parser ----------------------------------------------------------------------
def _day(s: str) -> str:
    import datetime as dt

    try:
        if len(s) == 10:  # fromisoformat alone would also take 20240101
            return dt.date.fromisoformat(s).isoformat()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a UTC day (YYYY-MM-DD): {s!r}")


def _since(s: str) -> str:
    """A UTC day or time, as the prefix of event timestamps it is compared with."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(s.removesuffix("Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UTC day or time (2024-03-01, 2024-03-01T12:00): {s!r}") from None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t.date().isoformat() if len(s) == 10 else t.isoformat()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spampots",
        description="Open-proxy / open-relay honeypot sensors that capture spam and never deliver it, "
                    "and the analysis behind Port 25 Management.",
    )
    p.add_argument("--version", action="version", version=f"spampots {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run a sensor",
                       description="Run a sensor: listen on the talk's SOCKS, HTTP-proxy and SMTP ports "
                                   "(or the config's), capture everything, deliver nothing.")
    r.add_argument("--config", "-c", help="TOML config file (see `spampots example-config`)")
    r.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    r.add_argument("--port-offset", type=int, default=0, metavar="N",
                   help="add N to every listener port (run without root: --port-offset 20000)")
    r.add_argument("--address", default=None,
                   help="listen on this address only (e.g. 127.0.0.1 or ::1), overriding the config")
    r.add_argument("--sensor-id", default=None, help="sensor name in every event (default: host name)")
    r.add_argument("--user", default=None,
                   help="when started as root, drop to this user after binding (\"\" keeps root)")
    r.add_argument("--strict", action="store_true", help="fail if any listener cannot be bound")
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes serving the same ports (default: the config's [sensor] workers, "
                        "0 = one per core)")
    r.add_argument("--log-level", choices=config.LOG_LEVELS, default=None,
                   help="stderr detail (default: the config's [sensor] log_level, info)")
    add_log_format(r)
    r.add_argument("--metrics", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on this port ([metrics] address, default 127.0.0.1)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and exit",
                       description="Validate a config file with the rules `run` applies, print what it "
                                   "sets up, and exit (0: good, 2: the errors, one per line).")
    c.add_argument("file", help="the TOML config file")
    c.add_argument("--data-dir", type=Path, default=None,
                   help="also check this data dir as `run` would (ownership, symlinks, writable by "
                        "[sensor] user when run as root); changes nothing")
    c.set_defaults(func=cmd_check_config)

    e = sub.add_parser("example-config", help="print a commented config with every default",
                       description="Print a commented TOML config with every key at its default.")
    e.set_defaults(func=cmd_example_config)

    s = sub.add_parser("show", help="write a captured message's exact bytes to stdout",
                       description="Write the raw bytes of a captured message (by SHA-256, or a unique "
                                   "prefix of at least 8 hex digits) to stdout.")
    s.add_argument("sha256", help="the message's SHA-256, or a unique prefix of 8+ hex digits")
    s.add_argument("--event", action="store_true", help="print its smtp.message event(s) instead")
    add_data_dir_options(s)
    s.set_defaults(func=cmd_show)

    x = sub.add_parser("export", help="export captured messages as mbox or .eml files",
                       description="Export messages byte for byte. Select with the options, or pipe "
                                   "sha256 lines, events, or one raw message (from `show`) on stdin.")
    x.add_argument("--format", choices=("mbox", "eml"), default="eml",
                   help="eml: one file per message, named by its hash (default); mbox: one mbox file")
    x.add_argument("--out", required=True, help="output directory")
    x.add_argument("--sha256", action="append", default=[], help="a message hash (repeatable)")
    x.add_argument("--sensor", help="only messages captured by this sensor")
    x.add_argument("--day", type=_day, help="only messages of this UTC day (YYYY-MM-DD)")
    x.add_argument("--src-ip", help="only messages from this source address")
    x.add_argument("--campaign", action="append", default=[], metavar="ID",
                   help="only messages of this campaign: its id (cmp-…, or a prefix of it) from `spampots "
                        "campaigns` or the report's Campaigns table, or an old subject hash (4+ hex digits); "
                        "repeatable")
    x.add_argument("--all", action="store_true",
                   help="every message in the store (bodies whose events were lost included)")
    add_data_dir_options(x)
    x.set_defaults(func=cmd_export)

    v = sub.add_parser("events", help="print stored events as JSON lines",
                       description="Print the stored events (open segments included) as JSON lines, "
                                   "in write order.")
    v.add_argument("--event", action="append", metavar="NAME",
                   help="only this event, by full or short name (smtp.message, proxy.request, "
                        "session.open, ...; repeatable)")
    v.add_argument("--since", type=_since, metavar="WHEN",
                   help="only events from this UTC day or time on (2024-03-01, 2024-03-01T12:00)")
    v.add_argument("--sensor", help="only this sensor's events")
    v.add_argument("--src-ip", help="only events from this source address")
    v.add_argument("--follow", "-f", action="store_true",
                   help="keep reading: print new events as the sensor writes them (like tail -F), "
                        "until interrupted")
    v.add_argument("--poll", type=float, default=0.5, metavar="S",
                   help="with --follow: look for new events this often when there were none (default 0.5)")
    add_data_dir_options(v)
    v.set_defaults(func=cmd_events)

    fw = sub.add_parser("forward", help="send the store's events to the config's [[output]]s",
                        description="Follow a data dir (a collector's, or a sensor's run without "
                                    "outputs) and feed the config's [[output]] tables, each from its "
                                    "own cursor, until stopped (SIGINT/SIGTERM).")
    add_data_dir_options(fw)
    fw.add_argument("--log-level", choices=config.LOG_LEVELS, default="info", help="stderr detail (default info)")
    add_log_format(fw)
    fw.set_defaults(func=cmd_forward)

    # Command groups that live with their subsystem register themselves.
    from .analysis import cli as analysis_cli
    from .loadgen import cli as loadgen_cli
    from .policy import cli as policy_cli
    from .transport import cli as transport_cli
    from .analysis import campaigns_cli
    from . import prune as prune_cli
    from . import status as status_cli
    from .serve import cli as serve_cli

    for group in (analysis_cli, policy_cli, loadgen_cli, transport_cli, status_cli, prune_cli, campaigns_cli, serve_cli):
        group.register(sub)
    return p


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except config.ConfigError as exc:
        print(f"spampots: bad configuration: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ANALYSIS_MODULES:
            raise
        print(f"spampots {args.command}: needs the analysis extra (no module {exc.name!r}): "
              "pip install 'spampots[analysis]'", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
