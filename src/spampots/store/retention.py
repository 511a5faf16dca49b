"""Retention (``[store] keep_days``): delete the oldest closed data, never what is still needed.

What goes, per pass (bounded: at most ``max_segments`` segment files and ``max_packs`` packs):

* **closed segments** (``.jsonl.zst``) in day directories that ended more than
  ``keep_days`` ago; open segments are never touched (a dead writer's is
  recovered and compressed first, and goes on a later pass). With a transport, only
  segments the broker acknowledged (``acked``) go; an emptied day directory goes too.
* **whole message packs**: bodies are content-addressed and shared (a message today
  may be a duplicate of a body stored months ago, which is then not written again),
  so a body cannot be dropped because its record is old. A pack goes only when it is
  closed (its writer has moved on to a higher number), its last write is older than
  the cutoff, and none of its bodies is named by an ``smtp.message`` event that is kept.
  Its index rows are deleted first, then the file: after a crash in between, the next
  writer re-indexes the pack, and the next pass deletes it again.

The pack step has three parts so that a writer can keep writing: :func:`pack_candidates`
(cheap: names and mtimes), :func:`referenced` (reads the kept events; any thread), and
:func:`drop_packs` (runs where the index is written: in the sensor's writer thread,
where a dedup hit into a doomed pack since the scan is seen and keeps that pack).

A sensor with workers has several writers (one per worker, ``pack-<sensor>.w<k>-*``)
sharing one index, and a dedup hit in one worker is invisible to another's writer
thread. There the pack step runs the other way round (:func:`retire_packs`, then
:func:`settle_packs`): the candidates' index rows are taken out first, so that from
that commit on no writer can name one of their bodies again (a duplicate is stored
anew); then every worker's writer passes a barrier (a hit found before the commit has
its event written by then); then the kept events are read, and each retired pack is
either deleted or has its rows put back. A pack that is re-indexed meanwhile (a
restarted worker reconciles the index) is kept: the check and the deletion share one
index transaction.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from ..events import MESSAGE
from .catalog import iter_segment_files
from .messages import MESSAGES_DIR, PACK_RE, MessageStore, Row
from .segments import EVENTS_DIR, SEGMENT_RE, ReadStats, _day_dirs, fsync_dir, iter_file_lines, try_lock

log = logging.getLogger("spampots.store")

__all__ = ["PruneStats", "prune_segments", "pack_candidates", "referenced", "drop_packs", "retire_packs",
           "settle_packs", "prune", "cutoff_of"]

DAY_S = 86400.0
_SHA_FIELD = re.compile(rb'"sha256":"([0-9a-f]{64})"')
_MESSAGE_TAG = b'"event":"%s"' % MESSAGE.encode()


@dataclass
class PruneStats:
    segments: int = 0  # closed segment files deleted (or, dry run, that would be)
    segment_bytes: int = 0
    days: int = 0  # day directories removed
    kept_unacked: int = 0  # old segments kept because the broker has not acknowledged them
    packs: int = 0  # packs deleted
    pack_bytes: int = 0
    bodies: int = 0  # index rows (bodies) deleted with them
    kept_packs: int = 0  # old closed packs kept because a kept event names one of their bodies
    named: list[str] = field(default_factory=list)  # those packs
    more: bool = False  # the pass stopped at its bound: more is due
    removed: list[str] = field(default_factory=list)  # "<day>/<segment>" and "messages/<pack>" that went

    def line(self) -> str:
        mb = lambda n: f"{n / 1e6:,.1f} MB"  # noqa: E731
        s = (f"{self.segments} segment(s) ({mb(self.segment_bytes)}), {self.packs} pack(s) "
             f"({mb(self.pack_bytes)}, {self.bodies} bodies)")
        if self.kept_unacked:
            s += f"; kept {self.kept_unacked} old segment(s) the broker has not acknowledged"
        if self.kept_packs:
            s += f"; kept {self.kept_packs} old pack(s) still named by kept events"
        if self.more:
            s += "; more next pass"
        return s


def cutoff_of(keep_days: float, now: Optional[float] = None) -> float:
    """The time before which data may go (UNIX seconds)."""
    return (time.time() if now is None else now) - keep_days * DAY_S


def _day_end(day: str) -> float:
    d = _dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=_dt.timezone.utc)
    return (d + _dt.timedelta(days=1)).timestamp()


def prune_segments(
    data_dir: Union[str, Path],
    cutoff: float,
    st: PruneStats,
    *,
    acked: Optional[Callable[[Path], bool]] = None,
    sensor: Optional[str] = None,
    dry_run: bool = False,
    max_segments: int = 2000,
) -> None:
    """Delete closed segments of days that ended before ``cutoff`` (and ``acked``, if given)."""
    root = Path(data_dir) / EVENTS_DIR
    for day in _day_dirs(root, None, None):
        try:
            if _day_end(day.name) > cutoff:
                break  # sorted: every later day is younger
            entries = sorted(os.scandir(day), key=lambda e: e.name)
        except (ValueError, FileNotFoundError):  # not a real date (not ours), or gone meanwhile
            continue
        gone = st.segments
        for e in entries:
            m = SEGMENT_RE.match(e.name)
            if m is None or not m["zst"] or (sensor is not None and m["sensor"] != sensor):
                continue  # open segments, temp files, strangers, other sensors: not ours to delete
            path = Path(e.path)
            if acked is not None and not acked(path):
                st.kept_unacked += 1
                continue
            if st.segments >= max_segments:
                st.more = True
                return
            try:
                size = e.stat().st_size
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:
                continue
            st.segments += 1
            st.segment_bytes += size
            st.removed.append(f"{day.name}/{e.name}")
        if not dry_run:
            try:
                day.rmdir()  # only when empty
                st.days += 1
                fsync_dir(root)
            except OSError:
                if st.segments > gone:
                    fsync_dir(day)


def pack_candidates(data_dir: Union[str, Path], cutoff: float) -> list[str]:
    """Closed packs (a higher number of the same writer exists) last written before ``cutoff``."""
    mdir = Path(data_dir) / MESSAGES_DIR
    try:
        entries = [(m, e) for e in os.scandir(mdir) if (m := PACK_RE.match(e.name))]
    except FileNotFoundError:
        return []
    last: dict[str, int] = {}
    for m, _ in entries:
        last[m["sensor"]] = max(last.get(m["sensor"], 0), int(m["n"]))
    out = []
    for m, e in entries:
        if int(m["n"]) < last[m["sensor"]]:
            try:
                if e.stat().st_mtime < cutoff:
                    out.append(e.name)
            except FileNotFoundError:
                continue
    return sorted(out)


def referenced(data_dir: Union[str, Path], *, skip: frozenset[str] | set[str] = frozenset(),
               stats: Optional[ReadStats] = None) -> set[str]:
    """The sha256 of every body an ``smtp.message`` event still on disk names.

    Read from the lines, not decoded events: a cheap byte search per line. Unreadable
    data names nothing, which is why a pack is only dropped once it is past the cutoff."""
    shas: set[str] = set()
    st = stats if stats is not None else ReadStats()
    for path in iter_segment_files(data_dir, stats=st):
        if skip and f"{path.parent.name}/{path.name}" in skip:
            continue
        for line in iter_file_lines(path, st):
            if _MESSAGE_TAG in line:
                m = _SHA_FIELD.search(line)
                if m:
                    shas.add(m[1].decode())
    return shas


def drop_packs(
    store: MessageStore,
    candidates: Iterable[str],
    keep_shas: set[str],
    st: PruneStats,
    *,
    spare: Iterable[str] = (),
    dry_run: bool = False,
    max_packs: int = 16,
) -> None:
    """Delete candidate packs none of whose bodies is in ``keep_shas`` (nor in ``spare``):
    index rows first (one transaction), then the file. Runs where ``store`` is written."""
    spared = set(spare)
    for name in candidates:  # in the store's writer thread
        shas = [] if name in spared else [r[0] for r in store.pack_rows(name)]
        if name in spared or any(s in keep_shas for s in shas):
            st.kept_packs += 1
            st.named.append(name)
            continue
        if st.packs >= max_packs:
            st.more = True
            return
        path = store.dir / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if not dry_run:
            with store.index_transaction():
                store.delete_pack_rows(name, forget=True)
            store.forget_pack(name)
            path.unlink(missing_ok=True)
        st.packs += 1
        st.pack_bytes += size
        st.bodies += len(shas)
        st.removed.append(f"{MESSAGES_DIR}/{name}")
    if st.packs and not dry_run:
        fsync_dir(store.dir)


#: pack name -> its index rows (sha256 hex, pack, offset, raw_len, comp_len), out of the index
Retired = dict[str, list[Row]]


def retire_packs(store: MessageStore, candidates: Iterable[str], st: PruneStats, *,
                 max_packs: int = 16) -> Retired:
    """Take up to ``max_packs`` candidates' rows out of the shared index (one transaction) and
    return them: from the commit on, no writer of the data dir dedups into these packs.
    Runs in ``store``'s writer thread; the files stay until :func:`settle_packs`."""
    out: Retired = {}
    with store.index_transaction():
        for name in candidates:
            if len(out) >= max_packs:
                st.more = True
                break
            out[name] = store.pack_rows(name)
            store.delete_pack_rows(name)
    return out


def settle_packs(store: MessageStore, retired: Retired, keep_shas: set[str], st: PruneStats, *,
                 spare: Iterable[str] = ()) -> None:
    """After the barrier and the scan: delete each retired pack none of whose bodies a kept
    event names (nor in ``spare``: this writer's own hits), else put its rows back. A pack
    whose rows came back meanwhile (a writer re-indexed it at its start) is kept as it is.
    Runs in ``store``'s writer thread; the check and the unlink share one index transaction,
    so a writer opening the store either re-indexes a pack before it or finds it gone."""
    spared = set(spare)
    gone: list[str] = []
    with store.index_transaction():
        for name, rows in retired.items():
            named = name in spared or any(r[0] in keep_shas for r in rows)
            if named or store.has_pack_rows(name):
                # A body stored again meanwhile (in a younger pack) keeps its new row.
                store.restore_rows(rows)
                st.kept_packs += 1
                st.named.append(name)
                continue
            store.delete_pack_rows(name, forget=True)  # no rows left: its name goes with the file
            path = store.dir / name
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            gone.append(name)
            st.packs += 1
            st.pack_bytes += size
            st.bodies += len(rows)
            st.removed.append(f"{MESSAGES_DIR}/{name}")
    for name in gone:
        store.forget_pack(name)
    if gone:
        fsync_dir(store.dir)


def prune(
    data_dir: Union[str, Path],
    keep_days: float,
    *,
    store: Optional[MessageStore] = None,
    acked: Optional[Callable[[Path], bool]] = None,
    sensor: Optional[str] = None,
    dry_run: bool = False,
    now: Optional[float] = None,
    max_segments: int = 2000,
    max_packs: int = 16,
) -> PruneStats:
    """One whole pass in this thread: segments, then packs (if ``store``, a writable store
    that no other process writes into right now, is given)."""
    st = PruneStats()
    if keep_days <= 0:
        return st
    cutoff = cutoff_of(keep_days, now)
    prune_segments(data_dir, cutoff, st, acked=acked, sensor=sensor, dry_run=dry_run, max_segments=max_segments)
    if store is not None:
        cands = pack_candidates(data_dir, cutoff)
        if cands:
            # a dry run still has the segments it would delete: they name nothing after a real pass
            keep = referenced(data_dir, skip=set(st.removed) if dry_run else set())
            drop_packs(store, cands, keep, st, dry_run=dry_run, max_packs=max_packs)
    return st


def live_writers(data_dir: Union[str, Path], *, mine: Optional[str] = None) -> list[str]:
    """Sensors whose pack lock another process holds right now (``mine``, our own, aside):
    while one lives, it may store a new duplicate into an old pack at any moment."""

    mdir = Path(data_dir) / MESSAGES_DIR
    out = []
    try:
        names = sorted(e.name for e in os.scandir(mdir) if e.name.startswith("pack-") and e.name.endswith(".lock"))
    except FileNotFoundError:
        return []
    for name in names:
        sensor = name[len("pack-"):-len(".lock")]
        if sensor == mine:
            continue
        try:
            fd = os.open(mdir / name, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not try_lock(fd):
                out.append(sensor)
        finally:
            os.close(fd)
    return out
