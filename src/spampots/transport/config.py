"""The ``[transport.nats]`` section: where and how a sensor ships, and a collector collects.

The lead nests :class:`NatsSection` in the sensor config as
``transport: TransportSection`` with ``nats: Optional[NatsSection] = None``;
without it the sensor keeps the embedded store only. Every setting is
described in ``docs/network.md``.
"""

from __future__ import annotations

import math
import os
import re
import msgspec

from . import credentials

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # JetStream stream / consumer / bucket names
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # one subject token, no wildcards or dots
_SCHEMES = ("nats", "tls", "ws", "wss")


class NatsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    # Credentials: at most one of user/password, an nkey seed file, a creds (JWT) file.
    user: str = ""
    password: str = ""
    nkey_seed_file: str = ""  # a user nkey seed ("SU..."); the server lists the public key
    creds_file: str = ""  # decentralised auth: user JWT + nkey seed, as `nsc` writes it
    # TLS: a tls:// server, or any of these, turns it on; cert and key go together (mutual TLS).
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    stream: str = "SPAMPOTS"  # the status stream is <stream>_STATUS, big bodies go to <stream>_BODIES
    subject_prefix: str = "spampots"  # <prefix>.<sensor>.events / .messages / .status
    batch_size: int = 256  # events per publish round (shipper) and per fetch (collector)
    ack_timeout_s: float = 10.0  # wait this long for a round of publish acks, then retry
    prune_after_ack: bool = False  # delete closed segments once every line of them is acked
    status_interval_s: float = 30.0  # the shipper's status report (lag, backlog, last heartbeat)
    connect_timeout_s: float = 5.0
    retry_max_s: float = 30.0  # backoff cap while the broker is unreachable
    auth_retry_s: float = 300.0  # retry interval after the broker refused our credentials
    poll_interval_s: float = 0.2  # how often a caught-up shipper looks for new events

    # -- names derived from the settings --------------------------------------------------------
    @property
    def status_stream(self) -> str:
        return f"{self.stream}_STATUS"

    @property
    def bodies_bucket(self) -> str:
        return f"{self.stream}_BODIES"

    def subject(self, sensor: str, kind: str) -> str:
        """``<prefix>.<sensor>.<kind>`` with kind events, messages or status."""
        return f"{self.subject_prefix}.{sensor}.{kind}"

    def validate(self) -> list[str]:
        """Problems worded for the user, each naming its key; [] when fine."""
        err: list[str] = []
        k = "transport.nats"
        if not self.servers:
            err.append(f"{k}.servers: give at least one server URL")
        for s in self.servers:
            scheme, sep, rest = s.partition("://")
            if not sep or scheme not in _SCHEMES or not rest:
                err.append(f"{k}.servers: {s!r} is not a URL like nats://host:4222 or tls://host:4222")
        if bool(self.user) != bool(self.password):
            err.append(f"{k}.user and {k}.password go together")
        kinds = [n for n, v in (("user/password", self.user), ("nkey_seed_file", self.nkey_seed_file),
                                ("creds_file", self.creds_file)) if v]
        if len(kinds) > 1:
            err.append(f"{k}: use one kind of credentials, not {' and '.join(kinds)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            err.append(f"{k}.tls_cert and {k}.tls_key go together")
        # Read (and kept in memory) now: a sensor may not be able to read them after dropping root.
        for key in ("nkey_seed_file", "creds_file"):
            path = getattr(self, key)
            problem = credentials.check_file(key, path) if path else None
            if problem:
                err.append(f"{k}.{key}: {problem}")
        missing = [key for key in ("tls_ca", "tls_cert", "tls_key")
                   if getattr(self, key) and not os.path.isfile(getattr(self, key))]
        err += [f"{k}.{key}: no such file {getattr(self, key)!r}" for key in missing]
        if not missing and bool(self.tls_cert) == bool(self.tls_key) and (self.tls_ca or self.tls_cert):
            err += credentials.check_tls(self.tls_ca, self.tls_cert, self.tls_key)
        if not _NAME_RE.match(self.stream):
            err.append(f"{k}.stream: use 1-64 letters, digits, '_' or '-', not {self.stream!r}")
        tokens = self.subject_prefix.split(".")
        if not all(_TOKEN_RE.match(t) for t in tokens):
            err.append(f"{k}.subject_prefix: dot-separated tokens of letters, digits, '_', '-' "
                       f"(no wildcards), not {self.subject_prefix!r}")
        if not 1 <= self.batch_size <= 10000:
            err.append(f"{k}.batch_size must be 1..10000")
        for key, floor in (("ack_timeout_s", 0.1), ("status_interval_s", 0.1), ("connect_timeout_s", 0.1),
                           ("retry_max_s", 0.1), ("auth_retry_s", 0.1), ("poll_interval_s", 0.01)):
            value = getattr(self, key)
            if not math.isfinite(value) or value < floor:  # nan and inf too: a busy loop or none
                err.append(f"{k}.{key} must be a finite number >= {floor:g}, not {value:g}")
        return err


def load_section(raw: dict, source: str = "config") -> NatsSection:
    """A validated ``NatsSection`` from parsed TOML: a sensor config's ``[transport.nats]``,
    a file's ``[nats]``, or the bare table. ValueError naming every problem."""
    if "transport" in raw:
        table = raw["transport"].get("nats") or {}
    else:
        table = raw.get("nats", raw)
    try:
        cfg = msgspec.convert(table, NatsSection)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{source}: {str(exc).replace('$.', 'transport.nats.')}") from None
    errors = cfg.validate()
    if errors:
        raise ValueError(f"{source}: " + "; ".join(errors))
    return cfg


def example_toml() -> str:
    return """\
[transport.nats]            # ship to NATS JetStream; without this section: local store only
servers = ["nats://127.0.0.1:4222"]
user = ""                   # user/password, or nkey_seed_file, or creds_file
password = ""
nkey_seed_file = ""
creds_file = ""
tls_ca = ""                 # CA bundle to verify the server (tls:// URLs use the system CAs)
tls_cert = ""               # client certificate and key (mutual TLS)
tls_key = ""
stream = "SPAMPOTS"
subject_prefix = "spampots"
batch_size = 256
ack_timeout_s = 10
prune_after_ack = false     # delete closed local segments once the broker has acked them
status_interval_s = 30
connect_timeout_s = 5
retry_max_s = 30
auth_retry_s = 300
poll_interval_s = 0.2
"""
