"""Started as root: bind, prepare the data dir through file descriptors, drop, and only then
create files. Root never walks or chowns what an unprivileged user can write (issue 10, part 1)."""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import smtplib
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clients import make_message
from conftest import start_sensor

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
    data = tmp_path / "var"
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
