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

from .. import __version__
from ..config import TLS_KINDS, Config, effective_limits
from ..events import (
    Event, Listener, SensorHeartbeat, SensorStart, SensorStop, name_of, stamp,
)
from ..protocols import personas
from ..protocols.base import Context, Persona
from ..protocols.budget import MemoryBudget
from ..protocols.smtp import AuthPolicy
from ..store.recorder import Recorder
from . import privileges, tlscert
from .limits import ConnectionGate
from .session import Session

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
        self.greeting_delay = cfg.sensor.greeting_delay_s
        self.tunnel_greeting_delay = cfg.sensor.tunnel_greeting_delay_s
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.recorder: Recorder = None  # type: ignore[assignment]
        self.ssl_context: Optional[ssl.SSLContext] = None
        self.gate = ConnectionGate(
            max_total=cfg.limits.max_sessions,
            max_per_ip=cfg.limits.max_sessions_per_ip,
            rate_per_ip=cfg.limits.new_sessions_per_s_per_ip,
        )
        self.trusted = cfg.trusted_networks()
        self.sessions: set[Session] = set()
        self.counters: Counter[str] = Counter()
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

    def date_header(self) -> str:
        """RFC 5322 local date for banners, formatted once per second (hot path: every session)."""
        second = int(time.time())
        if second != self._date_second:
            self._date_second, self._date_text = second, formatdate(second, localtime=True)
        return self._date_text

    def count_event(self, ev: Event) -> None:
        self.counters[name_of(ev)] += 1

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

    def _sensor_event(self, ev: Event) -> Event:
        return stamp(ev, sensor=self.sensor_id, session="", src_ip="", src_port=0,
                     listener_port=0, protocol="sensor", depth=0)

    # -- lifecycle ---------------------------------------------------------------
    def _runtimes(self) -> list[ListenerRuntime]:
        limits = self.cfg.protocol_limits()
        # one memory budget for every listener; each session opens its own account on it
        budget = MemoryBudget(self.cfg.limits.memory_budget_mb * 2**20).account()
        out = []
        for lst in self.cfg.listeners:
            speaks_first = lst.kind in ("smtp", "submission", "smtps")  # smtps: the handshake, at once
            persona = self.persona
            if lst.persona:
                persona = (dataclasses.replace(persona, smtp_style=lst.persona) if speaks_first
                           else dataclasses.replace(persona, http_style=lst.persona))
            ctx = Context(listener_port=lst.port, persona=persona, limits=limits,
                          tls_available=self.ssl_context is not None, budget=budget)
            name = persona.smtp_style if speaks_first else persona.http_style
            out.append(ListenerRuntime(lst.address, lst.port, lst.kind, speaks_first, ctx, name))
        return out

    async def _bind(self) -> None:
        for rt in self._runtimes():
            try:
                rt.server = await self.loop.create_server(
                    lambda rt=rt: Session(self, rt),
                    host=rt.address or None,
                    port=rt.port,
                    reuse_address=True,
                    backlog=1024,
                    start_serving=False,
                )
            except OSError as exc:
                hint = bind_failure_hint(rt.port, exc)
                self.failed.append(rt.describe(error=hint))
                log.warning("cannot listen on %s", hint)
                continue
            self.listeners.append(rt)
        if self.failed and self.strict:
            raise StartupError(f"{len(self.failed)} listener(s) could not be bound and --strict is set")
        if not self.listeners:
            raise StartupError("no listener could be bound: see the lines above for the fixes")

    def _tls(self, data_dir: Path) -> None:
        if not self.cfg.smtp.starttls and not any(lst.kind in TLS_KINDS for lst in self.cfg.listeners):
            return
        if self.cfg.smtp.tls_cert:
            cert, key = Path(self.cfg.smtp.tls_cert), Path(self.cfg.smtp.tls_key)
        else:
            cert, key = tlscert.ensure_self_signed(data_dir / "tls", self.persona.hostname)
        try:
            self.ssl_context = tlscert.server_context(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"TLS certificate {cert} / key {key} unusable: {exc}") from None
        self.ssl_context.sni_callback = _keep_sni

    async def run(self, data_dir: Path) -> int:
        self.loop = asyncio.get_running_loop()
        data_dir.mkdir(parents=True, exist_ok=True)
        self._tls(data_dir)
        # Work relative to the data dir, so that after dropping root the store
        # needs no permission on the directories above it.
        os.chdir(data_dir)
        self.recorder = Recorder(
            Path("."),
            self.sensor_id,
            fsync=self.cfg.store.fsync,
            segment_max_bytes=int(self.cfg.store.segment_max_mb * 1024 * 1024),
            segment_max_age_s=self.cfg.store.segment_max_age_s,
        )
        self.recorder.start(self.loop)
        try:
            await self._bind()
            shipping_as = self.cfg.sensor.user if privileges.running_as_root() else ""
            if self.cfg.transport.nats is not None and shipping_as:
                blocked = privileges.unreachable_parent(data_dir, shipping_as)
                if blocked is not None:
                    raise StartupError(
                        f"shipping to NATS needs {data_dir} reachable by user {shipping_as!r}, but {blocked} "
                        f"is not searchable by it: use a data dir such as /var/lib/spampots, "
                        f"`chmod o+x {blocked}`, or set [sensor] user")
            if self.cfg.transport.nats is not None:
                # Import what shipping needs while still root: after the drop the
                # interpreter's own files may be unreadable (e.g. a pyenv under /root).
                import nats.js  # noqa: F401

                from ..transport import shipper as _preloaded  # noqa: F401
            if privileges.running_as_root() and self.cfg.sensor.user:
                who = privileges.drop_to(self.cfg.sensor.user, Path("."))
                log.info("dropped root privileges: now %s", who)
            for rt in self.listeners:
                assert rt.server is not None
                await rt.server.start_serving()
        except (StartupError, privileges.PrivilegeError):
            for rt in self.listeners:
                if rt.server is not None:
                    rt.server.close()
            await self.recorder.close()
            raise
        limits = effective_limits(self.cfg)
        self.recorder.emit(self._sensor_event(SensorStart(
            version=__version__,
            listeners=[rt.describe() for rt in self.listeners],
            failed=self.failed,
            limits=limits,
            personas={"smtp": self.persona.smtp_style, "http": self.persona.http_style,
                      "judge": self.persona.judge_style, "hostname": self.persona.hostname},
        )))
        up = ", ".join(f"{rt.port}/{rt.kind}" for rt in self.listeners)
        log.info("sensor %s up (data in %s): listening on %s", self.sensor_id, data_dir, up)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        ticker = self.loop.create_task(self._tick())
        shipping = self._start_shipper()
        await self._stop.wait()
        ticker.cancel()
        await self._shutdown(limits)
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

    def _start_shipper(self) -> Optional[tuple[asyncio.Event, asyncio.Task, object]]:
        nats = self.cfg.transport.nats
        if nats is None:
            return None
        from ..transport.shipper import Shipper  # imported before the privilege drop (see run)

        stop = asyncio.Event()
        shipper = Shipper(Path("."), self.sensor_id, nats)
        task = self.loop.create_task(self._ship(shipper, stop))
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

    async def _shutdown(self, limits: dict) -> None:
        log.info("stopping: %d open sessions", len(self.sessions))
        for rt in self.listeners:
            if rt.server is not None:
                rt.server.close()
        for s in list(self.sessions):
            s.shutdown()
        await asyncio.sleep(0)  # let connection_lost run
        for _ in range(50):
            if not self.sessions:
                break
            await asyncio.sleep(0.02)
        self.recorder.emit(self._sensor_event(SensorStop(
            version=__version__,
            uptime_s=round(time.time() - self.started_at, 3),
            listeners=[rt.describe() for rt in self.listeners],
            limits=limits,
            counters=dict(self.counters),
        )))
        await self.recorder.close()
        log.info("stopped; %s", self._summary())

    def _summary(self) -> str:
        c = self.counters
        return (f"sessions {c['spampots.session.open']} (open now {len(self.sessions)}), "
                f"messages {c['spampots.smtp.message']}, proxy requests {c['spampots.proxy.request']}, "
                f"errors {c['spampots.protocol.error']}, limits hit {c['spampots.limit.hit']}")

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
                )))
                next_beat = now + beat_every


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
