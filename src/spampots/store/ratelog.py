"""Rate-limited log lines for failures that can repeat thousands of times a second.

A full disk fails every write of every session; one line each would flood the log
(and the disk holding it). :class:`RateLimitedLog` logs the first failure at once,
then at most one line per interval, each saying how many were left out since the last.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable


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
