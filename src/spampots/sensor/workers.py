"""Worker processes: one sensor served by N processes on the same ports.

The supervisor does what needs root once: it checks the data dir, binds N sockets per
listener address (joined by ``SO_REUSEPORT``: the kernel spreads new connections over
them), and drops privileges. Then it forks the workers. Each worker keeps its own
sockets, runs its own event loop and store writer (its own segments, its own message
packs ``pack-<sensor>.w<k>-*``), and shares one table with the others for the limits
that hold for the whole sensor (see ``shared.py``) and a board of its figures (see
``board.py``: whichever worker answers a metrics scrape tells the sensor's totals). Worker 0
also runs what a sensor has once: the shipper, the outputs and retention (of every
worker's packs), and records the sensor's start and stop.

The supervisor runs no event loop and no thread: it waits for signals. A worker that
dies is forked again on the same sockets (connections queued meanwhile wait in its
listen queue); what it acknowledged was on disk before the ``250``, and the new worker
recovers its open segment. SIGTERM or SIGINT stops every worker cleanly, each closing
its store, and the supervisor logs the one summary line of the sensor.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional

from ..config import Config
from ..store.messages import MESSAGES_DIR
from ..store.segments import try_lock
from .server import Sensor, StartupError, install_uvloop
from .board import FigureBoard
from .shared import WORKER_FIELDS, SharedGate, SharedState

log = logging.getLogger("spampots.sensor")

STOP_WAIT_S = 60.0  # a worker closing its store gets this long before SIGKILL
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_QUICK_DEATH_S = 10.0  # a worker dying sooner than this after its start is restarted more slowly


class Supervisor:
    def __init__(self, cfg: Config, workers: int, *, strict: bool = False) -> None:
        self.n = workers
        self.sensor = Sensor(cfg, strict=strict)
        self.sensor.workers = workers
        self.shared: Optional[SharedState] = None
        self.board: Optional[FigureBoard] = None
        self.children: dict[int, int] = {}  # pid -> worker number
        self.started: dict[int, float] = {}  # worker -> monotonic time of its last fork
        self.quick_deaths: dict[int, int] = {}  # worker -> deaths in a row soon after start
        self.due: dict[int, float] = {}  # worker -> when to fork it again
        self.carried = dict.fromkeys(WORKER_FIELDS[2:], 0)  # figures of workers that died
        self.ever_up = False
        self.data_dir = Path(".")

    # -- the supervisor ------------------------------------------------------------------------
    def run(self, data_dir: Path) -> int:
        self.data_dir = data_dir
        # Signals wait in the mask (sigtimedwait below); forked workers unblock them in their loop.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        self.sensor.prepare(data_dir, copies=self.n)
        lock_fd = self._lock_sensor(data_dir)
        self.shared = SharedState(self.n)
        self.board = FigureBoard(self.n)
        log.info("sensor %s: %d workers on the same ports", self.sensor.sensor_id, self.n)
        try:
            for k in range(self.n):
                self._fork(k)
            return self._watch()
        finally:
            os.close(lock_fd)

    def _lock_sensor(self, data_dir: Path) -> int:
        """The sensor's own pack lock, held by the supervisor (and inherited by the workers):
        a second sensor of this id on this data dir is refused, as with one process."""
        os.makedirs(MESSAGES_DIR, mode=0o750, exist_ok=True)
        fd = os.open(os.path.join(MESSAGES_DIR, f"pack-{self.sensor.sensor_id}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(fd):
            os.close(fd)
            self.sensor._close_sockets()
            raise StartupError(f"another process writes messages for sensor {self.sensor.sensor_id!r} "
                               f"in {data_dir}")
        return fd

    def _watch(self) -> int:
        every = self.sensor.cfg.sensor.summary_interval_s
        next_summary = time.monotonic() + every
        while True:
            now = time.monotonic()
            wait = min([next_summary] + list(self.due.values())) - now
            got = signal.sigtimedwait(_SIGNALS, max(0.01, wait))
            if got is not None and got.si_signo in (signal.SIGTERM, signal.SIGINT):
                return self._stop()
            failed = self._reap()
            if failed is not None:
                log.error("no worker could start: stopping")
                self._stop()
                return failed
            now = time.monotonic()
            for k, at in list(self.due.items()):
                if now >= at:
                    del self.due[k]
                    self._fork(k)
            if now >= next_summary:
                log.info("summary: %s", self._summary())
                next_summary = now + every

    def _reap(self) -> Optional[int]:
        """Collect dead workers and plan their restart; the exit code when none ever came up."""
        assert self.shared is not None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            k = self.children.pop(pid, None)
            if k is None:
                continue
            row = self.shared.read_worker(k)
            self.ever_up = self.ever_up or row["updated"] > 0
            for name in self.carried:
                self.carried[name] += int(row[name])
            self.shared.worker_gone(k)
            self.shared.write_figures(k, **dict.fromkeys(WORKER_FIELDS[2:], 0))
            code = os.waitstatus_to_exitcode(status)
            if not self.ever_up and code > 0:
                return 2  # no worker ever came up: a start-up failure (told on stderr), not a crash
            quick = time.monotonic() - self.started.get(k, 0.0) < _QUICK_DEATH_S
            self.quick_deaths[k] = self.quick_deaths.get(k, 0) + 1 if quick else 0
            delay = min(30.0, 0.1 * 2 ** self.quick_deaths[k]) if quick else 0.0
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.error("worker %d (pid %d) died (%s): restarting it%s", k, pid, how,
                      f" in {delay:.1f} s" if delay else "")
            self.carried["restarts"] += 1
            self.due[k] = time.monotonic() + delay

    def _stop(self) -> int:
        log.info("stopping %d workers", len(self.children))
        self.due.clear()
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while self.children and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.2)
            self._collect()
        for pid in list(self.children):
            log.error("worker pid %d still running %g s after SIGTERM: killed", pid, STOP_WAIT_S)
            _signal(pid, signal.SIGKILL)
        while self.children:
            self._collect(block=True)
        log.info("stopped; %s", self._summary())
        return 0

    def _collect(self, block: bool = False) -> None:
        assert self.shared is not None
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            k = self.children.pop(pid, None)
            if k is not None:
                row = self.shared.read_worker(k)
                for name in self.carried:
                    self.carried[name] += int(row[name])
                self.shared.write_figures(k, **dict.fromkeys(WORKER_FIELDS[1:], 0))
            if block:
                return

    def _summary(self) -> str:
        assert self.shared is not None
        t = self.shared.totals()
        c = {name: t[name] + self.carried.get(name, 0) for name in t}
        return (f"sessions {c['sessions']} (open now {t['open']}), messages {c['messages']}, "
                f"proxy requests {c['proxy_requests']}, errors {c['errors']}, limits hit {c['limit_hits']}, "
                f"workers {len(self.children)} of {self.n} (restarts {c['restarts']})")

    # -- a worker ------------------------------------------------------------------------------
    def _fork(self, k: int) -> None:
        self.sensor.restarted = k in self.started
        self.started[k] = time.monotonic()
        pid = os.fork()
        if pid:
            self.children[pid] = k
            return
        code = 1
        try:
            code = self._worker(k)
        except StartupError as exc:
            log.error("worker %d: %s", k, exc)
            code = 2
        except BaseException:
            log.exception("worker %d failed", k)
        finally:
            logging.shutdown()
            os._exit(code)

    def _worker(self, k: int) -> int:
        _die_with_parent()
        sensor, shared = self.sensor, self.shared
        assert shared is not None
        lim = sensor.cfg.limits
        sensor.worker, sensor.shared, sensor.board = k, shared, self.board
        # A worker started again goes on from its predecessor's figures: the sensor's never go back.
        sensor.carried = self.board.read(k) if sensor.restarted and self.board is not None else None
        sensor.take_share(k)
        sensor.gate = SharedGate(shared, k, max_total=lim.max_sessions, max_per_ip=lim.max_sessions_per_ip,
                                 rate_per_ip=lim.new_sessions_per_s_per_ip, max_local=sensor.max_local)
        sensor.started_at = time.time()
        sensor._session_prefix = os.urandom(4).hex()  # session ids stay unique across workers
        install_uvloop()
        return asyncio.run(self._serve(sensor))

    async def _serve(self, sensor: Sensor) -> int:
        sensor.loop = asyncio.get_running_loop()
        sensor._catch_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        return await sensor.serve(self.data_dir)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """A worker whose supervisor is gone (kill -9) stops cleanly instead of serving on alone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() == 1:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)
