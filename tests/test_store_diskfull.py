"""A full disk under a real sensor: no 250 without storage, bounded files and log lines,
an honest summary, and a restart on the still-full disk that comes up.

Needs root to mount a small tmpfs as the data dir (skipped otherwise).
"""

from __future__ import annotations

import hashlib
import os
import re
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import start_sensor
from spampots.events import LimitHit, SmtpMessage
from spampots.store import MessageStore, ReadStats, iter_events, iter_segment_files

CONFIG = """
[sensor]
summary_interval_s = 1
[store]
min_free_mb = 0
[limits]
new_sessions_per_s_per_ip = 100000
max_sessions_per_ip = 1000
"""


def tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` as <tmp_path>/var (skips the test without root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "var"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "4m")


@pytest.fixture
def disk_16m(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "16m")


def _fill(mnt: Path, leave: int = 0) -> Path:
    """Take every free byte of the filesystem (but about ``leave``) with one file."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            while True:
                st = os.statvfs(mnt)
                if st.f_bavail * st.f_frsize - size < leave:
                    break
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def _body(i: int) -> bytes:
    return (b"Subject: disk full %d\r\n\r\n" % i) + hashlib.sha256(b"%d" % i).hexdigest().encode() * 40 + b"\r\n"


def _send(port: int, i: int) -> bool:
    """True if the sensor answered 250 to the message."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            s.sendmail("spam@bad.example", ["victim@example.com"], _body(i))
        return True
    except (smtplib.SMTPException, OSError):
        return False


def _problems(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.search(r" (WARNING|ERROR|CRITICAL) ", ln) or "Traceback" in ln]


def _stopped_messages(text: str) -> int:
    m = re.findall(r"stopped; .*?messages (\d+)", text)
    assert m, text[-3000:]
    return int(m[-1])


def test_full_disk(small_disk: Path, tmp_path: Path) -> None:
    sp = start_sensor(tmp_path / "run1", config=CONFIG, data_dir=small_disk, args=("--user", ""))
    port = sp.port(25)
    acked: set[int] = set()
    try:
        for i in range(5):  # room to spare: these are stored
            assert _send(port, i)
            acked.add(i)
        filler = _fill(small_disk)
        failed = 0
        for i in range(5, 205):  # about 200 attempts on a full disk
            if _send(port, i):
                acked.add(i)
            else:
                failed += 1
        assert failed >= 150  # the disk really was full
    finally:
        assert sp.stop(timeout=30) == 0
    log1 = sp.stderr()
    assert "Traceback" not in log1, log1[-3000:]
    # bounded: a handful of segment files, not one per failed write
    segs = iter_segment_files(small_disk)
    assert len(segs) <= 4, segs
    # bounded log: repeated failures are summed up, not one line each
    problems = _problems(log1)
    assert len(problems) <= 25, "\n".join(problems[:40])
    # honest: the summary counts what was stored, which is exactly what got a 250
    st = ReadStats()
    stored = {ev.subject for ev in iter_events(small_disk, stats=st) if isinstance(ev, SmtpMessage)}
    assert stored == {f"disk full {i}" for i in acked}
    assert _stopped_messages(log1) == len(acked)
    with MessageStore(small_disk, readonly=True) as store:  # every stored event has its body
        for ev in iter_events(small_disk):
            if isinstance(ev, SmtpMessage):
                assert store.get(ev.sha256)

    # a restart on the still-full disk comes up, recovers what it can, and refuses to lie
    _fill(small_disk)  # what the clean stop freed (its journal) is taken again: no room even for one
    sp2 = start_sensor(tmp_path / "run2", config=CONFIG, data_dir=small_disk, args=("--user", ""))
    try:
        assert not _send(sp2.port(25), 1000)
        # room again: capture resumes without a restart
        filler.unlink()
        assert any(_send(sp2.port(25), 1001) for _ in range(3))
        acked.add(1001)
    finally:
        assert sp2.stop(timeout=30) == 0
    log2 = sp2.stderr()
    assert "Traceback" not in log2, log2[-3000:]
    assert "messages are refused until space is freed" in log2  # said once, at start
    assert len(_problems(log2)) <= 10, log2[-3000:]
    assert _stopped_messages(log2) == 1
    assert len(iter_segment_files(small_disk)) <= 6
    # everything acknowledged is readable
    st = ReadStats()
    stored = {ev.subject for ev in iter_events(small_disk, stats=st) if isinstance(ev, SmtpMessage)}
    assert stored == {f"disk full {i}" for i in acked}
    assert st.errors == 0 and st.undecodable == 0


def _send_code(port: int, i: int) -> int:
    """The reply code to the message (250 if taken; DATA's or the body's refusal code)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            s.sendmail("spam@bad.example", ["victim@example.com"], _body(i))
        return 250
    except smtplib.SMTPDataError as e:
        return e.smtp_code
    except (smtplib.SMTPException, OSError):
        return -1


def _until(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_free_space_floor_refuses_mail_and_resumes(disk_16m: Path, tmp_path: Path) -> None:
    """Below [store] min_free_mb: DATA gets 452 (one log line), the sensor keeps serving,
    and once there is room again it takes mail without a restart (one more line)."""
    cfg = CONFIG.replace("min_free_mb = 0", "min_free_mb = 6").replace("[sensor]\n", "[sensor]\nheartbeat_interval_s = 0.5\n")
    sp = start_sensor(tmp_path / "run", config=cfg, data_dir=disk_16m, args=("--user", ""))
    port = sp.port(25)
    acked: set[int] = set()
    codes: list[int] = []
    n = iter(range(1, 10**6))

    def send() -> int:
        i = next(n)
        code = _send_code(port, i)
        if code == 250:
            acked.add(i)
        return code

    try:
        assert send() == 250
        filler = _fill(disk_16m, leave=3 << 20)  # about 3 MB left: below the 6 MB floor, not full
        assert _until(lambda: send() == 452), "no 452 below the floor"  # within a poll or so
        for _ in range(40):  # below the floor: every DATA refused, never a 250
            codes.append(send())
        assert _until(lambda: any(e.health and e.health.disk_low for e in sp.events("spampots.sensor.heartbeat")))
        # still serving sessions: a SOCKS5 greeting is answered
        with socket.create_connection(("127.0.0.1", sp.port(1080)), timeout=10) as c:
            c.sendall(b"\x05\x01\x00")
            assert c.recv(2) == b"\x05\x00"
        filler.unlink()  # room again
        assert _until(lambda: send() == 250), "no 250 after space was freed"
        assert send() == 250
    finally:
        assert sp.stop(timeout=30) == 0
    assert codes == [452] * len(codes), codes
    log = sp.stderr()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("below [store] min_free_mb = 6: refusing mail") == 1, log[-3000:]
    assert log.count("free again: accepting mail") == 1, log[-3000:]
    hits = [e for e in iter_events(disk_16m) if isinstance(e, LimitHit) and e.limit == "min_free_mb"]
    assert hits and sum(e.count for e in hits) >= len(codes), hits
    assert all(e.value == 6 and e.observed < 6 for e in hits)
    stop = [e for e in iter_events(disk_16m) if type(e).__name__ == "SensorStop"][-1]
    assert stop.health is not None and not stop.health.disk_low  # resumed
    stored = {ev.subject for ev in iter_events(disk_16m) if isinstance(ev, SmtpMessage)}
    assert stored == {f"disk full {i}" for i in acked}


def test_rate_limited_log_says_how_many_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from spampots.lograte import RateLimitedLog

    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("spampots.test"), interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="spampots.test"):
        for i in range(1000):  # 1,000 failures in 5 s: one line
            now[0] = i * 0.005
            rl.error("write failed: %s", "ENOSPC")
        now[0] = 10.0
        rl.error("write failed: %s", "ENOSPC")  # the next interval: one line with the count
        rl.error("write failed: %s", "ENOSPC")
        rl.flush()  # at shutdown: the rest
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["write failed: ENOSPC",
                     "write failed: ENOSPC (and 999 more like it since the last such line)",
                     "1 more like this since the last such line, the last: write failed: ENOSPC"]
    assert rl.total == 1002


def test_smtp_refuses_data_below_the_floor_before_the_body() -> None:
    """Sans-IO: with the budget's disk_low set, DATA itself gets 452 4.3.1 (no 354, no body
    read), recorded as a min_free_mb limit hit; the session goes on; cleared, DATA is 354."""
    from spampots.protocols.base import Context
    from spampots.protocols.budget import MemoryBudget
    from spampots.protocols.smtp import SmtpServer

    pool = MemoryBudget(1 << 20)
    smtp = SmtpServer(Context(budget=pool.account()).for_session("192.0.2.1", 1, "127.0.0.1", ""), greet=False)
    pool.disk_low = (256.0, 12.5)
    acts = smtp.receive(b"EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    out = b"".join(a for a in acts if isinstance(a, bytes))
    assert out.endswith(b"452 4.3.1 Insufficient system storage\r\n") and b"354" not in out
    assert [(h.limit, h.value, h.observed) for h in acts if isinstance(h, LimitHit)] == [("min_free_mb", 256.0, 12.5)]
    pool.disk_low = None
    acts = smtp.receive(b"DATA\r\n")
    assert b"".join(a for a in acts if isinstance(a, bytes)).startswith(b"354 ")
    acts = smtp.receive(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert [a for a in acts if type(a).__name__ == "Durable"]


def test_recorder_call_runs_in_the_writer_thread(tmp_path: Path) -> None:
    import threading

    from spampots.store import Recorder

    with Recorder(tmp_path / "var", "t") as rec:
        seen = rec.call_sync(lambda store: (threading.current_thread().name, store.sensor), timeout=10)
    assert seen == ("spampots-recorder", "t")


def test_free_space_watch_has_hysteresis() -> None:
    """Below the floor: low; back up only at 5% (at least 1 MB) over it, so a disk hovering
    at the floor does not flip (and log) on every check. 0 is off; an unknown figure changes nothing."""
    from spampots.store.space import FreeSpaceWatch

    free = [300_000_000, False]
    w = FreeSpaceWatch(".", 256, probe=lambda _: (free[0], free[1]))
    seen = []
    for mb in (300, 255, 257, 260, 268, 269, 255):
        free[0] = mb * 1_000_000
        seen.append(w.poll())
    assert seen == [None, True, None, None, None, False, True]
    free[0] = 400_000_000
    free[1] = True  # no inodes left: low whatever the bytes say
    assert w.poll() is None and w.low
    free[1] = False
    assert w.poll() is False
    free[0] = -1  # statvfs failed
    assert w.poll() is None and not w.low
    assert FreeSpaceWatch(".", 0, probe=lambda _: (0, True)).poll() is None  # off
