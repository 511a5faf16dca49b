"""Health and metrics: what a running sensor (or collector) tells its operator.

* :class:`Tally` counts events on the hot path in plain dicts (one tuple key per event,
  no Prometheus objects touched);
* :func:`sensor_figures` turns the tallies and the sensor's state into the fields that
  heartbeats record (``spampots status`` reads them back);
* :class:`SensorMetrics` and :class:`CollectorMetrics` expose the same figures to
  Prometheus, built only when scraped;
* :class:`MetricsEndpoint` serves ``GET /metrics`` on the event loop: a few bounded
  connections with a deadline, so an endpoint left reachable cannot be used to pile up
  threads or memory. It is bound before the sensor drops root, like the listeners.

Labels are bounded: listener ports and protocols come from the config and our own code,
error kinds and limit names are capped; never a source address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator, Optional

from .events import MESSAGE, PROTOCOL_ERROR, PROXY_REQUEST, SESSION_CLOSE, Event, Health, ListenerTally

if TYPE_CHECKING:
    from .sensor.server import Sensor
    from .transport.collector import Collector

MAX_KINDS = 64  # distinct error kinds / limit names kept apart; the rest are counted as "other"


class Tally:
    """Event counts by (event name, listener port, protocol), recipients by (port, protocol),
    protocol errors by kind and limit hits by limit. Touched only on the event loop."""

    __slots__ = ("events", "recipients", "errors", "limits")

    def __init__(self) -> None:
        self.events: Counter[tuple[str, int, str]] = Counter()
        self.recipients: Counter[tuple[int, str]] = Counter()
        self.errors: Counter[str] = Counter()
        self.limits: Counter[str] = Counter()

    def count(self, name: str, ev: Event) -> None:
        self.events[(name, ev.listener_port, ev.protocol)] += 1
        if name == MESSAGE:
            self.recipients[(ev.listener_port, ev.protocol)] += len(ev.rcpts)  # type: ignore[attr-defined]
        elif name == PROTOCOL_ERROR:
            _bump(self.errors, ev.kind)  # type: ignore[attr-defined]

    def limit(self, limit: str, n: int = 1) -> None:
        _bump(self.limits, limit, n)

    def listeners(self) -> list[ListenerTally]:
        out: dict[tuple[int, str], ListenerTally] = {}
        for (name, port, proto), n in self.events.items():
            field = _LISTENER_FIELDS.get(name)
            if field is None:
                continue
            t = out.get((port, proto))
            if t is None:
                t = out[(port, proto)] = ListenerTally(port=port, protocol=proto)
            setattr(t, field, getattr(t, field) + n)
        for (port, proto), n in self.recipients.items():
            t = out.get((port, proto))
            if t is not None:
                t.recipients = n
        return [out[k] for k in sorted(out)]


_LISTENER_FIELDS = {SESSION_CLOSE: "sessions", MESSAGE: "messages", PROXY_REQUEST: "proxy_requests"}


def _bump(c: Counter[str], key: str, n: int = 1) -> None:
    if key not in c and len(c) >= MAX_KINDS:
        key = "other"
    c[key] += n


def disk_free_bytes(path: str | os.PathLike = ".") -> int:
    """Bytes an unprivileged writer may still use under ``path``; -1 if it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def sensor_health(sensor: "Sensor") -> Health:
    h = Health(sessions_open=len(sensor.sessions), disk_free_bytes=disk_free_bytes("."))
    upkeep = getattr(sensor, "upkeep", None)
    h.disk_low = bool(upkeep is not None and upkeep.watch.low)
    rec = sensor.recorder
    if rec is not None:
        st = rec.stats
        h.recorder_queue, h.store_errors = st.queued, st.errors
        h.fsyncs = st.fsync_seconds.count
        h.fsync_seconds_sum = round(st.fsync_seconds.sum, 6)
        h.fsync_seconds_max = round(st.fsync_seconds.max, 6)
    shipper = sensor.shipper
    if shipper is not None:
        h.ship_backlog_bytes = shipper.status().backlog_bytes
        if shipper.stats.last_ack:
            h.ship_last_ack_age_s = round(max(0.0, time.time() - shipper.stats.last_ack), 3)
    return h


def sensor_figures(sensor: "Sensor") -> dict[str, Any]:
    """The optional heartbeat / stop fields: tallies, errors, limit hits, health."""
    t = sensor.tally
    return dict(tallies=t.listeners(), errors=dict(t.errors), limit_hits=dict(t.limits),
                health=sensor_health(sensor))


# -- Prometheus exposition ----------------------------------------------------------------------

def _family(kind: str, name: str, doc: str, labels: Optional[list[str]] = None) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, doc, labels=labels)


def _histogram(name: str, doc: str, hist: Any) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    buckets, total = [], 0
    for bound, n in zip(list(hist.BOUNDS) + [float("inf")], hist.counts):
        total += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.sum)


class SensorMetrics:
    """A prometheus_client collector reading one :class:`Sensor` at scrape time."""

    def __init__(self, sensor: "Sensor") -> None:
        self.sensor = sensor

    def collect(self) -> Iterator[Any]:
        s = self.sensor
        info = _family("gauge", "spampots_sensor_info", "This sensor: id and version (always 1).",
                       ["sensor", "version"])
        from . import __version__
        info.add_metric([s.sensor_id, __version__], 1)
        yield info
        up = _family("gauge", "spampots_uptime_seconds", "Seconds since the sensor started.")
        up.add_metric([], round(time.time() - s.started_at, 3))
        yield up
        per = {f: _family("counter", f"spampots_{f}", doc, ["port", "protocol"]) for f, doc in (
            ("sessions", "Sessions closed, by listener port and the protocol they spoke last."),
            ("messages", "Messages stored, by listener port and protocol."),
            ("recipients", "Recipients (RCPT TO) of the stored messages, by listener port and protocol."),
            ("proxy_requests", "Proxy requests (SOCKS, HTTP CONNECT or absolute-URI), by listener port "
                               "and protocol."),
        )}
        for t in s.tally.listeners():
            labels = [str(t.port), t.protocol]
            for f, fam in per.items():
                fam.add_metric(labels, getattr(t, f))
        yield from per.values()
        events = _family("counter", "spampots_events", "Events recorded, by event name.", ["event"])
        for name, n in sorted(s.counters.items()):
            if name.startswith("spampots."):
                events.add_metric([name], n)
        yield events
        errors = _family("counter", "spampots_protocol_errors", "Protocol errors, by kind.", ["kind"])
        for kind, n in sorted(s.tally.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        limits = _family("counter", "spampots_limit_hits", "Limit hits (repeats included), by limit.",
                         ["limit"])
        for name, n in sorted(s.tally.limits.items()):
            limits.add_metric([name], n)
        yield limits
        accept = _family("counter", "spampots_accept_errors",
                         "Connections that could not be accepted (no descriptors left).")
        accept.add_metric([], s.counters.get("accept_errors", 0))
        yield accept
        h = sensor_health(s)
        yield _gauge("spampots_sessions_open", "Sessions open now.", h.sessions_open)
        yield _gauge("spampots_disk_free_bytes", "Free bytes in the data dir (for an unprivileged writer).",
                     h.disk_free_bytes)
        yield _gauge("spampots_disk_low", "1 while the data dir is below [store] min_free_mb and mail "
                     "is refused (452).", int(h.disk_low))
        if s.recorder is not None:
            yield _gauge("spampots_recorder_queue_depth",
                         "Events and messages waiting for the store's writer thread.", h.recorder_queue)
            store_errors = _family("counter", "spampots_store_errors",
                                   "Failed store writes, syncs and rotations.")
            store_errors.add_metric([], h.store_errors)
            yield store_errors
            yield _histogram("spampots_fsync_seconds", "Time of one segment or message pack fsync.",
                             s.recorder.stats.fsync_seconds)
        if s.shipper is not None:
            yield _gauge("spampots_ship_backlog_bytes", "Event bytes on disk not yet acked by the broker.",
                         h.ship_backlog_bytes)
            yield _gauge("spampots_ship_connected", "1 while connected to the broker.",
                         int(s.shipper.stats.connected))
            if h.ship_last_ack_age_s >= 0:
                yield _gauge("spampots_ship_last_ack_age_seconds", "Seconds since the broker's last ack.",
                             h.ship_last_ack_age_s)


class CollectorMetrics:
    """A prometheus_client collector reading one :class:`Collector` (``spampots collect``)."""

    def __init__(self, collector: "Collector") -> None:
        self.collector = collector

    def collect(self) -> Iterator[Any]:
        c = self.collector
        st = c.stats
        for name, doc, value in (
            ("events", "Event lines stored.", st.events),
            ("bodies", "Message bodies newly stored.", st.bodies),
            ("duplicates", "Redelivered or re-published events recognised and dropped.", st.duplicates),
            ("failures", "Failed connections and interrupted batches.", st.failures),
        ):
            fam = _family("counter", f"spampots_collector_{name}", doc)
            fam.add_metric([], value)
            yield fam
        yield _gauge("spampots_collector_lag_seconds",
                     "How long the newest message of the last batch waited in the stream (0: caught up).",
                     round(st.lag_s, 3))
        yield _gauge("spampots_collector_pending_messages",
                     "Messages still in the stream behind the last batch (0: caught up).", st.pending)
        yield _gauge("spampots_collector_connected", "1 while consuming the stream.",
                     int(st.state == "collecting"))
        yield _gauge("spampots_disk_free_bytes", "Free bytes in the data dir (for an unprivileged writer).",
                     disk_free_bytes(c.data_dir))


def _gauge(name: str, doc: str, value: float) -> Any:
    fam = _family("gauge", name, doc)
    fam.add_metric([], value)
    return fam


def registry_for(collector: Any) -> Any:
    """A registry with ``collector`` and the process's own figures (CPU, memory, descriptors).

    Called before the privilege drop: it imports every part of prometheus_client a scrape
    uses, since the interpreter's files may be unreadable afterwards (e.g. a pyenv in /root)."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client import core, exposition  # noqa: F401  (see above)

    reg = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=reg)
    reg.register(collector)
    return reg


# -- the HTTP endpoint ---------------------------------------------------------------------------

MAX_CLIENTS = 8  # concurrent connections; a new one closes the oldest (a scrape takes milliseconds)
REQUEST_MAX = 8192  # bytes of request line and headers
DEADLINE_S = 10.0  # a connection is closed after this long, answered or not


class MetricsEndpoint:
    """``GET /metrics`` (or ``/``) on the event loop, one response per connection."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.clients: dict["_Scrape", None] = {}  # oldest first
        self.scrapes = 0
        self._server: Optional[asyncio.AbstractServer] = None

    async def bind(self, loop: asyncio.AbstractEventLoop, address: str, port: int,
                   sock: Optional[socket.socket] = None) -> None:
        """Bind now (before a privilege drop), or take a socket bound then; serve from :meth:`start`."""
        if sock is not None:
            self._server = await loop.create_server(lambda: _Scrape(self, loop), sock=sock, backlog=64,
                                                    start_serving=False)
            return
        self._server = await loop.create_server(
            lambda: _Scrape(self, loop), host=address, port=port, reuse_address=True,
            backlog=64, start_serving=False)

    async def start(self) -> None:
        if self._server is not None:
            await self._server.start_serving()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def render(self) -> bytes:
        from prometheus_client.exposition import generate_latest

        self.scrapes += 1
        return generate_latest(self.registry)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class _Scrape(asyncio.Protocol):
    def __init__(self, ep: MetricsEndpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.ep, self.loop = ep, loop
        self.buf = b""
        self.transport: Optional[asyncio.Transport] = None
        self.timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        clients = self.ep.clients
        while len(clients) >= MAX_CLIENTS:  # idle connections must not lock the scraper out
            next(iter(clients)).drop()
        clients[self] = None
        self.timer = self.loop.call_later(DEADLINE_S, self.drop)

    def drop(self) -> None:
        self.ep.clients.pop(self, None)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            end = self.buf.find(b"\n\n")
        if end < 0:
            if len(self.buf) > REQUEST_MAX:
                self._reply(431, b"request too large\n")
            return
        self.transport.pause_reading()
        parts = self.buf.split(b"\n", 1)[0].strip().split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._reply(400, b"bad request\n")
        elif parts[0] != b"GET":
            self._reply(405, b"GET only\n")
        elif parts[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
            self._reply(404, b"see /metrics\n")
        else:
            from prometheus_client import exposition

            # the classic text format: what every Prometheus reads (newer clients default to 1.0.0)
            ctype = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
            self._reply(200, self.ep.render(), ctype)

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        assert self.transport is not None
        self.transport.write(head + body)
        self.transport.close()  # the deadline still aborts a client that never reads it

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.ep.clients.pop(self, None)
