"""TLS ClientHello reader: real hellos from Python's ssl module (no socket), crafted ones, fuzzing."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spampots.events import Event, ProtocolError, TlsHello
from spampots.protocols.base import Close, Context, Durable, StartTLS, Tunnel
from spampots.protocols.tls_hello import (
    ALERT_DECODE_ERROR, ALERT_HANDSHAKE_FAILURE, MAX_HELLO, TlsHelloReader, parse_client_hello,
)

ACTION_TYPES = (bytes, Event, Durable, Tunnel, StartTLS, Close)
TUNNEL = Context(target_host="secure.example.org", target_port=443, depth=1, listener_port=1080)


def client_hello(server_hostname="example.org", alpn=("h2", "http/1.1"), max_version=None) -> bytes:
    """The first flight of a real client: Python's ssl over memory BIOs, no socket."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if max_version is not None:
        ctx.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def refragment(record: bytes, size: int) -> bytes:
    """The same handshake bytes spread over several records of at most ``size`` bytes."""
    assert record[0] == 0x16
    payload = record[5:]
    return b"".join(record[:3] + struct.pack(">H", len(payload[i : i + size])) + payload[i : i + size]
                    for i in range(0, len(payload), size))


def craft(ciphers=(0x1301,), exts: bytes = b"", version: int = 0x0303) -> bytes:
    """A minimal ClientHello record."""
    suites = b"".join(struct.pack(">H", c) for c in ciphers)
    body = (struct.pack(">H", version) + bytes(32) + b"\x00" + struct.pack(">H", len(suites)) + suites
            + b"\x01\x00" + (struct.pack(">H", len(exts)) + exts if exts else b""))
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def ext(kind: int, data: bytes) -> bytes:
    return struct.pack(">HH", kind, len(data)) + data


def feed_all(reader, data: bytes, step: int) -> list:
    out = []
    for i in range(0, len(data), step):
        out += reader.receive(data[i : i + step])
    return out


@pytest.mark.parametrize("step", [1, 7, 100000])
@pytest.mark.parametrize("fragment", [None, 50, 200])
def test_python_client_hello_sni_alpn(step, fragment):
    hello = client_hello()
    if fragment:
        hello = refragment(hello, fragment)
    out = feed_all(TlsHelloReader(TUNNEL), hello, step)
    assert [type(a) for a in out] == [TlsHello, bytes, Close]
    ev = out[0]
    assert ev.sni == "example.org" and ev.alpn == ["h2", "http/1.1"]
    assert ev.tls_version == "TLS1.3" and ev.cipher_count > 5
    assert (ev.target_host, ev.target_port) == ("secure.example.org", 443)
    assert out[1] == ALERT_HANDSHAKE_FAILURE == bytes.fromhex("15030300020228")


def test_tls12_only_client_without_sni_or_alpn():
    hello = client_hello(server_hostname=None, alpn=(), max_version=ssl.TLSVersion.TLSv1_2)
    ev = TlsHelloReader(Context(listener_port=8443)).receive(hello)[0]
    assert ev.sni is None and ev.alpn == [] and ev.tls_version == "TLS1.2"
    assert (ev.target_host, ev.target_port) == ("", 8443)  # on our own listener


def test_grease_is_ignored_and_no_extensions_ok():
    exts = ext(43, b"\x06\x0a\x0a\x03\x04\x03\x03") + ext(0, b"\x00\x08\x00\x00\x05a.b.c")
    fields = parse_client_hello(craft(ciphers=(0x2A2A, 0x1301, 0xC02F), exts=exts)[9:])
    assert fields == {"sni": "a.b.c", "alpn": [], "tls_version": "TLS1.3", "cipher_count": 2}
    fields = parse_client_hello(craft(version=0x0301)[9:])
    assert fields["tls_version"] == "TLS1.0" and fields["sni"] is None


def test_trailing_records_after_hello_are_ignored():
    out = TlsHelloReader(TUNNEL).receive(client_hello() + b"\x14\x03\x03\x00\x01\x01")
    assert isinstance(out[0], TlsHello) and isinstance(out[-1], Close)


@pytest.mark.parametrize("data,kind", [
    (b"\x17\x03\x03\x00\x05hello", "tls.malformed"),  # application data first
    (b"\x16\x02\x00\x00\x05hello", "tls.malformed"),  # not a 3.x record
    (b"\x16\x03\x01\x00\x00", "tls.malformed"),  # empty record
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "tls.malformed"),  # ServerHello
    (b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03", "tls.malformed"),  # hello body too short
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "tls.too_large"),
    (craft(ciphers=()), "tls.malformed"),
    (craft(exts=ext(0, b"\x00\x09\x00\x00\x05a.b.c")), "tls.malformed"),  # inner length overruns
])
def test_malformed(data, kind):
    r = TlsHelloReader(TUNNEL)
    out = r.receive(data)
    assert [a.kind for a in out if isinstance(a, ProtocolError)] == [kind]
    assert out[1] == ALERT_DECODE_ERROR and isinstance(out[-1], Close)
    assert r.receive(b"\x16\x03\x01") == [] and r.eof() == []


def test_size_bound_is_16k():
    assert MAX_HELLO == 16384


def test_eof_mid_hello_is_recorded_without_close():
    r = TlsHelloReader(TUNNEL)
    assert r.receive(client_hello()[:100]) == []
    out = r.eof()
    assert [type(a) for a in out] == [ProtocolError] and out[0].kind == "tls.truncated"
    assert TlsHelloReader(TUNNEL).eof() == []


def _check(out: list) -> None:
    assert all(isinstance(a, ACTION_TYPES) for a in out)
    closes = [i for i, a in enumerate(out) if isinstance(a, Close)]
    assert closes in ([], [len(out) - 1])
    hellos = [a for a in out if isinstance(a, TlsHello)]
    assert len(hellos) <= 1


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), step=st.integers(1, 64))
def test_fuzz_random_records(data, step):
    r = TlsHelloReader(TUNNEL)
    _check(feed_all(r, b"\x16\x03\x01" + data, step) + r.eof())


HELLO = client_hello()


@settings(max_examples=300, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, len(HELLO) - 1), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, len(HELLO)), step=st.integers(1, 600))
def test_fuzz_mutated_real_hello(flips, cut, step):
    data = bytearray(HELLO)
    for pos, value in flips:
        data[pos] = value
    r = TlsHelloReader(TUNNEL)
    _check(feed_all(r, bytes(data[:cut]), step) + r.eof())
