"""Health and metrics: what a running sensor (or collector) tells its operator.

* :class:`Tally` counts events on the hot path in plain dicts (one tuple key per event,
  no Prometheus objects touched);
* :class:`Figures` is one process's figures at one moment, with everything its
  predecessors counted (a worker started again after a death carries them on, so the
  sensor's counters never go back); :func:`sensor_total` adds the workers' together, and
  :func:`event_fields` turns either into the fields that heartbeats and the stop event
  record (``spampots status`` reads them back);
* :class:`SensorMetrics` and :class:`CollectorMetrics` expose the same figures to
  Prometheus, built only when scraped: with workers, the sensor's totals (whichever worker
  answers reads every worker's figures, see ``sensor/board.py``) and one
  ``spampots_worker_*`` series per worker;
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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import msgspec

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
        return listener_tallies(self.events.items(), self.recipients.items())


def listener_tallies(events: Iterable[tuple[tuple[str, int, str], int]],
                     recipients: Iterable[tuple[tuple[int, str], int]]) -> list[ListenerTally]:
    out: dict[tuple[int, str], ListenerTally] = {}
    for (name, port, proto), n in events:
        field = _LISTENER_FIELDS.get(name)
        if field is None:
            continue
        t = out.get((port, proto))
        if t is None:
            t = out[(port, proto)] = ListenerTally(port=port, protocol=proto)
        setattr(t, field, getattr(t, field) + n)
    for (port, proto), n in recipients:
        t = out.get((port, proto))
        if t is not None:
            t.recipients = n
    return [out[k] for k in sorted(out)]


_LISTENER_FIELDS = {SESSION_CLOSE: "sessions", MESSAGE: "messages", PROXY_REQUEST: "proxy_requests"}


def _bump(c: Counter[str], key: str, n: int = 1) -> None:
    if key not in c and len(c) >= MAX_KINDS:
        key = "other"
    c[key] += n


class Figures(msgspec.Struct, kw_only=True):
    """One process's figures at one moment (a worker's, or the only process's).

    Counters count since the sensor started: a worker started again after a death adds its
    predecessor's last figures (:func:`carry`). Gauges are now."""

    worker: int = 0
    pid: int = 0
    ts: float = 0.0  # unix time of these figures
    started_at: float = 0.0  # unix time the sensor (this worker's first start) started
    final: bool = False  # the worker has stopped: these are its last
    restarts: int = 0  # times this worker was started again
    # counters
    counters: dict[str, int] = {}  # by event name, and accept_errors
    events: list[tuple[str, int, str, int]] = []  # (event name, listener port, protocol, count)
    recipients: list[tuple[int, str, int]] = []  # (listener port, protocol, recipients)
    errors: dict[str, int] = {}  # protocol errors by kind
    limits: dict[str, int] = {}  # limit hits by limit (repeats included)
    store_errors: int = 0
    fsync_counts: list[int] = []  # per LatencyHistogram bound, and above them all
    fsync_sum: float = 0.0
    cpu_s: float = 0.0  # user + system seconds of the process
    # gauges
    fsync_max: float = 0.0
    sessions_open: int = 0
    recorder_queue: int = 0
    rss_bytes: int = 0
    disk_free_bytes: int = -1
    disk_low: bool = False
    ship_backlog_bytes: int = -1  # only the process that ships has these
    ship_last_ack_age_s: float = -1.0
    ship_connected: bool = False


def disk_free_bytes(path: str | os.PathLike = ".") -> int:
    """Bytes an unprivileged writer may still use under ``path``; -1 if it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def figures_of(sensor: "Sensor") -> Figures:
    """This process's figures now, with what its predecessors counted (``sensor.carried``)."""
    t = sensor.tally
    cpu = os.times()
    f = Figures(
        worker=sensor.worker, pid=os.getpid(), ts=time.time(), started_at=sensor.started_at,
        counters=dict(sensor.counters), events=[(*k, n) for k, n in t.events.items()],
        recipients=[(*k, n) for k, n in t.recipients.items()], errors=dict(t.errors), limits=dict(t.limits),
        cpu_s=round(cpu.user + cpu.system, 3), sessions_open=len(sensor.sessions), rss_bytes=_rss_bytes(),
        disk_free_bytes=disk_free_bytes("."))
    upkeep = getattr(sensor, "upkeep", None)
    f.disk_low = bool(upkeep is not None and upkeep.watch.low)
    rec = sensor.recorder
    if rec is not None:
        st = rec.stats
        f.recorder_queue, f.store_errors = st.queued, st.errors
        h = st.fsync_seconds
        f.fsync_counts, f.fsync_sum, f.fsync_max = list(h.counts), h.sum, h.max
    shipper = sensor.shipper
    if shipper is not None:
        f.ship_backlog_bytes = shipper.status().backlog_bytes
        f.ship_connected = bool(shipper.stats.connected)
        if shipper.stats.last_ack:
            f.ship_last_ack_age_s = round(max(0.0, time.time() - shipper.stats.last_ack), 3)
    base = getattr(sensor, "carried", None)
    return carry(base, f) if base is not None else f


def _add_counts(into: Figures, f: Figures) -> None:
    """Add f's counters to into's (new containers: never shared with f)."""
    counters = Counter(into.counters)
    counters.update(f.counters)
    into.counters = dict(counters)
    for name in ("errors", "limits"):
        c = Counter(getattr(into, name))
        c.update(getattr(f, name))
        setattr(into, name, dict(c))
    ev: Counter[tuple[str, int, str]] = Counter({(a, b, c): n for a, b, c, n in into.events})
    ev.update({(a, b, c): n for a, b, c, n in f.events})
    into.events = [(*k, n) for k, n in sorted(ev.items())]
    rc: Counter[tuple[int, str]] = Counter({(a, b): n for a, b, n in into.recipients})
    rc.update({(a, b): n for a, b, n in f.recipients})
    into.recipients = [(*k, n) for k, n in sorted(rc.items())]
    into.store_errors += f.store_errors
    width = max(len(into.fsync_counts), len(f.fsync_counts))
    into.fsync_counts = [(into.fsync_counts[i] if i < len(into.fsync_counts) else 0)
                         + (f.fsync_counts[i] if i < len(f.fsync_counts) else 0) for i in range(width)]
    into.fsync_sum += f.fsync_sum
    into.cpu_s = round(into.cpu_s + f.cpu_s, 3)
    into.fsync_max = max(into.fsync_max, f.fsync_max)


def carry(base: Figures, live: Figures) -> Figures:
    """A worker's figures: its predecessors' counters (base) plus its own; its own gauges."""
    out = msgspec.structs.replace(live, started_at=base.started_at or live.started_at, restarts=base.restarts + 1)
    _add_counts(out, base)
    return out


def sensor_total(figs: list[Figures]) -> Figures:
    """The sensor's figures from its workers': counters and open sessions added up."""
    if not figs:
        return Figures()
    out = Figures(worker=-1, ts=max(f.ts for f in figs), started_at=min(f.started_at for f in figs),
                  final=all(f.final for f in figs), disk_free_bytes=max(f.disk_free_bytes for f in figs))
    for f in figs:
        _add_counts(out, f)
        out.restarts += f.restarts
        out.sessions_open += f.sessions_open
        out.recorder_queue += f.recorder_queue
        out.rss_bytes += f.rss_bytes
        out.disk_low = out.disk_low or f.disk_low
        if f.ship_backlog_bytes >= 0:  # the one that ships (worker 0)
            out.ship_backlog_bytes, out.ship_last_ack_age_s = f.ship_backlog_bytes, f.ship_last_ack_age_s
            out.ship_connected = f.ship_connected
    return out


def health_of(f: Figures) -> Health:
    return Health(sessions_open=f.sessions_open, recorder_queue=f.recorder_queue, store_errors=f.store_errors,
                  fsyncs=sum(f.fsync_counts), fsync_seconds_sum=round(f.fsync_sum, 6),
                  fsync_seconds_max=round(f.fsync_max, 6), disk_free_bytes=f.disk_free_bytes,
                  ship_backlog_bytes=f.ship_backlog_bytes, ship_last_ack_age_s=f.ship_last_ack_age_s,
                  disk_low=f.disk_low)


def event_fields(f: Figures) -> dict[str, Any]:
    """The optional heartbeat / stop fields: counters, tallies, errors, limit hits, health."""
    return dict(counters=dict(f.counters),
                tallies=listener_tallies((((a, b, c), n) for a, b, c, n in f.events),
                                         (((a, b), n) for a, b, n in f.recipients)),
                errors=dict(f.errors), limit_hits=dict(f.limits), health=health_of(f))


# -- Prometheus exposition ----------------------------------------------------------------------

def _family(kind: str, name: str, doc: str, labels: Optional[list[str]] = None) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, doc, labels=labels)


def _histogram(name: str, doc: str, counts: list[int], total_s: float) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    from .store.recorder import LatencyHistogram

    bounds = list(LatencyHistogram.BOUNDS) + [float("inf")]
    counts = (counts + [0] * len(bounds))[:len(bounds)]
    buckets, total = [], 0
    for bound, n in zip(bounds, counts):
        total += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total_s)


class SensorMetrics:
    """A prometheus_client collector of one sensor's figures at scrape time: ``figures()``
    gives each worker's (one, without workers); the families without a ``worker`` label are
    the sensor's totals, the same with one process or several."""

    def __init__(self, sensor_id: str, figures: Callable[[], list[Figures]], *,
                 recorder: bool = True, shipping: bool = False) -> None:
        self.sensor_id = sensor_id
        self.figures = figures
        self.recorder = recorder  # the store's figures are there (a sensor's, not a test's stub)
        self.shipping = shipping

    def collect(self) -> Iterator[Any]:
        figs = self.figures()
        f = sensor_total(figs)
        info = _family("gauge", "spampots_sensor_info", "This sensor: id and version (always 1).",
                       ["sensor", "version"])
        from . import __version__
        info.add_metric([self.sensor_id, __version__], 1)
        yield info
        up = _family("gauge", "spampots_uptime_seconds", "Seconds since the sensor started.")
        up.add_metric([], round(time.time() - f.started_at, 3) if figs else 0.0)
        yield up
        per = {n: _family("counter", f"spampots_{n}", doc, ["port", "protocol"]) for n, doc in (
            ("sessions", "Sessions closed, by listener port and the protocol they spoke last."),
            ("messages", "Messages stored, by listener port and protocol."),
            ("recipients", "Recipients (RCPT TO) of the stored messages, by listener port and protocol."),
            ("proxy_requests", "Proxy requests (SOCKS, HTTP CONNECT or absolute-URI), by listener port "
                               "and protocol."),
        )}
        for t in event_fields(f)["tallies"]:
            labels = [str(t.port), t.protocol]
            for n, fam in per.items():
                fam.add_metric(labels, getattr(t, n))
        yield from per.values()
        events = _family("counter", "spampots_events", "Events recorded, by event name.", ["event"])
        for name, n in sorted(f.counters.items()):
            if name.startswith("spampots."):
                events.add_metric([name], n)
        yield events
        errors = _family("counter", "spampots_protocol_errors", "Protocol errors, by kind.", ["kind"])
        for kind, n in sorted(f.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        limits = _family("counter", "spampots_limit_hits", "Limit hits (repeats included), by limit.",
                         ["limit"])
        for name, n in sorted(f.limits.items()):
            limits.add_metric([name], n)
        yield limits
        accept = _family("counter", "spampots_accept_errors",
                         "Connections that could not be accepted (no descriptors left).")
        accept.add_metric([], f.counters.get("accept_errors", 0))
        yield accept
        yield _gauge("spampots_sessions_open", "Sessions open now.", f.sessions_open)
        yield _gauge("spampots_disk_free_bytes", "Free bytes in the data dir (for an unprivileged writer).",
                     f.disk_free_bytes)
        yield _gauge("spampots_disk_low", "1 while the data dir is below [store] min_free_mb and mail "
                     "is refused (452).", int(f.disk_low))
        if self.recorder:
            yield _gauge("spampots_recorder_queue_depth",
                         "Events and messages waiting for the store's writer threads.", f.recorder_queue)
            store_errors = _family("counter", "spampots_store_errors",
                                   "Failed store writes, syncs and rotations.")
            store_errors.add_metric([], f.store_errors)
            yield store_errors
            yield _histogram("spampots_fsync_seconds", "Time of one segment or message pack fsync.",
                             f.fsync_counts, f.fsync_sum)
        if self.shipping:
            yield _gauge("spampots_ship_backlog_bytes", "Event bytes on disk not yet acked by the broker.",
                         f.ship_backlog_bytes)
            yield _gauge("spampots_ship_connected", "1 while connected to the broker.", int(f.ship_connected))
            if f.ship_last_ack_age_s >= 0:
                yield _gauge("spampots_ship_last_ack_age_seconds", "Seconds since the broker's last ack.",
                             f.ship_last_ack_age_s)
        yield from _per_worker(figs)


def _per_worker(figs: list[Figures]) -> Iterator[Any]:
    """One series per worker (label ``worker``): which run, what each holds and costs."""
    fams = {
        "up": _family("gauge", "spampots_worker_up", "1 while the worker runs (0: it stopped, or died and "
                      "was not started again yet).", ["worker"]),
        "pid": _family("gauge", "spampots_worker_pid", "The worker's process id.", ["worker"]),
        "restarts": _family("counter", "spampots_worker_restarts",
                            "Times the worker was started again after it died.", ["worker"]),
        "sessions_open": _family("gauge", "spampots_worker_sessions_open", "Sessions the worker holds now.",
                                 ["worker"]),
        "messages": _family("counter", "spampots_worker_messages", "Messages the worker stored.", ["worker"]),
        "cpu": _family("counter", "spampots_worker_cpu_seconds", "User and system CPU seconds of the worker.",
                       ["worker"]),
        "rss": _family("gauge", "spampots_worker_resident_memory_bytes", "Resident memory of the worker.",
                       ["worker"]),
        "age": _family("gauge", "spampots_worker_figures_age_seconds",
                       "Seconds since the worker last published its figures (about 1 while it runs).",
                       ["worker"]),
    }
    now = time.time()
    for f in sorted(figs, key=lambda f: f.worker):
        w = [str(f.worker)]
        fams["up"].add_metric(w, int(not f.final and _alive(f.pid)))
        fams["pid"].add_metric(w, f.pid)
        fams["restarts"].add_metric(w, f.restarts)
        fams["sessions_open"].add_metric(w, f.sessions_open)
        fams["messages"].add_metric(w, f.counters.get(MESSAGE, 0))
        fams["cpu"].add_metric(w, f.cpu_s)
        fams["rss"].add_metric(w, f.rss_bytes)
        fams["age"].add_metric(w, round(max(0.0, now - f.ts), 3))
    yield from fams.values()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return pid > 0


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


def registry_for(collector: Any, *, process: bool = True) -> Any:
    """A registry with ``collector`` and (``process``) the process's own figures (CPU,
    memory, descriptors).

    Called before the privilege drop: it imports every part of prometheus_client a scrape
    uses, since the interpreter's files may be unreadable afterwards (e.g. a pyenv in /root)."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client import core, exposition  # noqa: F401  (see above)

    reg = CollectorRegistry(auto_describe=False)
    if process:
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
