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
from ..metrics import MetricsEndpoint, Tally, is_loopback, sensor_figures
from . import privileges, tlscert
from .limits import ConnectionGate, HitCoalescer, ProgressOrder, plan_descriptors, raise_nofile
from .host import SessionHost, SessionSettings
from .session import Session
from .upkeep import Upkeep
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
    server: Optional[asyncio.AbstractServer] = None

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
            admit=self.admit, opened=self.session_opened, closed=self.session_closed,
            progressed=self.sessions.progressed, date_header=self.date_header, auth_policy=self.auth_policy,
            auth_failed=self.auth_failed, count_event=self.count_event, limit_hit=self.limit_hit)

    def _sensor_event(self, ev: Event) -> Event:
        return stamp(ev, sensor=self.sensor_id, session="", src_ip="", src_port=0,
                     listener_port=0, protocol="sensor", depth=0)

    # -- lifecycle ---------------------------------------------------------------
    def _runtimes(self) -> list[ListenerRuntime]:
        limits = self.cfg.protocol_limits()
        # one memory budget for every listener; each session opens its own account on it
        budget = MemoryBudget(self.cfg.limits.memory_budget_mb * 2**20).account()
        self.upkeep = Upkeep(self, budget.pool)  # the free-space floor refuses mail through it
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

    async def _bind(self) -> None:
        self._guard_resources()
        for rt in self._runtimes():
            try:
                rt.server = await self.loop.create_server(
                    lambda rt=rt: Session(self.host, rt),  # type: ignore[arg-type]
                    host=rt.address or None,
                    port=rt.port,
                    reuse_address=True,
                    backlog=self.backlog,
                    start_serving=False,
                )
            except OSError as exc:
                hint = bind_failure_hint(rt.port, exc)
                self.failed.append(rt.describe(error=hint))
                log.warning("cannot listen on %s", hint)
                continue
            save_syns(rt.server.sockets)  # passive fingerprints: see sensor/synsave.py
            self.listeners.append(rt)
        if self.failed and self.strict:
            raise StartupError(f"{len(self.failed)} listener(s) could not be bound and --strict is set")
        if not self.listeners:
            raise StartupError("no listener could be bound: see the lines above for the fixes")

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
        self._watch_loop_errors()
        lograte.install()
        self._fit_descriptors()  # sets the listen backlog too

    def _fit_descriptors(self) -> None:
        """Raise the descriptor limit to the hard limit; lower max_sessions if it still
        cannot hold them, the store's reserve and an accept burst (warned once)."""
        limit = raise_nofile()
        listen_fds = sum(1 if lst.address else 2 for lst in self.cfg.listeners)  # "": IPv4 and IPv6
        plan = plan_descriptors(limit=limit, in_use=_open_fds(), listen_fds=listen_fds,
                                max_sessions=self.cfg.limits.max_sessions, backlog=self.backlog)
        if plan.backlog < self.backlog and not plan.lowered:
            log.info("listen queues shortened to %d to fit the descriptor limit %d", plan.backlog, limit)
        self.backlog = plan.backlog
        if plan.lowered:
            log.warning("descriptor limit %d holds %d sessions, not max_sessions = %d: max_sessions lowered "
                        "to %d, listen queues to %d (raise the hard limit: ulimit -Hn, or LimitNOFILE= in a "
                        "systemd unit)", limit, plan.max_sessions, plan.wanted, plan.max_sessions, plan.backlog)
            # the effective value: sessions read it, and sensor.start reports it
            self.cfg = msgspec.structs.replace(
                self.cfg, limits=msgspec.structs.replace(self.cfg.limits, max_sessions=plan.max_sessions))
            self.gate.max_total = plan.max_sessions

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
        """Start up in an order that gives root no file to create: check the data dir (as the
        user the sensor will run as), read root-only files, bind, enter the data dir by its
        descriptor and drop root, then make the TLS certificate and open the store."""
        self.loop = asyncio.get_running_loop()
        # First: a SIGTERM that comes while starting (its port may already accept) is a
        # clean stop once up, not a death that leaves the store to recovery.
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        acct = (privileges.account(self.cfg.sensor.user, self.cfg.sensor.group)
                if privileges.running_as_root() and self.cfg.sensor.user else None)
        dir_fd = privileges.open_data_dir(data_dir, acct)
        try:
            privileges.check_writable(dir_fd, data_dir, acct)
            privileges.warn_if_full(dir_fd, data_dir, log)
            self._tls(dropped=False)
            await self._bind()
            await self._bind_metrics()
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
            self.recorder = Recorder(
                Path("."),
                self.sensor_id,
                fsync=self.cfg.store.fsync,
                segment_max_bytes=int(self.cfg.store.segment_max_mb * 1024 * 1024),
                segment_max_age_s=self.cfg.store.segment_max_age_s,
            )
            try:
                self.recorder.start(self.loop)
            except (OSError, RuntimeError) as exc:  # e.g. another writer holds this sensor's packs
                self.recorder = None  # type: ignore[assignment]
                raise StartupError(f"cannot open the store in {data_dir}: {exc}") from None
            self.host = self._session_host()
            if self.upkeep is not None:
                self.upkeep.shown_dir = data_dir
                self.upkeep.poll()  # below the floor already: refuse mail from the first session
            for rt in self.listeners:
                assert rt.server is not None
                await rt.server.start_serving()
        except (StartupError, privileges.PrivilegeError):
            for rt in self.listeners:
                if rt.server is not None:
                    rt.server.close()
            self._close_metrics()
            if self.recorder is not None:
                await self.recorder.close()
            raise
        finally:
            os.close(dir_fd)
        limits = effective_limits(self.cfg)
        self.recorder.emit(self._sensor_event(SensorStart(
            version=__version__,
            listeners=[rt.describe() for rt in self.listeners],
            failed=self.failed,
            limits=limits,
            personas={"smtp": self.persona.smtp_style, "http": self.persona.http_style,
                      "judge": self.persona.judge_style, "hostname": self.persona.hostname},
            heartbeat_interval_s=self.cfg.sensor.heartbeat_interval_s,
        )))
        self._tell_started(data_dir)
        ticker = self.loop.create_task(self._tick())
        upkeep = self.loop.create_task(self.upkeep.run()) if self.upkeep is not None else None
        shipping = self._start_shipper()
        feeding = outputs.start(self.cfg.output, Path("."))  # tasks reading the store: never block capture
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

    async def _bind_metrics(self) -> None:
        """Bind the Prometheus endpoint with the listeners, before the drop ([metrics])."""
        m = self.cfg.metrics
        if not m.enable:
            return
        from ..metrics import SensorMetrics, registry_for

        ep = MetricsEndpoint(registry_for(SensorMetrics(self)))
        try:
            await ep.bind(self.loop, m.address, m.port)
        except OSError as exc:
            raise StartupError(f"metrics endpoint {m.address}:{m.port}: {exc.strerror or exc}") from None
        self.metrics = ep
        if not is_loopback(m.address):
            log.warning("metrics endpoint on %s, not loopback: whoever reaches port %d reads this "
                        "sensor's figures", m.address, m.port)

    async def _start_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.start()
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.address, self.metrics.port)

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
        log.info("stopping: %d open sessions", len(self.sessions))
        for rt in self.listeners:
            if rt.server is not None:
                rt.server.close()
        self._close_metrics()
        for s in list(self.sessions):
            s.shutdown()
        await asyncio.sleep(0)  # let connection_lost run
        for _ in range(50):
            if not self.sessions:
                break
            await asyncio.sleep(0.02)
        self._flush_hits()
        self.recorder.emit(self._sensor_event(SensorStop(
            version=__version__,
            uptime_s=round(time.time() - self.started_at, 3),
            listeners=[rt.describe() for rt in self.listeners],
            limits=limits,
            counters=dict(self.counters),
            **sensor_figures(self),
        )))
        await self.recorder.close()
        log.info("stopped; %s", self._summary())

    def _summary(self) -> str:
        c = self.counters
        return (f"sessions {c[SESSION_OPEN]} (open now {len(self.sessions)}), "
                f"messages {c[MESSAGE]}, proxy requests {c[PROXY_REQUEST]}, "
                f"errors {c[PROTOCOL_ERROR]}, limits hit {self.limit_hits}")

    async def _tick(self) -> None:
        summary_every = self.cfg.sensor.summary_interval_s
        beat_every = self.cfg.sensor.heartbeat_interval_s
        next_summary = self.loop.time() + summary_every
        next_beat = self.loop.time() + beat_every
        while True:
            await asyncio.sleep(min(next_summary, next_beat) - self.loop.time())
            now = self.loop.time()
            if now >= next_summary:
                log.info("summary: %s", self._summary())
                self.gate.prune()
                next_summary = now + summary_every
            if now >= next_beat:
                self.recorder.emit(self._sensor_event(SensorHeartbeat(
                    version=__version__,
                    uptime_s=round(time.time() - self.started_at, 3),
                    counters=dict(self.counters),
                    **sensor_figures(self),
                )))
                next_beat = now + beat_every


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
