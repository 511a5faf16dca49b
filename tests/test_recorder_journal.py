"""The recorder's journal: one fdatasync per batch, and a crash that loses what the pack and the
segment had not synced yet loses nothing acknowledged (store/journal.py)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from spampots.events import SessionOpen, SmtpMessage
from spampots.store import MessageStore, ReadStats, Recorder, iter_events, iter_segment_files
from spampots.store.journal import Journal, journal_name

CHILD = r"""
import asyncio, hashlib, json, os, signal, sys
from spampots.events import SessionOpen, SmtpMessage
from spampots.store import Recorder, recorder

recorder._PLAIN_SYNC_S = 3600.0  # no checkpoint: every message after the flush lives in the journal only

def body(i):
    k = i % 12 + 5 if i >= 100 else i  # later ones repeat bodies: of before the crash point, and of each other
    return b"Subject: %d\r\n\r\n" % k + hashlib.shake_256(b"%d" % k).digest(500) + b"\r\n"

async def main():
    d = sys.argv[1]
    rec = Recorder(d, "jr")
    rec.start(asyncio.get_running_loop())
    for i in range(10):  # durable before the "crash" point
        await rec.emit_durable(SmtpMessage(session=f"s{i}", index=i), body(i))
    rec.emit(SessionOpen(session="before"))
    await rec.flush()  # a checkpoint: pack and segment synced, the journal empty
    sizes = {str(p): p.stat().st_size for p in list(rec._store.dir.glob("*.pack")) + [rec._seg.current]}
    print(json.dumps(sizes), flush=True)
    checkpointed = rec._synced_at
    for start in range(100, 160, 6):
        shas = await asyncio.gather(*(rec.emit_durable(SmtpMessage(session=f"s{i}", index=i), body(i))
                                      for i in range(start, start + 6)))
        for i, sha in zip(range(start, start + 6), shas):
            print(i, sha, flush=True)
    assert rec._synced_at == checkpointed and rec._journal.pending  # all of it in this journal round
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def body(i: int) -> bytes:
    k = i % 12 + 5 if i >= 100 else i
    return b"Subject: %d\r\n\r\n" % k + hashlib.shake_256(b"%d" % k).digest(500) + b"\r\n"


def message_events(d: Path) -> Counter[int]:
    st = ReadStats()
    got = Counter(e.index for e in iter_events(d, stats=st) if isinstance(e, SmtpMessage))
    assert st.undecodable == 0 and st.errors == 0
    return got


@pytest.mark.parametrize("lost", ["pack", "segment", "both"])
def test_a_crash_after_the_journal_sync_loses_nothing_acknowledged(tmp_path: Path, lost: str) -> None:
    """Acknowledged messages whose bodies and events were journaled but not yet synced in the
    pack or the segment (a machine crash loses those writes: simulated by cutting the files
    back to their size at the last checkpoint) are put back by the next start, once each."""
    data = tmp_path / "var"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    out = proc.stdout.decode().splitlines()
    sizes = json.loads(out[0])
    acked = {int(i): sha for i, sha in (line.split() for line in out[1:])}
    assert len(acked) == 60
    assert any(p.endswith(".pack") for p in sizes)
    for path, size in sizes.items():
        if lost == "both" or path.endswith(".pack") == (lost == "pack"):  # else the open segment
            assert os.path.getsize(path) > size  # the batches after the checkpoint got there...
            os.truncate(path, size)  # ...and the crash took them away again
    assert all(message_events(data)[i] == 0 for i in acked) or lost == "pack"

    with Recorder(data, "jr") as rec:  # recovery
        rec.emit_durable_sync(SmtpMessage(session="after", index=999), b"after\r\n", timeout=10)
    with Recorder(data, "jr"):  # a second start replays nothing again
        pass
    got = message_events(data)
    assert all(got[i] == 1 for i in acked), {i: got[i] for i in acked if got[i] != 1}
    assert got[999] == 1 and all(got[i] == 1 for i in range(10))
    with MessageStore(data, readonly=True) as r:
        for i, sha in acked.items():
            assert sha == hashlib.sha256(body(i)).hexdigest()
            assert r.get(sha) == body(i)
    assert all(f.name.endswith(".zst") for f in iter_segment_files(data))


def test_one_data_sync_per_batch_and_a_checkpoint_resets_the_journal(tmp_path: Path) -> None:
    async def main() -> None:
        rec = Recorder(tmp_path, "t1")
        rec.start(asyncio.get_running_loop())
        rec.emit(SessionOpen(session="s"))
        await rec.flush()  # the segment exists from now on
        journal = rec._journal
        assert journal is not None and not journal.pending
        f0, j0 = rec.stats.fsyncs, journal.fsyncs
        await asyncio.gather(*(rec.emit_durable(SmtpMessage(index=i), b"m%d\r\n" % i) for i in range(5)))
        # the batch: one journal record and its fdatasync, nothing else synced
        assert journal.fsyncs - j0 == 1 and rec.stats.fsyncs - f0 == 1
        assert journal.pending
        await rec.flush()  # a checkpoint: pack and segment synced, the journal starts over
        assert not journal.pending
        await rec.close()

    asyncio.run(main())
    assert not (tmp_path / "messages" / journal_name("t1")).exists()  # a clean close leaves no journal
    assert sorted(e.index for e in iter_events(tmp_path) if isinstance(e, SmtpMessage)) == list(range(5))


def test_a_failed_journal_sync_fails_the_batch(tmp_path: Path) -> None:
    async def main() -> None:
        rec = Recorder(tmp_path, "t1")
        rec.start(asyncio.get_running_loop())
        rec.emit(SessionOpen(session="s"))
        await rec.flush()
        journal = rec._journal

        def broken(*a: object) -> None:
            raise OSError(errno.EIO, "Input/output error")

        journal.append = broken  # type: ignore[method-assign]
        results = await asyncio.gather(*(rec.emit_durable(SmtpMessage(index=i), b"m%d\r\n" % i) for i in range(4)),
                                       return_exceptions=True)
        assert all(isinstance(r, OSError) for r in results)
        assert not any(hashlib.sha256(b"m%d\r\n" % i).hexdigest() in rec._store for i in range(4))
        del journal.append
        await rec.emit_durable(SmtpMessage(index=9), b"m9\r\n")
        await rec.close()

    asyncio.run(main())
    assert [e.index for e in iter_events(tmp_path) if isinstance(e, SmtpMessage)] == [9]


def test_a_torn_or_stale_journal_record_ends_the_round(tmp_path: Path) -> None:
    mdir = tmp_path / "messages"
    mdir.mkdir()
    j = Journal(mdir, "w")
    j.append("events/x.jsonl", b'{"a":1}\n', [])
    j.append("events/x.jsonl", b'{"a":2}\n', [])
    j.append("events/x.jsonl", b'{"a":3}\n', [])
    assert [e.lines for e in j.read()] == [b'{"a":1}\n', b'{"a":2}\n', b'{"a":3}\n']
    j.checkpoint()
    assert j.read() == []  # the first header zeroed: nothing to replay
    j._dsync = False  # where pwritev(RWF_DSYNC) is missing: pwrite, then fdatasync
    j.append("events/x.jsonl", b'{"b":1}\n', [])  # a new round over the old records
    assert [e.lines for e in j.read()] == [b'{"b":1}\n']  # the old ones after it are stale
    with open(mdir / journal_name("w"), "r+b") as f:  # tear the new record
        f.seek(30)
        f.write(b"\xff")
    assert j.read() == []
    j.close()


def test_a_failed_record_is_written_over_and_the_chain_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spampots.store import journal as jmod

    j = Journal(tmp_path, "w")
    j._dsync = False  # the pwrite + fdatasync path, where a failed sync can leave the record behind
    j.append("events/x.jsonl", b'{"a":1}\n', [])

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(jmod, "fdatasync", eio)
    with pytest.raises(OSError):
        j.append("events/x.jsonl", b'{"lost":1}\n', [])  # written, not synced: its batch failed
    monkeypatch.undo()
    j.append("events/x.jsonl", b'{"a":2}\n', [])
    assert [e.lines for e in j.read()] == [b'{"a":1}\n', b'{"a":2}\n']
    j.close()
    j2 = Journal(tmp_path, "w")  # a restarted writer numbers above everything in the file
    assert [e.lines for e in j2.read()] == [b'{"a":1}\n', b'{"a":2}\n'] and j2._seq > 0
    j2.checkpoint()
    j2.append("events/y.jsonl", b'{"b":1}\n', [])
    assert [e.lines for e in j2.read()] == [b'{"b":1}\n']
    j2.close(remove=True)
    assert not (tmp_path / journal_name("w")).exists()
