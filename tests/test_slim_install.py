"""A sensor-only install is small and works; the analysis extra added on top lets an analyst who
only reads a sensor's data dir report on it without writing into it.

Real installs: a fresh venv (the system's python3, so that an unprivileged user can run it)
and pip, as a user would. pip installs from its cache and the machine's wheel store when it
has them (no index is needed for a second run), so this stays well under a minute here.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import pick_offset, start_sensor, wait_listening

ROOT = Path(__file__).resolve().parents[1]
MAX_SLIM_MB = 100
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or ""
ANALYST_UID = 4242  # no passwd entry needed: a reader that owns nothing here
ANALYSIS = ("duckdb", "pyarrow", "numpy", "matplotlib", "geoip2fast", "maxminddb")


def _pip(venv: Path, *args: str) -> None:
    # the host's pip, pointed at the venv (--python): the venv itself carries no pip
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                        "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _site_mb(venv: Path) -> float:
    site = next((venv / "lib").glob("python3*/site-packages"))
    total = 0
    for dirpath, _, files in os.walk(site):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total / 1e6


@pytest.fixture(scope="module")
def venv():
    if not SYSTEM_PYTHON:
        pytest.skip("no system python3 in /usr/bin to build a venv from")
    base = Path(tempfile.mkdtemp(prefix="spampots-slim-"))
    base.chmod(0o755)  # the analyst (another uid) runs this venv's python
    v = base / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(v)], check=True, timeout=120)
    try:
        yield v
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_slim_install_is_small_runs_and_names_the_extra(venv: Path, tmp_path: Path) -> None:
    _pip(venv, str(ROOT))
    mb = _site_mb(venv)
    print(f"sensor-only install: {mb:.1f} MB in site-packages")
    assert mb <= MAX_SLIM_MB, f"{mb:.1f} MB"
    py = str(venv / "bin" / "python")
    missing = subprocess.run([py, "-c", f"import importlib.util as u; print([m for m in {ANALYSIS!r} "
                                        "if u.find_spec(m)])"], capture_output=True, text=True, check=True)
    assert missing.stdout.strip() == "[]"  # the analysis stack is not there at all

    spampots = str(venv / "bin" / "spampots")
    data = tmp_path / "var"
    off = pick_offset()
    err = tmp_path / "run.log"
    proc = subprocess.Popen([spampots, "run", "--data-dir", str(data), "--port-offset", str(off),
                             "--address", "127.0.0.1", "--sensor-id", "slim", "--user", ""],
                            stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
    try:
        wait_listening(25 + off, proc=proc, timeout=30)
        with smtplib.SMTP("127.0.0.1", 25 + off, timeout=30) as s:
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: slim\r\n\r\ncaptured\r\n")
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0, err.read_text()
    ev = subprocess.run([spampots, "events", "--event", "smtp.message", "--data-dir", str(data)],
                        capture_output=True, timeout=60)
    assert ev.returncode == 0 and len(ev.stdout.splitlines()) == 1, ev.stderr

    for cmd in (["report"], ["policy", "port25"], ["notify"], ["compact"]):
        r = subprocess.run([spampots, *cmd, "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (cmd, r.stderr)
        assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert "pip install 'spampots[analysis]'" in r.stderr


def _snapshot(d: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_uid, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def _as(uid: int, gid: int, cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=180, env=env, cwd=cwd)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the sensor as its own user and to switch users")
def test_analyst_reads_a_sensor_data_dir_without_writing_it(venv: Path, tmp_path: Path) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    _pip(venv, f"{ROOT}[analysis]")
    spampots = str(venv / "bin" / "spampots")
    # A sensor started as root drops to nobody: its data dir is nobody's, group-readable (2750/0640).
    sp = start_sensor(tmp_path / "sensor")
    try:
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=30) as s:
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: hello\r\n\r\nfor the analyst\r\n")
        ev = sp.events("spampots.smtp.message", wait_for=1, timeout=20)
        assert len(ev) == 1
    finally:
        sp.stop()
    data = sp.data_dir
    st = data.stat()
    assert st.st_uid != 0 and not st.st_mode & stat.S_IWGRP
    sha = ev[0].sha256
    work = Path(tempfile.mkdtemp(prefix="spampots-analyst-"))
    work.chmod(0o777)  # the analyst's own place: cache and exports
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(work / "cache"), "LANG": "C.UTF-8"}
    try:
        # root first: it must leave nothing in the sensor's dir (no root-owned lake there)
        before = _snapshot(data)
        r = subprocess.run([spampots, "report", "-q", "--data-dir", str(data)], capture_output=True, text=True,
                           timeout=180, env={**env, "XDG_CACHE_HOME": str(tmp_path / "root-cache")})
        assert r.returncode == 0, r.stderr
        assert _snapshot(data) == before
        assert any((tmp_path / "root-cache" / "spampots").glob("*/lake/_manifest.jsonl"))

        # an analyst in the data dir's group, who owns nothing there
        gid = st.st_gid
        cmds = [
            ["report", "-q", "--format", "json"],
            ["policy", "port25", "-q", "--format", "json"],
            ["notify", "-q", "--out", str(work / "notes")],
            ["export", "--all", "--out", str(work / "eml")],
            ["events", "--event", "smtp.message"],
            ["show", sha[:10]],
        ]
        for cmd in cmds:
            r = _as(ANALYST_UID, gid, [spampots, *cmd, "--data-dir", str(data)], env, work)
            assert r.returncode == 0, (cmd, r.stderr)
            assert "Traceback" not in r.stderr, (cmd, r.stderr)
        assert '"emails"' in _as(ANALYST_UID, gid, [spampots, "report", "-q", "--format", "json",
                                                    "--data-dir", str(data)], env, work).stdout
        assert _snapshot(data) == before  # nothing written into the data dir
        lakes = list((work / "cache" / "spampots").glob("*/lake/_manifest.jsonl"))
        assert lakes and all(p.stat().st_uid == ANALYST_UID for p in lakes)
        assert (work / "eml").is_dir() and len(list((work / "eml").glob("*.eml"))) == 1

        # and the sensor's own user still reports in place after root's run (nothing of root's in its way)
        own = _as(st.st_uid, gid, [spampots, "report", "-q", "--data-dir", str(data)], env, work)
        assert own.returncode == 0, own.stderr
        assert (data / "lake" / "_manifest.jsonl").stat().st_uid == st.st_uid
        # with the owner's lake in place, the analyst reads it as a base: the counts stay the same
        again = _as(ANALYST_UID, gid, [spampots, "report", "-q", "--format", "json", "--data-dir", str(data)],
                    env, work)
        assert again.returncode == 0 and '"emails": 1' in again.stdout.replace('"emails":1', '"emails": 1')
    finally:
        shutil.rmtree(work, ignore_errors=True)
