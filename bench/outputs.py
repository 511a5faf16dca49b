"""Events per second through each output, and what a receiver killed and started again costs.
Also the threat-intel outputs (when their libraries are installed): hpfeeds through a
test-started ``hpfeeds-broker`` to a subscriber (confirmed by the broker echoing our events
back, and without), the MISP feed directory and STIX 2.1 bundles (files: no receiver to kill).

    python bench/outputs.py [--events 20000] [--batch 500]

Writes ``--events`` events into a fresh store, then sends them through each output to a real
rsyslogd started here on loopback (its own config and work dir in a temp dir): the JSON lines
file (rsyslog's imfile tails it), syslog over UDP, TCP and TLS (gtls driver, a throwaway
certificate). For each: events per second until the output caught up (the receiver's own
speed included only for the file, which it tails afterwards), then a second run where the
receiver is killed (SIGKILL) half way and started again 2 s later: events lost and events
received twice, counted in what the receiver wrote. Baseline in the same run: the store's
reader alone (read and decode, no output). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from rsyslog import RSYSLOGD, Rsyslog, free_port, wait_lines  # noqa: E402

from spampots import config  # noqa: E402
from spampots.events import SessionOpen, SmtpMessage, stamp  # noqa: E402
from spampots.outputs import Runner  # noqa: E402
from spampots.store.catalog import Reader, iter_event_lines  # noqa: E402
from spampots.store.recorder import Recorder  # noqa: E402

TEMPLATE = 'template(name="rec" type="string" string="%msg%\\n")'


def make_store(data: Path, n: int) -> int:
    with Recorder(data, "bench", fsync=False) as rec:
        for i in range(n):
            common = dict(sensor="bench", session=f"s{i}", src_ip=f"127.0.{i // 250 % 250}.{i % 250 + 1}",
                          src_port=1024 + i % 60000, listener_port=25, protocol="smtp", depth=0)
            ev = (SmtpMessage(mail_from=f"a{i}@example.com", rcpts=["v@example.net"], subject=f"offer {i}",
                              size=100, sha256="0" * 64) if i % 5 == 0 else SessionOpen(listener_addr="127.0.0.1"))
            rec.emit(stamp(ev, **common))
            if i % 1000 == 999:
                rec.flush_sync(30)
    return sum(1 for _ in iter_event_lines(data))


def baseline(data: Path) -> float:
    reader = Reader(data)
    t = time.perf_counter()
    n = 0
    while got := reader.read_events(500):
        n += len(got)
    reader.close()
    return n / (time.perf_counter() - t)


def receiver(tmp: Path, kind: str, got: Path, feed: Path) -> tuple[Rsyslog, dict, int]:
    """(rsyslog, output keys, port to wait for)."""
    port = free_port()
    action = f'ruleset(name="r") {{ action(type="omfile" file="{got}" template="rec") }}\n'
    if kind == "jsonl":
        body = (f'module(load="imfile" mode="inotify")\n{TEMPLATE}\n{action}'
                f'input(type="imfile" file="{feed}" tag="b" ruleset="r" freshStartTail="off")\n')
        return Rsyslog(tmp, body), dict(kind="jsonl", path=str(feed), max_mb=4, keep=10, fsync=True), 0
    if kind == "udp":
        port = free_port(2)
        body = f'module(load="imudp")\n{TEMPLATE}\n{action}input(type="imudp" port="{port}" address="127.0.0.1" ruleset="r")\n'
        return Rsyslog(tmp, body), dict(kind="syslog", transport="udp", port=port), 0
    keys = dict(kind="syslog", transport=kind, port=port)
    mod = 'module(load="imtcp")\n'
    if kind == "tls":
        from test_outputs import _tls_files

        ca, cert, key = _tls_files(tmp)
        mod = (f'global(DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}" '
               f'DefaultNetstreamDriverKeyFile="{key}")\n'
               'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")\n')
        keys.update(ca_file=str(ca), server_name="localhost")
    body = f'{mod}{TEMPLATE}\n{action}input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="r")\n'
    return Rsyslog(tmp, body), keys, port


def run_output(data: Path, keys: dict, name: str, batch: int, kill: "Rsyslog | None", port: int) -> float:
    cfg = config.from_dict({"output": [dict(keys, name=name, batch=batch, poll_s=0.05, retry_max_s=0.5)]})
    config.validate(cfg)
    runner = Runner(cfg.output[0], data)
    total = sum(1 for _ in iter_event_lines(data))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def killer() -> None:
        while runner.sent < total // 2:
            time.sleep(0.001)
        kill.stop(signal.SIGKILL)  # type: ignore[union-attr]
        time.sleep(2.0)
        kill.start(wait_port=port or None)  # type: ignore[union-attr]

    k = threading.Thread(target=killer) if kill is not None else None
    t = time.perf_counter()
    if k is not None:
        k.start()

    async def main() -> None:
        task = asyncio.create_task(runner.run(stop))
        while not (runner.caught_up and runner.sent >= total and (k is None or not k.is_alive())):
            await asyncio.sleep(0.01)
        stop.set()
        await task

    loop.run_until_complete(main())
    loop.close()
    return total / (time.perf_counter() - t)


def count(got: Path, data: Path, wait_for: int, timeout: float) -> tuple[int, int]:
    want = collections.Counter(iter_event_lines(data))
    have = collections.Counter(ln.removeprefix(b"\xef\xbb\xbf") for ln in wait_lines(got, wait_for, timeout))
    lost = sum((want - have).values())
    dup = sum(n - 1 for line, n in have.items() if n > 1)
    return lost, dup


def intel(td: Path, data: Path, n: int, batch: int) -> None:
    """hpfeeds (plain and with its broker killed and back), MISP feed and STIX bundles."""
    import importlib.util

    from test_outputs_intel import Broker, Subscriber, _broker_runs

    if _broker_runs():
        for confirm in (True, False):
            row = [f"{'hpfeeds' + ('' if confirm else '*'):<8}"]
            for run, killing in (("plain", False), ("kill", True)):
                port = free_port()
                broker = Broker(port).start()
                sub = Subscriber(port)
                sub.connected.wait(30)
                keys = dict(kind="hpfeeds", port=port, ident="sensor", secret="s3cret", confirm=confirm)
                try:
                    rate = run_output(data, keys, f"hp-{run}-{confirm}", batch, broker if killing else None, 0)
                    deadline = time.monotonic() + 30
                    while len(sub.got) < n and time.monotonic() < deadline:
                        time.sleep(0.05)
                    time.sleep(0.5)
                    want = collections.Counter(iter_event_lines(data))
                    have = collections.Counter(sub.got)
                    lost = sum((want - have).values())
                    dup = sum(k - 1 for k in have.values() if k > 1)
                finally:
                    sub.stop()
                    broker.stop(signal.SIGKILL)
                row.append(f"{rate:>10,.0f} {n - lost:>9}" if not killing else
                           f"| {'':>12} {rate:>9,.0f} {lost:>5} {dup:>4}")
            print(" ".join(row), flush=True)
        print("hpfeeds*: confirm = false (a batch is taken once sent; the broker keeps nothing)")
    else:
        print("hpfeeds: hpfeeds-broker not installed (pip install 'hpfeeds[broker]')")
    for kind, module in (("misp", "pymisp"), ("stix", "stix2")):
        if importlib.util.find_spec(module) is None:
            print(f"{kind}: {module} not installed")
            continue
        rate = run_output(data, dict(kind=kind, path=str(td / kind)), f"{kind}-plain", batch, None, 0)
        print(f"{kind:<8} {rate:>10,.0f} {'(files)':>9}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--only", default="jsonl,udp,tcp,tls,intel", help="outputs to measure (intel: hpfeeds, misp, stix)")
    args = ap.parse_args()
    if RSYSLOGD is None:
        print("rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls)", file=sys.stderr)
        return 2
    print(machine())
    with tempfile.TemporaryDirectory(prefix="spampots-outputs-") as td:
        data = Path(td) / "data"
        n = make_store(data, args.events)
        print(f"{n} events in the store; batch {args.batch}")
        print(f"baseline: the store's reader alone {baseline(data):,.0f} events/s")
        print(f"{'output':<8} {'events/s':>10} {'received':>9} | killed+back: {'events/s':>9} {'lost':>5} {'dup':>4}")
        for kind in [k for k in ("jsonl", "udp", "tcp", "tls") if k in args.only.split(",")]:
            row = [f"{kind:<8}"]
            for run, killing in (("plain", False), ("kill", True)):
                tmp = Path(td) / f"{kind}-{run}"
                tmp.mkdir()
                got = tmp / "got.log"
                rs, keys, port = receiver(tmp, kind, got, tmp / "feed.jsonl")
                rs.start(wait_port=port or None)
                if kind == "udp":
                    time.sleep(0.5)
                try:
                    rate = run_output(data, keys, f"{kind}-{run}", args.batch, rs if killing else None, port)
                    lost, dup = count(got, data, n, 30 if kind != "udp" else 5)
                    if kind == "jsonl" and killing:  # our side: the files themselves
                        files = sorted(tmp.glob("feed.jsonl*"), key=lambda p: -int(p.suffix[1:] or 0)
                                       if p.suffix[1:].isdigit() else 0)
                        own = tmp / "own.log"
                        own.write_bytes(b"".join(p.read_bytes() for p in files))
                        flost, fdup = count(own, data, n, 1)
                        print(f"jsonl files themselves, receiver killed: lost {flost}, dup {fdup}")
                finally:
                    rs.stop()
                if not killing:
                    row.append(f"{rate:>10,.0f} {n - lost:>9}")
                else:
                    row.append(f"| {'':>12} {rate:>9,.0f} {lost:>5} {dup:>4}")
            print(" ".join(row), flush=True)
        if "intel" in args.only.split(","):
            intel(Path(td), data, n, args.batch)
    print("udp: lossy by nature (no acknowledgement, the receiver's socket buffer overflows); "
          "jsonl: the count is what rsyslog's imfile delivered (a rotation while it is down loses the "
          "rest of the renamed file: imfile follows one name)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
