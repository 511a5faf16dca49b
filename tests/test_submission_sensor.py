"""Submission (587) and implicit TLS (465) on a running sensor, with real smtplib clients:
STARTTLS + AUTH PLAIN/LOGIN/CRAM-MD5, SMTP_SSL, tunnels to 587/465, the auth policies,
and bad input (invalid base64, a garbage handshake, AUTH before STARTTLS)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import smtplib
import socket
import ssl
import time

import pytest
from python_socks.sync import Proxy

from clients import ProxySMTP, make_message
from conftest import pick_offset, port_free, start_sensor

TLS = ssl._create_unverified_context()
CONFIG = "[submission]\nenable = true\n[limits]\nnew_sessions_per_s_per_ip = 1000\nmax_sessions_per_ip = 500\n"


def free_offset() -> int:
    """An offset under which the talk's ports and 587/465 are all free."""
    for _ in range(50):
        off = pick_offset()
        if port_free(587 + off) and port_free(465 + off):
            return off
    raise RuntimeError("no free port offset for 587/465")


def sensor_with(tmp, config: str, **kw):
    return start_sensor(tmp, config=config, offset=free_offset(), wait_port=587, **kw)


@pytest.fixture(scope="module")
def sensor(tmp_path_factory):
    sp = sensor_with(tmp_path_factory.mktemp("submission"), CONFIG)
    yield sp
    sp.stop()


def wait_for(sp, name, pred, count=1, timeout=5.0) -> list:
    """Events ``name`` matching ``pred``, once there are ``count`` of them (events are group-committed)."""
    deadline = time.time() + timeout
    while True:
        hits = [e for e in sp.events(name) if pred(e)]
        if len(hits) >= count or time.time() > deadline:
            return hits
        time.sleep(0.05)


class ProxySMTPS(smtplib.SMTP_SSL):
    """SMTP_SSL through a SOCKS or HTTP proxy: TLS with the target's name (SNI) inside the tunnel."""

    def __init__(self, proxy_url: str, host: str, port: int, **kw) -> None:
        self.proxy_url = proxy_url
        super().__init__(host, port, context=TLS, **kw)

    def _get_socket(self, host, port, timeout):
        sock = Proxy.from_url(self.proxy_url, rdns=True).connect(dest_host=host, dest_port=port, timeout=timeout)
        return self.context.wrap_socket(sock, server_hostname=host)


def authenticate(s: smtplib.SMTP, mech: str, user: str, password: str) -> None:
    s.user, s.password = user, password
    method = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login, "CRAM-MD5": s.auth_cram_md5}[mech]
    code, _ = s.auth(mech, method)
    assert code == 235


def check_capture(sp, tag: str, mech: str, user: str, password: str, raw: bytes, **where) -> None:
    """The credentials and the message of one session, as recorded."""
    (auth,) = wait_for(sp, "spampots.smtp.auth", lambda e: e.username == user)
    assert (auth.mechanism, auth.outcome, auth.policy) == (mech, "accepted", "accept_all")
    if mech == "CRAM-MD5":
        assert auth.challenge.startswith("<") and auth.challenge.endswith(">")
        assert auth.password == hmac.new(password.encode(), auth.challenge.encode(), hashlib.md5).hexdigest()
    else:
        assert auth.password == password and auth.challenge is None
    (msg,) = wait_for(sp, "spampots.smtp.message", lambda e: e.subject == tag)
    assert msg.sha256 == hashlib.sha256(raw).hexdigest()
    assert (msg.submission, msg.tls, msg.auth_user) == (True, True, user)
    for key, value in where.items():
        assert getattr(auth, key) == value and getattr(msg, key) == value, key
    assert auth.session == msg.session


MECHS = ["PLAIN", "LOGIN", "CRAM-MD5"]


@pytest.mark.parametrize("mech", MECHS)
def test_587_starttls_then_auth(sensor, mech):
    user, password, tag = f"587-{mech}@victim.example", f"pw {mech} 587", f"sub-587-{mech}"
    raw = make_message(1, subject=tag)
    with smtplib.SMTP("127.0.0.1", sensor.port(587), timeout=10) as s:
        s.ehlo("bot.example")
        assert s.has_extn("starttls") and not s.has_extn("auth")  # RFC 6409: TLS first
        s.starttls(context=TLS)
        s.ehlo("bot.example")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"] and not s.has_extn("starttls")
        authenticate(s, mech, user, password)
        assert s.sendmail("spam@spam.example", ["a@one.example", "b@two.example"], raw) == {}
    check_capture(sensor, tag, mech, user, password, raw, listener_port=sensor.port(587), depth=0,
                  target_port=None)
    assert wait_for(sensor, "spampots.smtp.tls",
                    lambda e: e.outcome == "established" and e.listener_port == sensor.port(587))


@pytest.mark.parametrize("mech", MECHS)
def test_465_implicit_tls_then_auth(sensor, mech):
    user, password, tag = f"465-{mech}@victim.example", f"pw {mech} 465", f"sub-465-{mech}"
    raw = make_message(2, subject=tag)
    with smtplib.SMTP_SSL("127.0.0.1", sensor.port(465), timeout=10, context=TLS) as s:
        code, _ = s.ehlo("bot.example")
        assert code == 250 and s.has_extn("auth") and not s.has_extn("starttls")
        authenticate(s, mech, user, password)
        s.sendmail("spam@spam.example", ["victim@example.org"], raw)
    check_capture(sensor, tag, mech, user, password, raw, listener_port=sensor.port(465), depth=0)


def test_login_picks_plain_and_message_is_stored(sensor):
    """smtplib's own login(): the password as typed, and `spampots show` gives the bytes back."""
    import subprocess
    import sys
    raw = make_message(3, subject="sub-login")
    with smtplib.SMTP("127.0.0.1", sensor.port(587), timeout=10) as s:
        s.starttls(context=TLS)
        s.login("plain-login@victim.example", "correct horse")
        s.sendmail("a@spam.example", ["b@victim.example"], raw)
    check_capture(sensor, "sub-login", "PLAIN", "plain-login@victim.example", "correct horse", raw)
    out = subprocess.run([sys.executable, "-m", "spampots.cli", "show", hashlib.sha256(raw).hexdigest(),
                          "--data-dir", str(sensor.data_dir)], capture_output=True)
    assert out.returncode == 0 and out.stdout == raw


def test_tunnel_to_587(sensor):
    raw = make_message(4, subject="sub-tunnel-587")
    with ProxySMTP(f"socks5://127.0.0.1:{sensor.port(1080)}", "smtp.victim-isp.example", 587, rdns=True,
                   timeout=10) as s:
        code, banner = s.docmd("NOOP")  # the banner was read by connect()
        s.ehlo("bot.example")
        assert s.has_extn("starttls") and not s.has_extn("auth")
        s.starttls(context=TLS)
        s.ehlo("bot.example")
        authenticate(s, "LOGIN", "tunnel587@victim-isp.example", "stolen")
        s.sendmail("a@spam.example", ["b@victim.example"], raw)
    check_capture(sensor, "sub-tunnel-587", "LOGIN", "tunnel587@victim-isp.example", "stolen", raw,
                  target_host="smtp.victim-isp.example", target_port=587, depth=1,
                  listener_port=sensor.port(1080))


def test_tunnel_to_465_is_real_tls_with_sni(sensor):
    raw = make_message(5, subject="sub-tunnel-465")
    with ProxySMTPS(f"http://127.0.0.1:{sensor.port(8080)}", "smtp.victim-isp.example", 465, timeout=10) as s:
        s.ehlo("bot.example")
        authenticate(s, "CRAM-MD5", "tunnel465@victim-isp.example", "stolen too")
        s.sendmail("a@spam.example", ["b@victim.example"], raw)
    check_capture(sensor, "sub-tunnel-465", "CRAM-MD5", "tunnel465@victim-isp.example", "stolen too", raw,
                  target_host="smtp.victim-isp.example", target_port=465, depth=1,
                  listener_port=sensor.port(8080))
    (auth,) = [e for e in sensor.events("spampots.smtp.auth") if e.username == "tunnel465@victim-isp.example"]
    assert auth.challenge.endswith("@smtp.victim-isp.example>")  # the far end is "their" server
    tls = wait_for(sensor, "spampots.smtp.tls", lambda e: e.session == auth.session)
    assert [(t.outcome, t.sni, t.target_port) for t in tls] == [("established", "smtp.victim-isp.example", 465)]


def pipelined_tls_via_socks4a(port: int, host: str) -> bytes:
    """A SOCKS4a CONNECT to host:465 with the ClientHello in the same packet (the glue must hand
    those bytes to its TLS layer); returns the banner read over TLS."""
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = TLS.wrap_bio(bio_in, bio_out, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    request = b"\x04\x01" + (465).to_bytes(2, "big") + b"\x00\x00\x00\x01" + b"u\x00" + host.encode() + b"\x00"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request + bio_out.read())
        grant = b""
        while len(grant) < 8:
            grant += sock.recv(8 - len(grant))
        assert grant[1] == 0x5A

        def pump(step):
            while True:
                try:
                    return step()
                except ssl.SSLWantReadError:
                    if bio_out.pending:
                        sock.sendall(bio_out.read())
                    data = sock.recv(65536)
                    if not data:
                        raise EOFError("sensor closed the tunnel")
                    bio_in.write(data)

        pump(tls.do_handshake)
        if bio_out.pending:
            sock.sendall(bio_out.read())
        banner = pump(lambda: tls.read(4096))
        tls.write(b"QUIT\r\n")
        sock.sendall(bio_out.read())
        return banner


def test_tunnel_to_465_with_client_hello_pipelined(sensor):
    banner = pipelined_tls_via_socks4a(sensor.port(1080), "pipelined.victim.example")
    assert banner.startswith(b"220 pipelined.victim.example ")
    assert wait_for(sensor, "spampots.smtp.tls", lambda e: e.sni == "pipelined.victim.example")


# --- bad input: each recorded, the sensor stays up --------------------------------------------

def test_auth_before_starttls_on_587(sensor):
    with smtplib.SMTP("127.0.0.1", sensor.port(587), timeout=10) as s:
        s.ehlo("early.example")
        secret = base64.b64encode(b"\0early@victim.example\0cleartext!").decode()
        assert s.docmd("AUTH", "PLAIN " + secret) == (530, b"5.7.0 Must issue a STARTTLS command first")
        assert s.docmd("MAIL", "FROM:<a@b.example>")[0] == 530
        s.starttls(context=TLS)  # the session is still usable
        s.ehlo("early.example")
        assert s.has_extn("auth")
    (auth,) = wait_for(sensor, "spampots.smtp.auth", lambda e: e.username == "early@victim.example")
    assert (auth.mechanism, auth.password, auth.outcome) == ("PLAIN", "cleartext!", "needs_tls")
    errors = wait_for(sensor, "spampots.protocol.error",
                      lambda e: e.session == auth.session and e.kind == "smtp.tls_required")
    assert len(errors) == 2
    assert sensor.proc.poll() is None


def test_invalid_base64_in_auth(sensor):
    with smtplib.SMTP_SSL("127.0.0.1", sensor.port(465), timeout=10, context=TLS) as s:
        s.ehlo("b64.example")
        assert s.docmd("AUTH", "PLAIN !!not*base64!!")[0] == 501
        assert s.docmd("AUTH", "LOGIN")[0] == 334
        assert s.docmd("%%%%")[0] == 501
        assert s.noop()[0] == 250
    errors = wait_for(sensor, "spampots.protocol.error", lambda e: e.kind == "smtp.auth_malformed", count=2)
    assert [base64.b64decode(e.data_b64) for e in errors] == [b"!!not*base64!!", b"%%%%"]
    session = errors[0].session
    malformed = wait_for(sensor, "spampots.smtp.auth", lambda e: e.session == session, count=2)
    assert [(e.mechanism, e.outcome) for e in malformed] == [("PLAIN", "malformed"), ("LOGIN", "malformed")]
    assert sensor.proc.poll() is None


@pytest.mark.parametrize("garbage", [
    b"EHLO plaintext.example\r\n",  # a client that forgot TLS
    b"\x16\x03\x01\x00\x10" + b"\xde\xad\xbe\xef" * 4,  # a handshake record holding nonsense
    b"\x00" * 300,
])
def test_garbage_tls_handshake_on_465(sensor, garbage):
    before = {e.session for e in sensor.events("spampots.smtp.tls")}
    with socket.create_connection(("127.0.0.1", sensor.port(465)), timeout=10) as c:
        c.sendall(garbage)
        c.settimeout(10)
        try:
            while c.recv(4096):  # an alert at most, then the sensor hangs up
                pass
        except ConnectionResetError:
            pass
    (failed,) = wait_for(sensor, "spampots.smtp.tls", lambda e: e.session not in before and e.outcome == "failed")
    assert failed.outcome == "failed" and failed.listener_port == sensor.port(465)
    assert "SSL" in failed.detail  # what OpenSSL made of it
    (close,) = wait_for(sensor, "spampots.session.close", lambda e: e.session == failed.session)
    assert close.reason == "protocol" and close.ts >= failed.ts
    # still serving TLS on 465
    with smtplib.SMTP_SSL("127.0.0.1", sensor.port(465), timeout=10, context=TLS) as s:
        assert s.noop()[0] == 250
    assert sensor.proc.poll() is None


# --- policies, and the stdlib loop under the no-dial-out audit ---------------------------------

def test_accept_after_failures_across_sessions_stdlib_loop(tmp_path):
    audit = tmp_path / "audit.log"  # also switches the sensor to the stdlib asyncio loop
    sp = sensor_with(tmp_path, '[submission]\nenable = true\nauth_policy = "accept_after_failures"\n'
                               'accept_after = 2\n', audit_file=audit)
    try:
        outcomes = []
        for i in range(3):  # one attempt per session: the count must outlive the session
            with smtplib.SMTP_SSL("127.0.0.1", sp.port(465), timeout=10, context=TLS) as s:
                s.ehlo("brute.example")
                s.user, s.password = "admin@victim.example", f"guess{i}"
                try:
                    s.auth("PLAIN", s.auth_plain)
                    outcomes.append(235)
                    s.sendmail("a@spam.example", ["b@victim.example"], make_message(6, subject="after-failures"))
                except smtplib.SMTPAuthenticationError as exc:
                    outcomes.append(exc.smtp_code)
                    assert exc.smtp_error.startswith(b"5.7.8")
        assert outcomes == [535, 535, 235]
        auths = sp.events("spampots.smtp.auth", wait_for=3)
        assert [(a.password, a.outcome, a.policy) for a in auths] == [
            ("guess0", "rejected", "accept_after_failures"), ("guess1", "rejected", "accept_after_failures"),
            ("guess2", "accepted", "accept_after_failures")]
        assert len({a.session for a in auths}) == 3
        (msg,) = sp.events("spampots.smtp.message", wait_for=1)
        assert msg.auth_user == "admin@victim.example" and msg.submission
        # TLS paths of the glue under the stdlib loop too
        banner = pipelined_tls_via_socks4a(sp.port(1080), "stdlib.victim.example")
        assert banner.startswith(b"220 stdlib.victim.example ")
        with ProxySMTP(f"socks5://127.0.0.1:{sp.port(1080)}", "mx.victim.example", 587, rdns=True,
                       timeout=10) as s:
            s.starttls(context=TLS)
            assert s.ehlo("x")[0] == 250
    finally:
        sp.stop()
    log = audit.read_text() if audit.exists() else ""
    assert log == "", f"the sensor made outbound network calls:\n{log}"


def test_reject_all(tmp_path):
    sp = sensor_with(tmp_path, '[submission]\nenable = true\nauth_policy = "reject_all"\n'
                               'advertise = ["CRAM-MD5", "PLAIN"]\n')
    try:
        with smtplib.SMTP("127.0.0.1", sp.port(587), timeout=10) as s:
            s.starttls(context=TLS)
            s.ehlo("x")
            assert s.esmtp_features["auth"].split() == ["CRAM-MD5", "PLAIN"]
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                s.login("nobody@victim.example", "wrong")  # smtplib tries CRAM-MD5, then PLAIN
            assert info.value.smtp_code == 535
            assert s.docmd("MAIL", "FROM:<a@b.example>")[0] == 530
        auths = sp.events("spampots.smtp.auth", wait_for=2)
        assert [(a.mechanism, a.outcome, a.policy) for a in auths] == [
            ("CRAM-MD5", "rejected", "reject_all"), ("PLAIN", "rejected", "reject_all")]
        assert auths[1].password == "wrong"
        assert sp.events("spampots.smtp.message") == []
    finally:
        sp.stop()


def test_check_config_lists_the_submission_listeners(tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "one-line.toml"
    cfg.write_text("submission.enable = true\n")
    r = subprocess.run([sys.executable, "-m", "spampots.cli", "check-config", str(cfg)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "587/submission" in r.stdout and "465/smtps" in r.stdout
    cfg.write_text('[submission]\nauth_policy = "maybe"\n[[listener]]\nport = 587\nkind = "submision"\n')
    r = subprocess.run([sys.executable, "-m", "spampots.cli", "check-config", str(cfg)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "submission.auth_policy" in r.stderr and "kind must be one of" in r.stderr
