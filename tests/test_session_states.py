"""The session as a state machine (sensor/session.py): its legal moves, and one test per
action type carried out on a real loopback connection.

The session runs against a SessionHost whose recorder keeps the durable futures in the
test's hands, so the test decides when a message is "on disk"; everything else is real:
a listening socket on 127.0.0.1, a client connection, the protocol handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import Optional

import pytest

from spampots.events import SessionClose, SmtpMessage, name_of
from spampots.protocols import dispatch, http, raw, smtp, socks4, socks5, tls_hello
from spampots.protocols.base import Close, Context, Durable, Handler, StartTLS, Tunnel, error_event
from spampots.sensor import session as session_mod
from spampots.sensor.host import Lingering, SessionHost, SessionSettings
from spampots.sensor.server import ListenerRuntime
from spampots.sensor.session import _NEXT, IllegalTransition, Session, State

TIMEOUT = 10.0


# -- the transition table ------------------------------------------------------------

def test_every_state_has_its_moves_and_closed_is_final() -> None:
    assert set(_NEXT) == set(State)
    assert _NEXT[State.CLOSED] == frozenset()
    for state in State:
        if state is not State.CLOSED:
            assert State.CLOSED in _NEXT[state], state  # a connection can go away in any state


def test_every_state_is_reachable_from_opening() -> None:
    seen, todo = {State.OPENING}, [State.OPENING]
    while todo:
        for nxt in _NEXT[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(State)


def test_waiting_states_only_return_to_active() -> None:
    # A message being synced or a handshake under way ends in ACTIVE (or the connection is gone):
    # no greeting, tunnel or second wait can start from inside a wait.
    for state in (State.DURABLE_WAIT, State.TLS_HANDSHAKE, State.GREETING, State.TUNNEL_GREETING):
        assert _NEXT[state] == {State.ACTIVE, State.CLOSED}


@pytest.mark.parametrize("src", list(State))
def test_illegal_transitions_raise_and_leave_the_state(src: State) -> None:
    s = Session(_host(asyncio.new_event_loop()), _listener())
    s.loop.close()
    for dst in State:
        s.state = src
        if dst in _NEXT[src]:
            s._enter(dst)
            assert s.state is dst
        else:
            with pytest.raises(IllegalTransition):
                s._enter(dst)
            assert s.state is src


def test_closed_is_the_closed_state_with_no_way_back() -> None:
    s = Session(_host(asyncio.new_event_loop()), _listener())
    s.loop.close()
    assert s.state is State.OPENING and not s.closed
    s.closed = True  # a refusal
    assert s.state is State.CLOSED and s.closed
    s.closed = True  # again: nothing to do
    with pytest.raises(IllegalTransition):
        s.closed = False
    assert s.state is State.CLOSED


# -- the handler contract ---------------------------------------------------------------

HANDLERS = [http.HttpServer, raw.RawCapture, socks4.Socks4Server, socks5.Socks5Server,
            tls_hello.TlsHelloReader, smtp.SmtpServer, dispatch.Sniffer, dispatch._Refuse]


@pytest.mark.parametrize("cls", HANDLERS, ids=lambda c: c.__name__)
def test_every_handler_implements_the_contract(cls: type) -> None:
    assert issubclass(cls, Handler)
    for hook in ("start", "receive", "eof", "tls_established", "tls_failed"):
        assert callable(getattr(cls, hook))
    assert cls.receive is not Handler.receive  # the one hook without a default


def test_the_glue_does_not_probe_handlers() -> None:
    src = inspect.getsource(session_mod)
    assert "Sniffer" not in src
    # getattr only for the ssl object's remembered server name, never for a handler's hooks
    assert re.findall(r"getattr\((\w+)", src) == ["new"]
    assert "self.sensor" not in src and "cfg" not in src


def test_implicit_tls_is_part_of_the_contract() -> None:
    ctx = Context(tls_available=True)
    assert dispatch.listener_handler(ctx, kind="smtps").implicit_tls is True
    assert dispatch.listener_handler(ctx, kind="smtp").implicit_tls is False
    assert dispatch.listener_handler(ctx, kind="socks").implicit_tls is False


# -- one action type at a time, on a real connection ------------------------------------

class _Store:
    """A recorder whose durable writes complete when the test says so."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: list = []
        self.durable: list[asyncio.Future] = []

    def emit(self, ev) -> None:
        self.events.append(ev)

    def emit_durable(self, ev, body: bytes) -> asyncio.Future:
        self.events.append(ev)
        fut = self.loop.create_future()
        self.durable.append(fut)
        return fut

    def emit_durable_then(self, ev, body: bytes, then) -> None:
        def settled(f: asyncio.Future) -> None:
            if f.cancelled():
                then(None, asyncio.CancelledError())
            else:
                then(None if f.exception() else f.result(), f.exception())
        self.emit_durable(ev, body).add_done_callback(settled)

    def names(self) -> list[str]:
        return [name_of(e) for e in self.events]


class _Probe(Handler):
    """A handler that answers each read with the actions the test queued, and notes its hooks."""

    protocol = "probe"

    def __init__(self) -> None:
        self.script: list[list] = []
        self.got: list[bytes] = []
        self.hooks: list[str] = []

    def start(self) -> list:
        self.hooks.append("start")
        return [b"hello\r\n"]

    def receive(self, data: bytes) -> list:
        self.got.append(data)
        return self.script.pop(0) if self.script else []

    def eof(self) -> list:
        self.hooks.append("eof")
        return []

    def tls_failed(self, detail: str) -> list:
        self.hooks.append("tls_failed")
        return [error_event("probe.tls", detail)]


def _settings(**kw) -> SessionSettings:
    return SessionSettings(**{"greeting_delay_s": 0.0, "tunnel_greeting_delay_s": 0.0, **kw})


def _host(loop: asyncio.AbstractEventLoop, settings: Optional[SessionSettings] = None,
          admit=lambda s: (None, True), opened=None) -> SessionHost:
    seq = iter(range(1, 10**6))
    return SessionHost(
        loop=loop, sensor_id="t", settings=settings or _settings(), recorder=_Store(loop),  # type: ignore[arg-type]
        ssl_context=None, new_session_id=lambda: f"s{next(seq)}", lingering=Lingering(), is_trusted=lambda ip: False,
        admit=admit, opened=opened or (lambda s: None), closed=lambda s: None, progressed=lambda s: None,
        date_header=lambda: "Sun, 06 Dec 2026 06:00:00 +0000", auth_policy=lambda ip: smtp.AuthPolicy(),
        auth_failed=lambda ip: None, count_event=lambda ev: None, limit_hit=lambda ev: True)


def _listener(kind: str = "socks", speaks_first: bool = False, tls: bool = False) -> ListenerRuntime:
    return ListenerRuntime("127.0.0.1", 0, kind, speaks_first, Context(tls_available=tls), "test")


class _Rig:
    """A real listener on 127.0.0.1 whose sessions use the given host; one client."""

    def __init__(self, host: SessionHost, listener: ListenerRuntime) -> None:
        self.host, self.listener = host, listener
        self.sessions: list[Session] = []

    async def __aenter__(self) -> "_Rig":
        def make() -> Session:
            s = Session(self.host, self.listener)
            self.sessions.append(s)
            return s
        self.server = await self.host.loop.create_server(make, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        await _until(lambda: self.sessions and self.sessions[0].state is not State.OPENING)
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()
        self.server.close()
        await _until(lambda: all(s.state is State.CLOSED for s in self.sessions))

    @property
    def s(self) -> Session:
        return self.sessions[0]

    def probe(self) -> _Probe:
        p = _Probe()
        self.s.handler = p
        return p

    async def read(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT)


async def _until(cond, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _run(coro_fn) -> None:
    async def main() -> None:
        await coro_fn(asyncio.get_running_loop())
    asyncio.run(main())


def test_bytes_in_a_row_go_out_as_one_write() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener()) as rig:
            assert rig.s.state is State.ACTIVE
            rig.s._run([b"one ", error_event("probe.x"), b"two\r\n"])
            assert await rig.read(9) == b"one two\r\n"
            assert rig.s.bytes_out == 9
    _run(go)


def test_an_event_is_stamped_and_recorded() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener()) as rig:
            rig.s._run([error_event("probe.x", "detail")])
            ev = rig.host.recorder.events[-1]  # type: ignore[attr-defined]
            assert ev.kind == "probe.x" and ev.session == rig.s.session_id and ev.src_ip == "127.0.0.1"
    _run(go)


@pytest.mark.parametrize("address", ["127.0.0.1", ""])
def test_session_open_names_both_ends(address: str) -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop), ListenerRuntime(address, 0, "socks", False, Context(), "t")) as rig:
            events = rig.host.recorder.events  # type: ignore[attr-defined]
            ev = next(e for e in events if name_of(e) == "spampots.session.open")
            client = rig.writer.get_extra_info("sockname")
            assert ev.listener_addr == "127.0.0.1"
            assert (ev.src_ip, ev.src_port) == (client[0], client[1]) == (rig.s.src_ip, rig.s.src_port)
    _run(go)


def test_commands_answered_one_read_at_a_time_count_their_bytes() -> None:
    # data_received's shortcut for a read answered by one reply keeps the counts and progress
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener()) as rig:
            probe = rig.probe()
            probe.script = [[b"250 a\r\n"], [b"250 bb\r\n"]]
            rig.s.progress_at = 0.0
            rig.writer.write(b"ONE\r\n")
            assert await rig.read(7) == b"250 a\r\n"
            rig.writer.write(b"TWO\r\n")
            assert await rig.read(8) == b"250 bb\r\n"
            assert probe.got == [b"ONE\r\n", b"TWO\r\n"]
            assert rig.s.bytes_in == 10 and rig.s.bytes_out == 15 and rig.s.progress_at > 0
    _run(go)


def test_durable_holds_the_reply_and_the_clients_bytes_until_stored() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener()) as rig:
            probe = rig.probe()
            probe.script = [[Durable(SmtpMessage(), b"body"), b"250 stored\r\n"], [b"221 bye\r\n"]]
            rig.writer.write(b"DATA...\r\n")
            store = rig.host.recorder  # type: ignore[assignment]
            await _until(lambda: rig.s.state is State.DURABLE_WAIT)
            rig.writer.write(b"QUIT\r\n")  # sent before the 250: it must wait
            await asyncio.sleep(0.2)
            assert probe.got == [b"DATA...\r\n"] and rig.s.backlog == [b"QUIT\r\n"]
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(rig.reader.read(1), 0.2)  # no 250 before it is on disk
            store.durable[0].set_result("sha")
            assert await rig.read(21) == b"250 stored\r\n221 bye\r\n"
            assert rig.s.state is State.ACTIVE and probe.got[-1] == b"QUIT\r\n"
    _run(go)


def test_durable_that_fails_closes_without_a_reply() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener()) as rig:
            probe = rig.probe()
            probe.script = [[Durable(SmtpMessage(), b"body"), b"250 stored\r\n"]]
            rig.writer.write(b"DATA...\r\n")
            await _until(lambda: rig.s.state is State.DURABLE_WAIT)
            rig.host.recorder.durable[0].set_exception(OSError("disk gone"))  # type: ignore[attr-defined]
            assert await asyncio.wait_for(rig.reader.read(100), TIMEOUT) == b""
            await _until(lambda: rig.s.state is State.CLOSED)
            close = rig.host.recorder.events[-1]  # type: ignore[attr-defined]
            assert type(close) is SessionClose and close.reason == "error"
    _run(go)


def test_tunnel_plays_the_far_end_after_its_greeting_delay() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop, _settings(tunnel_greeting_delay_s=0.3)), _listener()) as rig:
            rig.s._run([b"granted\r\n", Tunnel("socks5", "mx.example.com", 25)])
            assert rig.s.state is State.TUNNEL_GREETING and rig.s.ctx.depth == 1
            assert await rig.read(9) == b"granted\r\n"
            banner = await asyncio.wait_for(rig.reader.readline(), TIMEOUT)
            assert banner.startswith(b"220 ") and b"mx.example.com" in banner
            assert rig.s.state is State.ACTIVE and rig.s.handler.protocol == "smtp"
    _run(go)


def test_tunnel_greeting_comes_first_when_the_client_speaks_early() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop, _settings(tunnel_greeting_delay_s=30)), _listener()) as rig:
            rig.s._run([Tunnel("socks5", "mx.example.com", 25)])
            assert rig.s.state is State.TUNNEL_GREETING
            rig.writer.write(b"EHLO me\r\n")
            banner = await asyncio.wait_for(rig.reader.readline(), TIMEOUT)
            assert banner.startswith(b"220 ")
            assert (await asyncio.wait_for(rig.reader.readline(), TIMEOUT)).startswith(b"250")
            assert rig.s.state is State.ACTIVE and rig.s.greet_timer is None
    _run(go)


def test_starttls_without_a_certificate_tells_the_handler_and_closes() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener()) as rig:
            probe = rig.probe()
            probe.script = [[b"220 go ahead\r\n", StartTLS()]]
            rig.writer.write(b"STARTTLS\r\n")
            assert await rig.read(14) == b"220 go ahead\r\n"
            await _until(lambda: rig.s.state is State.CLOSED)
            assert probe.hooks == ["tls_failed", "eof"]
            names = rig.host.recorder.names()  # type: ignore[attr-defined]
            assert names[-2:] == ["spampots.protocol.error", "spampots.session.close"]
            assert rig.host.recorder.events[-1].reason == "protocol"  # type: ignore[attr-defined]
    _run(go)


def test_starttls_pipelined_with_the_tunnel_request_reaches_the_smtp_server() -> None:
    # The far end's sniffer has chosen SMTP inside the tunnel's own bytes, before the session
    # could switch to it: the TLS hooks still reach the SMTP server, which records the outcome.
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener(tls=True)) as rig:  # TLS offered; the handshake fails
            rig.s._run([Tunnel("socks5", "mx.example.com", 25, rest=b"EHLO me\r\nSTARTTLS\r\n")])
            await _until(lambda: rig.s.state is State.CLOSED)
            events = rig.host.recorder.events  # type: ignore[attr-defined]
            tls = [e for e in events if name_of(e) == "spampots.smtp.tls"]
            assert len(tls) == 1 and tls[0].outcome == "failed" and tls[0].target_host == "mx.example.com"
    _run(go)


def test_close_sends_what_came_before_and_keeps_its_reason() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener()) as rig:
            rig.s._run([b"bye\r\n", Close("limit"), b"never\r\n"])
            assert await asyncio.wait_for(rig.reader.read(100), TIMEOUT) == b"bye\r\n"
            assert await asyncio.wait_for(rig.reader.read(100), TIMEOUT) == b""
            await _until(lambda: rig.s.state is State.CLOSED)
            assert rig.host.recorder.events[-1].reason == "limit"  # type: ignore[attr-defined]
    _run(go)


def test_greeting_delay_then_banner_or_client_first() -> None:
    async def go(loop) -> None:
        host = _host(loop, _settings(greeting_delay_s=0.3))
        async with _Rig(host, _listener("smtp", speaks_first=True)) as rig:
            assert rig.s.state is State.GREETING
            banner = await asyncio.wait_for(rig.reader.readline(), TIMEOUT)
            assert banner.startswith(b"220 ") and rig.s.state is State.ACTIVE
        host = _host(loop, _settings(greeting_delay_s=30))
        async with _Rig(host, _listener("smtp", speaks_first=True)) as rig:
            rig.writer.write(b"EHLO early\r\n")  # before the banner: it is never sent
            reply = await asyncio.wait_for(rig.reader.readline(), TIMEOUT)
            assert reply.startswith(b"250") and rig.s.state is State.ACTIVE
    _run(go)


def test_a_refused_session_is_closed_without_opening() -> None:
    async def go(loop) -> None:
        opened: list = []
        host = _host(loop, admit=lambda s: (("max_sessions_per_ip", 1, 2), False), opened=opened.append)
        async with _Rig(host, _listener()) as rig:
            assert rig.s.state is State.CLOSED
            assert await asyncio.wait_for(rig.reader.read(100), TIMEOUT) == b""
            assert opened == [] and rig.host.recorder.names() == ["spampots.limit.hit"]  # type: ignore[attr-defined]
    _run(go)


def test_a_lost_connection_gives_the_handler_its_eof_once() -> None:
    async def go(loop) -> None:
        async with _Rig(_host(loop), _listener()) as rig:
            probe = rig.probe()
            rig.writer.close()
            await _until(lambda: rig.s.state is State.CLOSED)
            rig.s.connection_lost(None)  # a second report changes nothing
            assert probe.hooks == ["eof"]
            names = rig.host.recorder.names()  # type: ignore[attr-defined]
            assert names.count("spampots.session.close") == 1 and names[0] == "spampots.session.open"
    _run(go)
