"""The free-space floor on a small disk: what a sensor answers as its disk fills and frees.

    sudo python bench/disk_floor.py [--size-mb 64] [--floor-mb 16] [--messages 40]

Mounts a tmpfs as the data dir (root only), starts a sensor with ``[store] min_free_mb``,
sends a message, fills the disk to below the floor (not full), sends until the first
``452`` (at most 5 s: the sensor looks once a second) and ``--messages`` more,
frees the space and waits for a ``250``. Prints: how long until the first ``452`` after
the disk went below the floor, the replies below it, how long until the first ``250`` after
space was freed, and the log lines about it. Baseline in the same run: the floor off
(``min_free_mb = 0``), where the sensor keeps taking mail until the disk is really full.
Loopback only.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, pick_offset, wait_port  # noqa: E402

BODY = b"Subject: floor\r\n\r\n" + b"x" * 2000 + b"\r\n"


def send(port: int) -> int:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            s.sendmail("a@b.example", ["c@d.example"], BODY + os.urandom(8).hex().encode() + b"\r\n")
        return 250
    except smtplib.SMTPDataError as e:
        return e.smtp_code
    except (smtplib.SMTPException, OSError):
        return -1


def fill(mnt: Path, leave: int) -> Path:
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        while True:
            st = os.statvfs(mnt)
            if st.f_bavail * st.f_frsize - (1 << 20) < leave:
                break
            f.write(b"\0" * (1 << 20))
    return filler


def run(size_mb: int, floor_mb: float, messages: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="spampots-floor-"))
    mnt = work / "var"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)], check=True)
    offset = pick_offset()
    cfg = work / "sensor.toml"
    cfg.write_text(f"[store]\nmin_free_mb = {floor_mb:g}\n[limits]\nnew_sessions_per_s_per_ip = 100000\n"
                   "max_sessions_per_ip = 1000\n")
    log = open(work / "sensor.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "spampots.cli", "run", "--config", str(cfg), "--data-dir",
                             str(mnt), "--port-offset", str(offset), "--address", "127.0.0.1", "--sensor-id",
                             "bench", "--log-level", "info", "--user", ""],
                            stdout=subprocess.DEVNULL, stderr=log, cwd=work)
    port = 25 + offset
    out: dict = {}
    try:
        wait_port(port, proc=proc)
        assert send(port) == 250
        filler = fill(mnt, leave=max(1, int(floor_mb / 2)) << 20)
        t = time.monotonic()
        first = None
        before: Counter = Counter()  # replies until the sensor noticed (it looks once a second)
        while time.monotonic() - t < 5:
            c = send(port)
            if c == 452:
                first = time.monotonic() - t
                break
            before[c] += 1
        codes: Counter = Counter(send(port) for _ in range(messages))
        out["first_452_s"], out["before"], out["below"] = first, dict(before), dict(codes)
        filler.unlink()
        t = time.monotonic()
        while send(port) != 250 and time.monotonic() - t < 30:
            time.sleep(0.05)
        out["first_250_after_free_s"] = time.monotonic() - t
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        subprocess.run(["umount", "-l", str(mnt)])
    text = (work / "sensor.log").read_text()
    out["log_lines"] = [ln.split(" spampots.store: ")[-1] for ln in text.splitlines()
                        if "min_free_mb" in ln or "accepting mail" in ln]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--floor-mb", type=float, default=16)
    ap.add_argument("--messages", type=int, default=40)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (mounts a tmpfs)")
    print(machine())
    for name, floor in (("floor", a.floor_mb), ("baseline (floor off)", 0.0)):
        r = run(a.size_mb, floor, a.messages)
        first = "never" if r["first_452_s"] is None else f"{r['first_452_s']:.2f} s"
        print(f"{name}: {a.size_mb} MB tmpfs, {floor:g} MB floor: first 452 after {first} "
              f"(replies before it {r['before']}); the next {a.messages} replies {r['below']}; first 250 "
              f"{r['first_250_after_free_s']:.2f} s after freeing; log: {r['log_lines']}")


if __name__ == "__main__":
    main()
