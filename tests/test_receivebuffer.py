"""The shared line splitter of SMTP and HTTP (protocols/receivebuffer.py), without sockets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spampots.protocols.receivebuffer import LineTooLong, ReceiveBuffer


def lines_of(chunks: list[bytes], limit: int, skip: bool = True) -> list[object]:
    buf = ReceiveBuffer()
    out: list[object] = []
    for chunk in chunks:
        buf += chunk
        while True:
            got = buf.next_line(limit, skip_overlong=skip)
            if got is None:
                break
            out.append(got)
            if isinstance(got, LineTooLong) and not skip:
                return out  # the caller ends the session
    return out


def test_lines_crlf_and_lf_and_partial() -> None:
    buf = ReceiveBuffer()
    buf += b"HELO a\r\nNOOP\nQU"
    assert buf.next_line(100) == b"HELO a"
    assert buf.next_line(100) == b"NOOP"
    assert buf.next_line(100) is None
    buf += b"IT\r\n"
    assert buf.next_line(100) == b"QUIT"
    assert buf.next_line(100) is None and len(buf) == 0


def test_cr_may_wait_for_its_lf_at_the_limit() -> None:
    buf = ReceiveBuffer()
    buf += b"x" * 10 + b"\r"  # limit + 1 bytes: the LF may yet come
    assert buf.next_line(10) is None
    buf += b"\n"
    assert buf.next_line(10) == b"x" * 10


def test_overlong_line_skipped_to_its_end() -> None:
    got = lines_of([b"a" * 20, b"b" * 20, b"c\r\nnext\r\n"], limit=10)
    assert isinstance(got[0], LineTooLong) and got[0].observed == 20 and got[0].head == b"a" * 20
    assert got[1:] == [b"next"]  # the rest of the overlong line is dropped, once


def test_overlong_complete_line_reported_with_its_length() -> None:
    got = lines_of([b"y" * 15 + b"\r\nok\r\n"], limit=10)
    assert got == [LineTooLong(15, b"y" * 15), b"ok"]


def test_without_skip_the_bytes_stay_for_the_caller() -> None:
    buf = ReceiveBuffer()
    buf += b"z" * 40
    got = buf.next_line(10, skip_overlong=False)
    assert isinstance(got, LineTooLong) and got.observed == 40
    assert bytes(buf) == b"z" * 40 and not buf.skipping


def test_drop_keeps_the_scan_position_true() -> None:
    buf = ReceiveBuffer()
    buf += b"abcd"
    assert buf.next_line(100) is None  # scanned 4 bytes: no LF
    buf.drop(3)  # a bulk reader consumed some
    buf += b"e\nf"
    assert buf.next_line(100) == b"de"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")),
       cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=12),
       limit=st.integers(min_value=1, max_value=40))
def test_same_lines_however_the_bytes_are_cut(data: bytes, cuts: list[int], limit: int) -> None:
    points = sorted({c for c in cuts if c < len(data)})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    whole = [x for x in lines_of([data], limit) if not isinstance(x, LineTooLong)]
    pieces = [x for x in lines_of(chunks, limit) if not isinstance(x, LineTooLong)]
    # The good lines never depend on how the reads were cut; each is within the limit.
    assert pieces == whole
    assert all(len(x) <= limit for x in pieces)
