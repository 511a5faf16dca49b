"""The command line never leaves an operator or an analyst guessing: help on every option,
one clear line and a non-zero exit on bad input, a data dir in use named with its pid, start-up
lines, JSON logs, and a word from both sides when PROXY headers come from an untrusted address."""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import socket
import subprocess
import sys
import time

import pytest

from conftest import LAUNCHER, start_sensor
from spampots.cli import build_parser

ENV = dict(os.environ)


def cli(*args: str, stdin: bytes = b"", timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCHER), *args], input=stdin, capture_output=True,
                          timeout=timeout, env=ENV)


def _missing_help(p: argparse.ArgumentParser, path: str) -> list[str]:
    out = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    out.append(f"{path} {name}")
                if not sub.description and not helps.get(name):
                    out.append(f"{path} {name} (no description)")
                out += _missing_help(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and (not action.help or action.help == argparse.SUPPRESS):
            out.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return out


def test_every_subcommand_and_option_has_a_help_line() -> None:
    assert _missing_help(build_parser(), "spampots") == []


def _send_mail(port: int, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("a@example.org", ["b@example.net"], body)


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A sensor that captured two messages, stopped; its data dir and the messages' hashes."""
    import hashlib

    sp = start_sensor(tmp_path_factory.mktemp("captured"))
    bodies = [b"Subject: one\r\n\r\nfirst body\r\n", b"Subject: two\r\n\r\nsecond body\r\n"]
    try:
        for b in bodies:
            _send_mail(sp.port(25), b)
        assert len(sp.events("spampots.smtp.message", wait_for=2, timeout=20)) == 2
    finally:
        sp.stop()
    shas = [e.sha256 for e in sp.events("spampots.smtp.message")]
    return sp.data_dir, shas, {hashlib.sha256(b).hexdigest() for b in bodies}


def test_show_takes_a_unique_prefix_and_refuses_short_or_unknown_ones(captured) -> None:
    data, shas, _ = captured
    full = cli("show", shas[0], "--data-dir", str(data))
    assert full.returncode == 0 and full.stdout
    short = cli("show", shas[0][:8], "--data-dir", str(data))
    assert short.returncode == 0, short.stderr
    assert short.stdout == full.stdout
    ev = cli("show", shas[0][:12].upper(), "--event", "--data-dir", str(data))
    assert ev.returncode == 0 and json.loads(ev.stdout.splitlines()[0])["sha256"] == shas[0]
    too_short = cli("show", shas[0][:7], "--data-dir", str(data))
    assert too_short.returncode == 2 and b"at least 8 hex digits" in too_short.stderr
    other = "0" * 8 if not any(s.startswith("0" * 8) for s in shas) else "f" * 8
    unknown = cli("show", other, "--data-dir", str(data))
    assert unknown.returncode == 2 and b"no message whose hash starts with" in unknown.stderr
    assert b"Traceback" not in too_short.stderr + unknown.stderr


def test_events_accepts_short_names_and_refuses_unknown_ones(captured) -> None:
    data, shas, _ = captured
    short = cli("events", "--event", "smtp.message", "--data-dir", str(data))
    full = cli("events", "--event", "spampots.smtp.message", "--data-dir", str(data))
    assert short.returncode == full.returncode == 0
    assert short.stdout == full.stdout and len(short.stdout.splitlines()) == 2
    bad = cli("events", "--event", "smtp.mesage", "--data-dir", str(data))
    assert bad.returncode == 2 and bad.stdout == b""
    assert b"unknown event name 'smtp.mesage'" in bad.stderr and b"smtp.message" in bad.stderr


def test_export_refuses_a_bad_day_and_an_empty_stdin(captured, tmp_path) -> None:
    data, _, _ = captured
    for day in ("2024-1-5", "20240105", "yesterday", "2024-13-01"):
        r = cli("export", "--out", str(tmp_path / "out"), "--day", day, "--data-dir", str(data))
        assert r.returncode == 2 and b"YYYY-MM-DD" in r.stderr, (day, r.stderr)
    r = cli("export", "--out", str(tmp_path / "out"), "--data-dir", str(data), stdin=b"")
    assert r.returncode == 2 and b"nothing on stdin" in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    ok = cli("export", "--out", str(tmp_path / "out2"), "--day", time.strftime("%Y-%m-%d", time.gmtime()),
             "--data-dir", str(data))
    assert ok.returncode == 0 and len(list((tmp_path / "out2").glob("*.eml"))) == 2


def test_readers_take_the_data_dir_from_config(captured, tmp_path) -> None:
    data, _, _ = captured
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[sensor]\ndata_dir = "{data}"\n')
    by_config = cli("events", "--event", "smtp.message", "--config", str(conf))
    assert by_config.returncode == 0 and len(by_config.stdout.splitlines()) == 2
    # --data-dir still wins over the config
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("events", "--config", str(conf), "--data-dir", str(empty))
    assert r.returncode == 0 and r.stdout == b""


def test_report_on_a_foreign_or_empty_dir_is_an_error(tmp_path) -> None:
    foreign = tmp_path / "home"
    (foreign / "Documents").mkdir(parents=True)
    r = cli("report", "--data-dir", str(foreign))
    assert r.returncode == 2 and b"not a spampots data dir" in r.stderr and r.stdout == b""
    assert not (foreign / "lake").exists()  # nothing written into a dir that is not ours
    empty = tmp_path / "empty"
    (empty / "events").mkdir(parents=True)
    r = cli("report", "--data-dir", str(empty))
    assert r.returncode == 1 and b"no events stored" in r.stderr and r.stdout == b""
    r = cli("report", "--data-dir", str(tmp_path / "missing"))
    assert r.returncode == 2 and b"no data directory" in r.stderr


@pytest.mark.parametrize("toml, words", [
    ('[sensor]\nid = "sensör"\n', "sensor.id"),
    ('[sensor]\nid = "-lead"\n', "sensor.id"),
    ('[[listener]]\nport = 25\nkind = "smtp"\npersona = "postfx"\n', "persona for kind 'smtp'"),
    ('[[listener]]\nport = 8080\nkind = "http"\npersona = "postfix"\n', "persona for kind 'http'"),
])
def test_check_config_applies_the_rules_run_applies(tmp_path, toml: str, words: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(toml)
    checked = cli("check-config", str(conf))
    assert checked.returncode == 2 and words.encode() in checked.stderr, checked.stderr
    run = cli("run", "--config", str(conf), "--data-dir", str(tmp_path / "var"), "--port-offset", "20000",
              "--address", "127.0.0.1", timeout=60)
    assert run.returncode == 2 and b"Traceback" not in run.stderr and words.encode() in run.stderr


def test_a_good_listener_persona_passes(tmp_path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[[listener]]\nport = 25\nkind = "smtp"\npersona = "exim"\n'
                    '[[listener]]\nport = 8080\nkind = "http"\npersona = "squid"\n')
    assert cli("check-config", str(conf)).returncode == 0


def test_second_run_names_the_process_that_holds_the_data_dir(tmp_path) -> None:
    sp = start_sensor(tmp_path / "first", args=("--log-format", "json"))
    try:
        second = cli("run", "--data-dir", str(sp.data_dir), "--port-offset", str(sp.offset + 7),
                     "--address", "127.0.0.1", "--sensor-id", "test-sensor", "--log-level", "warning", timeout=60)
        assert second.returncode == 2
        lines = second.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        assert f"in use by process {sp.proc.pid}" in lines[0]
        # the start-up lines: one per listener group, and where the data goes, as JSON lines
        deadline = time.time() + 10
        while "sensor test-sensor up" not in sp.stderr() and time.time() < deadline:
            time.sleep(0.1)
        records = [json.loads(line) for line in sp.stderr().splitlines() if line.strip()]
        assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
        msgs = [r["message"] for r in records]
        for kind, port in (("socks", 1080), ("http", 8080), ("smtp", 25)):
            line = next(m for m in msgs if m.startswith(f"listening for {kind} on 127.0.0.1"))
            assert str(port + sp.offset) in line.split()
        assert any(f"data in {sp.data_dir}" in m for m in msgs)
    finally:
        sp.stop()


def _proxy_v1(src: str) -> bytes:
    return f"PROXY TCP4 {src} 192.0.2.10 40000 1080\r\n".encode()


def test_untrusted_proxy_header_warns_sensor_and_loadgen(tmp_path) -> None:
    sp = start_sensor(tmp_path, config='[proxy_protocol]\ntrusted = ["127.0.0.1"]\n'
                                       '[limits]\nnew_sessions_per_s_per_ip = 1000\n')
    try:
        # from an untrusted loopback address: the header is the client's own bytes
        with socket.create_connection(("127.0.0.1", sp.port(8080)), timeout=10,
                                      source_address=("127.0.0.9", 0)) as s:
            s.sendall(_proxy_v1("198.51.100.7") + b"GET http://example.com/ HTTP/1.0\r\n\r\n")
            s.settimeout(10)
            assert s.recv(100).startswith(b"HTTP/1.")
        deadline = time.time() + 10
        while "[proxy_protocol] trusted" not in sp.stderr() and time.time() < deadline:
            time.sleep(0.1)
        warned = [ln for ln in sp.stderr().splitlines() if "[proxy_protocol] trusted" in ln]
        assert warned and "WARNING" in warned[0] and "127.0.0.9" in warned[0]
        # loadgen from its default 127.1.x sources: its sessions fail, and it says why
        lg = cli("loadgen", "--port-offset", str(sp.offset), "--proxy-protocol", "v1", "--count", "40",
                 "--sources", "20", "--timeout", "10", "--progress", "off", "-q", "--seed", "3")
        assert lg.returncode == 0
        assert b"[proxy_protocol] trusted" in lg.stderr, lg.stderr
        # rate limited: a flood of such sessions is not a flood of lines
        n = sum(1 for ln in sp.stderr().splitlines() if "[proxy_protocol] trusted" in ln)
        assert n <= 12
    finally:
        sp.stop()


def test_loadgen_says_nothing_when_the_sensor_trusts_it(tmp_path) -> None:
    sp = start_sensor(tmp_path, config='[proxy_protocol]\ntrusted = ["127.0.0.0/8"]\n'
                                       '[limits]\nnew_sessions_per_s_per_ip = 1000\n')
    try:
        lg = cli("loadgen", "--port-offset", str(sp.offset), "--proxy-protocol", "v1", "--count", "30",
                 "--sources", "10", "--timeout", "10", "--progress", "off", "-q", "--seed", "3")
        assert lg.returncode == 0 and b"[proxy_protocol] trusted" not in lg.stderr, lg.stderr
        assert "[proxy_protocol] trusted" not in sp.stderr()
    finally:
        sp.stop()


def test_run_does_not_import_the_analysis_stack() -> None:
    code = ("import sys; from spampots.cli import build_parser; build_parser().parse_args(['run']); "
            "import spampots.sensor.server, spampots.transport.shipper; "
            "print(sorted(m for m in ('duckdb', 'pyarrow', 'numpy', 'matplotlib', 'geoip2fast', 'maxminddb') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_cache_dir_takes_the_derived_files(captured, tmp_path) -> None:
    data, _, _ = captured
    before = sorted(p.name for p in data.iterdir())
    r = cli("compact", "-q", "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    manifests = list((tmp_path / "cache").glob("*/lake/_manifest.jsonl"))
    assert len(manifests) == 1 and manifests[0].read_text().count("\n") >= 1
    assert sorted(p.name for p in data.iterdir()) == before  # no lake/ in the data dir
    r = cli("report", "-q", "--format", "json", "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 0 and json.loads(r.stdout)["meta"]["data_dir"] == str(data)


def test_cache_lake_reads_the_data_dirs_own_lake_once(tmp_path) -> None:
    """An analyst's cache lake and the owner's lake in the data dir: every event counted once,
    whichever compacted a segment first."""
    from spampots.analysis.lake import Lake

    data = tmp_path / "data"
    r = cli("synth", "-q", "--messages", "300", "--days", "3", "--sensors", "2", "--format", "store",
            "--out", str(data))
    assert r.returncode == 0, r.stderr
    cache = tmp_path / "cache"

    def emails(lake: Lake) -> int:
        return lake.connect().execute("SELECT count(*) FROM smtp_message").fetchone()[0]

    analyst = Lake(data, cache_dir=cache)
    analyst.compact()
    total = emails(analyst)
    assert total > 0 and not (data / "lake").exists()
    owner = Lake(data)  # root on its own dir: in place
    assert owner.root == data / "lake"
    owner.compact()
    again = Lake(data, cache_dir=cache)
    assert again.base == data / "lake"
    assert emails(again) == total  # the cache's batches the base supersedes are not read
    again.compact()  # and are dropped: nothing of them is left to double-count
    assert not list(again.root.glob("*/day=*/*.parquet"))
    assert emails(Lake(data, cache_dir=cache)) == total


def _two_bodies_sharing_a_prefix() -> list[bytes]:
    """Two bodies whose SHA-256 share their first 8 hex digits (a birthday search: ~2^16 tries)."""
    import hashlib

    seen: dict[str, bytes] = {}
    for i in range(2_000_000):
        body = b"Subject: %d\r\n\r\nbody\r\n" % i
        key = hashlib.sha256(body).hexdigest()[:8]
        if key in seen:
            return [seen[key], body]
        seen[key] = body
    raise AssertionError("no collision found")


def test_show_lists_the_candidates_of_an_ambiguous_prefix(tmp_path) -> None:
    import hashlib

    from spampots.store.messages import MessageStore

    data = tmp_path / "var"
    bodies = _two_bodies_sharing_a_prefix()
    shas = [hashlib.sha256(b).hexdigest() for b in bodies]
    with MessageStore(data, "t") as store:
        for body in bodies:
            store.put(body)
        store.sync()
    r = cli("show", shas[0][:8].upper(), "--data-dir", str(data))
    assert r.returncode == 2 and r.stdout == b""
    assert b"ambiguous" in r.stderr and all(s.encode() in r.stderr for s in shas)
    n = next(k for k in range(9, 64) if shas[0][:k] != shas[1][:k])
    one = cli("show", shas[1][:n], "--data-dir", str(data))
    assert one.returncode == 0 and one.stdout == bodies[1]
