"""Fixtures that run a real sensor process on loopback."""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from spampots.config import HTTP_PORTS, SMTP_PORTS, SOCKS_PORTS

ALL_PORTS = SOCKS_PORTS + HTTP_PORTS + SMTP_PORTS
LAUNCHER = Path(__file__).with_name("sensor_launcher.py")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def run_on_a_terminal(cmd: list[str], timeout: float = 300, columns: int = 120) -> str:
    """Run `spampots CMD...` with stdout and stderr on a pseudo-terminal (as a user at a
    terminal sees it); returns all it wrote there. Fails if the command does."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": str(columns)}
    proc = subprocess.Popen([sys.executable, "-m", "spampots.cli", *cmd], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=timeout) == 0, out[-2000:]
    return out.decode(errors="replace")


def pick_offset() -> int:
    for _ in range(200):
        # below the ephemeral range (32768+), where our own client sockets could take a port
        off = random.randrange(2000, 24000, 7)
        if all(port_free(p + off) for p in ALL_PORTS):
            return off
    raise RuntimeError("no free port offset")


@dataclass
class SensorProc:
    data_dir: Path
    offset: int
    proc: subprocess.Popen
    config_path: Optional[Path] = None
    stderr_path: Optional[Path] = None
    extra_ports: dict[str, int] = field(default_factory=dict)

    def port(self, talk_port: int) -> int:
        return talk_port + self.offset

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""

    def events(self, name: Optional[str] = None, wait_for: int = 0, timeout: float = 5.0,
               where: Optional[Callable[[Any], bool]] = None) -> list:
        """Events read back from the store (open segments included): those named ``name`` and
        passing ``where``, waiting until ``wait_for`` of them are there (a test's own probes,
        such as the listening check's connection, must not count towards that number)."""
        from spampots.events import name_of
        from spampots.store.segments import iter_events

        deadline = time.time() + timeout
        while True:
            evs = [e for e in iter_events(self.data_dir)
                   if (name is None or name_of(e) == name) and (where is None or where(e))]
            if len(evs) >= wait_for or time.time() > deadline:
                return evs
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()


def wait_listening(port: int, host: str = "127.0.0.1", timeout: float = 15.0, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sensor exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


_SEARCHABLE: list[Path] = []  # one world-searchable base per test session, as root


def searchable_dir(tmp: Path) -> Path:
    """A fresh empty directory whose absolute path the sensor's user (nobody) can walk.

    Started as root, the sensor opens its store after dropping to nobody, and SQLite opens
    its index by absolute path: pytest's own tmp dirs (/tmp/pytest-of-root, 0700) are not
    reachable then. Without root, ``tmp`` itself.
    """
    if os.geteuid() != 0:
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp
    if not _SEARCHABLE:
        base = Path(tempfile.mkdtemp(prefix="spampots-tests-"))
        base.chmod(0o711)  # searchable, not listable
        _SEARCHABLE.append(base)
        atexit.register(shutil.rmtree, base, True)
    d = Path(tempfile.mkdtemp(dir=_SEARCHABLE[0]))
    d.chmod(0o711)
    return d


def _default_data_dir(tmp: Path) -> Path:
    """``tmp/var``; as root a reachable dir instead (see searchable_dir), linked from ``tmp/var``."""
    if os.geteuid() != 0:
        return tmp / "var"
    data = searchable_dir(tmp) / "var"
    link = tmp / "var"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(data, target_is_directory=True)
    return data


def start_sensor(
    tmp: Path,
    *,
    config: str = "",
    offset: Optional[int] = None,
    args: tuple[str, ...] = (),
    audit_file: Optional[Path] = None,
    wait_port: Optional[int] = 1080,
    env_extra: Optional[dict[str, str]] = None,
    data_dir: Optional[Path] = None,
) -> SensorProc:
    tmp.mkdir(parents=True, exist_ok=True)
    data = data_dir or _default_data_dir(tmp)
    offset = pick_offset() if offset is None else offset
    cfg_path = tmp / "sensor.toml"
    cfg_path.write_text(config)
    err = tmp / "stderr.log"
    env = dict(os.environ)
    env.update(env_extra or {})
    if audit_file is not None:
        env["SPAMPOTS_TEST_AUDIT"] = str(audit_file)
    cmd = [sys.executable, str(LAUNCHER), "run", "--config", str(cfg_path), "--data-dir", str(data),
           "--port-offset", str(offset), "--address", "127.0.0.1", "--sensor-id", "test-sensor",
           "--log-level", "debug", *args]
    if "--workers" not in args and "workers" not in config:
        cmd += ["--workers", "1"]  # one process, whose pid is the sensor's; tests of workers ask for more
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(err, "wb"), env=env)
    sp = SensorProc(data, offset, proc, cfg_path, err)
    if wait_port is not None:
        try:
            wait_listening(wait_port + offset, proc=proc)
        except Exception:
            sp.stop()
            raise RuntimeError(f"sensor did not start:\n{err.read_text()}")
    return sp


@pytest.fixture(scope="module")
def sensor(tmp_path_factory) -> Iterator[SensorProc]:
    """One sensor on every default port (+offset), shared by a test module."""
    sp = start_sensor(tmp_path_factory.mktemp("sensor"), config='[limits]\nnew_sessions_per_s_per_ip = 1000\nmax_sessions_per_ip = 500\n')
    yield sp
    sp.stop()


def rss_mib(pid: int) -> float:
    """A process's resident memory now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def assert_healthy(sp: SensorProc) -> None:
    assert sp.proc.poll() is None, "the sensor died"
    assert "Traceback" not in sp.stderr()


def connect_from(src: str, port: int, timeout: float = 10) -> Optional[socket.socket]:
    """A TCP connection to 127.0.0.1:port from the loopback address ``src``, or None."""
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s

