"""The hot-path shortcuts of the capture path do exactly what the general code does.

SMTP answers a whole command line, or a whole message body read at once, without
its buffer; the sniffer hands SMTP verbs to the greeter without sniffing; a
session's Context is built without dataclasses.replace; event timestamps come
from a per-second cache; the recorder hands a loop pass's items over at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import socket
import time
from pathlib import Path

from hypothesis import given, settings, strategies as st

from spampots.events import SessionClose, SessionOpen, SmtpMessage, encode
from spampots.protocols.base import Context, Durable, Limits, Persona
from spampots.protocols.dispatch import _SMTP_STARTS, Sniffer
from spampots.protocols.smtp import SmtpServer
from spampots.protocols.sniff import sniff
from spampots.store import Recorder, iter_events

LINES = [
    b"EHLO x\r\n", b"HELO y\n", b"MAIL FROM:<a@b> SIZE=10\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<c@d>\r\n",
    b"RCPT TO: <e@f> NOTIFY=NEVER\r\n", b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"VRFY u\r\n", b"HELP\r\n",
    b"AUTH PLAIN AHUAcA==\r\n", b"AUTH LOGIN\r\n", b"dXNlcg==\r\n", b"STARTTLS\r\n", b"BDAT 5\r\n", b"\r\n",
    b"x" * 70 + b"\r\n", b"QUIT\r\n", b"mail from:<\xff>\r\n",
]
BODIES = [
    b"Subject: hi\r\n\r\nbody\r\n.\r\n", b".leading dot\r\n.\r\n", b"a\r\n..stuffed\r\n.\r\n", b"\n.\r\n",
    b"bare lf\n.\n", b"x" * 120 + b"\r\n.\r\n", b"early\r\n.\r\nMAIL FROM:<s@m>\r\n", b"no end yet\r\n",
]

sessions = st.lists(st.one_of(st.sampled_from(LINES), st.sampled_from(BODIES)), max_size=30)
contexts = st.builds(
    Context,
    persona=st.builds(Persona, smtp_style=st.sampled_from(["postfix", "exim", "sendmail", "exchange"]),
                      smtp_tls=st.booleans()),
    limits=st.builds(Limits, line_length=st.integers(8, 100), message_size=st.integers(0, 200),
                     recipients=st.integers(1, 3), messages_per_session=st.integers(1, 4)),
    tls_available=st.booleans(),
)


def _flat(actions: list) -> list:
    """Actions in a comparable form: reply bytes joined, events encoded."""
    out: list = []
    for a in actions:
        if isinstance(a, bytes):
            if out and isinstance(out[-1], bytes):
                out[-1] += a
            else:
                out.append(a)
        elif isinstance(a, Durable):
            out.append(("durable", encode(a.event), a.body))
        elif hasattr(a, "__struct_fields__"):
            out.append(encode(a))
        else:
            out.append(a)
    return out


@settings(max_examples=300, deadline=None)
@given(contexts, sessions, st.booleans())
def test_smtp_fast_paths_equal_the_general_path(ctx: Context, chunks: list[bytes], submission: bool) -> None:
    whole = SmtpServer(ctx, submission=submission, now="Sun, 29 Nov 2026 09:00:00 +0000")
    slow = SmtpServer(ctx, submission=submission, now="Sun, 29 Nov 2026 09:00:00 +0000")
    got, want = whole.start(), slow.start()
    for chunk in chunks:  # one read per line or body: the fast paths
        got += whole.receive(chunk)
    for chunk in chunks:  # first byte alone, then the rest: the rest meets a non-empty buffer
        want += slow.receive(chunk[:1])  # (byte by byte would differ in an over-long line's
        want += slow.receive(chunk[1:])  # "observed", which counts what was read when it was cut)
    got += whole.eof()
    want += slow.eof()
    assert _flat(got) == _flat(want)


def test_smtp_fast_path_body_is_the_bytes_sent() -> None:
    s = SmtpServer(Context())
    s.start()
    for line in (b"HELO x\r\n", b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n"):
        s.receive(line)
    body = b"Subject: s\r\n\r\n" + b"line\r\n" * 500
    durable = [a for a in s.receive(body + b".\r\n") if isinstance(a, Durable)]
    assert len(durable) == 1 and durable[0].body == body and durable[0].event.rcpts == ["c@d"]


def test_sniffer_shortcut_only_takes_what_sniff_calls_smtp() -> None:
    assert len(_SMTP_STARTS) == 12 * 3  # the four-letter verbs, each with " ", CR, LF
    for start in _SMTP_STARTS:
        for tail in (b"", b"x.example\r\n", b"\r\n"):
            assert sniff(start + tail) == "smtp"
            assert sniff(start.lower() + tail) == "smtp"
    greeter = SmtpServer(Context(), greet=False)
    sniffer = Sniffer(Context(), greeter=greeter)
    assert sniffer.receive(b"ehlo me\r\n")[0].startswith(b"250")
    assert sniffer.delegate is greeter


def test_context_for_session_equals_replace() -> None:
    base = Context(listener_port=25, persona=Persona(smtp_style="exim"), limits=Limits(recipients=3), depth=2,
                   via=("socks5:a:25",), target_host="mx.example", target_port=25, tls_available=True)
    fast = base.for_session("192.0.2.7", 4242, "198.51.100.1", "Sun, 29 Nov 2026 09:00:00 +0000")
    slow = dataclasses.replace(base, src_ip="192.0.2.7", src_port=4242, local_ip="198.51.100.1",
                               now="Sun, 29 Nov 2026 09:00:00 +0000", budget=fast.budget)
    assert fast == slow
    # each session gets its own account on the listener's memory budget
    assert fast.budget is not base.budget and fast.budget.pool is base.budget.pool
    # every field is carried: a new Context field must be added to for_session too
    assert [f.name for f in dataclasses.fields(Context)][-1] == "budget" and len(dataclasses.fields(Context)) == 13


def test_now_iso_is_the_documented_format() -> None:
    import datetime as dt
    from spampots.events import now_iso
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    stamps = []
    for _ in range(2000):
        stamps.append(now_iso())
    # what the uncached form (datetime) gives, to the microsecond format
    ref = dt.datetime.fromisoformat(stamps[-1].replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert ref == stamps[-1]
    assert all(iso.match(s) for s in stamps)
    assert stamps == sorted(stamps)  # monotone across the cached second's change
    now = time.strftime("%Y-%m-%dT%H:%M", time.gmtime())
    assert stamps[-1][:16] in (now, time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 60)))


def test_recorder_hands_off_a_loop_pass_at_once_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        rec = Recorder(tmp_path, "t")
        rec.start(asyncio.get_running_loop())
        futs = []
        for i in range(50):  # one loop pass: 50 sessions each open and send a message
            rec.emit(SessionOpen(session=f"s{i}"))
            futs.append(rec.emit_durable(SmtpMessage(session=f"s{i}", index=i), b"body %d\r\n" % i))
        assert rec.stats.queued == 100
        await asyncio.gather(*futs)
        assert rec.stats.batches <= 2  # all of the pass in one commit (two if the writer was mid-tick)
        rec.emit(SessionClose(session="last"))
        rec.flush_sync(timeout=5)  # blocking on the loop's own thread: handed off first, no deadlock
        rec.emit(SessionOpen(session="before-close"))
        await rec.close()

    asyncio.run(main())
    sessions = [e.session for e in iter_events(tmp_path)]
    expect = [s for i in range(50) for s in (f"s{i}", f"s{i}")] + ["last", "before-close"]
    assert sessions == expect


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not re.search(rb"(^|\n)\d{3} [^\n]*\n$", data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_half_close_after_data_still_gets_its_250(sensor) -> None:
    """The client sends the end of DATA and shuts its side at once: reading is not paused
    while the message is synced, so the FIN arrives meanwhile; the 250 must still go out."""
    body = b"Subject: half-close\r\n\r\n" + b"half-close line\r\n" * 50
    with socket.create_connection(("127.0.0.1", sensor.port(25)), timeout=10) as s:
        assert _read_reply(s).startswith(b"220")
        for cmd in (b"HELO hc.example\r\n", b"MAIL FROM:<a@hc.example>\r\n", b"RCPT TO:<b@hc.example>\r\n",
                    b"DATA\r\n"):
            s.sendall(cmd)
            assert _read_reply(s)[:1] in (b"2", b"3")
        s.sendall(body + b".\r\n")
        s.shutdown(socket.SHUT_WR)
        reply = _read_reply(s)
        assert reply.startswith(b"250"), reply
        assert s.recv(4096) == b""  # then the sensor closes
    sha = hashlib.sha256(body).hexdigest()
    assert any(e.sha256 == sha for e in sensor.events("spampots.smtp.message", wait_for=1))


def test_pipelined_commands_during_the_sync_are_answered_in_order(sensor) -> None:
    """Bytes sent while the message is being synced wait (reading pauses only then)."""
    with socket.create_connection(("127.0.0.1", sensor.port(25)), timeout=10) as s:
        assert _read_reply(s).startswith(b"220")
        s.sendall(b"EHLO p.example\r\n")
        _read_reply(s)
        s.sendall(b"MAIL FROM:<a@p.example>\r\nRCPT TO:<b@p.example>\r\nDATA\r\n")
        got = b""
        while got.count(b"\r\n") < 3:
            got += s.recv(4096)
        s.sendall(b"Subject: pipelined\r\n\r\nx\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
        rest = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
    codes = [line[:3] for line in rest.split(b"\r\n") if line]
    assert codes == [b"250", b"250", b"250", b"221"], rest
