"""The group-commit writer between the asyncio sensor and the store.

One thread owns the :class:`SegmentWriter`, the :class:`MessageStore` and the
:class:`~spampots.store.journal.Journal`. The
event loop never blocks on it: what the loop emits during one pass of the loop
goes into a plain list, handed to the writer once at the end of the pass (one
lock, at most one wake-up, however many sessions emitted). Other threads hand
over each item at once. Natural group commit: an idle writer takes what is
queued at once (no linger); whatever queues while it commits forms the next
batch. A batch:

1. message bodies into the pack (written, not synced);
2. one journal record holding those pack records and the messages' event lines,
   and the journal's fdatasync: the one sync a message waits for (journal.py);
   then the bodies' index rows in one SQLite transaction;
3. all event lines (in queue order) in one write to the segment;
4. a *checkpoint* (pack and segment fdatasync, the journal starts over) when the
   batch holds a flush or a close, the journal is full, or the last one is
   ``_PLAIN_SYNC_S`` old (this also bounds the loss of plain events in a machine
   crash); a batch that does not fit the journal, or the first one of a new
   segment, syncs the pack before its lines are written and the segment after;
5. the futures of the batch are resolved in one ``call_soon_threadsafe``.

Every message event line reaches the segment only once it and its body are
durable (in the journal, or the pack synced first), and :meth:`Recorder.start`
puts back what a crash lost of the journaled ones (bodies into the pack, event
lines missing from their segment appended again), so after any crash an
``spampots.smtp.message`` event on disk implies its body is too.
A failure (disk full) fails the futures it affects and is logged to
``spampots.store``, at most one line per failure kind and ``_FAIL_LOG_S`` with a count
of the rest; plain ``emit`` events have no future, so their loss is logged and
counted in ``stats.errors``. A failed segment write is cut off and the same segment
is retried, so a full disk creates no new files.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..events import Event, SmtpMessage, encode
from .journal import Journal, journal_name, missing_lines
from .messages import MessageStore, disk_full
from ..lograte import RateLimitedLog
from .segments import SegmentWriter, recover

log = logging.getLogger("spampots.store")

_IDLE_TICK_S = 0.5  # how often an idle writer checks segment age
_PLAIN_SYNC_S = 0.05  # the longest plain events stay queued, or written but not synced; the checkpoint cadence
_PLAIN_MAX_QUEUED = 1024  # plain events that wake the writer before the tick
_FAIL_LOG_S = 10.0  # one log line per failure kind per this many seconds (a full disk fails every batch)
# kinds _DURABLE.._CLOSE need a sync before they resolve; _CALL runs a function in the writer thread
_EVENT, _DURABLE, _BARRIER, _CLOSE, _CALL = range(5)


class LatencyHistogram:
    """Durations in fixed buckets (Prometheus ``le`` bounds, in seconds): a list index per
    observation, no allocation. One thread writes it; readers copy it with :meth:`snapshot`."""

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    __slots__ = ("counts", "sum", "max")

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.BOUNDS, seconds)] += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> "LatencyHistogram":
        h = LatencyHistogram()
        h.counts, h.sum, h.max = list(self.counts), self.sum, self.max
        return h


class RecorderError(RuntimeError):
    """The recorder is not running (not started, closed, or its thread died)."""


@dataclass
class RecorderStats:
    events: int = 0  # event lines written
    messages: int = 0  # message events written with a durable body
    bodies_new: int = 0  # bodies stored (the others were already there)
    bytes: int = 0  # bytes written to segments and packs
    fsyncs: int = 0  # file and directory fsyncs (journal, packs, segments)
    batches: int = 0  # group commits
    errors: int = 0  # failed batches, failed bodies, failed rotations
    queued: int = 0  # items waiting for the writer thread right now
    fsync_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)  # per segment or pack sync


class _SyncWaiter:
    """A future for callers without an event loop."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: Any = None
        self.exc: Optional[BaseException] = None

    def set(self, result: Any, exc: Optional[BaseException]) -> None:
        self.result, self.exc = result, exc
        self._done.set()

    def wait(self, timeout: Optional[float]) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError("recorder did not commit in time")
        if self.exc is not None:
            raise self.exc
        return self.result


class _Item:
    __slots__ = ("kind", "line", "event", "body", "fut", "loop", "waiter", "result", "exc", "fn")

    def __init__(
        self,
        kind: int,
        *,
        line: Optional[bytes] = None,
        event: Optional[Event] = None,
        body: Optional[bytes] = None,
        fut: Optional[asyncio.Future] = None,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        waiter: Optional[_SyncWaiter] = None,
        fn: Optional[Callable[[MessageStore], Any]] = None,
    ) -> None:
        self.kind, self.line, self.event, self.body, self.fn = kind, line, event, body, fn
        self.fut, self.loop, self.waiter = fut, loop, waiter
        self.result: Any = None
        self.exc: Optional[BaseException] = None


class _Then:
    """A callback in a future's place (see :meth:`Recorder.emit_durable_then`): what
    :func:`_settle` calls on a future, it passes on to the callback, once."""

    __slots__ = ("fn", "fired")

    def __init__(self, fn: Callable[[Any, Optional[BaseException]], None]) -> None:
        self.fn = fn
        self.fired = False

    def done(self) -> bool:
        return self.fired

    def set_result(self, result: Any) -> None:
        self._fire(result, None)

    def set_exception(self, exc: BaseException) -> None:
        self._fire(None, exc)

    def _fire(self, result: Any, exc: Optional[BaseException]) -> None:
        self.fired = True
        try:
            self.fn(result, exc)
        except Exception:  # one session's bug must not keep the rest of the batch unanswered
            log.exception("a durable message's callback failed")


def _settle(entries: list[tuple[asyncio.Future, Any, Optional[BaseException]]]) -> None:
    for fut, result, exc in entries:
        if fut.done():  # cancelled by its waiter
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class Recorder:
    """Durable, batched recording of events and message bodies for one sensor."""

    def __init__(
        self,
        data_dir: Union[str, Path],
        sensor: str,
        *,
        fsync: bool = True,
        segment_max_bytes: int = 64 << 20,
        segment_max_age_s: float = 3600.0,
        pack_max_bytes: int = 256 << 20,
        pack_writer: str = "",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.sensor = sensor
        self.pack_writer = pack_writer or sensor  # whose packs: one writer each (a worker has its own)
        self._fsync = fsync
        self._seg_args = dict(max_bytes=segment_max_bytes, max_age_s=segment_max_age_s)
        self._pack_max = pack_max_bytes
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[_Item] = []  # swapped out whole by the writer, under _cond
        self._urgent = False  # a waited-on item is queued: commit without waiting
        self._idle = False  # the writer is in a long wait with nothing to write or sync
        self._accepting = True  # False once the writer has failed what was left queued
        self._synced_at = 0.0  # monotonic time of the last segment sync (or clean state)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_tid: Optional[int] = None  # the thread running _loop, when start() ran in it
        self._local: list[_Item] = []  # queued on the loop's thread, not yet handed off
        self._handoff_due = False  # a _hand_off is scheduled on the loop
        self._thread: Optional[threading.Thread] = None
        self._seg: Optional[SegmentWriter] = None
        self._store: Optional[MessageStore] = None
        self._journal: Optional[Journal] = None  # with fsync only; None again after a failed checkpoint
        self._journal_fsyncs = 0  # of a journal given up
        self._seg_name: tuple[Optional[Path], str] = (None, "")  # the open segment, relative to data_dir
        self._closing = False
        self._close_fut: Optional[asyncio.Future] = None
        self._close_waiter: Optional[_SyncWaiter] = None
        self._fatal: Optional[BaseException] = None
        self._stats = RecorderStats()
        self._log_sync, self._log_bodies, self._log_lines, self._log_rotate = (
            RateLimitedLog(log, _FAIL_LOG_S) for _ in range(4))

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        """Recover dead segments, open the store, start the writer thread.

        ``loop`` is where futures are resolved; without it, ``emit_durable`` and
        ``flush`` use the running loop of their caller, and the ``*_sync``
        methods work from any thread.
        """
        if self._thread is not None:
            raise RecorderError("recorder already started")
        self._loop = loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is loop:
            self._loop_tid = threading.get_ident()
        recovered = recover(self.data_dir)
        if recovered:
            log.info("recovered %d segments left by dead writers", len(recovered))
        self._store = MessageStore(self.data_dir, self.pack_writer, pack_max_bytes=self._pack_max)
        try:
            self._seg = SegmentWriter(self.data_dir, self.sensor, **self._seg_args)  # type: ignore[arg-type]
            self._replay_journal()
        except BaseException:
            if self._journal is not None:
                self._journal.close()
            self._store.close()
            raise
        self._thread = threading.Thread(target=self._run, name="spampots-recorder", daemon=True)
        self._thread.start()

    def _replay_journal(self) -> None:
        """Put back what a crash lost of the last journal round, then start a new round.

        Bodies the packs lack are appended (a dedup hit is only checked); event lines not in
        the segment the dead writer wrote them to are appended to ours. Both are synced before
        the journal is reset. Replaying a round that was already complete changes nothing."""
        store, seg = self._store, self._seg
        assert store is not None and seg is not None
        path = store.dir / journal_name(self.pack_writer)
        if not self._fsync and not path.exists():
            return
        journal: Optional[Journal] = None
        try:
            journal = Journal(store.dir, self.pack_writer)
            entries = journal.read()
            if entries:
                put = sum(store.put_record(r) for e in entries for r in e.records)
                lines = missing_lines(self.data_dir, entries)
                store.sync()
                if lines:
                    seg.write(lines)
                    seg.sync()
                if put or lines:
                    log.warning("journal %s: %d bodies and %d message events a crash had lost put back",
                                path.name, put, lines.count(b"\n"))
            journal.checkpoint()
        except OSError as e:
            if not disk_full(e):
                raise
            # A full disk must not keep the sensor down (it refuses mail until there is room):
            # run without a journal (pack and segment synced before each 250, as without one);
            # a journal not replayed stays on disk for the next start, which replays it.
            if journal is not None:
                journal.close()
            self._stats.errors += 1
            log.error("journal %s: %s: committing without it (two syncs per batch) until the next start",
                      path.name, e)
            return
        if self._fsync:
            self._journal = journal
        else:
            journal.close(remove=True)

    async def close(self) -> None:
        """Drain the queue, fsync, compress the open segment, close the store."""
        if self._thread is None:
            return
        if self._close_fut is None and self._close_waiter is None:
            loop = asyncio.get_running_loop()
            self._close_fut = loop.create_future()
            self._request_close(_Item(_CLOSE, fut=self._close_fut, loop=loop))
        try:
            if self._close_fut is not None:
                await self._close_fut
            else:  # closed by close_sync meanwhile
                await asyncio.get_running_loop().run_in_executor(None, self._close_waiter.wait, None)  # type: ignore[union-attr]
        finally:
            self._thread.join()  # it resolves the close future as its last act

    def close_sync(self, timeout: Optional[float] = None) -> None:
        if self._thread is None:
            return
        if self._close_waiter is None:
            self._close_waiter = _SyncWaiter()
            self._request_close(_Item(_CLOSE, waiter=self._close_waiter))
        try:
            self._close_waiter.wait(timeout)
        finally:
            self._thread.join(timeout)

    def _request_close(self, item: _Item) -> None:
        if self._loop_tid == threading.get_ident():
            self._hand_off()  # what the loop queued goes before the close
        self._closing = True
        if self._fatal is not None or not self._thread.is_alive():  # type: ignore[union-attr]
            self._resolve([item], self._fatal or RecorderError("writer thread is gone"))
        elif not self._enqueue([item]):
            self._resolve([item], RecorderError("recorder closed"))

    def __enter__(self) -> "Recorder":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_sync()

    # -- producers (event loop thread, or any thread for the *_sync ones) ------------------------

    def _put(self, item: _Item, *, blocking: bool = False) -> None:
        """Queue an item. On the loop's thread it joins this loop pass's hand-off (one lock
        and at most one wake-up of the writer per pass, however many sessions emitted);
        ``blocking``: the caller waits for it right here, so it must reach the writer now."""
        if self._fatal is not None:
            raise RecorderError("recorder writer thread failed") from self._fatal
        if self._thread is None or self._closing:
            raise RecorderError("recorder is not running")
        if self._loop_tid == threading.get_ident():
            if not blocking:
                self._local.append(item)
                if not self._handoff_due:
                    self._handoff_due = True
                    self._loop.call_soon(self._hand_off)  # type: ignore[union-attr]
                return
            self._hand_off()  # what this thread queued before goes first
        if not self._enqueue([item]):
            raise RecorderError("recorder is not running")

    def _hand_off(self) -> None:
        """Give the writer what the loop queued in this pass (runs on the loop's thread)."""
        self._handoff_due = False
        items, self._local = self._local, []
        if items and not self._enqueue(items):  # the writer failed or closed meanwhile
            lost = sum(it.kind == _EVENT for it in items)
            if lost:
                self._stats.errors += 1
                log.error("%d events not recorded: the recorder stopped", lost)
            self._resolve(items, self._fatal or RecorderError("recorder is not running"))

    def _enqueue(self, items: list[_Item]) -> bool:
        with self._cond:
            if not self._accepting:
                return False
            self._pending += items
            # Wake the writer only for what someone waits on (or a pile-up): plain events
            # ride with the next message or the periodic tick, saving thread hand-offs.
            if len(self._pending) >= _PLAIN_MAX_QUEUED or any(it.kind >= _DURABLE for it in items):
                self._urgent = True
                self._cond.notify()
            elif self._idle:  # in its long idle wait: let it shorten the wait
                self._idle = False
                self._cond.notify()
        return True

    def emit(self, event: Event) -> None:
        """Queue one event (encoded now, so later changes to the object do not leak in)."""
        self._put(_Item(_EVENT, line=encode(event)))

    def emit_durable(self, event: SmtpMessage, body: bytes) -> "asyncio.Future[str]":
        """Queue a message; the future gives its sha256 once body and event are fsynced.

        An empty ``event.sha256`` is filled in by the writer thread, which owns
        the event object from now on.
        """
        loop = self._loop or asyncio.get_running_loop()
        fut = loop.create_future()
        self._put(_Item(_DURABLE, event=event, body=bytes(body), fut=fut, loop=loop))
        return fut

    def emit_durable_then(self, event: SmtpMessage, body: bytes,
                          then: Callable[[Optional[str], Optional[BaseException]], None]) -> None:
        """:meth:`emit_durable` for the sensor's sessions: ``then(sha256, None)`` once body and
        event are fsynced, or ``then(None, error)``, called on the loop's thread as the batch
        is settled. No future: one object less per message, and no loop pass between the
        commit and the reply a future's done callbacks would wait for."""
        loop = self._loop or asyncio.get_running_loop()
        self._put(_Item(_DURABLE, event=event, body=bytes(body), fut=_Then(then), loop=loop))  # type: ignore[arg-type]

    def flush(self) -> "asyncio.Future[None]":
        """A future resolved when everything queued before it is durable."""
        loop = self._loop or asyncio.get_running_loop()
        fut = loop.create_future()
        self._put(_Item(_BARRIER, fut=fut, loop=loop))
        return fut

    def flush_sync(self, timeout: Optional[float] = None) -> None:
        waiter = _SyncWaiter()
        self._put(_Item(_BARRIER, waiter=waiter), blocking=True)
        waiter.wait(timeout)

    def emit_durable_sync(self, event: SmtpMessage, body: bytes, timeout: Optional[float] = None) -> str:
        waiter = _SyncWaiter()
        self._put(_Item(_DURABLE, event=event, body=bytes(body), waiter=waiter), blocking=True)
        return waiter.wait(timeout)

    def call(self, fn: Callable[[MessageStore], Any]) -> "asyncio.Future[Any]":
        """Run ``fn(store)`` in the writer thread, between two batches (nothing is put
        meanwhile); the future gives its result. Keep it short: 250s wait behind it."""
        loop = self._loop or asyncio.get_running_loop()
        fut = loop.create_future()
        self._put(_Item(_CALL, fn=fn, fut=fut, loop=loop))
        return fut

    def call_sync(self, fn: Callable[[MessageStore], Any], timeout: Optional[float] = None) -> Any:
        waiter = _SyncWaiter()
        self._put(_Item(_CALL, fn=fn, waiter=waiter), blocking=True)
        return waiter.wait(timeout)

    @property
    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
        s = RecorderStats(**vars(self._stats))
        s.fsync_seconds = self._stats.fsync_seconds.snapshot()
        for part in (self._seg, self._store):
            if part is not None:
                s.fsyncs += part.fsyncs
                s.bytes += part.bytes_written
        s.fsyncs += self._journal_fsyncs + (self._journal.fsyncs if self._journal is not None else 0)
        s.queued = len(self._pending) + len(self._local)
        return s

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        batch: list[_Item] = []
        try:
            while True:
                batch = self._take()
                if not batch:
                    self._sync_plain()
                    self._rotate()
                    continue
                self._commit(batch)
                self._calls(batch)
                close = next((it for it in batch if it.kind == _CLOSE), None)
                if close is not None:
                    self._shutdown(close)
                    return
                self._rotate()
        except BaseException as e:  # a bug, or something worse than an I/O error
            log.critical("recorder writer thread died", exc_info=True)
            self._fatal = e
            self._resolve([it for it in batch if it.fut or it.waiter], e)
            self._fail_queued(e)

    def _take(self) -> list[_Item]:
        """Everything queued; waits while nothing urgent is, at most until a plain sync is due."""
        with self._cond:
            if not self._urgent:
                timeout = _IDLE_TICK_S
                if self._pending or (self._fsync and self._seg is not None and self._unsynced()):
                    timeout = max(0.0, min(timeout, self._synced_at + _PLAIN_SYNC_S - time.monotonic()))
                else:
                    self._idle = True
                self._cond.wait(timeout)
            batch, self._pending, self._urgent, self._idle = self._pending, [], False, False
        return batch

    def _unsynced(self) -> bool:
        """Written since the last checkpoint: plain events, or journaled messages."""
        return self._seg.dirty or (self._journal is not None and self._journal.pending)  # type: ignore[union-attr]

    def _sync_plain(self) -> None:
        """Checkpoint once plain events or journaled messages have waited long enough."""
        if self._fsync and self._seg is not None and self._unsynced() \
                and time.monotonic() - self._synced_at >= _PLAIN_SYNC_S:
            self._checkpoint()

    def _checkpoint(self) -> Optional[BaseException]:
        """fdatasync the pack (and dedup hits' packs) and the segment; the journal starts over."""
        try:
            if self._journal is not None and self._journal.pending:
                self._timed_sync(self._store)  # type: ignore[arg-type]
            self._timed_sync(self._seg)  # type: ignore[arg-type]
            if self._journal is not None:
                self._journal.checkpoint()
        except Exception as e:
            self._stats.errors += 1
            self._log_sync.error("fsync of the event segment or the pack failed: %r", e)
            journal = self._journal
            if journal is not None and journal.pending:
                # What it holds may now be the only durable copy: keep it as it is for the next
                # start to replay, and sync pack and segment on every batch until then.
                self._journal, self._journal_fsyncs = None, self._journal_fsyncs + journal.fsyncs
                journal.close()
            return e  # a failed segment was given up (recover() finishes it)
        finally:
            self._synced_at = time.monotonic()
        return None

    def _timed_sync(self, part: Union[SegmentWriter, MessageStore, Journal]) -> None:
        t0 = time.monotonic()
        part.sync()
        self._stats.fsync_seconds.observe(time.monotonic() - t0)

    def _commit(self, batch: list[_Item]) -> None:
        store, seg, st = self._store, self._seg, self._stats
        assert store is not None and seg is not None
        durable = [it for it in batch if it.kind == _DURABLE]
        # Only messages, flushes and closes are waited on; plain events ride along.
        barrier = self._fsync and any(_BARRIER <= it.kind <= _CLOSE for it in batch)
        synced = False  # a checkpoint made everything written so far durable
        if durable:
            try:
                with store.batch():
                    synced = self._store_bodies(store, seg, durable)
            except Exception as e:  # the journal's or the pack's fsync, or the index commit: none acknowledged
                st.errors += 1
                self._log_bodies.error("storing %d message bodies failed: %r", len(durable), e)
                for it in durable:
                    it.exc = it.exc or e
        batch_exc: Optional[BaseException] = None
        lines = [it.line for it in batch if it.line is not None and it.exc is None]
        if lines:
            try:
                seg.write(b"".join(lines))
            except Exception as e:
                batch_exc = e
                st.errors += 1
                lost = sum(it.kind == _EVENT for it in batch)
                self._log_lines.error("writing %d event lines failed (%d plain events lost): %r", len(lines), lost, e)
                # The writer cut off what got in and retries the same file. Journaled message
                # lines are still put back by the next start if the process dies before that.
            else:
                st.events += len(lines)
                st.messages += sum(1 for it in durable if it.exc is None)
        if batch_exc is None and self._fsync and (
                synced or barrier or time.monotonic() - self._synced_at >= _PLAIN_SYNC_S
                or (self._journal is not None and self._journal.nearly_full)):
            batch_exc = self._checkpoint()
        elif not self._fsync and lines:
            self._synced_at = time.monotonic()
        st.batches += 1
        self._resolve([it for it in batch if it.kind < _CLOSE], batch_exc)

    def _calls(self, batch: list[_Item]) -> None:
        calls = [it for it in batch if it.kind == _CALL]
        for it in calls:
            try:
                it.result = it.fn(self._store)  # type: ignore[misc]
            except Exception as e:
                it.exc = e
                log.error("store maintenance failed: %r", e)
        if calls:
            self._resolve(calls, None)

    def _store_bodies(self, store: MessageStore, seg: SegmentWriter, durable: list[_Item]) -> bool:
        """Put each body (its failure is its own) and encode its event, then make them durable
        with one journal record and its fdatasync; returns True when it took a checkpoint instead
        (no journal, a record too big for what is left of it, or no segment open yet: the pack
        is synced now and the caller syncs the segment after writing the lines)."""
        st = self._stats
        records: list[bytes] = []
        try:
            results = store.put_many([(it.body, getattr(it.event, "sha256", "") or None) for it in durable])  # type: ignore[misc]
        except Exception as e:  # the lookup itself (the index unreadable): every body of the batch
            results = [e] * len(durable)
        for it, res in zip(durable, results):
            if isinstance(res, Exception):
                it.exc = res
                st.errors += 1
                self._log_bodies.error("storing a message body failed: %r", res)
                continue
            sha, new, record = res
            ev = it.event
            if not getattr(ev, "sha256", ""):
                ev.sha256 = sha  # type: ignore[union-attr]
            it.line, it.result, it.body = encode(ev), sha, None  # type: ignore[arg-type]
            records.append(record)
            st.bodies_new += new
        if not self._fsync or not records:
            return False
        journal, current = self._journal, seg.current
        if journal is not None and current is not None:
            if self._seg_name[0] is not current:
                self._seg_name = (current, str(current.relative_to(self.data_dir)))
            name = self._seg_name[1]
            lines = b"".join(it.line for it in durable if it.exc is None)  # type: ignore[misc]
            if journal.fits(name, lines, records):
                t0 = time.monotonic()
                journal.append(name, lines, records)  # raises: the caller fails the batch, rows roll back
                st.fsync_seconds.observe(time.monotonic() - t0)
                return False
        self._timed_sync(store)  # raises: the caller fails the batch and the index rows roll back
        return True

    def _resolve(self, items: list[_Item], batch_exc: Optional[BaseException]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for it in items:
            exc = it.exc or batch_exc
            if it.fut is not None:
                by_loop.setdefault(it.loop, []).append((it.fut, None if exc else it.result, exc))  # type: ignore[arg-type]
            elif it.waiter is not None:
                it.waiter.set(None if exc else it.result, exc)
        for loop, entries in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, entries)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.warning("event loop closed: %d results dropped", len(entries))

    def _rotate(self) -> None:
        try:
            self._seg.maybe_rotate()  # type: ignore[union-attr]
        except Exception as e:
            self._stats.errors += 1
            self._log_rotate.error("segment rotation failed (recover() will finish it): %r", e)

    def _shutdown(self, close: _Item) -> None:
        exc: Optional[BaseException] = None
        for step in (self._seg.close, self._store.close):  # type: ignore[union-attr]
            try:
                step()
            except Exception as e:
                exc = exc or e
                self._stats.errors += 1
                log.error("closing the store failed: %r", e)
        if self._journal is not None:  # segment and pack synced: nothing journaled is needed any more
            self._journal.close(remove=exc is None)
        for throttled in (self._log_sync, self._log_bodies, self._log_lines, self._log_rotate):
            throttled.flush()
        self._fail_queued(RecorderError("recorder closed"))
        self._resolve([close], exc)

    def _fail_queued(self, exc: BaseException) -> None:
        with self._cond:
            self._accepting = False
            left, self._pending = self._pending, []
        if left:
            self._resolve(left, exc)
