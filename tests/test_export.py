"""eml and mboxrd export: byte-for-byte round trips, From_ lines, odd bodies."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from spampots.events import SmtpMessage
from spampots.store import MessageStore, export_messages, export_raw, read_mbox
from spampots.store.export import from_line, mbox_quote, mbox_unquote

TRICKY = [
    b"Subject: hi\r\n\r\nFrom here on\r\n>From quoted\r\n>>From twice\r\n",
    b"From the very first line\nand >From in the middle stays\n",
    b"no final newline\nFrom ",
    b"",
    b"\n",
    b"\r\n",
    b"ends in CR\r",
    b"From \nFrom \n\n\nFrom x",
    b">From\n>>From  \nFrom\n",  # "From" without a space is not a From_ line
    bytes(range(256)) * 3,
    b"Subject: last\r\n\r\nbody\r\n",
]


@pytest.fixture
def store(tmp_path: Path):
    with MessageStore(tmp_path / "var") as s:
        yield s


def test_eml_round_trip(store: MessageStore, tmp_path: Path) -> None:
    shas = [store.put(b)[0] for b in TRICKY]
    out = tmp_path / "eml"
    assert export_messages(store, shas, "eml", out) == len(TRICKY)
    for sha, b in zip(shas, TRICKY):
        assert (out / f"{sha}.eml").read_bytes() == b
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_mbox_round_trip_and_from_lines(store: MessageStore, tmp_path: Path) -> None:
    shas = [store.put(b)[0] for b in TRICKY]
    events = {shas[0]: SmtpMessage(mail_from="spammer@example.test", ts="2024-03-01T05:06:07.123456Z")}
    out = tmp_path / "mbox"
    assert export_messages(store, shas, "mbox", out, events=events) == len(TRICKY)
    path = out / "messages.mbox"
    assert read_mbox(path) == TRICKY
    raw = path.read_bytes()
    assert raw.startswith(b"From spammer@example.test Fri Mar  1 05:06:07 2024\n")
    assert raw.count(b"\nFrom MAILER-DAEMON ") == len(TRICKY) - 1
    assert b"\n>From here on\r\n>>From quoted\r\n>>>From twice\r\n" in raw


def test_python_mailbox_agrees_on_message_count(store: MessageStore, tmp_path: Path) -> None:
    bodies = [b"Subject: %d\r\n\r\nFrom me to you\r\nbye\r\n" % i for i in range(5)]
    export_messages(store, [store.put(b)[0] for b in bodies], "mbox", tmp_path)
    box = mailbox.mbox(tmp_path / "messages.mbox", create=False)
    assert len(box) == 5
    assert box[0]["Subject"] == "0"


def test_from_line_sanitizes_attacker_sender() -> None:
    ev = SmtpMessage(mail_from="evil\n@x y\r\nFrom z", ts="not a date")
    line = from_line(ev)
    assert line.startswith(b"From evil@xyFromz ") and line.count(b"\n") == 1
    assert from_line(SmtpMessage(mail_from="", ts="2024-01-09T00:00:00Z")) == b"From MAILER-DAEMON Tue Jan  9 00:00:00 2024\n"


def test_unknown_and_invalid_shas_are_skipped(store: MessageStore, tmp_path: Path) -> None:
    sha, _ = store.put(b"x")
    assert export_messages(store, ["0" * 64, "../../x", sha.upper()], "eml", tmp_path) == 1
    assert [p.name for p in tmp_path.glob("*.eml")] == [f"{sha}.eml"]
    with pytest.raises(ValueError):
        export_messages(store, [sha], "maildir", tmp_path)  # type: ignore[arg-type]


def test_export_raw(tmp_path: Path) -> None:
    body = b"From stdin\r\n>From x\r\n"
    p = export_raw(body, "eml", tmp_path, "stdin")
    assert p.name == "stdin.eml" and p.read_bytes() == body
    p = export_raw(body, "mbox", tmp_path, "stdin")
    assert p.name == "stdin.mbox" and read_mbox(p) == [body]
    with pytest.raises(ValueError):
        export_raw(body, "eml", tmp_path, "../escape")


lines = st.lists(
    st.one_of(
        st.sampled_from([b"From ", b">From ", b">>From x", b"From", b"", b"\r", b" From "]),
        st.binary(max_size=20),
    ),
    max_size=12,
)
line_bodies = st.builds(lambda ls, nl: b"\n".join(ls) + nl, lines, st.sampled_from([b"", b"\n", b"\r\n"]))


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(st.one_of(line_bodies, st.binary(max_size=200)), max_size=6))
def test_mbox_round_trip_fuzzed(tmp_path_factory: pytest.TempPathFactory, msgs: list[bytes]) -> None:
    for m in msgs:
        assert mbox_unquote(mbox_quote(m)) == m
    out = tmp_path_factory.mktemp("fz")
    for i, m in enumerate(msgs):
        export_raw(m, "mbox", out, f"m{i}")
        assert read_mbox(out / f"m{i}.mbox") == [m]
    joined = out / "all.mbox"
    joined.write_bytes(b"".join((out / f"m{i}.mbox").read_bytes() for i in range(len(msgs))))
    assert read_mbox(joined) == msgs
