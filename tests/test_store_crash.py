"""SIGKILL a recorder mid-burst: everything it acknowledged must be on disk, byte for byte."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spampots.events import SmtpMessage
from spampots.store import MessageStore, ReadStats, Recorder, iter_events, iter_segment_files, scan_pack

CHILD = r"""
import asyncio, hashlib, sys
from spampots.events import SessionOpen, SmtpMessage
from spampots.store import Recorder

def body(i):
    n = (i * 7919) % 150_000 + 1  # up to ~150 KB, incompressible: big pack writes
    return b"Subject: %d\r\n\r\n" % i + hashlib.shake_256(b"%d" % i).digest(n)

async def main():
    rec = Recorder(sys.argv[1], "crash")
    rec.start(asyncio.get_running_loop())
    slots = asyncio.Semaphore(32)

    async def one(i):
        try:
            rec.emit(SessionOpen(session=f"s{i}"))
            sha = await rec.emit_durable(SmtpMessage(session=f"s{i}", index=i), body(i))
            sys.stdout.write(f"{i} {sha}\n")
            sys.stdout.flush()
        finally:
            slots.release()

    i = 0
    while True:  # until SIGKILL
        await slots.acquire()
        asyncio.ensure_future(one(i))
        i += 1

asyncio.run(main())
"""


def body(i: int) -> bytes:
    n = (i * 7919) % 150_000 + 1
    return b"Subject: %d\r\n\r\n" % i + hashlib.shake_256(b"%d" % i).digest(n)


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "var"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    acked: dict[int, str] = {}
    deadline = time.monotonic() + 15
    try:
        while len(acked) < 150 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            i, sha = line.split()
            acked[int(i)] = sha.decode()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate(timeout=10)
    assert len(acked) >= 150, err.decode()[-2000:]
    for line in rest.decode().splitlines():  # printed before the kill, also acknowledged
        parts = line.split()
        if len(parts) == 2 and len(parts[1]) == 64:
            acked[int(parts[0])] = parts[1]

    # Readers work on the dead writer's leftovers as they are (no recovery yet).
    on_disk = {e.sha256 for e in iter_events(data) if isinstance(e, SmtpMessage)}
    for i, sha in acked.items():
        assert sha == hashlib.sha256(body(i)).hexdigest()
        assert sha in on_disk, f"event of acknowledged message {i} missing"
    with MessageStore(data, readonly=True) as r:
        for i, sha in acked.items():
            assert r.get(sha) == body(i)

    # A new recorder re-opens cleanly: recovers segments, trims any torn pack tail.
    with Recorder(data, "crash") as rec:
        new_sha = rec.emit_durable_sync(SmtpMessage(index=-1), b"after the crash\r\n", timeout=10)
    assert not list(data.rglob("*.jsonl")) and not list(data.rglob("*.open")) and not list(data.rglob("*.tmp"))
    for pack in (data / "messages").glob("*.pack"):
        _, good_end, size = scan_pack(pack)
        assert good_end == size
    st = ReadStats()
    on_disk = {e.sha256 for e in iter_events(data, stats=st) if isinstance(e, SmtpMessage)}
    assert st.torn == 0 and st.undecodable == 0 and st.errors == 0
    assert set(acked.values()) | {new_sha} <= on_disk
    with MessageStore(data, "crash") as s:
        assert s.get(new_sha) == b"after the crash\r\n"
        for i, sha in acked.items():
            assert s.get(sha) == body(i)
    assert all(f.name.endswith(".zst") for f in iter_segment_files(data))


def test_workers_opening_a_new_store_at_once_wait_for_the_index(tmp_path: Path) -> None:
    """Workers open a fresh store at the same moment; SQLite can answer "database is locked"
    at once (a deadlock between two schema creations) or after its 5 s busy wait. Both are
    retried: here another connection holds the index for longer than that busy wait."""
    import sqlite3
    import threading

    from spampots.store.messages import INDEX_NAME, MESSAGES_DIR

    MessageStore(tmp_path, "w0").close()  # the index exists, in WAL mode
    holder = sqlite3.connect(tmp_path / MESSAGES_DIR / INDEX_NAME, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(6.5, holder.rollback).start()
    t = time.monotonic()
    store = MessageStore(tmp_path, "w1")  # sqlite3's own busy timeout gives up after 5 s
    try:
        assert time.monotonic() - t > 6.0
        sha, new = store.put(b"Subject: x\r\n\r\nbody\r\n")
        assert new and store.get(sha) == b"Subject: x\r\n\r\nbody\r\n"
    finally:
        store.close()
        holder.close()
