"""Damaged data never crashes a reader and is never dropped silently.

Each case makes a store with the store API (or a real sensor), damages it the way disks
and people do, then runs the real commands: `spampots run`, `export`, `events`, `report`,
`compact`. Every one must finish, keep what survived, and name the damage in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import smtplib
import sqlite3
from pathlib import Path

import pytest
import zstandard

from conftest import start_sensor
from spampots import events as ev
from spampots.cli import main as cli_main
from spampots.store import MessageStore, ReadStats, Recorder, iter_events, iter_segment_files

SENSOR = "dmg"


def _body(i: int) -> bytes:
    return b"Subject: damage %d\r\n\r\n" % i + hashlib.sha256(b"%d" % i).hexdigest().encode() * 8 + b"\r\n"


def _message(i: int) -> ev.SmtpMessage:
    return ev.stamp(ev.SmtpMessage(mail_from=f"s{i}@spam.example", rcpts=["v@example.com"], subject=f"damage {i}",
                                   helo="pc1", size=len(_body(i))),
                    sensor=SENSOR, session=f"s{i:05d}", src_ip="192.0.2.7", src_port=40000 + i % 1000,
                    listener_port=25, protocol="smtp", depth=0)  # type: ignore[return-value]


def _store(data: Path, messages: int, segments: int = 1) -> list[str]:
    """`messages` messages with their events, spread over `segments` closed segments."""
    shas = []
    per = -(-messages // segments)
    for part in range(segments):
        with Recorder(data, SENSOR) as rec:
            for i in range(part * per, min(messages, (part + 1) * per)):
                rec.emit(ev.stamp(ev.SessionOpen(listener_addr="127.0.0.1"), sensor=SENSOR, session=f"s{i:05d}",
                                  src_ip="192.0.2.7", src_port=40000, listener_port=25, protocol="smtp", depth=0))
                shas.append(rec.emit_durable_sync(_message(i), _body(i), timeout=30))
    return shas


def _err(capsys: pytest.CaptureFixture) -> str:
    return capsys.readouterr().err


def _exported(out: Path) -> set[str]:
    return {p.stem for p in out.glob("*.eml")}


def _report_emails(data: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    assert cli_main(["report", "--data-dir", str(data), "--format", "json", "-q", *extra]) == 0
    cap = capsys.readouterr()
    return json.loads(cap.out)["tables"]["summary"]["rows"][0]["emails"], cap.err


# -- the message index -------------------------------------------------------------------------


def _damage_index_pages(data: Path) -> None:
    """Garbage over one page of the bodies table, chosen so that the header and a quick
    `count(*)` still look fine where an index answers it (an index from older versions):
    only reading rows fails. With the table alone, a page whose rows fail to read."""
    index = data / "messages" / "index.sqlite"
    assert not Path(str(index) + "-wal").exists() or Path(str(index) + "-wal").stat().st_size == 0
    raw = index.read_bytes()
    size = int.from_bytes(raw[16:18], "big") or 65536
    probe = data.parent / "probe.sqlite"
    fallback = None
    for page in range(2, len(raw) // size):
        bad = raw[: page * size] + b"\xa5" * size + raw[(page + 1) * size:]
        probe.write_bytes(bad)
        db = sqlite3.connect(probe)
        try:
            db.execute("SELECT count(*) FROM bodies").fetchone()
        except sqlite3.DatabaseError:
            fallback = fallback or bad
            db.close()
            continue
        try:
            db.execute("SELECT sha256, pack, offset FROM bodies ORDER BY sha256").fetchall()
        except sqlite3.DatabaseError:
            index.write_bytes(bad)
            return
        finally:
            db.close()
    if fallback is not None:
        index.write_bytes(fallback)
        return
    raise AssertionError("no page to damage that way")


def test_damaged_index_pages_export_reads_the_packs_and_run_rebuilds(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "var"
    shas = _store(data, 400)
    _damage_index_pages(data)

    out = tmp_path / "out"
    assert cli_main(["export", "--all", "--data-dir", str(data), "--out", str(out)]) == 0
    assert _exported(out) == set(shas)
    said = [r.getMessage() for r in caplog.records if "index.sqlite" in r.getMessage()]
    assert len(said) == 1 and "scanning packs" in said[0]  # said once, not hidden

    sp = start_sensor(tmp_path / "run", data_dir=data, args=("--user", ""), wait_port=25)
    try:
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=20) as s:
            s.sendmail("a@spam.example", ["v@example.com"], b"Subject: after\r\n\r\nstill works\r\n")
    finally:
        assert sp.stop(timeout=30) == 0
    log = sp.stderr()
    assert "Traceback" not in log and "rebuilding it from the packs" in log, log[-3000:]
    with MessageStore(data, readonly=True) as store:  # the file is whole again, and complete
        assert len(store) == len(shas) + 1
        assert all(store.get(sha) == _body(i) for i, sha in enumerate(shas))


# -- compressed segments -----------------------------------------------------------------------


def test_corrupt_and_stray_zst_do_not_stop_report_or_events(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "var"
    _store(data, 60, segments=3)
    segs = iter_segment_files(data)
    assert len(segs) == 3 and all(p.name.endswith(".zst") for p in segs)
    bad = segs[1]
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a bit flip: the frame checksum fails
    bad.write_bytes(bytes(raw))
    day = bad.parent
    (day / "notes.jsonl.zst").write_bytes(b"this is not zstd at all\n" * 10)  # stray, not a segment name
    stray = day / f"{SENSOR}-20200101T000000Z-1-000001.jsonl.zst"  # stray garbage with a segment's name
    stray.write_bytes(os.urandom(3000))

    assert cli_main(["events", "--data-dir", str(data)]) == 0
    cap = capsys.readouterr()
    kept = [json.loads(x) for x in cap.out.splitlines()]
    assert sum(e["event"] == "spampots.smtp.message" for e in kept) >= 40  # two intact segments at least
    assert cap.err.count("\n") == 1 and "damaged data skipped" in cap.err
    for name in (bad.name, stray.name, "notes.jsonl.zst"):
        assert name in cap.err

    emails, err = _report_emails(data, capsys)
    assert emails >= 40
    assert bad.name in err and stray.name in err and "Traceback" not in err
    assert "2 unreadable file(s); 1 file(s) not named like a segment" in err  # each file counted once
    emails_again, _ = _report_emails(data, capsys)  # compacted once, counted once
    assert emails_again == emails


def test_truncated_zst_is_counted_and_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "var"
    _store(data, 3000, segments=2)
    whole = sum(isinstance(e, ev.SmtpMessage) for e in iter_events(data))
    assert whole == 3000
    cut = iter_segment_files(data)[0]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    st = ReadStats()
    left = sum(isinstance(e, ev.SmtpMessage) for e in iter_events(data, stats=st))
    assert 1500 <= left < 3000  # the second segment, and the first one's lines before the cut
    assert st.errors == 1 and st.truncated == 1 and st.damaged == [cut.name]
    assert cut.name in st.damage_line() and "cut short" in st.damage_line()

    assert cli_main(["compact", "--data-dir", str(data), "-q"]) == 0
    err = _err(capsys)
    assert cut.name in err and "cut short" in err
    emails, _ = _report_emails(data, capsys)
    assert emails == left  # what survived is in the lake, no more, no less


# -- export --all ------------------------------------------------------------------------------


def test_export_all_includes_bodies_whose_events_are_gone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "var"
    shas = _store(data, 30, segments=2)
    gone = iter_segment_files(data)[0]
    gone.unlink()  # the events of the first 15 messages are lost; their bodies are not
    out = tmp_path / "out"
    assert cli_main(["export", "--all", "--data-dir", str(data), "--out", str(out)]) == 0
    assert _exported(out) == set(shas)
    mbox = tmp_path / "mbox"
    assert cli_main(["export", "--all", "--format", "mbox", "--data-dir", str(data), "--out", str(mbox)]) == 0
    assert (mbox / "messages.mbox").read_bytes().count(b"\nFrom ") + 1 == len(shas)


def test_damaged_body_is_skipped_and_counted_by_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "var"
    shas = _store(data, 10)
    with MessageStore(data, readonly=True) as store:
        loc = store.location(shas[3])
    pack = data / "messages" / loc.pack
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + 60 + loc.comp_len // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    out = tmp_path / "out"
    assert cli_main(["export", "--all", "--data-dir", str(data), "--out", str(out)]) == 1
    assert _exported(out) == set(shas) - {shas[3]}
    err = _err(capsys)
    assert "1 damaged message(s) skipped" in err and shas[3] in err


# -- damaged lines -----------------------------------------------------------------------------


def test_corrupted_json_lines_are_undecodable_not_defaults(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "var"
    _store(data, 5)
    seg = iter_segment_files(data)[0]
    text = zstandard.ZstdDecompressor().stream_reader(open(seg, "rb")).read().splitlines(keepends=True)
    msgs = [i for i, ln in enumerate(text) if b'"spampots.smtp.message"' in ln]
    text[msgs[0]] = text[msgs[0]].replace(b'"src_ip"', b'"src_iq"')  # a bit flip in a key: field gone
    text[msgs[1]] = text[msgs[1]].replace(b'"src_port":', b'"src_port":"x",  "_":')  # wrong type
    text[msgs[2]] = text[msgs[2]].replace(b'"sensor":"dmg"', b'"sensor":7')  # wrong type
    plain = seg.with_name(seg.name.removesuffix(".zst"))
    plain.write_bytes(b"".join(text))
    seg.unlink()  # now an uncompressed segment, as a full disk leaves one

    st = ReadStats()
    got = [e for e in iter_events(data, stats=st) if isinstance(e, ev.SmtpMessage)]
    assert len(got) == 2 and all(e.src_ip == "192.0.2.7" for e in got)
    assert st.undecodable == 3 and st.damaged == [plain.name]

    assert cli_main(["events", "--data-dir", str(data), "--event", "spampots.smtp.message"]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 2
    assert "3 undecodable line(s)" in cap.err and plain.name in cap.err
    emails, err = _report_emails(data, capsys)
    assert emails == 2 and "3 undecodable line(s)" in err
