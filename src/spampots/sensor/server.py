"""The sensor process: bind the listeners, drop root, serve, record, stop cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import os
import secrets
import signal
import socket
import ssl
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Optional

import msgspec

from .. import __version__
from ..config import TLS_KINDS, Config, effective_limits
from ..events import (
    MESSAGE, PROTOCOL_ERROR, PROXY_REQUEST, SESSION_OPEN, Event, LimitHit, Listener, SensorHeartbeat, SensorStart,
    SensorStop, name_of, now_iso, stamp,
)
from .. import outputs
from ..protocols import personas
from ..protocols.base import Context, Persona
from ..protocols.budget import MemoryBudget
from ..protocols.smtp import AuthPolicy
from ..store.recorder import Recorder, RecorderError
from .. import lograte
from ..metrics import Figures, MetricsEndpoint, Tally, event_fields, figures_of, is_loopback, sensor_total
from . import privileges, tlscert
from .limits import ConnectionGate, HitCoalescer, ProgressOrder, plan_descriptors, raise_nofile
from .host import Lingering, SessionHost, SessionSettings
from .session import Session
from .upkeep import Upkeep, UpkeepSettings
from .synsave import save_syns

log = logging.getLogger("spampots.sensor")


@dataclass
class ListenerRuntime:
    address: str
    port: int
    kind: str
    speaks_first: bool
    context: Context
    persona_name: str
    servers: list = dataclasses.field(default_factory=list)  # asyncio servers, one per bound socket

    def describe(self, error: str = "") -> Listener:
        return Listener(address=self.address or "*", port=self.port, kind=self.kind,
                        persona=self.persona_name, error=error)


class StartupError(RuntimeError):
    """Reported to the user as one line, without a traceback."""


def bind_failure_hint(port: int, exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"port {port}: permission denied. Run as root (privileges are dropped after binding), "
                f"grant CAP_NET_BIND_SERVICE (setcap 'cap_net_bind_service=+ep' on the python binary), "
                f"or use --port-offset N to listen on {port}+N")
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port}: already in use by another program. Stop it, move this listener in the "
                f"config, or use --port-offset N")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"port {port}: the configured address is not on this machine ({exc.strerror})"
    return f"port {port}: {exc.strerror or exc}"


class Sensor:
    def __init__(self, cfg: Config, *, strict: bool = False) -> None:
        self.cfg = cfg
        self.strict = strict
        self.sensor_id = cfg.sensor_id
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.recorder: Recorder = None  # type: ignore[assignment]
        self.ssl_context: Optional[ssl.SSLContext] = None
        self._fresh_cert: tuple[bytes, bytes] = (b"", b"")  # self-signed PEM, made before the drop
        self.gate = ConnectionGate(
            max_total=cfg.limits.max_sessions,
            max_per_ip=cfg.limits.max_sessions_per_ip,
            rate_per_ip=cfg.limits.new_sessions_per_s_per_ip,
        )
        self.trusted = cfg.trusted_networks()
        self.sessions: ProgressOrder[Session] = ProgressOrder()  # least progress first: see admit
        self.hits: HitCoalescer[tuple[str, str], LimitHit] = HitCoalescer()
        self._hits_flush: Optional[asyncio.TimerHandle] = None
        self.limit_hits = 0  # every hit, folded ones included
        self.backlog = 1024  # listen queue per socket; shortened by _fit_descriptors
        self.counters: Counter[str] = Counter()
        self.tally = Tally()  # per listener port and protocol, errors and limits by kind (metrics)
        self.shipper = None  # the Shipper, when [transport.nats] is set
        self.metrics: Optional[MetricsEndpoint] = None
        self.upkeep: Optional[Upkeep] = None  # made with the listeners' budget (_runtimes)
        self.listeners: list[ListenerRuntime] = []
        self.failed: list[Listener] = []
        self.started_at = time.time()
        self._session_prefix = os.urandom(4).hex()
        self._session_seq = 0
        self._date_second, self._date_text = -1, ""
        self._stop = asyncio.Event()
        self.persona: Persona = personas.choose(
            self.sensor_id,
            smtp_style=cfg.smtp.persona,
            hostname=cfg.smtp.hostname,
            http_style=cfg.http.persona,
            judge_style=cfg.http.judge_style,
            smtp_tls=cfg.smtp.starttls,
            smtp_auth=cfg.smtp.auth,
        )
        self.auth_template: AuthPolicy = cfg.auth_policy()
        # Rejected AUTH attempts per source address, for accept_after_failures: kept across
        # sessions (and tunnels), least recently failed forgotten first.
        self.auth_failures: OrderedDict[str, int] = OrderedDict()
        self.auth_memory = cfg.submission.remember_sources
        # Workers (see sensor/workers.py): which one this is, of how many, and what they share.
        self.worker = 0
        self.workers = 1
        self.shared = None  # the SharedState, with workers > 1
        self.restarted = False  # a worker forked again after its predecessor died
        self.board = None  # the FigureBoard, with workers > 1: every worker's figures (metrics, stop)
        self.carried: Optional[Figures] = None  # a restarted worker's predecessor's last figures
        self.lingering = Lingering()  # refused HTTP connections still open for their 503 to be read
        # per listener, per worker: the bound sockets (one per address family); a worker keeps its own
        self.sockets: list[list[list[socket.socket]]] = []
        self.metrics_sock = None  # bound before the drop: one socket, or one per worker until take_share
        self.max_local = cfg.limits.max_sessions  # what this process's descriptors hold (_fit_descriptors)
        self.host: Optional[SessionHost] = None  # what sessions see of us: made once the store is open

    # -- bookkeeping used by sessions ------------------------------------------------
    def new_session_id(self) -> str:
        self._session_seq += 1
        return f"{self._session_prefix}{self._session_seq:08x}"

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def session_opened(self, s: Session) -> None:
        self.sessions.add(s)

    def session_closed(self, s: Session) -> None:
        if s in self.sessions:
            self.sessions.discard(s)
            self.gate.release(s.src_ip)

    def admit(self, s: Session) -> tuple[Optional[tuple[str, float, float]], bool]:
        """(the limit hit, if any; whether s may open).

        A full house makes room: the session that made the least protocol progress is
        closed (reason "evicted") and s comes in, so slow connections that never finish
        a command cannot lock fresh clients out. A source over its own limits is refused.
        """
        hit = self.gate.admit(s.src_ip)
        if hit is None:
            return None, True
        if hit[0] == "max_sessions":
            victim = self.sessions.least_progress()
            if victim is not None:
                self.sessions.discard(victim)
                self.gate.release(victim.src_ip)
                victim.evict()
                return hit, self.gate.admit(s.src_ip) is None
        return hit, False

    def limit_hit(self, ev: LimitHit) -> bool:
        """Whether to record this (stamped) hit now; repeats of its (source, limit) pair are
        counted and recorded as one event with their count when the interval ends."""
        self.limit_hits += 1
        self.tally.limit(ev.limit)
        if self.hits.full:
            self._flush_hits()
        if self.hits.offer((ev.src_ip, ev.limit), ev):
            return True
        if self._hits_flush is None:
            self._hits_flush = self.loop.call_later(self.cfg.limits.limit_hit_interval_s, self._flush_hits)
        return False

    def _flush_hits(self) -> None:
        if self._hits_flush is not None:
            self._hits_flush.cancel()
            self._hits_flush = None
        for count, ev in self.hits.drain():
            ev.count, ev.ts = count, now_iso()
            self.count_event(ev)
            try:
                self.recorder.emit(ev)
            except RecorderError:
                log.warning("event not recorded: %s", name_of(ev))

    def date_header(self) -> str:
        """RFC 5322 local date for banners, formatted once per second (hot path: every session)."""
        second = int(time.time())
        if second != self._date_second:
            self._date_second, self._date_text = second, formatdate(second, localtime=True)
        return self._date_text

    def count_event(self, ev: Event) -> None:
        name = name_of(ev)
        self.counters[name] += 1
        self.tally.count(name, ev)

    def auth_policy(self, src_ip: str) -> AuthPolicy:
        """The submission AuthPolicy for one new handler: this source's failures so far,
        and a fresh nonce for a CRAM-MD5 challenge (RFC 2195: random.timestamp)."""
        return dataclasses.replace(
            self.auth_template,
            failures=self.auth_failures.get(src_ip, 0),
            nonce=f"{secrets.randbelow(10**10)}.{int(time.time())}",
        )

    def auth_failed(self, src_ip: str) -> None:
        failures = self.auth_failures
        failures[src_ip] = failures.pop(src_ip, 0) + 1
        while len(failures) > self.auth_memory:
            failures.popitem(last=False)

    def _session_host(self) -> SessionHost:
        """The narrow view of this sensor that its sessions get (see sensor/host.py)."""
        s, lim = self.cfg.sensor, self.cfg.limits
        settings = SessionSettings(
            greeting_delay_s=s.greeting_delay_s, tunnel_greeting_delay_s=s.tunnel_greeting_delay_s,
            idle_timeout_s=lim.idle_timeout_s, session_lifetime_s=lim.session_lifetime_s,
            progress_timeout_s=lim.progress_timeout_s)
        return SessionHost(
            loop=self.loop, sensor_id=self.sensor_id, settings=settings, recorder=self.recorder,
            ssl_context=self.ssl_context, new_session_id=self.new_session_id, is_trusted=self.is_trusted,
            lingering=self.lingering, admit=self.admit, opened=self.session_opened, closed=self.session_closed,
            progressed=self.sessions.progressed, date_header=self.date_header, auth_policy=self.auth_policy,
            auth_failed=self.auth_failed, count_event=self.count_event, limit_hit=self.limit_hit)

    def _sensor_event(self, ev: Event) -> Event:
        return stamp(ev, sensor=self.sensor_id, session="", src_ip="", src_port=0,
                     listener_port=0, protocol="sensor", depth=0)

    # -- lifecycle ---------------------------------------------------------------
    def _runtimes(self) -> list[ListenerRuntime]:
        limits = self.cfg.protocol_limits()
        # one memory budget for every listener; each session opens its own account on it. With
        # workers each process has an even share: the sensor as a whole keeps memory_budget_mb.
        budget = MemoryBudget(self.cfg.limits.memory_budget_mb * 2**20 // self.workers).account()
        store = self.cfg.store
        self.upkeep = Upkeep(UpkeepSettings(  # the free-space floor refuses mail through the pool
            sensor_id=self.sensor_id, min_free_mb=store.min_free_mb, keep_days=store.keep_days,
            shipping=self.cfg.transport.nats is not None), budget.pool)
        out = []
        for lst in self.cfg.listeners:
            speaks_first = lst.kind in ("smtp", "submission", "smtps")  # smtps: the handshake, at once
            persona = self.persona
            if lst.persona:
                persona = (dataclasses.replace(persona, smtp_style=lst.persona) if speaks_first
                           else dataclasses.replace(persona, http_style=lst.persona))
            ctx = Context(listener_port=lst.port, persona=persona, limits=limits,
                          tls_available=self._tls_wanted(), budget=budget)
            name = persona.smtp_style if speaks_first else persona.http_style
            out.append(ListenerRuntime(lst.address, lst.port, lst.kind, speaks_first, ctx, name))
        return out

    def _bind(self, copies: int = 1) -> None:
        """Bind every listener before the drop: ``copies`` sockets per address, joined by
        SO_REUSEPORT when there are several (one per worker; the kernel spreads connections)."""
        self._guard_resources()
        for rt in self._runtimes():
            try:
                socks = bind_listener(rt.address or None, rt.port, copies=copies)
            except OSError as exc:
                hint = bind_failure_hint(rt.port, exc)
                self.failed.append(rt.describe(error=hint))
                log.warning("cannot listen on %s", hint)
                continue
            save_syns(s for copy in socks for s in copy)  # passive fingerprints: see sensor/synsave.py
            self.listeners.append(rt)
            self.sockets.append(socks)
        if self.failed and self.strict:
            self._close_sockets()
            raise StartupError(f"{len(self.failed)} listener(s) could not be bound and --strict is set")
        if not self.listeners:
            raise StartupError("no listener could be bound: see the lines above for the fixes")

    def _close_servers(self) -> None:
        for rt in self.listeners:
            for server in rt.servers:
                server.close()
            rt.servers = []

    def _close_sockets(self) -> None:
        for copies in self.sockets:
            for socks in copies:
                for sock in socks:
                    sock.close()
        self.sockets = []
        metrics = self.metrics_sock
        for sock in metrics if isinstance(metrics, list) else [metrics] if metrics is not None else []:
            sock.close()
        self.metrics_sock = None

    async def _serve_sockets(self) -> None:
        """The loop's servers on this process's share of the bound sockets."""
        for rt, copies in zip(self.listeners, self.sockets):
            assert len(copies) == 1, "take_share() first"
            for sock in copies[0]:
                rt.servers.append(await self.loop.create_server(
                    lambda rt=rt: Session(self.host, rt), sock=sock, backlog=self.backlog, start_serving=False))

    def _tls_wanted(self) -> bool:
        return self.cfg.smtp.starttls or any(lst.kind in TLS_KINDS for lst in self.cfg.listeners)

    def _tls(self, *, dropped: bool) -> None:
        """The TLS context: a configured certificate is read before the drop (only root may
        be able to read its key); a self-signed one is made in memory before it and written
        to tls/ in the data dir (unless there already) by the user after it."""
        if not self._tls_wanted():
            return
        if not dropped:
            if not self.cfg.smtp.tls_cert:
                self._fresh_cert = tlscert.self_signed_pem(self.persona.hostname)
                return
            cert, key = Path(self.cfg.smtp.tls_cert), Path(self.cfg.smtp.tls_key)
        elif self.cfg.smtp.tls_cert:
            return
        else:
            try:
                cert, key = tlscert.ensure_self_signed(Path(tlscert.TLS_DIR), self._fresh_cert)
            except OSError as exc:
                raise StartupError(f"cannot write the TLS certificate in tls/ of the data dir: {exc}") from None
        try:
            self.ssl_context = tlscert.server_context(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"TLS certificate {cert} / key {key} unusable: {exc}") from None
        self.ssl_context.sni_callback = _keep_sni

    def _guard_resources(self) -> None:
        """Before any listener exists: what an attacker could otherwise exhaust per connection."""
        lograte.install()
        self._fit_descriptors()  # sets the listen backlog too

    def _fit_descriptors(self) -> None:
        """Raise the descriptor limit to the hard limit; lower max_sessions if it still
        cannot hold them, the store's reserve and an accept burst (warned once). Each worker
        is a process of its own: the plan is per worker, and the sensor holds workers times it."""
        limit = raise_nofile()
        listen_fds = sum(1 if lst.address else 2 for lst in self.cfg.listeners)  # "": IPv4 and IPv6
        wanted = self.cfg.limits.max_sessions
        plan = plan_descriptors(limit=limit, in_use=_open_fds(), listen_fds=listen_fds,
                                max_sessions=wanted, backlog=self.backlog)
        self.max_local = plan.max_sessions
        if plan.backlog < self.backlog and not plan.lowered:
            log.info("listen queues shortened to %d to fit the descriptor limit %d", plan.backlog, limit)
        self.backlog = plan.backlog
        fits = min(wanted, plan.max_sessions * self.workers)
        if fits < wanted:
            per = f" per worker ({self.workers} workers)" if self.workers > 1 else ""
            log.warning("descriptor limit %d holds %d sessions%s, not max_sessions = %d: max_sessions lowered "
                        "to %d, listen queues to %d (raise the hard limit: ulimit -Hn, or LimitNOFILE= in a "
                        "systemd unit%s)", limit, plan.max_sessions, per, wanted, fits, plan.backlog,
                        ", or add workers" if self.workers > 1 else "")
            # the effective value: sessions read it, and sensor.start reports it
            self.cfg = msgspec.structs.replace(
                self.cfg, limits=msgspec.structs.replace(self.cfg.limits, max_sessions=fits))
            self.gate.max_total = fits
        elif plan.lowered:
            log.info("descriptor limit %d holds %d sessions per worker; %d workers hold max_sessions = %d",
                     limit, plan.max_sessions, self.workers, wanted)

    def _watch_loop_errors(self) -> None:
        """Count accept failures for want of descriptors, and log them at a limited rate.

        asyncio reports them to the loop's exception handler (and retries a second later);
        uvloop's libuv closes such connections at once and says nothing, which is why
        _fit_descriptors keeps the sessions below the limit.
        """
        def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.counters["accept_errors"] += 1
                log.error("cannot accept connections: %s (%d open sessions, %d refusals so far)",
                          exc.strerror, len(self.sessions), self.counters["accept_errors"])
                return
            loop.default_exception_handler(context)

        self.loop.set_exception_handler(handler)

    async def run(self, data_dir: Path) -> int:
        """One process serving every listener (``[sensor] workers = 1``)."""
        self.loop = asyncio.get_running_loop()
        # First: a SIGTERM that comes while starting (its port may already accept) is a
        # clean stop once up, not a death that leaves the store to recovery.
        self._catch_signals()
        self.prepare(data_dir)
        return await self.serve(data_dir)

    def _catch_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass

    def prepare(self, data_dir: Path, copies: int = 1) -> None:
        """Start up in an order that gives root no file to create: check the data dir (as the
        user the sensor will run as), read root-only files, bind, enter the data dir by its
        descriptor and drop root, then make the TLS certificate. ``copies``: sockets per
        listener, one per worker. No event loop, no thread: workers are forked after it."""
        acct = (privileges.account(self.cfg.sensor.user, self.cfg.sensor.group)
                if privileges.running_as_root() and self.cfg.sensor.user else None)
        dir_fd = privileges.open_data_dir(data_dir, acct)
        try:
            privileges.check_writable(dir_fd, data_dir, acct)
            privileges.warn_if_full(dir_fd, data_dir, log)
            self._tls(dropped=False)
            self._bind(copies)
            self._bind_metrics(copies)
            if self.cfg.transport.nats is not None:
                # Import what shipping needs while still root: after the drop the
                # interpreter's own files may be unreadable (e.g. a pyenv under /root).
                import nats.js  # noqa: F401

                from ..transport import shipper as _preloaded  # noqa: F401
            outputs.preload(self.cfg.output)  # likewise
            if acct is not None:
                log.info("dropped root privileges: now %s", privileges.drop_to(acct, dir_fd))
            else:
                os.fchdir(dir_fd)  # relative paths from here on, as after a drop
            self._tls(dropped=True)
        except (StartupError, privileges.PrivilegeError):
            self._close_sockets()
            raise
        finally:
            os.close(dir_fd)

    def take_share(self, worker: int) -> None:
        """In a forked worker: keep its own sockets of each listener, close the others'."""
        for i, copies in enumerate(self.sockets):
            for k, socks in enumerate(copies):
                if k != worker:
                    for sock in socks:
                        sock.close()
            self.sockets[i] = [copies[worker]]
        if isinstance(self.metrics_sock, list):
            for k, sock in enumerate(self.metrics_sock):
                if k != worker:
                    sock.close()
            self.metrics_sock = self.metrics_sock[worker]

    async def serve(self, data_dir: Path) -> int:
        """Open the store, serve until stopped, shut down cleanly (after :meth:`prepare`)."""
        self.loop = asyncio.get_running_loop()
        self._watch_loop_errors()
        lead = self.worker == 0  # one shipper, one set of outputs, one retention pass per sensor
        try:
            await self._serve_sockets()
            await self._start_metrics_server()
            self.recorder = Recorder(
                Path("."),
                self.sensor_id,
                fsync=self.cfg.store.fsync,
                segment_max_bytes=int(self.cfg.store.segment_max_mb * 1024 * 1024),
                segment_max_age_s=self.cfg.store.segment_max_age_s,
                pack_writer=self.pack_writer(),
            )
            try:
                self.recorder.start(self.loop)
            except (OSError, RuntimeError) as exc:  # e.g. another writer holds this sensor's packs
                self.recorder = None  # type: ignore[assignment]
                raise StartupError(f"cannot open the store in {data_dir}: {exc}") from None
            self.host = self._session_host()
            if self.upkeep is not None:
                self.upkeep.shown_dir = data_dir
                self.upkeep.attach(self.recorder, worker=self.worker, workers=self.workers,
                                   alive=self.shared.alive if self.shared is not None else None)
                self.upkeep.poll()  # below the floor already: refuse mail from the first session
            for rt in self.listeners:
                for server in rt.servers:
                    await server.start_serving()
        except (StartupError, privileges.PrivilegeError, OSError) as exc:
            self._close_servers()
            self._close_sockets()
            self._close_metrics()
            if self.recorder is not None:
                await self.recorder.close()
            if isinstance(exc, OSError):
                raise StartupError(f"cannot serve: {exc}") from None
            raise
        limits = effective_limits(self.cfg)
        # With workers, the sensor's start and stop are worker 0's first start and last stop:
        # a restarted worker is not a restarted sensor (availability counts every worker's beats).
        if lead and not self.restarted:
            self.recorder.emit(self._sensor_event(SensorStart(
                version=__version__,
                listeners=[rt.describe() for rt in self.listeners],
                failed=self.failed,
                limits=limits,
                personas={"smtp": self.persona.smtp_style, "http": self.persona.http_style,
                          "judge": self.persona.judge_style, "hostname": self.persona.hostname},
                heartbeat_interval_s=self.cfg.sensor.heartbeat_interval_s,
                isp=self.cfg.sensor.isp, network=self.cfg.sensor.network,
                workers=self.workers,
            )))
        if lead:
            self._tell_started(data_dir)
        self.publish()  # up: the supervisor now restarts this worker if it dies
        ticker = self.loop.create_task(self._tick())
        upkeep = self.loop.create_task(self.upkeep.run()) if self.upkeep is not None else None
        shipping = self._start_shipper() if lead else None
        feeding = outputs.start(self.cfg.output, Path(".")) if lead else None  # never block capture
        await self._start_metrics()  # after the shipper: its figures are there from the first scrape
        await self._stop.wait()
        ticker.cancel()
        if upkeep is not None:
            upkeep.cancel()
        await self._shutdown(limits)
        if feeding is not None:
            await feeding.stop()  # after the last events are on disk: they go out too
        if shipping is not None:
            # Store and forward: everything is already on local disk; the shipper
            # gets a moment to send the last of it, and resumes from its cursor next time.
            stop_ship, task, shipper = shipping
            deadline = self.loop.time() + 10.0
            while (not task.done() and self.loop.time() < deadline
                   and not (shipper.stats.caught_up and shipper.status().backlog_bytes == 0)):
                await asyncio.sleep(0.1)
            stop_ship.set()
            try:
                await asyncio.wait_for(task, 10.0)
            except asyncio.TimeoutError:
                log.warning("shipper still busy at stop; it resumes from its cursor on the next start")
        return 0

    def pack_writer(self) -> str:
        """The name this process writes message packs under: the sensor's, or one per worker
        (a pack has one writer; a restarted worker takes its predecessor's packs over)."""
        return self.sensor_id if self.workers == 1 else f"{self.sensor_id}.w{self.worker}"

    def _bind_metrics(self, copies: int = 1) -> None:
        """Bind the Prometheus endpoint with the listeners, before the drop ([metrics]); with
        workers, one socket each on the same port (SO_REUSEPORT): whichever answers tells the
        sensor's figures, read from every worker's (see sensor/board.py)."""
        m = self.cfg.metrics
        if not m.enable:
            return
        try:
            socks = [c[0] for c in bind_listener(m.address, m.port, copies=copies)]
        except OSError as exc:
            raise StartupError(f"metrics endpoint {m.address}:{m.port}: {exc.strerror or exc}") from None
        self.metrics_sock = socks[0] if copies == 1 else socks  # type: ignore[assignment]
        from ..metrics import SensorMetrics, registry_for

        # Built before the drop: prometheus_client's files may be unreadable after it. With
        # workers, the process_* figures would be one worker's: spampots_worker_* replace them.
        self._metrics_registry = registry_for(
            SensorMetrics(self.sensor_id, self.all_figures, shipping=self.cfg.transport.nats is not None),
            process=copies == 1)
        if not is_loopback(m.address):
            log.warning("metrics endpoint on %s, not loopback: whoever reaches port %d reads this "
                        "sensor's figures", m.address, m.port)

    async def _start_metrics_server(self) -> None:
        if self.metrics_sock is None:
            return
        ep = MetricsEndpoint(self._metrics_registry)
        await ep.bind(self.loop, self.cfg.metrics.address, 0, sock=self.metrics_sock)  # type: ignore[arg-type]
        self.metrics = ep

    async def _start_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.start()
            if self.worker == 0:
                log.info("metrics on http://%s:%d/metrics%s", self.cfg.metrics.address, self.metrics.port,
                         f" (any of the {self.workers} workers answers)" if self.workers > 1 else "")

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def _start_shipper(self) -> Optional[tuple[asyncio.Event, asyncio.Task, object]]:
        nats = self.cfg.transport.nats
        if nats is None:
            return None
        from ..transport.shipper import Shipper  # imported before the privilege drop (see run)

        stop = asyncio.Event()
        shipper = Shipper(Path("."), self.sensor_id, nats)
        task = self.loop.create_task(self._ship(shipper, stop))
        self.shipper = shipper
        log.info("shipping to NATS JetStream %s, stream %s", ", ".join(nats.servers), nats.stream)
        return stop, task, shipper

    async def _ship(self, shipper, stop: asyncio.Event) -> None:
        # Shipping trouble never stops capture: everything stays in the local store.
        try:
            await shipper.run(stop)
        except Exception:
            log.exception("shipper stopped; capture goes on locally and shipping resumes on restart")

    def stop(self) -> None:
        self._stop.set()

    def _tell_started(self, data_dir: Path) -> None:
        """What listens where (one line per kind and address) and where the data goes."""
        groups: dict[tuple[str, str], list[int]] = {}
        for rt in self.listeners:
            groups.setdefault((rt.kind, rt.address or "*"), []).append(rt.port)
        for (kind, address), ports in groups.items():
            where = "every address" if address == "*" else address
            log.info("listening for %s on %s, ports %s", kind, where, " ".join(map(str, ports)))
        log.info("sensor %s up: %d listeners%s; data in %s", self.sensor_id, len(self.listeners),
                 f" ({len(self.failed)} could not be bound)" if self.failed else "", data_dir)

    async def _shutdown(self, limits: dict) -> None:
        if self.shared is None:
            log.info("stopping: %d open sessions", len(self.sessions))
        self._close_servers()
        self._close_metrics()
        for s in list(self.sessions):
            s.shutdown()
        await asyncio.sleep(0)  # let connection_lost run
        for _ in range(50):
            if not self.sessions:
                break
            await asyncio.sleep(0.02)
        self._flush_hits()
        if self.worker == 0:
            total = await self._sensor_figures()  # with workers: all of them together
            self.recorder.emit(self._sensor_event(SensorStop(
                version=__version__,
                uptime_s=round(time.time() - (total.started_at or self.started_at), 3),
                listeners=[rt.describe() for rt in self.listeners],
                limits=limits,
                **event_fields(total),
            )))
        await self.recorder.close()
        self.publish(final=True)
        if self.shared is None:
            log.info("stopped; %s", self._summary())

    def _summary(self) -> str:
        c = self.counters
        return (f"sessions {c[SESSION_OPEN]} (open now {len(self.sessions)}), "
                f"messages {c[MESSAGE]}, proxy requests {c[PROXY_REQUEST]}, "
                f"errors {c[PROTOCOL_ERROR]}, limits hit {self.limit_hits}")

    def all_figures(self) -> list[Figures]:
        """Every worker's figures, this one's fresh (one process: its own)."""
        mine = figures_of(self)
        if self.board is None:
            return [mine]
        self.board.write(self.worker, mine)
        return self.board.read_all()

    async def _sensor_figures(self) -> Figures:
        """The sensor's figures for its stop event: with workers, worker 0 waits a moment for
        the others' last figures (they stop at the same time)."""
        if self.board is None:
            return figures_of(self)
        deadline = self.loop.time() + 5.0
        while True:
            figs = self.all_figures()
            pending = [f.worker for f in figs if f.worker != self.worker and not f.final
                       and self.shared is not None and self.shared.alive(f.worker)]
            if not pending or self.loop.time() >= deadline:
                return sensor_total(figs)
            await asyncio.sleep(0.05)

    def publish(self, final: bool = False) -> None:
        """This worker's figures into the shared table (the supervisor's summary line) and on
        the figures board (the metrics, worker 0's stop event)."""
        if self.board is not None:
            f = figures_of(self)
            f.final = final
            self.board.write(self.worker, f)
        if self.shared is None:
            return
        c = self.counters
        self.shared.write_figures(self.worker, pid=os.getpid(), sessions=c[SESSION_OPEN], messages=c[MESSAGE],
                                  proxy_requests=c[PROXY_REQUEST], errors=c[PROTOCOL_ERROR],
                                  limit_hits=self.limit_hits)

    async def _tick(self) -> None:
        summary_every = self.cfg.sensor.summary_interval_s
        beat_every = self.cfg.sensor.heartbeat_interval_s
        publish_every = 1.0 if self.shared is not None else float("inf")
        next_summary = self.loop.time() + summary_every
        next_beat = self.loop.time() + beat_every
        next_publish = self.loop.time() + min(publish_every, 1e9)
        while True:
            await asyncio.sleep(min(next_summary, next_beat, next_publish) - self.loop.time())
            now = self.loop.time()
            if now >= next_publish:
                self.publish()
                next_publish = now + publish_every
            if now >= next_summary:
                if self.shared is None:  # with workers the supervisor logs the one line
                    log.info("summary: %s", self._summary())
                self.gate.prune()
                next_summary = now + summary_every
            if now >= next_beat:
                mine = figures_of(self)  # with its predecessors' counts, if it was started again
                self.recorder.emit(self._sensor_event(SensorHeartbeat(
                    version=__version__,
                    uptime_s=round(time.time() - (mine.started_at or self.started_at), 3),
                    worker=self.worker,
                    **event_fields(mine),
                )))
                next_beat = now + beat_every


def bind_listener(host: Optional[str], port: int, *, copies: int = 1) -> list[list[socket.socket]]:
    """``copies`` sets of sockets bound to host:port (None: every IPv4 and IPv6 address, one
    socket each, as asyncio binds them; a host is an address: the config checks it). Several
    copies share the port through SO_REUSEPORT; a plain bind first makes sure no other
    program holds it (one binding with SO_REUSEPORT too would otherwise share it silently)."""
    if host is None:
        addrs = [(socket.AF_INET, "0.0.0.0")] + ([(socket.AF_INET6, "::")] if _has_ipv6() else [])
    else:
        addrs = [(socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET, host)]
    out: list[list[socket.socket]] = []
    try:
        for copy in range(copies):
            socks: list[socket.socket] = []
            out.append(socks)
            for fam, ip in addrs:
                if copies > 1 and copy == 0:  # the probe: EADDRINUSE if anyone holds the port
                    with _new_socket(fam, reuse_port=False) as probe:
                        probe.bind((ip, port))
                sock = _new_socket(fam, reuse_port=copies > 1)
                socks.append(sock)
                sock.bind((ip, port))  # listen() comes when a loop starts serving it: not before the drop
                sock.setblocking(False)
    except OSError:
        for socks in out:
            for sock in socks:
                sock.close()
        raise
    return out


def _has_ipv6() -> bool:
    """Whether this kernel makes IPv6 sockets (asyncio, too, skips a family it cannot)."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def _new_socket(family: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir used
    except OSError:
        return 32  # not Linux: a guess


def _keep_sni(ssl_object: ssl.SSLObject, name: Optional[str], context: ssl.SSLContext) -> None:
    """Remember the ClientHello's server name on the connection (read back as ``sni``)."""
    if name:
        ssl_object.spampots_sni = name  # type: ignore[attr-defined]


def install_uvloop() -> bool:
    """uvloop unless SPAMPOTS_LOOP=asyncio (the no-dial-out test audits stdlib sockets)."""
    if os.environ.get("SPAMPOTS_LOOP") == "asyncio":
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
