"""deploy/systemd: the units are clean for `systemd-analyze verify`, the sensor unit's exposure is
at most 2.0 (`systemd-analyze security --offline=yes`), and the sensor runs the way its unit starts
it, without systemd: an unprivileged user holding only CAP_NET_BIND_SERVICE binds 25 and 80 and
captures mail (issue 11, part 2)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import pwd
import random
import re
import resource
import shlex
import shutil
import smtplib
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Callable

import pytest

import spampots
from clients import ProxySMTP, make_message
from conftest import LAUNCHER, SensorProc, port_free, searchable_dir, wait_listening

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
SENSOR_UNIT = UNITS / "spampots-sensor.service"
SECCOMP_EXEC = Path(__file__).with_name("seccomp_exec.py")
EXPOSURE_TARGET = 2.0
CAP_NET_BIND_SERVICE = 10
CACHE = Path(os.environ.get("SPAMPOTS_TEST_CACHE", "/var/cache/spampots-tests"))

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing: install Debian's systemd "
                                                           "(scripts/test.sh does)")


def _units() -> list[Path]:
    return sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))


def _directives(unit: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (continuation lines are not used in ours)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


# -- systemd-analyze ---------------------------------------------------------------------------
def _verify_root(tmp: Path, units: list[Path]) -> Path:
    """A root for `verify --root`: the machine's own system units (sysinit.target, ...), ours in
    /etc/systemd/system and a stand-in /usr/local/bin/spampots. verify checks that ExecStart is an
    executable; it is the units under test here, not an installation."""
    root = tmp / "root"
    system = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, etc / unit.name)
    exe = root / "usr/local/bin/spampots"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return root


def _verify(root: Path, name: str) -> str:
    r = subprocess.run([ANALYZE, "verify", "--man=no", f"--root={root}", name],
                       capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    return out if r.returncode == 0 else f"exit {r.returncode}: {out}"


@needs_analyze
def test_every_unit_passes_systemd_analyze_verify(tmp_path):
    units = _units()
    assert {u.name for u in units} >= {"spampots-sensor.service", "spampots-collector.service",
                                       "spampots-report.service", "spampots-report.timer"}
    root = _verify_root(tmp_path, units)
    problems = {u.name: out for u in units if (out := _verify(root, u.name))}
    assert problems == {}
    # the check itself sees a wrong key (verify reports it and still exits 0: we judge the output)
    bad = root / "etc/systemd/system/spampots-sensor.service"
    bad.write_text(bad.read_text().replace("[Service]\n", "[Service]\nProtectSystm=strict\n"))
    assert "ProtectSystm" in _verify(root, bad.name)


def _exposure(unit: Path) -> float:
    r = subprocess.run([ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, f"no exposure level in systemd-analyze's output:\n{r.stdout}\n{r.stderr}"
    return float(m.group(1))


@needs_analyze
def test_sensor_unit_exposure_is_at_most_2():
    scores = {u.name: _exposure(u) for u in _units() if u.suffix == ".service"}
    print("systemd-analyze security --offline=yes:", scores)
    assert scores["spampots-sensor.service"] <= EXPOSURE_TARGET, scores
    assert all(s <= EXPOSURE_TARGET for s in scores.values()), scores


def test_sensor_unit_never_runs_as_root_and_holds_one_capability():
    d = _directives(SENSOR_UNIT)
    assert d["User"] != ["root"] and d["User"] and "DynamicUser" not in d
    assert d["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["StateDirectory"] == ["spampots"] and "--data-dir /var/lib/spampots" in d["ExecStart"][0]


# -- the sensor started as the unit starts it -------------------------------------------------
def _loopback_with_25_and_80_free() -> str:
    for _ in range(100):
        host = f"127.{random.randrange(1, 255)}.{random.randrange(0, 256)}.{random.randrange(2, 255)}"
        if port_free(25, host) and port_free(80, host):
            return host
    pytest.skip("no 127.x address with 25 and 80 free")


def _can_run(python: str, user: pwd.struct_passwd) -> bool:
    """Can ``user`` start ``python`` and import the sensor's binary dependencies?"""
    r = subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
                        python, "-c", "import msgspec, uvloop, zstandard, cryptography"],
                       capture_output=True, timeout=60, cwd="/")
    return r.returncode == 0


def _sensor_python(user: pwd.struct_passwd) -> str:
    """An interpreter the unit's user can run. Ours when it can (a system Python); else (a pyenv
    under /root, mode 0700) a venv of the system's Python of the same version, in a world-readable
    cache dir, holding the install's dependencies from pyproject.toml (made once, kept)."""
    if _can_run(sys.executable, user):
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = next((p for p in (f"/usr/bin/{version}", f"/usr/local/bin/{version}") if os.access(p, os.X_OK)), None)
    if system is None:
        pytest.skip(f"{sys.executable} is not readable by {user.pw_name} and there is no /usr/bin/{version} "
                    "to make a venv from")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256("\n".join([system, *deps]).encode()).hexdigest()[:12]
    venv = CACHE / f"sensor-venv-{version}-{key}"
    python = venv / "bin" / "python"
    if not python.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        CACHE.chmod(0o755)
        work = Path(tempfile.mkdtemp(dir=CACHE, prefix=".venv-"))
        subprocess.run([system, "-m", "venv", str(work)], check=True, timeout=300)
        r = subprocess.run([str(work / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            *deps], capture_output=True, text=True, timeout=1200)
        if r.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            pytest.skip(f"could not install the sensor's dependencies into a venv: {r.stderr[-500:]}")
        for dirpath, dirs, files in os.walk(work):
            for n in dirs + files:
                p = Path(dirpath, n)
                if not p.is_symlink():
                    p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
        work.chmod(0o755)
        try:
            work.rename(venv)  # another run may have made it meanwhile: keep theirs
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
    if not _can_run(str(python), user):
        pytest.skip(f"the venv {venv} cannot be run by {user.pw_name}")
    os.utime(venv)  # last used now; venvs of other dependency sets unused for a week go
    for old in CACHE.glob("sensor-venv-*"):
        if old != venv and old.stat().st_mtime < time.time() - 7 * 86400:
            shutil.rmtree(old, ignore_errors=True)
    return str(python)


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _unit_preexec(d: dict[str, list[str]]) -> Callable[[], None]:
    """What systemd does in the child before exec that setpriv does not: UMask=, LimitNOFILE= and
    MemoryDenyWriteExecute= (the kernel's own W^X switch, PR_SET_MDWE, Linux 6.3+; systemd uses a
    seccomp filter with the same effect)."""
    umask = int(d["UMask"][0], 8)
    # capped at our own hard limit: raising it needs CAP_SYS_RESOURCE, which a sandbox may lack
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = min(int(d["LimitNOFILE"][0]), hard) if "LimitNOFILE" in d else None
    mdwe = d.get("MemoryDenyWriteExecute") == ["yes"]

    def pre() -> None:
        os.umask(umask)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if mdwe and _libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed")
    return pre


def _syscalls(filters: list[str]) -> list[str]:
    """The system calls a unit's SystemCallFilter= lines allow (an allow list, then ~ deny lists),
    with the groups expanded by systemd-analyze itself."""
    out = subprocess.run([ANALYZE, "syscall-filter"], capture_output=True, text=True, timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#"):
            members.append(line.strip())

    def expand(items: list[str]) -> set[str]:
        return set().union(*(expand(groups[i]) if i.startswith("@") else {i} for i in items))

    allowed: set[str] = set()
    for f in filters:
        items = f.split()
        if items[0].startswith("~"):
            allowed -= expand([items[0][1:], *items[1:]])
        else:
            allowed |= expand(items)
    return sorted(allowed)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@needs_analyze
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the sensor as another user")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv missing (Debian's util-linux)")
def test_sensor_as_its_unit_starts_it_binds_25_and_80_without_root(tmp_path):
    """The sensor unit's ExecStart, run as an unprivileged user (nobody stands in for spampots)
    with exactly the unit's capabilities (ambient and bounding set: CAP_NET_BIND_SERVICE),
    no_new_privs, its umask, descriptor limit, W^X memory and system-call filter (loaded with
    libseccomp, the unit's groups expanded by systemd-analyze), in a data dir made as
    StateDirectory= makes it: it binds 25 and 80 on a 127.x address and captures mail sent
    directly and through an HTTP CONNECT on 80. Not covered without a running systemd: the
    mount namespace (ProtectSystem=, PrivateTmp=, ...)."""
    d = _directives(SENSOR_UNIT)
    assert d["AmbientCapabilities"] == d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    user = pwd.getpwnam("nobody")
    if not int(_status(os.getpid())["CapBnd"], 16) >> CAP_NET_BIND_SERVICE & 1:
        pytest.skip("CAP_NET_BIND_SERVICE is not in this machine's bounding set")
    python = _sensor_python(user)

    # the code under test, where the user can read it
    home = searchable_dir(tmp_path)
    src = home / "src"
    shutil.copytree(Path(spampots.__file__).parent, src / "spampots",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(LAUNCHER, src / "sensor_launcher.py")
    shutil.copy(SECCOMP_EXEC, src / "seccomp_exec.py")
    assert d["SystemCallErrorNumber"] == ["EPERM"]
    (src / "syscalls.txt").write_text("\n".join(_syscalls(d["SystemCallFilter"])) + "\n")
    for dirpath, dirs, files in os.walk(src):
        for n in dirs + files:
            p = Path(dirpath, n)
            p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    src.chmod(0o755)
    # StateDirectory=spampots with StateDirectoryMode=2750, owned by User=:Group=
    data = home / "state"
    data.mkdir()
    os.chown(data, user.pw_uid, user.pw_gid)
    data.chmod(int(d["StateDirectoryMode"][0], 8))

    host = _loopback_with_25_and_80_free()
    cfg = home / "sensor.toml"
    cfg.write_text(f'[sensor]\nid = "unit-test"\n'
                   f'[[listener]]\nport = 25\nkind = "smtp"\naddress = "{host}"\n'
                   f'[[listener]]\nport = 80\nkind = "http"\naddress = "{host}"\n')
    cfg.chmod(0o644)

    argv = shlex.split(d["ExecStart"][0])
    assert argv[0].endswith("/spampots") and argv[1] == "run"
    subst = {"/etc/spampots/sensor.toml": str(cfg), "/var/lib/spampots": str(data)}
    argv = [python, str(src / "seccomp_exec.py"), str(src / "syscalls.txt"),
            python, str(src / "sensor_launcher.py"), *(subst.get(a, a) for a in argv[1:])]
    setpriv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
               "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
               "--bounding-set=-all,+net_bind_service", "--no-new-privs", "--"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), "LANG": "C.UTF-8"}
    err = tmp_path / "stderr.log"
    proc = subprocess.Popen(setpriv + argv, stdout=subprocess.DEVNULL, stderr=open(err, "wb"), env=env, cwd="/",
                            preexec_fn=_unit_preexec(d))
    sp = SensorProc(data, 0, proc, cfg, err)
    try:
        try:
            wait_listening(25, host, timeout=60, proc=proc)
            wait_listening(80, host, timeout=10, proc=proc)
        except Exception:
            sp.stop()
            pytest.fail(f"sensor did not start:\n{err.read_text()}")
        st = _status(proc.pid)
        assert st["Uid"].split() == [str(user.pw_uid)] * 4 and st["Gid"].split() == [str(user.pw_gid)] * 4
        one = f"{1 << CAP_NET_BIND_SERVICE:016x}"
        assert (st["CapEff"], st["CapPrm"], st["CapAmb"], st["CapBnd"]) == (one, one, one, one)
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"  # 2: a filter is loaded

        with smtplib.SMTP(host, 25, timeout=20) as s:
            s.sendmail("a@spam.example", ["victim@example.org"], make_message(1))
        with ProxySMTP(f"http://{host}:80", "mx.example.org", 25, timeout=20) as s:
            s.sendmail("b@spam.example", ["victim@example.org"], make_message(2))
        msgs = sp.events("spampots.smtp.message", wait_for=2, timeout=20)
    finally:
        code = sp.stop(timeout=30)
    assert code == 0, err.read_text()
    assert sorted(m.subject for m in msgs) == ["Cheap meds #1", "Cheap meds #2"]
    assert {(m.target_host, m.listener_port) for m in msgs} == {(None, 25), ("mx.example.org", 80)}
    for dirpath, dirs, files in os.walk(data):
        for n in dirs + files:
            st_ = Path(dirpath, n).lstat()
            assert st_.st_uid == user.pw_uid and not st_.st_mode & stat.S_IRWXO, Path(dirpath, n)
    assert data.stat().st_uid == user.pw_uid


@needs_analyze
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv missing (Debian's util-linux)")
def test_report_unit_commands_run_under_its_filter_and_wx_memory(tmp_path):
    """The report service's two commands (DuckDB, pyarrow, matplotlib) under its system-call
    filter, W^X memory and umask, without a running systemd, on a small synthetic store."""
    pytest.importorskip("duckdb", reason="the analysis stack is not installed")
    unit = UNITS / "spampots-report.service"
    d = _directives(unit)
    assert d["SystemCallErrorNumber"] == ["EPERM"] and d["MemoryDenyWriteExecute"] == ["yes"]
    allowed = tmp_path / "syscalls.txt"
    allowed.write_text("\n".join(_syscalls(d["SystemCallFilter"])) + "\n")
    data, out = tmp_path / "data", tmp_path / "reports"
    out.mkdir()
    synth = subprocess.run([sys.executable, str(LAUNCHER), "synth", "--messages", "300", "--format", "store",
                            "--out", str(data)], capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))
    for line in d["ExecStart"]:
        argv = shlex.split(line.replace("/var/lib/spampots-reports", str(out)).replace("/var/lib/spampots", str(data)))
        cmd = ["setpriv", "--no-new-privs", "--", sys.executable, str(SECCOMP_EXEC), str(allowed),
               sys.executable, str(LAUNCHER), *argv[1:]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, preexec_fn=_unit_preexec(d))
        assert r.returncode == 0, f"{argv}: {r.stderr[-2000:]}"
    for page in ("report.html", "port25.html"):
        assert (out / page).stat().st_mode & 0o777 == 0o640, page
        assert (out / page).read_text().lstrip().lower().startswith("<!doctype html"), page
