"""What a session may use of the process it runs in: a narrow host.

A :class:`~spampots.sensor.session.Session` sees ids, admission (the connection
gate and the eviction order), the recorder, the memory of failed AUTH attempts,
the clock and a few frozen settings, and nothing else of the ``Sensor`` or of
the config. The sensor builds one host once its recorder is open; a worker
process builds its own the same way.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from ..events import Event, LimitHit
from ..protocols.smtp import AuthPolicy

if TYPE_CHECKING:
    from ..store.recorder import Recorder
    from .session import Session

#: (the limit hit, if any, as name, value, observed; whether the session may open)
Admission = tuple[Optional[tuple[str, float, float]], bool]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """The settings a session reads, fixed for the life of the process."""

    greeting_delay_s: float = 0.0  # a speaks-first listener's banner waits this long
    tunnel_greeting_delay_s: float = 0.02  # a far end's banner, after the proxy's grant
    idle_timeout_s: float = 60.0
    session_lifetime_s: float = 900.0
    progress_timeout_s: float = 300.0  # no complete command (no reply or record) this long


class Lingering:
    """Refused connections kept open a moment so that their refusal is read (session.py):
    counted, because they hold descriptors no session limit counts."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


@dataclass(frozen=True, slots=True)
class SessionHost:
    """Everything a session calls outside itself (see the module docstring)."""

    loop: asyncio.AbstractEventLoop  # timers, the TLS upgrade, and loop.time() as the clock
    sensor_id: str
    settings: SessionSettings
    recorder: "Recorder"  # emit (fire and forget) and emit_durable_then (a callback once fsynced)
    ssl_context: Optional[ssl.SSLContext]  # None: StartTLS fails and is recorded as failed
    new_session_id: Callable[[], str]
    lingering: Lingering  # the process's refusals still open (bounded by the session)
    is_trusted: Callable[[str], bool]  # a front end whose PROXY header is believed
    admit: Callable[["Session"], Admission]  # may evict the session with the least progress
    opened: Callable[["Session"], None]  # admitted: counted, and ordered by progress
    closed: Callable[["Session"], None]  # its gate slot is released
    progressed: Callable[["Session"], None]  # it answered or recorded something
    date_header: Callable[[], str]  # RFC 5322 local date, for banners and HTTP Date headers
    auth_policy: Callable[[str], AuthPolicy]  # a submission handler's policy for this source
    auth_failed: Callable[[str], None]  # this source's AUTH was refused once more
    count_event: Callable[[Event], None]  # the summary's and the metrics' counters
    limit_hit: Callable[[LimitHit], bool]  # whether to record this hit now (repeats are folded)
