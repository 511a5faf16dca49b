"""SOCKS5 server machine: raw bytes, curl's and python-socks' bytes, fuzzing."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from clients import HandlerStream, NoResolver
from hypothesis import given, settings
from hypothesis import strategies as st
from python_socks._connectors.socks5_sync import Socks5SyncConnector
from python_socks._protocols import socks5 as ps5

from spampots.events import Event, ProtocolError, ProxyRequest
from spampots.protocols.base import Close, Context, Durable, StartTLS, Tunnel
from spampots.protocols.socks5 import Socks5Server

ACTION_TYPES = (bytes, Event, Durable, Tunnel, StartTLS, Close)

NOAUTH = b"\x05\x01\x00"
USERPASS = b"\x05\x01\x02"
AUTH = b"\x01\x05alice\x06s3cret"


def server(**ctx) -> Socks5Server:
    return Socks5Server(Context(**ctx))


def connect(atyp: int, addr: bytes, port: int, cmd: int = 1) -> bytes:
    return bytes((5, cmd, 0, atyp)) + addr + port.to_bytes(2, "big")


def domain(name: bytes, port: int, cmd: int = 1) -> bytes:
    return connect(3, bytes((len(name),)) + name, port, cmd)


def sent(actions) -> list[bytes]:
    return [a for a in actions if isinstance(a, bytes)]


def kinds(actions) -> list[str]:
    return [a.kind for a in actions if isinstance(a, ProtocolError)]


def bytewise(handler, data: bytes) -> list:
    out = []
    for i in range(len(data)):
        out += handler.receive(data[i : i + 1])
    return out


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    """Names are recorded, never resolved: any lookup fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("name resolution attempted")
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(socket, name, boom)


# --- method selection ------------------------------------------------------

@pytest.mark.parametrize("greeting", [
    b"\x05\x01\x00",          # curl (newer) and python-socks without credentials
    b"\x05\x02\x00\x01",      # curl (older): no auth + GSSAPI
])
def test_no_auth_chosen_when_offered(greeting):
    assert server().receive(greeting) == [b"\x05\x00"]


@pytest.mark.parametrize("greeting", [b"\x05\x01\x02", b"\x05\x02\x01\x02",
                                      b"\x05\x02\x00\x02",  # python-socks/curl/hydra with credentials
                                      b"\x05\x03\x02\x01\x00"])
def test_userpass_chosen_whenever_offered(greeting):
    assert server().receive(greeting) == [b"\x05\x02"]


@pytest.mark.parametrize("greeting", [b"\x05\x01\x01", b"\x05\x02\x03\x80", b"\x05\x00"])
def test_no_acceptable_method(greeting):
    h = server()
    actions = h.receive(greeting)
    assert kinds(actions) == ["socks5.no_acceptable_method"]
    assert sent(actions) == [b"\x05\xff"]
    assert actions[-1] == Close("protocol")
    assert h.receive(connect(1, bytes(4), 80)) == []


# --- CONNECT ---------------------------------------------------------------

def test_connect_ipv4_no_auth():
    h = server(local_ip="192.0.2.5", src_ip="203.0.113.50", src_port=40000)
    assert h.receive(NOAUTH) == [b"\x05\x00"]
    event, reply, tunnel = h.receive(connect(1, bytes([93, 184, 216, 34]), 80))
    assert event == ProxyRequest(proxy="socks5", command="connect", target_host="93.184.216.34",
                                 target_port=80, auth_method="none", outcome="granted", reply_code=0)
    assert reply[:8] == b"\x05\x00\x00\x01" + bytes([192, 0, 2, 5]) and len(reply) == 10
    assert 32768 <= int.from_bytes(reply[8:], "big") <= 60999
    assert tunnel == Tunnel("socks5", "93.184.216.34", 80, rest=b"")


def test_connect_domain_with_userpass():
    h = server()
    assert h.receive(USERPASS) == [b"\x05\x02"]
    assert h.receive(AUTH) == [b"\x01\x00"]
    event, reply, tunnel = h.receive(domain(b"mx.example.com", 25))
    assert (event.target_host, event.target_port) == ("mx.example.com", 25)
    assert (event.auth_method, event.username, event.password) == ("userpass", "alice", "s3cret")
    assert tunnel == Tunnel("socks5", "mx.example.com", 25)


def test_connect_ipv6_compressed():
    h = server()
    h.receive(NOAUTH)
    event, _, tunnel = h.receive(connect(4, ipaddress.IPv6Address("2001:db8:0:0:0:0:0:25").packed, 587))
    assert event.target_host == "2001:db8::25" == tunnel.host


def test_empty_credentials_and_non_utf8_are_kept():
    h = server()
    h.receive(USERPASS)
    assert h.receive(b"\x01\x00\x02\xff\xfe") == [b"\x01\x00"]
    event, _, _ = h.receive(domain(b"caf\xe9.example", 80))
    assert event.username == "" and event.password == "\\xff\\xfe"
    assert event.target_host == "caf\\xe9.example"


@pytest.mark.parametrize(("local_ip", "bound"), [
    ("127.0.0.1", bytes([127, 0, 0, 1])),
    ("::ffff:192.0.2.9", bytes([192, 0, 2, 9])),
    ("::1", bytes(4)),
    ("not-an-ip", bytes(4)),
])
def test_bound_address(local_ip, bound):
    h = server(local_ip=local_ip)
    h.receive(NOAUTH)
    reply = sent(h.receive(connect(1, bytes([192, 0, 2, 1]), 25)))[0]
    assert reply[4:8] == bound


def test_bound_port_is_stable():
    replies = set()
    for _ in range(2):
        h = server(src_ip="203.0.113.1", src_port=5555)
        replies.add(sent(h.receive(NOAUTH + domain(b"a.example", 25)))[1])
    assert len(replies) == 1


# --- pipelining and byte-at-a-time -----------------------------------------

def test_pipelined_greeting_request_and_payload():
    payload = b"EHLO x\r\n"
    actions = server().receive(NOAUTH + domain(b"mx.example.org", 25) + payload)
    assert actions[0] == b"\x05\x00"
    assert isinstance(actions[1], ProxyRequest)
    assert actions[2][:2] == b"\x05\x00"
    assert actions[3] == Tunnel("socks5", "mx.example.org", 25, rest=payload)


def test_pipelined_with_auth():
    actions = server().receive(USERPASS + AUTH + connect(1, bytes([192, 0, 2, 1]), 25))
    assert sent(actions)[:2] == [b"\x05\x02", b"\x01\x00"]
    assert actions[-1] == Tunnel("socks5", "192.0.2.1", 25)


@pytest.mark.parametrize("stream", [
    NOAUTH + connect(1, bytes([192, 0, 2, 1]), 25),
    USERPASS + AUTH + domain(b"smtp.example.net", 587),
    b"\x05\x02\x00\x01" + connect(4, bytes(15) + b"\x01", 443),
])
def test_byte_at_a_time_equals_one_chunk(stream):
    h = server()
    actions = bytewise(h, stream)
    assert actions == server().receive(stream)
    # Each reply left in one piece, in the call that completed its packet.
    assert all(len(r) in (2, 10) for r in sent(actions))
    assert isinstance(actions[-1], Tunnel)


# --- BIND, UDP ASSOCIATE, malformed requests -------------------------------

@pytest.mark.parametrize(("cmd", "name"), [(2, "bind"), (3, "udp_associate")])
def test_bind_and_udp_unsupported(cmd, name):
    h = server()
    h.receive(NOAUTH)
    event, reply, close = h.receive(connect(1, bytes([192, 0, 2, 1]), 9999, cmd=cmd))
    assert (event.command, event.outcome, event.reply_code) == (name, "unsupported", 7)
    assert reply == b"\x05\x07\x00\x01" + bytes(6)
    assert isinstance(close, Close)


def test_unknown_command():
    h = server()
    actions = h.receive(NOAUTH + connect(1, bytes(4), 80, cmd=9))
    assert kinds(actions) == ["socks5.bad_command"]
    assert sent(actions)[-1][:2] == b"\x05\x07"
    assert actions[-1] == Close("protocol")


def test_unknown_address_type_fails_before_the_address():
    h = server()
    h.receive(NOAUTH)
    actions = h.receive(b"\x05\x01\x00\x05")
    assert kinds(actions) == ["socks5.bad_address_type"]
    assert sent(actions) == [b"\x05\x08\x00\x01" + bytes(6)]
    assert actions[-1] == Close("protocol")


def test_empty_domain():
    actions = server().receive(NOAUTH + domain(b"", 80))
    assert kinds(actions) == ["socks5.bad_address"]
    assert sent(actions)[-1][:2] == b"\x05\x01"


@pytest.mark.parametrize("stream", [
    b"\x04\x01\x00\x50",                     # SOCKS4 to a SOCKS5 machine
    USERPASS + b"\x05\x05alice",             # auth sub-negotiation must be version 1
    NOAUTH + b"\x04\x01\x00\x01",            # request must be version 5
    b"GET / HTTP/1.1\r\n",
])
def test_bad_version(stream):
    h = server()
    actions = h.receive(stream)
    assert kinds(actions) == ["socks5.bad_version"]
    assert actions[-1] == Close("protocol")
    assert h.receive(b"\x05\x01\x00") == [] and h.eof() == []


# --- truncated input -------------------------------------------------------

@pytest.mark.parametrize("stream", [
    b"\x05", b"\x05\x02\x00", NOAUTH, NOAUTH + b"\x05\x01\x00\x03\x0bexam",
    USERPASS + b"\x01\x05ali", NOAUTH + connect(1, bytes(4), 80)[:-1],
])
def test_eof_mid_negotiation_is_truncated(stream):
    h = server()
    h.receive(stream)
    actions = h.eof()
    assert kinds(actions) == ["socks5.truncated"]
    assert not sent(actions)
    assert h.eof() == []


def test_eof_after_auth_keeps_credentials():
    h = server()
    h.receive(USERPASS + AUTH)
    (error,) = h.eof()
    assert "alice" in error.detail and "s3cret" in error.detail


def test_eof_without_bytes_is_quiet():
    assert server().eof() == []


def test_nothing_after_tunnel():
    h = server()
    assert isinstance(h.receive(NOAUTH + connect(1, bytes(4), 80))[-1], Tunnel)
    assert h.receive(b"late bytes") == [] and h.eof() == []


# --- real client libraries --------------------------------------------------

@pytest.mark.parametrize(("host", "user", "password"), [
    ("198.51.100.7", None, None),
    ("2001:db8::7", None, None),
    ("mx.example.org", None, None),
    ("mx.example.org", "alice", "s3cret"),
])
def test_python_socks_connector(host, user, password):
    h = server()
    stream = HandlerStream(h, one_reply_per_packet=True)
    connector = Socks5SyncConnector(username=user, password=password, rdns=True, resolver=NoResolver())
    reply = connector.connect(stream, host, 25)
    assert reply.reply == ps5.ReplyCode.SUCCEEDED and reply.bound_host == "127.0.0.1"
    assert stream.inbox == b""  # the reply was exactly as long as announced
    event = next(a for a in stream.actions if isinstance(a, ProxyRequest))
    # a client with credentials offers both methods: we ask for them, and record them
    want = (host, 25, "userpass", user, password) if user else (host, 25, "none", None, None)
    assert (event.target_host, event.target_port, event.auth_method, event.username, event.password) == want
    assert stream.actions[-1] == Tunnel("socks5", host, 25)


def test_python_socks_packets_for_userpass():
    """A client offering only user/pass: check each reply with python-socks' parsers."""
    h = server()
    methods = ps5.AuthMethodReply.loads(h.receive(USERPASS)[0])
    assert methods.method == ps5.AuthMethod.USERNAME_PASSWORD
    auth = h.receive(ps5.AuthRequest(username="bob", password="hunter2").dumps())
    assert ps5.AuthReply.loads(auth[0]).status == 0
    actions = h.receive(ps5.ConnectRequest(host="10.20.30.40", port=2525).dumps())
    assert ps5.ConnectReply.loads(sent(actions)[0]).reply == ps5.ReplyCode.SUCCEEDED
    assert (actions[0].username, actions[0].password, actions[0].target_port) == ("bob", "hunter2", 2525)


# --- fuzzing ---------------------------------------------------------------

PREFIXES = [b"", b"\x05", NOAUTH, b"\x05\x02\x00\x01", USERPASS, USERPASS + AUTH,
            NOAUTH + b"\x05\x01\x00", NOAUTH + b"\x05\x01\x00\x03"]


def check_actions(actions: list) -> None:
    for i, a in enumerate(actions):
        assert isinstance(a, ACTION_TYPES)
        if isinstance(a, (Close, Tunnel)):
            assert i == len(actions) - 1, "nothing may follow Close or Tunnel"
        if a == Close("protocol"):
            assert any(isinstance(b, ProtocolError) for b in actions[:i]), "bad input must be recorded"


@st.composite
def chunked(draw) -> list[bytes]:
    data = draw(st.sampled_from(PREFIXES)) + draw(st.binary(max_size=96))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@settings(max_examples=300, deadline=None)
@given(chunked())
def test_fuzz(chunks):
    h = server()
    finished = False
    for chunk in chunks:
        actions = h.receive(chunk)
        if finished:
            assert actions == []
        check_actions(actions)
        finished = finished or any(isinstance(a, (Close, Tunnel)) for a in actions)
    tail = h.eof()
    check_actions(tail)
    assert not any(isinstance(a, (bytes, Tunnel)) for a in tail)
    if finished:
        assert tail == []
