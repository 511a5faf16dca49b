"""Root binds, prepares the top of the data dir, and drops; the user makes everything else.

Started as root, the sensor does as little as root as it can: it binds the
listeners, reads what only root may read (a configured TLS key, NATS
credentials), and prepares the data dir itself through file descriptors. It
never walks, chowns or follows anything an unprivileged user can write: every
path component is opened with ``O_NOFOLLOW`` from its parent's descriptor, the
data dir is entered with ``fchdir`` and changed with ``fchown``/``fchmod`` on
its descriptor, and the files in it are created after the drop, by the user.

Data is private to the user and one group that analysts can join: the data dir
is ``user:group`` mode ``2750`` (setgid, so what is created in it inherits the
group), and the process umask ``027`` makes files ``0640`` and directories
``0750``.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..store.messages import MESSAGES_DIR
from ..store.segments import EVENTS_DIR
from .tlscert import TLS_DIR

UMASK = 0o027
DATA_GROUP = "spampots"  # [sensor] group = "": this group if it exists, else the user's own
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # symlinks followed in the parents of the data dir (the kernel's own limit)
# The sensor's directories in the data dir, checked for writability with the data dir itself.
STORE_DIRS = (EVENTS_DIR, MESSAGES_DIR, TLS_DIR)


class PrivilegeError(RuntimeError):
    """Reported to the user as one line, without a traceback."""


@dataclass(frozen=True)
class Account:
    """Who the sensor becomes, and the group its data is shared with."""

    user: str
    uid: int
    gid: int  # the user's primary group: the process's group after the drop
    group: str  # the data group: owner group of the data dir
    data_gid: int

    def describe(self) -> str:
        return f"{self.user} (uid {self.uid}, gid {self.gid}), data group {self.group}"


def running_as_root() -> bool:
    return os.geteuid() == 0


def account(user: str, group: str = "") -> Account:
    """``user`` and the data group (``group``, or ``spampots`` if it exists, else the user's own)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"user {user!r} does not exist: create it, or set [sensor] user to an existing "
            "unprivileged account (\"\" keeps root, which is not recommended)"
        ) from None
    if pw.pw_uid == 0:
        raise PrivilegeError(f"[sensor] user {user!r} is root: name an unprivileged account")
    if group:
        try:
            gr = grp.getgrnam(group)
        except KeyError:
            raise PrivilegeError(f"[sensor] group {group!r} does not exist: create it "
                                 f"(groupadd {group}) or leave group empty") from None
    else:
        try:
            gr = grp.getgrnam(DATA_GROUP)
        except KeyError:
            gr = grp.getgrgid(pw.pw_gid)
    return Account(user, pw.pw_uid, pw.pw_gid, gr.gr_name, gr.gr_gid)


def _root_controlled(parent: os.stat_result, child: os.stat_result) -> bool:
    """Only root can replace ``child``'s entry in ``parent``: parent is root's and not writable
    by others, or sticky (/tmp) with a root-owned child that nobody else may rename."""
    if parent.st_uid != 0:
        return False
    if not parent.st_mode & 0o022:
        return True
    return bool(parent.st_mode & stat.S_ISVTX) and child.st_uid == 0


def _open_parent(path: str, *, create: bool) -> tuple[int, bool]:
    """A descriptor on the directory ``path``, opened one component at a time without
    following symlinks, except root's own in root-controlled directories (``/var/run``);
    missing directories are created (root's, 0755) or, without ``create``, give -1. Also:
    whether only root could have decided which directory this is."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    walked: list[str] = []  # real directories opened so far, from /
    fd = os.open("/", _DIR_FLAGS)
    trusted = True
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            here = os.fstat(fd)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return -1, False
                st = _mkdir_searchable(fd, name)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if not (trusted and st.st_uid == 0 and _root_controlled(here, st)) or links > _MAX_LINKS:
                    raise PrivilegeError(f"{name!r} in the data dir's path {path} is a symlink that "
                                         "another user could change: give the real path")
                # Root's own link: splice its target in and walk again from / (lexically, as
                # everything walked so far is a real directory).
                target = os.path.normpath(os.path.join("/", *walked, os.readlink(name, dir_fd=fd)))
                parts = [p for p in target.split("/") if p] + parts
                walked, trusted = [], True
                os.close(fd)
                fd = os.open("/", _DIR_FLAGS)
                continue
            if name == "..":
                raise PrivilegeError(f"data dir path {path} goes up with '..': give a plain path")
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except NotADirectoryError:
                raise PrivilegeError(f"{name!r} in the data dir's path {path} is not a directory") from None
            trusted = trusted and _root_controlled(here, os.fstat(nfd))
            walked.append(name)
            os.close(fd)
            fd = nfd
        return fd, trusted
    except BaseException:
        os.close(fd)
        raise


def _mkdir_searchable(parent: int, name: str) -> os.stat_result:
    """A missing parent of the data dir: root's, 0755 whatever the umask (mkdir -p)."""
    os.mkdir(name, 0o700, dir_fd=parent)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if st.st_uid == 0 and not os.listdir(fd):  # still the one just made
            os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
    return os.stat(name, dir_fd=parent, follow_symlinks=False)


def open_data_dir(path: Path, acct: Optional[Account]) -> int:
    """A descriptor on the data dir, made ready for ``acct`` (None: the sensor keeps its
    own identity; the directory is then simply created if missing).

    As root, the data dir itself (never its parents' symlinks or anything inside it) is
    created or adopted: it must not be a symlink, and must belong to the user, or to root
    where no other user could have put it; it then becomes ``user:group`` mode ``2750``
    (an existing dir's mode is only narrowed, never widened).
    """
    path = Path(os.path.abspath(path))
    if acct is None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise PrivilegeError(f"data dir {path} is not a directory") from None
        except OSError as exc:
            raise PrivilegeError(f"data dir {path}: {exc.strerror}") from None
        return _open_plain(path)
    try:
        return _adopt(path, acct)
    except OSError as exc:  # a read-only file system, a directory removed meanwhile, ...
        raise PrivilegeError(f"data dir {path}: {exc.strerror or exc}") from None


def _adopt(path: Path, acct: Account) -> int:
    parent, trusted = _parent_of(path, create=True)
    try:
        created = False
        try:
            os.mkdir(path.name, 0o700, dir_fd=parent)  # root's and private until handed over
            created = True
        except FileExistsError:
            pass
        fd = _open_checked(parent, path, acct, trusted, created)
    finally:
        os.close(parent)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.fchown(fd, acct.uid, acct.data_gid)
        os.fchmod(fd, 0o2750 if created else (mode & 0o750) | stat.S_ISGID)
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_data_dir(path: Path, acct: Optional[Account]) -> None:
    """What ``run`` checks (ownership, symlinks, writability as the user), changing nothing.
    A data dir that does not exist yet passes if its user will reach it (``run`` creates it)."""
    path = Path(os.path.abspath(path))
    try:
        _check(path, acct)
    except OSError as exc:
        raise PrivilegeError(f"data dir {path}: {exc.strerror or exc}") from None


def _check(path: Path, acct: Optional[Account]) -> None:
    if acct is None:
        if not os.path.lexists(path):
            return
        fd = _open_plain(path)
    else:
        parent, trusted = _parent_of(path, create=False)
        if parent < 0:  # run would make the missing parents too
            return
        try:
            try:
                os.stat(path.name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:  # run creates it; its user must reach it then
                check_reachable(parent, path.parent, acct)
                return
            fd = _open_checked(parent, path, acct, trusted, created=False)
        finally:
            os.close(parent)
    try:
        if acct is None or os.fstat(fd).st_uid == acct.uid:  # root's is handed over at start
            check_writable(fd, path, acct)
    finally:
        os.close(fd)


def _open_plain(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise PrivilegeError(f"data dir {path} is not a directory") from None
    except OSError as exc:
        raise PrivilegeError(f"data dir {path}: {exc.strerror}") from None


def _parent_of(path: Path, *, create: bool) -> tuple[int, bool]:
    try:
        return _open_parent(str(path.parent), create=create)
    except OSError as exc:
        raise PrivilegeError(f"data dir {path}: cannot open its parent ({exc.strerror})") from None


def _open_checked(parent: int, path: Path, acct: Account, trusted: bool, created: bool) -> int:
    """The data dir's descriptor, unless it is a symlink, not a directory, or not ours to use."""
    name = path.name
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise PrivilegeError(f"data dir {path} is a symlink (to {os.readlink(name, dir_fd=parent)}): "
                             "give the real path")
    if not stat.S_ISDIR(st.st_mode):
        raise PrivilegeError(f"data dir {path} is not a directory")
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:  # swapped for a symlink since the stat
        raise PrivilegeError(f"data dir {path} changed while being opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        fix = f"chown {acct.user}:{acct.group} {path} && chmod 2750 {path}"
        if st.st_uid == 0:
            if created:
                if st.st_nlink != 2 or os.listdir(fd):
                    raise PrivilegeError(f"data dir {path} changed while being created: try again")
            elif not (trusted and _root_controlled(os.fstat(parent), st)):
                raise PrivilegeError(f"data dir {path} belongs to root, in a place other users can "
                                     f"write: hand it to the user yourself ({fix})")
        elif st.st_uid != acct.uid:
            raise PrivilegeError(f"data dir {path} belongs to {_user_name(st.st_uid)}, not to [sensor] "
                                 f"user {acct.user!r}: use another data dir, or {fix}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _user_name(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r}"
    except KeyError:
        return f"uid {uid}"


def check_writable(dir_fd: int, path: Path, acct: Optional[Account]) -> None:
    """As the user the sensor will run as: reach the data dir by its absolute path, create
    and remove a file in it, and find the store's own directories there writable.

    A forked child does it (it drops privileges; the sensor does not yet), so a data dir
    that is read-only, on a read-only mount, or closed to the user is one clear line
    before any port is bound instead of a sensor that is up and stores nothing.
    """
    path = Path(os.path.abspath(path))
    who = f"user {acct.user!r}" if acct else "this user"

    def probe() -> str:
        if acct is not None and (why := _unreachable(path, dir_fd, acct.user)):
            return why
        name = f".spampots-write-check-{os.getpid()}"
        try:
            os.fchdir(dir_fd)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                return f"data dir {path} is not writable by {who} ({exc.strerror})"
            # writable but full: the sensor starts, refuses mail it cannot store, and
            # captures again as soon as space is freed (see warn_if_full)
        for sub in STORE_DIRS:
            try:
                st = os.stat(sub, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode) or not os.access(sub, os.W_OK | os.X_OK):
                return (f"{path}/{sub} is not a directory writable by {who}"
                        f"{': chown it to the user' if acct else ''}")
        return ""

    _as_user(acct, probe, f"data dir {path} could not be checked")


def warn_if_full(dir_fd: int, path: Path, log: logging.Logger, floor_bytes: int = 16 << 20) -> None:
    """One warning when the data dir's file system is (nearly) full: capture then refuses
    mail (no 250 without storage) until space is freed, without a restart."""
    try:
        st = os.fstatvfs(dir_fd)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < floor_bytes or (st.f_files and st.f_favail == 0):
        log.warning("data dir %s has %.1f MiB free%s: messages are refused until space is freed",
                    path, free / 2**20, " and no free inodes" if st.f_files and st.f_favail == 0 else "")


def check_reachable(dir_fd: int, path: Path, acct: Account) -> None:
    """As ``acct``'s user: reach the directory ``path`` (open as ``dir_fd``) by its absolute path."""
    path = Path(os.path.abspath(path))
    _as_user(acct, lambda: _unreachable(path, dir_fd, acct.user, "the data dir's parent"),
             f"{path} could not be checked")


def _as_user(acct: Optional[Account], probe: Callable[[], str], failed: str) -> None:
    """Run ``probe`` in a forked child that has become ``acct``'s user (None: stays as it is);
    what it returns, if anything, is raised here as a PrivilegeError."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then _exit
        os.close(rd)
        try:
            if acct is not None:
                os.setgroups([])
                os.setgid(acct.gid)
                os.setuid(acct.uid)
            msg = probe()
        except BaseException:
            msg = failed
        os.write(wr, msg.encode()[:4000])
        os._exit(0)
    os.close(wr)
    try:
        chunks = []
        while chunk := os.read(rd, 4096):
            chunks.append(chunk)
    finally:
        os.close(rd)
        os.waitpid(pid, 0)
    msg = b"".join(chunks).decode(errors="replace")
    if msg:
        raise PrivilegeError(msg)


def _unreachable(path: Path, dir_fd: int, user: str, what: str = "data dir") -> str:
    """Why ``user`` (the caller, after its drop) cannot reach the data dir by its absolute
    path, or "". The store needs it: SQLite reopens its index by absolute path."""
    try:
        st, want = os.stat(path), os.fstat(dir_fd)
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            return ""
    except OSError:
        pass
    blocked = next((p for p in reversed(path.parents) if not os.access(p, os.X_OK)), path.parent)
    return (f"{what} {path} is not reachable by user {user!r}: {blocked} is not searchable by it "
            f"(the store opens its index by absolute path): use a data dir such as "
            f"/var/lib/spampots, or `chmod o+x {blocked}`")


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


def drop_to(acct: Account, dir_fd: int) -> str:
    """Enter the data dir by its descriptor and become ``acct``'s user, for good.

    Working from inside the data dir, the sensor needs no search permission on
    the directories above it (e.g. /root).
    """
    _preload()
    os.fchdir(dir_fd)
    os.setgroups([])
    os.setgid(acct.gid)
    os.setuid(acct.uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PrivilegeError("could not drop root privileges")
    return acct.describe()
