"""The store's one reader: write order, durable cursors, following like tail -F, damage counted;
`spampots events --follow` and its filters; event names spelled only in events.py."""

from __future__ import annotations

import ast
import collections
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spampots.events import EVENT_TYPES, LimitHit, SessionOpen, stamp
from spampots.store.catalog import Reader, iter_event_lines, iter_segment_files, segment_key
from spampots.store.recorder import Recorder
from spampots.store.segments import ReadStats, SegmentWriter

SRC = Path(__file__).resolve().parent.parent / "src" / "spampots"


def emit(rec: Recorder, start: int, n: int, sensor: str, ip: str = "127.0.0.9") -> None:
    for i in range(start, start + n):
        rec.emit(stamp(SessionOpen(listener_addr="127.0.0.1"), sensor=sensor, session=f"{sensor}-{i}",
                       src_ip=ip, src_port=i + 1, listener_port=25, protocol="smtp", depth=0))
        if i % 10 == 9:
            rec.flush_sync(10)  # the recorder rotates between its batches
    rec.flush_sync(10)


def drain(reader: Reader) -> list[bytes]:
    out = []
    while got := reader.read(50):
        out += [ln.data for ln in got]
    return out


def test_write_order_sorts_sequence_numbers_as_numbers():
    names = ["2024-03-01/e-20240301T120000Z-42-10.jsonl", "2024-03-01/e-20240301T120000Z-42-9.jsonl",
             "2024-02-29/e-20240229T235959Z-42-11.jsonl", "2024-03-01/a-20240301T120001Z-7-1.jsonl"]
    assert sorted(names, key=segment_key) == [names[2], names[1], names[0], names[3]]


def test_reader_follows_growth_rotation_compression_and_many_sensors(tmp_path):
    a, b = Recorder(tmp_path, "a", segment_max_bytes=4096), Recorder(tmp_path, "b", segment_max_bytes=1 << 20)
    a.start()
    b.start()
    cursor = tmp_path / "r.cursor"
    reader = Reader(tmp_path, cursor_path=cursor)
    emit(a, 0, 20, "a")
    emit(b, 0, 5, "b")  # b's segment stays open: a's must not wait for it, nor b's for a's
    got = drain(reader)
    assert len(got) == 25
    emit(a, 20, 60, "a")  # a rotates (compresses) while the reader is in its open segment
    emit(b, 5, 5, "b")
    got += drain(reader)
    reader.commit()
    reader.close()
    assert collections.Counter(got) == collections.Counter(iter_event_lines(tmp_path))
    assert len(iter_segment_files(tmp_path, sensor="a")) > 3
    # a restart: from the saved cursor, nothing twice, and the new lines
    emit(b, 10, 3, "b")
    b.close_sync(10)  # compressed: b's open segment ends while we are not looking
    emit(a, 80, 2, "a")
    again = Reader(tmp_path, cursor_path=cursor)
    more = drain(again)
    assert len(more) == 5 and not set(more) & set(got)
    # a read not committed is read again after a restart (it was not taken)
    emit(a, 82, 1, "a")
    assert len(again.read(50)) == 1
    again.close()
    assert len(drain(Reader(tmp_path, cursor_path=cursor))) == 6
    a.close_sync(10)


def test_reader_counts_damage_like_every_reader(tmp_path):
    w = SegmentWriter(tmp_path, "edge")
    ev = stamp(SessionOpen(), sensor="edge", session="s", src_ip="127.0.0.1", src_port=1, listener_port=25,
               protocol="smtp", depth=0)
    from spampots.events import encode

    w.write(encode(ev) * 3 + b"not json\n")
    zst = w.close()
    data = zst.read_bytes()
    zst.write_bytes(data[: len(data) - 20])  # cut short
    st = ReadStats()
    got = Reader(tmp_path, stats=st).read_events(100)
    assert st.errors == 1 and st.truncated == 1 and st.damaged == [zst.name]
    one = ReadStats()
    assert len(list(iter_event_lines(tmp_path, stats=one))) == one.lines and one.errors == 1
    assert len(got) <= 3


def _spampots(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from spampots.cli import main; sys.exit(main())", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_events_follow_with_filters(tmp_path):
    rec = Recorder(tmp_path, "edge", segment_max_bytes=2048)
    rec.start()
    emit(rec, 0, 5, "edge", ip="127.0.0.5")
    p = _spampots("events", "--data-dir", str(tmp_path), "--follow", "--src-ip", "127.0.0.6",
                  "--event", "session.open", "--sensor", "edge", "--since", "2000-01-01", "--poll", "0.05")
    try:
        emit(rec, 5, 30, "edge", ip="127.0.0.6")  # written after it started, across rotations
        rec.emit(stamp(LimitHit(limit="x"), sensor="edge", session="", src_ip="127.0.0.6", src_port=0,
                       listener_port=25, protocol="smtp", depth=0))
        rec.flush_sync(10)
        lines = []
        deadline = time.monotonic() + 30
        while len(lines) < 30 and time.monotonic() < deadline:
            lines.append(json.loads(p.stdout.readline()))
    finally:
        p.terminate()
        p.wait(10)
        rec.close_sync(10)
    assert [e["session"] for e in lines] == [f"edge-{i}" for i in range(5, 35)]
    assert {e["event"] for e in lines} == {"spampots.session.open"}
    later = _spampots("events", "--data-dir", str(tmp_path), "--since", "2999-01-01")
    assert later.communicate(timeout=30)[0] == b""
    bad = _spampots("events", "--data-dir", str(tmp_path), "--event", "smtp.nope", "--follow")
    err = bad.communicate(timeout=30)[1].decode()
    assert bad.returncode == 2 and "unknown event name 'smtp.nope'" in err


_NAME = re.compile(r"spampots\.[a-z_]+\.[a-z_]+(?:\.[a-z_]+)*")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name.rstrip(".")) is not None
    except ModuleNotFoundError:
        return False


def test_event_names_in_the_source_are_defined_in_events_py():
    """Any "spampots.x.y" in a string of src/ that is not a module must be an event events.py
    defines: a consumer cannot listen for an event nobody sends."""
    unknown = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
                for name in _NAME.findall(text):
                    if name not in EVENT_TYPES and not _is_module(name):
                        unknown.append(f"{path.relative_to(SRC)}:{node.lineno}: {name}")
    assert not unknown, unknown


def test_event_name_check_catches_a_typo(tmp_path):
    assert _NAME.findall("x spampots.smtp.mesage y") == ["spampots.smtp.mesage"]
    assert "spampots.smtp.mesage" not in EVENT_TYPES and not _is_module("spampots.smtp.mesage")
    assert _is_module("spampots.analysis.cli")


@pytest.mark.parametrize("consumer", ["metrics.py", "transport/shipper.py", "store/retention.py"])
def test_consumers_use_the_constants(consumer):
    text = (SRC / consumer).read_text()
    assert not re.search(r"[\"']spampots\.(smtp|session|proxy|sensor|protocol)\.", text), consumer


def test_reader_follows_the_open_segments_of_one_sensors_workers_side_by_side(tmp_path):
    """A sensor's workers each keep a segment open (their pids in the names): a reader
    takes the lines of both at once, not one worker's only until its segment closes."""
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys
sys.path.insert(0, {str(SRC.parent)!r})
from spampots.events import SessionOpen, stamp
from spampots.store.recorder import Recorder
rec = Recorder({str(tmp_path)!r}, "s", pack_writer="s.w1")
rec.start()
for i in range(5):
    rec.emit(stamp(SessionOpen(listener_addr="127.0.0.1"), sensor="s", session=f"w1-{{i}}", src_ip="127.0.0.9",
                   src_port=i + 1, listener_port=25, protocol="smtp", depth=0))
rec.flush_sync(10)
print("ready", flush=True)
sys.stdin.read()
rec.close_sync(10)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        mine = Recorder(tmp_path, "s", pack_writer="s.w0")
        mine.start()
        emit(mine, 0, 5, "s")
        reader = Reader(tmp_path)
        got = drain(reader)
        reader.close()
        assert len(got) == 10, "the other worker's open segment held this one's lines back"
        assert len({p.name for p in iter_segment_files(tmp_path, sensor="s") if p.name.endswith(".jsonl.zst.open")}) == 2
        mine.close_sync(10)
    finally:
        child.communicate("", timeout=30)


def test_reader_resumes_mid_frame_of_an_open_segment_and_after_its_rotation(tmp_path):
    """The shipper's cursor holds offsets into the lines: a restart resumes in the middle of
    an open segment's frame (frames before it are passed over, not decompressed), and at the
    same offset once the segment was recompressed at rotation."""
    w = SegmentWriter(tmp_path, "s")
    lines = [json.dumps({"event": "spampots.session.open", "session": f"s-{i}"}).encode() for i in range(40)]
    for i in range(0, 40, 8):
        w.write(b"".join(x + b"\n" for x in lines[i:i + 8]))  # five frames of eight lines
    w.sync()
    cursor = tmp_path / "r.cursor"
    reader = Reader(tmp_path, cursor_path=cursor)
    first = reader.read(13)  # ends inside the second frame
    assert [ln.data for ln in first] == lines[:13]
    reader.commit()
    reader.close()
    again = Reader(tmp_path, cursor_path=cursor)
    rest = drain(again)
    assert rest == lines[13:]  # nothing twice, nothing lost
    again.close()
    offsets = {ln.offset for ln in first}
    w.close()  # recompressed as one frame: the cursor's offsets still hold
    resumed = Reader(tmp_path, cursor_path=cursor)
    after = []
    while got := resumed.read(50):
        after += got
    assert [ln.data for ln in after] == lines[13:] and not offsets & {ln.offset for ln in after}
    resumed.close()
