"""Raw payload capture for tunnels to protocols we do not play."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from spampots.events import Event, ProtocolError, TunnelPayload
from spampots.protocols.base import Close, Context, Durable, Limits, StartTLS, Tunnel
from spampots.protocols.raw import RawCapture

ACTION_TYPES = (bytes, Event, Durable, Tunnel, StartTLS, Close)


def tunnel(keep: int = 4096, **ctx) -> RawCapture:
    return RawCapture(Context(target_host="irc.example.net", target_port=6667, depth=1,
                              listener_port=1080, limits=Limits(payload_keep=keep), **ctx))


def test_tunnel_payload_kept_and_counted_once_on_eof():
    r = tunnel(keep=10)
    assert r.start() == []
    assert r.receive(b"NICK bot\r\n") == [] and r.receive(b"USER bot 0 * :x\r\n") == []
    out = r.eof()
    assert len(out) == 1 and isinstance(out[0], TunnelPayload)
    ev = out[0]
    assert (ev.target_host, ev.target_port, ev.size) == ("irc.example.net", 6667, 27)
    assert base64.b64decode(ev.data_b64) == b"NICK bot\r\n"
    assert r.eof() == [] and r.receive(b"late") == []


def test_keep_buffer_full_keeps_counting_without_close():
    r = tunnel(keep=4)
    for _ in range(1000):
        assert r.receive(b"SSH-2.0-x\r\n") == []  # the glue closes on idle
    ev = r.eof()[0]
    assert ev.size == 11000 and base64.b64decode(ev.data_b64) == b"SSH-"


def test_flush_then_eof_emits_exactly_one():
    r = tunnel()
    r.receive(b"\x00\x01")
    first = r.flush()
    assert [type(a) for a in first] == [TunnelPayload] and first[0].size == 2
    assert r.flush() == [] and r.eof() == []


def test_empty_tunnel_still_reports_once():
    out = tunnel().eof()
    assert len(out) == 1 and out[0].size == 0 and out[0].data_b64 == ""


def test_unknown_bytes_on_our_listener_are_an_error_and_close():
    r = RawCapture(Context(listener_port=8080))
    data = b"\x00\xff garbage \x13\x37\r\n"
    out = r.receive(data)
    assert [type(a) for a in out] == [ProtocolError, TunnelPayload, Close]
    assert out[0].kind == "raw.unknown_protocol"
    assert base64.b64decode(out[0].data_b64) == data
    assert (out[1].target_host, out[1].target_port, out[1].size) == ("", 8080, len(data))
    assert r.receive(b"more") == [] and r.eof() == []


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=100), max_size=30), keep=st.integers(0, 300),
       depth=st.integers(0, 2), flush=st.booleans())
def test_fuzz_size_and_prefix(chunks, keep, depth, flush):
    r = RawCapture(Context(depth=depth, target_host="t" if depth else None, target_port=22 if depth else None,
                           limits=Limits(payload_keep=keep)))
    out = []
    for c in chunks:
        out += r.receive(c)
    out += r.flush() if flush else []
    out += r.eof()
    assert all(isinstance(a, ACTION_TYPES) for a in out)
    payloads = [a for a in out if isinstance(a, TunnelPayload)]
    assert len(payloads) == 1
    data = b"".join(chunks)
    if depth:  # everything counted; the first bytes kept
        assert payloads[0].size == len(data) and not [a for a in out if isinstance(a, Close)]
        assert base64.b64decode(payloads[0].data_b64) == data[:keep]
    else:  # closed after the first segment
        first = chunks[0] if chunks else b""
        assert payloads[0].size == len(first)
