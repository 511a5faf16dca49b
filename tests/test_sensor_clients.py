"""The sensor against real clients: curl, python-socks + smtplib, raw sockets."""

from __future__ import annotations

import hashlib
import os
import smtplib
import socket
import ssl
import subprocess
import sys

import pytest

from clients import ProxySMTP, curl, make_message, send_messages
from spampots.events import name_of


def _proxy_requests(sensor, **match):
    out = []
    for e in sensor.events("spampots.proxy.request"):
        if all(getattr(e, k) == v for k, v in match.items()):
            out.append(e)
    return out


def _messages(sensor, **match):
    return [e for e in sensor.events("spampots.smtp.message")
            if all(getattr(e, k) == v for k, v in match.items())]


def _wait(sensor, name, pred, timeout=5.0):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = [e for e in sensor.events(name) if pred(e)]
        if hits:
            return hits
        time.sleep(0.1)
    raise AssertionError(f"no {name} matching the test's condition")


# -- curl ---------------------------------------------------------------------
@pytest.mark.parametrize("flag,target,host", [
    ("--socks4", "http://192.0.2.10/", "192.0.2.10"),
    ("--socks4a", "http://socks4a.example.com/", "socks4a.example.com"),
    ("--socks5", "http://192.0.2.11/", "192.0.2.11"),
    ("--socks5-hostname", "http://socks5h.example.com/", "socks5h.example.com"),
])
def test_curl_socks(sensor, flag, target, host):
    # SOCKS on an HTTP port is served as SOCKS too; 3127 (MyDoom's proxy) speaks SOCKS4 only
    for talk_port in (1080, 3127, 8080) if flag.startswith("--socks4") else (1080, 3382, 8080):
        r = curl(flag, f"127.0.0.1:{sensor.port(talk_port)}", "-D", "-", target)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"HTTP/1.1 200"), r.stdout[:200]
        hits = _wait(sensor, "spampots.proxy.request",
                     lambda e: e.target_host == host and e.listener_port == sensor.port(talk_port))
        assert hits[0].command == "connect" and hits[0].target_port == 80
        assert hits[0].proxy == flag.lstrip("-").replace("-hostname", "")
        origin = _wait(sensor, "spampots.http.request",
                       lambda e: e.host.startswith(host) and e.listener_port == sensor.port(talk_port))
        assert origin[0].depth == 1


def test_curl_http_proxy_absolute_get(sensor):
    for talk_port in (8080, 80, 3128, 8000, 6588, 4480, 3382, 81):
        url = f"http://www.example.com/p{talk_port}"
        r = curl("--proxy", f"http://127.0.0.1:{sensor.port(talk_port)}", "-D", "-", url)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"HTTP/1.1 200"), r.stdout[:200]
        hits = _wait(sensor, "spampots.proxy.request", lambda e: e.url == url)
        assert hits[0].proxy == "http" and hits[0].command == "get"


@pytest.mark.parametrize("via", ["--proxy", "--socks5-hostname"])
def test_curl_httpbin_judge_sees_the_proxy_as_origin(sensor, via):
    """A proxy checker's httpbin judge through each proxy kind: the JSON names the proxy as the
    origin and shows no client address or proxy header, as an elite proxy would."""
    import json
    proxy = f"http://127.0.0.1:{sensor.port(8080)}" if via == "--proxy" else f"127.0.0.1:{sensor.port(1080)}"
    r = curl(via, proxy, "-H", "X-Check: 42", "http://httpbin.org/get?check=1")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["origin"] == "127.0.0.1" and got["args"] == {"check": "1"}
    assert got["headers"]["X-Check"] == "42" and got["headers"]["Host"] == "httpbin.org"
    assert not [k for k in got["headers"] if k.lower().startswith(("proxy-", "x-forwarded", "via"))]


def test_curl_http_proxytunnel_and_auth(sensor):
    r = curl("-p", "--proxy", f"http://127.0.0.1:{sensor.port(3128)}", "--proxy-user", "bob:s3cret",
             "-D", "-", "http://tunnel.example.com/index.html")
    assert r.returncode == 0, r.stderr
    assert b"200" in r.stdout.split(b"\r\n")[0]
    hits = _wait(sensor, "spampots.proxy.request",
                 lambda e: e.target_host == "tunnel.example.com" and e.command == "connect")
    assert hits[0].username == "bob" and hits[0].password == "s3cret"


def test_judge_page_echoes_headers(sensor):
    r = curl("--proxy", f"http://127.0.0.1:{sensor.port(8080)}", "-A", "ProxyChecker/1.0",
             "-H", "X-Check: abc123", "http://judge.example.net/azenv.php")
    assert r.returncode == 0
    body = r.stdout.decode("latin-1")
    assert "REMOTE_ADDR" in body and "ProxyChecker/1.0" in body and "abc123" in body


# -- smtplib through every tunnel kind -------------------------------------------
@pytest.mark.parametrize("scheme,talk_port,rdns", [
    ("socks4", 1080, False), ("socks4", 3127, True), ("socks5", 1080, True),
    ("socks5", 3382, False), ("http", 8080, None), ("http", 3128, None),
])
def test_smtplib_through_tunnels(sensor, scheme, talk_port, rdns):
    target = "mx.victim-%s-%d.example" % (scheme, talk_port)
    dest = target if rdns is not False else "198.51.100.25"
    url = f"{scheme}://user{talk_port}:pw@127.0.0.1:{sensor.port(talk_port)}"
    if scheme == "socks4":
        url = f"socks4://127.0.0.1:{sensor.port(talk_port)}"
    msgs = [make_message(i, subject=f"{scheme}-{talk_port}-{i}") for i in range(3)]
    with ProxySMTP(url, dest, 25, rdns=rdns, timeout=10) as s:
        banner = s.ehlo_resp or b""
        code, _ = s.ehlo("spammer.example")
        assert code == 250
        send_messages(s, msgs, [f"rcpt{j}@victim.example" for j in range(4)])
    got = _wait(sensor, "spampots.smtp.message",
                lambda e: (e.subject or "").startswith(f"{scheme}-{talk_port}-"))
    got = [e for e in sensor.events("spampots.smtp.message")
           if (e.subject or "").startswith(f"{scheme}-{talk_port}-")]
    assert len(got) == 3
    for e, raw in zip(sorted(got, key=lambda e: e.index), msgs):
        assert e.sha256 == hashlib.sha256(raw).hexdigest()
        assert e.target_host == dest and e.target_port == 25 and e.depth == 1
        assert len(e.rcpts) == 4 and e.listener_port == sensor.port(talk_port)
        assert e.via and e.via[0].startswith(scheme)
        out = subprocess.run([sys.executable, "-m", "spampots.cli", "show", e.sha256,
                              "--data-dir", str(sensor.data_dir)], capture_output=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout == raw  # byte for byte


def test_far_end_banner_names_requested_host(sensor):
    from python_socks.sync import Proxy
    sock = Proxy.from_url(f"socks5://127.0.0.1:{sensor.port(1080)}", rdns=True).connect(
        dest_host="mx.named-host.example", dest_port=25, timeout=5)
    f = sock.makefile("rb")
    banner = f.readline()
    sock.close()
    assert banner.startswith(b"220 ") and b"mx.named-host.example" in banner


def test_direct_smtp_many_messages_starttls_auth(sensor):
    msgs = [make_message(100 + i, subject=f"direct-{i}") for i in range(5)]
    with smtplib.SMTP("127.0.0.1", sensor.port(25), timeout=10) as s:
        s.ehlo("bot.example")
        assert s.has_extn("starttls") and s.has_extn("pipelining") and s.has_extn("size")
        s.starttls(context=ssl._create_unverified_context())
        s.ehlo("bot.example")
        assert not s.has_extn("starttls")
        s.login("victim@isp.example", "hunter2")
        send_messages(s, msgs, ["a@one.example", "b@two.example"])
    got = sorted(_wait(sensor, "spampots.smtp.message",
                       lambda e: (e.subject or "").startswith("direct-")), key=lambda e: e.index)
    got = sorted([e for e in sensor.events("spampots.smtp.message")
                  if (e.subject or "").startswith("direct-")], key=lambda e: e.index)
    assert [e.sha256 for e in got] == [hashlib.sha256(m).hexdigest() for m in msgs]
    assert all(e.tls and e.auth_user == "victim@isp.example" and e.depth == 0 for e in got)
    assert got[0].target_host is None and got[0].helo == "bot.example"
    auths = _wait(sensor, "spampots.smtp.auth", lambda e: e.username == "victim@isp.example")
    assert auths[0].password == "hunter2"


def test_smtp_limits_recorded(sensor):
    with smtplib.SMTP("127.0.0.1", sensor.port(25), timeout=10) as s:
        s.ehlo("limits.example")
        s.mail("x@spam.example")
        codes = [s.rcpt(f"r{i}@victim.example")[0] for i in range(101)]
        assert codes[:100] == [250] * 100 and codes[100] == 452
    hits = _wait(sensor, "spampots.limit.hit", lambda e: e.limit == "recipients")
    assert hits[0].value == 100


def test_garbage_on_every_port_is_recorded_and_sensor_survives(sensor):
    from conftest import ALL_PORTS
    for talk_port in ALL_PORTS:
        with socket.create_connection(("127.0.0.1", sensor.port(talk_port)), timeout=5) as c:
            c.sendall(b"\x00\xff garbage \x13\x37" * 8 + b"\r\n")
            c.settimeout(3)
            try:
                while c.recv(4096):
                    pass
            except (socket.timeout, ConnectionResetError):
                pass
    errors = sensor.events("spampots.protocol.error")
    assert {e.listener_port for e in errors} >= {sensor.port(p) for p in ALL_PORTS if p != 25}
    # still serving
    r = curl("--socks5-hostname", f"127.0.0.1:{sensor.port(1080)}", "http://alive.example/")
    assert r.returncode == 0


def test_tls_client_hello_in_tunnel_keeps_sni(sensor):
    r = curl("--socks5-hostname", f"127.0.0.1:{sensor.port(1080)}", "-k", "https://secure.example.org/")
    assert r.returncode != 0  # we cannot finish the handshake as the far end
    hits = _wait(sensor, "spampots.tls.hello", lambda e: e.sni == "secure.example.org")
    assert hits[0].target_port == 443 and hits[0].depth == 1


def test_proxy_chain_depth(sensor):
    """SOCKS5 -> (our far end plays a proxy on 8080) -> HTTP CONNECT -> SMTP on 25."""
    from python_socks.sync import Proxy
    sock = Proxy.from_url(f"socks5://127.0.0.1:{sensor.port(1080)}", rdns=True).connect(
        dest_host="proxy2.example", dest_port=8080, timeout=5)
    sock.sendall(b"CONNECT mx.chain.example:25 HTTP/1.1\r\nHost: mx.chain.example:25\r\n\r\n")
    f = sock.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 200")
    while f.readline() not in (b"\r\n", b""):
        pass
    assert f.readline().startswith(b"220 ")
    sock.sendall(b"HELO chain\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    for _ in range(4):
        f.readline()
    sock.sendall(b"Subject: chained\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    assert f.readline().startswith(b"250")
    sock.close()
    got = _wait(sensor, "spampots.smtp.message", lambda e: e.subject == "chained")
    assert got[0].depth == 2 and len(got[0].via) == 2
    assert got[0].via[0].startswith("socks5:proxy2.example:8080")
    assert got[0].via[1].startswith("http:mx.chain.example:25")


def test_ipv6_listener(tmp_path):
    from conftest import start_sensor
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as t:
            t.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")
    sp = start_sensor(tmp_path, config='[[listener]]\nport = 1080\naddress = "::1"\n', args=("--address", "::1"),
                      wait_port=None)
    try:
        import time
        for _ in range(100):
            try:
                socket.create_connection(("::1", sp.port(1080)), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        r = curl("--socks5-hostname", f"[::1]:{sp.port(1080)}", "http://v6.example/")
        assert r.returncode == 0, r.stderr
        hits = sp.events("spampots.proxy.request", wait_for=1)
        assert hits and hits[0].src_ip == "::1"
    finally:
        sp.stop()


def test_http_post_to_port_25_is_read_as_smtp(sensor):
    dialogue = (b"HELO poster\r\nMAIL FROM:<p@spam.example>\r\nRCPT TO:<v@victim.example>\r\nDATA\r\n"
                b"Subject: posted through http\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    r = curl("--proxy", f"http://127.0.0.1:{sensor.port(8080)}", "--data-binary", "@-",
             "-H", "Content-Type: text/plain", "http://mx.posted.example:25/", input_bytes=dialogue)
    assert r.returncode == 0, r.stderr
    assert b"250" in r.stdout
    got = _wait(sensor, "spampots.smtp.message", lambda e: e.subject == "posted through http")
    assert got[0].target_host == "mx.posted.example" and got[0].target_port == 25
    assert got[0].rcpts == ["v@victim.example"]


def test_show_and_export_round_trip(sensor, tmp_path):
    from spampots.store.export import read_mbox
    msgs = [make_message(500 + i, subject=f"export-{i}", body="From the start\n>From quoted\n.\n") for i in range(3)]
    with smtplib.SMTP("127.0.0.1", sensor.port(25), timeout=10) as s:
        send_messages(s, msgs, ["x@victim.example"])
    shas = [hashlib.sha256(m).hexdigest() for m in msgs]
    _wait(sensor, "spampots.smtp.message", lambda e: e.sha256 == shas[-1])
    cli = [sys.executable, "-m", "spampots.cli"]
    dd = ["--data-dir", str(sensor.data_dir)]
    # show | export: the raw bytes survive the pipe
    shown = subprocess.run([*cli, "show", shas[0], *dd], capture_output=True, check=True).stdout
    subprocess.run([*cli, "export", "--format", "eml", "--out", str(tmp_path / "eml")], input=shown,
                   capture_output=True, check=True)
    assert (tmp_path / "eml" / f"{shas[0]}.eml").read_bytes() == msgs[0]
    # sha256 lines on stdin -> mbox, read back exactly
    r = subprocess.run([*cli, "export", "--format", "mbox", "--out", str(tmp_path / "mbox"), *dd],
                       input="\n".join(shas).encode(), capture_output=True)
    assert r.returncode == 0, r.stderr
    assert read_mbox(tmp_path / "mbox" / "messages.mbox") == msgs
    # selectors
    r = subprocess.run([*cli, "export", "--format", "eml", "--out", str(tmp_path / "all"), "--all", *dd],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    for sha, raw in zip(shas, msgs):
        assert (tmp_path / "all" / f"{sha}.eml").read_bytes() == raw
    # no --data-dir: the sensor's own rule, ./var relative to the working directory
    # (as root /var/lib/spampots, where this test's sensor did not store)
    r = subprocess.run([*cli, "show", shas[1]], capture_output=True, cwd=sensor.data_dir.parent)
    if os.geteuid() == 0:
        assert r.returncode == 1 and b"/var/lib/spampots" in r.stderr, r.stderr
    else:
        assert r.returncode == 0 and r.stdout == msgs[1], r.stderr
    r = subprocess.run([*cli, "show", "0" * 64, *dd], capture_output=True)
    assert r.returncode == 1 and b"no message" in r.stderr


def test_report_campaigns_and_export_by_campaign(sensor, tmp_path):
    """Subjects that differ only in digits, spacing and case are one campaign; the report's hash
    exports exactly its messages, through SOCKS5 as well as direct."""
    import json
    same = [make_message(700, subject="Win 100 USD today, Zq"), make_message(701, subject="win  2500 usd TODAY, zq"),
            make_message(702, subject="WIN 7 usd today,\tZQ")]
    other = [make_message(703, subject="Win a car today, zq")]
    with smtplib.SMTP("127.0.0.1", sensor.port(25), timeout=10) as s:
        send_messages(s, same[:2] + other, ["a@victim.example", "b@victim.example"])
    with ProxySMTP(f"socks5://127.0.0.1:{sensor.port(1080)}", "mx.campaign.example", 25, timeout=10) as s:
        send_messages(s, same[2:], ["c@victim.example"])
    shas = {hashlib.sha256(m).hexdigest(): m for m in same + other}
    _wait(sensor, "spampots.smtp.message", lambda e: e.sha256 in shas and len(
        [x for x in _messages(sensor) if x.sha256 in shas]) == 4)
    cli = [sys.executable, "-m", "spampots.cli"]
    dd = ["--data-dir", str(sensor.data_dir)]
    r = subprocess.run([*cli, "report", "--format", "json", "--no-compact", "--top", "1000", *dd],
                       capture_output=True, check=True)
    table = json.loads(r.stdout)["tables"]["subject_campaigns"]  # "campaigns" groups by content
    rows = {row["subject"]: row for row in table["rows"]}
    row = rows["WIN 7 usd today,\tZQ"]  # the smallest subject of the three is the example
    assert (row["emails"], row["rcpts"], row["bodies"], row["ips"]) == (3, 5, 3, 1)
    assert rows["Win a car today, zq"]["emails"] == 1
    key = row["campaign"]
    assert len(key) == 16 and key != rows["Win a car today, zq"]["campaign"]
    r = subprocess.run([*cli, "export", "--format", "eml", "--out", str(tmp_path / "c"), "--campaign", key[:8], *dd],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    got = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    assert got == {f"{hashlib.sha256(m).hexdigest()}.eml": m for m in same}
    # filters combine; bad and unknown keys are clear errors
    r = subprocess.run([*cli, "export", "--out", str(tmp_path / "d"), "--campaign", key, "--src-ip", "127.9.9.9", *dd],
                       capture_output=True)
    assert r.returncode == 1 and b"no stored message matches" in r.stderr
    r = subprocess.run([*cli, "export", "--out", str(tmp_path / "e"), "--campaign", "xyz", *dd], capture_output=True)
    assert r.returncode == 2 and b"4 to 16 hex digits" in r.stderr


def test_personas_differ_between_sensors_and_are_stable():
    from spampots.protocols.personas import choose
    ids = [f"sensor-{i}" for i in range(12)]
    faces = [choose(i) for i in ids]
    assert faces == [choose(i) for i in ids]  # stable across restarts
    assert len({(f.smtp_style, f.hostname) for f in faces}) >= 10
    assert len({f.smtp_style for f in faces}) >= 3 and len({f.http_style for f in faces}) >= 3
    pinned = choose("x", smtp_style="postfix", hostname="mx.example.net", http_style="squid")
    assert (pinned.smtp_style, pinned.hostname, pinned.http_style) == ("postfix", "mx.example.net", "squid")
