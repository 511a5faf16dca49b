"""A rate limit on the operator log, for anything an attacker can make us say per connection.

Each kind of line (logger, level and message template, so per-session ids in the
arguments do not make lines distinct) may be shown ``per_interval`` times per
``interval_s``; the rest are counted, and the next line of that kind shown says how many
were left out. The filter sits on the stderr handler, so it covers every logger,
asyncio's own included.
"""

from __future__ import annotations

import logging
import time
from typing import Callable


class RateLimitFilter(logging.Filter):
    def __init__(self, per_interval: int = 10, interval_s: float = 60.0, max_kinds: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_interval = per_interval
        self.interval_s = interval_s
        self.max_kinds = max_kinds
        self._clock = clock
        self._kinds: dict[tuple, list] = {}  # kind -> [window start, shown, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        kind = (record.name, record.levelno, msg)
        now = self._clock()
        state = self._kinds.get(kind)
        if state is None:
            if len(self._kinds) >= self.max_kinds:  # bounded: forget the oldest kinds' windows
                for old in list(self._kinds)[: self.max_kinds // 2]:
                    del self._kinds[old]
            state = self._kinds[kind] = [now, 0, 0]
        elif now - state[0] >= self.interval_s:
            left_out = state[2]
            state[:] = [now, 0, 0]
            if left_out:
                record.msg = f"{record.getMessage()} ({left_out} more like this not shown in the last {self.interval_s:g} s)"
                record.args = None
        if state[1] >= self.per_interval:
            state[2] += 1
            return False
        state[1] += 1
        return True


def install(per_interval: int = 10, interval_s: float = 60.0) -> None:
    """Put the filter on every handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RateLimitFilter) for f in handler.filters):
            handler.addFilter(RateLimitFilter(per_interval, interval_s))
