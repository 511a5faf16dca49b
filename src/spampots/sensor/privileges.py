"""Dropping root after the listeners are bound, before any client byte is read."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path


class PrivilegeError(RuntimeError):
    pass


def running_as_root() -> bool:
    return os.geteuid() == 0


def _preload() -> None:
    """Import, while still root, what Python loads lazily at run time.

    After the drop the interpreter's own files may be unreadable (a pyenv
    under /root): strptime and the codecs abusers' charsets pull in would then
    fail mid-session.
    """
    import encodings
    import importlib
    import pkgutil

    for mod in ("_strptime", "email.header", "email.charset", "email.utils", "email._header_value_parser"):
        importlib.import_module(mod)
    for info in pkgutil.iter_modules(encodings.__path__):
        try:
            importlib.import_module(f"encodings.{info.name}")
        except Exception:  # platform-specific codecs (mbcs, ...)
            pass


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
    _preload()
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


def unreachable_parent(path: Path, user: str) -> Path | None:
    """The first directory above ``path`` that ``user`` cannot search, if any.

    The sensor itself works from inside its data dir, but code that reopens
    files by absolute path (SQLite does) needs every parent searchable.
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    for parent in reversed(Path(path).absolute().parents):
        st = parent.stat()
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == pw.pw_gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return parent
    return None
