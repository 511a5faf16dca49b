"""kill -9 during a burst: no message whose 250 a client saw may be missing or corrupt."""

from __future__ import annotations

import hashlib
import smtplib
import threading
import time

from clients import ProxySMTP, make_message
from conftest import start_sensor


def test_kill9_loses_no_acknowledged_message(tmp_path):
    sp = start_sensor(tmp_path, config="[limits]\nnew_sessions_per_s_per_ip = 1000\n")
    acked: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int, via_socks: bool) -> None:
        i = 0
        while not stop.is_set():
            try:
                if via_socks:
                    s = ProxySMTP(f"socks5://127.0.0.1:{sp.port(1080)}", "mx.crash.example", 25, rdns=True, timeout=5)
                else:
                    s = smtplib.SMTP("127.0.0.1", sp.port(25), timeout=5)
                s.ehlo("crash")
                while not stop.is_set():
                    raw = make_message(n * 100000 + i, body=f"client {n} message {i}\n" + "x" * (i * 37 % 5000))
                    i += 1
                    s.sendmail("a@b.example", ["c@d.example"], raw)  # returns only after our 250
                    with lock:
                        acked.append(raw)
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=client, args=(n, n % 2 == 0)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    sp.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 20, "the burst was too small to mean anything"

    from spampots.store.messages import MessageStore
    from spampots.store.segments import iter_events

    shas = {e.sha256 for e in iter_events(sp.data_dir) if type(e).__name__ == "SmtpMessage"}
    store = MessageStore(sp.data_dir, readonly=True)
    try:
        for raw in acked:
            sha = hashlib.sha256(raw).hexdigest()
            assert sha in shas, "acknowledged message has no event"
            assert store.get(sha) == raw, "acknowledged message body differs"
    finally:
        store.close()
    # the store left behind is usable by a restarted sensor
    sp2 = start_sensor(tmp_path / "again", offset=sp.offset, data_dir=sp.data_dir)
    with smtplib.SMTP("127.0.0.1", sp2.port(25), timeout=5) as s:
        s.sendmail("a@b.example", ["c@d.example"], make_message(999999))
    assert sp2.stop() == 0
    after = [e for e in iter_events(sp.data_dir) if type(e).__name__ == "SmtpMessage"]
    assert len(after) >= len(shas) + 1
