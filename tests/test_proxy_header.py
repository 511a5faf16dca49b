"""HAProxy PROXY protocol v1/v2 parser: spec examples, malformed headers, fuzzing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spampots.protocols.proxy_header import (
    V1_MAX, V2_SIGNATURE, ProxyHeaderParser, ProxyHeaderResult, looks_like_proxy_header,
)


def parse(data: bytes) -> ProxyHeaderResult | None:
    return ProxyHeaderParser().feed(data)


def bytewise(data: bytes) -> ProxyHeaderResult:
    parser = ProxyHeaderParser()
    for i in range(len(data) - 1):
        assert parser.feed(data[i : i + 1]) is None, f"decided after {i + 1} bytes"
    result = parser.feed(data[-1:])
    assert result is not None
    return result


def v2(ver_cmd: int, fam: int, block: bytes) -> bytes:
    return V2_SIGNATURE + bytes((ver_cmd, fam)) + len(block).to_bytes(2, "big") + block


def inet_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))


# --- detection ---------------------------------------------------------------

@pytest.mark.parametrize(("prefix", "expected"), [
    (b"", None), (b"P", None), (b"PROXY", None), (b"PROXY ", True), (b"PROXY TCP4", True),
    (b"\r\n", None), (V2_SIGNATURE[:11], None), (V2_SIGNATURE, True), (V2_SIGNATURE + b"\x21", True),
    (b"GET / HTTP/1.1", False), (b"PROXX", False), (b"\x05\x01\x00", False), (b"\r\n\r\n\x01", False),
    (b"proxy ", False),
])
def test_looks_like_proxy_header(prefix, expected):
    assert looks_like_proxy_header(prefix) is expected


# --- v1 ----------------------------------------------------------------------

def test_v1_tcp4_with_rest():
    header = b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 1080\r\n"
    r = bytewise(header)
    assert (r.version, r.command, r.family) == (1, "proxy", "tcp4")
    assert (r.src_ip, r.src_port, r.dst_ip, r.dst_port) == ("192.0.2.1", 51234, "198.51.100.7", 1080)
    assert r.error is None
    assert r.rest == b"" and r.header == header
    assert parse(header + b"\x05\x01\x00").rest == b"\x05\x01\x00"


def test_v1_tcp6_compressed():
    r = parse(b"PROXY TCP6 2001:db8:0::1 ::ffff:192.0.2.1 65535 0\r\n")
    assert (r.family, r.src_ip, r.dst_ip, r.src_port, r.dst_port) == (
        "tcp6", "2001:db8::1", "::ffff:c000:201", 65535, 0)


@pytest.mark.parametrize("line", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
])
def test_v1_unknown_keeps_real_endpoints(line):
    r = parse(line + b"EHLO x\r\n")
    assert r.error is None and r.family == "unknown"
    assert (r.src_ip, r.src_port, r.dst_ip, r.dst_port) == (None, None, None, None)
    assert r.rest == b"EHLO x\r\n" and r.header == line


def test_v1_worst_case_length_is_accepted_one_more_is_not():
    ip6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY UNKNOWN {ip6} {ip6} 65535 65535\r\n".encode()  # the spec's worst case
    assert len(line) == V1_MAX
    assert bytewise(line).family == "unknown"
    assert bytewise(line.replace(b"UNKNOWN", b"TCP6")).src_ip == ip6
    r = parse(b"PROXY UNKNOWN " + b"x" * 200)
    assert r.error == "proxy_header.oversized" and len(r.header) == V1_MAX


@pytest.mark.parametrize("line", [
    b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",
    b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 host.example 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n",
    b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",
    b"PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 080 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 +80 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 8_0 2\r\n",
    b"PROXY TCP4 192.0.2.\xff 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",
    b"PROXY TCP4 192.0.2.1\r192.0.2.2 1 2\r\n",
    b"PROXY \r\n",
])
def test_v1_malformed(line):
    r = parse(line)
    assert r.error == "proxy_header.malformed", r
    assert r.src_ip is None and r.header == line and r.detail


# --- v2 ----------------------------------------------------------------------

def test_v2_tcp4_with_rest():
    data = v2(0x21, 0x11, inet_block("203.0.113.9", "192.0.2.10", 40000, 25)) + b"HELO x\r\n"
    r = parse(data)
    assert (r.version, r.command, r.family) == (2, "proxy", "tcp4")
    assert (r.src_ip, r.src_port, r.dst_ip, r.dst_port) == ("203.0.113.9", 40000, "192.0.2.10", 25)
    assert r.rest == b"HELO x\r\n" and len(r.header) == 16 + 12


def test_v2_tcp6_bytewise_with_tlvs_skipped():
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # ALPN, NOOP
    data = v2(0x21, 0x21, inet_block("2001:db8::1", "2001:db8::2", 1, 1080) + tlvs)
    r = bytewise(data)
    assert (r.family, r.src_ip, r.dst_ip, r.src_port, r.dst_port) == ("tcp6", "2001:db8::1", "2001:db8::2", 1, 1080)
    assert r.header == data


def test_v2_local_ignores_the_block():
    r = parse(v2(0x20, 0x11, inet_block("203.0.113.9", "192.0.2.10", 1, 2)) + b"x")
    assert (r.command, r.src_ip, r.error, r.rest) == ("local", None, None, b"x")
    r = parse(v2(0x20, 0x00, b""))
    assert (r.command, r.error) == ("local", None)


@pytest.mark.parametrize(("fam", "family", "size"), [(0x00, "unspec", 0), (0x31, "unix_stream", 216),
                                                       (0x32, "unix_dgram", 216)])
def test_v2_families_without_ip(fam, family, size):
    r = parse(v2(0x21, fam, bytes(size)))
    assert (r.error, r.family, r.src_ip) == (None, family, None)


def test_v2_udp_addresses_are_reported():
    r = parse(v2(0x21, 0x12, inet_block("192.0.2.1", "192.0.2.2", 53, 53)))
    assert (r.family, r.src_ip) == ("udp4", "192.0.2.1")


@pytest.mark.parametrize(("data", "kind"), [
    (v2(0x11, 0x11, bytes(12)), "proxy_header.bad_version"),
    (v2(0x22, 0x11, bytes(12)), "proxy_header.bad_command"),
    (v2(0x21, 0x11, bytes(4)), "proxy_header.malformed"),
    (v2(0x21, 0x21, bytes(12)), "proxy_header.malformed"),
    (v2(0x21, 0x41, bytes(12)), "proxy_header.malformed"),
    (v2(0x21, 0x13, bytes(12)), "proxy_header.malformed"),
])
def test_v2_malformed(data, kind):
    r = parse(data)
    assert r.error == kind and r.src_ip is None


def test_v2_oversized_decided_from_the_length_field():
    parser = ProxyHeaderParser(max_v2=512)
    r = parser.feed(V2_SIGNATURE + b"\x21\x11\xff\xff")
    assert r.error == "proxy_header.oversized"


# --- no header, after the header ----------------------------------------------

def test_missing_header_hands_back_the_bytes():
    r = parse(b"GET / HTTP/1.1\r\n")
    assert r.error == "proxy_header.missing" and r.rest == b"GET / HTTP/1.1\r\n"


def test_missing_header_decided_only_when_sure():
    parser = ProxyHeaderParser()
    assert parser.feed(b"PRO") is None
    r = parser.feed(b"XX")
    assert r.error == "proxy_header.missing" and r.rest == b"PROXX"


def test_after_the_header_feed_passes_bytes_through():
    parser = ProxyHeaderParser()
    first = parser.feed(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nab")
    later = parser.feed(b"cd")
    assert parser.done and first.rest == b"ab" and later.rest == b"cd" and later.src_ip == "192.0.2.1"


# --- properties --------------------------------------------------------------

addresses = st.one_of(
    st.tuples(st.just(4), st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.just(6), st.ip_addresses(v=6), st.ip_addresses(v=6)),
)
ports = st.integers(0, 65535)


@settings(max_examples=200, deadline=None)
@given(addresses, ports, ports, st.binary(max_size=32), st.booleans())
def test_roundtrip(addrs, sport, dport, rest, binary):
    ver, src, dst = addrs
    if binary:
        data = v2(0x21, 0x11 if ver == 4 else 0x21, inet_block(str(src), str(dst), sport, dport))
    else:
        data = f"PROXY TCP{ver} {src} {dst} {sport} {dport}\r\n".encode()
    r = parse(data + rest)
    assert r.error is None
    assert (r.src_ip, r.dst_ip, r.src_port, r.dst_port) == (src.compressed, dst.compressed, sport, dport)
    assert r.header == data and r.rest == rest


@st.composite
def chunked(draw) -> list[bytes]:
    prefix = draw(st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY UNKNOWN", V2_SIGNATURE,
                                   V2_SIGNATURE + b"\x21\x11\x00\x0c", V2_SIGNATURE + b"\x20"]))
    data = prefix + draw(st.binary(max_size=160))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@settings(max_examples=300, deadline=None)
@given(chunked())
def test_fuzz(chunks):
    parser = ProxyHeaderParser()
    fed = b""
    first: ProxyHeaderResult | None = None
    for chunk in chunks:
        r = parser.feed(chunk)
        if first is not None:  # decided earlier: later bytes pass straight through
            assert r is not None and r.rest == chunk and r.error == first.error
            continue
        fed += chunk
        if r is None:
            continue
        first = r
        assert isinstance(r, ProxyHeaderResult)
        if r.error is None:
            assert r.version in (1, 2) and r.command in ("proxy", "local")
            if r.src_ip is not None:
                assert 0 <= r.src_port <= 65535 and 0 <= r.dst_port <= 65535
            assert fed == r.header + r.rest
        else:
            assert r.error.startswith("proxy_header.") and r.src_ip is None and r.detail
            assert r.rest == (fed if r.error == "proxy_header.missing" else b"")
    if first is None:  # still waiting: only on a possible header prefix, within bounds
        assert looks_like_proxy_header(fed[:12]) is not False
        assert len(fed) < V1_MAX or fed.startswith(V2_SIGNATURE)
