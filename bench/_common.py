"""Shared pieces of the benchmarks: start a sensor on loopback, read its CPU and
memory from /proc, run Postfix's smtp-source, describe the machine.

Loopback only: every server here listens on 127.0.0.1 and every client dials it.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
TALK_PORTS = (1080, 3127, 8080, 80, 3128, 8000, 6588, 4480, 3382, 81, 25)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Limits high enough that one benchmark client (one address) is never throttled.
OPEN_LIMITS = """\
[limits]
max_sessions = 100000
max_sessions_per_ip = 100000
new_sessions_per_s_per_ip = 1000000
"""


def raise_nofile(n: int = 1 << 20) -> int:
    """Raise RLIMIT_NOFILE (hard too, as root) so children inherit it; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


OFFSET_ENV = "SPAMPOTS_BENCH_OFFSET"  # fixes the port offset (e.g. to keep clear of other programs)


def port_free(port: int) -> bool:
    """Nobody listens on or holds 127.0.0.1:port (nor the wildcard address) right now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_offset(ports: tuple[int, ...] = TALK_PORTS) -> int:
    """A port offset whose talk ports (and the metrics ports after them) are all free:
    ``$SPAMPOTS_BENCH_OFFSET`` if set (checked: an error names a busy port), else a random one."""
    fixed = os.environ.get(OFFSET_ENV)
    if fixed:
        off = int(fixed)
        busy = [p + off for p in ports if not port_free(p + off)]
        if busy:
            raise SystemExit(f"{OFFSET_ENV}={off}: port(s) {', '.join(map(str, busy))} in use on 127.0.0.1")
        return off
    for _ in range(500):
        off = random.randrange(20000, 57000, 7)
        if all(port_free(p + off) for p in ports):
            return off
    raise RuntimeError("no free port offset")


def wait_port(port: int, timeout: float = 20.0, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@dataclass
class ProcStats:
    cpu_s: float  # user + system seconds so far
    rss_mib: float
    hwm_mib: float  # peak RSS


def proc_stats(pid: int) -> ProcStats:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return ProcStats(cpu, rss, hwm)


def children(pid: int) -> list[int]:
    """The child processes of pid (a sensor's workers)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) so far of the main threads (the sensor's event loops: one,
    or one per worker) and of all other threads together (store writers, libuv's workers).
    With workers the supervisor's own CPU counts as a loop's (it waits on signals: little)."""
    main, other = _thread_cpu(pid)
    for kid in children(pid):
        m, o = _thread_cpu(kid)
        main, other = main + m, other + o
    return main, other


def _thread_cpu(pid: int) -> tuple[float, float]:
    main = other = 0.0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0, 0.0
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if task.name == str(pid):
            main += cpu
        else:
            other += cpu
    return main, other


class Sensor:
    """A `spampots run` child on 127.0.0.1 with a port offset and a temporary data dir."""

    def __init__(self, config: str = OPEN_LIMITS, *, wait_talk_port: int = 25, keep: bool = False,
                 src: Optional[str] = None, workers: Optional[int] = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        """``src``: run the spampots of another source tree (its ``src`` dir, e.g. an older
        build from ``git archive``) instead of the installed one, for side-by-side runs.
        ``workers``: ``--workers N`` (None: the config's, or an older build's only process)."""
        self.dir = Path(tempfile.mkdtemp(prefix="spampots-bench-"))
        self.keep = keep
        self.offset = pick_offset()
        cfg = self.dir / "sensor.toml"
        cfg.write_text(config)
        self.log = open(self.dir / "sensor.log", "wb")
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve())] + [p for p in [env.get("PYTHONPATH")] if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spampots.cli", "run", "--config", str(cfg), "--data-dir", str(self.dir / "var"),
             "--port-offset", str(self.offset), "--address", "127.0.0.1", "--sensor-id", "bench",
             "--log-level", "warning", "--user", "", *extra_args,
             *(["--workers", str(workers)] if workers is not None else [])],
            stdout=subprocess.DEVNULL, stderr=self.log, cwd=self.dir, env=env)
        wait_port(wait_talk_port + self.offset, proc=self.proc)
        if workers and workers > 1:  # every worker up: each serves its own share of the port
            deadline = time.time() + 30
            while len(children(self.proc.pid)) < workers and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)

    def port(self, talk_port: int) -> int:
        return talk_port + self.offset

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> ProcStats:
        """The process's figures; with workers, their sum (RSS and peak RSS added up)."""
        total = proc_stats(self.proc.pid)
        for kid in children(self.proc.pid):
            try:
                st = proc_stats(kid)
            except OSError:  # gone meanwhile
                continue
            total = ProcStats(total.cpu_s + st.cpu_s, total.rss_mib + st.rss_mib, total.hwm_mib + st.hwm_mib)
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()

    def __enter__(self) -> "Sensor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def stored_messages(data_dir: Path) -> tuple[int, int]:
    """(message events in the store, how many of them have their body in the store)."""
    from spampots.store.messages import MessageStore
    from spampots.store.segments import iter_events

    shas = [e.sha256 for e in iter_events(data_dir) if type(e).__name__ == "SmtpMessage"]
    store = MessageStore(data_dir, readonly=True)
    try:
        with_body = sum(1 for sha in shas if sha and store.location(sha) is not None)
    finally:
        store.close()
    return len(shas), with_body


def supports(section: str, key: str) -> bool:
    """Whether this version's config has ``[section] key`` (benchmarks run across versions)."""
    from spampots import config
    cls = {"sensor": config.SensorSection, "limits": config.LimitsSection, "store": config.StoreSection}[section]
    return key in cls.__struct_fields__


def ensure_postfix_tools() -> tuple[str, str]:
    """smtp-source and smtp-sink, from the Debian package postfix (installing it if needed; the
    Postfix daemon itself is never started)."""
    found = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not Path(found).exists():
        if os.geteuid() != 0:
            raise SystemExit("smtp-source missing: apt-get install postfix (as root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postfix"], check=True, env=env)
        subprocess.run(["postfix", "stop"], env=env, capture_output=True)  # never leave the daemon running
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    return source, sink


def smtp_source(port: int, messages: int, *, sessions: int = 20, rcpts: int = 10, length: int = 3000,
                timeout: float = 600) -> float:
    """Drive 127.0.0.1:port with Postfix's smtp-source (one message per session); wall seconds."""
    return smtp_source_cpu(port, messages, sessions=sessions, rcpts=rcpts, length=length, timeout=timeout)[0]


def smtp_source_cpu(port: int, messages: int, *, sessions: int = 20, rcpts: int = 10, length: int = 3000,
                    timeout: float = 600) -> tuple[float, float]:
    """As :func:`smtp_source`; returns (wall seconds, smtp-source's own CPU seconds)."""
    source, _ = ensure_postfix_tools()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([source, "-s", str(sessions), "-r", str(rcpts), "-l", str(length), "-m", str(messages),
                    "-M", "bench.example", f"127.0.0.1:{port}"], check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return (f"{os.cpu_count()} CPU {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def loopback_sources(n: int) -> list[str]:
    from spampots.loadgen.run import loopback_sources as sources
    return sources(n)
