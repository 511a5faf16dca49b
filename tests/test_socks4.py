"""SOCKS4 / SOCKS4a server machine: raw bytes, python-socks' own bytes, fuzzing."""

from __future__ import annotations

import socket

import pytest
from clients import HandlerStream, NoResolver
from hypothesis import given, settings
from hypothesis import strategies as st
from python_socks._connectors.socks4_sync import Socks4SyncConnector
from python_socks._protocols import socks4 as ps4

from spampots.events import Event, LimitHit, ProtocolError, ProxyRequest
from spampots.protocols.base import Close, Context, Durable, Limits, StartTLS, Tunnel
from spampots.protocols.socks4 import Socks4Server

ACTION_TYPES = (bytes, Event, Durable, Tunnel, StartTLS, Close)


def server(**ctx) -> Socks4Server:
    return Socks4Server(Context(**ctx))


def bytewise(handler, data: bytes) -> list:
    """Feed one byte at a time; all but the last call must stay silent here."""
    out = []
    for i in range(len(data)):
        out += handler.receive(data[i : i + 1])
    return out


def request(cd: int, port: int, ip: bytes, userid: bytes = b"", host: bytes | None = None) -> bytes:
    data = bytes((4, cd)) + port.to_bytes(2, "big") + ip + userid + b"\0"
    return data + host + b"\0" if host is not None else data


def kinds(actions) -> list[str]:
    return [a.kind for a in actions if isinstance(a, ProtocolError)]


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    """Names are recorded, never resolved: any lookup fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("name resolution attempted")
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(socket, name, boom)


# --- CONNECT ---------------------------------------------------------------

def test_connect_ipv4_with_userid():
    data = request(1, 80, bytes([93, 184, 216, 34]), b"alice")
    actions = server().receive(data)
    event, reply, tunnel = actions
    assert event == ProxyRequest(proxy="socks4", command="connect", target_host="93.184.216.34",
                                 target_port=80, username="alice", outcome="granted", reply_code=0x5A)
    assert reply == b"\x00\x5a\x00\x50" + bytes([93, 184, 216, 34])
    assert tunnel == Tunnel("socks4", "93.184.216.34", 80, rest=b"")


def test_connect_empty_userid_is_none_and_rest_is_kept():
    payload = b"EHLO spammer\r\n"
    h = server()
    event, _, tunnel = h.receive(request(1, 25, bytes([192, 0, 2, 1])) + payload)
    assert event.username is None
    assert tunnel.rest == payload
    assert h.protocol == "socks4"


def test_byte_at_a_time_equals_one_chunk():
    data = request(1, 25, bytes([198, 51, 100, 7]), b"bot")
    h = server()
    for i in range(len(data) - 1):
        assert h.receive(data[i : i + 1]) == []
    assert h.receive(data[-1:]) == server().receive(data)


def test_socks4a_hostname():
    data = request(1, 25, b"\0\0\0\x01", b"u", b"mx.example.com")
    h = server()
    actions = bytewise(h, data)
    event, reply, tunnel = actions
    assert h.protocol == "socks4a"
    assert event.proxy == "socks4a" and event.target_host == "mx.example.com" and event.target_port == 25
    assert event.username == "u"
    assert reply == b"\x00\x5a\x00\x19\x00\x00\x00\x01"
    assert tunnel == Tunnel("socks4a", "mx.example.com", 25)


def test_plain_0_0_0_0_is_not_4a():
    h = server()
    event, _, tunnel = h.receive(request(1, 80, b"\0\0\0\0"))
    assert h.protocol == "socks4" and event.target_host == "0.0.0.0"


def test_socks4a_hostname_not_utf8_is_kept_readable():
    event, _, tunnel = server().receive(request(1, 80, b"\0\0\0\x09", b"", b"ex\xffample.com"))
    assert event.target_host == "ex\\xffample.com" == tunnel.host


def test_socks4a_empty_hostname_rejected():
    actions = server().receive(request(1, 80, b"\0\0\0\x01", b"", b""))
    assert kinds(actions) == ["socks4.bad_hostname"]
    assert actions[1][:2] == b"\x00\x5b" and len(actions[1]) == 8
    assert actions[-1] == Close("protocol")


# --- BIND and malformed input ---------------------------------------------

def test_bind_rejected():
    actions = server().receive(request(2, 4444, bytes([203, 0, 113, 9]), b"x"))
    event, reply, close = actions
    assert event.command == "bind" and event.outcome == "rejected" and event.reply_code == 0x5B
    assert reply == b"\x00\x5b\x11\x5c" + bytes([203, 0, 113, 9])
    assert isinstance(close, Close)


def test_bad_version_fails_on_first_byte():
    h = server()
    actions = h.receive(b"\x05")
    assert kinds(actions) == ["socks4.bad_version"]
    assert not any(isinstance(a, bytes) for a in actions)
    assert actions[-1] == Close("protocol")
    assert h.receive(request(1, 80, bytes(4))) == [] and h.eof() == []


def test_bad_command_fails_on_second_byte():
    actions = server().receive(b"\x04\x03")
    assert kinds(actions) == ["socks4.bad_command"]
    assert actions[1] == b"\x00\x5b" + bytes(6)
    assert actions[-1] == Close("protocol")


def test_userid_at_limit_is_accepted_and_beyond_is_refused():
    ctx = {"limits": Limits(line_length=16)}
    ok = server(**ctx).receive(request(1, 80, bytes([192, 0, 2, 1]), b"u" * 16))
    assert ok[0].username == "u" * 16
    h = server(**ctx)
    actions = bytewise(h, request(1, 80, bytes([192, 0, 2, 1]), b"u" * 17))
    assert isinstance(actions[0], LimitHit) and actions[0].limit == "line_length" and actions[0].value == 16
    assert kinds(actions) == ["socks4.oversized"]
    assert actions[-1] == Close("limit")


def test_oversized_4a_hostname():
    h = server(limits=Limits(line_length=8))
    actions = h.receive(request(1, 25, b"\0\0\0\x01", b"", b"a" * 9))
    assert kinds(actions) == ["socks4.oversized"] and "hostname" in actions[1].detail
    assert h.protocol == "socks4a"


@pytest.mark.parametrize("cut", [1, 2, 7, 8, 12])
def test_eof_mid_request_is_truncated(cut):
    h = server()
    assert h.receive(request(1, 80, bytes([192, 0, 2, 1]), b"userid")[:cut]) == []
    actions = h.eof()
    assert kinds(actions) == ["socks4.truncated"]
    assert h.eof() == []


def test_eof_without_bytes_is_quiet():
    assert server().eof() == []


def test_nothing_after_tunnel():
    h = server()
    h.receive(request(1, 80, bytes([192, 0, 2, 1])))
    assert h.receive(b"more") == [] and h.eof() == []


# --- a real client library's bytes -----------------------------------------

@pytest.mark.parametrize(("host", "user", "proto"), [
    ("198.51.100.7", None, "socks4"),
    ("198.51.100.7", "bot", "socks4"),
    ("smtp.example.org", "bot", "socks4a"),
])
def test_python_socks_connector(host, user, proto):
    h = server()
    stream = HandlerStream(h)
    reply = Socks4SyncConnector(user_id=user, rdns=True, resolver=NoResolver()).connect(stream, host, 25)
    assert reply.reply == ps4.ReplyCode.REQUEST_GRANTED
    assert stream.inbox == b""  # nothing beyond the 8-byte reply
    event = next(a for a in stream.actions if isinstance(a, ProxyRequest))
    assert (event.proxy, event.target_host, event.target_port, event.username) == (proto, host, 25, user)
    assert stream.actions[-1] == Tunnel(proto, host, 25)


def test_python_socks_sans_io_connection():
    conn = ps4.Connection()
    data = conn.send(ps4.ConnectRequest(host="mx.example.net", port=587, user_id="u"))
    reply = b"".join(a for a in server().receive(data) if isinstance(a, bytes))
    assert conn.receive(reply).reply == ps4.ReplyCode.REQUEST_GRANTED


# --- fuzzing ---------------------------------------------------------------

PREFIXES = [b"", b"\x04", b"\x04\x01", b"\x04\x01\x00\x50\x00\x00\x00\x01", b"\x04\x02\x00\x50\x01\x02\x03\x04"]


def check_machine(handler, chunks: list[bytes]) -> None:
    finished = False
    for chunk in chunks:
        actions = handler.receive(chunk)
        if finished:
            assert actions == []
        check_actions(actions)
        finished = finished or any(isinstance(a, (Close, Tunnel)) for a in actions)
    tail = handler.eof()
    assert not any(isinstance(a, (bytes, Tunnel)) for a in tail)
    if finished:
        assert tail == []
    check_actions(tail)


def check_actions(actions: list) -> None:
    for i, a in enumerate(actions):
        assert isinstance(a, ACTION_TYPES)
        if isinstance(a, (Close, Tunnel)):
            assert i == len(actions) - 1, "nothing may follow Close or Tunnel"
        if a == Close("protocol"):
            assert any(isinstance(b, ProtocolError) for b in actions[:i]), "bad input must be recorded"


@st.composite
def chunked(draw, prefixes: list[bytes]) -> list[bytes]:
    data = draw(st.sampled_from(prefixes)) + draw(st.binary(max_size=64))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@settings(max_examples=300, deadline=None)
@given(chunked(PREFIXES), st.integers(1, 64))
def test_fuzz(chunks, line_length):
    check_machine(server(limits=Limits(line_length=line_length)), chunks)
