"""Segment log: write, rotate, compress, read (open and closed), recover after a crash."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import pytest
import zstandard

from spampots.events import SessionOpen, decode, encode
from spampots.store.segments import (
    ReadStats,
    SegmentWriter,
    iter_event_lines,
    iter_events,
    iter_segment_files,
    recover,
)

T0 = dt.datetime(2024, 3, 1, 23, 59, 0, tzinfo=dt.timezone.utc).timestamp()


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ev(i: int) -> bytes:
    return encode(SessionOpen(session=f"s{i}", src_ip="192.0.2.1", src_port=i))


def sessions(data_dir: Path, **kw) -> list[str]:
    return [e.session for e in iter_events(data_dir, **kw)]


def test_write_rotate_by_size_and_age_compress_and_read(tmp_path: Path) -> None:
    clock = Clock()
    w = SegmentWriter(tmp_path, "s-1", max_bytes=400, max_age_s=60, clock=clock)
    for i in range(20):
        w.write(ev(i))
        w.sync()
        w.maybe_rotate()
    rotated = iter_segment_files(tmp_path)
    assert len(rotated) > 2  # size rotation happened
    assert all(p.name.endswith(".jsonl.zst") for p in rotated[:-1])
    w.write(ev(20))
    clock.t += 61  # next day, and too old
    assert w.maybe_rotate() is not None
    w.write(ev(21))
    assert w.current is not None and w.current.parent.name == "2024-03-02"
    w.close()
    files = iter_segment_files(tmp_path)
    assert all(p.name.endswith(".jsonl.zst") for p in files)
    assert not list(tmp_path.rglob("*.jsonl")) and not list(tmp_path.rglob("*.tmp"))
    assert {p.parent.name for p in files} == {"2024-03-01", "2024-03-02"}
    assert sessions(tmp_path) == [f"s{i}" for i in range(22)]
    assert sessions(tmp_path, since_day="2024-03-02") == ["s21"]
    assert sessions(tmp_path, until_day=dt.date(2024, 3, 1)) == [f"s{i}" for i in range(21)]
    assert sessions(tmp_path, sensor="other") == []
    # each closed file is a plain zstd frame of JSON lines
    raw = zstandard.ZstdDecompressor().decompress(files[0].read_bytes())
    assert raw.endswith(b"\n") and decode(raw.splitlines()[0]).session == "s0"


def test_rotation_at_utc_midnight(tmp_path: Path) -> None:
    clock = Clock()  # 23:59:00
    w = SegmentWriter(tmp_path, "s", max_age_s=3600, clock=clock)
    w.write(ev(0))
    clock.t += 59
    assert w.maybe_rotate() is None
    clock.t += 1  # 00:00:00 the next day
    assert w.maybe_rotate() is not None
    w.write(ev(1))
    w.close()
    assert [p.parent.name for p in iter_segment_files(tmp_path)] == ["2024-03-01", "2024-03-02"]


def test_segment_name_layout(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "edge-7", clock=Clock())
    w.write(ev(0))
    name = w.current.name
    assert w.current.parent == tmp_path / "events" / "2024-03-01"
    assert name.startswith(f"edge-7-20240301T235900Z-{os.getpid()}-") and name.endswith(".jsonl")
    assert w.close().name == name + ".zst"


def test_invalid_sensor_rejected(tmp_path: Path) -> None:
    for bad in ("", "../x", "a/b", "sp ace", "-lead"):
        with pytest.raises(ValueError):
            SegmentWriter(tmp_path, bad)


def test_torn_last_line_of_open_segment_is_skipped(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "s")
    w.write(ev(0) + ev(1))
    w.write(ev(2)[:17])  # half a line, as a reader may see mid-write
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1"]
    assert st.torn == 1 and st.undecodable == 0
    w.write(ev(2)[17:])
    assert sessions(tmp_path) == ["s0", "s1", "s2"]
    w.close()


def test_undecodable_lines_are_counted_not_raised(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "s")
    w.write(ev(0) + b'{"event": "no.such.event"}\n' + b"\xff\xfe not json\n" + b"\n" + ev(1))
    w.close()
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1"]
    assert st.undecodable == 2 and st.events == 2 and st.lines == 4
    assert len(list(iter_event_lines(tmp_path))) == 4


def test_damaged_zst_is_counted_not_raised(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "a")
    w.write(ev(0))
    w.close()
    w = SegmentWriter(tmp_path, "b")
    w.write(ev(1))
    bad = w.close()
    bad.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0"]
    assert st.errors == 1


def _dead_segment(tmp_path: Path, name: str, content: bytes) -> Path:
    day = tmp_path / "events" / "2024-03-01"
    day.mkdir(parents=True, exist_ok=True)
    p = day / name
    p.write_bytes(content)
    return p


def test_recover_truncates_torn_line_and_compresses(tmp_path: Path) -> None:
    p = _dead_segment(tmp_path, "s-20240301T000000Z-999999-1.jsonl", ev(0) + ev(1) + ev(2)[:30])
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1"] and st.torn == 1
    out = recover(tmp_path)
    assert out == [p.with_name(p.name + ".zst")]
    assert not p.exists()
    assert zstandard.ZstdDecompressor().decompress(out[0].read_bytes()) == ev(0) + ev(1)
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1"] and st.torn == 0
    assert recover(tmp_path) == []  # idempotent


def test_recover_after_crash_mid_compression(tmp_path: Path) -> None:
    # died between rename(.zst.tmp -> .zst) and unlink(.jsonl): both exist
    p = _dead_segment(tmp_path, "s-20240301T000000Z-999999-1.jsonl", ev(0) + ev(1))
    p.with_name(p.name + ".zst").write_bytes(zstandard.ZstdCompressor().compress(ev(0) + ev(1)))
    assert [f.name for f in iter_segment_files(tmp_path)] == [p.name + ".zst"]
    assert sessions(tmp_path) == ["s0", "s1"]  # not twice
    # died while writing the temp file: the .jsonl is the truth
    q = _dead_segment(tmp_path, "s-20240301T000001Z-999999-2.jsonl", ev(2))
    q.with_name(q.name + ".zst.tmp").write_bytes(b"\x28\xb5\x2f")
    # an empty dead segment (died before writing anything)
    e = _dead_segment(tmp_path, "s-20240301T000002Z-999999-3.jsonl", b"")
    recover(tmp_path)
    assert not p.exists() and not e.exists()
    assert sorted(f.name for f in p.parent.iterdir()) == [p.name + ".zst", q.name + ".zst"]
    assert sessions(tmp_path) == ["s0", "s1", "s2"]


def test_recover_leaves_live_writers_alone(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "live")
    w.write(ev(0) + ev(1)[:10])  # a live writer may be mid-line
    live = w.current
    assert recover(tmp_path) == []
    assert live.exists() and live.read_bytes() == ev(0) + ev(1)[:10]
    w.write(ev(1)[10:])
    w.abandon()  # now it is as if the writer died: the lock is gone
    out = recover(tmp_path)
    assert len(out) == 1 and not live.exists()
    assert sessions(tmp_path) == ["s0", "s1"]


def test_reading_an_open_segment_while_writing(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "s", max_bytes=20_000)
    n = 3000
    done = threading.Event()

    def writer() -> None:
        for i in range(n):
            line = ev(i)
            w.write(line[:9])  # worst case for readers: lines arrive in pieces
            w.write(line[9:])
            if i % 100 == 0:
                w.maybe_rotate()
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    seen = 0
    while not done.is_set():
        st = ReadStats()
        got = sessions(tmp_path, stats=st)
        assert got == [f"s{i}" for i in range(len(got))]  # a prefix, in order
        assert st.undecodable == 0
        assert len(got) >= seen
        seen = len(got)
    t.join()
    w.close()
    assert sessions(tmp_path) == [f"s{i}" for i in range(n)]


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_lines_split_across_read_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    from spampots.store import segments

    monkeypatch.setattr(segments, "_READ_CHUNK", chunk)
    w = SegmentWriter(tmp_path, "s")
    w.write(b"".join(ev(i) for i in range(5)) + ev(5)[:20])
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == [f"s{i}" for i in range(5)] and st.torn == 1
    w.write(ev(5)[20:])
    w.close()
    assert sessions(tmp_path) == [f"s{i}" for i in range(6)]  # and through zstd's reader
