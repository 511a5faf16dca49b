"""What travels over NATS, and how we connect: shared by shipper, collector and `network`.

Subjects (``<prefix>`` is ``subject_prefix``, default ``spampots``):

* ``<prefix>.<sensor>.events``: one event per message, the exact JSON line from the
  sensor's segment (without the newline). ``Nats-Msg-Id: <sensor>:<segment>:<offset>``.
* ``<prefix>.<sensor>.messages``: one message body per SHA-256, zstd-compressed, with
  ``Nats-Msg-Id: body:<sha256>`` and the headers below. A body too big for the
  server's ``max_payload`` goes to the object store bucket ``<stream>_BODIES`` under
  its SHA-256 and the message carries ``Spampots-Object: <bucket>`` and no payload.
* ``<prefix>.<sensor>.status``: the shipper's status report (:class:`ShipStatus`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from typing import Awaitable, Callable, Any, Optional

import msgspec
import zstandard

from . import credentials
from .config import NatsSection

log = logging.getLogger("spampots.transport")

MSG_ID = "Nats-Msg-Id"
H_SHA = "Spampots-Sha256"
H_SIZE = "Spampots-Size"
H_ENCODING = "Spampots-Encoding"  # "zstd" or "identity"
H_OBJECT = "Spampots-Object"  # bucket holding the body (object store), payload empty
PAYLOAD_HEADROOM = 4096  # headers and protocol overhead under max_payload

_cctx = zstandard.ZstdCompressor(level=3)
_dctx = zstandard.ZstdDecompressor()


def event_msg_id(sensor: str, segment: str, offset: int) -> str:
    """Deterministic: the same line always gets the same id, so retries are duplicates."""
    return f"{sensor}:{segment}:{offset}"


def body_msg_id(sha256: str) -> str:
    return f"body:{sha256}"


def encode_body(body: bytes) -> bytes:
    return _cctx.compress(body)


def decode_body(payload: bytes, headers: dict[str, str]) -> bytes:
    """The raw body; ValueError if it does not match its SHA-256 header."""
    raw = _dctx.decompress(payload) if headers.get(H_ENCODING, "zstd") == "zstd" else payload
    sha = headers.get(H_SHA, "")
    if hashlib.sha256(raw).hexdigest() != sha:
        raise ValueError(f"body does not match its {H_SHA} header {sha!r}")
    return raw


class Heartbeat(msgspec.Struct, kw_only=True):
    ts: str
    uptime_s: float = 0.0
    version: str = ""
    counters: dict[str, int] = {}


class ShipStatus(msgspec.Struct, kw_only=True):
    """What a shipper reports on ``<prefix>.<sensor>.status`` every ``status_interval_s``."""

    sensor: str
    ts: str  # when this report was made (UTC, ISO 8601)
    shipped_events: int = 0  # since the shipper started
    shipped_bodies: int = 0
    backlog_bytes: int = 0  # on-disk bytes of events not yet acked (.zst counted compressed)
    backlog_segments: int = 0
    lag_s: float = 0.0  # age of the oldest event not yet acked; 0 when caught up
    cursor: str = ""
    last_event_ts: str = ""  # ts of the newest event acked
    last_heartbeat: Optional[Heartbeat] = None
    version: str = ""


class AuthFailed(Exception):
    """The broker refused our credentials (or they could not be used)."""


class TlsFailed(AuthFailed):
    """TLS could not be set up (unknown CA, wrong host name, unreadable files)."""


def is_auth_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("authorization", "authentication", "permissions violation"))


def _tls_context(cfg: NatsSection) -> Optional[ssl.SSLContext]:
    wants = cfg.tls_ca or cfg.tls_cert or any(s.startswith(("tls://", "wss://")) for s in cfg.servers)
    if not wants:
        return None
    return credentials.tls_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)


def connect_options(cfg: NatsSection, name: str, notes: Optional[list[str]] = None) -> dict[str, Any]:
    """nats.connect keyword arguments. We own reconnection (allow_reconnect=False): a lost
    connection ends the shipping/collecting round, which restarts from durable state.
    ``notes`` receives a line per credential file used from the copy read at start."""
    opts: dict[str, Any] = dict(
        servers=list(cfg.servers), name=name, allow_reconnect=False, max_reconnect_attempts=1,
        reconnect_time_wait=0.2, connect_timeout=cfg.connect_timeout_s, ping_interval=10,
        max_outstanding_pings=3,
    )
    if cfg.user:
        opts.update(user=cfg.user, password=cfg.password)
    # In memory, not file paths: nats-py would re-read the files on every connection,
    # which a sensor that dropped root may no longer do (see credentials.py).
    for key in ("nkey_seed_file", "creds_file"):
        path = getattr(cfg, key)
        if not path:
            continue
        secret = credentials.load_secret(path, key)
        if secret.note and notes is not None:
            notes.append(secret.note)
        if key == "nkey_seed_file":
            opts["nkeys_seed_str"] = secret.value
        else:
            from nats.aio.client import RawCredentials  # nats-py >= 2.7

            opts["user_credentials"] = RawCredentials(secret.value)
    tls = _tls_context(cfg)
    if tls is not None:
        opts["tls"] = tls
    return opts


async def connect(cfg: NatsSection, name: str, on_error: Optional[Any] = None) -> Any:
    """A connected ``nats.aio.client.Client``; raises AuthFailed or ConnectionError.

    ``on_error(exc)`` sees the client's asynchronous errors (e.g. a permissions
    violation on publish); by default they are dropped, since callers log once per
    state change themselves.
    """
    import nats

    seen: list[Exception] = []

    async def quiet(e: Exception) -> None:
        seen.append(e)
        if on_error is not None:
            on_error(e)

    notes: list[str] = []
    try:
        opts = connect_options(cfg, name, notes)
    except credentials.CredentialError as e:
        raise AuthFailed(str(e)) from None
    except ImportError as e:
        raise AuthFailed(f"nkey and .creds authentication need nats-py >= 2.7 ({e})") from None
    except (OSError, ssl.SSLError) as e:
        raise TlsFailed(f"cannot load TLS files: {e}") from None
    budget = (cfg.connect_timeout_s + 0.5) * 2 * len(cfg.servers) + 2
    try:
        return await asyncio.wait_for(nats.connect(error_cb=quiet, **opts), budget)
    except ImportError as e:  # nkeys missing for nkey / creds authentication
        raise AuthFailed(f"{e} (pip install nkeys)") from None
    except Exception as e:
        for err in (e, *reversed(seen)):
            if isinstance(err, ssl.SSLError):
                raise TlsFailed(f"TLS: {getattr(err, 'verify_message', '') or err}") from None
            if is_auth_error(err):
                raise AuthFailed("; ".join([str(err) or type(err).__name__, *notes])) from None
        cause = seen[-1] if seen else e
        raise ConnectionError(f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__) from None


def headers_of(msg: Any) -> dict[str, str]:
    return dict(msg.headers or {})


class Backoff:
    """Exponential backoff with a cap; ``reset`` after a success."""

    def __init__(self, first: float = 0.2, cap: float = 30.0) -> None:
        self.first, self.cap, self.next = first, cap, first

    def take(self) -> float:
        d, self.next = self.next, min(self.cap, self.next * 2)
        return d

    def reset(self) -> None:
        self.next = self.first


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except asyncio.TimeoutError:
        return stop.is_set()


async def reconnect_loop(
    one_round: "Callable[[asyncio.Event, Backoff], Awaitable[float]]", stop: asyncio.Event, retry_max_s: float
) -> None:
    """Run connection rounds until ``stop``; each round says how long to wait before the next."""
    backoff = Backoff(0.2, retry_max_s)
    while not stop.is_set():
        wait = await one_round(stop, backoff)
        if wait and await sleep_or_stop(stop, wait):
            break
