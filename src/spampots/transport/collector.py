"""`spampots collect`: a durable JetStream pull consumer writing into a central store.

The central store has the sensor's format: events go to segments named after
their *source* sensor (one :class:`SegmentWriter` per source sensor and collector
process), bodies to the central :class:`MessageStore` under the collector's name.
A message is acked only after what it carried is fsynced.

Exactly once in the store, although JetStream delivers at least once
-------------------------------------------------------------------
Every event message has a ``Nats-Msg-Id`` (sensor, segment, offset on the sensor).
``<data_dir>/collect/seen.sqlite`` maps each id to the central segment and the
byte offset where its line ends, with a ``done`` flag. For every batch:

1. ids already ``done`` are duplicates: acked, not stored again; ids of a line
   another live collector is writing right now (row present, not done) are
   nak'ed with a delay and come back later;
2. new ids are inserted with ``done = 0`` and committed with an fsync (the intent);
3. the lines are written and the segments fsynced;
4. the rows are marked ``done = 1`` and the messages acked.

After a crash, rows with ``done = 0`` are checked against the segment they name
(once recovery has cut its torn tail): a row whose line end is within the segment
is marked done, one past it is deleted, so its redelivery is stored. Rows are
kept ``dedupe_days`` (default 7) to also catch a sensor re-publishing after
JetStream's duplicate window. Bodies need no such table: the message store is
content-addressed and ``put`` of a body it holds writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from ..events import MESSAGE, peek
from ..store.catalog import complete_length
from ..store.messages import MessageStore
from ..store.segments import SegmentWriter, check_sensor, recover, segment_stem
from .config import NatsSection
from .wire import (
    H_OBJECT, H_SHA, MSG_ID, AuthFailed, Backoff, connect, decode_body, headers_of, reconnect_loop,
)

log = logging.getLogger("spampots.transport")

COLLECT_DIR = "collect"
DEFAULT_DURABLE = "spampots-collector"
_BODY_WAIT_DELIVERIES = 20  # naks while an event waits for its body, then it is stored anyway
_NAK_DELAY_S = 1.0
_MESSAGE_NAME = b'"%s"' % MESSAGE.encode()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    id   TEXT PRIMARY KEY,   -- Nats-Msg-Id
    seg  TEXT NOT NULL,      -- <day>/<segment file name without .zst>, under events/
    end  INTEGER NOT NULL,   -- byte offset just past the line in that segment
    done INTEGER NOT NULL,   -- 1 once the segment was fsynced
    t    REAL NOT NULL       -- when stored (unix time), for pruning
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_pending ON seen (seg) WHERE done = 0;
CREATE INDEX IF NOT EXISTS seen_t ON seen (t);
"""


class _Writer(SegmentWriter):
    """A SegmentWriter whose file and size are known before a write (for the intents)."""

    def open_now(self) -> tuple[str, int]:
        if self._fd is None:
            self._open()
        assert self._path is not None
        return f"{self._path.parent.name}/{segment_stem(self._path.name)}", self._size


@dataclass
class CollectorStats:
    events: int = 0  # event lines stored
    bodies: int = 0  # bodies newly stored
    duplicates: int = 0  # events redelivered or re-published, recognised and not stored again
    known_bodies: int = 0  # body messages whose body the store already held
    deferred: int = 0  # naks: a body not there yet, or another collector busy with the id
    batches: int = 0
    failures: int = 0
    state: str = "starting"
    # lag: of the last batch, the messages still in the stream behind it and how long its
    # newest one had waited there; both 0 once a fetch finds nothing (caught up)
    pending: int = 0
    lag_s: float = 0.0


class Collector:
    """Consume ``cfg.stream`` with durable ``durable`` and store into ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        cfg: NatsSection,
        *,
        name: str = "collector",
        durable: str = DEFAULT_DURABLE,
        fsync: bool = True,
        dedupe_days: float = 7.0,
        segment_max_bytes: int = 64 << 20,
        segment_max_age_s: float = 3600.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.cfg = cfg
        self.name = check_sensor(name)
        self.durable = durable
        self.fsync = fsync
        self.dedupe_s = dedupe_days * 86400
        self._seg_args = dict(max_bytes=segment_max_bytes, max_age_s=segment_max_age_s)
        self.stats = CollectorStats()
        self._writers: dict[str, _Writer] = {}
        self._store: Optional[MessageStore] = None
        self._db: Optional[sqlite3.Connection] = None
        self._obs: dict[str, Any] = {}
        self._stale = False
        self._prefix_len = len(cfg.subject_prefix.split("."))
        self._problem = ""
        self._ack_wait = 0.0  # the consumer's, read at every connection
        self._warned_ack_wait = False

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Recover, take the store, reconcile the dedupe table. Raises RuntimeError if another
        collector with the same name writes this data dir."""
        (self.data_dir / COLLECT_DIR).mkdir(parents=True, exist_ok=True)
        recover(self.data_dir)
        try:
            self._store = MessageStore(self.data_dir, self.name)
        except RuntimeError:
            raise RuntimeError(f"another collector named {self.name!r} writes {self.data_dir}: "
                               "give each collector of a data dir its own --name") from None
        db = sqlite3.connect(self.data_dir / COLLECT_DIR / "seen.sqlite", isolation_level=None,
                             timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        self._db = db
        self._reconcile()
        db.execute("DELETE FROM seen WHERE done = 1 AND t < ?", (time.time() - self.dedupe_s,))

    def close(self) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except OSError as e:
                log.error("closing a central segment failed (recovery will finish it): %r", e)
        self._writers.clear()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def _reconcile(self) -> None:
        """Intents left by a crash: keep the lines that made it, forget the others."""
        db = self._db
        assert db is not None
        segs = [r[0] for r in db.execute("SELECT DISTINCT seg FROM seen WHERE done = 0")]
        for seg in segs:
            size = complete_length(self.data_dir, seg)
            if size is None:
                continue  # a live collector's segment: its own business
            db.execute("BEGIN IMMEDIATE")
            lost = db.execute("DELETE FROM seen WHERE seg = ? AND done = 0 AND end > ?", (seg, size)).rowcount
            db.execute("UPDATE seen SET done = 1 WHERE seg = ? AND done = 0", (seg,))
            db.execute("COMMIT")
            if lost:
                log.warning("%s: %d events were not on disk when the collector stopped; they will "
                            "be stored when redelivered", seg, lost)

    async def run(self, stop: asyncio.Event) -> None:
        """Collect until ``stop`` is set, reconnecting with backoff."""
        self.open()
        try:
            await reconnect_loop(self._round, stop, self.cfg.retry_max_s)
        finally:
            self.stats.state = "stopped"
            self.close()

    async def _round(self, stop: asyncio.Event, backoff: Backoff) -> float:
        try:
            nc = await connect(self.cfg, f"spampots-collector-{self.name}@{socket.gethostname()}")
        except AuthFailed as e:
            self.stats.failures += 1
            self._say("auth", logging.ERROR, "NATS refused the collector's credentials (%s); "
                      "retrying every %g s", e, self.cfg.auth_retry_s)
            return self.cfg.auth_retry_s
        except ConnectionError as e:
            self.stats.failures += 1
            self._say("unreachable", logging.WARNING, "NATS %s unreachable (%s); retrying",
                      ",".join(self.cfg.servers), e)
            return backoff.take()
        self._problem = ""
        try:
            js = nc.jetstream(timeout=self.cfg.ack_timeout_s)
            try:
                psub = await js.pull_subscribe_bind(self.durable, stream=self.cfg.stream)
                info = await psub.consumer_info()
            except Exception as e:
                self.stats.failures += 1
                self._say("no-consumer", logging.ERROR, "consumer %s on stream %s is not usable (%s): "
                          "run `spampots network init`", self.durable, self.cfg.stream, e)
                return self.cfg.retry_max_s
            log.info("collecting stream %s as %s into %s", self.cfg.stream, self.durable, self.data_dir)
            self.stats.state = "collecting"
            self._obs = {}
            self._ack_wait = float(getattr(info.config, "ack_wait", None) or 0.0)
            await self._consume(nc, js, psub, stop, backoff)
            return 0.0
        except Exception as e:
            self.stats.failures += 1
            self._say("interrupted", logging.WARNING, "collecting interrupted (%s: %s); resuming",
                      type(e).__name__, e)
            return backoff.take()
        finally:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:
                pass

    def _say(self, kind: str, level: int, fmt: str, *args: Any) -> None:
        self.stats.state = kind
        if kind != self._problem:
            log.log(level, fmt, *args)
            self._problem = kind

    async def _consume(self, nc: Any, js: Any, psub: Any, stop: asyncio.Event, backoff: Backoff) -> None:
        import nats.errors

        while not stop.is_set():
            if nc.is_closed or not nc.is_connected:
                raise ConnectionError("connection lost")
            try:
                msgs = await psub.fetch(self.cfg.batch_size, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                self.stats.pending, self.stats.lag_s = 0, 0.0
                self._rotate()
                continue
            t0 = time.monotonic()
            await self.handle(js, msgs)
            self._check_ack_wait(time.monotonic() - t0, len(msgs))
            backoff.reset()
            self._rotate()

    def _check_ack_wait(self, took: float, n: int) -> None:
        """A batch that outlasts the consumer's ack_wait is redelivered while being stored:
        harmless (the seen table drops the copies) but wasteful; say so once."""
        if self._ack_wait and took > 0.8 * self._ack_wait and not self._warned_ack_wait:
            self._warned_ack_wait = True
            log.warning("a batch of %d messages took %.1f s to store, close to the consumer's ack_wait "
                        "of %g s: messages are redelivered meanwhile (deduplicated, but wasted work); "
                        "lower batch_size or raise `spampots network init --ack-wait-s`",
                        n, took, self._ack_wait)

    def _rotate(self) -> None:
        for w in self._writers.values():
            try:
                w.maybe_rotate()
            except OSError as e:
                log.error("central segment rotation failed (recovery will finish it): %r", e)

    # -- one batch -------------------------------------------------------------------------------

    def _sensor_of(self, subject: str) -> tuple[str, str]:
        """(source sensor, kind) from ``<prefix>.<sensor>.<kind>``."""
        parts = subject.split(".")
        if len(parts) != self._prefix_len + 2:
            return "", ""
        return parts[self._prefix_len], parts[-1]

    async def handle(self, js: Any, msgs: list) -> None:
        store, db = self._store, self._db
        assert store is not None and db is not None
        events: list[tuple[Any, str, str]] = []  # (msg, sensor, id)
        acks: list[Any] = []
        naks: list[Any] = []
        for m in msgs:
            sensor, kind = self._sensor_of(m.subject)
            try:
                check_sensor(sensor)
            except ValueError:
                log.error("dropping a message on %r: not <prefix>.<sensor>.<kind>", m.subject)
                acks.append(m)
                continue
            if kind == "messages":
                if await self._store_body(js, m):
                    acks.append(m)
                else:
                    naks.append(m)
            elif kind == "events":
                mid = headers_of(m).get(MSG_ID) or f"seq:{m.metadata.sequence.stream}"
                events.append((m, sensor, mid))
            else:
                log.error("dropping a message on %r: unknown kind", m.subject)
                acks.append(m)
        if self.fsync:
            store.sync()  # bodies durable before their events are written, and before acks
        if events:
            a, n = self._store_events(events)
            acks += a
            naks += n
        for m in acks:
            await m.ack()
        for m in naks:
            await m.nak(delay=_NAK_DELAY_S)
        self.stats.deferred += len(naks)
        self.stats.batches += 1
        self._note_lag(msgs[-1] if msgs else None)
        if self._stale:  # rows of a collector that died: finish its segments, settle its intents
            self._stale = False
            recover(self.data_dir)
            self._reconcile()

    def _note_lag(self, last: Any) -> None:
        if last is None:
            return
        try:
            md = last.metadata  # from the ack subject; raises for a message that has none
            pending, stored = int(md.num_pending), md.timestamp.timestamp()
        except Exception:
            return
        self.stats.pending = pending
        self.stats.lag_s = max(0.0, time.time() - stored)

    async def _store_body(self, js: Any, m: Any) -> bool:
        """Store one body message; False to have it redelivered later."""
        store = self._store
        assert store is not None
        hdr = headers_of(m)
        sha = hdr.get(H_SHA, "")
        if sha in store:
            self.stats.known_bodies += 1
            return True
        try:
            if hdr.get(H_OBJECT):
                body = await self._get_object(js, hdr[H_OBJECT], sha)
            else:
                body = decode_body(m.data, hdr)
        except LookupError as e:
            log.error("body %s: %s; its events are stored without it", sha, e)
            return True
        except Exception as e:
            log.error("body %s could not be read (%r); dropped", sha, e)
            return True
        _, new = store.put(body, sha)
        self.stats.bodies += new
        return True

    async def _get_object(self, js: Any, bucket: str, sha: str) -> bytes:
        import nats.js.errors

        obs = self._obs.get(bucket)
        if obs is None:
            obs = self._obs[bucket] = await js.object_store(bucket)
        try:
            res = await asyncio.wait_for(obs.get(sha), self.cfg.ack_timeout_s * 4)
        except nats.js.errors.ObjectNotFoundError:
            raise LookupError(f"not in object store {bucket} (expired?)") from None
        body = bytes(res.data)
        decode_body(body, {H_SHA: sha, "Spampots-Encoding": "identity"})  # checks the sha
        return body

    def _store_events(self, events: list[tuple[Any, str, str]]) -> tuple[list, list]:
        store, db = self._store, self._db
        assert store is not None and db is not None
        acks, naks = [], []
        now = time.time()
        db.execute("PRAGMA synchronous=FULL" if self.fsync else "PRAGMA synchronous=OFF")
        db.execute("BEGIN IMMEDIATE")  # serialises collectors sharing this data dir
        try:
            ids = list({mid for _, _, mid in events})
            seen: dict[str, int] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                q = f"SELECT id, done FROM seen WHERE id IN ({','.join('?' * len(chunk))})"
                seen.update(db.execute(q, chunk).fetchall())
            todo: dict[str, list[tuple[Any, str, bytes]]] = {}  # sensor -> (msg, id, line)
            rows = []
            taken: set[str] = set()
            for m, sensor, mid in events:
                if mid in seen or mid in taken:
                    if seen.get(mid) == 0:
                        naks.append(m)  # another collector is writing it right now (or died)
                        if m.metadata.num_delivered >= 5:
                            self._stale = True
                    else:
                        acks.append(m)
                        self.stats.duplicates += 1
                    continue
                if self._body_missing(m):
                    naks.append(m)
                    continue
                taken.add(mid)
                todo.setdefault(sensor, []).append((m, mid, bytes(m.data)))
            for sensor, items in todo.items():
                w = self._writers.get(sensor)
                if w is None:
                    w = self._writers[sensor] = _Writer(self.data_dir, sensor, **self._seg_args)  # type: ignore[arg-type]
                seg, end = w.open_now()
                for _, mid, line in items:
                    end += len(line) + 1
                    rows.append((mid, seg, end, 0, now))
            db.executemany("INSERT INTO seen VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")  # the intents are durable before any line is written
        except BaseException:
            db.execute("ROLLBACK")
            raise
        for sensor, items in todo.items():
            w = self._writers[sensor]
            w.write(b"".join(line + b"\n" for _, _, line in items))
            if self.fsync:
                w.sync()
        db.execute("PRAGMA synchronous=OFF")  # losing "done" only costs a check at startup
        db.executemany("UPDATE seen SET done = 1 WHERE id = ?", [(r[0],) for r in rows])
        for items in todo.values():
            acks += [m for m, _, _ in items]
            self.stats.events += len(items)
        return acks, naks

    def _body_missing(self, m: Any) -> bool:
        """An smtp.message whose body is not here yet (another collector, or still in flight):
        wait for it a little, then store the event anyway."""
        if _MESSAGE_NAME not in m.data:
            return False
        sha = peek(m.data).sha256
        if not sha or sha in self._store:  # type: ignore[operator]
            return False
        if m.metadata.num_delivered < _BODY_WAIT_DELIVERIES:
            return True
        log.error("event for message %s stored without its body (never received)", sha)
        return False
