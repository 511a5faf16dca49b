"""Outputs against their real receivers: a test-started rsyslogd on loopback.

Every event in the store must reach the receiver exactly once: across the JSON lines file's
rotations (rsyslog's imfile tails it), across output restarts and a crash between a write
and its cursor, and across a receiver killed and started again (syslog over TCP and TLS).
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rsyslog import RSYSLOGD, Rsyslog, free_port, wait_lines
from spampots import config
from spampots.events import SessionOpen, SmtpMessage, stamp
from spampots.outputs import Runner
from spampots.outputs.syslog import escape, format_message
from spampots.store.catalog import iter_event_lines
from spampots.store.recorder import Recorder

needs_rsyslog = pytest.mark.skipif(RSYSLOGD is None, reason="rsyslogd not installed (scripts/test.sh installs it)")
HOSTILE = 'evil"] [x@1 y="z\\ ]]\\"'  # tries to close the value, the element, and escape the escape


def emit(rec: Recorder, start: int, n: int, sensor: str = "edge") -> None:
    for i in range(start, start + n):
        common = dict(sensor=sensor, session=f"{sensor}-s{i}", src_ip=f"127.0.{i // 250 % 250}.{i % 250 + 1}",
                      src_port=1024 + i, listener_port=25, protocol="smtp", depth=0)
        rec.emit(stamp(SessionOpen(listener_addr="127.0.0.1"), **common))
        if i % 7 == 0:
            rec.emit(stamp(SmtpMessage(mail_from=f"a{i}@example.com", rcpts=["v@example.net"], helo=HOSTILE,
                                       subject=HOSTILE, size=10, sha256="0" * 64), **common))
    rec.flush_sync(10)


def stored(data: Path) -> collections.Counter:
    return collections.Counter(iter_event_lines(data))


class Background:
    """A Runner's own asyncio loop in a thread, as the sensor or `spampots forward` runs it."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.loop = asyncio.new_event_loop()
        self.stop_ev: asyncio.Event
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.stop_ev = asyncio.Event()
            ready.set()
            self.loop.run_until_complete(runner.run(self.stop_ev))

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        ready.wait(10)

    def caught_up(self, timeout: float = 60.0) -> bool:
        """Everything stored before the call was taken: two reads since found nothing new."""
        seen = self.runner.idle_reads
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.runner.idle_reads >= seen + 2 and self.runner.caught_up:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.loop.close()


def output(**kw) -> object:
    cfg = config.from_dict({"output": [dict(kw, poll_s=0.05, retry_max_s=0.5)]})
    config.validate(cfg)
    return cfg.output[0]


def test_syslog_message_escapes_attacker_strings():
    ev = stamp(SmtpMessage(helo=HOSTILE, subject="x" * 5000, mail_from="a@b"), sensor="edge", session="s1",
               src_ip="127.0.0.1", src_port=1, listener_port=25, protocol="smtp", depth=0)
    msg = format_message(ev, b'{"json":1}', 16, "spampots", 1024)
    head, _, body = msg.partition(b"\xef\xbb\xbf")
    assert body == b'{"json":1}'
    assert head.startswith(b"<134>1 ") and b" edge spampots - smtp.message [spampots@32473 " in head
    assert f'helo="{escape(HOSTILE, 1024)}"'.encode() in head
    # read as RFC 5424 says: the element ends at the first ']' outside a quoted value
    sd = head.decode()[head.decode().index("["):]
    params, i, quoted = {}, 1, False
    name, value = "", None
    while True:
        c = sd[i]
        if value is None:
            if c == "]":
                break
            if c == "=":
                value, quoted = "", False
            elif c != " ":
                name += c
            i += 1
            continue
        if c == '"' and not quoted:
            quoted = True
        elif c == "\\":
            i += 1
            value += sd[i]
        elif c == '"':
            params[name], name, value = value, "", None
        else:
            value += c
        i += 1
    assert sd[i:] == "] " and params["helo"] == HOSTILE and params["session"] == "s1"
    assert len(params["subject"]) == 1024
    assert len(escape("é" * 2000, 1024).encode()) <= 1024  # cut on a character, within the bound


def paced(runner: Runner, files: Path, got: Path) -> Runner:
    """After each write, wait until the tailer has read every line in the files: imfile follows
    one name, so a file rotated before it read the end loses that end (documented in the
    README). Pacing makes the test judge exactly-once delivery, not a busy machine's speed."""
    write = runner.output.write

    def write_then_wait(batch):
        write(batch)
        on_disk = sum(len(f.read_bytes().splitlines()) for f in files.parent.glob(files.name + "*"))
        assert len(wait_lines(got, on_disk)) >= on_disk, "the tailer did not catch up"

    runner.output.write = write_then_wait
    return runner


@needs_rsyslog
def test_jsonl_file_through_rsyslog_imfile_exactly_once_across_rotations(tmp_path):
    data, got = tmp_path / "data", tmp_path / "got.log"
    out = data / "outputs" / "soc.jsonl"
    out.parent.mkdir(parents=True)
    rs = Rsyslog(tmp_path, f"""
module(load="imfile" mode="inotify")
template(name="raw" type="string" string="%msg%\\n")
ruleset(name="r") {{ action(type="omfile" file="{got}" template="raw") }}
input(type="imfile" file="{out}" tag="spampots" ruleset="r" freshStartTail="off")
""").start()
    try:
        # small files, many rotations; all kept, so a tailer slowed down by a busy machine finds them
        cfg = output(kind="jsonl", name="soc", path="outputs/soc.jsonl", max_mb=0.02, keep=100, batch=40)
        with Recorder(data, "edge", segment_max_bytes=1 << 14) as rec:
            emit(rec, 0, 300)
            bg = Background(paced(Runner(cfg, data), out, got))
            assert bg.caught_up()
            emit(rec, 300, 300)  # while it runs: followed live, across new segments
            assert bg.caught_up()
            bg.stop()
            emit(rec, 600, 200)  # while no output runs
            runner = paced(Runner(cfg, data), out, got)  # a restart: from its cursor, nothing twice
            # a crash after a write, before the cursor moved: the batch is in the file, not committed
            runner.output.start()
            runner.output.write(runner.reader.read_events(40))
            runner.output.stop()
            runner.reader.close()
            bg = Background(paced(Runner(cfg, data), out, got))
            assert bg.caught_up()
            bg.stop()
        want = stored(data)
        assert sum(want.values()) > 800
        lines = wait_lines(got, sum(want.values()))
        assert len(list(out.parent.glob("soc.jsonl.*"))) >= 5, "rotated"
        have = collections.Counter(lines)
        lost, dup = sum((want - have).values()), sum((have - want).values())
        assert (lost, dup) == (0, 0) and have == want  # every event, exactly once, through rotations
    finally:
        rs.stop()


SYSLOG_TEMPLATE = 'template(name="rec" type="string" string="%hostname%\\t%app-name%\\t%msgid%\\t%structured-data%\\t%msg%\\n")'


def _received(path: Path, want: int) -> list[list[str]]:
    return [ln.decode().split("\t") for ln in wait_lines(path, want)]


def _json_of(rows: list[list[str]]) -> collections.Counter:
    return collections.Counter(r[4].removeprefix("\ufeff").encode() for r in rows)


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    ca_key, ca, key, csr, cert = (tmp / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=spampots test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext = tmp / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
        "-extfile", ext)
    return ca, cert, key


@needs_rsyslog
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_syslog_stream_every_event_once_when_the_receiver_dies_and_comes_back(tmp_path, transport):
    data, got = tmp_path / "data", tmp_path / "got.log"
    port = free_port()
    if transport == "tls":
        ca, cert, key = _tls_files(tmp_path)
        tls = (f'global(DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}" '
               f'DefaultNetstreamDriverKeyFile="{key}")\n'
               'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")\n')
        extra = dict(ca_file=str(ca), server_name="localhost")
    else:
        tls, extra = 'module(load="imtcp")\n', {}
    rs = Rsyslog(tmp_path, f"""{tls}{SYSLOG_TEMPLATE}
ruleset(name="r") {{ action(type="omfile" file="{got}" template="rec") }}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="r")
""").start(wait_port=port)
    bg = None
    try:
        cfg = output(kind="syslog", transport=transport, port=port, batch=100, **extra)
        with Recorder(data, "edge", segment_max_bytes=1 << 15) as rec:
            emit(rec, 0, 300)
            bg = Background(Runner(cfg, data))
            assert bg.caught_up()
            n = sum(stored(data).values())
            assert len(_received(got, n)) == n
            rs.stop(signal.SIGKILL)  # the receiver dies
            emit(rec, 300, 300)  # capture goes on; the output fails and retries
            deadline = time.monotonic() + 30
            while bg.runner.failures == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert bg.runner.failures > 0
            rs.start(wait_port=port)  # ...and comes back
            assert bg.caught_up()
            emit(rec, 600, 100)
            assert bg.caught_up()
            bg.stop()
            bg = None
        want = stored(data)
        rows = _received(got, sum(want.values()))
        assert _json_of(rows) == want  # lost 0, duplicated 0
        assert {r[0] for r in rows} == {"edge"} and {r[1] for r in rows} == {"spampots"}
        msg = next(r for r in rows if r[2] == "smtp.message")
        assert f'helo="{escape(HOSTILE, 1024)}"' in msg[3]  # the hostile value stayed a value
        assert msg[3].startswith("[spampots@32473 ") and 'event="spampots.smtp.message"' in msg[3]
    finally:
        if bg is not None:
            bg.stop()
        rs.stop()


@needs_rsyslog
def test_syslog_udp_delivers_on_loopback(tmp_path):
    data, got = tmp_path / "data", tmp_path / "got.log"
    port = free_port(socket.SOCK_DGRAM)
    rs = Rsyslog(tmp_path, f"""module(load="imudp")
{SYSLOG_TEMPLATE}
ruleset(name="r") {{ action(type="omfile" file="{got}" template="rec") }}
input(type="imudp" port="{port}" address="127.0.0.1" ruleset="r")
""").start()
    try:
        time.sleep(0.5)  # imudp has no way to say it listens
        cfg = output(kind="syslog", transport="udp", port=port, batch=50)
        with Recorder(data, "edge") as rec:
            emit(rec, 0, 200)
        runner = Runner(cfg, data)
        runner.output.start()
        while runner.step():
            time.sleep(0.01)  # a gentle sender: UDP drops what the receiver cannot take
        runner.output.stop()
        want = stored(data)
        assert _json_of(_received(got, sum(want.values()))) == want
    finally:
        rs.stop()


def test_jsonl_rotation_keeps_the_newest_files(tmp_path):
    cfg = output(kind="jsonl", path="f.jsonl", max_mb=0.004, keep=2, batch=10)
    with Recorder(tmp_path, "edge") as rec:
        emit(rec, 0, 120)
    runner = Runner(cfg, tmp_path)
    runner.output.start()
    while runner.step():
        pass
    runner.output.stop()
    files = sorted(p.name for p in tmp_path.glob("f.jsonl*"))
    assert files == ["f.jsonl", "f.jsonl.1", "f.jsonl.2"]
    lines = [ln for n in ("f.jsonl.2", "f.jsonl.1", "f.jsonl") for ln in (tmp_path / n).read_bytes().splitlines()]
    everything = list(iter_event_lines(tmp_path))
    assert lines == everything[len(everything) - len(lines):]  # the newest, in order, none twice
    assert all((tmp_path / n).stat().st_size <= 4200 for n in files)


def test_forward_command_and_example_config(tmp_path):
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys; from spampots.cli import main; sys.exit(main())", "example-config"],
                         capture_output=True, text=True, check=True).stdout
    for key in ("kind = \"jsonl\"", "max_mb", "keep", "kind = \"syslog\"", "transport", "ca_file", "max_value"):
        assert key in out
    data = tmp_path / "data"
    with Recorder(data, "c1") as rec:
        emit(rec, 0, 50, sensor="c1")
    with Recorder(data, "c2") as rec:  # a collector's store holds many sensors
        emit(rec, 0, 50, sensor="c2")
    conf = tmp_path / "fwd.toml"
    conf.write_text('[[output]]\nkind = "jsonl"\npath = "feed.jsonl"\npoll_s = 0.05\n')
    p = subprocess.Popen([sys.executable, "-c", "import sys; from spampots.cli import main; sys.exit(main())", "forward",
                          "--data-dir", str(data), "--config", str(conf)])
    try:
        want = stored(data)
        feed = data / "feed.jsonl"
        assert collections.Counter(wait_lines(feed, sum(want.values()))) == want
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    assert json.loads((data / "outputs" / "jsonl.cursor").read_bytes())["done"]


def test_sensor_runs_its_outputs_and_sends_the_last_events_at_stop(tmp_path):
    """A real sensor with a jsonl [[output]]: SMTP mail shows up in the file, and what was
    captured just before a clean stop too (the output drains before the sensor exits)."""
    import smtplib

    from conftest import start_sensor

    port = free_port()
    got = tmp_path / "syslog.log"
    rs = Rsyslog(tmp_path / "rs", f"""module(load="imtcp")
{SYSLOG_TEMPLATE}
ruleset(name="r") {{ action(type="omfile" file="{got}" template="rec") }}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="r")
""") if RSYSLOGD else None
    conf = '[[output]]\nkind = "jsonl"\npoll_s = 0.05\n'
    if rs is not None:
        rs.start(wait_port=port)
        conf += f'[[output]]\nkind = "syslog"\ntransport = "tcp"\nport = {port}\npoll_s = 0.05\n'
    sp = start_sensor(tmp_path / "s", config=conf, wait_port=25)
    try:
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=30) as c:
            c.sendmail("a@example.com", ["v@example.net"], b"Subject: feed me\r\n\r\nhello\r\n")
        assert sp.stop() == 0
        want = stored(sp.data_dir)
        assert any(b"spampots.sensor.stop" in ln for ln in want)
        feed = sp.data_dir / "outputs" / "jsonl.jsonl"
        assert collections.Counter(feed.read_bytes().splitlines()) == want
        if rs is not None:
            assert _json_of(_received(got, sum(want.values()))) == want
    finally:
        sp.stop()
        if rs is not None:
            rs.stop()
