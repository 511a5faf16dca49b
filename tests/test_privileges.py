"""Started as root: bind, prepare the data dir through file descriptors, drop, and only then
create files. Root never walks or chowns what an unprivileged user can write (issue 10, part 1)."""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import shutil
import smtplib
import stat
import tempfile
import time
from pathlib import Path

import pytest

from clients import make_message
from conftest import searchable_dir, start_sensor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(a: str, b: str) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names in one step."""
    if _libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), "renameat2")


def _swapper(data: Path, target: Path, limit: float) -> int:
    """A child running as nobody in the data dir: it waits until root's chown walk reaches the
    directory "z" (its ctime moves), then swaps it for a symlink to ``target``, so that the rest
    of a path-based walk lands there. It gives up after ``limit`` seconds."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: plain system calls only (the interpreter's files may be root-only)
        os.chdir(data)
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)
        os.symlink(target, "zl")
        before = os.stat("z").st_ctime_ns
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if os.stat("z", follow_symlinks=False).st_ctime_ns != before:
                    _exchange("zl", "z")  # atomically: the walk never sees z missing
                    break
            except OSError:
                pass
    finally:
        os._exit(0)


def _owners(path: Path) -> dict[str, tuple[int, int]]:
    out = {".": (path.stat().st_uid, path.stat().st_gid)}
    for p in path.iterdir():
        st = p.lstat()
        out[p.name] = (st.st_uid, st.st_gid)
    return out


def test_swapped_subdirectory_never_hands_an_outside_dir_to_the_user(tmp_path):
    """The issue's reproduction, bounded: a user-owned data dir holding a directory of many
    files, swapped for a symlink to a root-owned directory while the sensor starts."""
    n = 20_000
    data = searchable_dir(tmp_path) / "var"
    z = data / "z"
    z.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    names = [f"f{i:05d}" for i in range(n)]
    for name in names:
        (z / name).touch()
        os.chown(z / name, NOBODY.pw_uid, NOBODY.pw_gid)
    for name in names:  # the names a path walk would reach through the symlink
        (outside / name).touch()
    for d in (data, z):
        os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    before = _owners(outside)
    assert before["."] == (0, 0)
    for attempt in range(3):
        swapper = _swapper(data, outside, 15.0)
        time.sleep(0.3)  # the swapper has read z's ctime
        sp = start_sensor(tmp_path / f"run{attempt}", data_dir=data, args=("--user", "nobody"))
        try:
            assert _owners(outside) == before, f"start {attempt}: root followed the swapped symlink"
        finally:
            sp.stop()
            os.kill(swapper, 9)
            os.waitpid(swapper, 0)
            if (data / "z").is_symlink():
                _exchange(str(data / "zl"), str(data / "z"))
            (data / "zl").unlink()
        assert _owners(outside) == before, f"start {attempt}: root followed the swapped symlink"


def _tree(root: Path) -> list[tuple[Path, os.stat_result]]:
    out = [(root, root.lstat())]
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out.append((p, p.lstat()))
    return out


def test_root_creates_nothing_as_root_and_data_is_private(tmp_path):
    """A fresh data dir: made user:group 2750 by root, and everything in it (store, packs,
    SQLite index, TLS certificate) made by the user after the drop, 0640/0750 in the group."""
    daemon_gid = grp.getgrnam("daemon").gr_gid  # an analysts' group stand-in
    home = searchable_dir(tmp_path)
    data = home / "deep" / "var"  # missing parents are made too
    sp = start_sensor(tmp_path, data_dir=data, config='[sensor]\nuser = "nobody"\ngroup = "daemon"\n')
    try:
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
            s.starttls()  # the self-signed certificate, made by the user
            s.sendmail("a@b.example", ["c@d.example"], make_message(1))
    finally:
        assert sp.stop() == 0
    assert len(sp.events("spampots.smtp.message")) == 1
    top = data.lstat()
    assert (top.st_uid, top.st_gid) == (NOBODY.pw_uid, daemon_gid)
    assert stat.S_IMODE(top.st_mode) == 0o2750
    entries = _tree(data)
    names = {p.relative_to(data).as_posix() for p, _ in entries}
    assert {"tls/cert.pem", "tls/key.pem", "messages/index.sqlite"} <= names
    assert any(n.startswith("messages/pack-") and n.endswith(".pack") for n in names)
    for p, st in entries:
        assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, daemon_gid), p
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) & 0o777 == 0o750, p
        elif p.name == "key.pem":
            assert stat.S_IMODE(st.st_mode) == 0o600
        else:
            assert stat.S_IMODE(st.st_mode) == 0o640, p
    parent = (home / "deep").stat()
    assert parent.st_uid == 0 and stat.S_IMODE(parent.st_mode) == 0o755


def test_existing_user_dir_is_narrowed_not_widened(tmp_path):
    """A data dir from an older version (the user's, 0755) becomes 2750; its contents are
    left alone (root does not walk them)."""
    data = searchable_dir(tmp_path) / "var"
    (data / "old").mkdir(parents=True)
    (data / "old" / "f").write_text("x")
    for p in (data, data / "old", data / "old" / "f"):
        os.chown(p, NOBODY.pw_uid, NOBODY.pw_gid)
    data.chmod(0o755)
    (data / "old").chmod(0o705)
    sp = start_sensor(tmp_path, data_dir=data, args=("--user", "nobody"))
    assert sp.stop() == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o2750
    assert stat.S_IMODE((data / "old").stat().st_mode) == 0o705  # untouched


def test_symlinked_data_dir_refused(tmp_path):
    from test_config_checks import run_refused

    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "var"
    link.symlink_to(real)
    before = (real.stat().st_uid, real.stat().st_mode)
    line = run_refused(tmp_path, link, "", "--user", "nobody")
    assert "is a symlink" in line and str(link) in line
    assert (real.stat().st_uid, real.stat().st_mode) == before and not list(real.iterdir())


def test_data_dir_of_another_user_refused(tmp_path):
    from test_config_checks import run_refused

    data = tmp_path / "var"
    data.mkdir()
    daemon = pwd.getpwnam("daemon")
    os.chown(data, daemon.pw_uid, daemon.pw_gid)
    line = run_refused(tmp_path, data, "", "--user", "nobody")
    assert "belongs to user 'daemon'" in line and "not to [sensor] user 'nobody'" in line
    assert data.stat().st_uid == daemon.pw_uid and not list(data.iterdir())


def test_root_owned_data_dir_in_a_shared_place_refused(tmp_path):
    """A root-owned data dir in a directory other users can write may have been put there
    for root to hand over: refused, with the command that does it by hand."""
    from test_config_checks import run_refused

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    data = shared / "var"
    data.mkdir()
    line = run_refused(tmp_path, data, "", "--user", "nobody")
    assert "belongs to root" in line and "chown nobody:" in line
    assert data.stat().st_uid == 0


def test_root_owned_data_dir_in_a_root_only_place_is_handed_over(tmp_path):
    """The usual install: an admin made /var/lib/<dir> (root's, in root-only parents). Only
    that directory is handed to the user, through its descriptor."""
    base = Path(tempfile.mkdtemp(prefix="spampots-test-", dir="/var/lib"))
    try:
        base.chmod(0o755)
        data = base / "var"
        data.mkdir(mode=0o755)
        sp = start_sensor(tmp_path, data_dir=data, args=("--user", "nobody"))
        assert sp.stop() == 0
        st = data.stat()
        assert st.st_uid == NOBODY.pw_uid and stat.S_IMODE(st.st_mode) == 0o2750
        assert base.stat().st_uid == 0  # its parent is not touched
        assert all(st.st_uid == NOBODY.pw_uid for _, st in _tree(data))
    finally:
        shutil.rmtree(base)
