"""SMTP server role: raw-bytes dialogues against the sans-IO machine."""

from __future__ import annotations

import base64
import hashlib

import pytest

from spampots.events import Event, LimitHit, ProtocolError, SmtpAuth, SmtpMessage, SmtpTls, encode
from spampots.protocols.base import Close, Context, Durable, Limits, Persona, StartTLS
from spampots.protocols.smtp import SmtpServer, parse_headers

CRLF = b"\r\n"


def ctx(**kw) -> Context:
    persona = kw.pop("persona", None) or Persona(**{k: kw.pop(k) for k in list(kw) if k.startswith("smtp_")})
    limits = kw.pop("limits", None) or Limits()
    return Context(persona=persona, limits=limits, **kw)


def check_actions(actions: list) -> None:
    """Only contract types, and every event encodes as JSON."""
    for a in actions:
        if isinstance(a, Durable):
            encode(a.event)
            assert isinstance(a.body, bytes)
        elif not isinstance(a, (bytes, Close, StartTLS)):
            assert isinstance(a, Event), a
            encode(a)


class Session:
    """A server plus everything it produced, with a few views on it."""

    def __init__(self, context: Context | None = None, **kw) -> None:
        self.server = SmtpServer(context or ctx(), **kw)
        self.actions = list(self.server.start())
        check_actions(self.actions)

    def send(self, *chunks: bytes) -> list:
        out = []
        for chunk in chunks:
            out += self.server.receive(chunk)
        check_actions(out)
        self.actions += out
        return out

    def eof(self) -> list:
        out = self.server.eof()
        check_actions(out)
        self.actions += out
        return out

    @property
    def wire(self) -> bytes:
        return b"".join(a for a in self.actions if isinstance(a, bytes))

    def codes(self) -> list[str]:
        """Reply codes in order, one per (last line of a) reply, banner included."""
        return [ln[:3].decode() for ln in self.wire.split(CRLF) if ln[3:4] == b" "]

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]

    def messages(self) -> list[Durable]:
        return self.of(Durable)

    def errors(self) -> list[str]:
        return [e.kind for e in self.of(ProtocolError)]


def transaction(body: bytes, rcpts=(b"rcpt@victim.example",), sender=b"spam@example.org") -> bytes:
    out = b"MAIL FROM:<" + sender + b">\r\n"
    for r in rcpts:
        out += b"RCPT TO:<" + r + b">\r\n"
    return out + b"DATA\r\n" + body + b".\r\n"


# --- banner and greeting ---------------------------------------------------------

@pytest.mark.parametrize("style, banner", [
    ("postfix", b"220 mail.example.net ESMTP Postfix (Debian/GNU)\r\n"),
    ("exim", b"220 mail.example.net ESMTP Exim 4.96\r\n"),
    ("sendmail", b"220 mail.example.net ESMTP Sendmail 8.17.1/8.17.1\r\n"),
    ("exchange", b"220 mail.example.net Microsoft ESMTP MAIL Service ready\r\n"),
])
def test_banner_per_style(style, banner):
    assert Session(ctx(smtp_style=style)).actions == [banner]


@pytest.mark.parametrize("style, banner", [
    ("postfix", b"220 mail.example.net ESMTP Postfix (Debian/GNU)\r\n"),
    ("exim", b"220 mail.example.net ESMTP Exim 4.96 Tue, 02 Jan 2024 10:00:00 +0000\r\n"),
    ("sendmail", b"220 mail.example.net ESMTP Sendmail 8.17.1/8.17.1; Tue, 02 Jan 2024 10:00:00 +0000\r\n"),
    ("exchange", b"220 mail.example.net Microsoft ESMTP MAIL Service ready at Tue, 02 Jan 2024 10:00:00 +0000\r\n"),
])
def test_banner_with_date(style, banner):
    s = Session(ctx(smtp_style=style), now="Tue, 02 Jan 2024 10:00:00 +0000")
    assert s.actions == [banner]


def test_unknown_style_falls_back_to_postfix():
    assert Session(ctx(smtp_style="qmail")).wire.endswith(b"ESMTP Postfix (Debian/GNU)\r\n")


def test_banner_names_tunnelled_host():
    c = ctx(target_host="mx.victim.com", target_port=25, via=("socks5:mx.victim.com:25",), depth=1)
    s = Session(c, banner_host="mx.victim.com")
    assert s.actions == [b"220 mx.victim.com ESMTP Postfix (Debian/GNU)\r\n"]
    s.send(b"EHLO spammer\r\n")
    assert s.actions[1].startswith(b"250-mx.victim.com\r\n")
    s.send(b"HELO spammer\r\n")
    assert s.actions[2] == b"250 mx.victim.com\r\n"


def test_banner_host_cannot_inject_lines():
    s = Session(banner_host="evil.com\r\n250 pwned x")
    assert s.wire.count(CRLF) == 1
    assert s.wire == b"220 evil.com250pwnedx ESMTP Postfix (Debian/GNU)\r\n"


def test_greet_false_sends_no_banner():
    s = Session(greet=False)
    assert s.actions == []
    s.send(b"HELO x\r\n")
    assert s.wire == b"250 mail.example.net\r\n"


# --- EHLO / HELO -------------------------------------------------------------------

def test_ehlo_is_one_write_with_all_keywords():
    s = Session(ctx(tls_available=True))
    out = s.send(b"EHLO client.example\r\n")
    assert out == [
        b"250-mail.example.net\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n"
        b"250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n"
    ]


@pytest.mark.parametrize("auth, tls, avail, has_auth, has_tls", [
    (True, True, True, True, True),
    (True, True, False, True, False),  # persona wants TLS but the glue cannot
    (True, False, True, True, False),
    (False, True, True, False, True),
    (False, False, False, False, False),
])
def test_ehlo_advertises_only_what_is_on(auth, tls, avail, has_auth, has_tls):
    s = Session(ctx(smtp_auth=auth, smtp_tls=tls, tls_available=avail))
    (reply,) = s.send(b"EHLO x\r\n")
    assert (b"250-AUTH PLAIN LOGIN\r\n" in reply) == has_auth
    assert (b"STARTTLS" in reply) == has_tls
    for kw in (b"PIPELINING", b"SIZE 10485760", b"8BITMIME", b"ENHANCEDSTATUSCODES"):
        assert kw in reply


def test_ehlo_size_follows_limits():
    s = Session(ctx(limits=Limits(message_size=12345)))
    assert b"250-SIZE 12345\r\n" in s.send(b"EHLO x\r\n")[0]


@pytest.mark.parametrize("style, first, last", [
    ("exim", b"250-mail.example.net Hello client.example [198.51.100.7]\r\n", b"250 HELP\r\n"),
    ("sendmail", b"250-mail.example.net Hello client.example [198.51.100.7], pleased to meet you\r\n",
     b"250 HELP\r\n"),
    ("exchange", b"250-mail.example.net Hello [198.51.100.7]\r\n", b"250 8BITMIME\r\n"),
])
def test_ehlo_per_style(style, first, last):
    s = Session(ctx(smtp_style=style, src_ip="198.51.100.7"))
    (reply,) = s.send(b"EHLO client.example\r\n")
    assert reply.startswith(first) and reply.endswith(last)
    assert all(ln.startswith(b"250-") for ln in reply.split(CRLF)[:-2])


def test_ehlo_in_tunnel_shows_our_proxy_address_not_the_abuser():
    c = ctx(smtp_style="exim", src_ip="203.0.113.9", local_ip="192.0.2.1", target_host="mx.victim.com",
            target_port=25, depth=1)
    s = Session(c, banner_host="mx.victim.com")
    (reply,) = s.send(b"EHLO bot\r\n")
    assert reply.startswith(b"250-mx.victim.com Hello bot [192.0.2.1]\r\n")
    assert b"203.0.113.9" not in reply


def test_ehlo_echo_is_sanitised():
    s = Session(ctx(smtp_style="exim"))
    (reply,) = s.send(b"EHLO a\rb\xffc\r\n")
    assert reply.split(CRLF)[0] == b"250-mail.example.net Hello a?b?c [127.0.0.1]"


def test_helo_and_ehlo_need_an_argument():
    s = Session()
    s.send(b"HELO\r\n", b"EHLO\r\n", b"EHLO   \r\n")
    assert s.codes() == ["220", "501", "501", "501"]
    assert b"501 5.5.4 Syntax: HELO hostname\r\n" in s.wire
    assert s.errors() == ["smtp.bad_syntax"] * 3


def test_helo_after_ehlo_is_fine_and_resets():
    s = Session()
    s.send(b"EHLO a\r\nMAIL FROM:<x@y>\r\nHELO b\r\nRCPT TO:<z@w>\r\nEHLO c\r\nEHLO d\r\n")
    assert s.codes() == ["220", "250", "250", "250", "503", "250", "250"]


# --- MAIL / RCPT / DATA -------------------------------------------------------------

def test_mail_without_helo_is_accepted_and_captured():
    s = Session()
    s.send(transaction(b"hi\r\n"))
    assert s.codes() == ["220", "250", "250", "354", "250"]
    (m,) = s.messages()
    assert m.event.helo is None and m.body == b"hi\r\n"


@pytest.mark.parametrize("line, addr", [
    (b"MAIL FROM:<a@b.example>", "a@b.example"),
    (b"mail from:<a@b.example>", "a@b.example"),
    (b"MAIL FROM: <a@b.example>", "a@b.example"),
    (b"MAIL FROM:a@b.example", "a@b.example"),
    (b"MAIL FROM:<>", ""),
    (b"MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME", "a@b.example"),
    (b"MAIL FROM:<a@b.example> BODY=7BIT AUTH=<> RET=HDRS", "a@b.example"),
    (b"MAIL FROM:<@relay.example:a@b.example>", "@relay.example:a@b.example"),
])
def test_mail_from_forms(line, addr):
    s = Session()
    s.send(line + b"\r\nRCPT TO:<r@x>\r\nDATA\r\nx\r\n.\r\n")
    assert s.codes() == ["220", "250", "250", "354", "250"]
    assert s.messages()[0].event.mail_from == addr


@pytest.mark.parametrize("line", [b"MAIL", b"MAIL TO:<a@b>", b"MAIL FROM:", b"MAIL FROM:<a@b"])
def test_mail_syntax_error(line):
    s = Session()
    s.send(line + CRLF)
    assert s.wire.endswith(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
    assert s.errors() == ["smtp.bad_syntax"]


def test_mail_size_above_limit_is_refused():
    s = Session(ctx(limits=Limits(message_size=1000)))
    s.send(b"EHLO x\r\nMAIL FROM:<a@b> SIZE=1001\r\nMAIL FROM:<a@b> SIZE=1000\r\n")
    assert s.codes() == ["220", "250", "552", "250"]
    assert b"552 5.3.4 Message size exceeds fixed limit\r\n" in s.wire
    (hit,) = s.of(LimitHit)
    assert (hit.limit, hit.value, hit.observed) == ("message_size", 1000, 1001)


def test_mail_size_huge_and_bad_values():
    s = Session()
    s.send(b"MAIL FROM:<a@b> SIZE=" + b"9" * 100 + b"\r\n", b"MAIL FROM:<a@b> SIZE=abc\r\n",
           b"MAIL FROM:<a@b> size=\xc2\xb2\r\n", b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n")
    assert s.codes() == ["220", "552", "501", "501", "501"]
    assert s.of(LimitHit)[0].limit == "message_size"
    assert b"501 5.5.4 Unsupported BODY parameter\r\n" in s.wire


def test_nested_mail_is_a_sequence_error():
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\nMAIL FROM:<c@d>\r\n")
    assert s.wire.endswith(b"503 5.5.1 Error: nested MAIL command\r\n")
    assert s.errors() == ["smtp.bad_sequence"]


def test_rcpt_before_mail_and_data_before_rcpt():
    s = Session()
    s.send(b"RCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nDATA\r\n")
    assert s.codes() == ["220", "503", "503", "250", "503"]
    assert s.wire.count(b"503 5.5.1 Error: need MAIL command\r\n") == 2
    assert s.wire.endswith(b"503 5.5.1 Error: need RCPT command\r\n")
    assert s.errors() == ["smtp.bad_sequence"] * 3


@pytest.mark.parametrize("line", [b"RCPT TO:<>", b"RCPT FROM:<a@b>", b"RCPT", b"RCPT TO:"])
def test_rcpt_syntax_errors(line):
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\n" + line + CRLF)
    assert s.wire.endswith(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")


def test_open_relay_accepts_any_domain_in_order():
    rcpts = [b"a@victim.com", b"b@other.example", b"postmaster", b"c@[192.0.2.3]"]
    s = Session()
    s.send(transaction(b"x\r\n", rcpts=rcpts))
    assert s.messages()[0].event.rcpts == [r.decode() for r in rcpts]


def test_recipient_limit():
    s = Session(ctx(limits=Limits(recipients=3)))
    s.send(transaction(b"x\r\n", rcpts=[b"r%d@x" % i for i in range(6)]))
    assert s.codes() == ["220", "250", "250", "250", "250", "452", "452", "452", "354", "250"]
    assert s.wire.count(b"452 4.5.3 Error: too many recipients\r\n") == 3
    (hit,) = s.of(LimitHit)  # once per transaction, not per extra recipient
    assert (hit.limit, hit.value, hit.observed) == ("recipients", 3, 4)
    assert s.messages()[0].event.rcpts == ["r0@x", "r1@x", "r2@x"]
    assert s.errors() == []


def test_data_reply_texts_per_style():
    expect = {
        "postfix": [b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>",
                    b"250 2.0.0 Ok: queued as "],
        "exim": [b"250 2.1.0 OK", b"250 2.1.5 Accepted", b'354 Enter message, ending with "." on a line by itself',
                 b"250 2.0.0 OK id=1"],
        "sendmail": [b"250 2.1.0 <s@x>... Sender ok", b"250 2.1.5 <r@y>... Recipient ok",
                     b'354 Enter mail, end with "." on a line by itself', b"250 2.0.0 "],
        "exchange": [b"250 2.1.0 Sender OK", b"250 2.1.5 Recipient OK",
                     b"354 Start mail input; end with <CRLF>.<CRLF>", b"250 2.6.0 <"],
    }
    for style, lines in expect.items():
        s = Session(ctx(smtp_style=style))
        s.send(transaction(b"x\r\n", rcpts=[b"r@y"], sender=b"s@x"))
        got = s.wire.split(CRLF)[1:5]
        for g, e in zip(got, lines):
            assert g.startswith(e), (style, g, e)


def test_queue_id_formats():
    import re
    pats = {
        "postfix": rb"250 2\.0\.0 Ok: queued as [0-9A-F]{10,12}\r\n",
        "exim": rb"250 2\.0\.0 OK id=[0-9A-Za-z]{6}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2}\r\n",
        "sendmail": rb"250 2\.0\.0 [0-9A-Za-z]{8}[0-9]{6} Message accepted for delivery\r\n",
        "exchange": rb"250 2\.6\.0 <[0-9a-f]{32}@mail\.example\.net> \[InternalId=\d+, Hostname=MAIL\] "
                    rb"Queued mail for delivery\r\n",
    }
    for style, pat in pats.items():
        s = Session(ctx(smtp_style=style))
        s.send(transaction(b"x\r\n"))
        assert re.fullmatch(pat, s.actions[-1]), (style, s.actions[-1])


# --- message capture -----------------------------------------------------------------

def test_durable_comes_immediately_before_the_250():
    s = Session()
    out = s.send(b"EHLO me\r\n" + transaction(b"Subject: hi\r\n\r\nbody\r\n"))
    assert [type(a) for a in out] == [bytes, Durable, bytes]
    assert out[0].endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert out[2].startswith(b"250 2.0.0 Ok: queued as ")


def test_message_event_fields():
    body = (b"Received: from x\r\nSubject: Cheap pills\r\nFrom: \"Bob\" <bob@spam.example>\r\n"
            b"Message-ID: <123@spam.example>\r\n\r\nBuy now\r\n")
    c = ctx(target_host="mx.victim.com", target_port=25, via=("http:proxy:8080", "socks5:mx.victim.com:25"),
            depth=2)
    s = Session(c, banner_host="mx.victim.com")
    s.send(b"EHLO bot.example\r\n", transaction(body, rcpts=[b"a@victim.com", b"b@victim.com"]))
    (m,) = s.messages()
    ev = m.event
    assert isinstance(ev, SmtpMessage)
    assert m.body == body
    assert ev.helo == "bot.example" and ev.mail_from == "spam@example.org"
    assert ev.rcpts == ["a@victim.com", "b@victim.com"]
    assert ev.size == len(body) and ev.sha256 == hashlib.sha256(body).hexdigest()
    assert ev.subject == "Cheap pills" and ev.header_from == '"Bob" <bob@spam.example>'
    assert ev.message_id == "<123@spam.example>"
    assert ev.via == ["http:proxy:8080", "socks5:mx.victim.com:25"]
    assert (ev.target_host, ev.target_port) == ("mx.victim.com", 25)
    assert ev.tls is False and ev.auth_user is None and ev.index == 1
    assert ev.ts == "" and ev.session == "" and ev.src_ip == ""  # common fields are the glue's


def test_dot_unstuffing_byte_for_byte():
    original = (b"Subject: dots\r\n\r\n"
                b".\r\n..\r\n...\r\n.leading\r\n..double\r\nmiddle . dot\r\n"
                b"\x00\x01\xff\xfe 8-bit \xe9t\xe9\r\n"
                b"bare LF line\n.after bare LF\n"
                b"cr alone\r.not a line start\r\n"
                b"\r\n"
                b". \r\n"
                b"end\r\n")
    wire = (b"Subject: dots\r\n\r\n"
            b"..\r\n...\r\n....\r\n..leading\r\n...double\r\nmiddle . dot\r\n"
            b"\x00\x01\xff\xfe 8-bit \xe9t\xe9\r\n"
            b"bare LF line\n..after bare LF\n"
            b"cr alone\r.not a line start\r\n"
            b"\r\n"
            b".. \r\n"
            b"end\r\n")
    whole = Session()
    whole.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + wire + b".\r\n")
    assert whole.messages()[0].body == original
    bytewise = Session()
    stream = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + wire + b".\r\nQUIT\r\n"
    bytewise.send(*[stream[i:i + 1] for i in range(len(stream))])
    assert bytewise.messages()[0].body == original
    assert bytewise.wire.endswith(b"221 2.0.0 Bye\r\n")


@pytest.mark.parametrize("ending, body", [
    (b"\r\n.\r\n", b"line\r\n"),
    (b"\n.\n", b"line\n"),
    (b"\n.\r\n", b"line\n"),
    (b"\r\n.\n", b"line\r\n"),
])
def test_end_of_data_variants(ending, body):
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nline" + ending + b"NOOP\r\n")
    assert s.messages()[0].body == body
    assert s.codes()[-2:] == ["250", "250"]


def test_empty_message():
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\r\n")
    (m,) = s.messages()
    assert m.body == b"" and m.event.size == 0 and m.event.subject is None
    assert m.event.sha256 == hashlib.sha256(b"").hexdigest()


def test_dot_line_split_across_chunks():
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n", b".", b"\r", b"\n")
    assert s.messages()[0].body == b"x\r\n"
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r", b"\n", b".", b".", b"\r\n.\r\n")
    assert s.messages()[1].body == b"x\r\n.\r\n"


def test_oversized_body_is_read_to_the_end_and_refused():
    s = Session(ctx(limits=Limits(message_size=100)))
    big = (b"A" * 50 + b"\r\n") * 10
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", big[:300], big[300:], b".\r\n")
    assert s.messages() == []
    assert s.wire.endswith(b"552 5.3.4 Error: message file too big\r\n")
    (hit,) = s.of(LimitHit)
    assert (hit.limit, hit.value, hit.observed) == ("message_size", 100, len(big))
    s.send(transaction(b"small\r\n"))  # the session goes on, and the transaction was reset
    assert [m.body for m in s.messages()] == [b"small\r\n"]
    assert s.messages()[0].event.index == 1


def test_message_exactly_at_the_limit_is_kept():
    s = Session(ctx(limits=Limits(message_size=10)))
    s.send(transaction(b"12345678\r\n"))
    assert s.messages()[0].body == b"12345678\r\n"


def test_multi_message_session():
    s = Session(ctx(smtp_auth=True))
    bodies = [b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n", b"Subject: one\r\n\r\n1\r\n"]
    s.send(b"EHLO x\r\n")
    for b in bodies:
        s.send(transaction(b))
    s.send(b"QUIT\r\n")
    msgs = s.messages()
    assert [m.body for m in msgs] == bodies
    assert [m.event.index for m in msgs] == [1, 2, 3]
    assert [m.event.subject for m in msgs] == ["one", "two", "one"]
    qids = [ln for ln in s.wire.split(CRLF) if b"queued as" in ln]
    assert len(set(qids)) == 3  # same body, other index: another id
    again = Session()
    again.send(b"EHLO x\r\n" + transaction(bodies[0]))
    assert [ln for ln in again.wire.split(CRLF) if b"queued as" in ln] == qids[:1]  # deterministic


def test_messages_per_session_limit():
    s = Session(ctx(limits=Limits(messages_per_session=2)))
    s.send(transaction(b"1\r\n") + transaction(b"2\r\n") + transaction(b"3\r\n") + b"NOOP\r\n")
    assert len(s.messages()) == 2
    assert s.wire.endswith(b"421 4.7.0 mail.example.net Error: too many messages in one session\r\n")
    (hit,) = s.of(LimitHit)
    assert (hit.limit, hit.value, hit.observed) == ("messages_per_session", 2, 3)
    assert s.actions[-1] == Close(reason="limit")
    assert s.send(b"NOOP\r\n") == [] and s.eof() == []


# --- headers --------------------------------------------------------------------------

def test_headers_rfc2047_and_folding():
    # RFC 2047 6.2: the white space between two adjacent encoded words is dropped
    raw = (b"subject: =?UTF-8?B?0J/RgNC40LLQtdGC?=\r\n =?iso-8859-1?q?caf=E9?= ok\r\n"
           b"FROM: =?utf-8?q?J=C3=BCrgen?= <j@x.example>\r\n"
           b"Message-Id:\r\n\t<abc@x>\r\n\r\nSubject: not a header\r\n")
    assert parse_headers(raw, 65536) == ["Приветcafé ok", "Jürgen <j@x.example>", "<abc@x>"]


def test_headers_best_effort_on_garbage():
    raw = (b"Subject: =?x-unknown-charset?q?abc?= =?utf-8?b?!!!?=\r\n"
           b"From: \xff\xfe raw 8bit\r\nSubject: second\r\n\r\n")
    subject, hfrom, mid = parse_headers(raw, 65536)
    assert subject is not None and "second" not in subject
    assert hfrom == "\ufffd\ufffd raw 8bit" and mid is None


def test_headers_stop_at_header_bytes_and_cap_998():
    raw = b"X-Pad: " + b"p" * 100 + b"\r\nSubject: late\r\n\r\n"
    assert parse_headers(raw, 50) == [None, None, None]
    assert parse_headers(raw, 1000)[0] == "late"
    long = parse_headers(b"Subject: " + b"s" * 5000 + b"\r\n\r\n", 65536)[0]
    assert long == "s" * 998


def test_headers_bare_lf_and_no_body():
    assert parse_headers(b"Subject: lf\nFrom: f\n", 65536)[:2] == ["lf", "f"]
    assert parse_headers(b"\r\nSubject: body\r\n", 65536) == [None, None, None]
    assert parse_headers(b" continuation first\r\nnot a header\r\n", 65536) == [None, None, None]


def test_header_bytes_limit_applies_to_captured_message():
    s = Session(ctx(limits=Limits(header_bytes=20)))
    s.send(transaction(b"X-Long: " + b"y" * 50 + b"\r\nSubject: hidden\r\n\r\nbody\r\n"))
    assert s.messages()[0].event.subject is None


# --- simple commands ----------------------------------------------------------------------

def test_rset_noop_vrfy_help_quit():
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\nRSET\r\nRCPT TO:<c@d>\r\nNOOP\r\nVRFY root\r\nVRFY\r\nHELP\r\nQUIT\r\nNOOP\r\n")
    assert s.wire == (
        b"220 mail.example.net ESMTP Postfix (Debian/GNU)\r\n"
        b"250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n"
        b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
        b"501 5.5.4 Syntax: VRFY address\r\n"
        b"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT\r\n"
        b"221 2.0.0 Bye\r\n")
    assert s.actions[-1] == Close(reason="client_eof")
    assert s.send(b"NOOP\r\n") == []


@pytest.mark.parametrize("style, text", [
    ("exim", b"214-2.0.0 Commands supported:\r\n214 2.0.0 AUTH STARTTLS"),
    ("sendmail", b"214-2.0.0 This is sendmail version 8.17.1\r\n"),
    ("exchange", b"214-This server supports the following commands:\r\n214 HELO"),
])
def test_help_per_style_is_one_multiline_reply(style, text):
    s = Session(ctx(smtp_style=style))
    (reply,) = s.send(b"HELP\r\n")
    assert reply.startswith(text) and reply.endswith(CRLF)
    lines = reply.split(CRLF)[:-1]
    assert all(ln[3:4] == b"-" for ln in lines[:-1]) and lines[-1][3:4] == b" "


@pytest.mark.parametrize("style, bye", [
    ("postfix", b"221 2.0.0 Bye\r\n"),
    ("exim", b"221 2.0.0 mail.example.net closing connection\r\n"),
    ("sendmail", b"221 2.0.0 mail.example.net closing connection\r\n"),
    ("exchange", b"221 2.0.0 Service closing transmission channel\r\n"),
])
def test_quit_per_style(style, bye):
    s = Session(ctx(smtp_style=style))
    assert s.send(b"quit\r\n") == [bye, Close(reason="client_eof")]


def test_verbs_are_case_insensitive_and_bare_lf_works():
    s = Session()
    s.send(b"eHlO x\nmail from:<a@b>\nrcpt to:<c@d>\ndata\nhi\n.\nnoop\n")
    assert s.codes() == ["220", "250", "250", "250", "354", "250", "250"]
    assert s.messages()[0].body == b"hi\n"


def test_unknown_and_unimplemented_commands():
    s = Session()
    s.send(b"FOO bar\r\nEXPN list\r\nBDAT 100\r\n\r\nNOOP\r\n")
    assert s.wire == (
        b"220 mail.example.net ESMTP Postfix (Debian/GNU)\r\n"
        b"500 5.5.2 Error: command not recognized\r\n"
        b"502 5.5.1 Error: command not implemented\r\n"
        b"502 5.5.1 Error: command not implemented\r\n"
        b"500 5.5.2 Error: bad syntax\r\n"
        b"250 2.0.0 Ok\r\n")
    errs = s.of(ProtocolError)
    assert [e.kind for e in errs] == ["smtp.bad_command"] * 4
    assert base64.b64decode(errs[0].data_b64) == b"FOO bar"


def test_too_many_bad_commands_in_a_row_closes():
    s = Session()
    s.send(b"BAD\r\n" * 9 + b"NOOP\r\n")  # a good command resets the count
    assert Close not in map(type, s.actions)
    s.send(b"BAD\r\n" * 10 + b"NOOP\r\n")
    assert s.wire.endswith(b"500 5.5.2 Error: command not recognized\r\n"
                           b"421 4.7.0 mail.example.net Error: too many errors\r\n")
    assert s.actions[-1] == Close(reason="protocol")
    assert s.errors()[-1] == "smtp.too_many_errors"
    assert s.wire.count(b"\r\n500 ") == 19


def test_line_too_long():
    s = Session(ctx(limits=Limits(line_length=64)))
    s.send(b"NOOP " + b"x" * 100 + b"\r\nNOOP\r\n")
    s.send(b"HELO " + b"y" * 70, b"z" * 70, b"\r\nHELO ok\r\n")  # overlong, spread over chunks
    s.send(b"NOOP " + b"n" * 59 + b"\r\n")  # exactly at the limit
    assert s.codes() == ["220", "500", "250", "500", "250", "250"]
    assert s.wire.count(b"500 5.5.0 Error: line too long\r\n") == 2
    hits = s.of(LimitHit)
    assert [h.limit for h in hits] == ["line_length", "line_length"]
    assert hits[0].observed == 105 and hits[0].value == 64
    assert s.errors() == ["smtp.line_too_long"] * 2


def test_whole_pipelined_session_in_one_receive():
    stream = (b"EHLO bulk.example\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@v>\r\nRCPT TO:<b@v>\r\nDATA\r\n"
              b"Subject: 1\r\n\r\none\r\n.\r\nMAIL FROM:<s@x>\r\nRCPT TO:<c@v>\r\nDATA\r\n"
              b"Subject: 2\r\n\r\ntwo\r\n.\r\nRSET\r\nQUIT\r\n")
    s = Session(ctx(tls_available=True))
    out = s.send(stream)
    assert [type(a) for a in out] == [bytes, Durable, bytes, Durable, bytes, Close]
    assert s.codes() == ["220", "250", "250", "250", "250", "354", "250", "250", "250", "354", "250", "250",
                         "221"]
    assert [m.event.rcpts for m in s.messages()] == [["a@v", "b@v"], ["c@v"]]


# --- AUTH ----------------------------------------------------------------------------------

def b64(s: bytes) -> bytes:
    return base64.b64encode(s)


def test_auth_plain_initial_response():
    c = ctx(target_host="mx.victim.com", target_port=587)
    s = Session(c)
    s.send(b"EHLO x\r\nAUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n" + transaction(b"m\r\n"))
    assert b"235 2.7.0 Authentication successful\r\n" in s.wire
    (a,) = s.of(SmtpAuth)
    assert (a.mechanism, a.username, a.password, a.outcome) == ("PLAIN", "alice", "s3cret", "accepted")
    assert (a.target_host, a.target_port) == ("mx.victim.com", 587)
    assert s.messages()[0].event.auth_user == "alice"


def test_auth_plain_continuation_with_authzid():
    s = Session()
    s.send(b"auth plain\r\n")
    assert s.actions[-1] == b"334 \r\n"
    s.send(b64(b"admin\0bob\0pw") + b"\r\n")
    (a,) = s.of(SmtpAuth)
    assert (a.username, a.password) == ("bob", "pw")


def test_auth_login_two_prompts():
    s = Session()
    s.send(b"AUTH LOGIN\r\n")
    s.send(b64(b"carol@x.example") + b"\r\n")
    s.send(b64(b"hunter2") + b"\r\n")
    assert s.wire.split(CRLF)[1:4] == [b"334 VXNlcm5hbWU6", b"334 UGFzc3dvcmQ6",
                                       b"235 2.7.0 Authentication successful"]
    (a,) = s.of(SmtpAuth)
    assert (a.mechanism, a.username, a.password) == ("LOGIN", "carol@x.example", "hunter2")


def test_auth_login_initial_username_pipelined():
    s = Session()
    s.send(b"AUTH LOGIN " + b64(b"dave") + b"\r\n" + b64(b"pw") + b"\r\n")
    assert s.wire.split(CRLF)[1:3] == [b"334 UGFzc3dvcmQ6", b"235 2.7.0 Authentication successful"]
    assert s.of(SmtpAuth)[0].username == "dave"


@pytest.mark.parametrize("dialogue", [
    [b"AUTH LOGIN\r\n", b"*\r\n"],
    [b"AUTH LOGIN\r\n", b"ZGF2ZQ==\r\n", b"*\r\n"],
    [b"AUTH PLAIN\r\n", b"*\r\n"],
])
def test_auth_cancel(dialogue):
    s = Session()
    s.send(*dialogue)
    assert s.wire.endswith(b"501 5.7.0 Authentication aborted\r\n")
    assert s.of(SmtpAuth) == []
    s.send(b"NOOP\r\n")  # back in command mode
    assert s.wire.endswith(b"250 2.0.0 Ok\r\n")


@pytest.mark.parametrize("dialogue, mech", [
    ([b"AUTH PLAIN !!notbase64\r\n"], "PLAIN"),
    ([b"AUTH PLAIN\r\n", b"YWJj\r\n"], "PLAIN"),  # valid base64, no NULs
    ([b"AUTH PLAIN =\r\n"], "PLAIN"),
    ([b"AUTH LOGIN\r\n", b"a=b\r\n"], "LOGIN"),
    ([b"AUTH LOGIN\r\n", b"ZGF2ZQ==\r\n", b"%%%\r\n"], "LOGIN"),
])
def test_auth_malformed(dialogue, mech):
    s = Session()
    s.send(*dialogue)
    assert s.wire.endswith(b"501 5.5.2 Cannot decode response\r\n")
    (a,) = s.of(SmtpAuth)
    assert (a.mechanism, a.outcome, a.password) == (mech, "malformed", None)
    assert s.errors() == ["smtp.auth_malformed"]
    s.send(b"NOOP\r\n")
    assert s.wire.endswith(b"250 2.0.0 Ok\r\n")


def test_auth_refusals():
    s = Session()
    s.send(b"AUTH\r\nAUTH CRAM-MD5\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN " + b64(b"\0u\0p") + b"\r\nRSET\r\n"
           b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\nAUTH LOGIN\r\n")
    assert s.codes() == ["220", "501", "504", "250", "503", "250", "235", "503"]
    assert b"504 5.5.4 Unrecognized authentication type\r\n" in s.wire
    assert b"503 5.5.1 Error: MAIL transaction in progress\r\n" in s.wire
    assert s.wire.endswith(b"503 5.5.1 Error: already authenticated\r\n")
    assert [(a.mechanism, a.outcome) for a in s.of(SmtpAuth)] == [("CRAM-MD5", "rejected"), ("PLAIN", "accepted")]


def test_auth_not_enabled():
    s = Session(ctx(smtp_auth=False))
    s.send(b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    assert s.wire.endswith(b"503 5.5.1 Error: authentication not enabled\r\n")
    assert s.of(SmtpAuth) == []


def test_submission_requires_auth_before_mail():
    s = Session(submission=True)
    s.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN " + b64(b"\0u\0p") + b"\r\n" + transaction(b"m\r\n"))
    assert s.codes() == ["220", "250", "530", "235", "250", "250", "354", "250"]
    assert b"530 5.7.0 Authentication required\r\n" in s.wire
    assert s.messages()[0].event.auth_user == "u"
    relay = Session(ctx(smtp_auth=False), submission=True)  # nothing to authenticate with: relay anyway
    relay.send(transaction(b"m\r\n"))
    assert len(relay.messages()) == 1


# --- STARTTLS --------------------------------------------------------------------------------

def test_starttls_flow():
    c = ctx(tls_available=True, target_host="mx.victim.com", target_port=25)
    s = Session(c)
    out = s.send(b"EHLO x\r\nAUTH PLAIN " + b64(b"\0u\0p") + b"\r\nSTARTTLS\r\n")
    assert out[-2].endswith(b"235 2.7.0 Authentication successful\r\n220 2.0.0 Ready to start TLS\r\n")
    assert out[-1] == StartTLS()
    assert s.server.tls_established() == [SmtpTls(outcome="established", target_host="mx.victim.com",
                                                 target_port=25)]
    (reply,) = s.send(b"EHLO x\r\n")
    assert b"STARTTLS" not in reply and b"AUTH PLAIN LOGIN" in reply
    s.send(b"STARTTLS\r\n")
    assert s.wire.endswith(b"554 5.5.1 Error: TLS already active\r\n")
    s.send(b"AUTH PLAIN " + b64(b"\0v\0q") + b"\r\n")  # earlier AUTH was forgotten (RFC 3207)
    assert s.wire.endswith(b"235 2.7.0 Authentication successful\r\n")
    s.send(transaction(b"secret\r\n"))
    ev = s.messages()[0].event
    assert ev.tls is True and ev.auth_user == "v" and ev.helo == "x"


def test_starttls_forgets_helo():
    s = Session(ctx(tls_available=True))
    s.send(b"EHLO before\r\nSTARTTLS\r\n")
    s.send(transaction(b"m\r\n"))
    assert s.messages()[0].event.helo is None


def test_starttls_not_offered():
    for c in (ctx(tls_available=False), ctx(smtp_tls=False, tls_available=True)):
        s = Session(c)
        s.send(b"EHLO x\r\nSTARTTLS\r\n")
        assert s.wire.endswith(b"502 5.5.1 Error: command not implemented\r\n")
        assert s.of(StartTLS) == [] and s.errors() == ["smtp.bad_command"]


def test_starttls_with_argument():
    s = Session(ctx(tls_available=True))
    s.send(b"STARTTLS now\r\n")
    assert s.wire.endswith(b"501 5.5.4 Syntax: STARTTLS\r\n") and s.of(StartTLS) == []


def test_starttls_injection_is_discarded():
    s = Session(ctx(tls_available=True))
    out = s.send(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\nRCPT TO:<v@x>\r\n")
    (err,) = s.of(ProtocolError)
    assert err.kind == "smtp.starttls_injection"
    assert base64.b64decode(err.data_b64) == b"MAIL FROM:<injected@x>\r\nRCPT TO:<v@x>\r\n"
    assert out[-1] == StartTLS() and out[-2].endswith(b"220 2.0.0 Ready to start TLS\r\n")
    assert b"2.1.0" not in s.wire
    s.send(b"RCPT TO:<v@x>\r\n")  # the injected MAIL never happened
    assert s.wire.endswith(b"503 5.5.1 Error: need MAIL command\r\n")


def test_tls_failed():
    s = Session(ctx(tls_available=True))
    s.send(b"STARTTLS\r\n")
    assert s.server.tls_failed("bad record mac") == [
        SmtpTls(outcome="failed", detail="bad record mac"), Close(reason="protocol")]
    assert s.send(b"NOOP\r\n") == [] and s.eof() == []


def test_implicit_tls_marks_messages_and_hides_starttls():
    s = Session(ctx(tls_available=True), tls=True)
    (reply,) = s.send(b"EHLO x\r\n")
    assert b"STARTTLS" not in reply
    s.send(transaction(b"m\r\n"))
    assert s.messages()[0].event.tls is True


# --- eof ----------------------------------------------------------------------------------------

def test_eof_mid_data_is_not_a_message():
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: cut\r\n\r\npartial bo")
    out = s.eof()
    assert s.messages() == []
    (err,) = out
    assert err.kind == "smtp.truncated_data" and "26 bytes" in err.detail
    assert base64.b64decode(err.data_b64) == b"Subject: cut\r\n\r\npartial bo"
    assert s.eof() == [] and s.send(b".\r\n") == []


def test_eof_with_partial_command_and_clean_eof():
    s = Session()
    s.send(b"NOOP\r\nQUI")
    assert [e.kind for e in s.eof()] == ["smtp.truncated_line"]
    clean = Session()
    clean.send(b"NOOP\r\n")
    assert clean.eof() == []


def test_eof_after_pending_data_in_http_post_body_case():
    # an HTTP POST body read as SMTP: no banner, whole dialogue, then the body ends
    s = Session(greet=False)
    s.send(b"HELO x\r\n" + transaction(b"posted\r\n") + b"QUIT\r\n")
    assert s.eof() == []
    assert [m.body for m in s.messages()] == [b"posted\r\n"]


# --- real clients ---------------------------------------------------------------------------------

def smtplib_quote(msg: bytes) -> bytes:
    """What smtplib.SMTP.data() puts on the wire for a bytes message."""
    import re
    q = re.sub(rb"(?m)^\.", b"..", msg)
    if q[-2:] != CRLF:
        q += CRLF
    return q + b".\r\n"


def test_smtplib_dialogue():
    """The exact bytes of smtplib's login() + sendmail() + quit() (Python 3.11)."""
    msg = (b"From: a@example.org\r\nTo: b@victim.example\r\nSubject: test\r\n\r\n"
           b".hidden\r\nbody\r\n..\r\nno final newline")
    s = Session(ctx(tls_available=False))
    s.send(b"ehlo client.local\r\n")
    features = {}
    for line in s.actions[-1].split(CRLF)[1:-1]:  # smtplib.SMTP.ehlo's parser, simplified
        kw, _, params = line[4:].decode().partition(" ")
        features[kw.lower()] = params
    assert features == {"pipelining": "", "size": "10485760", "vrfy": "", "etrn": "", "auth": "PLAIN LOGIN",
                        "enhancedstatuscodes": "", "8bitmime": "", "dsn": "", "smtputf8": ""}
    s.send(b"AUTH PLAIN " + b64(b"\0user\0pass") + b"\r\n")  # smtplib prefers PLAIN of PLAIN/LOGIN
    s.send(b"mail FROM:<a@example.org> size=%d\r\n" % len(msg))
    s.send(b"rcpt TO:<b@victim.example>\r\n")
    s.send(b"data\r\n")
    s.send(smtplib_quote(msg))
    s.send(b"quit\r\n")
    assert s.codes() == ["220", "250", "235", "250", "250", "354", "250", "221"]
    (m,) = s.messages()
    assert m.body == msg + CRLF  # smtplib appends CRLF when the message lacks one
    assert m.event.subject == "test" and m.event.auth_user == "user" and m.event.helo == "client.local"


def test_smtplib_login_fallback_bytes():
    # smtplib.login with AUTH LOGIN: initial response carries the username
    s = Session()
    s.send(b"AUTH LOGIN " + b64(b"user") + b"\r\n")
    assert s.actions[-1] == b"334 UGFzc3dvcmQ6\r\n"
    s.send(b64(b"pass") + b"\r\n")
    assert s.actions[-1] == b"235 2.7.0 Authentication successful\r\n"


def test_sendmail_echo_cannot_break_lines():
    s = Session(ctx(smtp_style="sendmail"))
    s.send(b"MAIL FROM:<a\rb\x00@c>\r\n")
    assert s.wire.split(CRLF)[1] == b"250 2.1.0 <a?b?@c>... Sender ok"


def test_queue_ids_differ_between_connections_for_the_same_message():
    """The same spam from two connections gets two queue ids (a repeated id would give us away),
    and one connection's id is stable (deterministic from the session)."""
    from spampots.protocols.smtp import SmtpServer
    from spampots.protocols.base import Context
    dialogue = (b"EHLO x\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<v@victim.example>\r\nDATA\r\n"
                b"Subject: same\r\n\r\nsame body\r\n.\r\n")

    def qid(port: int) -> bytes:
        h = SmtpServer(Context(src_ip="198.51.100.9", src_port=port, now="Sun, 29 Nov 2026 10:00:00 +0000"))
        h.start()
        last = [a for a in h.receive(dialogue) if isinstance(a, bytes)][-1]  # the reply to DATA's end
        assert last.startswith(b"250 ")
        return last

    assert qid(40001) != qid(40002)
    assert qid(40001) == qid(40001)


def test_banners_are_each_sessions_own_though_cached() -> None:
    # Banners are built once per name, date and (where shown) address: a new date, name or
    # style must still show, and a tunnel's far end greets with the target's name.
    def banner(**kw) -> bytes:
        persona = Persona(smtp_style=kw.pop("style", "exim"), hostname="mx.a.test")
        return SmtpServer(ctx(persona=persona), **kw).start()[0]

    one = banner(now="Sun, 06 Dec 2026 09:00:00 +0000")
    assert one == b"220 mx.a.test ESMTP Exim 4.96 Sun, 06 Dec 2026 09:00:00 +0000\r\n"
    assert banner(now="Sun, 06 Dec 2026 09:00:01 +0000").endswith(b"09:00:01 +0000\r\n")
    assert banner(now="Sun, 06 Dec 2026 09:00:00 +0000", banner_host="mx.b{ip}.test") == \
        b"220 mx.b{ip}.test ESMTP Exim 4.96 Sun, 06 Dec 2026 09:00:00 +0000\r\n"
    assert banner(style="postfix", now="x") == b"220 mx.a.test ESMTP Postfix (Debian/GNU)\r\n"
    assert banner(now="Sun, 06 Dec 2026 09:00:00 +0000") == one
