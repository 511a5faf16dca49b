"""Message packs: byte-exact round trips, dedup, index rebuild, torn and damaged records."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from spampots.store import Recorder
from spampots.store.messages import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    CorruptRecord,
    MessageStore,
    scan_pack,
)


def bodies(n: int, size: int = 3000) -> list[bytes]:
    return [hashlib.shake_256(b"%d" % i).digest(size // 2) + b"x" * (size // 2) + b"%d" % i for i in range(n)]


def packs(d: Path) -> list[Path]:
    return sorted((d / "messages").glob("*.pack"))


def drop_index(d: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(d / "messages" / "index.sqlite") + suffix).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    s = MessageStore(tmp_path_factory.mktemp("packs"), "hyp", pack_max_bytes=64 << 10)
    yield s
    s.close()


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=20_000))
def test_round_trip_random_binary(shared_store: MessageStore, body: bytes) -> None:
    sha, _ = shared_store.put(body)
    assert sha == hashlib.sha256(body).hexdigest()
    assert sha in shared_store
    assert shared_store.get(sha) == body
    assert shared_store.get(sha.upper()) == body


def test_round_trip_survives_reopen_and_pack_rotation(tmp_path: Path) -> None:
    data = bodies(40) + [b"", b"\x00" * 100_000]
    with MessageStore(tmp_path, "s", pack_max_bytes=20_000) as s:
        shas = [s.put(b)[0] for b in data]
        s.sync()
    assert len(packs(tmp_path)) > 3
    with MessageStore(tmp_path, "s", pack_max_bytes=20_000) as s:
        assert [s.get(h) for h in shas] == data
        assert set(s.iter_shas()) == set(shas) and len(s) == len(data)


def test_put_checks_given_sha(tmp_path: Path) -> None:
    with MessageStore(tmp_path) as s:
        good = hashlib.sha256(b"abc").hexdigest()
        assert s.put(b"abc", good.upper()) == (good, True)
        with pytest.raises(ValueError):
            s.put(b"abd", good)


def test_unknown_sha(tmp_path: Path) -> None:
    with MessageStore(tmp_path) as s:
        with pytest.raises(KeyError):
            s.get("0" * 64)
        with pytest.raises(KeyError):
            s.get("../../etc/passwd")
        assert "0" * 64 not in s and 42 not in s


def test_dedup_same_store_and_across_sensors(tmp_path: Path) -> None:
    body = b"Subject: buy now\r\n\r\nsame spam to everyone\r\n"
    with MessageStore(tmp_path, "a") as a:
        sha, new = a.put(body)
        assert new
        size = a.location(sha)
        assert a.put(body) == (sha, False)
        assert len(a) == 1
        with MessageStore(tmp_path, "b") as b:  # another sensor, same data dir, both open
            assert b.put(body) == (sha, False)
            b.sync()  # fsyncs a's pack on b's behalf (b acknowledges a body a wrote)
            assert b.get(sha) == body
    assert [p.name for p in packs(tmp_path)] == ["pack-a-000001.pack"]
    assert packs(tmp_path)[0].stat().st_size == HEADER_SIZE + size.comp_len
    with MessageStore(tmp_path, "c") as c:
        assert c.put(body) == (sha, False)


def test_one_writer_per_sensor(tmp_path: Path) -> None:
    with MessageStore(tmp_path, "s"):
        with pytest.raises(RuntimeError):
            MessageStore(tmp_path, "s")


def test_index_rebuilt_after_deleting_index(tmp_path: Path) -> None:
    data = bodies(30)
    with MessageStore(tmp_path, "s", pack_max_bytes=30_000) as s:
        shas = [s.put(b)[0] for b in data]
    drop_index(tmp_path)
    with MessageStore(tmp_path, "s", pack_max_bytes=30_000) as s:
        assert sorted(s.iter_shas()) == sorted(shas)
        assert [s.get(h) for h in shas] == data
        assert s.put(data[0]) == (shas[0], False)  # dedup still works after rebuild


def test_unreadable_index_is_rebuilt(tmp_path: Path) -> None:
    with MessageStore(tmp_path, "s") as s:
        shas = [s.put(b)[0] for b in bodies(5)]
    drop_index(tmp_path)
    (tmp_path / "messages" / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    with MessageStore(tmp_path, "s") as s:
        assert sorted(s.iter_shas()) == sorted(shas)


@pytest.mark.parametrize("tear", ["header", "body", "zeros", "magic_only"])
def test_torn_last_record_is_truncated(tmp_path: Path, tear: str) -> None:
    data = bodies(5)
    with MessageStore(tmp_path, "s") as s:
        shas = [s.put(b)[0] for b in data]
        first_len = HEADER_SIZE + s.location(shas[0]).comp_len
    pack = packs(tmp_path)[0]
    good = pack.stat().st_size
    record = pack.read_bytes()[:first_len]
    torn = {
        "header": record[:HEADER_SIZE - 7],
        "body": record[:-5],
        "zeros": b"\0" * 4096,  # size grew, data never reached the disk
        "magic_only": MAGIC + b"\0" * (HEADER_SIZE - len(MAGIC)),
    }[tear]
    with open(pack, "ab") as f:
        f.write(torn)
    with MessageStore(tmp_path, "s") as s:
        assert pack.stat().st_size == good
        assert [s.get(h) for h in shas] == data
        new, _ = s.put(b"after the crash")
    assert scan_pack(pack)[1:] == (pack.stat().st_size, pack.stat().st_size)
    with MessageStore(tmp_path, "s") as s:
        assert s.get(new) == b"after the crash"


def test_index_ahead_of_pack_is_dropped(tmp_path: Path) -> None:
    # synchronous=OFF: after a power loss the index may name bytes that never hit the disk
    a, b = bodies(2)
    with MessageStore(tmp_path, "s") as s:
        sha_a, _ = s.put(a)
        sha_b, _ = s.put(b)
        end_a = HEADER_SIZE + s.location(sha_a).comp_len
    os.truncate(packs(tmp_path)[0], end_a)
    with MessageStore(tmp_path, "s") as s:
        assert s.get(sha_a) == a
        assert sha_b not in s
        assert s.put(b) == (sha_b, True)
        assert s.get(sha_b) == b


def test_stale_row_over_damaged_bytes_is_healed_by_put(tmp_path: Path) -> None:
    a, b = bodies(2)
    with MessageStore(tmp_path, "s") as s:
        s.put(a)
        sha_b, _ = s.put(b)
        off = s.location(sha_b).offset
    pack = packs(tmp_path)[0]
    raw = bytearray(pack.read_bytes())
    raw[off + HEADER_SIZE + 3] ^= 0xFF
    pack.write_bytes(bytes(raw))
    with MessageStore(tmp_path, "s") as s:
        with pytest.raises(CorruptRecord):
            s.get(sha_b)
        assert s.put(b) == (sha_b, True)  # dedup must not trust bad bytes
        assert s.get(sha_b) == b


def test_damage_in_the_middle_is_skipped_not_truncated(tmp_path: Path) -> None:
    data = bodies(5)
    with MessageStore(tmp_path, "s") as s:
        shas = [s.put(b)[0] for b in data]
        off = s.location(shas[1]).offset
    pack = packs(tmp_path)[0]
    raw = bytearray(pack.read_bytes())
    raw[off + HEADER_SIZE + 10] ^= 0x01
    pack.write_bytes(bytes(raw))
    drop_index(tmp_path)
    with MessageStore(tmp_path, "s") as s:
        assert pack.stat().st_size == len(raw)  # later records survive
        assert shas[1] not in s
        assert [s.get(h) for i, h in enumerate(shas) if i != 1] == [b for i, b in enumerate(data) if i != 1]


def test_record_header_layout(tmp_path: Path) -> None:
    body = b"hello world\r\n" * 10
    with MessageStore(tmp_path, "s") as s:
        sha, _ = s.put(body)
    raw = packs(tmp_path)[0].read_bytes()
    magic, digest, raw_len, comp_len, crc = HEADER.unpack_from(raw, 0)
    assert HEADER_SIZE == 60 and magic == b"SPMPACK1"
    assert digest.hex() == sha and raw_len == len(body) and len(raw) == HEADER_SIZE + comp_len
    import zlib

    import zstandard

    assert crc == zlib.crc32(raw[HEADER_SIZE:])
    assert zstandard.ZstdDecompressor().decompress(raw[HEADER_SIZE:]) == body


def test_readonly_reader_while_writer_writes(tmp_path: Path) -> None:
    data = bodies(10)
    with MessageStore(tmp_path, "s") as w:
        first = [w.put(b)[0] for b in data[:5]]
        r = MessageStore(tmp_path, readonly=True)
        assert [r.get(h) for h in first] == data[:5]
        later = [w.put(b)[0] for b in data[5:]]
        assert [r.get(h) for h in later] == data[5:]  # committed rows show up at once
        with pytest.raises(PermissionError):
            r.put(b"nope")
        r.close()
    with pytest.raises(sqlite3.OperationalError):  # it really is read-only
        r2 = MessageStore(tmp_path, readonly=True)
        r2._db.execute("DELETE FROM bodies")
    r2.close()


def test_readonly_without_index_scans_packs(tmp_path: Path) -> None:
    assert len(MessageStore(tmp_path / "nothing", readonly=True)) == 0
    data = bodies(4)
    with MessageStore(tmp_path, "s") as w:
        shas = [w.put(b)[0] for b in data]
    drop_index(tmp_path)
    with MessageStore(tmp_path, readonly=True) as r:
        assert [r.get(h) for h in shas] == data
    assert not (tmp_path / "messages" / "index.sqlite").exists()


def test_batch_commits_once_and_rolls_back_on_error(tmp_path: Path) -> None:
    store = MessageStore(tmp_path, "b1")
    a, b, c = bodies(3)
    with store.batch():
        sha_a, _ = store.put(a)
        sha_b, _ = store.put(b)
        store.sync()
    assert sha_a in store and sha_b in store
    with pytest.raises(RuntimeError):
        with store.batch():
            sha_c, _ = store.put(c)
            raise RuntimeError("the caller's fsync failed")
    assert sha_c not in store  # its row rolled back: the index never names bytes not known durable
    assert store.put(c) == (sha_c, True)  # and it can be stored again
    store.close()


def spam(n: int) -> list[bytes]:
    """Bodies that share words, like spam does (a dictionary's case)."""
    import random

    rng = random.Random(7)
    words = [b"offer", b"free", b"viagra", b"click", b"here", b"unsubscribe", b"winner", b"bank", b"account"]
    return [b"Subject: offer %d\r\n\r\n" % i + b" ".join(rng.choices(words, k=600)) for i in range(n)]


def test_a_writer_trains_a_dictionary_and_every_reader_finds_it(tmp_path: Path) -> None:
    from spampots.store.messages import DICT_SAMPLES
    import zstandard

    some = spam(DICT_SAMPLES + 100)
    store = MessageStore(tmp_path, "d1")
    with store.batch():
        for body in some[:DICT_SAMPLES + 50]:
            store.put(body)
        store.sync()
    store.close()
    dicts = list((tmp_path / "messages").glob("dict-*-d1.zdict"))
    assert len(dicts) == 1
    store = MessageStore(tmp_path, "d1")  # a restarted writer goes on with its dictionary
    for body in some[DICT_SAMPLES + 50:]:
        store.put(body)
    store.sync()
    last = store.location(hashlib.sha256(some[-1]).hexdigest())
    store.close()
    assert list((tmp_path / "messages").glob("dict-*.zdict")) == dicts
    rec = (tmp_path / "messages" / last.pack).read_bytes()[last.offset + HEADER_SIZE:][:last.comp_len]
    assert zstandard.get_frame_parameters(rec).dict_id == int(dicts[0].name.split("-")[1])
    ro = MessageStore(tmp_path, readonly=True)
    try:
        assert all(ro.get(hashlib.sha256(b).hexdigest()) == b for b in some)
    finally:
        ro.close()
    dicts[0].unlink()  # a lost dictionary is a corrupt record, never a wrong body
    ro = MessageStore(tmp_path, readonly=True)
    try:
        with pytest.raises(CorruptRecord, match="dictionary"):
            ro.get(hashlib.sha256(some[-1]).hexdigest())
        assert ro.get(hashlib.sha256(some[0]).hexdigest()) == some[0]  # before the dictionary: plain
    finally:
        ro.close()


def test_writers_of_one_index_batch_at_once(tmp_path: Path) -> None:
    """A sensor's workers: several writers commit batches into one index at the same time."""
    import threading

    stores = [MessageStore(tmp_path, f"w{k}") for k in range(3)]
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for i in range(40):
                with stores[k].batch():
                    for body in bodies(5, 500)[:3] + [b"w%d-%d-%d" % (k, i, j) for j in range(5)]:
                        stores[k].put(body)
                    stores[k].sync()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert errors == []
    ro = MessageStore(tmp_path, readonly=True)
    try:
        assert len(ro) == 3 + 3 * 40 * 5
    finally:
        ro.close()


def test_put_many_matches_put_one_by_one(tmp_path: Path) -> None:
    """A batch of bodies stored with one lookup, one compression call and one write per pack:
    the same records, rows and dedup as putting them one by one; a wrong sha fails alone; a
    batch that does not fit in the pack spills into the next one."""
    bs = bodies(12, 900)
    with MessageStore(tmp_path / "one", "w", pack_max_bytes=4000) as one:
        for b in bs[:3]:
            one.put(b)
        want = [one.put(b) for b in bs + bs[:2]]
    with MessageStore(tmp_path / "many", "w", pack_max_bytes=4000) as s:
        for b in bs[:3]:
            s.put(b)
        with s.batch():
            got = s.put_many([(b, None) for b in bs + bs[:2]] + [(b"x", "0" * 64), (bs[5], None)])
            s.sync()
        assert [(sha, new) for sha, new, _ in got[:14]] == want
        assert isinstance(got[14], ValueError) and got[15][:2] == (want[5][0], False)
        for (sha, _, record), b in zip(got, bs):
            assert record.startswith(MAGIC) and s.get(sha) == b
            loc = s.location(sha)
            assert (tmp_path / "many" / "messages" / loc.pack).read_bytes()[loc.offset:][:len(record)] == record
        assert len(s) == 12 and len(packs(tmp_path / "many")) == len(packs(tmp_path / "one")) >= 2


def test_two_writers_open_a_new_index_at_the_same_moment(tmp_path: Path) -> None:
    """A sensor's workers start together: turning a new index into WAL mode must wait for the
    other writer's lock instead of failing with "database is locked"."""
    failures = []
    for trial in range(40):
        d = tmp_path / str(trial)
        pids = []
        for k in range(2):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1  # each opens its store as a worker's recorder does
                try:
                    Recorder(d, "s", pack_writer=f"s.w{k}").start()
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        failures += [st for st in (os.waitpid(p, 0)[1] for p in pids) if st != 0]
    assert failures == []


def _old_layout_index(d: Path) -> int:
    """Replace the index by one of the layout earlier versions wrote (hex digests, pack names
    on every row), from the packs; returns its size in bytes."""
    drop_index(d)
    path = d / "messages" / "index.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL, "
               "raw_len INTEGER NOT NULL, comp_len INTEGER NOT NULL) WITHOUT ROWID")
    for p in packs(d):
        found, _, _ = scan_pack(p)
        db.executemany("INSERT INTO blobs VALUES (?, ?, ?, ?, ?)",
                       [(r.sha, p.name, r.offset, r.raw_len, r.comp_len) for r in found])
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path.stat().st_size


def _tables(d: Path) -> set[str]:
    db = sqlite3.connect(f"{(d / 'messages' / 'index.sqlite').absolute().as_uri()}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def test_index_of_the_older_layout_is_rebuilt_at_open(tmp_path: Path) -> None:
    data = bodies(600, 400)
    with MessageStore(tmp_path, "s", pack_max_bytes=60_000) as s:
        shas = [s.put(b)[0] for b in data]
    assert len(packs(tmp_path)) > 2
    old_size = _old_layout_index(tmp_path)

    with MessageStore(tmp_path, readonly=True) as r:  # a reader before any writer: scans the packs
        assert len(r) == len(data) and r.get(shas[7]) == data[7]
    assert _tables(tmp_path) == {"blobs"}  # and changed nothing

    with MessageStore(tmp_path, "s", pack_max_bytes=60_000) as s:
        assert "blobs" not in _tables(tmp_path)
        assert len(s) == len(data)
        assert [s.get(h) for h in shas] == data
        assert sorted(s.iter_shas()) == sorted(shas)
        assert s.put(data[3]) == (shas[3], False)  # dedup still works
        assert [r[1] is False for r in s.put_many([(b, None) for b in data[:50]])] == [True] * 50
        assert s.put(b"a new body") == (hashlib.sha256(b"a new body").hexdigest(), True)
    assert len(packs(tmp_path)) == len({p.name for p in packs(tmp_path)})
    new_size = (tmp_path / "messages" / "index.sqlite").stat().st_size
    assert new_size < old_size * 0.7, (new_size, old_size)  # the old table's pages were given back
    with MessageStore(tmp_path, readonly=True) as r:
        assert len(r) == len(data) + 1 and r.get(shas[-1]) == data[-1]


def test_retention_rows_round_trip(tmp_path: Path) -> None:
    """The row calls retention uses: take a pack's rows out, put them back, forget a pack."""
    data = bodies(30)
    with MessageStore(tmp_path, "s", pack_max_bytes=20_000) as s:
        shas = [s.put(b)[0] for b in data]
        first = packs(tmp_path)[0].name
        rows = s.pack_rows(first)
        assert rows and all(r[1] == first for r in rows) and {r[0] for r in rows} <= set(shas)
        with s.index_transaction():
            s.delete_pack_rows(first)
        assert not s.has_pack_rows(first) and rows[0][0] not in s
        with s.index_transaction():
            s.restore_rows(rows)
        assert s.has_pack_rows(first) and s.get(rows[0][0]) == data[shas.index(rows[0][0])]
        with s.index_transaction():
            s.delete_pack_rows(first, forget=True)
        assert len(s) == len(data) - len(rows)
    with MessageStore(tmp_path, "s", pack_max_bytes=20_000) as s:  # the file is still there: re-indexed
        assert len(s) == len(data)


def test_older_layout_opened_by_two_writers_at_once(tmp_path: Path) -> None:
    """Workers start together: one re-indexes, the other waits for it; both see every body."""
    import threading

    data = bodies(300, 400)
    with MessageStore(tmp_path, "w0", pack_max_bytes=40_000) as s:
        shas = [s.put(b)[0] for b in data]
    _old_layout_index(tmp_path)
    opened: dict[str, object] = {}

    def open_store(sensor: str) -> None:
        try:
            opened[sensor] = MessageStore(tmp_path, sensor, pack_max_bytes=40_000)
        except Exception as e:  # pragma: no cover - reported below
            opened[sensor] = e

    threads = [threading.Thread(target=open_store, args=(f"w{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stores = [opened[f"w{k}"] for k in range(2)]
    assert all(isinstance(s, MessageStore) for s in stores), stores
    try:
        for s in stores:
            assert len(s) == len(data)
            assert s.get(shas[-1]) == data[-1]
            assert s.put(data[0]) == (shas[0], False)
    finally:
        for s in stores:
            s.close()
    assert "blobs" not in _tables(tmp_path)
