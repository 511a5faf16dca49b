"""Ground truth: what the load generator sent, and the same figures read back
from a sensor's events, in one shape so the two compare with ``==``.

The shape (also what ``spampots loadgen --json FILE`` writes)::

    sessions.total, sessions.by_protocol_outcome {protocol: {outcome: n}},
    sessions.by_port {talk port: n}, messages, recipients, sources

Protocols: socks4, socks4a, socks5, http, smtp (direct), raw (random bytes on a
proxy port). Outcomes: smtp (mail through a tunnel to 25/TCP, or direct), other
(a tunnel to another port), get (absolute-form GET), error (a malformed request:
a protocol error and no proxy request), slowloris, garbage. Only the first four
can be read back from events exactly; slow-loris and garbage sessions look like
errors or plain sessions to a sensor, so compare runs without them.
"""

from __future__ import annotations

import statistics
from array import array
from collections import Counter, defaultdict
from typing import Any, Iterable, Optional

from ..events import Event, ProtocolError, ProxyRequest, SessionOpen, SmtpMessage
from .clients import Result
from .mix import Plan

COMPARED = ("sessions", "messages", "recipients", "sources")


def truth_protocol(plan: Plan) -> str:
    if plan.outcome == "garbage" and plan.variant == "random" and plan.protocol != "smtp":
        return "raw"
    return plan.protocol


class Tally:
    """Counts kept while the generator runs."""

    def __init__(self) -> None:
        self.sessions: Counter[tuple[str, str]] = Counter()
        self.ports: Counter[int] = Counter()
        self.messages = 0
        self.recipients = 0
        self.message_bytes = 0
        self.sources: set[str] = set()
        self.failures: Counter[str] = Counter()
        self.auth = 0
        self.loris_closed = 0
        self.started = 0
        self.done = 0
        self.latency = array("d")  # seconds per finished session

    def start(self, plan: Plan, source: str) -> None:
        self.started += 1
        self.sessions[(truth_protocol(plan), plan.outcome)] += 1
        self.ports[plan.port] += 1
        self.sources.add(source)
        self.auth += plan.auth

    def finish(self, plan: Plan, result: Optional[Result], elapsed: float, failure: str = "") -> None:
        self.done += 1
        if failure:
            self.failures[failure] += 1
        if result is not None:
            self.messages += result.messages
            self.recipients += result.recipients
            self.message_bytes += result.message_bytes
            self.loris_closed += result.closed_by_server
        if plan.outcome not in ("slowloris",):
            self.latency.append(elapsed)

    def latency_ms(self) -> dict[str, float]:
        if not self.latency:
            return {}
        xs = sorted(self.latency)

        def q(p: float) -> float:
            return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 3)

        return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": round(1000 * xs[-1], 3),
                "mean": round(1000 * statistics.fmean(xs), 3)}

    def to_dict(self, **meta: Any) -> dict[str, Any]:
        return {
            **meta,
            "sessions": _sessions(self.sessions, self.ports),
            "messages": self.messages,
            "recipients": self.recipients,
            "message_bytes": self.message_bytes,
            "sources": len(self.sources),
            "auth_sessions": self.auth,
            "slowloris_closed_by_server": self.loris_closed,
            "client_failures": dict(sorted(self.failures.items())),
            "latency_ms": self.latency_ms(),
        }


def _sessions(by: Counter[tuple[str, str]], ports: Counter[int]) -> dict[str, Any]:
    nested: dict[str, dict[str, int]] = defaultdict(dict)
    for (proto, outcome), n in sorted(by.items()):
        nested[proto][outcome] = n
    return {
        "total": sum(by.values()),
        "by_protocol_outcome": dict(nested),
        "by_port": {str(p): n for p, n in sorted(ports.items())},
    }


def from_events(events: Iterable[Event], *, port_offset: int = 0, since: str = "") -> dict[str, Any]:
    """The same figures read back from a sensor's events (sessions that opened at or after ``since``)."""
    opened: dict[str, SessionOpen] = {}
    requests: dict[str, ProxyRequest] = {}
    errors: dict[str, ProtocolError] = {}
    mail_direct: dict[str, str] = {}  # session -> protocol of its depth-0 messages
    messages = recipients = 0
    for ev in events:
        if not ev.session or ev.ts < since:
            continue
        t = type(ev)
        if t is SessionOpen:
            opened[ev.session] = ev  # type: ignore[assignment]
        elif ev.depth != 0:
            if t is SmtpMessage:
                messages += 1
                recipients += len(ev.rcpts)  # type: ignore[attr-defined]
        elif t is ProxyRequest:
            requests.setdefault(ev.session, ev)  # type: ignore[arg-type]
        elif t is ProtocolError:
            errors.setdefault(ev.session, ev)  # type: ignore[arg-type]
        elif t is SmtpMessage:
            messages += 1
            recipients += len(ev.rcpts)  # type: ignore[attr-defined]
            mail_direct[ev.session] = ev.protocol
    by: Counter[tuple[str, str]] = Counter()
    ports: Counter[int] = Counter()
    for sid, op in opened.items():
        ports[op.listener_port - port_offset] += 1
        req = requests.get(sid)
        if req is not None:
            if req.command == "get":
                outcome = "get"
            elif req.target_port == 25 and req.outcome == "granted":
                outcome = "smtp"
            else:
                outcome = "other"
            by[(req.proxy, outcome)] += 1
        elif sid in errors:
            by[(errors[sid].protocol, "error")] += 1
        else:
            by[(mail_direct[sid], "smtp") if sid in mail_direct else (op.protocol, "none")] += 1
    return {
        "sessions": _sessions(by, ports),
        "messages": messages,
        "recipients": recipients,
        "sources": len({op.src_ip for op in opened.values()}),
    }


def compare(truth: dict[str, Any], observed: dict[str, Any]) -> list[str]:
    """Differences between what was sent and what the sensor recorded ([] when equal)."""
    diffs = []
    for key in COMPARED:
        if truth.get(key) != observed.get(key):
            diffs.append(f"{key}: sent {truth.get(key)!r}, sensor recorded {observed.get(key)!r}")
    return diffs
