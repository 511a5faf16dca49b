"""Segment log: write, rotate, compress, read (open and closed), recover after a crash."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import pytest
import zstandard

from spampots.events import SessionOpen, decode, encode
from spampots.store import segments
from spampots.store.catalog import SegmentTail, segment_id
from spampots.store.segments import (
    FrameReader,
    ReadStats,
    SegmentWriter,
    events_dict,
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
    assert not list(tmp_path.rglob("*.jsonl*.open")) and not list(tmp_path.rglob("*.tmp"))
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
    assert name.startswith(f"edge-7-20240301T235900Z-{os.getpid()}-") and name.endswith(".jsonl.zst.open")
    assert w.close().name == name.removesuffix(".open")


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
    before = live.read_bytes()
    assert recover(tmp_path) == []
    assert live.exists() and live.read_bytes() == before
    assert _lines_of(live) == ev(0) + ev(1)[:10]
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


# -- the open segment as zstd frames ------------------------------------------------------------


def _lines_of(path: Path) -> bytes:
    """The lines of an open segment's complete frames, read as any zstd tool would (with the
    shipped dictionary)."""
    with open(path, "rb") as f:
        z = zstandard.ZstdDecompressor(dict_data=events_dict()).stream_reader(f, read_across_frames=True)
        return z.read()


def _frames(path: Path) -> list[tuple[int, int]]:
    """(start, end) file offsets of each complete frame."""
    out = []
    with open(path, "rb") as f:
        r = FrameReader(f.fileno())
        while (start := r.pos, r._next())[1] is not None:
            out.append((start, r.pos))
    return out


def test_open_segment_is_a_valid_zstd_stream_at_every_write(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "s")
    want = b""
    for i in range(0, 30, 3):
        batch = ev(i) + ev(i + 1) + ev(i + 2)
        w.write(batch)  # one group commit
        want += batch
        assert _lines_of(w.current) == want  # zstd reads the file whole after every write
    assert len(_frames(w.current)) == 10  # one frame per write
    assert w.current.stat().st_size < len(want) / 3  # compressed as it is written
    out = w.close()  # rotation: one frame, no dictionary, as before
    assert zstandard.ZstdDecompressor().decompress(out.read_bytes()) == want
    assert sessions(tmp_path) == [f"s{i}" for i in range(30)]


def test_torn_last_frame_is_not_read_while_open(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "s")
    w.write(ev(0) + ev(1))
    frame = w._cctx.compress(ev(2) + ev(3))
    fd = os.open(w.current, os.O_WRONLY | os.O_APPEND)  # the writer, caught mid-write
    os.write(fd, frame[:len(frame) // 2])
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1"]
    assert st.torn == 1 and st.bad_frames == 0 and st.undecodable == 0 and not st.damage_line()
    tail = SegmentTail(tmp_path, segment_id(w.current), 0)
    assert [decode(x).session for _, x in tail.read(10)] == ["s0", "s1"] and not tail.finished
    os.write(fd, frame[len(frame) // 2:])  # the frame completes
    os.close(fd)
    assert [decode(x).session for _, x in tail.read(10)] == ["s2", "s3"]
    tail.close()
    assert sessions(tmp_path) == ["s0", "s1", "s2", "s3"]
    w.close()


def test_recover_truncates_a_torn_frame_and_keeps_what_is_before_it(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "s")
    w.write(ev(0) + ev(1))
    w.write(ev(2))
    path = w.current
    half = w._cctx.compress(ev(3) + ev(4))[:25]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, half)
    os.close(fd)
    complete = _frames(path)[-1][1]
    w.abandon()  # the writer died: its lock is gone
    assert path.stat().st_size == complete + len(half)
    out = recover(tmp_path)
    assert out == [path.with_name(path.name.removesuffix(".open"))] and not path.exists()
    assert zstandard.ZstdDecompressor().decompress(out[0].read_bytes()) == ev(0) + ev(1) + ev(2)
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1", "s2"] and st.torn == 0 and not st.damage_line()


def test_recover_cuts_a_dead_writers_torn_frame_even_if_compression_fails(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    w = SegmentWriter(tmp_path, "s")
    w.write(ev(0))
    path = w.current
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, w._cctx.compress(ev(1))[:9])
    os.close(fd)
    w.abandon()

    def full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segments, "compress_segment", full)
    assert recover(tmp_path) == []
    assert path.exists() and path.stat().st_size == _frames(path)[-1][1]  # cut at the frame boundary
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0"] and st.torn == 0


@pytest.mark.parametrize("where", ["data", "block header"])
def test_damaged_frame_in_the_middle_is_skipped_counted_and_keeps_offsets(tmp_path: Path, where: str) -> None:
    w = SegmentWriter(tmp_path, "s")
    for i in range(3):
        w.write(ev(2 * i) + ev(2 * i + 1))
    path, seg = w.current, segment_id(w.current)
    (a, b) = _frames(path)[1]
    data = bytearray(path.read_bytes())
    if where == "data":
        data[(a + b) // 2] ^= 0x55  # bit rot inside the second frame: its checksum fails
    else:
        data[a + zstandard.frame_header_size(bytes(data[a:b])) + 2] |= 0xF0  # a block bigger than zstd's
    path.write_bytes(bytes(data))
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1", "s4", "s5"]
    assert st.bad_frames == 1 and st.undecodable == 1  # the frame reads as one filler line
    assert "1 damaged frame(s)" in st.damage_line() and path.name in st.damage_line()
    tail = SegmentTail(tmp_path, seg, 0, ReadStats())
    open_offsets = [(off, decode(x).session) for off, x in tail.read(10) if x[:1] == b"{"]
    assert tail.stats.bad_frames == 1
    tail.close()
    w.close()  # rotation keeps the damaged frame's place: the offsets stay the same
    tail = SegmentTail(tmp_path, seg, 0)
    assert [(off, decode(x).session) for off, x in tail.read(10) if x[:1] == b"{"] == open_offsets
    tail.close()
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1", "s4", "s5"] and st.undecodable == 1


def test_a_failed_write_is_cut_at_the_frame_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = SegmentWriter(tmp_path, "s")
    w.write(ev(0))
    real = segments.write_all

    def half_then_full(fd: int, data: bytes) -> None:
        real(fd, data[: len(data) // 2])
        seen.append(tail.read(10))  # a follower looks while the half frame is there
        raise OSError(28, "No space left on device")

    tail = SegmentTail(tmp_path, segment_id(w.current), 0)
    assert [x for _, x in tail.read(10)] == [ev(0)[:-1]]
    seen: list = []
    monkeypatch.setattr(segments, "write_all", half_then_full)
    with pytest.raises(OSError):
        w.write(ev(1) + ev(2))
    monkeypatch.setattr(segments, "write_all", real)
    w.write(ev(3))  # the same file, right after the last complete frame
    assert len(_frames(w.current)) == 2 and _lines_of(w.current) == ev(0) + ev(3)
    # the follower that looked while the half frame was there reads the retried frame from its start
    assert seen == [[]] and tail.read(10) == [(len(ev(0)), ev(3)[:-1])]
    tail.close()
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s3"] and not st.damage_line() and st.torn == 0
    w.close()


def test_an_older_versions_plain_open_segment_is_still_read_followed_and_recovered(tmp_path: Path) -> None:
    import fcntl

    p = _dead_segment(tmp_path, "s-20240301T000000Z-999999-1.jsonl", ev(0) + ev(1) + ev(2)[:20])
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)  # its (older) writer is alive
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1"] and st.torn == 1
    tail = SegmentTail(tmp_path, segment_id(p), len(ev(0)))
    assert [decode(x).session for _, x in tail.read(10)] == ["s1"]
    os.write(fd, ev(2)[20:])
    assert [decode(x).session for _, x in tail.read(10)] == ["s2"]
    assert recover(tmp_path) == []  # locked: left alone
    os.close(fd)  # the writer is gone
    out = recover(tmp_path)
    assert out == [p.with_name(p.name + ".zst")] and not p.exists()
    assert tail.read(10) == [] and tail.finished
    tail.close()
    assert sessions(tmp_path) == ["s0", "s1", "s2"]


def test_a_write_bigger_than_a_frame_is_cut_at_line_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segments, "_FRAME_MAX", 2 * len(ev(0)) + 10)
    w = SegmentWriter(tmp_path, "s")
    w.write(b"".join(ev(i) for i in range(7)))
    assert len(_frames(w.current)) == 4  # two lines a frame (the ids keep the lines the same length)
    assert sessions(tmp_path) == [f"s{i}" for i in range(7)]
    w.abandon()
    assert len(recover(tmp_path)) == 1 and sessions(tmp_path) == [f"s{i}" for i in range(7)]


def test_a_skippable_frame_is_not_damage(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path, "s")
    w.write(ev(0))
    with open(w.current, "ab") as f:  # zstd's skippable frame: magic, length, payload
        f.write(b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"notes")
    w._file_size = w.current.stat().st_size
    w.write(ev(1))
    st = ReadStats()
    assert sessions(tmp_path, stats=st) == ["s0", "s1"] and not st.damage_line() and st.torn == 0
    w.close()
    assert sessions(tmp_path) == ["s0", "s1"]


def test_random_damage_to_an_open_segment_never_raises(tmp_path: Path) -> None:
    """Bit flips, cuts and garbage anywhere in an open segment: readers, a follower and
    recovery never raise, and every line they return is one that was written."""
    import random

    rnd = random.Random(16)
    written = {ev(i)[:-1] for i in range(40)}
    for case in range(60):
        d = tmp_path / str(case)
        w = SegmentWriter(d, "s")
        for i in range(0, 40, 4):
            w.write(b"".join(ev(j) for j in range(i, i + 4)))
        path = w.current
        w.abandon()
        data = bytearray(path.read_bytes())
        for _ in range(rnd.randint(1, 4)):
            kind, at = rnd.choice(("flip", "cut", "garbage")), rnd.randrange(len(data))
            if kind == "flip":
                data[at] ^= 1 << rnd.randrange(8)
            elif kind == "cut":
                del data[at:at + rnd.randint(1, 40)]
            else:
                data[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 40)))
        path.write_bytes(bytes(data))
        st = ReadStats()
        got = [x for x in iter_event_lines(d, stats=st) if x[:1] == b"{"]
        tail = SegmentTail(d, segment_id(path), 0)
        followed = [x for _, x in tail.read(1000) if x[:1] == b"{"]
        tail.close()
        recover(d)
        after = [x for x in iter_event_lines(d, stats=ReadStats()) if x[:1] == b"{"]
        assert set(got) <= written  # a damaged frame is never read as lines
        assert followed == got and after == got  # the follower and recovery keep what readers saw
