"""Submission (587, RFC 6409/3207/4954) and implicit TLS (465, RFC 8314): the sans-IO
machine with raw bytes, the far-end choice, the config keys and the glue's failure memory."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spampots import config
from spampots.events import ProtocolError, SmtpAuth, SmtpMessage, SmtpTls
from spampots.protocols.base import Close, Context, Persona, StartTLS, Tunnel
from spampots.protocols.dispatch import Sniffer, far_end, listener_handler, tunnel_context
from spampots.protocols.smtp import AuthPolicy, SmtpServer
from spampots.protocols.tls_hello import TlsHelloReader
from test_smtp import CRLF, Session, b64, check_actions, ctx, transaction

NONCE = "1234567890.1700000000"
TLS_REQUIRED = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
AUTH_FAILED = b"535 5.7.8 Error: authentication failed: authentication failure\r\n"


def sub(policy: str = "accept_all", *, tls: bool = False, failures: int = 0, accept_after: int = 3,
        advertise=("PLAIN", "LOGIN"), nonce: str = NONCE, context: Context | None = None, **kw) -> Session:
    """A submission server; ``tls``: STARTTLS already done (the handshake "succeeded")."""
    auth = AuthPolicy(policy=policy, accept_after=accept_after, failures=failures,
                      advertise=tuple(advertise), nonce=nonce)
    s = Session(context or ctx(tls_available=True), submission=True, auth=auth, **kw)
    if tls:
        s.send(b"STARTTLS\r\n")
        s.actions += s.server.tls_established()
    return s


def auths(s: Session) -> list[tuple]:
    return [(a.mechanism, a.username, a.password, a.outcome, a.policy) for a in s.of(SmtpAuth)]


def ehlo_keywords(s: Session) -> list[str]:
    (reply,) = s.send(b"EHLO client.example\r\n")
    return [line[4:].decode() for line in reply.split(CRLF)[1:-1]]


# --- RFC 6409 / 3207: TLS first -----------------------------------------------------------

def test_ehlo_before_tls_offers_starttls_and_hides_auth():
    kws = ehlo_keywords(sub())
    assert "STARTTLS" in kws and not any(k.startswith("AUTH") for k in kws)


def test_ehlo_after_tls_offers_the_configured_mechanisms():
    kws = ehlo_keywords(sub(tls=True, advertise=("LOGIN", "CRAM-MD5", "PLAIN")))
    assert "AUTH LOGIN CRAM-MD5 PLAIN" in kws and "STARTTLS" not in kws


@pytest.mark.parametrize("line, user, password", [
    (b"AUTH PLAIN " + b64(b"\0victim@isp.example\0hunter2"), "victim@isp.example", "hunter2"),
    (b"AUTH LOGIN " + b64(b"victim@isp.example"), "victim@isp.example", None),
    (b"AUTH LOGIN", None, None),
    (b"AUTH PLAIN %%%notb64", None, None),
])
def test_auth_before_starttls_is_refused_and_recorded(line, user, password):
    s = sub()
    s.send(b"EHLO x\r\n" + line + CRLF)
    assert s.wire.endswith(TLS_REQUIRED)
    mech = line.split()[1].decode()
    assert auths(s) == [(mech, user, password, "needs_tls", "accept_all")]
    (err,) = s.of(ProtocolError)
    assert err.kind == "smtp.tls_required" and base64.b64decode(err.data_b64) == line
    s.send(b"NOOP\r\n")  # still in command mode, no AUTH exchange started
    assert s.wire.endswith(b"250 2.0.0 Ok\r\n")


def test_auth_before_starttls_with_unknown_or_no_mechanism():
    s = sub()
    s.send(b"AUTH XOAUTH2 dG9rZW4=\r\n")
    assert s.wire.endswith(TLS_REQUIRED)
    assert auths(s) == [("XOAUTH2", None, None, "needs_tls", None)]
    s.send(b"AUTH\r\n")  # nothing tried, nothing to record but the refusal
    assert s.wire.endswith(TLS_REQUIRED) and len(s.of(SmtpAuth)) == 1
    assert s.errors() == ["smtp.tls_required"] * 2


def test_mail_rcpt_data_vrfy_need_tls_but_noop_helo_rset_help_quit_do_not():
    s = sub()
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nVRFY x\r\n")
    assert s.codes() == ["220", "530", "530", "530", "530"]
    assert s.errors() == ["smtp.tls_required"] * 4
    s.send(b"HELO x\r\nNOOP\r\nRSET\r\nHELP\r\nQUIT\r\n")
    assert s.codes()[5:] == ["250", "250", "250", "214", "221"]
    assert s.messages() == [] and s.of(SmtpAuth) == []


def test_tls_first_is_only_asked_when_tls_is_possible():
    s = sub(context=ctx(tls_available=False))  # no certificate: plaintext AUTH, as some servers allow
    kws = ehlo_keywords(s)
    assert "AUTH PLAIN LOGIN" in kws and "STARTTLS" not in kws
    s.send(b"MAIL FROM:<a@b>\r\nAUTH PLAIN " + b64(b"\0u\0p") + b"\r\n" + transaction(b"m\r\n"))
    assert s.codes()[2:] == ["530", "235", "250", "250", "354", "250"]
    assert b"530 5.7.0 Authentication required\r\n" in s.wire
    ev = s.messages()[0].event
    assert ev.submission is True and ev.tls is False and ev.auth_user == "u"


def test_after_starttls_mail_needs_auth_then_message_is_marked_submission():
    s = sub(tls=True, context=ctx(tls_available=True, target_host="smtp.victim.example", target_port=587))
    s.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\n")
    assert s.wire.endswith(b"530 5.7.0 Authentication required\r\n")
    s.send(b"AUTH PLAIN " + b64(b"\0stolen@victim.example\0Summer2024!") + b"\r\n")
    s.send(transaction(b"Subject: x\r\n\r\nspam\r\n"))
    (m,) = s.messages()
    ev = m.event
    assert (ev.submission, ev.tls, ev.auth_user, ev.target_port) == (True, True, "stolen@victim.example", 587)
    assert ev.sha256 == hashlib.sha256(b"Subject: x\r\n\r\nspam\r\n").hexdigest()
    (a,) = s.of(SmtpAuth)
    assert (a.target_host, a.target_port, a.policy) == ("smtp.victim.example", 587, "accept_all")


def test_port_25_messages_are_not_submission():
    s = Session()
    s.send(b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n" + transaction(b"m\r\n"))
    assert s.messages()[0].event.submission is False
    assert s.of(SmtpAuth)[0].policy == "accept_all"


# --- CRAM-MD5 (RFC 2195) -------------------------------------------------------------------

def cram_response(user: str, password: str, challenge_line: bytes) -> tuple[bytes, str]:
    assert challenge_line.startswith(b"334 ") and challenge_line.endswith(CRLF)
    challenge = base64.b64decode(challenge_line[4:-2])
    digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    return b64(f"{user} {digest}".encode()) + CRLF, digest


def test_cram_md5_challenge_response_recorded():
    s = sub(tls=True)
    (challenge_line,) = s.send(b"AUTH CRAM-MD5\r\n")
    assert base64.b64decode(challenge_line[4:-2]) == b"<1234567890.1700000000@mail.example.net>"
    response, digest = cram_response("user name@example.org", "tanstaaftanstaaf", challenge_line)
    s.send(response)
    assert s.wire.endswith(b"235 2.7.0 Authentication successful\r\n")
    (a,) = s.of(SmtpAuth)
    assert (a.mechanism, a.username, a.password, a.outcome) == ("CRAM-MD5", "user name@example.org", digest,
                                                              "accepted")
    assert a.challenge == "<1234567890.1700000000@mail.example.net>"
    # the recorded challenge lets an analyst test a candidate password offline
    assert hmac.new(b"tanstaaftanstaaf", a.challenge.encode(), hashlib.md5).hexdigest() == a.password


def test_cram_md5_challenge_names_the_tunnelled_host_and_is_served_unadvertised():
    s = sub(tls=True, advertise=("PLAIN",), banner_host="smtp.victim.example",
            context=ctx(tls_available=True, target_host="smtp.victim.example", target_port=587))
    (line,) = s.send(b"auth cram-md5\r\n")
    assert base64.b64decode(line[4:-2]) == b"<1234567890.1700000000@smtp.victim.example>"


def test_cram_md5_needs_a_nonce_from_the_glue():
    s = sub(tls=True, nonce="")
    s.send(b"AUTH CRAM-MD5\r\n")
    assert s.wire.endswith(b"504 5.5.4 Unrecognized authentication type\r\n")
    assert auths(s) == [("CRAM-MD5", None, None, "rejected", None)]


@pytest.mark.parametrize("dialogue, why", [
    ([b"AUTH CRAM-MD5\r\n", b"!!!\r\n"], "not base64"),
    ([b"AUTH CRAM-MD5\r\n", b64(b"nospace") + CRLF], "without a space"),
    ([b"AUTH CRAM-MD5 " + b64(b"u d") + CRLF], "no initial response"),
])
def test_cram_md5_malformed(dialogue, why):
    s = sub(tls=True)
    s.send(*dialogue)
    assert s.wire.endswith(b"501 5.5.2 Cannot decode response\r\n")
    (a,) = s.of(SmtpAuth)
    assert (a.mechanism, a.outcome, a.password, a.policy) == ("CRAM-MD5", "malformed", None, "accept_all")
    assert a.challenge == "<1234567890.1700000000@mail.example.net>"
    (err,) = s.of(ProtocolError)
    assert err.kind == "smtp.auth_malformed" and why in err.detail
    s.send(b"NOOP\r\n")
    assert s.wire.endswith(b"250 2.0.0 Ok\r\n")


def test_cram_md5_cancel():
    s = sub(tls=True)
    s.send(b"AUTH CRAM-MD5\r\n", b"*\r\n")
    assert s.wire.endswith(b"501 5.7.0 Authentication aborted\r\n") and s.of(SmtpAuth) == []


# --- policies ------------------------------------------------------------------------------

def test_reject_all():
    s = sub("reject_all", tls=True)
    s.send(b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\nAUTH LOGIN\r\n", b64(b"c") + CRLF, b64(b"d") + CRLF)
    s.send(b"MAIL FROM:<x@y>\r\n")
    assert s.wire.count(AUTH_FAILED) == 2
    assert s.wire.endswith(b"530 5.7.0 Authentication required\r\n")
    assert auths(s) == [("PLAIN", "a", "b", "rejected", "reject_all"), ("LOGIN", "c", "d", "rejected", "reject_all")]
    assert s.messages() == []


def test_accept_after_failures_within_one_session():
    s = sub("accept_after_failures", tls=True, accept_after=2)
    for pw in (b"1", b"2", b"3"):
        s.send(b"AUTH PLAIN " + b64(b"\0u\0" + pw) + b"\r\n")
    assert [a[3] for a in auths(s)] == ["rejected", "rejected", "accepted"]
    assert {a.policy for a in s.of(SmtpAuth)} == {"accept_after_failures"}
    s.send(transaction(b"m\r\n"))
    assert s.messages()[0].event.auth_user == "u"


def test_accept_after_failures_counts_what_the_glue_remembers():
    s = sub("accept_after_failures", tls=True, accept_after=2, failures=2)
    s.send(b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    assert auths(s) == [("PLAIN", "u", "p", "accepted", "accept_after_failures")]
    zero = sub("accept_after_failures", tls=True, accept_after=0)
    zero.send(b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    assert zero.of(SmtpAuth)[0].outcome == "accepted"


def test_brute_force_in_one_session_is_cut_off():
    s = sub("reject_all", tls=True)
    for i in range(12):
        s.send(b"AUTH PLAIN " + b64(b"\0u\0pw%d" % i) + b"\r\n")
    assert len(s.of(SmtpAuth)) == 10
    assert s.wire.endswith(b"421 4.7.0 mail.example.net Error: too many errors\r\n")
    assert isinstance(s.actions[-1], Close) and s.actions[-1].reason == "protocol"
    assert "smtp.too_many_errors" in s.errors()


def test_policy_accepts():
    assert AuthPolicy("accept_all").accepts(0)
    assert not AuthPolicy("reject_all").accepts(10**6)
    p = AuthPolicy("accept_after_failures", accept_after=3)
    assert [p.accepts(n) for n in range(5)] == [False, False, False, True, True]


# --- implicit TLS (465) --------------------------------------------------------------------

def test_implicit_tls_handshake_first_then_banner():
    server = SmtpServer(ctx(tls_available=True), submission=True, implicit_tls=True,
                        auth=AuthPolicy(nonce=NONCE))
    assert server.implicit_tls and server.start() == [StartTLS()]
    out = server.tls_established(sni="smtp.victim.example")
    check_actions(out)
    assert out[0] == SmtpTls(outcome="established", sni="smtp.victim.example")
    assert out[1] == b"220 mail.example.net ESMTP Postfix (Debian/GNU)\r\n"
    (reply,) = server.receive(b"EHLO x\r\n")
    assert b"STARTTLS" not in reply and b"AUTH PLAIN LOGIN" in reply
    out = server.receive(b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n" + transaction(b"m\r\n"))
    (msg,) = [a for a in out if hasattr(a, "body")]
    assert msg.event.tls and msg.event.submission and msg.event.auth_user == "u"


def test_implicit_tls_garbage_handshake_is_recorded():
    server = SmtpServer(ctx(tls_available=True), submission=True, implicit_tls=True)
    server.start()
    out = server.tls_failed("SSLError: [SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert out == [SmtpTls(outcome="failed", detail="SSLError: [SSL: WRONG_VERSION_NUMBER] wrong version number"),
                   Close(reason="protocol")]
    assert server.receive(b"EHLO x\r\n") == [] and server.eof() == []


def test_sni_is_capped():
    s = sub()
    s.send(b"STARTTLS\r\n")
    (ev,) = s.server.tls_established(sni="a" * 1000)
    assert len(ev.sni) == 255


# --- where the submission server plays ------------------------------------------------------

def proxy_ctx(**kw) -> Context:
    # a SOCKS listener's context: port 25 has neither AUTH nor STARTTLS configured
    return Context(persona=Persona(smtp_auth=False, smtp_tls=False), **kw)


def test_listener_kinds():
    auth = AuthPolicy(nonce=NONCE)
    h = listener_handler(proxy_ctx(tls_available=True), kind="submission", auth=auth)
    assert isinstance(h, Sniffer) and h.start() == [b"220 mail.example.net ESMTP Postfix (Debian/GNU)\r\n"]
    h.receive(b"EHLO x\r\n")
    assert h.receive(b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")[-1] == TLS_REQUIRED  # submission forces TLS+AUTH
    tls = listener_handler(proxy_ctx(tls_available=True), kind="smtps", auth=auth)
    assert isinstance(tls, SmtpServer) and tls.start() == [StartTLS()]
    # no certificate: an smtps listener cannot do its job; it records what comes and closes
    assert isinstance(listener_handler(proxy_ctx(), kind="smtps"), Sniffer)


def tunnel(port: int, **kw) -> Context:
    return tunnel_context(proxy_ctx(**kw), Tunnel(proxy="socks5", host="smtp.victim.example", port=port))


def test_far_end_587_is_submission_with_the_requested_name():
    h = far_end(tunnel(587, tls_available=True), auth=AuthPolicy(nonce=NONCE))
    assert h.start() == [b"220 smtp.victim.example ESMTP Postfix (Debian/GNU)\r\n"]
    (reply,) = h.receive(b"EHLO x\r\n")
    assert b"STARTTLS" in reply
    assert h.receive(b"MAIL FROM:<a@b>\r\n")[-1] == TLS_REQUIRED


def test_far_end_465_is_implicit_tls_or_a_hello_reader_without_certificate():
    h = far_end(tunnel(465, tls_available=True), auth=AuthPolicy(nonce=NONCE))
    assert isinstance(h, SmtpServer) and h.implicit_tls and h.start() == [StartTLS()]
    out = h.tls_established(sni="smtp.victim.example")
    assert out[1] == b"220 smtp.victim.example ESMTP Postfix (Debian/GNU)\r\n"
    plain = far_end(tunnel(465))
    assert isinstance(plain, Sniffer) and plain.start() == []
    plain.receive(bytes.fromhex("16030100") + b"\x00" * 20)
    assert isinstance(plain.delegate, TlsHelloReader)


def test_far_end_25_is_unchanged():
    h = far_end(tunnel(25, tls_available=True), auth=None)
    (reply,) = [a for a in h.receive(b"EHLO x\r\nMAIL FROM:<a@b>\r\n") if isinstance(a, bytes)]
    assert b"250 2.1.0" in reply  # open relay, no TLS or AUTH demanded


# --- fuzz ---------------------------------------------------------------------------------

_LINES = st.sampled_from([
    b"EHLO x\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"AUTH CRAM-MD5\r\n",
    b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n", b64(b"u 0123abcd") + b"\r\n", b"*\r\n", b"=\r\n",
    b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n", b"x\r\n.\r\n", b"!!!\r\n", b"NOOP\r\n",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_LINES, st.binary(max_size=40)), max_size=30),
       st.sampled_from(["accept_all", "reject_all", "accept_after_failures"]), st.booleans(), st.booleans())
def test_fuzz_submission_never_raises(chunks, policy, implicit, tls_done):
    server = SmtpServer(ctx(tls_available=True), submission=True, implicit_tls=implicit,
                        auth=AuthPolicy(policy=policy, accept_after=1, nonce=NONCE))
    actions = server.start()
    if implicit or tls_done:
        if not implicit:
            actions += server.receive(b"STARTTLS\r\n")
        actions += server.tls_established(sni="x")
    for chunk in chunks:
        actions += server.receive(chunk)
    actions += server.eof()
    check_actions(actions)
    for a in actions:
        if isinstance(a, SmtpAuth):
            assert a.outcome in ("accepted", "rejected", "malformed", "needs_tls")
        if hasattr(a, "event") and isinstance(a.event, SmtpMessage):
            assert a.event.submission and a.event.auth_user is not None


# --- config ----------------------------------------------------------------------------------

def test_submission_off_by_default_and_one_line_turns_it_on():
    assert {lst.kind for lst in config.Config().listeners} == {"socks", "http", "smtp"}
    cfg = config.from_dict({"submission": {"enable": True}})
    config.validate(cfg)
    assert [(lst.port, lst.kind) for lst in cfg.listeners][-2:] == [(587, "submission"), (465, "smtps")]
    moved = config.with_address(config.with_port_offset(cfg, 20000), "127.0.0.1")
    assert sorted(lst.port for lst in moved.listeners if lst.kind in ("submission", "smtps")) == [20465, 20587]
    assert len(moved.listeners) == len(cfg.listeners)


def test_own_listener_wins_over_enable():
    cfg = config.from_dict({"submission": {"enable": True},
                            "listener": [{"port": 587, "kind": "smtp"}, {"port": 2465, "kind": "smtps"}]})
    config.validate(cfg)
    assert [(lst.port, lst.kind) for lst in cfg.listeners] == [(587, "smtp"), (2465, "smtps")]


def test_auth_policy_from_config():
    cfg = config.from_dict({"submission": {"auth_policy": "accept_after_failures", "accept_after": 5,
                                           "advertise": ["login", "CRAM-MD5"]}})
    config.validate(cfg)
    assert cfg.auth_policy() == AuthPolicy(policy="accept_after_failures", accept_after=5,
                                           advertise=("LOGIN", "CRAM-MD5"))


@pytest.mark.parametrize("section, message", [
    ({"auth_policy": "accept_some"}, "submission.auth_policy must be one of"),
    ({"accept_after": -1}, "submission.accept_after must be 0 or more"),
    ({"advertise": []}, "submission.advertise needs at least one mechanism"),
    ({"advertise": ["XOAUTH2"]}, "'XOAUTH2' is not one of PLAIN, LOGIN, CRAM-MD5"),
    ({"advertise": ["PLAIN", "plain"]}, "lists a mechanism twice"),
    ({"remember_sources": 0}, "submission.remember_sources must be positive"),
])
def test_config_errors(section, message):
    with pytest.raises(config.ConfigError, match=message):
        config.validate(config.from_dict({"submission": section}))


def test_example_config_documents_every_key():
    import tomllib
    example = tomllib.loads(config.example_toml())
    assert set(example["submission"]) == set(config.SubmissionSection.__struct_fields__)
    assert config.from_dict(example) == config.Config()


# --- the glue's memory of failures -------------------------------------------------------------

def test_sensor_remembers_failures_per_source_bounded():
    from spampots.sensor.server import Sensor
    cfg = config.from_dict({"submission": {"auth_policy": "accept_after_failures", "remember_sources": 2}})
    sensor = Sensor(cfg)
    first = sensor.auth_policy("192.0.2.1")
    assert first.failures == 0 and first.policy == "accept_after_failures"
    random_part, _, stamp = first.nonce.partition(".")
    assert random_part.isdigit() and stamp.isdigit()
    assert sensor.auth_policy("192.0.2.1").nonce != first.nonce
    for ip in ("192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.3"):
        sensor.auth_failed(ip)
    # .2 failed least recently and was forgotten; .1 kept its three
    assert [sensor.auth_policy(ip).failures for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3")] == [3, 0, 1]
