"""Store and forward: ship a sensor's local store to NATS JetStream.

The sensor writes everything to its local store first (``spampots.store``); the
shipper reads it back and publishes, so a broker outage never stops capture.

* Events are read from the segments (open and closed) in order, from a durable
  cursor (``<data_dir>/ship/<sensor>.cursor``: segment + byte offset of the last
  acked line), ``batch_size`` lines at a time.
* Message bodies named by the batch's ``spampots.smtp.message`` events are
  published first, once per SHA-256 (``<data_dir>/ship/<sensor>.bodies.sqlite``
  remembers which), and their acks awaited; then the events; then the cursor is
  saved. Nothing is considered shipped before the broker acked it.
* Every message has a deterministic ``Nats-Msg-Id``, so a retry after a lost ack is
  dropped by JetStream's duplicate window (and by the collector after that).
* While the broker is unreachable the shipper retries with backoff (and slowly
  after an authentication failure), logging each state change once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import msgspec
from nats.js.errors import NoStreamResponseError

from .. import __version__
from ..events import HEARTBEAT, MESSAGE, SensorHeartbeat, decode, now_iso, peek
from ..store.catalog import Cursor, Line, Reader, bytes_left, pending_segments, segment_files
from ..store.messages import MessageStore
from ..store.segments import check_sensor, fsync_dir
from .availability import ts_seconds
from .config import NatsSection
from .wire import (
    H_ENCODING, H_OBJECT, H_SHA, H_SIZE, MSG_ID, PAYLOAD_HEADROOM, AuthFailed, Backoff, Heartbeat,
    ShipStatus, TlsFailed, body_msg_id, connect, encode_body, event_msg_id, is_auth_error, reconnect_loop, sleep_or_stop,
)

log = logging.getLogger("spampots.transport")

SHIP_DIR = "ship"
_BODY_ROUND_BYTES = 32 << 20  # bodies published per ack round, at most
_REPEAT_LOG_S = 600.0  # an unchanged problem is logged again this often


def backlog(data_dir: Path, sensor: str, cursor: Cursor, finished: tuple[str, ...] = ()) -> tuple[int, int]:
    """(bytes, segments) of ``sensor`` not yet acked past ``cursor``, as on disk (a compressed
    segment counts whole); ``finished``: segments fully read whose file may be gone. Reads
    only: ``spampots status`` uses it on a data dir it must not change."""
    total = count = 0
    for seg in pending_segments(data_dir, sensor, cursor):
        path, zst = segment_files(data_dir, seg)
        try:
            left = bytes_left(path, cursor.position(seg))
        except FileNotFoundError:
            if seg in finished:
                continue
            try:
                left = zst.stat().st_size
            except FileNotFoundError:
                continue
        if left > 0:
            total += left
            count += 1
    return total, count


class StreamMissing(RuntimeError):
    pass


@dataclass
class ShipperStats:
    events: int = 0  # event lines acked by the broker since start
    bodies: int = 0  # bodies acked
    duplicates: int = 0  # acks that said "duplicate" (a retry the broker already had)
    rounds: int = 0  # publish rounds acked
    failures: int = 0  # connection attempts or rounds that failed
    state: str = "starting"  # starting, shipping, unreachable, auth-failed, no-stream, stopped
    connected: bool = False
    caught_up: bool = False  # everything on disk was acked at the last look
    last_ack: float = 0.0  # unix time of the broker's last publish ack (0: none since start)


class Shipper:
    """Ship ``data_dir``'s events and bodies of ``sensor_id`` to JetStream until ``stop`` is set."""

    def __init__(self, data_dir: Path, sensor_id: str, cfg: NatsSection) -> None:
        # Relative stays relative: a sensor that dropped root works from inside its data dir.
        self.data_dir = Path(data_dir)
        self.sensor = check_sensor(sensor_id)
        self.cfg = cfg
        self.dir = self.data_dir / SHIP_DIR
        self.cursor_path = self.dir / f"{self.sensor}.cursor"
        self.stats = ShipperStats()
        self._db: Optional[sqlite3.Connection] = None
        self._store: Optional[MessageStore] = None
        self._reader: Optional[Reader] = None
        self._last_hb: Optional[Heartbeat] = None
        self._last_ts = ""
        self._logged: dict[str, float] = {}  # problem state -> when it was last logged
        self._async_error: Optional[Exception] = None
        self._subj_events = cfg.subject(self.sensor, "events")
        self._subj_msgs = cfg.subject(self.sensor, "messages")
        self._subj_status = cfg.subject(self.sensor, "status")

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._reader = Reader(self.data_dir, cursor_path=self.cursor_path, sensor=self.sensor)
        self._db = sqlite3.connect(self.dir / f"{self.sensor}.bodies.sqlite", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # a lost row re-ships one body: harmless
        self._db.execute("CREATE TABLE IF NOT EXISTS shipped (sha256 TEXT PRIMARY KEY) WITHOUT ROWID")
        try:
            await reconnect_loop(self._round, stop, self.cfg.retry_max_s)
        finally:
            self.stats.state, self.stats.connected = "stopped", False
            if self._store is not None:
                self._store.close()
            self._db.close()
            self._reader.close()

    async def _round(self, stop: asyncio.Event, backoff: Backoff) -> float:
        """One connection's worth of shipping; returns how long to wait before the next."""
        self._async_error = None
        try:
            nc = await connect(self.cfg, f"spampots-shipper-{self.sensor}", self._on_async_error)
        except AuthFailed as e:
            self.stats.failures += 1
            what = ("TLS with NATS failed for sensor %s" if isinstance(e, TlsFailed)
                    else "NATS refused the credentials of sensor %s")
            self._report("auth-failed", logging.ERROR,
                         what + " (%s): nothing is shipped, capture continues in the local store; "
                         "retrying every %g s", self.sensor, e, self.cfg.auth_retry_s)
            return self.cfg.auth_retry_s
        except ConnectionError as e:
            self.stats.failures += 1
            self._report("unreachable", logging.WARNING,
                         "NATS %s unreachable (%s): capture continues in the local store, "
                         "%d bytes waiting; retrying", ",".join(self.cfg.servers), e, self._backlog()[0])
            return backoff.take()
        self.stats.connected = True
        log.info("connected to NATS %s: shipping sensor %s from %s+%d",
                 nc.connected_url.netloc if nc.connected_url else "?", self.sensor,
                 self._cursor.segment or "the start", self._cursor.offset)
        self._logged.clear()
        self.stats.state = "shipping"
        try:
            await self._ship(nc, stop, backoff)
            return 0.0
        except StreamMissing as e:
            self.stats.failures += 1
            self._report("no-stream", logging.ERROR, "%s: run `spampots network init`; "
                         "capture continues in the local store", e)
            return self.cfg.retry_max_s
        except Exception as e:  # timeouts, lost connection, API errors: resume from the cursor
            self.stats.failures += 1
            err = self._async_error or e
            if is_auth_error(err):
                self._report("auth-failed", logging.ERROR,
                             "NATS refused to take sensor %s's data (%s): check its permissions for "
                             "%s.%s.>; capture continues locally", self.sensor, err,
                             self.cfg.subject_prefix, self.sensor)
                return self.cfg.auth_retry_s
            self._report("unreachable", logging.WARNING, "shipping interrupted (%s: %s); resuming "
                         "from the cursor", type(err).__name__, err)
            return backoff.take()
        finally:
            self.stats.connected = False
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:
                pass

    def _on_async_error(self, e: Exception) -> None:
        self._async_error = e

    def _report(self, state: str, level: int, fmt: str, *args: Any) -> None:
        """Log a problem once when it starts, then every few minutes while it lasts. Each kind
        on its own clock: a broker that refuses a client certificate fails some attempts in
        the handshake and resets others, which is one problem, not a new one each time."""
        self.stats.state = state
        now = time.monotonic()
        if now - self._logged.get(state, -_REPEAT_LOG_S) >= _REPEAT_LOG_S:
            log.log(level, fmt, *args)
            self._logged[state] = now

    # -- shipping --------------------------------------------------------------------------------

    @property
    def _cursor(self) -> Cursor:
        return self._reader.cursor if self._reader is not None else Cursor()

    async def _ship(self, nc: Any, stop: asyncio.Event, backoff: Backoff) -> None:
        js = nc.jetstream(timeout=self.cfg.ack_timeout_s)
        max_body = nc.max_payload - PAYLOAD_HEADROOM
        reader = self._reader
        assert reader is not None
        reader.rewind()  # from the last ack: what the broker did not ack is sent again
        next_status = 0.0
        while not stop.is_set():
            if nc.is_closed or not nc.is_connected:
                raise ConnectionError("connection lost")
            if time.monotonic() >= next_status:
                await self._publish_status(js)
                next_status = time.monotonic() + self.cfg.status_interval_s
            lines = reader.read(self.cfg.batch_size)
            self.stats.caught_up = False
            if lines:
                await self._publish_lines(js, lines, max_body)
                backoff.reset()
            if lines or reader.finished:
                for seg in reader.commit():
                    if self.cfg.prune_after_ack:
                        self._prune(seg)
                continue
            self.stats.caught_up = True
            await sleep_or_stop(stop, self.cfg.poll_interval_s)
        await self._publish_status(js)

    async def _publish_lines(self, js: Any, lines: list[Line], max_body: int) -> None:
        peeks = [peek(ln.data) for ln in lines]
        # Bodies first: an event on the broker always has its body there before it.
        shas: list[str] = []
        for p in peeks:
            if p.event == MESSAGE and p.sha256 and p.sha256 not in shas:
                shas.append(p.sha256)
        if shas:
            await self._publish_bodies(js, self._unshipped(shas), max_body)
        futs = []
        for ln in lines:
            hdr = {MSG_ID: event_msg_id(self.sensor, ln.seg, ln.offset)}
            futs.append(await js.publish_async(self._subj_events, ln.data, headers=hdr))
        acks = await self._acks(futs)
        self.stats.events += len(acks)
        self.stats.duplicates += sum(1 for a in acks if a.duplicate)
        self.stats.rounds += 1
        for ln, p in zip(lines, peeks):
            if p.ts:
                self._last_ts = p.ts
            if p.event == HEARTBEAT:
                try:
                    hb = decode(ln.data)
                except (msgspec.DecodeError, ValueError):
                    continue
                if isinstance(hb, SensorHeartbeat):
                    self._last_hb = Heartbeat(ts=hb.ts, uptime_s=hb.uptime_s, version=hb.version,
                                              counters=dict(hb.counters))

    async def _acks(self, futs: list) -> list:
        if not futs:
            return []
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futs), self.cfg.ack_timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no publish ack within {self.cfg.ack_timeout_s:g} s") from None
        except NoStreamResponseError:
            raise StreamMissing(f"no JetStream stream takes {self._subj_events}") from None
        self.stats.last_ack = time.time()
        return acks

    def _unshipped(self, shas: list[str]) -> list[str]:
        assert self._db is not None
        marks = ",".join("?" * len(shas))
        done = {r[0] for r in self._db.execute(f"SELECT sha256 FROM shipped WHERE sha256 IN ({marks})", shas)}
        return [s for s in shas if s not in done]

    def _body(self, sha: str) -> Optional[bytes]:
        for attempt in (1, 2):
            if self._store is None:
                self._store = MessageStore(self.data_dir, readonly=True)
            try:
                return self._store.get(sha)
            except KeyError:
                # Opened before the sensor made its index? Reopen once and look again.
                self._store.close()
                self._store = None
            except Exception as e:
                log.error("body %s unreadable in the local store (%s): shipping its event without it", sha, e)
                return None
        log.error("body %s is not in the local store: shipping its event without it", sha)
        return None

    async def _publish_bodies(self, js: Any, shas: list[str], max_body: int) -> None:
        assert self._db is not None
        i = 0
        while i < len(shas):
            futs, done, size = [], [], 0
            while i < len(shas) and size < _BODY_ROUND_BYTES:
                sha = shas[i]
                i += 1
                body = self._body(sha)
                if body is None:
                    continue
                payload = encode_body(body)
                hdr = {MSG_ID: body_msg_id(sha), H_SHA: sha, H_SIZE: str(len(body)), H_ENCODING: "zstd"}
                if len(payload) > max_body:  # bigger than the server takes in one message
                    await self._put_object(js, sha, body)
                    payload, hdr[H_OBJECT] = b"", self.cfg.bodies_bucket
                futs.append(await js.publish_async(self._subj_msgs, payload, headers=hdr))
                done.append(sha)
                size += len(payload)
            await self._acks(futs)
            self._db.executemany("INSERT OR IGNORE INTO shipped VALUES (?)", [(s,) for s in done])
            self.stats.bodies += len(done)

    async def _put_object(self, js: Any, sha: str, body: bytes) -> None:
        try:
            obs = await js.object_store(self.cfg.bodies_bucket)
        except Exception as e:
            raise StreamMissing(f"object store {self.cfg.bodies_bucket} for big bodies: {e}") from None
        await asyncio.wait_for(obs.put(sha, body), self.cfg.ack_timeout_s * 4)

    # -- status, backlog, pruning ----------------------------------------------------------------

    def _backlog(self) -> tuple[int, int]:
        """(bytes, segments) not yet acked, as on disk (a compressed segment counts whole)."""
        return backlog(self.data_dir, self.sensor, self._cursor,
                       finished=tuple(self._reader.finished) if self._reader is not None else ())

    def status(self) -> ShipStatus:
        """The report published on the status subject (also useful in-process)."""
        backlog, segs = self._backlog()
        lag = 0.0
        if backlog:
            t = ts_seconds(self._last_ts) if self._last_ts else None
            lag = round(time.time() - t, 3) if t is not None else 0.0
        return ShipStatus(
            sensor=self.sensor, ts=now_iso(), shipped_events=self.stats.events,
            shipped_bodies=self.stats.bodies, backlog_bytes=backlog, backlog_segments=segs,
            lag_s=max(0.0, lag), cursor=f"{self._cursor.segment}+{self._cursor.offset}",
            last_event_ts=self._last_ts, last_heartbeat=self._last_hb, version=__version__,
        )

    async def _publish_status(self, js: Any) -> None:
        try:
            await js.publish(self._subj_status, msgspec.json.encode(self.status()), timeout=2.0)
        except Exception as e:  # best effort: no status stream is not a reason to stop shipping
            log.debug("status report not published: %r", e)

    def _prune(self, seg: str) -> None:
        path = segment_files(self.data_dir, seg)[1]
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)
        log.debug("pruned %s (every line acked)", path)
