"""Worker processes: one sensor, several processes on the same ports (SO_REUSEPORT)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import smtplib
import socket
import threading
import time
from pathlib import Path

from clients import make_message
from conftest import start_sensor

WORKERS_CONFIG = ("[sensor]\nworkers = {n}\nsummary_interval_s = 0.5\n"
                  "[limits]\nnew_sessions_per_s_per_ip = 100000\nmax_sessions_per_ip = 1000\n")


def workers_of(pid: int, n: int, timeout: float = 20.0) -> list[int]:
    """The pids of the supervisor's n children, once there are n."""
    deadline = time.time() + timeout
    while True:
        kids = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(p) for p in (task / "children").read_text().split()]
        if len(kids) == n or time.time() > deadline:
            return sorted(kids)
        time.sleep(0.05)


def stored(data_dir: Path, acked: list[bytes]) -> list[bytes]:
    """The acknowledged messages missing from the store (event and body)."""
    from spampots.store.messages import MessageStore
    from spampots.store.segments import iter_events

    shas = {e.sha256 for e in iter_events(data_dir) if type(e).__name__ == "SmtpMessage"}
    store = MessageStore(data_dir, readonly=True)
    try:
        return [raw for raw in acked
                if hashlib.sha256(raw).hexdigest() not in shas or store.get(hashlib.sha256(raw).hexdigest()) != raw]
    finally:
        store.close()


def test_kill9_of_one_worker_loses_no_acknowledged_message(tmp_path):
    sp = start_sensor(tmp_path, config=WORKERS_CONFIG.format(n=2), wait_port=25)
    acked: list[tuple[float, bytes]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
                    s.ehlo("workers")
                    for _ in range(5):  # a few per connection: the kernel spreads connections
                        raw = make_message(n * 1_000_000 + i, body=f"client {n} message {i}\n" + "y" * (i * 53 % 3000))
                        i += 1
                        s.sendmail("a@b.example", ["c@d.example"], raw)  # returns after our 250 only
                        with lock:
                            acked.append((time.monotonic(), raw))
                        if stop.is_set():
                            break
            except (OSError, smtplib.SMTPException):
                i += 1  # cut by the kill: that one was never acknowledged; go on with a new one
                time.sleep(0.01)

    try:
        before = workers_of(sp.proc.pid, 2)
        assert len(before) == 2, f"workers: {before}"
        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        deadline = time.time() + 20
        while len(acked) < 60 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(before[1], signal.SIGKILL)
        killed_at = time.monotonic()
        # the other worker keeps serving, and the dead one comes back
        deadline = time.time() + 20
        while time.time() < deadline:
            after = workers_of(sp.proc.pid, 2, timeout=0.1)
            if len(after) == 2 and before[1] not in after:
                break
            time.sleep(0.05)
        assert before[0] in after and before[1] not in after and len(after) == 2, f"{before} -> {after}"
        n_then = len(acked)
        deadline = time.time() + 20
        while len(acked) < n_then + 60 and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(20)
        assert sum(1 for t, _ in acked if t > killed_at) >= 60, "little was served after the kill"
        # 40 fresh connections, spread over both sockets: the restarted worker serves too
        for n in range(40):
            with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
                raw = make_message(9_000_000 + n, body="after\n")
                s.sendmail("a@b.example", ["c@d.example"], raw)
                acked.append((time.monotonic(), raw))
        assert sp.stop(timeout=60) == 0
    finally:
        stop.set()
        sp.stop(timeout=60)
    err = sp.stderr()
    assert "died (signal 9): restarting it" in err
    assert "Traceback" not in err
    assert len(acked) > 120
    missing = stored(sp.data_dir, [raw for _, raw in acked])
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged messages are not in the store"
    assert "workers 0 of 2 (restarts 1)" in err


def is_open(c: socket.socket) -> bool:
    c.setblocking(False)
    try:
        return c.recv(1, socket.MSG_DONTWAIT) != b""
    except (BlockingIOError, TimeoutError):
        return True
    except OSError:
        return False


def test_limits_hold_for_the_whole_sensor(tmp_path):
    """Per source: at most max_sessions_per_ip over all workers; in total: max_sessions."""
    config = ("[sensor]\nworkers = 3\n[limits]\nmax_sessions_per_ip = 6\nmax_sessions = 10\n"
              "new_sessions_per_s_per_ip = 100000\n")
    sp = start_sensor(tmp_path, config=config, wait_port=1080)
    held: list[socket.socket] = []
    try:
        assert len(workers_of(sp.proc.pid, 3)) == 3

        def open_from(src: str, n: int) -> int:
            """Sessions from src that the sensor keeps open (a refused one is closed at once)."""
            mine = []
            for _ in range(n):
                c = socket.create_connection(("127.0.0.1", sp.port(1080)), timeout=5, source_address=(src, 0))
                mine.append(c)
            time.sleep(0.5)
            alive = []
            for c in mine:
                c.sendall(b"\x05\x01\x00")
                try:
                    ok = c.recv(2) == b"\x05\x00"
                except OSError:
                    ok = False
                (alive if ok else held).append(c)
            held.extend(alive)
            return len(alive)

        assert open_from("127.0.0.21", 12) == 6  # whichever worker each connection reached
        assert 1 <= open_from("127.0.0.22", 12) <= 6
        time.sleep(0.5)
        # the house holds 10 over all workers: room was made by closing the least progress
        # (in the worker each new connection reached)
        assert sum(is_open(c) for c in held) == 10
    finally:
        for c in held:
            c.close()
        sp.stop(timeout=60)
    hits = sp.events("spampots.limit.hit")
    assert {h.limit for h in hits} >= {"max_sessions_per_ip", "max_sessions"}


def test_sigterm_stops_every_worker_with_one_summary(tmp_path):
    sp = start_sensor(tmp_path, config=WORKERS_CONFIG.format(n=2), wait_port=25)
    kids = workers_of(sp.proc.pid, 2)
    for n in range(20):  # fresh connections: the kernel spreads them over both workers
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
            s.sendmail("a@b.example", ["c@d.example"], make_message(n))
    assert sp.stop(timeout=60) == 0
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    err = sp.stderr()
    assert err.count("stopped; ") == 1 and "messages 20," in err.split("stopped; ")[1]
    starts = sp.events("spampots.sensor.start")
    assert len(starts) == 1 and starts[0].workers == 2
    assert len(sp.events("spampots.sensor.stop")) == 1
    segments = {p.name.split("-")[-2] for p in (sp.data_dir / "events").rglob("*.jsonl*")}
    assert segments == {str(p) for p in kids}, "each worker writes its own segments"


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_metrics_tell_the_sensor_and_workers_stop_with_a_dead_supervisor(tmp_path):
    """One metrics port: whichever worker answers tells the sensor's totals (sessions made
    through both workers add up) and one spampots_worker_* series per worker; a supervisor
    killed with -9 takes its workers down (they stop cleanly) instead of leaving them
    serving unsupervised."""
    import random

    mport = random.randrange(20000, 60000)
    while not _free(mport):
        mport = random.randrange(20000, 60000)
    config = WORKERS_CONFIG.format(n=2) + f"[metrics]\nenable = true\nport = {mport}\n"
    sp = start_sensor(tmp_path, config=config, wait_port=1080)
    held = []
    try:
        kids = workers_of(sp.proc.pid, 2)
        assert len(kids) == 2
        for _ in range(20):
            c = socket.create_connection(("127.0.0.1", sp.port(1080)), timeout=5)
            c.sendall(b"\x05\x01\x00")
            assert c.recv(2) == b"\x05\x00"
            held.append(c)
        for n in range(10):  # closed sessions, spread over both workers
            with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
                s.sendmail("a@b.example", ["c@d.example"], make_message(n))
        time.sleep(2.5)  # each worker publishes its figures about once a second
        scrapes = [_scrape(mport) for _ in range(12)]  # the kernel spreads them over both workers
        answered = {int(m['spampots_worker_pid{worker="0"}']) for m in scrapes}
        for m in scrapes:
            assert m["spampots_sessions_open"] == 20
            assert m['spampots_messages_total{port="%d",protocol="smtp"}' % sp.port(25)] == 10
            per = [m[f'spampots_worker_sessions_open{{worker="{k}"}}'] for k in (0, 1)]
            assert sum(per) == 20 and min(per) > 0, per  # both workers hold some
            msgs = [m[f'spampots_worker_messages_total{{worker="{k}"}}'] for k in (0, 1)]
            assert sum(msgs) == 10
            assert m['spampots_worker_up{worker="0"}'] == m['spampots_worker_up{worker="1"}'] == 1
            assert not any(k.startswith("process_") for k in m)  # one worker's: replaced by spampots_worker_*
        assert {int(m['spampots_worker_pid{worker="1"}']) for m in scrapes} | answered <= set(kids)
        sp.kill9()
        deadline = time.time() + 30
        while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in kids):
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for pid in kids), "workers outlived their supervisor"
    finally:
        for c in held:
            c.close()
        sp.stop()
    stops = sp.events("spampots.sensor.stop")
    assert len(stops) == 1  # worker 0 stopped cleanly, with the sensor's figures
    assert sum(t.messages for t in stops[0].tallies) == 10
    assert stops[0].counters["spampots.session.open"] >= 30  # and the start-up probe


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_port_another_program_holds_is_not_shared_silently(tmp_path):
    """SO_REUSEPORT would let the workers join a program that set it too: a plain bind
    first finds the port in use, as a single process would."""
    from conftest import pick_offset

    offset = pick_offset()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    squatter.bind(("127.0.0.1", 25 + offset))
    squatter.listen()
    try:
        sp = start_sensor(tmp_path, config=WORKERS_CONFIG.format(n=2), offset=offset, args=("--strict",),
                          wait_port=None)
        try:
            assert sp.proc.wait(60) == 2
        finally:
            sp.stop()
    finally:
        squatter.close()
    assert f"port {25 + offset}: already in use" in sp.stderr()


def test_workers_never_dial_out(tmp_path):
    """The audit hook of tests/test_sensor_ops.py, with the sensor forking its workers."""
    from clients import ProxySMTP
    from test_sensor_ops import curl

    audit = tmp_path / "audit.log"
    sp = start_sensor(tmp_path, config=WORKERS_CONFIG.format(n=2), audit_file=audit)
    try:
        assert len(workers_of(sp.proc.pid, 2)) == 2
        for n in range(4):  # fresh connections reach both workers
            curl("--proxy", f"http://127.0.0.1:{sp.port(8080)}", f"http://dial{n}.example.com/")
            with ProxySMTP(f"socks5://127.0.0.1:{sp.port(1080)}", "gmail-smtp-in.l.google.com", 25,
                           rdns=True, timeout=10) as s:
                s.sendmail("a@b.example", ["c@gmail.com"], make_message(n))
        msgs = sp.events("spampots.smtp.message", wait_for=4)
    finally:
        sp.stop(timeout=60)
    assert len(msgs) == 4
    log = audit.read_text() if audit.exists() else ""
    assert log == "", f"the sensor made outbound network calls:\n{log}"


def test_status_sees_the_stop_among_the_workers_beats(tmp_path, capsys):
    """Every worker beats in its own segment; the sensor's stop (worker 0's) is the newest
    lifecycle event even where another worker's segment sorts after it."""
    from spampots.cli import main as cli_main

    config = WORKERS_CONFIG.format(n=2).replace("[sensor]\n", "[sensor]\nheartbeat_interval_s = 0.5\n")
    sp = start_sensor(tmp_path, config=config, wait_port=25)
    try:
        assert len(workers_of(sp.proc.pid, 2)) == 2
        for n in range(10):  # fresh connections: both workers store some
            with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
                s.sendmail("a@b.example", ["c@d.example"], make_message(n))
        deadline = time.time() + 20
        while time.time() < deadline:  # the newest beat of each worker has its messages
            last = {b.worker: b for b in sp.events("spampots.sensor.heartbeat")}
            if len(last) == 2 and sum(t.messages for b in last.values() for t in b.tallies) == 10:
                break
            time.sleep(0.2)
        per_worker = {k: sum(t.messages for t in b.tallies) for k, b in last.items()}
        assert min(per_worker.values()) > 0, per_worker
        capsys.readouterr()
        assert cli_main(["status", "--data-dir", str(sp.data_dir), "--sensor", "test-sensor",
                         "--min-free-mb", "0"]) == 0
        out = capsys.readouterr().out
        smtp_line = re.compile(rf"port {sp.port(25)} smtp: sessions 1[01], messages 10,")  # 11: the start-up probe
        assert "(2 workers added up)" in out and smtp_line.search(out), out
        for k in (0, 1):
            assert f"worker {k}: last heard" in out and f"messages {per_worker[k]}" in out
    finally:
        code = sp.stop(timeout=60)
    assert code == 0
    beats = sp.events("spampots.sensor.heartbeat")
    assert {b.worker for b in beats} == {0, 1}
    assert cli_main(["status", "--data-dir", str(sp.data_dir), "--sensor", "test-sensor",
                     "--min-free-mb", "0"]) == 1
    out = capsys.readouterr().out
    assert "sensor stopped at" in out and smtp_line.search(out), out


def test_the_sensor_counts_never_go_back_when_a_worker_dies(tmp_path):
    """A worker started again after kill -9 goes on from its predecessor's figures: the
    sensor's counters in the metrics and the heartbeats do not drop (no false counter reset)."""
    import random

    mport = random.randrange(20000, 60000)
    while not _free(mport):
        mport = random.randrange(20000, 60000)
    config = (WORKERS_CONFIG.format(n=2).replace("[sensor]\n", "[sensor]\nheartbeat_interval_s = 0.5\n")
              + f"[metrics]\nenable = true\nport = {mport}\n")
    sp = start_sensor(tmp_path, config=config, wait_port=25)
    try:
        kids = workers_of(sp.proc.pid, 2)
        for n in range(12):
            with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
                s.sendmail("a@b.example", ["c@d.example"], make_message(n))
        time.sleep(2.5)
        before = _scrape(mport)
        key = 'spampots_messages_total{port="%d",protocol="smtp"}' % sp.port(25)
        assert before[key] == 12
        victim = int(before['spampots_worker_pid{worker="1"}'])
        assert victim in kids and before['spampots_worker_messages_total{worker="1"}'] > 0
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 30
        while time.time() < deadline:
            after = workers_of(sp.proc.pid, 2, timeout=0.1)
            if len(after) == 2 and victim not in after:
                break
            time.sleep(0.05)
        time.sleep(2.5)
        for _ in range(6):
            m = _scrape(mport)
            assert m[key] == 12
            assert m['spampots_worker_restarts_total{worker="1"}'] == 1
            assert m['spampots_worker_messages_total{worker="1"}'] == before['spampots_worker_messages_total{worker="1"}']
    finally:
        sp.stop(timeout=60)
    beats = [b for b in sp.events("spampots.sensor.heartbeat") if b.worker == 1]
    assert sum(t.messages for t in beats[-1].tallies) == before['spampots_worker_messages_total{worker="1"}']


def test_status_tells_a_worker_that_hangs(tmp_path, capsys):
    """Heartbeats are per worker: a worker that stops beating (here: stopped with SIGSTOP)
    makes the sensor unhealthy while the others beat on."""
    from spampots.cli import main as cli_main

    config = WORKERS_CONFIG.format(n=2).replace("[sensor]\n", "[sensor]\nheartbeat_interval_s = 0.5\n")
    sp = start_sensor(tmp_path, config=config, wait_port=25)
    kids = workers_of(sp.proc.pid, 2)
    try:
        sp.events("spampots.sensor.heartbeat", wait_for=4, timeout=20)
        hung = sorted(kids)[1]
        os.kill(hung, signal.SIGSTOP)
        try:
            deadline = time.time() + 20
            while time.time() < deadline:
                capsys.readouterr()
                code = cli_main(["status", "--data-dir", str(sp.data_dir), "--sensor", "test-sensor",
                                 "--min-free-mb", "0"])
                out = capsys.readouterr().out
                if code == 1:
                    break
                time.sleep(0.3)
        finally:
            os.kill(hung, signal.SIGCONT)
        assert code == 1 and "running" in out, out
        assert re.search(r"unhealthy: worker [01]: no heartbeat for", out), out
        assert "unhealthy: no heartbeat for" not in out  # the sensor as a whole is heard
    finally:
        sp.stop(timeout=60)


def test_figures_board_keeps_the_last_complete_figures():
    """A worker killed in the middle of writing its figures leaves the previous ones readable
    (its successor carries them on); a slot never written reads as nothing."""
    from spampots.metrics import Figures
    from spampots.sensor.board import _HALF_HEAD, FigureBoard

    board = FigureBoard(2)
    try:
        assert board.read(0) is None and board.read_all() == []
        board.write(0, Figures(worker=0, counters={"spampots.smtp.message": 5}))
        board.write(0, Figures(worker=0, counters={"spampots.smtp.message": 7}))
        assert board.read(0).counters == {"spampots.smtp.message": 7}
        # the next write goes to the other half: die in the middle of it
        at = board._half(0, 1 - board.mem[0] % 2)  # the half not in use (the slot's index is its first byte)
        seq, n = _HALF_HEAD.unpack_from(board.mem, at)
        _HALF_HEAD.pack_into(board.mem, at, seq + 1, n)  # odd: being written
        board.mem[at + _HALF_HEAD.size:at + _HALF_HEAD.size + 8] = b"\xff" * 8
        assert board.read(0).counters == {"spampots.smtp.message": 7}
        board.write(0, Figures(worker=0, counters={"spampots.smtp.message": 9}))  # the successor writes on
        assert board.read(0).counters == {"spampots.smtp.message": 9}
        assert [f.worker for f in board.read_all()] == [0]
    finally:
        board.close()
