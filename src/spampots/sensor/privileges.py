"""Dropping root after the listeners are bound, before any client byte is read."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path


class PrivilegeError(RuntimeError):
    pass


def running_as_root() -> bool:
    return os.geteuid() == 0


def drop_to(user: str, data_dir: Path) -> str:
    """Become ``user`` (and its primary group); the data dir stays writable.

    The data dir (and what is in it) is handed to the user first; the process
    has already chdir'ed into it, so it needs no search permission on the
    directories above it (e.g. /root).
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"user {user!r} does not exist: create it, or set [sensor] user to an existing "
            "unprivileged account (\"\" keeps root, which is not recommended)"
        ) from None
    uid, gid = pw.pw_uid, pw.pw_gid
    for root, dirs, files in os.walk(data_dir):
        os.chown(root, uid, gid)
        for name in files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PrivilegeError("could not drop root privileges")
    return f"{user} (uid {uid}, gid {gid} {grp.getgrgid(gid).gr_name})"
