"""The sensor's TOML configuration, validated into typed structs.

Everything has a default, so ``spampots run`` with no file is a working
sensor on the talk's ports. Unknown keys are errors (a typo must not silently
become a default), and every error names the key that is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import math
import socket
import tomllib
from pathlib import Path
from typing import Any, Optional, Union

import msgspec

from .protocols.base import Limits as ProtocolLimits
from .transport.config import NatsSection, example_toml as _nats_example
from .protocols.personas import JUDGE_STYLES, PORT_PERSONAS, PROXY_STYLES, SMTP_STYLES
from .protocols.smtp import AUTH_MECHANISMS, AUTH_POLICIES, AuthPolicy
from .store.segments import check_sensor

# The talk's abused ports ("Portas Abusadas"), in its order.
SOCKS_PORTS = (1080, 3127)
HTTP_PORTS = (8080, 80, 3128, 8000, 6588, 4480, 3382, 81)
SMTP_PORTS = (25,)
SUBMISSION_LISTENERS = ((587, "submission"), (465, "smtps"))  # added by [submission] enable = true
LISTENER_KINDS = ("socks", "http", "smtp", "submission", "smtps")
TLS_KINDS = ("submission", "smtps")  # listener kinds that need the sensor's TLS certificate
SPEAKS_FIRST_KINDS = ("smtp", "submission", "smtps")  # their persona is an SMTP style, the others' an HTTP one
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration problem, worded for the user."""


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ListenerConfig(_Base):
    port: int
    # what the port is known for: socks | http (wait for the client) | smtp (banner first)
    # | submission (banner, STARTTLS, AUTH) | smtps (TLS handshake first, then as submission)
    kind: str = "http"
    address: str = ""  # "" = every interface (IPv4 and IPv6)
    # smtp style / proxy product for this listener; "" = the sensor's ([smtp] / [http] persona,
    # else picked from the sensor id). Without [[listener]] each talk port has its own (PORT_PERSONAS).
    persona: str = ""


class SensorSection(_Base):
    id: str = ""  # "" = derived from the host name
    data_dir: str = ""  # "" = default_data_dir(): /var/lib/spampots as root, else ./var
    user: str = "nobody"  # dropped to after binding when started as root; "" = never drop
    group: str = ""  # owner group of the data dir (analysts join it); "" = spampots if it exists, else the user's
    log_level: str = "info"
    summary_interval_s: float = 60.0
    heartbeat_interval_s: float = 60.0
    greeting_delay_s: float = 0.0  # wait this long for a client that speaks first on SMTP ports
    tunnel_greeting_delay_s: float = 0.02  # far end's "connect time" before its banner
    isp: str = ""  # label of the provider the sensor's address belongs to, for per-ISP reports ("": none)
    network: str = ""  # label of the kind of network (ADSL, cable, hosting...) ("": none)
    workers: int = 0  # worker processes on the same ports (SO_REUSEPORT); 0 = one per core


class LimitsSection(_Base):
    max_sessions: int = 4096
    max_sessions_per_ip: int = 64
    new_sessions_per_s_per_ip: float = 50.0  # token bucket; burst = 2 s worth
    idle_timeout_s: float = 60.0
    session_lifetime_s: float = 900.0
    progress_timeout_s: float = 300.0  # close a session with no complete command (no reply) this long
    limit_hit_interval_s: float = 10.0  # repeated hits of one limit by one source: one event per interval
    line_length: int = 4096
    header_bytes: int = 65536
    message_size: int = 10 * 1024 * 1024
    recipients: int = 100
    payload_keep: int = 4096
    messages_per_session: int = 1000
    chain_depth: int = 8
    memory_budget_mb: float = 256.0  # all sessions' buffered bodies and header blocks together


class SmtpSection(_Base):
    persona: str = ""  # postfix | exim | sendmail | exchange; "" = chosen from the sensor id
    hostname: str = ""  # our name in banners; "" = chosen from the sensor id
    starttls: bool = True  # real STARTTLS with a self-signed certificate
    auth: bool = True  # advertise AUTH PLAIN LOGIN, accept and record any credentials
    tls_cert: str = ""  # PEM; "" = generated under <data_dir>/tls on first start
    tls_key: str = ""


class SubmissionSection(_Base):
    enable: bool = False  # add listeners on 587 (submission) and 465 (smtps)
    auth_policy: str = "accept_all"  # accept_all | reject_all | accept_after_failures
    accept_after: int = 3  # accept_after_failures: accept once a source has failed this many times
    advertise: list[str] = msgspec.field(default_factory=lambda: ["PLAIN", "LOGIN"])  # EHLO AUTH list
    remember_sources: int = 65536  # sources whose failure counts are kept (least recent forgotten)


class HttpSection(_Base):
    # squid | tinyproxy | ccproxy | apache | analogx | proxyplus | wingate | dante | mydoom;
    # "" = each default port's own product (PORT_PERSONAS), other listeners' picked from the sensor id
    persona: str = ""
    judge_style: str = ""  # azenv | plain | table; "" = chosen


class ProxyProtocolSection(_Base):
    trusted: list[str] = []  # addresses/networks allowed to send a PROXY v1/v2 header


class StoreSection(_Base):
    fsync: bool = True
    segment_max_mb: float = 64.0
    segment_max_age_s: float = 3600.0
    min_free_mb: float = 256.0  # below this much free space mail is refused with 452 4.3.1; 0 = off
    keep_days: float = 0.0  # delete closed data older than this many days; 0 = keep forever


class MetricsSection(_Base):
    enable: bool = False  # serve Prometheus metrics (GET /metrics) from the sensor process
    address: str = "127.0.0.1"  # an IP address; one that is not loopback exposes the figures to others
    port: int = 9464


class ServeSection(_Base):
    """`spampots serve`, the web dashboard (docs/dashboard.md)."""

    address: str = "127.0.0.1"  # an IP address; any but loopback needs token or user + password
    port: int = 8025
    token: str = ""  # "Authorization: Bearer TOKEN", or open /?token=TOKEN once (kept in a cookie)
    user: str = ""  # HTTP basic auth, with password
    password: str = ""
    refresh_s: float = 300.0  # recompute the figures this often (the live counters move at once); 0 = never


class TransportSection(_Base):
    nats: Optional[NatsSection] = None  # ship to NATS JetStream (docs/network.md); None: local store only


class OutputBase(_Base, tag_field="kind"):
    """Keys every [[output]] has; one subclass per kind (spampots.outputs.<kind>)."""

    name: str = ""  # its cursor's name (<data_dir>/outputs/<name>.cursor); "" = the kind
    batch: int = 500  # events per write
    poll_s: float = 1.0  # how often the store is looked at when there was nothing new
    retry_max_s: float = 30.0  # backoff ceiling while the receiver fails

    @property
    def kind(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]


class JsonlOutput(OutputBase, tag="jsonl"):
    path: str = ""  # relative to the data dir; "" = outputs/<name>.jsonl
    max_mb: float = 100.0  # rotated past this size (renamed to .1, .2, ...)
    keep: int = 5  # rotated files kept
    fsync: bool = True  # each batch on disk before the cursor moves


class SyslogOutput(OutputBase, tag="syslog"):
    host: str = "127.0.0.1"
    port: int = 514  # 6514 is the usual port for TLS
    transport: str = "udp"  # udp | tcp | tls
    ca_file: str = ""  # tls: the CA that signed the receiver's certificate; "" = the system's
    cert_file: str = ""  # tls: our client certificate, if the receiver asks for one
    key_file: str = ""
    server_name: str = ""  # tls: the name checked in the receiver's certificate; "" = host
    facility: str = "local0"
    app_name: str = "spampots"
    max_value: int = 1024  # bytes of one structured-data value (the JSON in MSG is whole)
    max_datagram: int = 8192  # udp: longer messages are cut (the receiver's limit may be lower)
    timeout_s: float = 10.0


class HpfeedsOutput(OutputBase, tag="hpfeeds"):
    host: str = "127.0.0.1"
    port: int = 10000
    ident: str = ""
    secret: str = ""  # "" = the environment's SPAMPOTS_HPFEEDS_SECRET
    channel: str = "spampots.events"
    confirm: bool = True  # subscribe to the channel and wait for our own events back (needs subscribe rights)
    timeout_s: float = 10.0


class MispOutput(OutputBase, tag="misp"):
    path: str = ""  # the feed directory, relative to the data dir; "" = outputs/<name>
    org: str = "spampots"  # the creator organisation's name in the events
    tags: list[str] = msgspec.field(default_factory=lambda: ["tlp:green"])
    distribution: int = 0  # MISP distribution: 0 your organisation only .. 3 all communities
    max_attributes: int = 50000  # per day's event; further distinct values are counted, not added
    url: str = ""  # also push each day's event to this MISP server ("" = feed directory only)
    key: str = ""  # its API key; "" = the environment's SPAMPOTS_MISP_KEY
    verify_tls: bool = True


class StixOutput(OutputBase, tag="stix"):
    path: str = ""  # the bundle directory, relative to the data dir; "" = outputs/<name>
    identity: str = "spampots"  # the name of the identity that creates the objects


OUTPUT_KINDS = (JsonlOutput, SyslogOutput, HpfeedsOutput, MispOutput, StixOutput)
OutputConfig = Union[JsonlOutput, SyslogOutput, HpfeedsOutput, MispOutput, StixOutput]
SYSLOG_TRANSPORTS = ("udp", "tcp", "tls")


class Config(_Base):
    sensor: SensorSection = msgspec.field(default_factory=SensorSection)
    limits: LimitsSection = msgspec.field(default_factory=LimitsSection)
    smtp: SmtpSection = msgspec.field(default_factory=SmtpSection)
    submission: SubmissionSection = msgspec.field(default_factory=SubmissionSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    proxy_protocol: ProxyProtocolSection = msgspec.field(default_factory=ProxyProtocolSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    transport: TransportSection = msgspec.field(default_factory=TransportSection)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    serve: ServeSection = msgspec.field(default_factory=ServeSection)
    listener: list[ListenerConfig] = msgspec.field(default_factory=list)
    output: list[OutputConfig] = msgspec.field(default_factory=list)

    # -- derived views ------------------------------------------------------
    @property
    def sensor_id(self) -> str:
        return self.sensor.id or _default_sensor_id()

    @property
    def listeners(self) -> list[ListenerConfig]:
        out = self.listener or default_listeners(self.http.persona)
        if self.submission.enable:
            # a listener of one's own of that kind, or on that port, wins
            kinds, ports = {lst.kind for lst in out}, {lst.port for lst in out}
            out = out + [ListenerConfig(port=port, kind=kind) for port, kind in SUBMISSION_LISTENERS
                         if kind not in kinds and port not in ports]
        return out

    def auth_policy(self) -> AuthPolicy:
        """The submission AuthPolicy without its per-source parts (the sensor adds them)."""
        sub = self.submission
        return AuthPolicy(policy=sub.auth_policy, accept_after=sub.accept_after,
                          advertise=tuple(m.upper() for m in sub.advertise))

    def protocol_limits(self) -> ProtocolLimits:
        lim = self.limits
        return ProtocolLimits(
            line_length=lim.line_length,
            header_bytes=lim.header_bytes,
            message_size=lim.message_size,
            recipients=lim.recipients,
            payload_keep=lim.payload_keep,
            messages_per_session=lim.messages_per_session,
            chain_depth=lim.chain_depth,
        )

    def trusted_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(t, strict=False) for t in self.proxy_protocol.trusted]


def default_listeners(proxy_persona: str = "") -> list[ListenerConfig]:
    """The talk's ports, each proxy port with its own product unless ``[http] persona`` pins one."""
    return (
        [ListenerConfig(port=p, kind="socks", persona=proxy_persona or PORT_PERSONAS.get(p, "")) for p in SOCKS_PORTS]
        + [ListenerConfig(port=p, kind="http", persona=proxy_persona or PORT_PERSONAS.get(p, "")) for p in HTTP_PORTS]
        + [ListenerConfig(port=p, kind="smtp") for p in SMTP_PORTS]
    )


ROOT_DATA_DIR = "/var/lib/spampots"


def default_data_dir() -> Path:
    """Where every command keeps and looks for the store when none is named.

    Root's sensor drops to an unprivileged user that must reach its data dir by absolute
    path (the store's SQLite index is reopened that way), which a ./var under /root never
    is: root uses the system's state directory instead.
    """
    return Path(ROOT_DATA_DIR) if os.geteuid() == 0 else Path("var")


def resolve_data_dir(explicit: Optional[Path | str], cfg: Optional["Config"] = None) -> Path:
    """--data-dir, else the config's [sensor] data_dir, else :func:`default_data_dir`:
    the one rule every command uses."""
    if explicit:
        return Path(explicit)
    if cfg is not None and cfg.sensor.data_dir:
        return Path(cfg.sensor.data_dir)
    return default_data_dir()


def _default_sensor_id() -> str:
    name = socket.gethostname().split(".")[0]
    name = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in name)[:128]
    return name if name[:1].isalnum() else "sensor" + name[:120]


def load(path: Optional[Path]) -> Config:
    """Read and validate a config file (None: all defaults)."""
    if path is None:
        cfg = Config()
    else:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                              f"at offset {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        cfg = from_dict(raw, source=str(path))
    validate(cfg)
    return cfg


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(str(exc))}") from None


def _explain(msg: str) -> str:
    # msgspec says "Object contains unknown field `x` - at `$.limits`": make it TOML-shaped.
    return msg.replace("$.", "").replace("`$`", "top level").replace("Object contains", "section has")


def validate(cfg: Config) -> None:
    """Checks that types alone cannot express."""
    errors: list[str] = []
    seen: set[tuple[str, int]] = set()
    for i, lst in enumerate(cfg.listeners):
        where = f"listener[{i}] (port {lst.port})"
        if not 1 <= lst.port <= 65535:
            errors.append(f"{where}: port must be 1..65535")
        if lst.kind not in LISTENER_KINDS:
            errors.append(f"{where}: kind must be one of {', '.join(LISTENER_KINDS)}, not {lst.kind!r}")
        if lst.address:
            try:
                ipaddress.ip_address(lst.address)
            except ValueError:
                errors.append(f"{where}: address {lst.address!r} is not an IPv4/IPv6 address")
        if lst.persona:
            styles = SMTP_STYLES if lst.kind in SPEAKS_FIRST_KINDS else PROXY_STYLES
            if lst.persona not in styles:
                errors.append(f"{where}: persona for kind {lst.kind!r} must be one of {', '.join(styles)}, "
                              f"not {lst.persona!r}")
        key = (lst.address, lst.port)
        if key in seen:
            errors.append(f"{where}: listed twice")
        seen.add(key)
    for t in cfg.proxy_protocol.trusted:
        try:
            ipaddress.ip_network(t, strict=False)
        except ValueError:
            errors.append(f"proxy_protocol.trusted: {t!r} is not an address or network")
    if cfg.sensor.log_level not in LOG_LEVELS:
        errors.append(f"sensor.log_level must be one of {', '.join(LOG_LEVELS)}")
    if cfg.smtp.persona and cfg.smtp.persona not in SMTP_STYLES:
        errors.append(f"smtp.persona must be one of {', '.join(SMTP_STYLES)}")
    if cfg.http.persona and cfg.http.persona not in PROXY_STYLES:
        errors.append(f"http.persona must be one of {', '.join(PROXY_STYLES)}")
    if cfg.http.judge_style and cfg.http.judge_style not in JUDGE_STYLES:
        errors.append(f"http.judge_style must be one of {', '.join(JUDGE_STYLES)}")
    sub = cfg.submission
    if sub.auth_policy not in AUTH_POLICIES:
        errors.append(f"submission.auth_policy must be one of {', '.join(AUTH_POLICIES)}, not {sub.auth_policy!r}")
    if sub.accept_after < 0:
        errors.append("submission.accept_after must be 0 or more")
    if not sub.advertise:
        errors.append("submission.advertise needs at least one mechanism")
    for mech in sub.advertise:
        if mech.upper() not in AUTH_MECHANISMS:
            errors.append(f"submission.advertise: {mech!r} is not one of {', '.join(AUTH_MECHANISMS)}")
    if len({m.upper() for m in sub.advertise}) != len(sub.advertise):
        errors.append("submission.advertise lists a mechanism twice")
    if sub.remember_sources <= 0:
        errors.append("submission.remember_sources must be positive")
    if bool(cfg.smtp.tls_cert) != bool(cfg.smtp.tls_key):
        errors.append("smtp.tls_cert and smtp.tls_key go together")
    sid = cfg.sensor.id
    if sid:
        try:  # the store's own rule: the id ends up in file names
            check_sensor(sid)
        except ValueError:
            errors.append(f"sensor.id {sid!r}: use ASCII letters, digits, '.', '_' and '-' (at most 128, "
                          "starting with a letter or digit)")
    errors += label_problems(cfg.sensor)
    errors += _number_problems(cfg)
    errors += output_problems(cfg.output)
    errors += metrics_problems(cfg.metrics)
    errors += serve_problems(cfg.serve)
    if cfg.transport.nats is not None:
        errors += [f"transport.nats: {e}" if not e.startswith("transport.nats") else e
                   for e in cfg.transport.nats.validate()]
    if errors:
        raise ConfigError("\n".join(errors))


LABEL_MAX = 64  # characters in [sensor] isp / network: a report's table cell, not a description


def label_problems(sensor: SensorSection) -> list[str]:
    """[sensor] isp and network: unset (""), or printable text with something besides spaces,
    at most LABEL_MAX characters (they end up in every report's per-ISP tables)."""
    errors = []
    for key in ("isp", "network"):
        value = getattr(sensor, key)
        if value == "":
            continue
        if not value.strip():
            errors.append(f"sensor.{key} must not be blank (leave it out, or \"\" for none)")
        elif not value.isprintable():
            errors.append(f"sensor.{key} {value!r}: only printable characters (no control characters, tabs or newlines)")
        elif len(value) > LABEL_MAX:
            errors.append(f"sensor.{key} must be at most {LABEL_MAX} characters, not {len(value)}")
    return errors


def output_problems(outputs: list) -> list[str]:
    """[[output]] tables: unique names (each has its own cursor), sane numbers, known choices."""
    from .outputs import output_name

    errors: list[str] = []
    names: set[str] = set()
    for i, out in enumerate(outputs):
        name = output_name(out)
        where = f"output[{i}] ({out.kind} {name!r})"
        try:
            check_sensor(name)  # the store's rule for names that end up in file names
        except ValueError:
            errors.append(f"{where}: name must be letters, digits, '.', '_', '-'")
        if name in names:
            errors.append(f"{where}: another output has this name; give each a name = \"...\"")
        names.add(name)
        for key in out.__struct_fields__:
            value = getattr(out, key)
            if key == "port":
                continue  # checked below
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not (
                    math.isfinite(value) and value > 0):
                if not (key in ("keep", "distribution") and value == 0):
                    errors.append(f"{where}: {key} must be a positive number, not {value}")
        if isinstance(out, SyslogOutput):
            if out.transport not in SYSLOG_TRANSPORTS:
                errors.append(f"{where}: transport must be one of {', '.join(SYSLOG_TRANSPORTS)}")
            if not 1 <= out.port <= 65535:
                errors.append(f"{where}: port must be 1..65535")
            from .outputs.syslog import FACILITIES
            if out.facility not in FACILITIES:
                errors.append(f"{where}: facility must be one of {', '.join(FACILITIES)}")
            if out.key_file and not out.cert_file:
                errors.append(f"{where}: key_file needs cert_file")
        if isinstance(out, HpfeedsOutput):
            if not 1 <= out.port <= 65535:
                errors.append(f"{where}: port must be 1..65535")
            for key in ("ident", "channel"):  # the protocol packs them with a one-byte length
                if not 0 < len(getattr(out, key).encode()) < 256:
                    errors.append(f"{where}: {key} must be 1..255 bytes")
        if isinstance(out, MispOutput):
            if not 0 <= out.distribution <= 3:
                errors.append(f"{where}: distribution must be 0..3")
            if out.url and not out.url.startswith(("https://", "http://")):
                errors.append(f"{where}: url must be an http(s) URL")
    return errors


def metrics_problems(m: MetricsSection) -> list[str]:
    """An explicit IP address (no host name, no "" for every interface) and a real port."""
    errors = []
    if not 1 <= m.port <= 65535:
        errors.append(f"metrics.port must be 1..65535, not {m.port}")
    try:
        ipaddress.ip_address(m.address)
    except ValueError:
        errors.append(f"metrics.address must be one IPv4/IPv6 address (e.g. 127.0.0.1), not {m.address!r}")
    return errors


def serve_problems(s: ServeSection) -> list[str]:
    """One IP address, a real port; beyond loopback a token or user and password."""
    errors = []
    if not 1 <= s.port <= 65535:
        errors.append(f"serve.port must be 1..65535, not {s.port}")
    if s.refresh_s < 0:
        errors.append(f"serve.refresh_s must be >= 0, not {s.refresh_s}")
    if bool(s.user) != bool(s.password):
        errors.append("serve.user and serve.password go together")
    if ":" in s.user:
        errors.append("serve.user cannot hold ':' (HTTP basic auth)")
    try:
        loopback = ipaddress.ip_address(s.address).is_loopback
    except ValueError:
        errors.append(f"serve.address must be one IPv4/IPv6 address (e.g. 127.0.0.1), not {s.address!r}")
    else:
        if not loopback and not s.token and not (s.user and s.password):
            errors.append(f"serve.address {s.address} is not loopback: set serve.token or serve.user and "
                          "serve.password")
    return errors


# Floors for numbers that break the sensor below them (a heartbeat of 0 s is an event
# flood, a 0 MB segment a new file per write). "> 0" floors are exclusive, others inclusive.
_FLOORS: dict[str, tuple[float, str]] = {
    "sensor.summary_interval_s": (0.5, ">="),
    "sensor.heartbeat_interval_s": (0.5, ">="),
    "sensor.greeting_delay_s": (0.0, ">="),
    "sensor.tunnel_greeting_delay_s": (0.0, ">="),
    "sensor.workers": (0.0, ">="),
    "limits.new_sessions_per_s_per_ip": (0.0, ">"),
    "limits.idle_timeout_s": (0.1, ">="),
    "limits.session_lifetime_s": (0.1, ">="),
    "limits.progress_timeout_s": (0.1, ">="),
    "limits.limit_hit_interval_s": (0.1, ">="),  # below it coalescing would no longer bound the events
    "store.segment_max_mb": (1.0, ">="),
    "store.segment_max_age_s": (1.0, ">="),
    "store.min_free_mb": (0.0, ">="),  # 0: no floor
    "store.keep_days": (0.0, ">="),  # 0: keep forever
}
# Ceilings for delays a client waits out: an hour is already absurd, and keeps them finite.
_CEILINGS: dict[str, float] = {
    "sensor.greeting_delay_s": 300.0,
    "sensor.tunnel_greeting_delay_s": 300.0,
    "sensor.workers": 256.0,
}


def _number_problems(cfg: Config) -> list[str]:
    """Every number of the sensor's own sections: finite, within its floor (and ceiling);
    integer limits positive. [transport.nats] checks its own (NatsSection.validate)."""
    errors: list[str] = []
    for section in ("sensor", "limits", "store"):
        struct = getattr(cfg, section)
        for name in struct.__struct_fields__:
            value, key = getattr(struct, name), f"{section}.{name}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                errors.append(f"{key} must be a finite number, not {value}")
                continue
            floor, op = _FLOORS.get(key, (0, ">"))
            if (value < floor) if op == ">=" else (value <= floor):
                errors.append(f"{key} must be {op} {floor:g}, not {value:g}")
            elif key in _CEILINGS and value > _CEILINGS[key]:
                errors.append(f"{key} must be <= {_CEILINGS[key]:g}, not {value:g}")
    return errors


def worker_count(cfg: Config) -> int:
    """``[sensor] workers``, 0 resolved to the number of cores this process may run on."""
    if cfg.sensor.workers > 0:
        return cfg.sensor.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def with_port_offset(cfg: Config, offset: int) -> Config:
    """Every listener's port + offset (``--port-offset``), for running without root."""
    moved = [msgspec.structs.replace(lst, port=lst.port + offset) for lst in cfg.listeners]
    for lst in moved:
        if not 1 <= lst.port <= 65535:
            raise ConfigError(f"--port-offset {offset} moves port {lst.port - offset} out of range")
    # the list now holds the [submission] listeners too; adding them again would double them
    return msgspec.structs.replace(cfg, listener=moved,
                                   submission=msgspec.structs.replace(cfg.submission, enable=False))


def with_address(cfg: Config, address: str) -> Config:
    """Every listener on one address (``--address``)."""
    return msgspec.structs.replace(
        cfg, listener=[msgspec.structs.replace(lst, address=address) for lst in cfg.listeners],
        submission=msgspec.structs.replace(cfg.submission, enable=False),  # already in the list
    )


def effective_limits(cfg: Config) -> dict[str, Any]:
    return msgspec.structs.asdict(cfg.limits)


def example_toml() -> str:
    """A commented config with every key at its default (``spampots example-config``)."""
    nats = "\n".join("# " + line if line else "#" for line in _nats_example().rstrip("\n").splitlines())
    return _EXAMPLE + "\n# Many sensors: ship everything to NATS JetStream (docs/network.md). Off without it.\n" + nats + "\n"


_EXAMPLE = """\
# spampots sensor configuration. Every key is optional; these are the defaults.

[sensor]
id = ""                     # sensor name in every event; "" = the host name
data_dir = ""               # events, message packs, TLS key; "" = /var/lib/spampots when
                            # started as root (the dropped user must reach it), else ./var
user = "nobody"             # started as root: bind, then drop to this user; "" = never drop
group = ""                  # the data dir's group, for analysts (files 0640, dirs 0750);
                            # "" = the group spampots if it exists, else the user's own
log_level = "info"          # debug | info | warning | error (stderr)
summary_interval_s = 60     # one-line operational summary on stderr (at least 0.5)
heartbeat_interval_s = 60   # spampots.sensor.heartbeat events (at least 0.5)
greeting_delay_s = 0.0      # SMTP ports: wait this long for a client that speaks first (0..300)
tunnel_greeting_delay_s = 0.02  # a tunnelled mail server's banner comes this long after the grant (0..300)
isp = ""                    # label of this sensor's provider, e.g. "Telefonica" (report: per-ISP tables);
                            # printable, at most 64 characters; "" = none
network = ""                # label of the kind of network, e.g. "ADSL", "cable", "hosting"; as isp
workers = 0                 # processes serving the same ports (SO_REUSEPORT), each with its own
                            # loop and store writer; 0 = one per core, 1 = a single process (0..256)

[limits]                    # every hit is recorded as spampots.limit.hit
max_sessions = 4096         # concurrent sessions, all sources; when full, the session with the
                            # oldest progress (complete command) is closed to make room
                            # (lowered at start if the descriptor limit cannot hold it)
max_sessions_per_ip = 64    # concurrent sessions from one source address
new_sessions_per_s_per_ip = 50
idle_timeout_s = 60         # at least 0.1, like session_lifetime_s
session_lifetime_s = 900
progress_timeout_s = 300    # no complete command or request for this long: closed (dribbled bytes
                            # do not count)
limit_hit_interval_s = 10   # a source hitting one limit again and again: its first hit is recorded
                            # at once, the rest as one event with a count per interval
line_length = 4096          # bytes in one command or header line
header_bytes = 65536        # bytes in one request / message header block
message_size = 10485760     # bytes in one message (SMTP 552 above it)
recipients = 100            # RCPT TO per message (SMTP 452 above it)
payload_keep = 4096         # first bytes kept of an unknown tunnel payload
messages_per_session = 1000
chain_depth = 8             # proxy-through-proxy depth before we close
memory_budget_mb = 256      # all sessions' DATA bodies and HTTP header blocks together; past it
                            # SMTP answers 452 4.3.1 and HTTP 503 (try later); with
                            # workers, each has an even share

[smtp]
persona = ""                # postfix | exim | sendmail | exchange; "" = picked from the sensor id
hostname = ""               # our name in banners; "" = picked from the sensor id
starttls = true             # real STARTTLS (RFC 3207) with a self-signed certificate
auth = true                 # advertise AUTH PLAIN LOGIN; any credentials accepted and recorded
tls_cert = ""               # PEM certificate and key; "" = generated in <data_dir>/tls
tls_key = ""                # (also used by the submission and smtps listeners)

[submission]                # message submission (RFC 6409) and implicit TLS (RFC 8314)
enable = false              # true: also listen on 587 (STARTTLS, then AUTH) and 465 (TLS first)
                            # (one line at the top of a file: submission.enable = true)
auth_policy = "accept_all"  # accept_all | reject_all (535) | accept_after_failures
accept_after = 3            # accept_after_failures: a source's attempts are refused until it has
                            # failed this many times (counted across its sessions, in memory)
advertise = ["PLAIN", "LOGIN"]  # AUTH mechanisms in EHLO; CRAM-MD5 is served when asked either way
                            # (advertised, clients such as smtplib pick it: a digest, not a password)
remember_sources = 65536    # source addresses whose failure counts are kept
# These rules also play the far end of tunnels to 587 and 465, enabled or not.

[http]
persona = ""                # squid | tinyproxy | ccproxy | apache | analogx | proxyplus | wingate
                            # | dante | mydoom (SOCKS only); "" = each talk port's own product
                            # (README: "What each port looks like"); set: every default proxy port
judge_style = ""            # azenv | plain | table

[proxy_protocol]
trusted = []                # e.g. ["127.0.0.1", "10.0.0.0/8"]: front ends allowed to send PROXY v1/v2

[store]
fsync = true                # a 250 after DATA is sent only once message and event are fsynced
segment_max_mb = 64         # of event lines (uncompressed); at least 1
segment_max_age_s = 3600    # at least 1
min_free_mb = 256           # below this much free space in the data dir, mail gets 452 4.3.1; 0 = off
keep_days = 0               # delete closed events and message packs older than this; 0 = keep forever

[metrics]                   # Prometheus endpoint (GET /metrics) in the sensor process
enable = false              # also `spampots run --metrics PORT`
address = "127.0.0.1"       # one IP address; anything but loopback lets others read the figures
port = 9464

[serve]                     # `spampots serve`: the web dashboard, read-only (docs/dashboard.md)
address = "127.0.0.1"       # one IP address; any but loopback needs token, or user and password
port = 8025
token = ""                  # send "Authorization: Bearer TOKEN", or open /?token=TOKEN once
user = ""                   # HTTP basic auth: user and password together
password = ""
refresh_s = 300             # recompute the figures this often; the live counters move at once; 0 = never

# Listeners: without any [[listener]] the talk's ports are used:
# SOCKS 1080 3127; HTTP 8080 80 3128 8000 6588 4480 3382 81; SMTP 25
# (and submission 587, smtps 465 with [submission] enable = true).
# Any port serves any protocol (the first bytes decide), except with a SOCKS-only persona
# (dante, mydoom). kind says what the port is known for: who speaks first (smtp and
# submission send a banner, smtps expects a TLS handshake) and how unknown bytes are
# answered (http: 400 Bad Request; socks: closed). persona: the product this port plays
# (an [smtp] style for smtp, submission, smtps; an [http] one for the others);
# "" = the sensor's.
# [[listener]]
# port = 1080
# kind = "socks"            # socks | http | smtp | submission | smtps
# address = ""              # "" = all interfaces; "::" / "0.0.0.0" / one address
# persona = ""

# Outputs (README, "Feeding your SOC"): none without [[output]] tables. Each follows the store
# on its own cursor (<data_dir>/outputs/<name>.cursor), so a slow or dead receiver never holds
# up capture, and loses nothing: it gets what waited once it is back. Also `spampots forward`.
# Keys every output has:
#   name = ""               # the cursor's name; "" = the kind (two outputs of a kind need names)
#   batch = 500             # events per write
#   poll_s = 1.0            # how often the store is looked at when nothing was new
#   retry_max_s = 30        # backoff ceiling while the receiver fails
#
# JSON lines file, one event per line as stored, for Filebeat, Vector, Fluent Bit, rsyslog imfile:
# [[output]]
# kind = "jsonl"
# path = ""                 # relative to the data dir; "" = outputs/<name>.jsonl
# max_mb = 100              # rotated past this size: renamed to .1, .2, ... (never truncated)
# keep = 5                  # rotated files kept
# fsync = true              # each batch on disk before the cursor moves
#
# Syslog, RFC 5424 with structured data (event, session, src_ip, ...; the JSON line as MSG):
# [[output]]
# kind = "syslog"
# host = "127.0.0.1"
# port = 514                # 6514 is the usual port for tls
# transport = "udp"         # udp (lossy by nature) | tcp (octet counting, RFC 6587) | tls (RFC 5425)
# ca_file = ""              # tls: CA of the receiver's certificate; "" = the system's CAs
# cert_file = ""            # tls: client certificate, if the receiver asks for one
# key_file = ""
# server_name = ""          # tls: name checked in the receiver's certificate; "" = host
# facility = "local0"
# app_name = "spampots"
# max_value = 1024          # bytes of one structured-data value (cut; the JSON in MSG is whole)
# max_datagram = 8192       # udp: longer messages are cut
# timeout_s = 10
#
# hpfeeds (needs `pip install spampots[outputs]`): each event's JSON line published on a channel:
# [[output]]
# kind = "hpfeeds"
# host = "127.0.0.1"
# port = 10000
# ident = ""                # the broker's ident for this sensor
# secret = ""               # "" = the environment's SPAMPOTS_HPFEEDS_SECRET
# channel = "spampots.events"
# confirm = true            # wait until the broker sent our own events back (the ident needs
#                           # subscribe rights on the channel); false = sent is taken
# timeout_s = 10
#
# MISP feed directory (needs spampots[outputs]): one MISP event per day and sensor, with the day's
# source IPs, senders, subjects, target hosts and message hashes; a MISP instance pulls it as a feed.
# [[output]]
# kind = "misp"
# path = ""                 # relative to the data dir; "" = outputs/<name>
# org = "spampots"          # the creator organisation's name
# tags = ["tlp:green"]
# distribution = 0          # 0 your organisation only, 1 this community, 2 connected, 3 all
# max_attributes = 50000    # per event; further distinct values are only counted
# url = ""                  # also push to this MISP server (not tested against a live MISP)
# key = ""                  # its API key; "" = the environment's SPAMPOTS_MISP_KEY
# verify_tls = true
#
# STIX 2.1 bundles (needs spampots[outputs]): per batch, indicators and observed data for the
# source addresses and the message hashes, one bundle file each.
# [[output]]
# kind = "stix"
# path = ""                 # relative to the data dir; "" = outputs/<name>
# identity = "spampots"     # the name of the identity that creates the objects
"""
