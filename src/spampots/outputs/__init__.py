"""Outputs: the store's events, followed live, sent to the tools a SOC already runs.

One small plug-in per receiver (one file each, like Cowrie's output plug-ins): an
:class:`Output` has ``start``, ``write(batch)`` and ``stop``. Each is configured by an
``[[output]]`` table (its struct in ``config.py``) and driven by a :class:`Runner` that reads
the store through its own durable cursor (``<data_dir>/outputs/<name>.cursor``):

* the sensor never waits for an output: outputs read what the store already holds, so a
  slow or dead receiver only makes its own cursor lag;
* the cursor moves only after ``write`` returned, i.e. the receiver took the batch, so a
  crash or an outage loses nothing and a restart sends nothing twice (what was written
  but not yet committed when the process died is sent again: at most one batch);
* a failing output is stopped, retried with backoff, and logged once per problem.

Outputs do blocking I/O; the runner calls them in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..events import Event
from ..store.catalog import Line, Reader
from ..store.segments import ReadStats

log = logging.getLogger("spampots.outputs")

OUTPUTS_DIR = "outputs"
KINDS = ("jsonl", "syslog", "hpfeeds", "misp", "stix")  # kind -> module spampots.outputs.<kind>
_REPEAT_LOG_S = 600.0


def need_extra(module: str) -> Any:
    """Import a receiver's library, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is not installed: pip install 'spampots[outputs]' ({e})") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, durably (the feed files others pull)."""
    from ..store.export import write_atomic as _write

    _write(path, [data], durable=True)


def output_dir(cfg: Any, data_dir: Path) -> Path:
    """The directory an output writes its files to: ``path`` (relative to the data dir) or
    ``outputs/<name>``."""
    d = Path(data_dir) / (cfg.path or f"{OUTPUTS_DIR}/{output_name(cfg)}")
    d.mkdir(mode=0o750, parents=True, exist_ok=True)
    return d


class Output:
    """Base of the plug-ins. ``write`` raises when the receiver did not take the batch."""

    def __init__(self, cfg: Any, data_dir: Path) -> None:
        self.cfg = cfg
        self.data_dir = data_dir

    def start(self) -> None:
        """Connect or open; raise if the receiver is not there (the runner retries)."""

    def write(self, batch: Sequence[tuple[Line, Event]]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Close; called after a failure too, before ``start`` again."""


class SocketOutput(Output):
    """An output that keeps one connection to its receiver (``_sock``), closed by ``stop``."""

    def __init__(self, cfg: Any, data_dir: Path) -> None:
        super().__init__(cfg, data_dir)
        self._sock: Optional[socket.socket] = None

    def stop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def output_name(cfg: Any) -> str:
    """The output's name: its cursor's file name. Defaults to its kind."""
    return cfg.name or cfg.kind


def load(cfg: Any, data_dir: Path) -> Output:
    """The plug-in for one ``[[output]]`` table."""
    module = importlib.import_module(f"{__name__}.{cfg.kind}")
    return module.PLUGIN(cfg, data_dir)


def preload(cfgs: Sequence[Any]) -> None:
    """Import the configured plug-ins now (before the sensor drops root, which may make the
    interpreter's own files unreadable)."""
    for cfg in cfgs:
        module = importlib.import_module(f"{__name__}.{cfg.kind}")
        if getattr(module, "REQUIRES", ""):  # its receiver's library, imported lazily
            try:
                need_extra(module.REQUIRES)
            except ImportError:
                pass  # the runner logs it, naming the extra


class Runner:
    """One output on its own cursor: read, write, commit; on failure stop, back off, retry."""

    def __init__(self, cfg: Any, data_dir: Path) -> None:
        self.cfg = cfg
        self.name = output_name(cfg)
        self.data_dir = Path(data_dir)
        self.output = load(cfg, self.data_dir)
        self.stats = ReadStats()
        self.sent = 0  # events the receiver took since start
        self.failures = 0
        self.caught_up = False
        self.idle_reads = 0  # reads that found nothing new: a read after a write of the store
        self._logged = 0.0
        (self.data_dir / OUTPUTS_DIR).mkdir(mode=0o750, exist_ok=True)
        self.reader = Reader(self.data_dir, cursor_path=self.data_dir / OUTPUTS_DIR / f"{self.name}.cursor",
                             stats=self.stats)

    def step(self) -> int:
        """One batch, blocking: events sent (0: nothing new). Raises what the output raised."""
        batch = self.reader.read_events(self.cfg.batch)
        if batch:
            self.output.write(batch)
        if batch or self.reader.finished:
            self.reader.commit()  # the receiver took it: never sent again
        self.sent += len(batch)
        self.caught_up = self.reader.caught_up
        self.idle_reads += self.caught_up
        return len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: follow the store and send; a stop drains what is there first."""
        delay = 0.0
        started = False
        try:
            while True:
                draining = stop.is_set()  # a read that starts after the stop sees everything
                try:
                    if not started:
                        await asyncio.to_thread(self.output.start)
                        started = True
                        if delay:
                            log.info("output %s: sending again", self.name)
                        delay = 0.0
                    n = await asyncio.to_thread(self.step)
                except Exception as e:
                    self._fail(e, started)
                    started = False
                    delay = min(max(delay * 2, 0.5), self.cfg.retry_max_s)
                    if await _wait(stop, delay):
                        return
                    continue
                if n == 0:
                    if draining:
                        return
                    await _wait(stop, self.cfg.poll_s)
        finally:
            if started:
                await asyncio.to_thread(self.output.stop)
            self.reader.close()

    def _fail(self, e: Exception, started: bool) -> None:
        self.failures += 1
        self.caught_up = False
        self.reader.rewind()  # what the receiver may not have taken is sent again
        if started:
            try:
                self.output.stop()
            except Exception:
                pass
        now = time.monotonic()
        if now - self._logged >= _REPEAT_LOG_S:
            self._logged = now
            log.warning("output %s (%s) failed: %s: %s; events wait in the store, retrying",
                        self.name, self.cfg.kind, type(e).__name__, e)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or less if ``stop`` is set; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


class Outputs:
    """Every configured output, each a task on the running loop."""

    def __init__(self, cfgs: Sequence[Any], data_dir: Path) -> None:
        self.runners = []
        for c in cfgs:
            try:
                self.runners.append(Runner(c, data_dir))
            except Exception as e:  # e.g. an unreadable cursor: that output waits for a fix
                log.error("output %s not started: %s", output_name(c), e)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> "Outputs":
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._guard(r)) for r in self.runners]
        for r in self.runners:
            log.info("output %s (%s) started", r.name, r.cfg.kind)
        return self

    async def _guard(self, r: Runner) -> None:
        try:
            await r.run(self._stop)
        except Exception:  # an output never takes the sensor down
            log.exception("output %s stopped; the sensor goes on, the output resumes on restart", r.name)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let each output send what is still waiting (up to ``grace_s``), then stop it."""
        self._stop.set()
        if not self._tasks:
            return
        done, pending = await asyncio.wait(self._tasks, timeout=grace_s)
        for t in pending:
            t.cancel()
        if pending:
            log.warning("%d output(s) still busy at stop; they resume from their cursors next time",
                        len(pending))


async def run_outputs(cfgs: Sequence[Any], data_dir: Path, stop: asyncio.Event) -> list[Runner]:
    """Run every output until ``stop`` (``spampots forward``); returns the runners."""
    runners = [Runner(c, data_dir) for c in cfgs]
    await asyncio.gather(*(r.run(stop) for r in runners))
    return runners


def start(cfgs: Sequence[Any], data_dir: Path) -> Optional[Outputs]:
    """The sensor's outputs as tasks on the running loop (None when there are none)."""
    if not cfgs:
        return None
    return Outputs(cfgs, data_dir).start()
