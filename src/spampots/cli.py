"""The ``spampots`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from . import __version__, config

if TYPE_CHECKING:
    from .store.segments import ReadStats

_HEX64 = re.compile(rb"^[0-9a-fA-F]{64}$")


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where events and messages are stored (default: the config's, else "
                        f"{config.ROOT_DATA_DIR} as root, ./var otherwise)")


def _data_dir(args: argparse.Namespace, cfg: Optional[config.Config] = None) -> Path:
    return config.resolve_data_dir(getattr(args, "data_dir", None), cfg)


def _load_config(args: argparse.Namespace) -> config.Config:
    return config.load(Path(args.config) if getattr(args, "config", None) else None)


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
    if args.metrics is not None:
        cfg.metrics = config.MetricsSection(enable=True, address=cfg.metrics.address, port=args.metrics)
    config.validate(cfg)
    logging.basicConfig(
        level=cfg.sensor.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # absolute, but not resolved: a data dir that is a symlink is refused, not followed
    data_dir = Path(os.path.abspath(_data_dir(args, cfg)))
    # The store's writer thread hands results back to the loop; a shorter GIL
    # switch interval cuts that latency (+15-20% capture rate in bench (a)).
    sys.setswitchinterval(0.0005)
    install_uvloop()
    sensor = Sensor(cfg, strict=args.strict)
    try:
        return asyncio.run(sensor.run(data_dir))
    except (StartupError, PrivilegeError) as exc:
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
    from .store.segments import ReadStats, iter_events

    out: dict[str, object] = {}
    st = ReadStats()
    for ev in iter_events(data_dir, stats=st):
        if isinstance(ev, SmtpMessage) and ev.sha256 not in out:
            out[ev.sha256] = ev
    _tell_damage(st, prog)
    return out


def cmd_show(args: argparse.Namespace) -> int:
    from .store.messages import MessageStore

    data_dir = _data_dir(args)
    sha = args.sha256.lower()
    if args.event:
        from .events import encode
        from .store.segments import ReadStats, iter_events
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
            only = campaign_shas(data_dir, keys)
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


def cmd_events(args: argparse.Namespace) -> int:
    from .events import encode
    from .store.segments import ReadStats, iter_events

    wanted = set(args.event or ())
    st = ReadStats()
    for ev in iter_events(_data_dir(args), stats=st):
        if wanted and type(ev).__struct_config__.tag not in wanted:
            continue
        sys.stdout.buffer.write(encode(ev))
    _tell_damage(st, "spampots events")
    return 0


# -- parser ----------------------------------------------------------------------
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
    _add_data_dir(r)
    r.add_argument("--port-offset", type=int, default=0, metavar="N",
                   help="add N to every listener port (run without root: --port-offset 20000)")
    r.add_argument("--address", default=None,
                   help="listen on this address only (e.g. 127.0.0.1 or ::1), overriding the config")
    r.add_argument("--sensor-id", default=None, help="sensor name in every event (default: host name)")
    r.add_argument("--user", default=None,
                   help="when started as root, drop to this user after binding (\"\" keeps root)")
    r.add_argument("--strict", action="store_true", help="fail if any listener cannot be bound")
    r.add_argument("--log-level", choices=config.LOG_LEVELS, default=None)
    r.add_argument("--metrics", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on this port ([metrics] address, default 127.0.0.1)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("file")
    c.add_argument("--data-dir", type=Path, default=None,
                   help="also check this data dir as `run` would (ownership, symlinks, writable by "
                        "[sensor] user when run as root); changes nothing")
    c.set_defaults(func=cmd_check_config)

    e = sub.add_parser("example-config", help="print a commented config with every default")
    e.set_defaults(func=cmd_example_config)

    s = sub.add_parser("show", help="write a captured message's exact bytes to stdout",
                       description="Write the raw bytes of a captured message (by SHA-256) to stdout.")
    s.add_argument("sha256")
    s.add_argument("--event", action="store_true", help="print its smtp.message event(s) instead")
    _add_data_dir(s)
    s.set_defaults(func=cmd_show)

    x = sub.add_parser("export", help="export captured messages as mbox or .eml files",
                       description="Export messages byte for byte. Select with the options, or pipe "
                                   "sha256 lines, events, or one raw message (from `show`) on stdin.")
    x.add_argument("--format", choices=("mbox", "eml"), default="eml")
    x.add_argument("--out", required=True, help="output directory")
    x.add_argument("--sha256", action="append", default=[], help="a message hash (repeatable)")
    x.add_argument("--sensor", help="only messages captured by this sensor")
    x.add_argument("--day", help="only messages of this UTC day (YYYY-MM-DD)")
    x.add_argument("--src-ip", help="only messages from this source address")
    x.add_argument("--campaign", action="append", default=[], metavar="HASH",
                   help="only messages of this campaign: its hash (or a prefix of 4+ hex digits) from the "
                        "report's Campaigns table; repeatable")
    x.add_argument("--all", action="store_true",
                   help="every message in the store (bodies whose events were lost included)")
    _add_data_dir(x)
    x.set_defaults(func=cmd_export)

    v = sub.add_parser("events", help="print stored events as JSON lines")
    v.add_argument("--event", action="append", help="only this event name (repeatable)")
    _add_data_dir(v)
    v.set_defaults(func=cmd_events)

    # Command groups that live with their subsystem register themselves.
    from .analysis import cli as analysis_cli
    from .loadgen import cli as loadgen_cli
    from .policy import cli as policy_cli
    from .transport import cli as transport_cli
    from . import prune as prune_cli
    from . import status as status_cli

    for group in (analysis_cli, policy_cli, loadgen_cli, transport_cli, status_cli, prune_cli):
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
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
