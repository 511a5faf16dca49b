"""One client connection: thin asyncio glue around the sans-IO handlers.

The session feeds bytes to its handler and carries out the actions it gets
back (see ``protocols/base.py``), one small method per action type: writes,
events, durable messages (reading pauses until the body and its event are
fsynced, so no ``250`` goes out before that), tunnels (the handler is swapped
for the far end we play), STARTTLS and close. Timers, connection limits and
the PROXY protocol header are the only logic here. What it needs of the sensor
comes through a narrow :class:`~spampots.sensor.host.SessionHost`.

The session is in one :class:`State` at a time. ``_NEXT`` lists the moves
between them; any other raises :class:`IllegalTransition`:

* OPENING: connected, admission not decided; then HEADER, GREETING or ACTIVE
  (or CLOSED: refused);
* HEADER: a trusted front end's PROXY header comes first; then admission;
* GREETING: a speaks-first listener's banner waits ``greeting_delay_s``;
* ACTIVE: bytes go to the handler as they come;
* DURABLE_WAIT: a message is being made durable; the client's bytes wait;
* TLS_HANDSHAKE: StartTLS; the client's bytes wait for the handshake;
* TUNNEL_GREETING: after a proxy's grant, the far end's banner waits;
* CLOSED: the connection is gone (or was refused); nothing happens any more.

Backpressure: reading stops while the client does not drain our replies
(the transport's write buffer is above its high-water mark, ``pause_writing``)
or while the session waits (DURABLE_WAIT, TLS_HANDSHAKE), and resumes when both
have cleared. Bytes read meanwhile wait in ``backlog``, which holds at most
what was already read when reading stopped. Large reads are fed to the handler
in steps of :data:`FEED_STEP`, so one read of pipelined commands cannot queue
more than one step's worth of replies past the mark (at most ~100 times the
step: 18-byte ``GET /`` requests each answered with a 1.8 KB page).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Optional

from ..events import Event, LimitHit, SessionClose, SessionOpen, SmtpAuth, name_of, stamp
from ..store.recorder import RecorderError
from ..protocols.base import Action, Close, Context, Durable, Handler, StartTLS, Tunnel, error_event
from ..protocols.dispatch import (
    SUBMISSION_KINDS, SUBMISSION_PORTS, far_end, listener_handler, listener_refusal, tunnel_context,
)
from ..protocols.proxy_header import V1_PREFIX, V2_SIGNATURE, ProxyHeaderParser
from .synsave import saved_syn

REFUSAL_LINGER_S = 0.5  # a refused HTTP client's request is read (and dropped) this long
REFUSAL_LINGER_MAX = 256  # refusals lingering at once; past it, the close comes at once (a flood)

if TYPE_CHECKING:
    from .host import SessionHost
    from .server import ListenerRuntime

log = logging.getLogger("spampots.sensor")  # rate limited on the sensor's stderr (lograte.install)

# Write buffer marks (bytes): above HIGH reading stops, below LOW it resumes.
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024
FEED_STEP = 16 * 1024  # bytes handed to the handler at a time (see the module docstring)


class State(enum.Enum):
    OPENING = "opening"
    HEADER = "header"
    GREETING = "greeting"
    ACTIVE = "active"
    DURABLE_WAIT = "durable_wait"
    TLS_HANDSHAKE = "tls_handshake"
    TUNNEL_GREETING = "tunnel_greeting"
    CLOSED = "closed"


OPENING, HEADER, GREETING, ACTIVE = State.OPENING, State.HEADER, State.GREETING, State.ACTIVE
DURABLE_WAIT, TLS_HANDSHAKE, TUNNEL_GREETING, CLOSED = (
    State.DURABLE_WAIT, State.TLS_HANDSHAKE, State.TUNNEL_GREETING, State.CLOSED)

#: the legal moves (see the module docstring)
_NEXT: dict[State, frozenset[State]] = {
    OPENING: frozenset({HEADER, GREETING, ACTIVE, CLOSED}),
    HEADER: frozenset({GREETING, ACTIVE, CLOSED}),
    GREETING: frozenset({ACTIVE, CLOSED}),
    ACTIVE: frozenset({DURABLE_WAIT, TLS_HANDSHAKE, TUNNEL_GREETING, CLOSED}),
    DURABLE_WAIT: frozenset({ACTIVE, CLOSED}),
    TLS_HANDSHAKE: frozenset({ACTIVE, CLOSED}),
    TUNNEL_GREETING: frozenset({ACTIVE, CLOSED}),
    CLOSED: frozenset(),
}
for _state, _moves in _NEXT.items():
    # What _enter reads: a tuple, as `in` then compares identities; hashing an Enum member
    # runs Python code (0.6 us), and every message moves twice.
    _state.moves = tuple(_moves)  # type: ignore[attr-defined]
# Tuples, not sets, for the same reason.
_WAITING = (DURABLE_WAIT, TLS_HANDSHAKE)  # the client's bytes wait in the backlog
_GREETINGS = (GREETING, TUNNEL_GREETING)  # a greet_timer is armed
_UNADMITTED = (OPENING, HEADER)


class IllegalTransition(RuntimeError):
    """A move that ``_NEXT`` does not list: a bug in the glue, never the client's doing."""


def _clean_ip(ip: str) -> str:
    # Dual-stack sockets show IPv4 peers as ::ffff:a.b.c.d; events use the plain form.
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


class Session(asyncio.Protocol):
    # Slots: tens of thousands of idle sessions must stay cheap.
    __slots__ = (
        "host", "listener", "loop", "transport", "handler", "session_id", "src_ip", "src_port",
        "local_ip", "ctx", "state", "close_reason", "reading_paused", "write_paused",
        "eof_pending", "backlog",
        "bytes_in", "bytes_out", "started", "last_active", "timer", "header_parser", "proxied_by", "tcp_sig",
        "greet_timer", "progress_at",
    )

    def __init__(self, host: "SessionHost", listener: "ListenerRuntime") -> None:
        self.host = host
        self.listener = listener
        self.loop = host.loop
        self.transport: Optional[asyncio.Transport] = None
        self.handler: Optional[Handler] = None
        self.session_id = ""
        self.src_ip = ""
        self.src_port = 0
        self.local_ip = ""
        self.ctx: Optional[Context] = None
        self.state = OPENING
        self.close_reason = "client_eof"
        # Flags independent of the state, as they can be set in any of them:
        self.reading_paused = False  # the transport's reading is paused (see _pause_reading)
        self.write_paused = False  # the client is not draining our replies (pause_writing)
        self.eof_pending = False  # the client half-closed while its bytes still wait to be handled
        self.backlog: list[bytes] = []
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = 0.0
        self.last_active = 0.0
        self.progress_at = 0.0  # the last reply or record for the client's bytes (see _run)
        self.timer: Optional[asyncio.TimerHandle] = None
        self.header_parser: Optional[ProxyHeaderParser] = None  # in HEADER
        self.proxied_by: Optional[str] = None
        self.tcp_sig: Optional[str] = None  # see sensor/synsave.py
        self.greet_timer: Optional[asyncio.TimerHandle] = None  # in GREETING, TUNNEL_GREETING

    @property
    def closed(self) -> bool:
        """For readers outside; inside, the state says it."""
        return self.state is CLOSED

    @closed.setter
    def closed(self, value: bool) -> None:
        # `closed = True` is the move to CLOSED, checked like any other; there is no way back.
        if value != (self.state is CLOSED):
            self._enter(CLOSED if value else ACTIVE)

    def _enter(self, state: State) -> None:
        if state not in self.state.moves:
            raise IllegalTransition(f"session {self.session_id}: {self.state.name} -> {state.name}")
        self.state = state

    # -- asyncio callbacks ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)  # type: ignore[attr-defined]
        # Both addresses as the transport keeps them (uvloop reads them once, before this
        # call); asking the "socket" for them would cost a socket object and syscalls.
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.src_ip, self.src_port = _clean_ip(peer[0]), peer[1]
        self.local_ip = _clean_ip(local[0])
        self.started = self.last_active = self.progress_at = self.loop.time()
        self.session_id = self.host.new_session_id()
        if self.host.is_trusted(self.src_ip):
            # A trusted front end: the real source comes in its PROXY header (and its SYN is
            # the front end's, so no fingerprint).
            self.proxied_by = self.src_ip
            self.header_parser = ProxyHeaderParser()
            self._enter(HEADER)
            self._arm_timer()
            return
        self.tcp_sig = saved_syn(transport)
        self._open()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is CLOSED:  # refused, and lingering so that its refusal is read (see _open)
            return
        n = len(data)
        self.bytes_in += n
        self.last_active = now = self.loop.time()
        if state is ACTIVE and n <= FEED_STEP and self.bytes_in != n and not (self.write_paused or self.backlog):
            # Most reads: a command or a body, answered by one reply. What _receive, _run and
            # _write would do, without their calls (15 reads per message).
            handler = self.handler
            actions = handler.receive(data)  # type: ignore[union-attr]
            if handler.delegate is not None:  # type: ignore[union-attr]
                self.handler = handler.delegate  # type: ignore[union-attr]
            if len(actions) != 1 or type(actions[0]) is not bytes:
                self._run(actions)
                return
            self.progress_at = now
            self.host.progressed(self)
            reply: bytes = actions[0]  # type: ignore[assignment]
            transport = self.transport
            if not transport.is_closing():  # type: ignore[union-attr]
                self.bytes_out += len(reply)
                transport.write(reply)  # type: ignore[union-attr]
            return
        if state in _WAITING or self.write_paused or self.backlog:
            # waiting on the disk, a handshake or the client to read, and it keeps sending
            self._hold(data)
            return
        left = self._receive(data) if len(data) <= FEED_STEP else self._feed(data)
        if left:
            self._hold(left)

    def _hold(self, data: bytes) -> None:
        """Keep bytes for later and stop reading until they can be handled."""
        self.backlog.append(data)
        if not self.reading_paused:
            self._pause_reading()

    def _feed(self, data: bytes) -> bytes:
        """Hand bytes to the handler, FEED_STEP at a time; return those that must wait
        (a durable message or undrained replies stopped us)."""
        n = len(data)
        if n <= FEED_STEP:
            return self._receive(data)
        off = 0
        while off < n:
            if self.state in _WAITING or self.write_paused:
                return data[off:]
            if self.state is CLOSED or self.transport is None or self.transport.is_closing():
                return b""
            piece = data[off:off + FEED_STEP]
            off += len(piece)
            left = self._receive(piece)
            if left:
                return left + data[off:]
        return b""

    def _receive(self, data: bytes) -> bytes:
        """One step of :meth:`_feed`; returns ``data`` if it must wait after all."""
        if self.state is HEADER or self.bytes_in == len(data):  # a trusted peer, or the first bytes
            data = self._proxy_header(data)
            if not data or self.handler is None:
                return b""
        if self.state in _GREETINGS:  # the client spoke before our greeting
            self.greet_timer.cancel()  # type: ignore[union-attr]
            self.greet_timer = None
            tunnel = self.state is TUNNEL_GREETING
            self._enter(ACTIVE)
            if tunnel:  # in a tunnel: greet now, then handle its bytes
                self._run(self.handler.start())  # type: ignore[union-attr]
                if self.state is not ACTIVE:
                    return b"" if self.state is CLOSED else data
            # on a listener the banner never comes: the client has already spoken
        handler = self.handler
        if handler is None:
            return b""
        actions = handler.receive(data)
        if handler.delegate is not None:  # the sniffer chose: talk to its choice directly
            self.handler = handler.delegate
        self._run(actions)
        return b""

    # -- backpressure: asyncio calls these around the transport's write buffer marks
    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.backlog or self.reading_paused:
            # Not now: a TLS transport may call this from inside our own write, and the
            # backlog must not be handled in the middle of the bytes before it.
            self.loop.call_soon(self._drain_soon)

    def _drain_soon(self) -> None:
        if self.state is not CLOSED and self.state not in _WAITING:
            self._drain()

    def eof_received(self) -> Optional[bool]:
        self.close_reason = "client_eof"
        if self.state is DURABLE_WAIT or (self.backlog and self.state is not TLS_HANDSHAKE):
            # A half-close right after DATA's end: its 250 (and replies to what it sent
            # before the FIN) still go out once the message is on disk; _drain closes.
            # The same when it has not read our replies: what it sent is still handled.
            self.eof_pending = True
            return True
        return False  # close our side too

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.state is TLS_HANDSHAKE:
            # Lost mid-handshake (some loops tell the protocol before start_tls fails):
            # _start_tls records why the handshake failed, then calls us again.
            return
        if self.timer is not None:
            self.timer.cancel()
        if self.greet_timer is not None:
            self.greet_timer.cancel()
        was = self.state
        if was is CLOSED:
            return
        self._enter(CLOSED)
        if was in _UNADMITTED:
            return
        if exc is not None and self.close_reason == "client_eof":
            self.close_reason = "error"
        if self.handler is not None and was is not DURABLE_WAIT:
            try:
                self._run(self.handler.eof(), final=True)
            except Exception:  # a handler bug must not lose the close event
                log.exception("handler eof failed in session %s", self.session_id)
        self.backlog.clear()
        if self.ctx is not None:
            self.ctx.budget.close()  # whatever its handlers still hold goes back to the budget
        self._record(SessionClose(
            duration_s=round(self.loop.time() - self.started, 6),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            reason=self.close_reason,
        ))
        self.host.closed(self)

    # -- opening ----------------------------------------------------------------
    def _open(self) -> None:
        hit, admitted = self.host.admit(self)  # a full house may make room (see Sensor.admit)
        if hit is not None:
            name, value, observed = hit
            self._record(LimitHit(limit=name, value=value, observed=observed))
        if not admitted:
            self._enter(CLOSED)
            assert self.transport is not None
            # A server over its limits says so, in its own words, then closes: "421 4.7.0" on
            # SMTP ports, "503" on HTTP ones. A bare close looks like no real server.
            lst = self.listener
            reply = listener_refusal(
                lst.context.for_session(self.src_ip, self.src_port, self.local_ip, self.host.date_header()),
                kind=lst.kind)
            if reply and lst.speaks_first:
                self.transport.write(reply)
                self.transport.close()
            elif reply and self.host.lingering.count < REFUSAL_LINGER_MAX:
                # An HTTP client sends its request at once: closing with it unread would reset
                # the connection, and the reset discards the 503 before the client reads it.
                # So: the reply, our FIN, its bytes read and dropped, the close soon after.
                # Lingering refusals are bounded: they hold descriptors no limit counts.
                self.transport.write(reply)
                self.transport.write_eof()
                self.host.lingering.count += 1
                self.loop.call_later(REFUSAL_LINGER_S, self._end_refusal)
            elif reply:
                self.transport.write(reply)
                self.transport.close()
            else:
                self.transport.abort()
            return
        self.host.opened(self)
        self._record(SessionOpen(listener_addr=self.local_ip, proxied_by=self.proxied_by, tcp_sig=self.tcp_sig))
        lst = self.listener
        # Banners and HTTP Date headers show the time; a missing one would stand out.
        self.ctx = lst.context.for_session(self.src_ip, self.src_port, self.local_ip, self.host.date_header())
        auth = self.host.auth_policy(self.src_ip) if lst.kind in SUBMISSION_KINDS else None
        self.handler = handler = listener_handler(self.ctx, kind=lst.kind, auth=auth)
        self._arm_timer()
        delay = self.host.settings.greeting_delay_s
        if lst.speaks_first and delay > 0 and not handler.implicit_tls:
            self._enter(GREETING)
            self.greet_timer = self.loop.call_later(delay, self._greet)
            return
        self._enter(ACTIVE)
        if lst.speaks_first:
            self._run(handler.start())

    def _end_refusal(self) -> None:
        self.host.lingering.count -= 1
        assert self.transport is not None
        self.transport.close()

    def _greet(self) -> None:
        """The greeting delay is over: the handler speaks first."""
        self.greet_timer = None
        if self.state in _GREETINGS:
            self._enter(ACTIVE)
            self._run(self.handler.start())  # type: ignore[union-attr]

    def _proxy_header(self, data: bytes) -> bytes:
        if self.header_parser is None:
            # An untrusted peer's first bytes: served as its own, but a PROXY header here means a
            # front end the config does not trust, whose sessions all fail: tell the operator.
            if data.startswith((V1_PREFIX, V2_SIGNATURE[:5])):
                log.warning("a PROXY protocol header from %s, which is not in [proxy_protocol] trusted: "
                            "served as the client's own bytes (a protocol error). Add the front end's "
                            "address to [proxy_protocol] trusted", self.src_ip)
            return data
        result = self.header_parser.feed(data)
        if result is None:
            return b""
        self.header_parser = None
        if result.error:
            # Trusted peer but no valid header: keep its own address and record why.
            # Without any header its bytes are served as usual; a broken header closes.
            self._open()
            if self.state is CLOSED:
                return b""
            self._record(error_event(result.error, result.detail, result.header))
            if result.error != "proxy_header.missing":
                self.close_reason = "protocol"
                assert self.transport is not None
                self.transport.close()
                return b""
        else:
            if result.src_ip:
                self.src_ip = _clean_ip(result.src_ip)
                self.src_port = result.src_port or 0
            self._open()
        return result.rest if self.state is not CLOSED else b""

    # -- carrying out actions: one method per action type -------------------------
    def _run(self, actions: list[Action], final: bool = False) -> None:
        """Carry out actions in order. Replies in a row go out as one write; ``final``:
        the connection is gone, only records and the handler's last words remain."""
        if actions:  # progress: the handler answered or recorded something (not a mere byte read)
            self.progress_at = self.loop.time()
            self.host.progressed(self)
        if len(actions) == 1 and type(actions[0]) is bytes:  # most replies: one write, nothing else
            self._write(actions)  # type: ignore[arg-type]
            return
        out: list[bytes] = []
        i = 0
        while i < len(actions):
            a = actions[i]
            i += 1
            t = type(a)
            if t is bytes:
                out.append(a)  # type: ignore[arg-type]
                continue
            if isinstance(a, Event):
                self._record(a)
                continue
            self._write(out)
            out = []
            if t is Durable:
                if self._durable(a, actions[i:], final):  # type: ignore[arg-type]
                    return
            elif t is Tunnel:
                actions, i = self._tunnel(a, final) + actions[i:], 0  # type: ignore[arg-type]
            elif t is StartTLS:
                self._start_tls(actions[i:], final)
                return
            elif t is Close:
                self._close(a, final)  # type: ignore[arg-type]
                return
        self._write(out)

    def _write(self, out: list[bytes]) -> None:
        if not out or self.transport is None or self.transport.is_closing():
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self.bytes_out += len(data)
        self.transport.write(data)

    def _durable(self, a: Durable, rest: list[Action], final: bool) -> bool:
        """Record the message and its event; the actions after it (the 250) wait until both
        are on disk. Returns whether they wait."""
        if final:  # the client is gone: nothing can be acknowledged any more
            log.warning("durable message at end of session %s dropped", self.session_id)
            self._release(a.reserved)
            return False
        ev = self._stamp(a.event)
        # Hold the client's next bytes until the message is on disk; reading itself
        # is paused only if it sends any meanwhile (most wait for the 250).
        self._enter(DURABLE_WAIT)
        reserved = a.reserved

        def stored(result: object, exc: Optional[BaseException]) -> None:
            self._durable_done(exc, rest, ev, reserved)

        try:
            # A callback, not a future: the recorder calls it as it settles the batch, so the
            # 250 goes out in that same loop pass (a future's callbacks wait for the next one).
            self.host.recorder.emit_durable_then(ev, a.body, stored)
        except RecorderError as exc:
            self.loop.call_soon(stored, None, exc)
        return True

    def _durable_done(self, exc: Optional[BaseException], rest: list[Action], ev: Event, reserved: int = 0) -> None:
        self._release(reserved)  # stored or not, the body is no longer ours to hold
        if exc is not None:
            # Not on disk: the client must not see a 250. Dropping the connection
            # tells it the message was not taken.
            log.error("message not stored, closing session %s: %s", self.session_id, exc)
            if self.state is CLOSED:
                return
            self.close_reason = "error"
            self._enter(ACTIVE)
            if self.transport is not None:
                self.transport.abort()
            return
        self.host.count_event(ev)  # counted once stored: the summary says what is on disk
        if self.state is CLOSED:  # the client left meanwhile: nobody to answer
            return
        self._enter(ACTIVE)
        if self.transport is None or self.transport.is_closing():
            return
        self._run(rest)
        self._drain()

    def _tunnel(self, a: Tunnel, final: bool) -> list[Action]:
        """The client was granted a tunnel: play its far end from now on. Returns the actions
        to carry out now (the far end's greeting and its answer to the bytes that came along)."""
        if final:  # the client is gone: there is no far end left to play
            return []
        assert self.ctx is not None
        self.ctx = tunnel_context(self.ctx, a)
        auth = self.host.auth_policy(self.src_ip) if a.port in SUBMISSION_PORTS else None
        self.handler = handler = far_end(self.ctx, auth=auth)
        if handler.implicit_tls:  # the client speaks first (465): the handshake starts now
            if a.rest:
                self.backlog.insert(0, a.rest)  # a pipelined ClientHello: raw, for _feed_tls
            return handler.start()
        if a.rest:
            return handler.start() + handler.receive(a.rest)
        delay = self.host.settings.tunnel_greeting_delay_s
        if delay <= 0:
            return handler.start()
        # The far end "answers" a moment after the grant, as a real one would; clients that
        # read the proxy reply with one recv() would otherwise swallow the banner with it.
        self._enter(TUNNEL_GREETING)
        self.greet_timer = self.loop.call_later(delay, self._greet)
        return []

    def _close(self, a: Close, final: bool) -> None:
        """Close after what went before; at the end, the reason that ended the session
        stands (idle, lifetime...)."""
        if final:
            return
        self.close_reason = a.reason
        if self.transport is not None:
            self.transport.close()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self.reading_paused = True

    def _drain(self) -> None:
        """Durability and the client's reading both allow it: handle the backlog,
        then read again (or close, if the client half-closed meanwhile)."""
        transport = self.transport
        while self.backlog and not (self.state in _WAITING or self.write_paused):
            if transport is None or transport.is_closing():
                return
            left = self._feed(self.backlog.pop(0))
            if left:
                self.backlog.insert(0, left)
        if self.state in _WAITING or self.write_paused or transport is None or transport.is_closing():
            return
        if self.eof_pending:
            transport.close()  # connection_lost then gives the handler its eof()
            return
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()

    def _release(self, reserved: int) -> None:
        if reserved and self.ctx is not None:
            self.ctx.budget.release(reserved)

    def _start_tls(self, rest: list[Action], final: bool) -> None:
        """Upgrade the connection to TLS (server side); ``rest`` follows the handshake."""
        if final:  # the client is gone: no handshake to make
            return
        self._enter(TLS_HANDSHAKE)
        self._pause_reading()
        self.loop.create_task(self._handshake(rest))

    async def _handshake(self, rest: list[Action]) -> None:
        handler = self.handler
        assert self.transport is not None and handler is not None
        ssl_ctx = self.host.ssl_context
        try:
            if ssl_ctx is None:
                raise RuntimeError("no TLS context")
            upgrade = self.loop.create_task(self.loop.start_tls(
                self.transport, self, ssl_ctx, server_side=True, ssl_handshake_timeout=30.0
            ))
            # start_tls's first step installs the TLS protocol and schedules its
            # connection_made and resume_reading; _feed_tls runs right after those
            # (call_soon is FIFO), before the socket is read again.
            self.loop.call_soon(self.loop.call_soon, self._feed_tls)
            new = await upgrade
        except Exception as exc:  # garbage instead of a ClientHello, a timeout, a client gone
            self._enter(ACTIVE)  # the handshake is over: the handler hears why, then we close
            self._run(handler.tls_failed(f"{type(exc).__name__}: {exc}"), final=True)
            self.close_reason = "protocol"
            if self.transport is not None:
                self.transport.abort()
            self.connection_lost(None)  # the TLS layer may never pass the loss on to us
            return
        self.transport = new  # type: ignore[assignment]
        new.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        self.reading_paused = False  # the TLS transport reads on its own
        self.write_paused = False  # and has its own, empty, write buffer
        self._enter(ACTIVE)
        sni = getattr(new.get_extra_info("ssl_object"), "spampots_sni", None)  # see server._keep_sni
        self._run(handler.tls_established(sni) + rest)
        # Bytes that arrived during the handshake were decrypted into the backlog.
        self._drain()

    def _feed_tls(self) -> None:
        """Hand the TLS protocol that start_tls installed the bytes we read before it did.

        They wait in the backlog as raw TLS records: a ClientHello that came with the
        proxy request, or one read before we could pause (uvloop reads once more after
        connection_made, so on an smtps listener it is often the whole ClientHello).
        """
        data = b"".join(self.backlog)
        self.backlog.clear()
        if not data or self.transport is None or self.transport.is_closing():
            return
        proto = self.transport.get_protocol()
        if proto is self:  # start_tls did not get as far as installing it
            return
        try:
            if hasattr(proto, "get_buffer"):  # asyncio's and uvloop's SSLProtocol are buffered
                view = memoryview(data)
                while view:
                    buf = proto.get_buffer(len(view))
                    n = min(len(buf), len(view))
                    buf[:n] = view[:n]
                    proto.buffer_updated(n)
                    view = view[n:]
            else:
                proto.data_received(data)
        except Exception:  # the handshake then fails or times out, and is recorded as such
            log.exception("could not pass early TLS bytes in session %s", self.session_id)

    # -- events and timers --------------------------------------------------------
    def _stamp(self, ev: Event) -> Event:
        h = self.handler
        return stamp(
            ev,
            sensor=self.host.sensor_id,
            session=self.session_id,
            src_ip=self.src_ip,
            src_port=self.src_port,
            listener_port=self.listener.port,
            protocol=h.protocol if h is not None else "unknown",
            depth=max(ev.depth, self.ctx.depth if self.ctx is not None else 0),
        )

    def _record(self, ev: Event) -> None:
        if type(ev) is SmtpAuth and ev.outcome == "rejected" and ev.policy is not None:
            self.host.auth_failed(self.src_ip)  # the handler judged and refused: count it
        ev = self._stamp(ev)
        if type(ev) is LimitHit and not self.host.limit_hit(ev):
            return  # a repeat: counted, recorded with its count at the end of the interval
        self.host.count_event(ev)
        try:
            self.host.recorder.emit(ev)
        except RecorderError:  # shutting down, or the disk failed (logged by the store)
            log.warning("event not recorded: %s", name_of(ev))

    def _arm_timer(self) -> None:
        lim = self.host.settings
        deadline = min(self.last_active + lim.idle_timeout_s, self.started + lim.session_lifetime_s,
                       self.progress_at + lim.progress_timeout_s)
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        if self.state is CLOSED or self.transport is None:
            return
        now = self.loop.time()
        lim = self.host.settings
        if now >= self.started + lim.session_lifetime_s:
            self.close_reason = "lifetime"
            self._record(LimitHit(limit="session_lifetime_s", value=lim.session_lifetime_s,
                                  observed=round(now - self.started, 3)))
        elif now >= self.last_active + lim.idle_timeout_s:
            self.close_reason = "idle"
            self._record(LimitHit(limit="idle_timeout_s", value=lim.idle_timeout_s,
                                  observed=round(now - self.last_active, 3)))
        elif now >= self.progress_at + lim.progress_timeout_s:
            # Bytes keep coming but no command completes: a slow-loris, not a client.
            self.close_reason = "stalled"
            self._record(LimitHit(limit="progress_timeout_s", value=lim.progress_timeout_s,
                                  observed=round(now - self.progress_at, 3)))
        else:
            self._arm_timer()
            return
        self.transport.close()

    def evict(self) -> None:
        """A full house made room for a new session: close now (no lingering on unsent bytes)."""
        if self.state is CLOSED or self.transport is None:
            return
        if not self.transport.is_closing():  # one already closing keeps its own reason
            self.close_reason = "evicted"
        self.transport.abort()

    def shutdown(self) -> None:
        """Sensor stopping: close with reason 'shutdown'."""
        if self.state is not CLOSED and self.transport is not None:
            self.close_reason = "shutdown"
            self.transport.close()

