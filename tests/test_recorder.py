"""Recorder: group commit from an asyncio loop, durability before the future resolves, errors."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
from pathlib import Path

import pytest

from spampots.events import SessionClose, SessionOpen, SmtpMessage, name_of
from spampots.store import MessageStore, ReadStats, Recorder, RecorderError, iter_events, iter_segment_files


def body(i: int) -> bytes:
    return b"Subject: offer %d\r\n\r\n" % i + hashlib.shake_256(b"%d" % i).digest(500 + i) + b"\r\n"


def messages_on_disk(d: Path) -> dict[str, SmtpMessage]:
    return {e.sha256: e for e in iter_events(d) if isinstance(e, SmtpMessage)}


def test_concurrent_emit_durable_is_on_disk_when_resolved(tmp_path: Path) -> None:
    n = 200

    async def main() -> None:
        rec = Recorder(tmp_path, "t1")
        rec.start(asyncio.get_running_loop())
        rec.emit(SessionOpen(session="sess"))

        async def one(i: int) -> None:
            sha = await rec.emit_durable(SmtpMessage(session="sess", mail_from=f"a{i}@x.test", index=i), body(i))
            assert sha == hashlib.sha256(body(i)).hexdigest()
            # read back with fresh readers while the recorder is still running
            with MessageStore(tmp_path, readonly=True) as reader:
                assert reader.get(sha) == body(i)

        await asyncio.gather(*(one(i) for i in range(n)))
        on_disk = messages_on_disk(tmp_path)  # the open segment, read by a fresh reader
        assert len(on_disk) == n
        assert {e.index for e in on_disk.values()} == set(range(n))
        stats = rec.stats
        assert stats.messages == n and stats.bodies_new == n and stats.events == n + 1
        # group commit: far fewer commits and fsyncs than messages
        assert stats.batches < n / 4 and stats.fsyncs < n / 2, stats
        await rec.close()

    asyncio.run(main())
    assert all(p.name.endswith(".jsonl.zst") for p in iter_segment_files(tmp_path))
    st = ReadStats()
    names = [name_of(e) for e in iter_events(tmp_path, stats=st)]
    assert names.count("spampots.smtp.message") == n and st.undecodable == 0 and st.torn == 0


def test_dedup_writes_the_event_every_time(tmp_path: Path) -> None:
    async def main() -> list[str]:
        rec = Recorder(tmp_path, "t1")
        rec.start(asyncio.get_running_loop())
        shas = [await rec.emit_durable(SmtpMessage(index=i), b"same body\r\n") for i in range(3)]
        shas.append(await rec.emit_durable(SmtpMessage(index=3, sha256=shas[0]), b"same body\r\n"))
        assert rec.stats.bodies_new == 1 and rec.stats.messages == 4
        await rec.close()
        return shas

    shas = asyncio.run(main())
    assert len(set(shas)) == 1
    evs = [e for e in iter_events(tmp_path) if isinstance(e, SmtpMessage)]
    assert [e.index for e in evs] == [0, 1, 2, 3] and {e.sha256 for e in evs} == set(shas)


def test_wrong_sha_fails_only_that_future(tmp_path: Path) -> None:
    async def main() -> None:
        rec = Recorder(tmp_path, "t1")
        rec.start(asyncio.get_running_loop())
        bad = rec.emit_durable(SmtpMessage(index=1, sha256="0" * 64), b"body")
        good = rec.emit_durable(SmtpMessage(index=2), b"body")
        with pytest.raises(ValueError):
            await bad
        assert await good == hashlib.sha256(b"body").hexdigest()
        await rec.close()

    asyncio.run(main())
    assert [e.index for e in iter_events(tmp_path) if isinstance(e, SmtpMessage)] == [2]


def test_flush_makes_plain_events_durable(tmp_path: Path) -> None:
    async def main() -> None:
        rec = Recorder(tmp_path, "t1")
        rec.start(asyncio.get_running_loop())
        ev = SessionOpen(session="a")
        rec.emit(ev)
        ev.session = "changed later"  # emit() snapshots the event
        rec.emit(SessionClose(session="a", reason="client_eof"))
        await rec.flush()
        assert [e.session for e in iter_events(tmp_path)] == ["a", "a"]
        await rec.close()
        with pytest.raises(RecorderError):
            rec.emit(SessionOpen())

    asyncio.run(main())


def test_sync_api_without_asyncio(tmp_path: Path) -> None:
    with Recorder(tmp_path, "tool", segment_max_age_s=0.0) as rec:
        rec.emit(SessionOpen(session="x"))
        rec.flush_sync(timeout=5)
        assert [e.session for e in iter_events(tmp_path)] == ["x"]
        sha = rec.emit_durable_sync(SmtpMessage(session="x"), b"hello\r\n", timeout=5)
        with MessageStore(tmp_path, readonly=True) as r:
            assert r.get(sha) == b"hello\r\n"
    # max_age 0: every batch rotated into its own compressed segment
    files = iter_segment_files(tmp_path)
    assert len(files) == 2 and all(f.name.endswith(".zst") for f in files)


def test_restart_appends_to_the_same_store(tmp_path: Path) -> None:
    for i in range(3):
        with Recorder(tmp_path, "s") as rec:
            rec.emit_durable_sync(SmtpMessage(index=i), body(i))
    with MessageStore(tmp_path, readonly=True) as r:
        assert sorted(r.get(e.sha256) for e in messages_on_disk(tmp_path).values()) == sorted(map(body, range(3)))
    assert len(list((tmp_path / "messages").glob("*.pack"))) == 1


def test_disk_full_reaches_futures_and_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="spampots.store")

    async def main() -> None:
        rec = Recorder(tmp_path, "t1")
        rec.start(asyncio.get_running_loop())
        store, seg = rec._store, rec._seg

        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        store.put_many = full  # type: ignore[method-assign]
        with pytest.raises(OSError) as ei:
            await rec.emit_durable(SmtpMessage(index=1), b"body")
        assert ei.value.errno == errno.ENOSPC
        del store.put_many
        real_write = seg.write
        seg.write = full  # type: ignore[method-assign]
        rec.emit(SessionOpen(session="lost"))
        with pytest.raises(OSError):
            await rec.flush()
        seg.write = real_write  # type: ignore[method-assign]
        # the recorder keeps going once the disk has room again
        sha = await rec.emit_durable(SmtpMessage(index=2), b"body")
        assert rec.stats.errors == 2
        await rec.close()
        with MessageStore(tmp_path, readonly=True) as r:
            assert r.get(sha) == b"body"

    asyncio.run(main())
    assert any("No space left" in r.getMessage() for r in caplog.records)
    assert [e.index for e in iter_events(tmp_path) if isinstance(e, SmtpMessage)] == [2]


def test_fsync_off_still_writes(tmp_path: Path) -> None:
    with Recorder(tmp_path, "t", fsync=False) as rec:
        sha = rec.emit_durable_sync(SmtpMessage(), b"x")
        assert rec.stats.fsyncs == 0
    assert sha in messages_on_disk(tmp_path)


def test_failed_pack_fsync_fails_the_whole_batch_and_rolls_back_its_index_rows(tmp_path: Path) -> None:
    """Bodies committed together share one index transaction: when the pack's fsync fails, no
    message of the batch is acknowledged, no event line is written, and no index row names them."""

    async def main() -> None:
        rec = Recorder(tmp_path, "t1")
        rec.start(asyncio.get_running_loop())
        store = rec._store

        def broken_sync() -> None:
            raise OSError(errno.EIO, "Input/output error")

        store.sync = broken_sync  # type: ignore[method-assign]
        results = await asyncio.gather(*(rec.emit_durable(SmtpMessage(index=i), body(i)) for i in range(8)),
                                       return_exceptions=True)
        assert all(isinstance(r, OSError) for r in results)
        assert not any(hashlib.sha256(body(i)).hexdigest() in store for i in range(8))
        del store.sync
        sha = await rec.emit_durable(SmtpMessage(index=99), body(99))  # recovered once the disk behaves
        await rec.close()
        with MessageStore(tmp_path, readonly=True) as r:
            assert r.get(sha) == body(99)

    asyncio.run(main())
    assert [e.index for e in iter_events(tmp_path) if isinstance(e, SmtpMessage)] == [99]


def test_emit_durable_then_calls_back_once_on_the_loop_when_on_disk(tmp_path: Path) -> None:
    # The sessions' form of emit_durable: a callback instead of a future, called as the batch
    # is settled on the loop's thread; an error (a full disk here) is passed to it instead.
    import threading

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rec = Recorder(tmp_path, "t1")
        rec.start(loop)
        got: list = []
        done = asyncio.Event()

        def then(sha, exc) -> None:
            got.append((sha, exc, threading.get_ident()))
            with MessageStore(tmp_path, readonly=True) as reader:  # durable before the call
                got.append(reader.get(sha) if sha else None)
            if len(got) == 4:
                done.set()

        rec.emit_durable_then(SmtpMessage(index=1), body(1), then)
        store = rec._store

        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        await asyncio.wait_for(_wait(lambda: len(got) == 2), 20)
        store.put_many = full  # type: ignore[method-assign]
        rec.emit_durable_then(SmtpMessage(index=2), body(2), then)
        await asyncio.wait_for(done.wait(), 20)
        del store.put_many
        await rec.close()
        assert got[0] == (hashlib.sha256(body(1)).hexdigest(), None, threading.get_ident())
        assert got[1] == body(1)
        sha, exc, tid = got[2]
        assert sha is None and isinstance(exc, OSError) and tid == threading.get_ident()
        await asyncio.sleep(0.1)
        assert len(got) == 4  # each callback once

    asyncio.run(main())


async def _wait(cond) -> None:
    while not cond():
        await asyncio.sleep(0.01)
