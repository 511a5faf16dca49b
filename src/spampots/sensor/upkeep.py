"""The sensor's disk upkeep: the free-space floor and retention, on timers.

* About once a second one ``statvfs`` of the data dir (:class:`FreeSpaceWatch`): below
  ``[store] min_free_mb`` the shared budget's ``disk_low`` is set and SMTP answers DATA
  with ``452 4.3.1`` before taking a body; one log line when that starts, one when it ends.
  Sessions, proxies and events go on as before.
* Every ``PRUNE_EVERY_S`` (and a few seconds after start) one retention pass when
  ``[store] keep_days`` is set (see ``store/retention.py``): the file work runs in a
  worker thread; only the pack deletion itself runs in the recorder's writer thread,
  so no message is stored meanwhile into what is being deleted.
* With workers, worker 0 prunes for the sensor: segments, and every worker's packs. The
  packs' index rows are retired first, then every live worker's writer passes a barrier
  (files in ``messages/``: worker 0 writes ``retention-<sensor>.barrier``, each other
  worker answers in ``retention-<sensor>.w<k>.passed`` once its writer has finished what
  it had in hand), then the kept events are read (see ``store/retention.py``). A worker
  that does not answer within ``BARRIER_WAIT_S`` leaves every pack as it was.

Upkeep sees a narrow part of the sensor: :class:`UpkeepSettings` (frozen, from the
config), the memory budget's pool, the recorder once it is open (:meth:`Upkeep.attach`)
and, with workers, which of them are alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from ..store import retention
from ..store.messages import MESSAGES_DIR
from ..store.space import MB, FreeSpaceWatch

if TYPE_CHECKING:
    from ..protocols.budget import MemoryBudget
    from ..store.recorder import Recorder

log = logging.getLogger("spampots.store")

POLL_S = 1.0  # free-space checks: cheap, and a floor of 256 MB takes longer than this to fill
PRUNE_FIRST_S = 5.0  # soon after start: a sensor that was down may have old data due
PRUNE_EVERY_S = 3600.0
BARRIER_WAIT_S = 30.0  # for the other workers' writers (each answers within about POLL_S)


@dataclass(frozen=True, slots=True)
class UpkeepSettings:
    """What upkeep reads of the config, fixed at start-up."""

    sensor_id: str
    min_free_mb: float = 0.0  # [store] min_free_mb
    keep_days: float = 0.0  # [store] keep_days (0: keep forever)
    shipping: bool = False  # [transport.nats] is set: only acknowledged segments go


class Upkeep:
    def __init__(self, settings: UpkeepSettings, pool: "MemoryBudget", data_dir: Path = Path(".")) -> None:
        self.settings = settings
        self.sensor_id = settings.sensor_id
        self.pool = pool
        self.data_dir = data_dir
        self.shown_dir = data_dir
        self.watch = FreeSpaceWatch(data_dir, settings.min_free_mb)
        self.keep_days = settings.keep_days
        self.recorder: Optional["Recorder"] = None  # set by attach, once the store is open
        self.worker, self.workers = 0, 1
        self.alive: Callable[[int], bool] = lambda k: True  # whether worker k runs now
        self.prune_first_s, self.prune_every_s = PRUNE_FIRST_S, PRUNE_EVERY_S
        self.next_prune = 0.0  # loop time of the next retention pass (set by run)
        self.last_prune: Optional[retention.PruneStats] = None
        # Old packs a kept event still named on the last pass: they can only become free
        # when segments go, so without that (or a new candidate) the events are not read again.
        self._named: set[str] = set()
        self._passed = ""  # the last barrier this worker answered

    def attach(self, recorder: "Recorder", *, worker: int = 0, workers: int = 1,
               alive: Optional[Callable[[int], bool]] = None) -> None:
        """The store is open: retention may run (worker 0 only, for the whole sensor)."""
        self.recorder, self.worker, self.workers = recorder, worker, workers
        if alive is not None:
            self.alive = alive
        if worker != 0:
            self.keep_days = 0

    # -- the free-space floor ------------------------------------------------------------------

    def poll(self) -> None:
        changed = self.watch.poll()
        w = self.watch
        if w.low:
            self.pool.disk_low = (w.min_free_mb, round(w.free / MB, 1))  # the limit hit's figures
        if changed is None:
            return
        if changed:
            log.warning("data dir %s: %.1f MB free%s, below [store] min_free_mb = %g: refusing mail "
                        "(452 4.3.1) until there is room again", self.shown_dir, w.free / MB,
                        " and no free inodes" if w.no_inodes else "", w.min_free_mb)
        else:
            self.pool.disk_low = None
            log.warning("data dir %s: %.1f MB free again: accepting mail", self.shown_dir, w.free / MB)

    # -- retention -----------------------------------------------------------------------------

    def _ours(self) -> set[str]:
        """The pack writers of this sensor: its own name (the supervisor's lock, or the one
        process), and one per worker."""
        return {self.sensor_id} | {f"{self.sensor_id}.w{k}" for k in range(self.workers)}

    async def prune(self) -> retention.PruneStats:
        """One retention pass; logs what went (one line), never raises for disk trouble."""
        loop = asyncio.get_running_loop()
        rec = self.recorder
        assert rec is not None, "attach() first"
        st = retention.PruneStats()
        cutoff = retention.cutoff_of(self.keep_days)
        acked = None
        if self.settings.shipping:
            from ..store.catalog import acked_checker
            from ..transport.shipper import SHIP_DIR

            path = self.data_dir / SHIP_DIR / f"{self.sensor_id}.cursor"
            acked = await loop.run_in_executor(None, acked_checker, path, self.sensor_id)
        try:
            await loop.run_in_executor(None, lambda: retention.prune_segments(
                self.data_dir, cutoff, st, acked=acked, sensor=self.sensor_id))
            cands = await loop.run_in_executor(None, retention.pack_candidates, self.data_dir, cutoff)
            if not st.segments and set(cands) <= self._named:
                cands = []  # nothing changed for them since the last pass
            ours = self._ours()
            others = [w for w in retention.live_writers(self.data_dir) if w not in ours] if cands else []
            if others:
                log.info("retention: packs left alone while %s write here too", ", ".join(others))
            elif cands and self.workers > 1:
                await self._drop_shared(cands, st)
                self._named = set(st.named)
            elif cands:
                # Dedup hits from now on are seen by drop_packs (spare); the scan sees the rest.
                await rec.call(lambda store: store.hit_packs.clear())
                keep = await loop.run_in_executor(None, lambda: retention.referenced(self.data_dir))
                await rec.call(lambda store: retention.drop_packs(store, cands, keep, st, spare=store.hit_packs))
                self._named = set(st.named)
        except OSError as e:
            log.error("retention pass failed: %r", e)
        if st.segments or st.packs or st.kept_unacked:
            log.info("retention (keep_days = %g): deleted %s", self.keep_days, st.line())
        self.last_prune = st
        return st

    async def _drop_shared(self, cands: list[str], st: retention.PruneStats) -> None:
        """Every worker's packs (see the module docstring): retire, barrier, scan, settle."""
        loop = asyncio.get_running_loop()
        rec = self.recorder
        assert rec is not None
        retired: retention.Retired = await rec.call(lambda store: retention.retire_packs(store, cands, st))
        settled = False
        try:
            late = await self._barrier()
            if late:
                log.warning("retention: packs left alone this pass: worker(s) %s did not answer within %g s",
                            ", ".join(map(str, late)), BARRIER_WAIT_S)
                # all rows back; not counted as named, so that the next pass tries them again
                await rec.call(lambda store: retention.settle_packs(
                    store, retired, set(), retention.PruneStats(), spare=retired))
            else:
                keep = await loop.run_in_executor(None, lambda: retention.referenced(self.data_dir))
                await rec.call(lambda store: retention.settle_packs(store, retired, keep, st))
            settled = True
        finally:
            if not settled and retired:  # put the rows back (else the next start re-indexes the packs)
                try:
                    rec.call(lambda store: retention.settle_packs(
                        store, retired, set(), retention.PruneStats(), spare=retired))
                except Exception:
                    pass

    def _barrier_path(self, writer: Optional[str] = None) -> Path:
        name = f"retention-{writer}.passed" if writer else f"retention-{self.sensor_id}.barrier"
        return self.data_dir / MESSAGES_DIR / name

    async def _barrier(self) -> list[int]:
        """Ask every other worker's writer to finish what it has in hand; the workers that
        are alive and did not answer within BARRIER_WAIT_S (none: all passed)."""
        loop = asyncio.get_running_loop()
        gen = str(time.time_ns())
        _write_small(self._barrier_path(), gen)
        deadline = loop.time() + BARRIER_WAIT_S
        waiting = [k for k in range(self.workers) if k != self.worker]
        while True:
            waiting = [k for k in waiting
                       if self.alive(k) and _read_small(self._barrier_path(f"{self.sensor_id}.w{k}")) != gen]
            if not waiting or loop.time() >= deadline:
                return waiting
            await asyncio.sleep(0.05)

    async def _answer_barrier(self) -> None:
        """A worker other than 0: once its writer has finished the batches queued before the
        barrier was asked for, say so (any dedup hit of those has its event on file then)."""
        gen = _read_small(self._barrier_path())
        if not gen or gen == self._passed or self.recorder is None:
            return
        try:
            await self.recorder.call(lambda store: None)
            _write_small(self._barrier_path(f"{self.sensor_id}.w{self.worker}"), gen)
        except Exception as e:  # a stopping recorder, a full disk: worker 0 waits, then keeps every pack
            log.warning("retention barrier not answered: %r", e)
            return
        self._passed = gen

    async def _prune_pass(self) -> None:
        try:
            await self.prune()
        except Exception:  # a bug, a bad cursor file, a stopping recorder: the next pass retries
            log.exception("retention pass failed; the next one is due in %g s", self.prune_every_s)
            self.last_prune = None
        more = self.last_prune is not None and self.last_prune.more
        self.next_prune = asyncio.get_running_loop().time() + (POLL_S if more else self.prune_every_s)

    async def run(self) -> None:
        """The floor every POLL_S; retention passes beside it, in their own task, so a long
        pass (reading the kept events) never delays a free-space check."""
        loop = asyncio.get_running_loop()
        self.next_prune = loop.time() + self.prune_first_s
        pruning: Optional[asyncio.Task] = None
        answering: Optional[asyncio.Task] = None  # beside the floor too: a busy writer never delays it
        try:
            while True:
                await asyncio.sleep(POLL_S)
                self.poll()
                if self.workers > 1 and self.worker != 0 and (answering is None or answering.done()):
                    answering = loop.create_task(self._answer_barrier())
                if (self.keep_days > 0 and loop.time() >= self.next_prune
                        and (pruning is None or pruning.done())):
                    pruning = loop.create_task(self._prune_pass())
        finally:
            for task in (pruning, answering):
                if task is not None:
                    task.cancel()


def _read_small(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _write_small(path: Path, text: str) -> None:
    """Whole or not at all (a reader never sees half a generation)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="ascii")
    os.replace(tmp, path)
