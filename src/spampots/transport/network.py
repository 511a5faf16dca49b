"""`spampots network init` and `spampots network status`.

``init`` creates (or updates) what the shippers and collectors use: the events
stream, the status stream, the object store bucket for big bodies and the
collector's durable consumer. Every setting is explained in ``docs/network.md``.
``status`` shows, per sensor, its last heartbeat, how far behind its shipper is,
what waits on the sensor and what waits in the broker for the collector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import msgspec

from .availability import Availability, availability, beats_from_store, ts_seconds
from .collector import DEFAULT_DURABLE
from .config import NatsSection
from .wire import AuthFailed, ShipStatus, connect

DAY = 86400.0


@dataclass
class StreamSettings:
    """The knobs of `network init` (defaults in docs/network.md)."""

    retention: str = "workqueue"  # workqueue: a message leaves the stream when collected; or limits
    max_age_days: float = 30.0  # uncollected data older than this is dropped by the broker
    max_bytes: int = -1  # stream size cap; when full, publishes are refused (discard new)
    duplicate_window_s: float = 120.0  # JetStream drops a Nats-Msg-Id seen this recently
    replicas: int = 1  # 3 on a NATS cluster
    ack_wait_s: float = 60.0  # redeliver what a collector took but did not ack in this time
    max_ack_pending: int = 20000  # messages out with collectors and not yet acked
    durable: str = DEFAULT_DURABLE


async def init_network(cfg: NatsSection, st: StreamSettings) -> list[str]:
    """Create or update streams, bucket and consumer; returns what was done, one line each."""
    from nats.js import api
    from nats.js.errors import BadRequestError, NotFoundError

    nc = await connect(cfg, "spampots-network-init")
    done: list[str] = []
    try:
        js = nc.jetstream(timeout=10.0)
        p = cfg.subject_prefix
        retention = {"workqueue": api.RetentionPolicy.WORK_QUEUE,
                     "limits": api.RetentionPolicy.LIMITS}[st.retention]
        main = api.StreamConfig(
            name=cfg.stream, description="spampots events and message bodies, per sensor",
            subjects=[f"{p}.*.events", f"{p}.*.messages"], retention=retention,
            storage=api.StorageType.FILE, discard=api.DiscardPolicy.NEW,
            max_age=st.max_age_days * DAY, max_bytes=st.max_bytes, max_msgs=-1,
            max_msg_size=-1, duplicate_window=st.duplicate_window_s, num_replicas=st.replicas,
        )
        status = api.StreamConfig(
            name=cfg.status_stream, description="spampots shippers' latest status, per sensor",
            subjects=[f"{p}.*.status"], retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE, discard=api.DiscardPolicy.OLD, max_msgs_per_subject=1,
            max_age=st.max_age_days * DAY, num_replicas=st.replicas,
        )
        for sc in (main, status):
            try:
                await js.stream_info(sc.name)  # type: ignore[arg-type]
                await js.update_stream(sc)
                done.append(f"stream {sc.name}: updated")
            except NotFoundError:
                await js.add_stream(sc)
                done.append(f"stream {sc.name}: created")
        try:
            await js.object_store(cfg.bodies_bucket)
            done.append(f"object store {cfg.bodies_bucket}: exists")
        except Exception:
            await js.create_object_store(cfg.bodies_bucket, config=api.ObjectStoreConfig(
                description="spampots message bodies bigger than the server's max_payload",
                ttl=st.max_age_days * DAY, storage=api.StorageType.FILE, replicas=st.replicas,
            ))
            done.append(f"object store {cfg.bodies_bucket}: created")
        cc = api.ConsumerConfig(
            durable_name=st.durable, description="spampots collectors (they share the work)",
            deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=st.ack_wait_s, max_deliver=-1, max_ack_pending=st.max_ack_pending,
            replay_policy=api.ReplayPolicy.INSTANT,
        )
        try:
            await js.add_consumer(cfg.stream, cc)
            done.append(f"consumer {st.durable} on {cfg.stream}: ready")
        except BadRequestError as e:
            done.append(f"consumer {st.durable} on {cfg.stream}: kept as it is ({e.description})")
        info = await js.stream_info(cfg.stream)
        done.append(f"stream {cfg.stream}: {info.state.messages} messages, {info.state.bytes} bytes; "
                    f"server max_payload {nc.max_payload} bytes (bigger bodies use the object store)")
    finally:
        await nc.close()
    return done


# -- status ----------------------------------------------------------------------------------------


@dataclass
class SensorRow:
    sensor: str
    ship: Optional[ShipStatus] = None  # the shipper's last report
    in_stream: int = 0  # messages of this sensor in the stream (uncollected, with workqueue)
    collected: Optional[Availability] = None  # from the central store's heartbeats
    collected_last_hb: Optional[float] = None


@dataclass
class NetworkStatus:
    now: float
    stream: str
    messages: int = 0
    bytes: int = 0
    consumer: dict[str, Any] = field(default_factory=dict)
    sensors: dict[str, SensorRow] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _row(st: NetworkStatus, sensor: str) -> SensorRow:
    return st.sensors.setdefault(sensor, SensorRow(sensor))


async def network_status(
    cfg: NatsSection,
    *,
    durable: str = DEFAULT_DURABLE,
    data_dir: Optional[Path] = None,
    window_h: float = 24.0,
    heartbeat_interval_s: float = 60.0,
) -> NetworkStatus:
    """Gather the broker's view (streams, consumer, shippers' reports) and, with ``data_dir``,
    the central store's heartbeats and availability over the last ``window_h`` hours."""
    from nats.js.errors import NotFoundError

    now = time.time()
    st = NetworkStatus(now=now, stream=cfg.stream)
    try:
        nc = await connect(cfg, "spampots-network-status")
    except (AuthFailed, ConnectionError) as e:
        st.problems.append(f"broker: {e}")
        nc = None
    if nc is not None:
        try:
            js = nc.jetstream(timeout=5.0)
            p = cfg.subject_prefix
            try:
                info = await js.stream_info(cfg.stream, subjects_filter=f"{p}.>")
                st.messages, st.bytes = info.state.messages, info.state.bytes
                for subj, n in (info.state.subjects or {}).items():
                    parts = subj.split(".")
                    if parts[-1] == "events" or parts[-1] == "messages":
                        _row(st, parts[-2]).in_stream += n
            except NotFoundError:
                st.problems.append(f"stream {cfg.stream} missing: run `spampots network init`")
            try:
                ci = await js.consumer_info(cfg.stream, durable)
                st.consumer = dict(name=durable, pending=ci.num_pending, ack_pending=ci.num_ack_pending,
                                   redelivered=ci.num_redelivered, waiting=ci.num_waiting)
            except NotFoundError:
                st.problems.append(f"consumer {durable} missing: run `spampots network init`")
            try:
                sinfo = await js.stream_info(cfg.status_stream, subjects_filter=f"{p}.*.status")
                for subj in sinfo.state.subjects or {}:
                    msg = await js.get_last_msg(cfg.status_stream, subj)
                    try:
                        rep = msgspec.json.decode(msg.data, type=ShipStatus)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue
                    _row(st, subj.split(".")[-2]).ship = rep
            except NotFoundError:
                st.problems.append(f"stream {cfg.status_stream} missing: run `spampots network init`")
        finally:
            await nc.close()
    if data_dir is not None:
        since = now - window_h * 3600
        beats = beats_from_store(data_dir, since, now)
        for sensor, av in availability(beats, since=since, until=now,
                                       interval_s=heartbeat_interval_s).items():
            row = _row(st, sensor)
            row.collected = av
            row.collected_last_hb = max((t for s, t, k in beats if s == sensor and k == "heartbeat"),
                                        default=None)
    return st


def _age(now: float, t: Optional[float]) -> str:
    if t is None:
        return "-"
    s = max(0.0, now - t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render_status(st: NetworkStatus) -> str:
    """A plain-text table, one line per sensor."""
    lines = [f"stream {st.stream}: {st.messages} messages ({_size(st.bytes)}) not yet collected"]
    if st.consumer:
        c = st.consumer
        lines.append(f"collectors ({c['name']}): {c['pending']} pending, {c['ack_pending']} in flight, "
                     f"{c['redelivered']} redelivered, {c['waiting']} waiting pulls")
    head = ("sensor", "last heartbeat", "shipper report", "lag", "backlog on sensor", "in broker",
            "up (window)", "gaps")
    rows = [head]
    for name in sorted(st.sensors):
        r = st.sensors[name]
        hb = None
        if r.ship and r.ship.last_heartbeat:
            hb = ts_seconds(r.ship.last_heartbeat.ts)
        if r.collected_last_hb is not None:
            hb = max(hb or 0.0, r.collected_last_hb)
        rep = ts_seconds(r.ship.ts) if r.ship else None
        lag = f"{r.ship.lag_s:.0f}s" if r.ship else "-"
        backlog = f"{_size(r.ship.backlog_bytes)} / {r.ship.backlog_segments} seg" if r.ship else "-"
        up = gaps = "-"
        if r.collected is not None:
            av = r.collected
            up = f"{av.up_s / 3600:.1f}h ({av.up_fraction:.0%})"
            gaps = f"{len(av.gaps)}, longest {av.longest_gap_s / 60:.0f}m" if av.gaps else "0"
        rows.append((name, _age(st.now, hb), _age(st.now, rep), lag, backlog, str(r.in_stream), up, gaps))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lines += [f"problem: {p}" for p in st.problems]
    return "\n".join(lines)


def status_json(st: NetworkStatus) -> bytes:
    return msgspec.json.encode(st)
