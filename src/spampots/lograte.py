"""Rate limits on log lines, for anything an attacker (or a full disk) can make us say
thousands of times a second. Two tools, one place:

* :class:`RateLimitFilter` sits on the sensor's stderr handler and covers every logger,
  asyncio's own included: the sensor installs it at start (:func:`install`).
* :class:`RateLimitedLog` is one call site's line, at most once per interval with a count of
  the rest and a total, for library code that runs in any process (the store's writer).

RateLimitFilter: each kind of line (logger, level and message template, so per-session ids in the
arguments do not make lines distinct) may be shown ``per_interval`` times per
``interval_s``; the rest are counted, and the next line of that kind shown says how many
were left out.
"""

from __future__ import annotations

import logging
import threading
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


class RateLimitedLog:
    """One call site's log line, at most once per ``interval_s``, with a count of the rest."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()  # cheap; callers may be on any thread
        self._next = float("-inf")
        self._left_out = 0
        self._last: tuple[int, str] = (logging.ERROR, "")
        self.total = 0  # every call, logged or not

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log now if the interval has passed (True), else only count it (False)."""
        now = self._clock()
        with self._lock:
            self.total += 1
            self._last = (level, msg % args if args else msg)
            if now < self._next:
                self._left_out += 1
                return False
            left_out, self._left_out = self._left_out, 0
            self._next = now + self.interval_s
        if left_out:
            self.logger.log(level, msg + " (and %d more like it since the last such line)", *args, left_out)
        else:
            self.logger.log(level, msg, *args)
        return True

    def error(self, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, msg, *args)

    def warning(self, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def flush(self) -> None:
        """Say how many were left out since the last line (at shutdown), if any."""
        with self._lock:
            left_out, self._left_out = self._left_out, 0
            level, last = self._last
        if left_out:
            self.logger.log(level, "%d more like this since the last such line, the last: %s", left_out, last)
