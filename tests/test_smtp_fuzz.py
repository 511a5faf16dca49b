"""SMTP server role under hypothesis: arbitrary input never escapes as an exception,
and DATA survives any chunking byte for byte."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from spampots.events import Event, encode
from spampots.protocols.base import Close, Context, Durable, Limits, Persona, StartTLS
from spampots.protocols.smtp import SmtpServer

FUZZ = settings(max_examples=300, deadline=None)
CRLF = b"\r\n"

# pieces that steer random input into the interesting states
TOKENS = [
    b"EHLO x\r\n", b"HELO y\n", b"MAIL FROM:<a@b> SIZE=10\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<c@d>\r\n",
    b"DATA\r\n", b".\r\n", b"..\r\n", b"\r\n.\r\n", b"\n.\n", b".", b"\r", b"\n", b"RSET\r\n", b"NOOP\r\n",
    b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"AUTH PLAIN AHUAcA==\r\n", b"dXNlcg==\r\n", b"*\r\n", b"!!\r\n",
    b"STARTTLS\r\n", b"QUIT\r\n", b"VRFY u\r\n", b"HELP\r\n", b"BDAT 5\r\n", b"Subject: =?utf-8?b?w6k=?=\r\n",
    b"\xff\xfe\x00", b"x" * 70,
]

chunked_stream = st.lists(
    st.one_of(st.binary(max_size=64), st.sampled_from(TOKENS)), max_size=40
)

contexts = st.builds(
    Context,
    persona=st.builds(
        Persona,
        smtp_style=st.sampled_from(["postfix", "exim", "sendmail", "exchange", "bogus"]),
        smtp_tls=st.booleans(),
        smtp_auth=st.booleans(),
    ),
    limits=st.builds(
        Limits,
        line_length=st.integers(8, 200),
        header_bytes=st.integers(0, 300),
        message_size=st.integers(0, 300),
        recipients=st.integers(1, 5),
        messages_per_session=st.integers(1, 5),
    ),
    tls_available=st.booleans(),
    target_host=st.one_of(st.none(), st.just("mx.victim.example")),
)


def check(actions: list, closed: list[bool]) -> None:
    for a in actions:
        assert not closed[0], "an action after Close"
        if isinstance(a, Durable):
            assert isinstance(a.body, bytes)
            encode(a.event)
        elif isinstance(a, Close):
            closed[0] = True
        elif isinstance(a, bytes):
            assert a.endswith(CRLF)
        elif not isinstance(a, StartTLS):
            assert isinstance(a, Event), a
            encode(a)  # attacker strings must still make valid JSON


@FUZZ
@given(ctx=contexts, chunks=chunked_stream, submission=st.booleans(), greet=st.booleans(),
       tls_outcome=st.sampled_from([None, "ok", "fail"]))
def test_arbitrary_bytes_never_raise(ctx, chunks, submission, greet, tls_outcome):
    server = SmtpServer(ctx, submission=submission, greet=greet, banner_host="mx.example")
    closed = [False]
    check(server.start(), closed)
    for chunk in chunks:
        out = server.receive(chunk)
        check(out, closed)
        if any(isinstance(a, StartTLS) for a in out) and tls_outcome:
            check(server.tls_established() if tls_outcome == "ok" else server.tls_failed("x"), closed)
    check(server.eof(), closed)
    assert server.eof() == [] and server.receive(b"NOOP\r\n") == []


def smtplib_quote(msg: bytes) -> bytes:
    """smtplib.SMTP.data() for bytes: stuff a dot at every line start (after any LF),
    add CRLF when the message does not end with one, then the end marker."""
    q = re.sub(rb"(?m)^\.", b"..", msg)
    if q[-2:] != CRLF:
        q += CRLF
    return q + b".\r\n"


body_piece = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b".", b"..", b"...", b".\r\n", b"..\r\n", b"\r\n", b"\n", b"\r", b"\r\n.\r\n",
                     b"\n.\n", b"\n.\r\n", b"\r\n..\r\n", b"\x00", b"\xff\x80"]),
)
bodies = st.lists(st.lists(body_piece, max_size=20).map(b"".join), min_size=1, max_size=5)


@FUZZ
@given(bodies=bodies, cuts=st.lists(st.integers(1, 50), max_size=200), rcpts=st.integers(1, 3))
def test_dot_stuffed_bodies_come_back_identical(bodies, cuts, rcpts):
    """The Durable body is the original message, with CRLF appended when the original
    does not end with CRLF (smtplib adds it; the CRLF before the final dot belongs to
    the last line)."""
    stream = b"EHLO fuzz.example\r\n"
    for body in bodies:
        stream += b"MAIL FROM:<s@x> SIZE=%d\r\n" % len(body)
        stream += b"".join(b"RCPT TO:<r%d@v>\r\n" % i for i in range(rcpts))
        stream += b"DATA\r\n" + smtplib_quote(body)
    stream += b"QUIT\r\n"
    server = SmtpServer(Context())
    actions = server.start()
    pos = 0
    for cut in cuts:
        actions += server.receive(stream[pos:pos + cut])
        pos += cut
    actions += server.receive(stream[pos:])
    actions += server.eof()
    got = [a for a in actions if isinstance(a, Durable)]
    expected = [b if b.endswith(CRLF) else b + CRLF for b in bodies]
    assert [d.body for d in got] == expected
    assert [d.event.index for d in got] == list(range(1, len(bodies) + 1))
    assert all(d.event.size == len(d.body) and len(d.event.rcpts) == rcpts for d in got)
    assert actions[-1] == Close(reason="client_eof")
    assert not any(isinstance(a, Event) for a in actions)  # no errors, no limits on a clean dialogue
