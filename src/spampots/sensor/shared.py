"""State the worker processes of one sensor share: the connection limits and the figures
for the one summary line.

One memory file (``memfd``) mapped by every worker, made by the supervisor before it
forks them. A ``lockf`` lock on that file guards every read-modify-write of cells that
more than one worker writes (see :meth:`SharedGate.release` for the ones that need none): the kernel
drops it when its holder dies, so a worker killed with ``kill -9`` inside the lock
cannot stall the others (a semaphore would stay taken).

Layout: one row of figures per worker, then a fixed table of sources (open addressing,
a bounded probe). A source row holds its token bucket (shared: the rate limit is the
sensor's) and one session count per worker, so that a dead worker's sessions are
forgotten by zeroing its column, not by guessing which rows it touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from functools import lru_cache
from typing import Callable, Optional

# per worker: pid, open sessions, sessions opened, messages, proxy requests, protocol errors,
# limit hits, restarts, last update (unix time)
_WORKER = struct.Struct("<8qd")
WORKER_FIELDS = ("pid", "open", "sessions", "messages", "proxy_requests", "errors", "limit_hits", "restarts")
_SRC_HEAD = struct.Struct("<Qdd")  # key (0: never used), tokens, last refill (monotonic)
PROBES = 32  # rows looked at per source; past them a source is admitted untracked (counted)


@lru_cache(maxsize=4096)  # every admit asks; a flood's sources repeat
def _key(ip: str) -> int:
    return int.from_bytes(hashlib.blake2b(ip.encode(), digest_size=8).digest(), "little") or 1


class SharedState:
    """The mapped file; :meth:`gate` and :meth:`worker` give each worker its view."""

    def __init__(self, workers: int, sources: int = 1 << 16) -> None:
        self.workers = workers
        self.sources = sources
        self._counts = struct.Struct(f"<{workers}I")
        self.row = _SRC_HEAD.size + self._counts.size
        self._src_at = _WORKER.size * workers
        size = self._src_at + self.row * sources
        self.fd, self.mem = shared_memory("spampots-shared", size)

    # -- the lock ----------------------------------------------------------------------------
    def lock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    # -- per worker figures --------------------------------------------------------------------
    def read_worker(self, k: int) -> dict[str, float]:
        vals = _WORKER.unpack_from(self.mem, _WORKER.size * k)
        return dict(zip(WORKER_FIELDS + ("updated",), vals))

    def write_figures(self, k: int, **figures: int) -> None:
        """Set some of worker k's figures (only its own process writes its row, but for
        :meth:`worker_gone`)."""
        row = list(_WORKER.unpack_from(self.mem, _WORKER.size * k))
        for name, value in figures.items():
            row[WORKER_FIELDS.index(name)] = int(value)
        row[-1] = time.time()
        _WORKER.pack_into(self.mem, _WORKER.size * k, *row)

    def alive(self, k: int) -> bool:
        """Whether worker k runs now (its pid is published and the process exists)."""
        pid = int(_WORKER.unpack_from(self.mem, _WORKER.size * k)[0])
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def open_total(self) -> int:
        return sum(_WORKER.unpack_from(self.mem, _WORKER.size * k)[1] for k in range(self.workers))

    def worker_gone(self, k: int) -> None:
        """Forget a dead worker's sessions (its open count and its column of sources);
        its cumulative figures stay for the summary."""
        self.lock()
        try:
            self.write_figures(k, pid=0, open=0)
            zero = 0
            at = self._src_at + _SRC_HEAD.size + 4 * k
            for i in range(self.sources):
                struct.pack_into("<I", self.mem, at + i * self.row, zero)
        finally:
            self.unlock()

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(WORKER_FIELDS[1:], 0)
        for k in range(self.workers):
            for name, value in self.read_worker(k).items():
                if name in out:
                    out[name] += int(value)
        return out

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


class SharedGate:
    """:class:`~spampots.sensor.limits.ConnectionGate`'s contract for one worker, with the
    limits held for the whole sensor: total sessions over all workers, and each source's
    session count and token bucket over all workers."""

    def __init__(self, state: SharedState, worker: int, *, max_total: int, max_per_ip: int,
                 rate_per_ip: float, max_local: int = 1 << 62,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.worker = worker
        self.max_total = max_total
        self.max_local = max_local  # what this worker's descriptors hold
        self.max_per_ip = max_per_ip
        self.rate = rate_per_ip
        self.burst = max(1.0, rate_per_ip * 2.0)
        self.total = 0  # this worker's sessions
        self.untracked = 0  # sessions admitted with no source row free (see PROBES)
        self._rows: dict[str, tuple[Optional[int], int]] = {}  # ip -> (row offset or None, our sessions)
        self._clock = clock
        self._open_at = _WORKER.size * worker + 8  # this worker's "open" figure

    def _find(self, key: int, now: float) -> Optional[int]:
        """The row of key, else a reusable one (never used, or a source with no sessions and
        a full bucket: forgetting it changes nothing), else None."""
        st = self.state
        mem, row, n = st.mem, st.row, st.sources
        spare = None
        i = key % n
        for _ in range(PROBES):
            at = st._src_at + i * row
            k, tokens, last = _SRC_HEAD.unpack_from(mem, at)
            if k == key:
                return at
            if spare is None:
                if k == 0:
                    spare = at
                elif (tokens + (now - last) * self.rate >= self.burst
                      and not any(st._counts.unpack_from(mem, at + _SRC_HEAD.size))):
                    spare = at
            if k == 0:
                break  # rows are never emptied: key is not further on
            i = (i + 1) % n
        if spare is not None:
            st._counts.pack_into(mem, spare + _SRC_HEAD.size, *([0] * st.workers))
            _SRC_HEAD.pack_into(mem, spare, key, self.burst, now)
        return spare

    def admit(self, ip: str) -> Optional[tuple[str, float, float]]:
        """None if the session may open, else (limit name, configured value, observed);
        the checks and their order are ConnectionGate's."""
        st = self.state
        mem = st.mem
        key = _key(ip)
        st.lock()
        try:
            now = self._clock()
            at = self._find(key, now)
            if at is None:  # a flood of fresh sources filled the probe window: total only
                total = st.open_total()
                if total >= self.max_total or self.total >= self.max_local:
                    return ("max_sessions", self.max_total, total + 1)
                self.untracked += 1
                self._count(ip, None)
                return None
            counts = st._counts.unpack_from(mem, at + _SRC_HEAD.size)
            n = sum(counts)
            if n >= self.max_per_ip:
                return ("max_sessions_per_ip", self.max_per_ip, n + 1)
            _, tokens, last = _SRC_HEAD.unpack_from(mem, at)
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                _SRC_HEAD.pack_into(mem, at, key, tokens, now)
                return ("new_sessions_per_s_per_ip", self.rate, round(self.rate + 1, 1))
            total = st.open_total()
            if total >= self.max_total or self.total >= self.max_local:
                _SRC_HEAD.pack_into(mem, at, key, tokens, now)
                return ("max_sessions", self.max_total, total + 1)
            _SRC_HEAD.pack_into(mem, at, key, tokens - 1.0, now)
            struct.pack_into("<I", mem, at + _SRC_HEAD.size + 4 * self.worker, counts[self.worker] + 1)
            self._count(ip, at)
            return None
        finally:
            st.unlock()

    def _count(self, ip: str, at: Optional[int]) -> None:
        _, ours = self._rows.get(ip, (at, 0))
        self._rows[ip] = (at, ours + 1)
        self.total += 1
        struct.pack_into("<q", self.state.mem, self._open_at, self.total)

    def release(self, ip: str) -> None:
        at, ours = self._rows.get(ip, (None, 1))
        if ours <= 1:
            self._rows.pop(ip, None)
        else:
            self._rows[ip] = (at, ours - 1)
        # No lock (it costs two fcntl calls per session): both cells written here are this
        # worker's own, which no other process writes while it lives. Its "open" figure is
        # its row's; its count in the source's row cannot be reset under it, as another
        # worker reuses a row only when every count in it is zero (_find), and ours is not
        # zero until this write. An aligned store of 4 or 8 bytes is seen whole.
        mem = self.state.mem
        self.total -= 1
        struct.pack_into("<q", mem, self._open_at, self.total)
        if at is not None:
            cell = at + _SRC_HEAD.size + 4 * self.worker
            (n,) = struct.unpack_from("<I", mem, cell)
            struct.pack_into("<I", mem, cell, max(0, n - 1))

    def prune(self) -> None:
        """Nothing to do: the table is fixed, and stale rows are reused (see _find)."""


def shared_memory(name: str, size: int) -> tuple[int, mmap.mmap]:
    """A memory file of ``size`` bytes mapped MAP_SHARED, made before the workers are forked
    so that they all see one memory (pages are only allocated when written)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    else:  # pragma: no cover - Linux has memfd_create
        import tempfile

        fd, path = tempfile.mkstemp(prefix=f"{name}-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)
