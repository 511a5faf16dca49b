"""A private rsyslogd for tests: own config, pid file and work dir under tmp, on loopback.

Never the system's rsyslog: it runs in the foreground (-n) with only the modules its config
loads, and is stopped by the pid the test started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    """rsyslogd -n with ``body`` as its config (``{work}`` is its work directory)."""

    def __init__(self, root: Path, body: str) -> None:
        self.root = root
        self.work = root / "rsyslog-work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.conf = root / "rsyslog.conf"
        self.conf.write_text(f'global(workDirectory="{self.work}" maxMessageSize="64k")\n' + body)
        self.pidfile = root / "rsyslog.pid"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, wait_port: Optional[int] = None) -> "Rsyslog":
        self.pidfile.unlink(missing_ok=True)
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {self.proc.stdout.read().decode(errors='replace')}")
            if self.pidfile.exists() and (wait_port is None or _listening(wait_port)):
                return self
            time.sleep(0.05)
        raise RuntimeError("rsyslogd did not start within 30 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_lines(path: Path, want: int, timeout: float = 60.0) -> list[bytes]:
    """The lines of ``path`` once there are ``want`` (or whatever is there at the timeout)."""
    deadline = time.monotonic() + timeout
    got: list[bytes] = []
    while time.monotonic() < deadline:
        got = path.read_bytes().splitlines() if path.exists() else []
        if len(got) >= want:
            break
        time.sleep(0.1)
    return got
