"""One memory budget for the attacker bytes that sessions hold (bodies, header blocks).

Per-session limits alone multiply: 10 MiB of DATA times thousands of sessions is
more memory than the box has. The sensor owns one :class:`MemoryBudget`; each
session gets its own :class:`Account` on it (through its ``Context``), and its
handlers reserve before they buffer and release when the bytes are gone. A
refused reservation is the protocol's temporary error (SMTP ``452 4.3.1``, HTTP
``503``). Closing the account at session end returns whatever it still holds,
so a handler that never reached its release cannot leak budget.

Plain accounting, sans-IO: no clock, no I/O, no locks (one event loop).
"""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["Account", "MemoryBudget", "unlimited"]


class MemoryBudget:
    """Bytes all sessions together may hold; ``used`` is what they hold now."""

    __slots__ = ("limit", "used", "refused", "disk_low")

    def __init__(self, limit: float) -> None:
        if not (limit > 0):  # also refuses NaN
            raise ValueError(f"memory budget must be positive, not {limit!r}")
        self.limit = limit
        self.used = 0
        self.refused = 0  # reservations turned down, for the summary and tests
        # The glue's free-space watch sets this below ``[store] min_free_mb``: then there is
        # no room for bodies either, and DATA gets the same 452 before any body is read.
        # (min_free_mb, free MB now) while low, None otherwise.
        self.disk_low: Optional[tuple[float, float]] = None

    def account(self) -> "Account":
        return Account(self)


class Account:
    """One session's share of a :class:`MemoryBudget`."""

    __slots__ = ("pool", "held")

    def __init__(self, pool: MemoryBudget) -> None:
        self.pool = pool
        self.held = 0

    def fresh(self) -> "Account":
        """A new, empty account on the same budget (one per session)."""
        return Account(self.pool)

    def reserve(self, n: int) -> bool:
        """Take ``n`` bytes from the budget; False (nothing taken) if that would exceed it."""
        pool = self.pool
        if pool.used + n > pool.limit:
            pool.refused += 1
            return False
        pool.used += n
        self.held += n
        return True

    def release(self, n: int) -> None:
        """Give back ``n`` bytes (never more than this account holds)."""
        n = min(n, self.held)
        self.held -= n
        self.pool.used -= n

    def close(self) -> None:
        """The session ended: give back everything it still holds."""
        self.release(self.held)


def unlimited() -> Account:
    """An account on a budget of its own with no limit (handlers built without a sensor)."""
    return MemoryBudget(math.inf).account()
