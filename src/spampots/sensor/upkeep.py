"""The sensor's disk upkeep: the free-space floor and retention, on timers.

* About once a second one ``statvfs`` of the data dir (:class:`FreeSpaceWatch`): below
  ``[store] min_free_mb`` the shared budget's ``disk_low`` is set and SMTP answers DATA
  with ``452 4.3.1`` before taking a body; one log line when that starts, one when it ends.
  Sessions, proxies and events go on as before.
* Every ``PRUNE_EVERY_S`` (and a few seconds after start) one retention pass when
  ``[store] keep_days`` is set (see ``store/retention.py``): the file work runs in a
  worker thread; only the pack deletion itself runs in the recorder's writer thread,
  so no message is stored meanwhile into what is being deleted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..store import retention
from ..store.space import MB, FreeSpaceWatch

if TYPE_CHECKING:
    from ..protocols.budget import MemoryBudget
    from .server import Sensor

log = logging.getLogger("spampots.store")

POLL_S = 1.0  # free-space checks: cheap, and a floor of 256 MB takes longer than this to fill
PRUNE_FIRST_S = 5.0  # soon after start: a sensor that was down may have old data due
PRUNE_EVERY_S = 3600.0


class Upkeep:
    def __init__(self, sensor: "Sensor", pool: "MemoryBudget", data_dir: Path = Path(".")) -> None:
        self.sensor = sensor
        self.pool = pool
        self.data_dir = data_dir
        self.shown_dir = data_dir
        store = sensor.cfg.store
        self.watch = FreeSpaceWatch(data_dir, store.min_free_mb)
        self.keep_days = store.keep_days
        self.prune_first_s, self.prune_every_s = PRUNE_FIRST_S, PRUNE_EVERY_S
        self.next_prune = 0.0  # loop time of the next retention pass (set by run)
        self.last_prune: Optional[retention.PruneStats] = None
        # Old packs a kept event still named on the last pass: they can only become free
        # when segments go, so without that (or a new candidate) the events are not read again.
        self._named: set[str] = set()

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

    async def prune(self) -> retention.PruneStats:
        """One retention pass; logs what went (one line), never raises for disk trouble."""
        loop = asyncio.get_running_loop()
        sensor = self.sensor
        st = retention.PruneStats()
        cutoff = retention.cutoff_of(self.keep_days)
        acked = None
        if sensor.cfg.transport.nats is not None:
            from ..store.catalog import acked_checker
            from ..transport.shipper import SHIP_DIR

            path = self.data_dir / SHIP_DIR / f"{sensor.sensor_id}.cursor"
            acked = await loop.run_in_executor(None, acked_checker, path, sensor.sensor_id)
        try:
            await loop.run_in_executor(None, lambda: retention.prune_segments(
                self.data_dir, cutoff, st, acked=acked, sensor=sensor.sensor_id))
            cands = await loop.run_in_executor(None, retention.pack_candidates, self.data_dir, cutoff)
            if not st.segments and set(cands) <= self._named:
                cands = []  # nothing changed for them since the last pass
            others = retention.live_writers(self.data_dir, mine=sensor.sensor_id) if cands else []
            if cands and not others:
                # Dedup hits from now on are seen by drop_packs (spare); the scan sees the rest.
                await sensor.recorder.call(lambda store: store.hit_packs.clear())
                keep = await loop.run_in_executor(None, lambda: retention.referenced(self.data_dir))
                await sensor.recorder.call(lambda store: retention.drop_packs(
                    store, cands, keep, st, spare=store.hit_packs))
                self._named = set(st.named)
            elif others:
                log.info("retention: packs left alone while %s write here too", ", ".join(others))
        except OSError as e:
            log.error("retention pass failed: %r", e)
        if st.segments or st.packs or st.kept_unacked:
            log.info("retention (keep_days = %g): deleted %s", self.keep_days, st.line())
        self.last_prune = st
        return st

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
        try:
            while True:
                await asyncio.sleep(POLL_S)
                self.poll()
                if (self.keep_days > 0 and loop.time() >= self.next_prune
                        and (pruning is None or pruning.done())):
                    pruning = loop.create_task(self._prune_pass())
        finally:
            if pruning is not None:
                pruning.cancel()
