"""The free-space floor of a data dir (``[store] min_free_mb``).

A sensor on a small box must not fill its disk: below the floor it stops taking
mail (SMTP ``452 4.3.1``) and takes it again once there is room. One ``statvfs``
per poll; the sensor polls about once a second, never per message. The way back
up needs a little more than the floor (``RESUME_MARGIN``) so that a disk hovering
at the floor does not flip the state, and the log, on every poll.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

__all__ = ["FreeSpaceWatch", "free_bytes", "RESUME_MARGIN"]

MB = 1_000_000  # the floor is in MB, as `spampots status` and `df -H` count
RESUME_MARGIN = 0.05  # resume at floor * 1.05 (at least 1 MB more than the floor)


def free_bytes(path: Union[str, os.PathLike] = ".") -> tuple[int, bool]:
    """(bytes an unprivileged writer may still use, whether inodes ran out); (-1, False) if unknown."""
    try:
        st = os.statvfs(path)
    except OSError:
        return -1, False
    return st.f_bavail * st.f_frsize, bool(st.f_files and st.f_favail == 0)


class FreeSpaceWatch:
    """Whether a data dir is below its floor, with hysteresis; :meth:`poll` says when that changes."""

    def __init__(self, path: Union[str, os.PathLike], min_free_mb: float,
                 probe: Callable[[Union[str, os.PathLike]], tuple[int, bool]] = free_bytes) -> None:
        self.path = path
        self.min_free_mb = min_free_mb
        self.floor = int(min_free_mb * MB)
        self.resume_at = self.floor + max(MB, int(self.floor * RESUME_MARGIN))
        self.probe = probe
        self.low = False
        self.free = -1  # bytes, as of the last poll (-1: unknown)
        self.no_inodes = False

    @property
    def enabled(self) -> bool:
        return self.floor > 0

    def poll(self) -> Optional[bool]:
        """Look again; the new state (True: low) when it changed, else None.

        An unknown figure (statvfs failed) changes nothing: the write path's own errors
        still keep a 250 from going out without storage."""
        if not self.enabled:
            return None
        free, no_inodes = self.probe(self.path)
        if free < 0:
            return None
        self.free, self.no_inodes = free, no_inodes
        low = no_inodes or free < (self.resume_at if self.low else self.floor)
        if low == self.low:
            return None
        self.low = low
        return low
