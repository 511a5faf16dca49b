"""JSON lines file for Filebeat, Vector, Fluent Bit (or rsyslog's imfile): one event per line,
exactly as the store holds it, rotated by size like logrotate (``x.jsonl`` -> ``x.jsonl.1``
-> ... -> ``x.jsonl.<keep>``, then gone).

Exactly once, even after a crash between writing a batch and moving the cursor: at start
the last line of the file is remembered, and the first batch skips up to it (event lines
are unique: a microsecond timestamp and a session id).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from ..events import Event
from ..store.catalog import Line
from ..store.segments import fdatasync, write_all
from . import Output

_TAIL = 1 << 16  # how far back the last line is looked for


class JsonlOutput(Output):
    def __init__(self, cfg, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg, data_dir)
        self.path = data_dir / cfg.path if cfg.path else data_dir / "outputs" / f"{cfg.name or cfg.kind}.jsonl"
        self.max_bytes = int(cfg.max_mb * 1024 * 1024)
        self._fd: Optional[int] = None
        self._size = 0
        self._last: Optional[bytes] = None  # the file's last line at start, to skip once

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        self._last = _last_line(self._fd, self._size)  # type: ignore[arg-type]

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)  # read: its last line
        self._size = os.fstat(self._fd).st_size

    def write(self, batch: Sequence[tuple[Line, Event]]) -> None:
        lines = [ln.data for ln, _ in batch]
        if self._last is not None:
            if self._last in lines:  # written before a crash, cursor not moved: not again
                lines = lines[lines.index(self._last) + 1:]
            self._last = None
        if not lines:
            return
        data = b"\n".join(lines) + b"\n"
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        assert self._fd is not None
        write_all(self._fd, data)
        self._size += len(data)
        if self.cfg.fsync:
            fdatasync(self._fd)

    def _rotate(self) -> None:
        """Rename, never copy or truncate: a tailing shipper keeps reading the renamed file
        to its end (rsyslog, Filebeat and Fluent Bit follow by inode), then takes the new one."""
        self.stop()
        keep = self.cfg.keep
        older = self.path.with_name(f"{self.path.name}.{keep}")
        older.unlink(missing_ok=True)
        for i in range(keep - 1, 0, -1):
            p = self.path.with_name(f"{self.path.name}.{i}")
            if p.exists():
                p.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if keep > 0:
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._open()

    def stop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _last_line(fd: int, size: int) -> Optional[bytes]:
    if size == 0:
        return None
    start = max(0, size - _TAIL)
    tail = os.pread(fd, size - start, start).rstrip(b"\n")
    return tail.rpartition(b"\n")[2] or None


PLUGIN = JsonlOutput
