"""Traffic mixes: what share of sessions goes to which port, speaks which protocol
and asks for what. A mix turns a random generator into session :class:`Plan` s.

Presets live here as TOML-shaped dicts and go through the same validation as a
user's ``--mix FILE.toml`` (see :data:`EXAMPLE_TOML`). The ``talk`` preset
follows the CERT.br SpamPots talk: shares of emails by listener port from "Portas Abusadas",
outbound categories from "Tentativas de Saída de Tráfego" (HTTP 97.62% to
25/TCP, 0.12% other ports, 0.25% GET, 2.01% errors; SOCKS 87.31% to 25/TCP,
1.97% other ports, 10.72% errors) and 9.16 recipients per message. What the
talk does not say (SOCKS version shares, messages per session, message size) is
an assumption, marked as such below.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import msgspec

from ..protocols.personas import PORT_PERSONAS, SOCKS_ONLY

PROXY_FAMILIES = ("socks", "http")
SOCKS_VARIANTS = ("socks4", "socks4a", "socks5", "socks5_auth")
HTTP_VARIANTS = ("connect", "connect_auth")
OUTCOMES = ("smtp", "other", "get", "error")
MODES = ("slowloris", "garbage")

# The talk's listener ports and what each speaks by default ("Portas Abusadas").
TALK_PORTS: dict[int, tuple[str, float]] = {
    1080: ("socks", 37.31), 8080: ("http", 34.79), 80: ("http", 10.92), 3128: ("http", 6.17),
    8000: ("http", 2.76), 6588: ("http", 2.29), 25: ("smtp", 1.46), 4480: ("http", 1.38),
    3127: ("socks", 1.00), 3382: ("http", 0.96), 81: ("http", 0.96),
}

# Mail servers abusers asked our proxies to reach (never dialled: the sensor plays them).
MX_HOSTS = (
    "mx1.hotmail.com", "mx2.hotmail.com", "gmail-smtp-in.l.google.com", "mta5.am0.yahoodns.net",
    "mx.terra.com.br", "mx.uol.com.br", "mx.bol.com.br", "mail.ig.com.br", "mx.aol.com",
    "mx.mail.ru", "mx1.comcast.net", "mx.earthlink.net",
)
# IPv4 targets (SOCKS4 cannot carry names): documentation ranges, so nothing real is named.
IP_TARGETS = ("192.0.2.25", "192.0.2.77", "198.51.100.10", "198.51.100.200", "203.0.113.5", "203.0.113.99")
# "Other ports": web through the tunnel, TLS, IRC, POP3.
OTHER_PORTS = {80: 40.0, 443: 35.0, 6667: 15.0, 110: 10.0}
# Absolute-form GETs: proxy judges (checking the proxy works) and plain pages.
GET_URLS = (
    "http://azenv.net/", "http://www.proxyjudge.info/azenv.php", "http://proxyjudge.example.net/judge.php",
    "http://www.google.com/", "http://www.yahoo.com/", "http://checkip.example.org/",
)


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


IntOrRange = Union[int, list[int]]


class SmtpSpec(_Base):
    messages: IntOrRange = msgspec.field(default_factory=lambda: [1, 3])  # per session (assumption: the talk gives no figure)
    rcpts: Union[float, list[int]] = 9.16  # per message: a mean, or [min, max]
    size: IntOrRange = msgspec.field(default_factory=lambda: [1500, 6000])  # bytes per message (assumption)
    pipelining: bool = True  # pipeline MAIL/RCPT/DATA when the server offers it


class ModesSpec(_Base):
    slowloris: float = 0.0  # fraction of sessions sending one byte every --loris-interval s
    garbage: float = 0.0  # fraction sending random bytes / truncated messages / junk in tunnels


class OutboundSpec(_Base):
    socks: dict[str, float] = msgspec.field(default_factory=dict)
    http: dict[str, float] = msgspec.field(default_factory=dict)


PORT_SHARES = ("sessions", "emails")


class MixSpec(_Base):
    name: str = "custom"
    description: str = ""
    ports: dict[str, float] = msgspec.field(default_factory=dict)  # talk port -> weight
    port_shares: str = "sessions"  # what [ports] weighs: sessions, or the emails that come in on the port
    protocols: dict[str, str] = msgspec.field(default_factory=dict)  # port -> socks | http | smtp
    socks: dict[str, float] = msgspec.field(default_factory=dict)  # variant -> weight
    http: dict[str, float] = msgspec.field(default_factory=dict)
    outbound: OutboundSpec = msgspec.field(default_factory=OutboundSpec)
    smtp: SmtpSpec = msgspec.field(default_factory=SmtpSpec)
    modes: ModesSpec = msgspec.field(default_factory=ModesSpec)


class MixError(ValueError):
    """A mix that cannot be used, worded for the user."""


_TALK: dict[str, Any] = {
    "name": "talk",
    "description": "CERT.br SpamPots talk: abused ports, outbound attempts, 9.16 recipients per message",
    "ports": {str(p): share for p, (_, share) in TALK_PORTS.items()},
    # The talk's port table is of emails (as `spampots synth` and the report's "by emails" table read it):
    # a port's session weight is its email share over the share of its sessions that send mail.
    "port_shares": "emails",
    # assumption: the talk does not split SOCKS versions
    "socks": {"socks4": 20, "socks4a": 15, "socks5": 60, "socks5_auth": 5},
    "http": {"connect": 97, "connect_auth": 3},
    "outbound": {
        "socks": {"smtp": 87.31, "other": 1.97, "error": 10.72},
        "http": {"smtp": 97.62, "other": 0.12, "get": 0.25, "error": 2.01},
    },
    "smtp": {"messages": [1, 3], "rcpts": 9.16, "size": [1500, 6000]},
}

PRESETS: dict[str, dict[str, Any]] = {
    "talk": _TALK,
    "smtp": {"name": "smtp", "description": "direct SMTP on port 25 only",
             "ports": {"25": 1}, "smtp": {"messages": 1, "rcpts": [10, 10], "size": 3000}},
    "socks5-smtp": {"name": "socks5-smtp", "description": "SOCKS5 (no auth) to 25/TCP only",
                    "ports": {"1080": 1}, "socks": {"socks5": 1}, "outbound": {"socks": {"smtp": 1}},
                    "smtp": {"messages": 1, "rcpts": [10, 10], "size": 3000}},
    "http-smtp": {"name": "http-smtp", "description": "HTTP CONNECT to 25/TCP only",
                  "ports": {"8080": 1}, "http": {"connect": 1}, "outbound": {"http": {"smtp": 1}},
                  "smtp": {"messages": 1, "rcpts": [10, 10], "size": 3000}},
    "garbage": dict(_TALK, name="garbage", description="the talk's ports, every session garbage",
                    modes={"garbage": 1.0}),
    "slowloris": dict(_TALK, name="slowloris", description="the talk's ports, every session slow-loris",
                      modes={"slowloris": 1.0}),
}


@dataclass(frozen=True, slots=True)
class Message:
    rcpts: int
    size: int


@dataclass(slots=True)
class Plan:
    """One session to run: where, in which protocol, asking for what."""

    port: int  # talk port (the port offset is added when connecting)
    protocol: str  # socks4, socks4a, socks5, http, smtp
    outcome: str  # smtp, other, get, error, slowloris, garbage
    auth: bool = False
    target_host: str = ""
    target_port: int = 0
    messages: list[Message] = field(default_factory=list)
    variant: str = ""  # error kind / garbage kind / url for get
    seed: int = 0  # per-session randomness (bodies, garbage bytes)


@dataclass
class Mix:
    name: str
    description: str
    ports: dict[int, float]  # as given: weights of sessions or of emails (port_shares)
    protocols: dict[int, str]
    socks: dict[str, float]
    http: dict[str, float]
    outbound: dict[str, dict[str, float]]
    messages: tuple[int, int]
    rcpts: Union[float, tuple[int, int]]
    size: tuple[int, int]
    pipelining: bool
    slowloris: float
    garbage: float
    port_shares: str = "sessions"
    session_ports: dict[int, float] = field(default_factory=dict)  # what plan() draws from

    def with_modes(self, *, slowloris: Optional[float] = None, garbage: Optional[float] = None) -> "Mix":
        m = Mix(**self.__dict__)
        if slowloris is not None:
            m.slowloris = slowloris
        if garbage is not None:
            m.garbage = garbage
        _check_modes(m.slowloris, m.garbage)
        return m

    # -- drawing ---------------------------------------------------------------
    def plan(self, rng: random.Random) -> Plan:
        port = _draw(rng, self.session_ports or self.ports)
        family = self.protocols[port]
        seed = rng.getrandbits(32)
        u = rng.random()
        if u < self.slowloris:
            mode = "slowloris"
        elif u < self.slowloris + self.garbage:
            mode = "garbage"
        else:
            mode = ""
        if family == "smtp":
            plan = Plan(port, "smtp", "smtp", seed=seed)
        elif family == "socks":
            variant = _draw(rng, self.socks)
            protocol = "socks5" if variant == "socks5_auth" else variant
            only = SOCKS_ONLY.get(PORT_PERSONAS.get(port, ""))
            if only is not None and protocol.rstrip("a") not in only.speaks:
                variant = protocol = "socks4"  # MyDoom's 3127 speaks SOCKS4 only, as abusers knew
            plan = Plan(port, protocol, _draw(rng, self.outbound["socks"]), auth=variant == "socks5_auth", seed=seed)
        else:
            variant = _draw(rng, self.http)
            plan = Plan(port, "http", _draw(rng, self.outbound["http"]), auth=variant == "connect_auth", seed=seed)
        self._target(rng, plan)
        if mode:
            plan.outcome = mode
            plan.variant = rng.choice(GARBAGE_KINDS) if mode == "garbage" else ""
            if plan.variant == "tunnel" and plan.protocol == "smtp":
                plan.variant = "random"
        if plan.outcome == "smtp":
            plan.messages = [self._message(rng) for _ in range(rng.randint(*self.messages))]
        if plan.outcome == "error":
            plan.variant = rng.choice(ERROR_KINDS[plan.protocol])
        return plan

    def _target(self, rng: random.Random, plan: Plan) -> None:
        if plan.protocol == "smtp":
            return
        if plan.outcome == "get":
            plan.variant = rng.choice(GET_URLS)
            return
        plan.target_port = 25 if plan.outcome in ("smtp", "error") else _draw(rng, OTHER_PORTS)
        # SOCKS4 carries an IPv4 address only; SOCKS5 and HTTP mostly names.
        if plan.protocol == "socks4" or (plan.protocol == "socks5" and rng.random() < 0.2):
            plan.target_host = rng.choice(IP_TARGETS)
        elif plan.target_port == 25:
            plan.target_host = rng.choice(MX_HOSTS)
        else:
            plan.target_host = rng.choice(("www.google.com", "irc.efnet.org", "pop.mail.example.com",
                                           "login.live.com", "www.paypal.com"))

    def _message(self, rng: random.Random) -> Message:
        if isinstance(self.rcpts, tuple):
            n = rng.randint(*self.rcpts)
        else:  # the two integers around the mean, weighted so the expectation is the mean
            lo = int(self.rcpts)
            n = lo + (1 if rng.random() < self.rcpts - lo else 0)
        return Message(rcpts=max(1, n), size=rng.randint(*self.size))

    def describe(self) -> str:
        return f"{self.name}: {self.description}" if self.description else self.name


# Error requests: each produces a protocol error on the sensor and no proxy request
# (what the report counts as "Erros").
ERROR_KINDS: dict[str, tuple[str, ...]] = {
    "socks4": ("long_userid", "truncated"),
    "socks4a": ("empty_host", "truncated"),
    "socks5": ("bad_version", "bad_atyp", "bad_command", "no_method", "truncated"),
    "http": ("bad_request_line", "no_port", "bad_version", "truncated"),
}
GARBAGE_KINDS = ("random", "truncated", "tunnel")


def _draw(rng: random.Random, weights: dict) -> Any:
    total = sum(weights.values())
    x = rng.random() * total
    for key, w in weights.items():
        x -= w
        if x < 0:
            return key
    return next(reversed(weights))


def _range(value: Union[int, list[int]], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = [value, value]
    if len(value) != 2 or value[0] > value[1] or value[0] < 0:
        raise MixError(f"{what} must be an integer or [min, max] with 0 <= min <= max")
    return value[0], value[1]


def _weights(raw: dict[str, float], allowed: tuple[str, ...], what: str) -> dict[str, float]:
    out = {}
    for key, w in raw.items():
        if key not in allowed:
            raise MixError(f"{what}: unknown key {key!r} (one of {', '.join(allowed)})")
        if w < 0:
            raise MixError(f"{what}.{key} must not be negative")
        if w > 0:
            out[key] = float(w)
    if not out:
        raise MixError(f"{what} needs at least one positive weight")
    return out


def _check_modes(slowloris: float, garbage: float, source: str = "--slowloris/--garbage") -> None:
    if not (0 <= slowloris <= 1 and 0 <= garbage <= 1 and slowloris + garbage <= 1):
        raise MixError(f"{source}: slowloris and garbage are fractions (0..1) adding up to at most 1")


def from_dict(raw: dict[str, Any], source: str = "mix") -> Mix:
    try:
        spec = msgspec.convert(raw, MixSpec)
    except msgspec.ValidationError as exc:
        raise MixError(f"{source}: {str(exc).replace('$.', '')}") from None
    ports: dict[int, float] = {}
    protocols: dict[int, str] = {}
    for key, w in spec.ports.items():
        if not key.isdigit() or not 1 <= int(key) <= 65535:
            raise MixError(f"{source}: ports: {key!r} is not a port number")
        port = int(key)
        family = spec.protocols.get(key) or (TALK_PORTS[port][0] if port in TALK_PORTS else "")
        if family not in ("socks", "http", "smtp"):
            raise MixError(f"{source}: port {port} is not one of the talk's; say what it speaks in "
                           f"[protocols] ({port} = \"socks\" | \"http\" | \"smtp\")")
        if w > 0:
            ports[port] = float(w)
            protocols[port] = family
    if not ports:
        raise MixError(f"{source}: [ports] needs at least one port with a positive weight")
    socks = _weights(spec.socks or {"socks5": 1}, SOCKS_VARIANTS, f"{source}: socks")
    http = _weights(spec.http or {"connect": 1}, HTTP_VARIANTS, f"{source}: http")
    outbound = {
        "socks": _weights(spec.outbound.socks or {"smtp": 1}, ("smtp", "other", "error"), f"{source}: outbound.socks"),
        "http": _weights(spec.outbound.http or {"smtp": 1}, OUTCOMES, f"{source}: outbound.http"),
    }
    if isinstance(spec.smtp.rcpts, list):
        rcpts: Union[float, tuple[int, int]] = _range(spec.smtp.rcpts, f"{source}: smtp.rcpts")
        if rcpts[0] < 1:
            raise MixError(f"{source}: smtp.rcpts must be at least 1")
    else:
        if spec.smtp.rcpts < 1:
            raise MixError(f"{source}: smtp.rcpts must be at least 1")
        rcpts = float(spec.smtp.rcpts)
    _check_modes(spec.modes.slowloris, spec.modes.garbage, f"{source}: modes")
    if spec.port_shares not in PORT_SHARES:
        raise MixError(f"{source}: port_shares must be one of {', '.join(PORT_SHARES)}")
    session_ports = dict(ports)
    if spec.port_shares == "emails":
        # Emails per session are the same on every port (same [smtp] messages), so a port's share of
        # sessions is its share of emails over the fraction of its sessions that send mail.
        mail = {"smtp": 1.0, **{f: outbound[f].get("smtp", 0.0) / sum(outbound[f].values()) for f in outbound}}
        for port, w in ports.items():
            if not mail[protocols[port]]:
                raise MixError(f"{source}: port {port} has an email share but its {protocols[port]} "
                               "sessions never send mail (outbound smtp = 0)")
            session_ports[port] = w / mail[protocols[port]]
    return Mix(
        name=spec.name, description=spec.description, ports=ports, protocols=protocols,
        socks=socks, http=http, outbound=outbound,
        messages=_range(spec.smtp.messages, f"{source}: smtp.messages"),
        rcpts=rcpts, size=_range(spec.smtp.size, f"{source}: smtp.size"),
        pipelining=spec.smtp.pipelining, slowloris=spec.modes.slowloris, garbage=spec.modes.garbage,
        port_shares=spec.port_shares, session_ports=session_ports,
    )


def load(name_or_path: str) -> Mix:
    """A preset by name, or a TOML file."""
    if name_or_path in PRESETS:
        return from_dict(PRESETS[name_or_path], name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise MixError(f"no preset or file named {name_or_path!r} (presets: {', '.join(PRESETS)})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise MixError(f"{path}: not valid TOML: {exc}") from None
    raw.setdefault("name", path.stem)
    return from_dict(raw, str(path))


EXAMPLE_TOML = """\
# A spampots loadgen mix. Every section is optional except [ports].
name = "my-mix"
description = "mostly SOCKS5 spam runs, some HTTP CONNECT"

port_shares = "sessions"  # [ports] weighs sessions; "emails": the emails that come in on each port
                          # (as the talk's table, and `spampots synth`), whatever the outbound mix

[ports]                 # listener (talk) port -> weight; --port-offset is added when connecting
1080 = 70
8080 = 25
25 = 5

[protocols]             # only for ports outside the talk's table: what they speak
# 9050 = "socks"        # socks | http | smtp

[socks]                 # SOCKS variants on SOCKS ports
socks4 = 10
socks4a = 10
socks5 = 75
socks5_auth = 5         # RFC 1929 username/password

[http]
connect = 95
connect_auth = 5        # Proxy-Authorization: Basic

[outbound.socks]        # what SOCKS clients ask for: smtp (a tunnel to 25/TCP and mail), other ports, errors
smtp = 87.31
other = 1.97
error = 10.72

[outbound.http]
smtp = 97.62
other = 0.12
get = 0.25              # absolute-form GET (proxy judges, web pages)
error = 2.01

[smtp]                  # every SMTP session, direct or tunnelled
messages = [1, 3]       # per session: N or [min, max]
rcpts = 9.16            # per message: a mean, or [min, max]
size = [1500, 6000]     # bytes per message: N or [min, max]
pipelining = true

[modes]                 # fractions of all sessions (also --slowloris / --garbage)
slowloris = 0.0
garbage = 0.0
"""
