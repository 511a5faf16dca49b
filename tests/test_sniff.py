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


# -- SOCKS-only personas (protocols/dispatch.py) and the default port personas (config.py) --

from spampots.config import Config, HttpSection, default_listeners, validate  # noqa: E402
from spampots.events import ProtocolError, ProxyRequest  # noqa: E402
from spampots.protocols.base import Close, Context, Persona  # noqa: E402
from spampots.protocols.dispatch import listener_handler  # noqa: E402
from spampots.protocols.personas import PORT_PERSONAS  # noqa: E402

_SOCKS4 = b"\x04\x01\x00\x16\x7f\x00\x00\x01root\x00"


def _listener(style: str, kind: str = "socks"):
    return listener_handler(Context(persona=Persona(http_style=style)), kind=kind)


@pytest.mark.parametrize("first", [b"GET / HTTP/1.0\r\n\r\n", b"\r\r", b"\x16\x03\x01\x00", b"G"])
def test_dante_drops_other_first_bytes_without_a_word(first):
    out = _listener("dante").receive(first)
    assert not [a for a in out if isinstance(a, bytes)]  # as Dante: no reply at all
    assert isinstance(out[-1], Close) and any(isinstance(a, ProtocolError) for a in out)


@pytest.mark.parametrize("first", [b"\r\r", b"GET / HTTP/1.0\r\n\r\n", b"\x05\x01\x00"])
def test_mydoom_refuses_all_but_socks4_as_nmap_knows_it(first):
    out = _listener("mydoom").receive(first)
    assert out[0] == b"\x04\x5b" + bytes(6) and isinstance(out[-1], Close)


@pytest.mark.parametrize("style,first", [("dante", b"\x05\x01\x00"), ("dante", _SOCKS4), ("mydoom", _SOCKS4)])
def test_socks_only_personas_still_serve_their_socks(style, first):
    out = _listener(style).receive(first)
    assert out and not isinstance(out[-1], Close)
    assert first[0] == 5 or any(isinstance(a, ProxyRequest) and a.outcome == "granted" for a in out)


def test_other_personas_serve_any_protocol_on_any_port():
    for style in ("squid", "ccproxy", "wingate"):
        assert _listener(style, "http").receive(b"\x05\x01\x00") == [b"\x05\x00"]


def test_default_ports_carry_their_persona_and_http_persona_pins_them():
    assert {lst.port: lst.persona for lst in default_listeners()} == {**PORT_PERSONAS, 25: ""}
    cfg = Config(http=HttpSection(persona="squid"))
    validate(cfg)
    assert {lst.persona for lst in cfg.listeners if lst.kind != "smtp"} == {"squid"}
