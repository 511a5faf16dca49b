"""Connection-level limits: sessions in total, per source, and new sessions per second.

Protocol-level limits (line length, message size, recipients...) live in the
sans-IO handlers; these are the ones only the glue can see. A flood from one
source hits its own per-source limits long before the global one, so other
sources keep being served.
"""

from __future__ import annotations

import time
from typing import Callable, Optional


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
        """None if the session may open, else (limit name, configured value, observed)."""
        if self.total >= self.max_total:
            return ("max_sessions", self.max_total, self.total + 1)
        n = self.per_ip.get(ip, 0)
        if n >= self.max_per_ip:
            return ("max_sessions_per_ip", self.max_per_ip, n + 1)
        now = self._clock()
        tokens, last = self._buckets.get(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[ip] = (tokens, now)
            return ("new_sessions_per_s_per_ip", self.rate, round(self.rate + 1, 1))
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
