"""Config values and data dirs that would break the sensor are refused with one line and
exit 2, by `check-config` and by `run`, before any port is bound (issue 10, part 8)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LAUNCHER, pick_offset, searchable_dir

BAD_VALUES = [
    ("sensor", "heartbeat_interval_s", "0"),  # 666,015 heartbeat events in 7 s
    ("sensor", "summary_interval_s", "0"),
    ("limits", "idle_timeout_s", "nan"),  # every connection failed
    ("sensor", "tunnel_greeting_delay_s", "nan"),  # every tunnel failed
    ("sensor", "greeting_delay_s", "inf"),  # no banner, ever
    ("sensor", "greeting_delay_s", "-1"),
    ("store", "segment_max_mb", "0"),  # a new segment for every write
    ("store", "segment_max_age_s", "-inf"),
    ("limits", "session_lifetime_s", "inf"),
    ("limits", "new_sessions_per_s_per_ip", "nan"),
    ("transport.nats", "poll_interval_s", "nan"),
    ("transport.nats", "ack_timeout_s", "inf"),
]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def run_refused(tmp: Path, data_dir: Path, config: str = "", *args: str) -> str:
    """`spampots run` that must stop at start-up: exit 2, one line. A port of the sensor is
    held open here meanwhile, so a sensor that got as far as binding would say so."""
    offset = pick_offset()
    cfg = tmp / "refused.toml"
    cfg.write_text(config)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 1080 + offset))
    blocker.listen()
    try:
        r = _cli("run", "--config", str(cfg), "--data-dir", str(data_dir), "--port-offset", str(offset),
                 "--address", "127.0.0.1", "--strict", *args)
    finally:
        blocker.close()
    assert r.returncode == 2, r.stderr
    line = _one_line(r.stderr)
    assert "already in use" not in line and "listener" not in line
    return line


@pytest.mark.parametrize("section,key,value", BAD_VALUES, ids=[f"{k}={v}" for _, k, v in BAD_VALUES])
def test_bad_number_refused_by_check_config_and_run(tmp_path, section, key, value):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[{section}]\n{key} = {value}\n")
    r = _cli("check-config", str(cfg))
    assert r.returncode == 2 and key in _one_line(r.stderr)
    data = tmp_path / "var"
    assert key in run_refused(tmp_path, data, cfg.read_text())
    assert not data.exists()  # refused before the data dir was even made


def test_defaults_and_floors_pass(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text("[sensor]\nheartbeat_interval_s = 0.5\ngreeting_delay_s = 0\ntunnel_greeting_delay_s = 0\n"
                   "[store]\nsegment_max_mb = 1\n[limits]\nidle_timeout_s = 0.5\n")
    r = _cli("check-config", str(cfg))
    assert r.returncode == 0, r.stderr


def test_config_file_not_utf8(tmp_path):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes(b'[smtp]\nhostname = "caf\xe9.example"\n')
    r = _cli("check-config", str(cfg))
    assert r.returncode == 2 and "not UTF-8" in _one_line(r.stderr)
    assert "not UTF-8" in run_refused(tmp_path, tmp_path / "var", "", "--config", str(cfg))


def test_data_dir_that_is_a_file(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text("")
    data = tmp_path / "var"
    data.write_text("not a directory\n")
    r = _cli("check-config", str(cfg), "--data-dir", str(data))
    assert r.returncode == 2 and "not a directory" in _one_line(r.stderr)
    assert "not a directory" in run_refused(tmp_path, data)
    assert data.read_text() == "not a directory\n"


def test_data_dir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    line = run_refused(tmp_path, tmp_path / "file" / "var")
    assert "not a directory" in line


def _read_only_mount(path: Path) -> bool:
    """A read-only bind mount of ``path`` on itself (root, and a kernel that lets us)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode != 0:
        return False
    if subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(path)], capture_output=True)
        return False
    return True


def test_read_only_data_dir(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text("")
    data = searchable_dir(tmp_path) / "var"
    data.mkdir()
    cleanup: list[str] = []
    if _read_only_mount(data):
        cleanup = ["umount", str(data)]
        cfg.write_text('[sensor]\nuser = ""\n')  # even root cannot write a read-only mount
    elif os.geteuid() == 0:
        # no mount allowed here: a directory the sensor's user may not write
        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
        data.chmod(0o555)
    else:
        data.chmod(0o555)
    try:
        r = _cli("check-config", str(cfg), "--data-dir", str(data))
        assert r.returncode == 2 and "not writable" in _one_line(r.stderr)
        line = run_refused(tmp_path, data, cfg.read_text())
        assert "not writable" in line and str(data) in line
    finally:
        if cleanup:
            subprocess.run(cleanup, check=True)
        data.chmod(0o755)
    assert list(data.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_mode_000_data_dir_refused_as_root(tmp_path):
    """Started as root on a data dir its user cannot enter, the sensor used to come up and
    store nothing; now it says so before binding."""
    nobody = pwd.getpwnam("nobody")
    data = searchable_dir(tmp_path) / "var"
    data.mkdir()
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    data.chmod(0)
    cfg = tmp_path / "ok.toml"
    cfg.write_text("")
    r = _cli("check-config", str(cfg), "--data-dir", str(data))
    assert r.returncode == 2 and "not writable by user 'nobody'" in _one_line(r.stderr)
    line = run_refused(tmp_path, data, "", "--user", "nobody")
    assert "not writable by user 'nobody'" in line
    assert os.listdir(data) == []
    # a store directory the user cannot write is named too
    data.chmod(0o750)
    (data / "events").mkdir(mode=0o755)  # root's, as a root-run older version left it
    line = run_refused(tmp_path, data, "", "--user", "nobody")
    assert "events" in line and "not a directory writable by user 'nobody'" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_data_dir_the_user_cannot_reach_refused(tmp_path):
    """The store opens its index by absolute path after the drop: a data dir under a
    directory the user may not search (pytest's own, 0700) is refused, naming it."""
    blocked = tmp_path / "private"
    blocked.mkdir(mode=0o700)
    line = run_refused(tmp_path, blocked / "var", "", "--user", "nobody")
    assert "not reachable by user 'nobody'" in line and "chmod o+x" in line
    # check-config says so too, for a data dir that exists and for one run would create
    cfg = tmp_path / "ok.toml"
    cfg.write_text("")
    for data in (blocked / "var", blocked / "new"):
        r = _cli("check-config", str(cfg), "--data-dir", str(data))
        assert r.returncode == 2 and "not reachable by user 'nobody'" in _one_line(r.stderr)


def test_one_data_dir_rule_for_every_command(tmp_path, monkeypatch):
    """--data-dir, else the config's, else /var/lib/spampots as root and ./var otherwise:
    the sensor and the commands that read its store look in the same place."""
    from spampots import config

    cfg = config.from_dict({"sensor": {"data_dir": "/srv/cap"}})
    assert config.resolve_data_dir(tmp_path / "x", cfg) == tmp_path / "x"
    assert config.resolve_data_dir(None, cfg) == Path("/srv/cap")
    expected = Path("/var/lib/spampots") if os.geteuid() == 0 else Path("var")
    assert config.resolve_data_dir(None, config.Config()) == expected
    assert config.resolve_data_dir("", None) == expected
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert config.default_data_dir() == Path("var")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert config.default_data_dir() == Path("/var/lib/spampots")
    # what check-config says is where run will store
    toml = tmp_path / "s.toml"
    toml.write_text("")
    r = _cli("check-config", str(toml))
    assert r.returncode == 0, r.stderr
    assert f"data in {str(expected)!r}" in r.stdout
