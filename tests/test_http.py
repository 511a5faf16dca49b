"""HTTP proxy / origin / judge machine: raw request bytes in, actions out, fuzzing."""

from __future__ import annotations

import base64
import hashlib
import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spampots.events import Event, HttpRequest, LimitHit, ProtocolError, ProxyRequest, SmtpMessage
from spampots.protocols.base import Close, Context, Durable, Limits, Persona, StartTLS, Tunnel
from spampots.protocols.http import HttpServer, parse_authority, parse_proxy_auth
from spampots.protocols import personas
from spampots.protocols.http_persona import STYLES

ACTION_TYPES = (bytes, Event, Durable, Tunnel, StartTLS, Close)
NOW = "Tue, 09 Jan 2024 10:00:00 +0100"


def server(role: str = "proxy", *, style: str = "squid", judge: str = "azenv", **ctx) -> HttpServer:
    ctx.setdefault("local_ip", "192.0.2.1")
    ctx.setdefault("src_ip", "198.51.100.7")
    ctx.setdefault("listener_port", 3128)
    persona = Persona(http_style=style, judge_style=judge, hostname="proxy.example.net")
    return HttpServer(Context(persona=persona, **ctx), role=role)


def bytewise(handler, data: bytes) -> list:
    out = []
    for i in range(len(data)):
        out += handler.receive(data[i : i + 1])
    return out


def of(actions, cls) -> list:
    return [a for a in actions if isinstance(a, cls)]


def kinds(actions) -> list[str]:
    return [a.kind for a in of(actions, ProtocolError)]


def wire(actions) -> bytes:
    return b"".join(of(actions, bytes))


def responses(data: bytes, head: tuple[int, ...] = ()) -> list[tuple[int, dict[str, str], bytes]]:
    """Split concatenated responses; ``head``: indexes of responses to HEAD requests (no body)."""
    out = []
    while data:
        top, sep, data = data.partition(b"\r\n\r\n")
        assert sep, top
        lines = top.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3}) \S", lines[0])
        assert m, lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            headers[name.lower()] = value
        status = int(m.group(1))
        size = 0 if (len(out) in head or status in (100, 204)) else int(headers.get("content-length", "0"))
        out.append((status, headers, data[:size]))
        data = data[size:]
    return [r for r in out if r[0] != 100]


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    """Names are recorded, never resolved: any lookup fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("name resolution attempted")
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
        monkeypatch.setattr(socket, name, boom)


# -- CONNECT -------------------------------------------------------------------

def test_connect_grants_and_tunnels_with_leftover_bytes():
    req = b"CONNECT mx.example.com:25 HTTP/1.1\r\nHost: mx.example.com:25\r\nUser-Agent: x\r\n\r\nEHLO spam\r\n"
    for feed in (lambda h, d: h.receive(d), bytewise):
        h = server()
        out = feed(h, req)
        assert [type(a) for a in out] == [ProxyRequest, bytes, Tunnel]
        ev, reply, tunnel = out
        assert (ev.proxy, ev.command, ev.target_host, ev.target_port) == ("http", "connect", "mx.example.com", 25)
        assert (ev.outcome, ev.reply_code, ev.auth_method, ev.url) == ("granted", 200, "none", None)
        assert reply == b"HTTP/1.1 200 Connection established\r\n\r\n"  # squid sends no headers here
        assert tunnel == Tunnel("http", "mx.example.com", 25, rest=b"EHLO spam\r\n" if feed is not bytewise else b"")
        assert h.receive(b"more") == [] and h.eof() == []


def test_connect_bytewise_leftover_arrives_later_is_glue_business():
    h = server()
    out = h.receive(b"CONNECT a.example:443 HTTP/1.0\r\n\r\n\x16\x03\x01")
    assert of(out, Tunnel)[0].rest == b"\x16\x03\x01"


def test_connect_ipv6_and_persona_headers():
    h = server(style="tinyproxy")
    out = h.receive(b"CONNECT [2001:DB8::1]:25 HTTP/1.1\r\n\r\n")
    ev = of(out, ProxyRequest)[0]
    assert (ev.target_host, ev.target_port) == ("2001:db8::1", 25)
    assert wire(out) == b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n"  # as tinyproxy 1.11
    assert of(out, Tunnel)[0].host == "2001:db8::1"


def test_connect_proxy_authorization_basic():
    cred = base64.b64encode(b"bob:s3:cret").decode()
    out = server().receive(f"CONNECT h.example:80 HTTP/1.1\r\nProxy-Authorization: Basic {cred}\r\n\r\n".encode())
    ev = of(out, ProxyRequest)[0]
    assert (ev.auth_method, ev.username, ev.password) == ("basic", "bob", "s3:cret")
    assert kinds(out) == []


@pytest.mark.parametrize("value", ["Basic !!notbase64!!", "Basic " + base64.b64encode(b"nocolon").decode()])
def test_connect_malformed_proxy_authorization_is_kept(value):
    out = server().receive(f"CONNECT h.example:80 HTTP/1.1\r\nProxy-Authorization: {value}\r\n\r\n".encode())
    ev = of(out, ProxyRequest)[0]
    assert ev.username == value and ev.password is None and ev.outcome == "granted"
    assert kinds(out) == ["http.bad_proxy_auth"]
    assert of(out, Tunnel)


@pytest.mark.parametrize("authority", [b"mx.example.com", b"[::1", b"[::1]x:25", b"a:b:25", b"h:0", b"h:99999",
                                       b"h:2x", b"[zz::1]:25", b":25", b"h\\x:25"])
def test_connect_bad_authority(authority):
    out = server().receive(b"CONNECT " + authority + b" HTTP/1.1\r\n\r\n")
    assert kinds(out) == ["http.bad_authority"]
    assert wire(out).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert isinstance(out[-1], Close) and not of(out, Tunnel) and not of(out, ProxyRequest)


def test_parse_helpers():
    assert parse_authority("example.com:8080") == ("example.com", 8080)
    assert parse_authority("example.com") == ("example.com", None)
    assert parse_authority("[::ffff:1.2.3.4]:1") == ("::ffff:102:304", 1)
    assert parse_authority("a b") is None
    assert parse_proxy_auth("Digest username=\"al\", realm=\"x\"") == ("digest", "al", None, True)
    assert parse_proxy_auth("NTLM TlRMTVNTUAAB") == ("ntlm", "TlRMTVNTUAAB", None, True)


# -- absolute-form requests through us ------------------------------------------

def test_absolute_get_keep_alive_two_pipelined_requests():
    reqs = (b"GET http://www.example.com/a?x=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\n"
            b"Proxy-Connection: Keep-Alive\r\n\r\n"
            b"GET http://other.example:8081/b HTTP/1.1\r\nHost: other.example:8081\r\n\r\n")
    for feed in (lambda h, d: h.receive(d), bytewise):
        h = server(now=NOW)
        out = feed(h, reqs)
        assert not of(out, Close)
        p1, p2 = of(out, ProxyRequest)
        assert (p1.command, p1.target_host, p1.target_port, p1.url) == ("get", "www.example.com", 80,
                                                                        "http://www.example.com/a?x=1")
        assert (p2.target_host, p2.target_port, p2.reply_code) == ("other.example", 8081, 200)
        h1, h2 = of(out, HttpRequest)
        assert h1.role == "proxy" and h1.user_agent == "curl/8.5.0" and h1.version == "HTTP/1.1"
        assert ["User-Agent", "curl/8.5.0"] in h1.headers and h1.body_sha256 is None
        r1, r2 = responses(wire(out))
        assert r1[0] == 200 and b"Example Domain" in r1[2]
        assert r1[1]["date"] == "Tue, 09 Jan 2024 09:00:00 GMT"
        assert r1[1]["via"] == "1.1 proxy.example.net (squid/5.7)"
        assert r1[1]["x-cache"] == "MISS from proxy.example.net"
        assert r1[1]["connection"] == "keep-alive"
        assert r2[0] == 200 and b"other.example" in r2[2]


def test_http10_closes_unless_keep_alive():
    out = server().receive(b"GET http://a.example/ HTTP/1.0\r\n\r\n")
    assert isinstance(out[-1], Close) and responses(wire(out))[0][1]["connection"] == "close"
    out = server().receive(b"GET http://a.example/ HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n")
    assert not of(out, Close)
    out = server().receive(b"GET http://a.example/ HTTP/1.1\r\nConnection: close\r\n\r\nGET http://b/ HTTP/1.1\r\n\r\n")
    assert len(of(out, HttpRequest)) == 1 and isinstance(out[-1], Close)


def test_head_has_no_body():
    h = server()
    out = h.receive(b"HEAD http://www.example.com/ HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
                    b"GET http://www.example.com/ HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
    (s1, hd1, b1), (s2, hd2, b2) = responses(wire(out), head=(0,))
    assert s1 == s2 == 200 and b1 == b"" and hd1["content-length"] == hd2["content-length"] == str(len(b2))
    assert of(out, ProxyRequest)[0].command == "head"


def test_chunked_post_body_hashed_not_kept():
    body_chunks = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n"
    req = (b"POST http://forms.example/submit HTTP/1.1\r\nHost: forms.example\r\nTransfer-Encoding: chunked\r\n\r\n"
           + body_chunks)
    for feed in (lambda h, d: h.receive(d), bytewise):
        out = feed(server(), req)
        ev = of(out, HttpRequest)[0]
        assert ev.body_size == 9 and ev.body_sha256 == hashlib.sha256(b"Wikipedia").hexdigest()
        assert of(out, ProxyRequest)[0].command == "post"
        assert responses(wire(out))[0][0] == 200 and not of(out, Close)


def test_content_length_post_and_expect_continue():
    out = server().receive(b"POST http://x.example/ HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
    data = wire(out)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    ev = of(out, HttpRequest)[0]
    assert ev.body_size == 5 and ev.body_sha256 == hashlib.sha256(b"hello").hexdigest()


def test_post_to_port_25_carries_smtp():
    dialogue = (b"HELO spammer\r\nXYZZY\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<v@victim.example>\r\nDATA\r\n"
                b"Subject: via http post\r\n\r\nbuy now\r\n.\r\nQUIT\r\n")
    req = (b"POST http://mx.victim.example:25/ HTTP/1.0\r\nHost: mx.victim.example:25\r\n"
           b"Content-Length: %d\r\n\r\n" % len(dialogue)) + dialogue
    for feed in (lambda h, d: h.receive(d), bytewise):
        out = feed(server(), req)
        durable = of(out, Durable)
        assert len(durable) == 1
        msg = durable[0].event
        assert isinstance(msg, SmtpMessage) and msg.subject == "via http post"
        assert msg.target_host == "mx.victim.example" and msg.target_port == 25
        assert msg.via == ["http:mx.victim.example:25"] and msg.depth == 1
        assert msg.sha256 == hashlib.sha256(durable[0].body).hexdigest() and b"buy now" in durable[0].body
        ev = of(out, ProxyRequest)[0]
        assert (ev.command, ev.target_port, ev.reply_code) == ("post", 25, 200)
        # the reply follows the durable message, so the glue sends it only once stored
        assert out.index(durable[0]) < out.index(of(out, bytes)[-1])
        status, headers, body = responses(wire(out))[0]
        assert status == 200 and b"354 " in body and b"250 " in body and b"221 " in body
        smtp_errors = [e for e in of(out, ProtocolError) if e.kind.startswith("smtp.")]
        assert smtp_errors and all(e.depth == 1 for e in smtp_errors)  # the unknown XYZZY command
        assert isinstance(out[-1], Close)


def test_post_to_port_25_chunked_and_truncated():
    h = server()
    out = h.receive(b"POST http://mx.example:25/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"19\r\nMAIL FROM:<a@b.example>\r\n\r\n")
    assert not of(out, Durable)
    out = h.eof()
    assert "http.truncated" in kinds(out)


def test_post_to_port_25_with_limit_hit_forwards_nothing_durable():
    h = server(limits=Limits(message_size=10))
    out = h.receive(b"POST http://mx.example:25/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"8\r\nHELO x\r\n\r\n20\r\n")
    assert of(out, LimitHit)[0].limit == "message_size"
    assert responses(wire(out))[-1][0] == 413 and isinstance(out[-1], Close)
    assert of(out, ProxyRequest)[0].outcome == "rejected"


def test_other_methods():
    out = server().receive(b"OPTIONS http://x.example/ HTTP/1.1\r\n\r\nDELETE http://x.example/a HTTP/1.1\r\n\r\n")
    (s1, h1, _), (s2, h2, _) = responses(wire(out))
    assert (s1, s2) == (200, 405) and "GET" in h1["allow"]
    assert [e.command for e in of(out, ProxyRequest)] == ["options", "delete"]


# -- what checkers look for --------------------------------------------------------

NMAP_SITES = [("www.google.com", r"^server: gws"), ("www.wikipedia.org", "wikimedia"),
              ("www.computerhistory.org", "museum")]


def nmap_says_open(data: bytes, pattern: str) -> bool:
    """nselib/proxy.lua check(): status 200/301/302, then the pattern on some line (lower case)."""
    text = data.decode("latin-1")
    if not re.match(r"^http/\d\.\d\s*(200|30[12])", text.lower()):
        return False
    return any(re.search(pattern, line.lower()) for line in text.split("\n"))


@pytest.mark.parametrize("host,pattern", NMAP_SITES)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_nmap_http_open_proxy_checks_pass(host, pattern, method):
    # proxy.test_get / test_head: no path, HTTP/1.0, one receive() of the answer
    out = server(style="ccproxy").receive(f"{method} http://{host} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    assert len(of(out, bytes)) == 1 and isinstance(out[-1], Close)
    if method == "GET" or pattern.startswith("^server"):
        assert nmap_says_open(wire(out), pattern)
    assert of(out, ProxyRequest)[0].target_host == host


def test_nmap_connect_check_passes():
    out = server().receive(b"CONNECT www.google.com:80 HTTP/1.0\r\n\r\n")
    assert nmap_says_open(wire(out), r".")


@pytest.mark.parametrize("host,pattern", NMAP_SITES)
def test_nmap_socks_open_proxy_checks_pass_in_origin_role(host, pattern):
    # socks-open-proxy resolves the name itself: the tunnel goes to an address, Host names the site
    h = server("origin", depth=1, target_host="142.250.0.1", target_port=80)
    out = h.receive(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    assert nmap_says_open(wire(out), pattern)
    ev = of(out, HttpRequest)[0]
    assert (ev.role, ev.host, ev.port) == ("origin", host, 80)
    assert not of(out, ProxyRequest) and "via" not in responses(wire(out))[0][1]


def test_ip_echo_services_show_the_proxy_address():
    out = server().receive(b"GET http://api.ipify.org/ HTTP/1.1\r\nHost: api.ipify.org\r\n\r\n"
                           b"GET http://httpbin.org/ip HTTP/1.1\r\nHost: httpbin.org\r\n\r\n"
                           b"GET http://connectivitycheck.gstatic.com/generate_204 HTTP/1.1\r\n\r\n")
    (s1, _, b1), (s2, _, b2), (s3, _, b3) = responses(wire(out))
    assert (s1, b1) == (200, b"192.0.2.1")
    assert s2 == 200 and b'"origin": "192.0.2.1"' in b2
    assert (s3, b3) == (204, b"")


def test_httpbin_echo_endpoints_answer_as_httpbin_does():
    """Proxy checkers judge a proxy by httpbin's JSON echo: origin = the proxy, headers as
    forwarded (Proxy-* dropped, names canonical), args from the query string."""
    import json
    req = (b"GET http://httpbin.org/get?a=1&b=2&b=3&empty= HTTP/1.1\r\nHost: httpbin.org\r\n"
           b"user-agent: checker/2\r\nAccept: */*\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
           b"GET http://httpbin.org/headers HTTP/1.1\r\nHost: httpbin.org\r\nX-Test: a\r\nX-Test: b\r\n\r\n"
           b"POST http://httpbin.org/anything/x HTTP/1.1\r\nHost: httpbin.org\r\nContent-Length: 3\r\n\r\nabc"
           b"POST http://httpbin.org/get HTTP/1.1\r\nHost: httpbin.org\r\nContent-Length: 0\r\n\r\n"
           b"GET http://httpbin.org/ip HTTP/1.1\r\nHost: httpbin.org\r\n\r\n")
    (s1, h1, b1), (s2, _, b2), (s3, _, b3), (s4, _, _), (s5, _, b5) = responses(wire(server().receive(req)))
    assert (s1, s2, s3, s4, s5) == (200, 200, 200, 405, 200)
    assert h1["content-type"] == "application/json" and h1["server"] == "gunicorn/19.9.0"
    got = json.loads(b1)
    assert got["args"] == {"a": "1", "b": ["2", "3"], "empty": ""}
    assert got["origin"] == "192.0.2.1" and got["url"] == "http://httpbin.org/get?a=1&b=2&b=3&empty="
    assert {k: v for k, v in got["headers"].items() if k != "X-Amzn-Trace-Id"} == {
        "Host": "httpbin.org", "User-Agent": "checker/2", "Accept": "*/*"}
    assert got["headers"]["X-Amzn-Trace-Id"].startswith("Root=1-")
    assert b1.startswith(b'{\n  "args": {\n')  # httpbin's own layout
    assert json.loads(b2)["headers"]["X-Test"] == "a,b"
    third = json.loads(b3)
    assert third["method"] == "POST" and third["url"] == "http://httpbin.org/anything/x"
    assert json.loads(b5) == {"origin": "192.0.2.1"}


@pytest.mark.parametrize("judge", ["azenv", "plain", "table"])
def test_judge_page_echoes_headers_and_proxy_address(judge):
    req = (b"GET http://judge.example.net/azenv.php HTTP/1.1\r\nHost: judge.example.net\r\n"
           b"User-Agent: ProxyChecker/1.0\r\nX-Check: abc123\r\nAccept: */*\r\n"
           b"Proxy-Authorization: Basic dTpw\r\nProxy-Connection: keep-alive\r\n\r\n")
    out = server(judge=judge).receive(req)
    status, headers, body = responses(wire(out))[0]
    text = body.decode()
    assert status == 200
    for name, value in [("HTTP_HOST", "judge.example.net"), ("HTTP_USER_AGENT", "ProxyChecker/1.0"),
                        ("HTTP_X_CHECK", "abc123"), ("REMOTE_ADDR", "192.0.2.1"), ("REQUEST_METHOD", "GET"),
                        ("REQUEST_URI", "/azenv.php"), ("HTTP_ACCEPT", "*/*")]:
        assert re.search(rf"{name}(?:\W|</?td>)+{re.escape(value)}", text), (name, text)
    # an elite proxy: neither the client's address nor the proxy hop headers reach the judge
    assert "198.51.100.7" not in text and "PROXY" not in text and "FORWARDED" not in text
    ev = of(out, HttpRequest)[0]
    assert ev.role == "judge" and ev.status == 200
    assert of(out, ProxyRequest)[0].username == "u"


def test_judge_azenv_layout_and_escaping():
    out = server(now=NOW).receive(b"GET http://x.example/prxjdg.cgi HTTP/1.0\r\nUser-Agent: <b>&\r\n\r\n")
    body = responses(wire(out))[0][2].decode()
    assert body.startswith("<html>\n<head>\n<title>AZ Environment variables 1.04</title>")
    assert "HTTP_USER_AGENT = &lt;b&gt;&amp;\n" in body and "HTTP_HOST = x.example\n" in body
    assert "REQUEST_TIME = 1704790800\n" in body


def test_judge_through_a_tunnel_in_origin_role():
    h = server("origin", depth=1, target_host="judge.example.org", target_port=80)
    out = h.receive(b"GET /proxyjudge/env.php HTTP/1.1\r\nHost: judge.example.org\r\nX-Probe: 1\r\n\r\n")
    body = responses(wire(out))[0][2].decode()
    assert "HTTP_X_PROBE = 1" in body and "REMOTE_ADDR = 192.0.2.1" in body
    assert of(out, HttpRequest)[0].role == "judge"


# -- origin role and the proxy's own page -----------------------------------------

def test_origin_role_answers_as_the_site():
    h = server("origin", depth=1, target_host="192.0.2.10", target_port=8080)
    out = h.receive(b"GET /index.html HTTP/1.1\r\nHost: shop.example\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    e1, e2 = of(out, HttpRequest)
    assert (e1.role, e1.host, e1.port, e1.target) == ("origin", "shop.example", 8080, "/index.html")
    assert (e2.host, e2.port) == ("192.0.2.10", 8080)
    r1, r2 = responses(wire(out))
    assert r1[0] == 200 and "x-cache" not in r1[1]


def test_origin_role_errors_come_from_the_site_not_the_proxy():
    h = server("origin", depth=1, target_host="www.google.com", target_port=80)
    out = h.receive(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    status, headers, body = responses(wire(out))[0]
    assert status == 400 and headers["server"] == "gws" and b"squid" not in body
    assert kinds(out) == ["http.malformed"] and isinstance(out[-1], Close)


def shown_server(style: str) -> str:
    """The Server header a persona with variant 0 shows."""
    return STYLES[style].server.replace("{version}", personas.version(style, 0))


@pytest.mark.parametrize("style,status", [("squid", 400), ("apache", 200), ("tinyproxy", 400), ("ccproxy", 401),
                                          ("proxyplus", 407)])
def test_origin_form_to_the_proxy_itself(style, status):
    out = server(style=style).receive(b"GET / HTTP/1.1\r\nHost: 192.0.2.1:3128\r\n\r\n")
    top = wire(out).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    assert re.match(rf"HTTP/1\.[01] {status} ", top[0]), top
    if style != "proxyplus":  # Proxy+ names itself only in its realm
        assert f"Server: {shown_server(style)}" in top, top
    ev = of(out, HttpRequest)[0]
    assert ev.role == "origin" and ev.port == 3128 and not of(out, ProxyRequest)
    if status >= 400:  # the proxy refuses and closes, as the real ones do
        assert isinstance(out[-1], Close)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_renders(style):
    out = server(style=style).receive(b"GET http://a.example/ HTTP/1.1\r\n\r\n")
    assert responses(wire(out))[0][0] == 200
    out = server(style=style).receive(b"BROKEN\r\n\r\n")
    raw = wire(out)
    assert isinstance(out[-1], Close) and raw
    if style != "analogx":  # AnalogX answers with a bare page, no status line
        assert re.match(rb"HTTP/1\.[01] 400 ", raw), raw[:80]
        assert f"Server: {shown_server(style)}".encode() in raw
    assert not re.search(rb"\{(host|port|code|reason|ip|version|server|error|detail|url|date)\}", raw)


def test_squid_error_head_is_in_squids_order():
    out = server(style="squid", now="Sun, 06 Dec 2026 04:06:13 +0000").receive(b"GET / HTTP/1.0\r\n\r\n")
    top, _, body = wire(out).partition(b"\r\n\r\n")
    names = [line.split(b":", 1)[0] for line in top.split(b"\r\n")[1:]]
    assert names == [b"Server", b"Mime-Version", b"Date", b"Content-Type", b"Content-Length", b"X-Squid-Error",
                     b"Vary", b"Content-Language", b"X-Cache", b"X-Cache-Lookup", b"Via", b"Connection"]
    assert b"X-Squid-Error: ERR_INVALID_URL 0" in top and b"<body id=ERR_INVALID_URL>" in body
    assert b"Generated Sun, 06 Dec 2026 04:06:13 GMT by proxy.example.net (squid/5.7)" in body


# -- limits and malformed input ------------------------------------------------------

def test_request_line_too_long_414():
    h = server(limits=Limits(line_length=64))
    out = h.receive(b"GET http://x.example/" + b"a" * 100)
    assert of(out, LimitHit)[0].limit == "line_length" and of(out, LimitHit)[0].value == 64
    assert wire(out).startswith(b"HTTP/1.1 414 ") and isinstance(out[-1], Close)
    assert h.receive(b"\r\n\r\n") == []


def test_header_line_too_long_431():
    out = server(limits=Limits(line_length=64)).receive(b"GET http://x.example/ HTTP/1.1\r\nX: " + b"b" * 80 + b"\r\n")
    assert of(out, LimitHit)[0].limit == "line_length"
    assert wire(out).startswith(b"HTTP/1.1 431 ") and isinstance(out[-1], Close)


def test_header_bytes_431():
    pad = b"X-Pad: " + b"p" * 50 + b"\r\n"  # each line within line_length, together over header_bytes
    out = server(limits=Limits(line_length=100, header_bytes=200)).receive(
        b"GET http://x.example/ HTTP/1.1\r\n" + pad * 5)
    hit = of(out, LimitHit)[0]
    assert hit.limit == "header_bytes" and hit.observed > 200
    assert wire(out).startswith(b"HTTP/1.1 431 ")


def test_body_over_message_size_413():
    out = server(limits=Limits(message_size=100)).receive(
        b"POST http://x.example/ HTTP/1.1\r\nContent-Length: 101\r\n\r\n")
    hit = of(out, LimitHit)[0]
    assert (hit.limit, hit.value, hit.observed) == ("message_size", 100, 101)
    assert wire(out).startswith(b"HTTP/1.1 413 ") and isinstance(out[-1], Close)
    assert of(out, ProxyRequest)[0].reply_code == 413


def test_chunked_over_message_size_413():
    h = server(limits=Limits(message_size=10))
    out = h.receive(b"POST http://x.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n")
    assert of(out, LimitHit)[0].observed == 16 and wire(out).startswith(b"HTTP/1.1 413 ")


def test_request_cap_per_connection():
    out = server(limits=Limits(messages_per_session=2)).receive(b"GET http://a/ HTTP/1.1\r\n\r\n" * 3)
    assert len(of(out, HttpRequest)) == 2 and of(out, LimitHit)[0].limit == "messages_per_session"
    assert out[-1] == Close("limit")


@pytest.mark.parametrize("data,kind,status", [
    (b"\x00\xff garbage \x13\x37\r\n", "http.malformed", 400),
    (b"GET /\r\n", "http.malformed", 400),
    (b"GET / HTTP/1.1 extra\r\n\r\n", "http.malformed", 400),
    (b"G@T / HTTP/1.1\r\n\r\n", "http.malformed", 400),
    (b"GET / HTTP/2.0\r\n\r\n", "http.bad_version", 505),
    (b"GET http://x/ HTTP/1.1\r\nNo colon here\r\n\r\n", "http.malformed", 400),
    (b"GET http://x/ HTTP/1.1\r\nBad Name: v\r\n\r\n", "http.malformed", 400),
    (b"GET http://x/ HTTP/1.1\r\n folded-first\r\n\r\n", "http.malformed", 400),
    (b"GET www.x.example:80 HTTP/1.1\r\n\r\n", "http.bad_target", 400),
    (b"GET http://[::1/ HTTP/1.1\r\n\r\n", "http.bad_target", 400),
    (b"POST http://x/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "http.bad_length", 400),
    (b"POST http://x/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "http.bad_length", 400),
    (b"POST http://x/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "http.bad_transfer_encoding", 400),
    (b"POST http://x/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "http.bad_chunk", 400),
    (b"POST http://x/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "http.bad_chunk", 400),
])
def test_malformed_input(data, kind, status):
    h = server()
    out = h.receive(data)
    assert kind in kinds(out)
    assert responses(wire(out))[-1][0] == status
    assert isinstance(out[-1], Close) and h.receive(b"GET http://x/ HTTP/1.1\r\n\r\n") == []


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x00\xff garbage", b"\r\nGE\x00"])
def test_hopeless_bytes_are_refused_without_waiting_for_a_line(data):
    out = server().receive(data)
    assert kinds(out) == ["http.malformed"] and wire(out).startswith(b"HTTP/1.1 400 ")
    assert isinstance(out[-1], Close)


def test_partial_request_line_waits():
    h = server()
    assert h.receive(b"GE") == [] and h.receive(b"T http://a.example/") == []
    assert of(h.receive(b" HTTP/1.1\r\n\r\n"), HttpRequest)


def test_obs_fold_is_unfolded_and_te_with_cl_closes():
    out = server().receive(b"POST http://x/ HTTP/1.1\r\nX-Long: a\r\n  b\r\nContent-Length: 3\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n")
    ev = of(out, HttpRequest)[0]
    assert ["X-Long", "a b"] in ev.headers and ev.body_size == 1
    assert "http.te_and_cl" in kinds(out) and isinstance(out[-1], Close)


def test_eof_mid_request_is_recorded():
    h = server()
    assert h.receive(b"GET http://x.example/ HTTP/1.1\r\nHost: x") == []
    out = h.eof()
    assert kinds(out) == ["http.truncated"] and h.eof() == []
    assert server().eof() == []


def test_blank_lines_between_requests_are_ignored():
    out = server().receive(b"\r\n\r\nGET http://a/ HTTP/1.1\r\n\r\n\r\nGET http://b/ HTTP/1.1\r\n\r\n")
    assert len(of(out, HttpRequest)) == 2 and not kinds(out)


# -- fuzzing ---------------------------------------------------------------------------

TOKENS = [
    b"GET ", b"POST ", b"HEAD ", b"CONNECT ", b"OPTIONS ", b"get ", b"http://", b"www.google.com", b"[::1]",
    b":25", b":80", b"/azenv.php", b"/", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b" HTTP/2.0\r\n", b"\r\n", b"\n",
    b"Host: x\r\n", b"Content-Length: 5\r\n", b"Content-Length: 99999999\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n", b"Proxy-Authorization: Basic Ym9iOnB3\r\n", b"Proxy-Authorization: Basic ***\r\n",
    b"Expect: 100-continue\r\n", b" fold\r\n", b"5\r\nhello\r\n", b"0\r\n\r\n", b"ffffffffffffffff\r\n",
    b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n", b"\x00\xff", b"a" * 70, b":",
]

contexts = st.builds(
    Context,
    persona=st.builds(Persona, http_style=st.sampled_from([*STYLES, "bogus"]),
                      judge_style=st.sampled_from(["azenv", "plain", "table", "bogus"])),
    limits=st.builds(Limits, line_length=st.integers(8, 200), header_bytes=st.integers(16, 600),
                     message_size=st.integers(0, 300), messages_per_session=st.integers(1, 5)),
    depth=st.integers(0, 2),
    target_host=st.one_of(st.none(), st.just("t.example")),
    target_port=st.one_of(st.none(), st.sampled_from([25, 80, 443])),
    now=st.sampled_from(["", NOW, "garbage"]),
)


@settings(max_examples=300, deadline=None)
@given(ctx=contexts, role=st.sampled_from(["proxy", "origin"]),
       chunks=st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(TOKENS)), max_size=30),
       split=st.integers(1, 7))
def test_fuzz_never_raises_and_emits_valid_actions(ctx, role, chunks, split):
    h = HttpServer(ctx, role=role)
    data = b"".join(chunks)
    out = []
    ended = False
    for i in range(0, len(data), split):
        got = h.receive(data[i : i + split])
        if ended:
            assert got == []
        out += got
        ended = ended or any(isinstance(a, (Close, Tunnel)) for a in got)
    out += h.eof()
    assert all(isinstance(a, ACTION_TYPES) for a in out)
    ends = [i for i, a in enumerate(out) if isinstance(a, (Close, Tunnel))]
    assert ends in ([], [len(out) - 1])  # nothing follows a Close or a Tunnel
    for ev in of(out, Event):
        assert ev.ts == "" and ev.session == "" and ev.src_ip == ""  # the glue stamps those
    for d in of(out, Durable):
        assert d.event.sha256 == hashlib.sha256(d.body).hexdigest()
    data_out = wire(out)
    if data_out and ctx.persona.http_style != "analogx":  # AnalogX's errors are a bare page
        assert data_out.startswith((b"HTTP/1.1 ", b"HTTP/1.0 "))
