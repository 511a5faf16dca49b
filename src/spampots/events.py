"""The one event vocabulary of spampots.

Every fact the sensor observes is one of these msgspec Structs, written as one
JSON object per line. The ``event`` field is the msgspec tag, so a line decodes
straight back into its class. The common fields (``v`` .. ``depth``) are set
only by the sensor glue (:func:`stamp`); protocol code never fills them, so
attacker-supplied data cannot overwrite them.

The schema is documented in ``docs/events.md``; ``tests/test_events_doc.py``
fails when code and documentation disagree. Bump ``SCHEMA_VERSION`` when a
field changes meaning or is removed (adding an optional field does not).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Union

import msgspec

SCHEMA_VERSION = 1


# Event names: the only place they are spelled (tests/test_event_names.py checks src/).
SENSOR_START = "spampots.sensor.start"
SENSOR_STOP = "spampots.sensor.stop"
HEARTBEAT = "spampots.sensor.heartbeat"
SESSION_OPEN = "spampots.session.open"
SESSION_CLOSE = "spampots.session.close"
PROXY_REQUEST = "spampots.proxy.request"
HTTP_REQUEST = "spampots.http.request"
SMTP_AUTH = "spampots.smtp.auth"
SMTP_TLS = "spampots.smtp.tls"
MESSAGE = "spampots.smtp.message"
TUNNEL_PAYLOAD = "spampots.tunnel.payload"
TLS_HELLO = "spampots.tls.hello"
PROTOCOL_ERROR = "spampots.protocol.error"
LIMIT_HIT = "spampots.limit.hit"


class Event(msgspec.Struct, tag_field="event", kw_only=True, omit_defaults=False):
    """Common fields, present on every event."""

    v: int = SCHEMA_VERSION
    ts: str = ""  # UTC, ISO 8601 with microseconds and a Z
    sensor: str = ""
    session: str = ""  # "" for sensor-wide events
    src_ip: str = ""
    src_port: int = 0
    listener_port: int = 0
    protocol: str = ""  # socks4, socks4a, socks5, http, smtp, tls, raw, unknown, sensor
    depth: int = 0  # 0 = on our listener; n = inside the n-th tunnel of a proxy chain


COMMON_FIELDS: tuple[str, ...] = (
    "v", "event", "ts", "sensor", "session", "src_ip", "src_port",
    "listener_port", "protocol", "depth",
)


class Listener(msgspec.Struct, kw_only=True):
    address: str
    port: int
    kind: str  # socks | http | smtp | submission | smtps (what the port is known for)
    persona: str = ""
    error: str = ""  # why the bind failed, for failed listeners


class ListenerTally(msgspec.Struct, kw_only=True):
    """What one listener port saw of one protocol since the sensor started."""

    port: int
    protocol: str
    sessions: int = 0  # sessions closed that spoke this protocol last
    messages: int = 0  # messages stored
    recipients: int = 0  # their RCPT TO addresses
    proxy_requests: int = 0


class Health(msgspec.Struct, kw_only=True):
    """The sensor's own state at one moment (what `spampots status` and the metrics show)."""

    sessions_open: int = 0
    recorder_queue: int = 0  # events and messages waiting for the store's writer
    store_errors: int = 0  # failed writes, syncs, rotations since start
    fsyncs: int = 0  # segment and pack syncs timed since start
    fsync_seconds_sum: float = 0.0
    fsync_seconds_max: float = 0.0
    disk_free_bytes: int = -1  # in the data dir; -1: unknown
    ship_backlog_bytes: int = -1  # not yet acked by the broker; -1: no transport
    ship_last_ack_age_s: float = -1.0  # since the broker's last ack; -1: none yet, or no transport
    disk_low: bool = False  # below [store] min_free_mb: DATA is answered 452 until there is room


class SensorStart(Event, tag=SENSOR_START):
    version: str
    listeners: list[Listener] = []
    failed: list[Listener] = []
    limits: dict[str, Any] = {}
    personas: dict[str, str] = {}
    heartbeat_interval_s: float = 0.0  # 0: not recorded (older sensors)
    isp: str = ""  # [sensor] isp: the operator's label for the network's provider ("": none)
    network: str = ""  # [sensor] network: e.g. "ADSL", "cable", "hosting" ("": none)
    workers: int = 1  # processes serving the sensor's ports


class SensorStop(Event, tag=SENSOR_STOP):
    version: str
    uptime_s: float = 0.0
    listeners: list[Listener] = []
    limits: dict[str, Any] = {}
    counters: dict[str, int] = {}
    tallies: list[ListenerTally] = []
    errors: dict[str, int] = {}
    limit_hits: dict[str, int] = {}
    health: Optional[Health] = None


class SensorHeartbeat(Event, tag=HEARTBEAT):
    version: str
    uptime_s: float = 0.0
    worker: int = 0  # which worker process beats (each beats; the figures are its own)
    counters: dict[str, int] = {}
    tallies: list[ListenerTally] = []
    errors: dict[str, int] = {}
    limit_hits: dict[str, int] = {}
    health: Optional[Health] = None


class SessionOpen(Event, tag=SESSION_OPEN):
    listener_addr: str = ""
    proxied_by: Optional[str] = None  # trusted PROXY-protocol front end, if any
    # p0f raw signature of the connection's SYN (protocols/synfp.py); None behind a PROXY front end
    # (its SYN is the front end's) or where the kernel kept none
    tcp_sig: Optional[str] = None


class SessionClose(Event, tag=SESSION_CLOSE):
    duration_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    reason: str = ""  # client_eof, idle, lifetime, limit, protocol, server, shutdown, error


class ProxyRequest(Event, tag=PROXY_REQUEST):
    proxy: str  # socks4, socks4a, socks5, http
    command: str  # connect, bind, udp_associate, get, post, head, put, ...
    target_host: str = ""
    target_port: int = 0
    url: Optional[str] = None  # HTTP absolute-form target
    auth_method: Optional[str] = None  # none, userpass, basic, ...
    username: Optional[str] = None
    password: Optional[str] = None
    outcome: str = "granted"  # granted, rejected, unsupported
    reply_code: int = 0  # SOCKS reply byte or HTTP status sent


class HttpRequest(Event, tag=HTTP_REQUEST):
    role: str  # proxy (absolute-form through us), origin (we play the site), judge
    method: str
    target: str  # request-target as sent
    host: str = ""
    port: int = 0
    version: str = ""
    headers: list[list[str]] = []
    body_size: int = 0
    body_sha256: Optional[str] = None
    user_agent: Optional[str] = None
    status: int = 0  # status we answered


class SmtpAuth(Event, tag=SMTP_AUTH):
    mechanism: str
    username: Optional[str] = None
    password: Optional[str] = None  # for CRAM-MD5: the client's response digest
    outcome: str = "accepted"  # accepted, rejected, malformed, needs_tls
    target_host: Optional[str] = None
    target_port: Optional[int] = None
    policy: Optional[str] = None  # accept_all, reject_all, accept_after_failures; None: mechanism unsupported
    challenge: Optional[str] = None  # CRAM-MD5: the challenge we sent, e.g. <123.1700000000@mx.example>


class SmtpTls(Event, tag=SMTP_TLS):
    outcome: str  # established, failed
    detail: str = ""
    target_host: Optional[str] = None
    target_port: Optional[int] = None
    sni: Optional[str] = None  # server name the client asked for in its ClientHello


class SmtpMessage(Event, tag=MESSAGE):
    helo: Optional[str] = None
    mail_from: str = ""
    rcpts: list[str] = []
    size: int = 0
    sha256: str = ""
    subject: Optional[str] = None
    header_from: Optional[str] = None
    message_id: Optional[str] = None
    via: list[str] = []  # tunnel hops, outermost first, e.g. "socks5:mx.example.com:25"
    target_host: Optional[str] = None  # the mail server the abuser asked for (None: direct)
    target_port: Optional[int] = None
    tls: bool = False
    auth_user: Optional[str] = None
    index: int = 0  # 1-based message number within the SMTP session
    submission: bool = False  # taken by a submission server (587/465, RFC 6409) after AUTH


class TunnelPayload(Event, tag=TUNNEL_PAYLOAD):
    target_host: str = ""
    target_port: int = 0
    size: int = 0  # bytes received in the tunnel (may exceed what is kept)
    data_b64: str = ""  # the first bytes kept (payload_keep limit)


class TlsHello(Event, tag=TLS_HELLO):
    target_host: str = ""
    target_port: int = 0
    sni: Optional[str] = None
    alpn: list[str] = []
    tls_version: str = ""  # highest version offered by the client
    cipher_count: int = 0


class ProtocolError(Event, tag=PROTOCOL_ERROR):
    kind: str  # dotted: socks5.bad_version, http.malformed, smtp.bad_command, ...
    detail: str = ""
    data_b64: str = ""  # up to 256 offending bytes


class LimitHit(Event, tag=LIMIT_HIT):
    limit: str  # name of the limit in [limits]
    value: int | float = 0  # configured limit
    observed: int | float = 0  # what the client tried (the latest, when count > 1)
    count: int = 1  # hits this event stands for: repeats by one source are coalesced per interval


AnyEvent = Union[
    SensorStart, SensorStop, SensorHeartbeat, SessionOpen, SessionClose,
    ProxyRequest, HttpRequest, SmtpAuth, SmtpTls, SmtpMessage, TunnelPayload,
    TlsHello, ProtocolError, LimitHit,
]

EVENT_TYPES: dict[str, type[Event]] = {
    t.__struct_config__.tag: t for t in AnyEvent.__args__  # type: ignore[attr-defined]
}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


class _Stamped(msgspec.Struct):
    """The common fields, all required. Every line we write has them (omit_defaults=False):
    a line without one is damaged, not an event with default values."""

    v: int
    ts: str
    sensor: str
    session: str
    src_ip: str
    src_port: int
    listener_port: int
    protocol: str
    depth: int


_stamped = msgspec.json.Decoder(_Stamped)


_iso_second: tuple[int, str] = (-1, "")  # (second, its text up to the dot): one tuple, so threads never see half


def now_iso() -> str:
    """UTC now as ISO 8601 with microseconds and a trailing Z.

    Every event's ts comes from here (the sensor's hot path): the part up to the second is
    formatted once per second, the microseconds each call.
    """
    global _iso_second
    second, ns = divmod(time.time_ns(), 1_000_000_000)
    cached, prefix = _iso_second
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _iso_second = (second, prefix)
    return f"{prefix}{ns // 1000:06d}Z"


def encode(event: Event) -> bytes:
    """One event as a JSON line (with the trailing newline)."""
    return _encoder.encode(event) + b"\n"


def encode_many(events: list[Event]) -> bytes:
    return b"".join(_encoder.encode(e) + b"\n" for e in events)


def decode(line: bytes | str) -> Event:
    """Decode one JSON line into its typed event, strictly (raises msgspec.DecodeError).

    Wrong types, a missing required field or a missing common field are errors; fields an
    older writer did not know yet (optional ones, added later) take their defaults.
    """
    ev = _decoder.decode(line)
    _stamped.decode(line)
    return ev


def name_of(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


class Peek(msgspec.Struct):
    """The few fields the transport reads off an event line without decoding all of it."""

    event: str = ""
    ts: str = ""
    sha256: str = ""


_peek = msgspec.json.Decoder(Peek)


def peek(line: bytes) -> Peek:
    """Peek at a raw event line; a line that does not decode gives an empty Peek."""
    try:
        return _peek.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Peek()


def stamp(
    event: Event,
    *,
    sensor: str,
    session: str,
    src_ip: str,
    src_port: int,
    listener_port: int,
    protocol: str,
    depth: int,
    ts: Optional[str] = None,
) -> Event:
    """Fill the common fields; called by the sensor glue only."""
    event.v = SCHEMA_VERSION
    event.ts = ts or now_iso()
    event.sensor = sensor
    event.session = session
    event.src_ip = src_ip
    event.src_port = src_port
    event.listener_port = listener_port
    event.protocol = protocol
    event.depth = depth
    return event
