"""Connection-level limits: sessions in total, per source, and new sessions per second;
the order in which a full house makes room; coalesced limit hits; the descriptor budget.

Protocol-level limits (line length, message size, recipients...) live in the
sans-IO handlers; these are the ones only the glue can see. A flood from one
source hits its own per-source limits long before the global one, so other
sources keep being served.
"""

from __future__ import annotations

import resource
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Iterator, Optional, TypeVar

T = TypeVar("T", bound=Hashable)
V = TypeVar("V")


class ConnectionGate:
    __slots__ = ("max_total", "max_per_ip", "rate", "burst", "total", "per_ip", "_buckets", "_clock")

    def __init__(
        self,
        *,
        max_total: int,
        max_per_ip: int,
        rate_per_ip: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.rate = rate_per_ip
        self.burst = max(1.0, rate_per_ip * 2.0)
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, last refill)
        self._clock = clock

    def admit(self, ip: str) -> Optional[tuple[str, float, float]]:
        """None if the session may open, else (limit name, configured value, observed).

        The source's own limits are checked first, so that a full house ("max_sessions",
        which the caller may answer by making room) is only reported for a session that
        would otherwise be let in; that refusal takes no token from the source's bucket.
        """
        n = self.per_ip.get(ip, 0)
        if n >= self.max_per_ip:
            return ("max_sessions_per_ip", self.max_per_ip, n + 1)
        now = self._clock()
        tokens, last = self._buckets.get(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[ip] = (tokens, now)
            return ("new_sessions_per_s_per_ip", self.rate, round(self.rate + 1, 1))
        if self.total >= self.max_total:
            self._buckets[ip] = (tokens, now)
            return ("max_sessions", self.max_total, self.total + 1)
        self._buckets[ip] = (tokens - 1.0, now)
        self.total += 1
        self.per_ip[ip] = n + 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        n = self.per_ip.get(ip, 1) - 1
        if n <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = n

    def prune(self) -> None:
        """Forget full buckets of idle sources (called periodically) so memory stays bounded."""
        now = self._clock()
        full = [ip for ip, (tok, last) in self._buckets.items()
                if ip not in self.per_ip and tok + (now - last) * self.rate >= self.burst]
        for ip in full:
            del self._buckets[ip]


class ProgressOrder(Generic[T]):
    """The open sessions, least recent protocol progress first.

    Progress is a reply or a record the handler made for the client's bytes (a complete
    command), never a byte read: a slow-loris dribbling bytes stays at the front, so a full
    house closes it first. Add, remove, progress and finding the front are all O(1).
    """

    __slots__ = ("_order",)

    def __init__(self) -> None:
        self._order: OrderedDict[T, None] = OrderedDict()

    def add(self, item: T) -> None:
        self._order[item] = None

    def discard(self, item: T) -> None:
        self._order.pop(item, None)

    def progressed(self, item: T) -> None:
        try:
            self._order.move_to_end(item)
        except KeyError:  # closed, or made room for another
            pass

    def least_progress(self) -> Optional[T]:
        return next(iter(self._order), None)

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[T]:
        return iter(self._order)

    def __contains__(self, item: object) -> bool:
        return item in self._order


class HitCoalescer(Generic[T, V]):
    """Repeated limit hits of one (source, limit) pair become one record with a count.

    The first hit of a pair since the last drain is recorded at once; the others are
    counted, keeping the latest, and :meth:`drain` (at the end of each interval) hands
    them over as one record per pair. At most ``max_pairs`` pairs are held: the caller
    drains early when :attr:`full`.
    """

    __slots__ = ("max_pairs", "_pairs")

    def __init__(self, max_pairs: int = 4096) -> None:
        self.max_pairs = max_pairs
        self._pairs: dict[T, list] = {}  # key -> [hits folded since the drain, latest of them]

    @property
    def full(self) -> bool:
        return len(self._pairs) >= self.max_pairs

    def offer(self, key: T, hit: V) -> bool:
        """True: record this hit now. False: folded into its pair's count."""
        entry = self._pairs.get(key)
        if entry is None:
            self._pairs[key] = [0, None]
            return True
        entry[0] += 1
        entry[1] = hit
        return False

    def drain(self) -> list[tuple[int, V]]:
        """(count, latest hit) for every pair with folded hits; the table starts afresh."""
        out = [(n, hit) for n, hit in self._pairs.values() if n]
        self._pairs.clear()
        return out


# Descriptors kept for everything but client sockets: the store (segments, packs and their
# index and up to 64 pack readers, directory fsyncs, compression), the TLS key, the shipper, the loop's own.
STORE_RESERVE_FDS = 128


@dataclass(frozen=True)
class DescriptorPlan:
    limit: int  # the soft RLIMIT_NOFILE after raising it
    max_sessions: int  # what fits (<= the configured max_sessions)
    backlog: int  # listen backlog per listening socket (an accept burst takes this many at most)
    wanted: int  # the configured max_sessions

    @property
    def lowered(self) -> bool:
        return self.max_sessions < self.wanted


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel still caps a process at fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft == resource.RLIM_INFINITY:
        return target
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def plan_descriptors(*, limit: int, in_use: int, listen_fds: int, max_sessions: int,
                     backlog: int = 1024) -> DescriptorPlan:
    """How many sessions fit under ``limit`` descriptors.

    Every session is one socket. Besides the sessions, the budget keeps room for what is
    open now, the listening sockets, the store's reserve, and one accept burst (the loop
    accepts what the listen queues hold before any refusal closes it). When that does not
    fit, the listen queues are shortened first (as far as needed, but never below what a
    quarter of the spare descriptors allows), then max_sessions is lowered.
    """
    listen_fds = max(1, listen_fds)
    spare = limit - in_use - listen_fds - STORE_RESERVE_FDS
    room = spare - max_sessions  # left for accept bursts if every session fits
    if listen_fds * backlog > room:
        backlog = max(8, min(backlog, max(room, spare // 4) // listen_fds))
    fits = max(1, min(max_sessions, spare - listen_fds * backlog))
    return DescriptorPlan(limit=limit, max_sessions=fits, backlog=backlog, wanted=max_sessions)
