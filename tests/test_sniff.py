"""First-bytes protocol sniffing: table, real clients' first bytes, properties."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from python_socks._protocols import socks4 as ps4
from python_socks._protocols import socks5 as ps5

from spampots.protocols.proxy_header import V2_SIGNATURE
from spampots.protocols.sniff import HTTP_METHODS, SMTP_VERBS, SNIFF_MAX, sniff

NAMES = {"socks4", "socks5", "http", "tls", "smtp", "proxy_header", "unknown"}


def client_hello() -> bytes:
    """The first flight of Python's own TLS client, made in memory."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mx.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(("first", "expected"), [
    (b"", None),
    # SOCKS
    (b"\x04", None), (b"\x04\x01", "socks4"), (b"\x04\x02\x00\x50", "socks4"), (b"\x04\x00", "unknown"),
    (b"\x04\x03", "unknown"),
    (b"\x05", None), (b"\x05\x01", "socks5"), (b"\x05\x01\x00", "socks5"), (b"\x05\x02\x00\x01", "socks5"),
    (b"\x05\xff" + bytes(range(255)), "socks5"), (b"\x05\x00", "unknown"),
    # HTTP
    (b"G", None), (b"GE", None), (b"GET", None), (b"GET ", "http"), (b"get http://x/ HTTP/1.0", "http"),
    (b"CONNECT mx.example.com:25 HTTP/1.1\r\n", "http"), (b"CONNEC", None), (b"OPTIONS * HTTP/1.1", "http"),
    (b"Get / HTTP/1.1", "unknown"), (b"GET\t/", "unknown"), (b"GETX", "unknown"),
    # TLS
    (b"\x16", None), (b"\x16\x03", None), (b"\x16\x03\x01\x02\x00", "tls"), (b"\x16\x03\x00", "tls"),
    (b"\x16\x03\x04", "tls"), (b"\x16\x03\x05", "unknown"), (b"\x16\x02", "unknown"),
    # SMTP
    (b"EHLO spam.example\r\n", "smtp"), (b"helo x\r\n", "smtp"), (b"QUIT\r\n", "smtp"), (b"quit\n", "smtp"),
    (b"MAIL FROM:<a@b>", "smtp"), (b"STARTTLS\r\n", "smtp"), (b"HELO", None), (b"HELOX", "unknown"),
    # PROXY protocol
    (b"PROXY", None), (b"PROXY TCP4 ", "proxy_header"), (V2_SIGNATURE[:5], None), (V2_SIGNATURE, "proxy_header"),
    (b"P", None), (b"PO", None), (b"POST /", "http"),
    # anything else
    (b"\x00", "unknown"), (b"SSH-2.0-OpenSSH_9.6\r\n", "unknown"), (b"\xff\xfb\x01", "unknown"),
])
def test_table(first, expected):
    assert sniff(first) == expected


def test_all_methods_both_cases():
    assert "CONNECT" in HTTP_METHODS and len(HTTP_METHODS) == 9
    for method in HTTP_METHODS:
        assert sniff(method.encode() + b" /") == "http"
        assert sniff(method.lower().encode() + b" /") == "http"
        assert sniff(method.encode()) is None


def test_all_smtp_verbs_any_case():
    for verb in SMTP_VERBS:
        for form in (verb, verb.lower(), verb.capitalize()):
            assert sniff(form.encode() + b"\r\n") == "smtp"


def test_real_client_first_bytes():
    assert sniff(client_hello()) == "tls"
    assert sniff(ps5.AuthMethodsRequest(username=None, password=None).dumps()) == "socks5"
    assert sniff(ps5.AuthMethodsRequest(username="u", password="p").dumps()) == "socks5"
    assert sniff(ps4.ConnectRequest(host="192.0.2.1", port=25, user_id=None).dumps()) == "socks4"
    assert sniff(ps4.ConnectRequest(host="mx.example.com", port=25, user_id="x").dumps()) == "socks4"
    # curl -p -x http://proxy:8080 smtp://mx.example.com
    assert sniff(b"CONNECT mx.example.com:25 HTTP/1.1\r\nHost: mx.example.com:25\r\n"
                 b"User-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n\r\n") == "http"


@pytest.mark.parametrize("stream", [
    b"CONNECT a:443 HTTP/1.1\r\n", b"\x05\x02\x00\x01", b"\x04\x01\x00\x19\x00\x00\x00\x01\x00",
    b"\x16\x03\x01\x00\xc8", b"EHLO x\r\n", V2_SIGNATURE + b"\x21", b"PROXY TCP4 1.2.3.4",
])
def test_growing_prefix_is_undecided_then_stays_decided(stream):
    answers = [sniff(stream[:n]) for n in range(1, len(stream) + 1)]
    decided = [a for a in answers if a is not None]
    assert answers[-1] is not None and set(decided) == {answers[-1]}
    assert answers.index(answers[-1]) + len(decided) == len(answers)  # once decided, never undecided again


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_bounded_and_monotonic(data):
    answer = sniff(data)
    assert answer is None or answer in NAMES
    if len(data) >= SNIFF_MAX:
        assert answer is not None
    if answer is not None:  # more bytes never change a decision
        for n in range(len(data), 41):
            assert sniff(data + b"\x00" * (n - len(data))) == answer


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"G", b"P", b"\x05", b"\x04", b"\x16\x03", b"PROXY", b"\r\n\r\n", b"HEL", b"C"]),
       st.binary(max_size=24))
def test_fuzz_near_prefixes(prefix, tail):
    data = prefix + tail
    answers = [sniff(data[:n]) for n in range(1, len(data) + 1)]
    for earlier, later in zip(answers, answers[1:]):
        assert earlier is None or earlier == later
    assert all(a is not None for a in answers[SNIFF_MAX - 1 :])
