"""Live counters: sessions, messages and proxy requests per minute, from the store's events
as they are written (store.catalog.Reader follows the segments like `tail -F`)."""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from pathlib import Path
from typing import Any, Optional

from ..store.catalog import Reader

COUNTED = {"spampots.session.open": "sessions", "spampots.smtp.message": "messages",
           "spampots.proxy.request": "requests"}
WINDOW_MIN = 60  # minutes kept for the sparkline
ALIVE = {"spampots.sensor.start", "spampots.sensor.heartbeat"}
MAX_SENSORS = 1000


def _minute(ts: str) -> Optional[str]:
    return ts[:16] if len(ts) >= 16 else None  # "YYYY-MM-DDTHH:MM"


class LiveCounts:
    """Counts per UTC minute (the last WINDOW_MIN) and since UTC midnight; `version` moves on
    every change so the pushers know when to send."""

    def __init__(self, data_dir: Path) -> None:
        self.today = dt.datetime.now(dt.timezone.utc).date()
        self.reader = Reader(data_dir, since_day=self.today)
        self.minutes: dict[str, dict[str, int]] = {}
        self.order: deque[str] = deque()
        self.totals = {k: 0 for k in COUNTED.values()}
        self.last_event = ""
        self.sensors: dict[str, dict[str, Any]] = {}  # sensor -> its last start or heartbeat
        self.version = 0
        self.cond = threading.Condition()

    def poll(self, max_lines: int = 5000) -> int:
        """Read what is new (blocking file reads: run it in a thread); the number of events."""
        n = 0
        today = dt.datetime.now(dt.timezone.utc).date()
        if today != self.today:  # a new UTC day: the day's totals start again
            with self.cond:
                self.today, self.totals = today, {k: 0 for k in COUNTED.values()}
                self.version += 1
        while True:
            got = self.reader.read_events(max_lines)
            if not got:
                break
            self.reader.commit()  # no cursor file: only moves the in-memory position
            with self.cond:
                for _line, ev in got:
                    tag = type(ev).__struct_config__.tag  # type: ignore[attr-defined]
                    if tag in ALIVE:
                        n += self._alive(ev, tag)
                        continue
                    name = COUNTED.get(tag)
                    if name is None or not ev.ts.startswith(self.today.isoformat()):
                        continue
                    if ev.depth and name == "requests":
                        continue  # as the report: proxy requests on our listener (depth 0)
                    self.totals[name] += 1
                    minute = _minute(ev.ts)
                    if minute is None:
                        continue
                    if minute not in self.minutes:
                        self.minutes[minute] = {k: 0 for k in COUNTED.values()}
                        self.order.append(minute)
                        while len(self.order) > WINDOW_MIN * 2:
                            self.minutes.pop(self.order.popleft(), None)
                    self.minutes[minute][name] += 1
                    self.last_event = max(self.last_event, ev.ts)
                    n += 1
                if n:
                    self.version += 1
                    self.cond.notify_all()
            if len(got) < max_lines:
                break
        return n

    def _alive(self, ev: Any, tag: str) -> int:
        known = self.sensors.get(ev.sensor)
        if (known is None and len(self.sensors) >= MAX_SENSORS) or (known and known["last_seen"] >= ev.ts):
            return 0
        interval = getattr(ev, "heartbeat_interval_s", 0.0) or (known or {}).get("interval_s", 0.0)
        self.sensors[ev.sensor] = {"last_seen": ev.ts, "uptime_s": getattr(ev, "uptime_s", 0.0),
                                   "version": ev.version, "interval_s": interval, "event": tag}
        return 1

    def state(self) -> dict[str, Any]:
        now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0, tzinfo=None)
        keys = [(now - dt.timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M") for i in range(WINDOW_MIN - 1, -1, -1)]
        with self.cond:
            empty = {k: 0 for k in COUNTED.values()}
            series = [dict(self.minutes.get(k, empty), minute=k) for k in keys]
            return {"version": self.version, "day": self.today.isoformat(), "totals": dict(self.totals),
                    "minutes": series, "last_event": self.last_event, "sensors": dict(self.sensors)}

    def close(self) -> None:
        self.reader.close()
