"""`spampots synth`: a synthetic data set with the shape of the CERT.br SpamPots talk.

Generated with numpy and pyarrow, one day at a time (a day too big for memory is cut into
pieces), straight into the lake's Parquet layout (``--format lake``: one file per table, day
and piece, written in bounded row groups) or into JSONL.zst event segments written by the
store's own SegmentWriter (``--format store``, for small sets: the report then compacts them
like a sensor's). Memory is bounded by the piece size, never by the set's size. docs/report.md
says how each generated event maps onto the store format.

The shape, at ``scale`` (1.0 = the talk):
* sessions come in streams, one per (proxy protocol, outbound category) with the talk's
  counts, plus direct SMTP sessions; a stream's sessions are spread over the days by a day
  weight with a weekly cycle, a trend and noise, and over the hours of a day by a daily cycle;
* each session's listener port follows the talk's port mix within its protocol (a golden-ratio
  sequence over the session number: exact even for few sessions);
* emails of a stream are dealt out in contiguous blocks to its sessions, so the port mix is
  one of emails, as in the talk's table; recipients per email average 9.16;
* sources come from synth_sources: real broadband and hosting networks of the bundled data,
  heavy-tailed volumes, each source active for a window of days.
Constants from the talk are named as such; every other choice is marked ``# assumption:``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import multiprocessing
import os
import random
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import msgspec.inspect as mi
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spampots import events

from . import progress, schema
from .enrich import bundled
from .lake import new_connection
from .synth_sources import Pool, ip_pool, DayPicker

TALK = {"emails": 524_585_779, "rcpts": 4_805_521_964, "ips": 216_888, "asns": 3_006, "countries": 165,
        "days": 466, "start": dt.date(2006, 6, 10)}
# The talk's "Portas Abusadas": shares of emails by the listener port they came in on.
PORT_MIX = {1080: 37.31, 8080: 34.79, 80: 10.92, 3128: 6.17, 8000: 2.76, 6588: 2.29, 25: 1.46,
            4480: 1.38, 3127: 1.00, 3382: 0.96, 81: 0.96}
PORT_CLASS = {1080: "SOCKS", 3127: "SOCKS", 25: "SMTP"}  # the others are HTTP
OUTBOUND = {"HTTP": {"to25": 89_496_969, "other": 106_615, "get": 225_802, "errors": 1_847_869},
            "SOCKS": {"to25": 46_776_884, "other": 1_055_081, "errors": 5_741_908}}
RCPT_SPREAD = 17.31  # n_rcpts = 1 + floor(17.31 u): mean 1 + 17 - 153/17.31 = 9.161 (talk: 9.16)
EMAILS_PER_DIRECT_SESSION = 3  # assumption: an open-relay client sends a few messages per connection
STORE_FORMAT_MAX = 5_000_000
# assumption: 1 in 9 tunnels to "other ports" goes to a submission port (587) and logs in, and those
# carry 0.5% of a protocol's emails: mail Port 25 Management does not stop. Only when such tunnels
# are many enough (>= 50) for the port mix of emails to stay exact; small sets have none.
SUBMIT_OF_OTHER, SUBMIT_EMAIL_SHARE, SUBMIT_MIN_SESSIONS = 9, 0.005, 50
RCPT_LIST = 4096  # assumption: a spammer's list holds 4,096 addresses per domain, walked in order
PIECE_SESSIONS = 300_000  # sessions drawn and sorted by source together (a day has one or more pieces)
SLICE_SESSIONS = 50_000  # sessions of a piece turned into rows together: with PIECE_SESSIONS, bounds memory
BATCH_EMAILS = 200_000  # at most this many emails per Parquet row group
# assumption: weekday factors (Monday first): abuse follows the working week of the bots' owners
WEEKLY = (1.08, 1.10, 1.10, 1.08, 1.02, 0.82, 0.80)
DAY_TREND, DAY_NOISE = 0.6, 0.25  # assumption: volume grows 60% over the capture, +-25% (lognormal) per day
# assumption: sessions per hour of the day (UTC) follow 1 + 0.6 sin(.) with the peak at 15:00 UTC
HOURLY = np.array([1 + 0.6 * math.sin(2 * math.pi * (h + 0.5 - 9) / 24) for h in range(24)])

# (MX host, its domain): a proxied email's recipients are all in the MX's domain (one transaction per MX)
_MX = [("mx1.hotmail.com", "hotmail.com"), ("mx2.hotmail.com", "hotmail.com"), ("mx3.hotmail.com", "hotmail.com"),
       ("mx4.hotmail.com", "hotmail.com"), ("a.mx.mail.yahoo.com", "yahoo.com"), ("b.mx.mail.yahoo.com", "yahoo.com"),
       ("gmail-smtp-in.l.google.com", "gmail.com"), ("mx.terra.com.br", "terra.com.br"),
       ("mx.uol.com.br", "uol.com.br"), ("mx.bol.com.br", "bol.com.br"), ("mx.ig.com.br", "ig.com.br"),
       ("mailin-01.mx.aol.com", "aol.com"), ("mx.yahoo.com.tw", "yahoo.com.tw"), ("mx1.sina.com.cn", "sina.com.cn"),
       ("mx.mail.ru", "mail.ru"), ("mx.rambler.ru", "rambler.ru"), ("mx00.gmx.net", "gmx.net"),
       ("mx.libero.it", "libero.it"), ("mx1.comcast.net", "comcast.net"), ("mx.earthlink.net", "earthlink.net")]
_DOMAINS = sorted({d for _, d in _MX})
_OTHER_TARGETS = [("irc.efnet.org", 6667), ("www.google.com", 443), ("login.icq.com", 5190),
                  ("pop.mail.yahoo.com", 110), ("www.paypal.com", 443), ("10.0.0.1", 1080),
                  ("proxy.example.net", 8080), ("ftp.example.org", 21)]
_SUBMIT = [("smtp.mail.yahoo.com", 587), ("smtp.live.com", 587), ("smtp.gmail.com", 587)]
_WEB = ["www.google.com", "www.yahoo.com", "proxyjudge.info", "www.whatismyip.com", "ads.example.com"]
_WORDS = ("cheap meds rolex replica viagra loan mortgage stock alert offer free winner lottery bank "
          "account verify update pharmacy discount watches software degree casino investment").split()
_CREDS = [("admin", "admin"), ("test", "test"), ("root", "123456"), ("user", "password"), ("guest", "guest")]
_PROXIES = ["http", "socks5", "socks4", "socks4a", ""]
_SOCKS_MIX = (0.70, 0.25, 0.05)  # assumption: socks5, socks4, socks4a shares of SOCKS sessions
_ERRORS = {"SOCKS": ["socks5.bad_version", "socks4.bad_command", "socks5.no_acceptable_method",
                     "socks4.truncated", "socks5.truncated", "sniff.unknown"],
           "HTTP": ["http.malformed", "http.bad_request_line", "http.header_too_long", "sniff.unknown"]}
_MAIL_LOCALS = 64  # assumption: senders forge from a few local parts per domain
_HOSTS = [h for h, _ in _MX] + [h for h, _ in _OTHER_TARGETS] + [h for h, _ in _SUBMIT] + _WEB
_HOST = {h: i for i, h in enumerate(dict.fromkeys(_HOSTS))}
_HOSTS = list(_HOST)
_US = 1_000_000
_EPOCH = dt.date(1970, 1, 1)


@dataclass
class Spec:
    scale: float = 100_000 / TALK["emails"]
    days: int = TALK["days"]
    start: dt.date = TALK["start"]
    sensors: int = 10
    ips: Optional[int] = None
    seed: int = 1

    @property
    def emails(self) -> int:
        return max(1, round(TALK["emails"] * self.scale))

    @property
    def pool(self) -> int:
        return self.ips or max(50, round(TALK["ips"] * self.scale))


# -- streams of sessions ---------------------------------------------------------------------
@dataclass
class Stream:
    code: str  # session id prefix
    cls: str  # HTTP | SOCKS | SMTP
    category: str  # to25 | other | get | errors | submit | direct
    n: int  # sessions
    emails: int = 0


def streams(spec: Spec) -> list[Stream]:
    share = {c: sum(p for port, p in PORT_MIX.items() if PORT_CLASS.get(port, "HTTP") == c)
             for c in ("HTTP", "SOCKS", "SMTP")}
    total_share = sum(share.values())
    out = []
    for cls, cats in OUTBOUND.items():
        emails = round(spec.emails * share[cls] / total_share)
        n = {cat: round(count * spec.scale) for cat, count in cats.items()}
        submit = n["other"] // SUBMIT_OF_OTHER
        submit_emails = round(emails * SUBMIT_EMAIL_SHARE) if submit >= SUBMIT_MIN_SESSIONS else 0
        if not submit_emails:
            submit = 0
        n["other"] -= submit
        if emails - submit_emails:
            n["to25"] = max(n["to25"], 1)
        for cat, count in n.items():
            out.append(Stream(f"{cls[0]}{cat[0]}", cls, cat, count, emails - submit_emails if cat == "to25" else 0))
        out.append(Stream(f"{cls[0]}s", cls, "submit", submit, submit_emails))
    direct = round(spec.emails * share["SMTP"] / total_share)
    out.append(Stream("Md", "SMTP", "direct", math.ceil(direct / EMAILS_PER_DIRECT_SESSION) if direct else 0,
                      direct))
    return out


def day_weights(spec: Spec) -> np.ndarray:
    """Cumulative integer weights of the days (length days + 1, from 0): sessions of day d of a stream
    of n are [n W[d] / W[-1], n W[d+1] / W[-1]), rounded, so every stream's total is exact."""
    rng = np.random.default_rng([spec.seed, 2])
    d = np.arange(spec.days)
    weekday = np.array(WEEKLY)[(spec.start.weekday() + d) % 7]
    w = weekday * (1 + DAY_TREND * d / max(1, spec.days - 1)) * rng.lognormal(0, DAY_NOISE, spec.days)
    out = np.zeros(spec.days + 1, np.int64)
    np.cumsum(np.maximum(1, np.round(w * 1e6)).astype(np.int64), out=out[1:])
    return out


class _Vocab:
    """The strings drawn from (templates, HELOs, senders, recipients) of one seed."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.helos = ["localhost", "user", "mail.example.com"] + [
            rng.choice(["WIN-", "PC-", "host-", "dsl-", "", "mail."]) + "".join(
                rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(4, 10)))
            + rng.choice(["", ".local", ".net", ".com.br", ".tw"]) for _ in range(197)]
        self.senders = [f"{''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(4, 9)))}"
                        f"{rng.choice(['.com', '.net', '.biz', '.info', '.com.br', '.org'])}" for _ in range(300)]
        self.mail_from = [f"info{i}@{d}" for d in self.senders for i in range(_MAIL_LOCALS)]
        self.templates = []
        for t in range(500):
            subject = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6))).capitalize()
            if t % 7 == 0:
                subject = "Re: " + subject
            body = (f"From: <offers@{self.senders[t % 300]}>\r\nSubject: {subject}\r\n\r\n"
                    f"{' '.join(rng.choice(_WORDS) for _ in range(40 + t % 200))}\r\n").encode()
            self.templates.append((subject, hashlib.sha256(body).hexdigest(), len(body), body,
                                   f"<offers@{self.senders[t % 300]}>"))
        local = pc.cast(pa.array(np.tile(np.arange(RCPT_LIST), len(_DOMAINS))), pa.string())
        self.rcpts = pc.binary_join_element_wise(
            "u", local, "@", pa.array(np.repeat(np.array(_DOMAINS, dtype=object), RCPT_LIST), pa.string()), "")
        self.via = [f"{p}:{mx}:25" for p in _PROXIES for mx, _ in _MX]


def _dict(idx: np.ndarray, values: Any) -> pa.DictionaryArray:
    """values[idx], dictionary-encoded with only the values used: Parquet writes an Arrow
    dictionary as it is (no hashing of the strings), once per row group."""
    values = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    idx = np.asarray(idx, np.int64)
    if len(values) > 64:
        used = np.zeros(len(values), bool)
        used[idx] = True
        remap = np.cumsum(used, dtype=np.int32) - 1
        idx, values = remap[idx], values.take(pa.array(np.flatnonzero(used)))
    return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), values)


def _const(n: int, value: str) -> pa.DictionaryArray:
    return _dict(np.zeros(n, np.int32), [value])


def _arrow_type(duck: str) -> pa.DataType:
    if duck.endswith("[]"):
        return pa.list_(_arrow_type(duck[:-2]))
    return {"VARCHAR": pa.string(), "JSON": pa.string(), "SMALLINT": pa.int16(), "INTEGER": pa.int32(), "BIGINT": pa.int64(),
            "UBIGINT": pa.uint64(), "BOOLEAN": pa.bool_(), "DOUBLE": pa.float64(),
            "TIMESTAMP": pa.timestamp("us"), "DATE": pa.date32()}[duck]


@lru_cache(maxsize=None)
def _defaults(table: str) -> dict[str, Any]:
    """Each event field's default (what msgspec writes when a field is unset); JSON ones as text."""
    out: dict[str, Any] = {}
    for f in mi.type_info(events.EVENT_TYPES[schema.TABLES[table].event]).fields:
        d = f.default
        if d is mi.NODEFAULT and f.default_factory is not mi.NODEFAULT:
            d = f.default_factory()  # msgspec keeps mutable defaults ([] / {}) as factories
        out[f.name] = None if d is mi.NODEFAULT else d
    return out


def _frame(table: str, n: int, cols: dict[str, Any]) -> pa.Table:
    """A table with every lake column of `table` but `day`, in order: given columns cast to the
    lake's type (dictionary-encoded strings stay so), the others at the event's default."""
    defaults = _defaults(table)
    arrays, names = [], []
    for name, duck in schema.lake_columns(table):
        if name == "day":
            continue
        typ = _arrow_type(duck)
        v = cols.get(name)
        if v is None:
            d = defaults.get(name)
            if d is None:
                v = pa.nulls(n, typ)
            elif duck == "JSON":
                v = _const(n, "{}" if isinstance(d, dict) else "[]")
            elif isinstance(d, list):
                v = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], typ.value_type))
            elif isinstance(d, str):
                v = _const(n, d)
            else:
                v = pa.array(np.full(n, d), typ)
        elif isinstance(v, np.ndarray):
            v = pa.array(v, typ)
        elif not isinstance(v, pa.DictionaryArray) and not pa.types.is_list(v.type) and v.type != typ:
            v = v.cast(typ)
        arrays.append(v)
        names.append(name)
    return pa.Table.from_arrays(arrays, names)


@dataclass
class _Sessions:
    """One piece of one day: its sessions (all streams), sorted by source."""

    stream: np.ndarray
    k: np.ndarray
    ts: np.ndarray  # int64 microseconds since the epoch
    port: np.ndarray
    ip: np.ndarray  # index into the pool
    sensor: np.ndarray
    src_port: np.ndarray
    proxy: np.ndarray  # index into _PROXIES
    mx: np.ndarray  # index into _MX
    aux: np.ndarray  # per category: other target, web target, submit target, error kind, credential
    u: np.ndarray  # a uniform number per session, for the per-category choices
    emails: np.ndarray  # how many emails
    session: pa.Array = field(default=None)  # type: ignore[assignment]
    session_key: np.ndarray = field(default=None)  # type: ignore[assignment]

    def slice(self, a: int, b: int) -> "_Sessions":
        return _Sessions(**{f: getattr(self, f)[a:b] for f in self.__dataclass_fields__})


class _Generator:
    def __init__(self, spec: Spec, pool: Pool) -> None:
        self.spec = spec
        self.pool = pool
        self.picker = DayPicker(pool)
        self._con: Any = None
        self._pid = 0
        self.ss = streams(spec)
        self.W = day_weights(spec)
        self.vocab = _Vocab(spec.seed)
        self.ip_str = pa.array(pool.ips, pa.string())
        self.ip_key = pool.ip_ints.astype(np.uint64)
        self.sensors = [f"sp-{i + 1:02d}" for i in range(spec.sensors)]
        self.ports = {c: [(p, w) for p, w in PORT_MIX.items() if PORT_CLASS.get(p, "HTTP") == c]
                      for c in ("HTTP", "SOCKS", "SMTP")}

    @property
    def con(self) -> Any:
        """This process's DuckDB connection (for its md5): a forked worker opens its own."""
        if self._con is None or self._pid != os.getpid():
            self._con, self._pid = new_connection(1), os.getpid()
            self._con.execute("SET enable_progress_bar = false")  # DuckDB's own bar: on stdout, even off a TTY
        return self._con

    def k_range(self, s: Stream, d: int) -> tuple[int, int]:
        W = self.W
        return (s.n * int(W[d]) + int(W[-1]) // 2) // int(W[-1]), (s.n * int(W[d + 1]) + int(W[-1]) // 2) // int(W[-1])

    def pieces(self, d: int) -> list[list[tuple[int, int, int]]]:
        """The day's pieces: each a list of (stream index, k0, k1)."""
        ranges = [(i, *self.k_range(s, d)) for i, s in enumerate(self.ss)]
        total = sum(k1 - k0 for _, k0, k1 in ranges)
        n = max(1, -(-total // PIECE_SESSIONS))
        return [[(i, k0 + (k1 - k0) * p // n, k0 + (k1 - k0) * (p + 1) // n) for i, k0, k1 in ranges]
                for p in range(n)]

    def sessions(self, d: int, piece_no: int, piece: list[tuple[int, int, int]]) -> _Sessions:
        rng = np.random.default_rng([self.spec.seed, 3, d, piece_no])
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("stream", "k", "port", "proxy", "emails")}
        for i, k0, k1 in piece:
            s = self.ss[i]
            k = np.arange(k0, k1, dtype=np.int64)
            parts["stream"].append(np.full(len(k), i, np.int16))
            parts["k"].append(k)
            # golden-ratio sequence: the port mix within the stream is exact even for few sessions
            phase = int(hashlib.sha256(f"{self.spec.seed}{s.code}".encode()).hexdigest()[:8], 16) / 2**32
            ports, w = zip(*self.ports[s.cls])
            cum = np.cumsum(w) / sum(w)
            parts["port"].append(np.array(ports, np.int32)[
                np.minimum(np.searchsorted(cum, (k * 0.6180339887498949 + phase) % 1.0, side="right"), len(w) - 1)])
            if s.cls == "SOCKS":
                proxy = 1 + np.searchsorted(np.cumsum(_SOCKS_MIX), rng.random(len(k)), side="right").clip(0, 2)
            else:
                proxy = np.full(len(k), 0 if s.cls == "HTTP" else 4)
            parts["proxy"].append(proxy.astype(np.int8))
            if s.emails and s.n:  # contiguous blocks: session k sends emails [ceil(k M / n), ceil((k+1) M / n))
                first = -((-k * s.emails) // s.n)
                parts["emails"].append(-((-(k + 1) * s.emails) // s.n) - first)
            else:
                parts["emails"].append(np.zeros(len(k), np.int64))
        cat = {key: np.concatenate(v) for key, v in parts.items()}
        n = len(cat["k"])
        day0 = ((self.spec.start - _EPOCH).days + d) * 86400 * _US
        hour = rng.choice(24, size=n, p=HOURLY / HOURLY.sum())
        ts = day0 + ((hour + rng.random(n)) * 3600 * _US).astype(np.int64)
        ip = self.picker.pick(d, n, rng, first_piece=piece_no == 0)
        order = np.argsort(self.ip_key[ip], kind="stable")
        mx = np.minimum((len(_MX) * rng.random(n) ** 2).astype(np.int64), len(_MX) - 1)  # head-heavy MX choice
        out = _Sessions(stream=cat["stream"][order], k=cat["k"][order], ts=ts[order], port=cat["port"][order],
                        ip=ip[order], sensor=rng.integers(0, self.spec.sensors, n)[order],
                        src_port=rng.integers(1024, 65024, n).astype(np.int32)[order],
                        proxy=cat["proxy"][order], mx=mx[order], aux=rng.integers(0, 1 << 30, n)[order],
                        u=rng.random(n)[order], emails=cat["emails"][order])
        codes = pa.array([s.code for s in self.ss], pa.string()).take(pa.array(out.stream))
        counter = pc.utf8_lpad(pc.cast(pa.array(out.k), pa.string()), 9, "0")
        out.session = pc.binary_join_element_wise(codes, counter, "")
        self.con.register("_sess", pa.table({"s": out.session}))
        out.session_key = self.con.execute("SELECT md5_number_lower(s) FROM _sess").fetchnumpy()[
            "md5_number_lower(s)"].astype(np.uint64)
        self.con.unregister("_sess")
        return out

    def category(self, S: _Sessions) -> np.ndarray:
        cats = np.array([s.category for s in self.ss], dtype=object)
        return cats[S.stream]

    def common(self, S: _Sessions, pos: np.ndarray, protocol: Any, depth: int, ts: np.ndarray | None = None) -> dict:
        return {"v": np.ones(len(pos), np.int32), "ts": pa.array(S.ts[pos] if ts is None else ts, pa.timestamp("us")),
                "sensor": _dict(S.sensor[pos], self.sensors), "session": S.session.take(pa.array(pos)),
                "src_ip": self.ip_str.take(pa.array(S.ip[pos])), "src_port": S.src_port[pos],
                "listener_port": S.port[pos], "protocol": protocol, "depth": np.full(len(pos), depth, np.int32),
                "ip_key": self.ip_key[S.ip[pos]]}

    # ---- one generator per table: each yields (pa.Table of lake rows sorted by source, their session_key)
    def session_open(self, S: _Sessions, cat: np.ndarray, d: int):
        pos = np.arange(len(S.k))
        proto = np.where(S.proxy == 4, len(_PROXIES), S.proxy)  # direct SMTP sessions: 'smtp'
        c = self.common(S, pos, _dict(proto, _PROXIES + ["smtp"]), 0)
        c["listener_addr"] = _const(len(pos), "0.0.0.0")
        yield _frame("session_open", len(pos), c), S.session_key[pos]

    def proxy_request(self, S: _Sessions, cat: np.ndarray, d: int):
        is_req = np.isin(cat, ["to25", "other", "get", "submit"])
        base = np.flatnonzero(is_req)
        host = np.zeros(len(S.k), np.int64)
        port = np.zeros(len(S.k), np.int32)
        mx_host = np.array([_HOST[h] for h, _ in _MX])[S.mx]
        for name, targets in (("other", _OTHER_TARGETS), ("submit", _SUBMIT)):
            m = cat == name
            t = S.aux[m] % len(targets)
            host[m] = np.array([_HOST[h] for h, _ in targets])[t]
            port[m] = np.array([p for _, p in targets])[t]
        m = cat == "to25"
        host[m], port[m] = mx_host[m], 25
        m = cat == "get"
        host[m] = np.array([_HOST[h] for h in _WEB])[np.minimum((len(_WEB) * S.u[m]).astype(np.int64), len(_WEB) - 1)]
        port[m] = 80
        # keep-alive: 0-2 more GETs on a GET session; chains: a proxy target, then CONNECT to port 25 inside it
        extra = np.where(cat == "get", (S.aux >> 8) % 3, 0)
        rep = np.repeat(np.flatnonzero(extra), extra[extra > 0])
        nth = np.arange(len(rep)) - np.repeat(np.cumsum(extra[extra > 0]) - extra[extra > 0], extra[extra > 0]) + 1
        chain = np.flatnonzero((cat == "other") & np.isin(port, [1080, 8080]))
        pos = np.concatenate([base, rep, chain])
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        kind = np.concatenate([np.zeros(len(base), np.int8), np.ones(len(rep), np.int8),
                               np.full(len(chain), 2, np.int8)])[order]
        dt_s = np.concatenate([np.zeros(len(base), np.int64), nth, np.ones(len(chain), np.int64)])[order]
        ts = S.ts[pos] + dt_s * _US
        depth = (kind == 2).astype(np.int32)
        h = np.where(kind == 2, mx_host[pos], host[pos])
        tport = np.where(kind == 2, 25, port[pos]).astype(np.int32)
        is_get = cat[pos] == "get"
        proxy = S.proxy[pos]
        userpass = (proxy == 1) & (S.u[pos] < 0.02)  # assumption: 2% of SOCKS5 clients send a user/password
        cred = (S.aux[pos] >> 12) % len(_CREDS)
        c = self.common(S, pos, _dict(proxy, _PROXIES), 0, ts)
        c["depth"] = depth
        hosts = pa.array(_HOSTS, pa.string())
        c.update(proxy=_dict(proxy, _PROXIES), command=_dict(is_get.astype(np.int8), ["connect", "get"]),
                 target_host=_dict(h, hosts), target_port=tport,
                 url=pc.if_else(pa.array(is_get), pc.binary_join_element_wise(
                     "http://", hosts.take(pa.array(h)), "/", ""), pa.nulls(len(pos), pa.string())),
                 auth_method=pa.array(np.where(userpass, "userpass", np.where(proxy == 1, "none", None)), pa.string()),
                 username=pa.array(np.where(userpass, np.array([u for u, _ in _CREDS], dtype=object)[cred], None),
                                   pa.string()),
                 password=pa.array(np.where(userpass, np.array([p for _, p in _CREDS], dtype=object)[cred], None),
                                   pa.string()),
                 outcome=_const(len(pos), "granted"),
                 reply_code=np.array([200, 0, 90, 90, 0], np.int32)[proxy],
                 session_key=S.session_key[pos], first_in_session=kind == 0)
        yield _frame("proxy_request", len(pos), c), S.session_key[pos]

    def protocol_error(self, S: _Sessions, cat: np.ndarray, d: int):
        pos = np.flatnonzero(cat == "errors")
        socks = S.proxy[pos] != 0
        kinds = _ERRORS["SOCKS"] + _ERRORS["HTTP"]
        u = np.minimum(S.u[pos], 0.999999)
        idx = np.where(socks, (u * len(_ERRORS["SOCKS"])).astype(np.int64),
                       len(_ERRORS["SOCKS"]) + (u * len(_ERRORS["HTTP"])).astype(np.int64))
        c = self.common(S, pos, _dict(S.proxy[pos], _PROXIES), 0)
        c.update(kind=_dict(idx, kinds), detail=_const(len(pos), ""), data_b64=_const(len(pos), ""),
                 session_key=S.session_key[pos])
        yield _frame("protocol_error", len(pos), c), S.session_key[pos]

    def tls_hello(self, S: _Sessions, cat: np.ndarray, d: int):
        t = S.aux % len(_OTHER_TARGETS)
        pos = np.flatnonzero((cat == "other") & (np.array([p for _, p in _OTHER_TARGETS])[t] == 443))
        host = _dict(t[pos], [h for h, _ in _OTHER_TARGETS])
        c = self.common(S, pos, _const(len(pos), "tls"), 1, S.ts[pos] + _US)
        c.update(target_host=host, target_port=np.full(len(pos), 443, np.int32), sni=host,
                 alpn=pa.ListArray.from_arrays(pa.array(np.arange(len(pos) + 1, dtype=np.int32)),
                                               _const(len(pos), "http/1.1")),
                 tls_version=_const(len(pos), "TLS1.2"), cipher_count=np.full(len(pos), 20, np.int32))
        yield _frame("tls_hello", len(pos), c), S.session_key[pos]

    def smtp_auth(self, S: _Sessions, cat: np.ndarray, d: int):
        # assumption: 1 in 20 open-relay clients tries AUTH LOGIN; every submission tunnel logs in
        direct = (cat == "direct") & ((S.aux >> 4) % 20 == 0)
        pos = np.flatnonzero(direct | (cat == "submit"))
        sub = cat[pos] == "submit"
        cred = (S.aux[pos] >> 12) % len(_CREDS)
        t = S.aux[pos] % len(_SUBMIT)
        c = self.common(S, pos, _const(len(pos), "smtp"), 0, S.ts[pos] + _US)
        c["depth"] = sub.astype(np.int32)
        c.update(mechanism=_const(len(pos), "LOGIN"), username=_dict(cred, [u for u, _ in _CREDS]),
                 password=_dict(cred, [p for _, p in _CREDS]), outcome=_const(len(pos), "accepted"),
                 target_host=pc.if_else(pa.array(sub), _dict(t, [h for h, _ in _SUBMIT]).cast(pa.string()),
                                        pa.nulls(len(pos), pa.string())),
                 target_port=pa.array(np.where(sub, 587, 0), pa.int32(), mask=~sub))
        yield _frame("smtp_auth", len(pos), c), S.session_key[pos]

    def limit_hit(self, S: _Sessions, cat: np.ndarray, d: int):
        pos = np.flatnonzero((cat == "direct") & ((S.aux >> 9) % 100 == 0))  # assumption: 1% oversized
        c = self.common(S, pos, _const(len(pos), "smtp"), 0, S.ts[pos] + 2 * _US)
        c.update(limit=_const(len(pos), "max_message_bytes"), value=np.full(len(pos), 10485760.0),
                 observed=10485760.0 + (S.aux[pos] % 1_000_000).astype(np.float64))
        yield _frame("limit_hit", len(pos), c), S.session_key[pos]

    def smtp_message(self, S: _Sessions, cat: np.ndarray, d: int):
        """Emails in row groups of about BATCH_EMAILS, each a run of sessions (so still sorted by source)."""
        has = np.flatnonzero(S.emails > 0)
        cum = np.cumsum(S.emails[has])
        cuts = np.searchsorted(cum, np.arange(BATCH_EMAILS, cum[-1] if len(cum) else 0, BATCH_EMAILS), side="right")
        rng = np.random.default_rng([self.spec.seed, 4, d, int(S.session_key[0]) if len(S.k) else 0])
        v = self.vocab
        for sel in np.split(has, cuts):
            if not len(sel):
                continue
            cnt = S.emails[sel]
            pos = np.repeat(sel, cnt)
            n = len(pos)
            i = np.arange(n) - np.repeat(np.cumsum(cnt) - cnt, cnt)  # email number within its session
            day_end = ((self.spec.start - _EPOCH).days + d + 1) * 86400 * _US - 1
            ts = np.minimum(S.ts[pos] + (1 + 3 * i) * _US, day_end)  # assumption: one email every 3 s
            c = cat[pos]
            direct, submit = c == "direct", c == "submit"
            proxy = S.proxy[pos]
            n_rcpts = (1 + np.floor(RCPT_SPREAD * rng.random(n))).astype(np.int32)
            mx_dom = np.array([_DOMAINS.index(dm) for _, dm in _MX])[S.mx[pos]]
            dom = np.where(direct, rng.integers(0, len(_DOMAINS), n), mx_dom)
            offsets = np.zeros(n + 1, np.int32)
            np.cumsum(n_rcpts, out=offsets[1:])
            start = np.repeat(rng.integers(0, RCPT_LIST, n) + dom * RCPT_LIST, n_rcpts)
            walk = np.arange(offsets[-1]) - np.repeat(offsets[:-1], n_rcpts)
            rcpt_idx = (start - start % RCPT_LIST) + (start % RCPT_LIST + walk) % RCPT_LIST
            tpl = (d * 13 + rng.integers(0, 40, n)) % len(v.templates)  # assumption: campaigns rotate daily
            sender = np.minimum((len(v.senders) * S.u[pos] ** 1.5).astype(np.int64), len(v.senders) - 1)
            local = (S.aux[pos] >> 14) % _MAIL_LOCALS
            helo = np.minimum((len(v.helos) * ((S.aux[pos] >> 3) % 997 / 997) ** 1.5).astype(np.int64),
                              len(v.helos) - 1)
            via_len = (~direct).astype(np.int32)
            via_off = np.zeros(n + 1, np.int32)
            np.cumsum(via_len, out=via_off[1:])
            via_idx = (proxy * len(_MX) + S.mx[pos])[~direct]
            mx_host = np.array([_HOST[h] for h, _ in _MX])[S.mx[pos]]
            sub_host = np.array([_HOST[h] for h, _ in _SUBMIT])[S.aux[pos] % len(_SUBMIT)]
            host = np.where(submit, sub_host, mx_host)
            cred = (S.aux[pos] >> 12) % len(_CREDS)
            tt = v.templates
            cols = self.common(S, pos, _const(n, "smtp"), 1, ts)
            cols["depth"] = (~direct).astype(np.int32)
            cols.update(
                helo=_dict(helo, v.helos), mail_from=_dict(sender * _MAIL_LOCALS + local, v.mail_from),
                rcpts=pa.ListArray.from_arrays(pa.array(offsets), _dict(rcpt_idx, v.rcpts)),
                size=np.array([x[2] for x in tt], np.int64)[tpl], sha256=_dict(tpl, [x[1] for x in tt]),
                subject=_dict(tpl, [x[0] for x in tt]), header_from=_dict(tpl, [x[4] for x in tt]),
                via=pa.ListArray.from_arrays(pa.array(via_off), _dict(via_idx, v.via)),
                target_host=pc.if_else(pa.array(direct), pa.nulls(n, pa.string()),
                                       _dict(host, _HOSTS).cast(pa.string())),
                target_port=pa.array(np.where(submit, 587, 25), pa.int32(), mask=direct),
                tls=np.zeros(n, bool),
                auth_user=pa.array(np.where(submit, np.array([u for u, _ in _CREDS], dtype=object)[cred], None),
                                   pa.string()),
                index=(i + 1).astype(np.int32), submission=submit, n_rcpts=n_rcpts,
                proxy=_dict(np.where(direct, 4, proxy), _PROXIES),
                rcpt_domains=pa.ListArray.from_arrays(pa.array(offsets), _dict(np.repeat(dom, n_rcpts), _DOMAINS)),
                sender_domain=_dict(sender, v.senders))
            yield _frame("smtp_message", n, cols), S.session_key[pos]

    def sensor_start(self) -> pa.Table:
        n = self.spec.sensors
        day0 = (self.spec.start - _EPOCH).days * 86400 * _US
        return _frame("sensor_start", n, {
            "v": np.ones(n, np.int32), "ts": pa.array(np.full(n, day0), pa.timestamp("us")),
            "sensor": pa.array(self.sensors, pa.string()), "session": _const(n, ""), "src_ip": _const(n, ""),
            "src_port": np.zeros(n, np.int32), "listener_port": np.zeros(n, np.int32),
            "protocol": _const(n, "sensor"), "depth": np.zeros(n, np.int32), "ip_key": np.zeros(n, np.uint64),
            "version": _const(n, "synth")})


GENERATORS = ("session_open", "proxy_request", "protocol_error", "smtp_message", "tls_hello", "smtp_auth",
              "limit_hit")


class _LakeWriter:
    """Parquet parts: <out>/lake/<table>/day=<day>/synth-<run>.parquet, one per table and day."""

    def __init__(self, out: Path) -> None:
        self.root = out / "lake"
        self.run = uuid.uuid4().hex[:16]

    def open(self, table: str, day: dt.date) -> "_PartWriter":
        return _PartWriter(self.root / table / f"day={day.isoformat()}" / f"synth-{self.run}.parquet")

    def finish(self) -> None:
        pass


_STATS = {"ts", "ip_key", "session_key", "sensor", "listener_port", "depth", "target_port", "protocol"}


class _PartWriter:
    """One Parquet file, written one row group per table given (opened at the first)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.w: Optional[pq.ParquetWriter] = None
        self.rows = 0

    def write(self, t: pa.Table) -> None:
        if not t.num_rows:
            return
        if self.w is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # min/max statistics only where a reader prunes on them: on lists and free text they
            # cost a third of the writing and serve no query
            stats = [f.name for f in t.schema if f.name in _STATS]
            self.w = pq.ParquetWriter(pa.OSFile(str(self.path), "wb"), t.schema, compression="zstd",
                                      write_statistics=stats)
        self.w.write_table(t, row_group_size=1 << 30)
        self.rows += t.num_rows

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


_GEN: Optional[_Generator] = None  # what a forked worker inherits: the generator, and the writer
_WRITER: Any = None


def _day(d: int) -> dict[str, int]:
    """Write day d of every table; returns rows per table."""
    gen, writer = _GEN, _WRITER
    assert gen is not None
    day = gen.spec.start + dt.timedelta(days=d)
    parts: dict[str, Any] = {}

    def part(name: str) -> Any:
        if name not in parts:
            parts[name] = writer.open(name, day)
        return parts[name]

    for p, piece in enumerate(gen.pieces(d)):
        whole = gen.sessions(d, p, piece)
        for a in range(0, len(whole.k), SLICE_SESSIONS):
            S = whole.slice(a, a + SLICE_SESSIONS)
            cat = gen.category(S)
            for table in GENERATORS:
                for t, key in getattr(gen, table)(S, cat, d):
                    if "session_bucket" in t.column_names:  # schema.DERIVED: md5_number_lower(session) % BUCKETS
                        t = t.set_column(t.column_names.index("session_bucket"), "session_bucket",
                                         pa.array((key % schema.BUCKETS).astype(np.int16)))
                    part(table).write(t)
                    if table in schema.SAMPLED:  # schema.sample_pred: md5_number_lower(session) % N = 0
                        part(f"{table}_sample").write(t.filter(pa.array(key % schema.SAMPLED[table] == 0)))
        del whole
    if d == 0:
        part("sensor_start").write(gen.sensor_start())
    counts = {}
    for name, w in parts.items():
        w.close()
        counts[name] = w.rows
    return counts


def generate(out: Path, spec: Spec, *, fmt: str = "lake", quiet: bool = True,
             threads: Optional[int] = None) -> dict[str, int]:
    """Write the data set under `out` (a data directory); returns counts per table.

    `threads`: worker processes, each writing whole days (default: up to 2; --format store: 1).
    """
    global _GEN, _WRITER
    out.mkdir(parents=True, exist_ok=True)
    with progress.bar("synth: choosing sources", total=1, quiet=quiet) as tick:
        pool = ip_pool(spec.pool, spec.days, spec.seed)
        bundled.cache_clear()  # the bundled data is not needed again: its memory goes
        tick(1)
    _GEN = _Generator(spec, pool)
    _WRITER = _StoreWriter(out, _GEN.vocab) if fmt == "store" else _LakeWriter(out)
    workers = 1 if fmt == "store" else max(1, min(spec.days, threads or min(2, os.cpu_count() or 1)))
    counts: dict[str, int] = {}
    try:
        with progress.bar("synth: emails written", total=spec.emails, quiet=quiet) as tick:
            if workers == 1:
                done = map(_day, range(spec.days))
                ex = None
            else:  # forked workers inherit the generator; each day is written by one of them
                ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
                done = ex.map(_day, range(spec.days))
            try:
                for c in done:
                    for k, v in c.items():
                        counts[k] = counts.get(k, 0) + v
                    tick(c.get("smtp_message", 0))
            finally:
                if ex is not None:
                    ex.shutdown(cancel_futures=True)
        _WRITER.finish()
    finally:
        _GEN = _WRITER = None
    return {k: v for k, v in counts.items() if not k.endswith("_sample")}


class _StoreWriter:
    """Event lines into segments (via the store's SegmentWriter) and bodies into the MessageStore."""

    def __init__(self, out: Path, vocab: _Vocab) -> None:
        self.out = out
        self.vocab = vocab
        self.con = con = new_connection(1)
        con.execute("SET enable_progress_bar = false")
        con.execute("CREATE TEMP TABLE lines (day DATE, sensor VARCHAR, t TIMESTAMP, line VARCHAR)")

    def open(self, table: str, day: dt.date) -> "_StoreWriter._Part":
        return _StoreWriter._Part(self, table, day)

    class _Part:
        def __init__(self, w: "_StoreWriter", table: str, day: dt.date) -> None:
            self.w, self.table, self.day, self.rows = w, table, day, 0

        def write(self, t: pa.Table) -> None:
            if self.table.endswith("_sample") or not t.num_rows:
                return
            con = self.w.con
            con.register("_rows", t)
            fields = [f"event := {_sql_str(schema.TABLES[self.table].event)}"]
            for name, typ in schema.TABLES[self.table].columns:
                if name == "ts":
                    fields.append("ts := strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ')")
                else:
                    fields.append(f'"{name}" := "{name}"' + ("::JSON" if typ == "JSON" else ""))
            con.execute(f"INSERT INTO lines SELECT DATE '{self.day.isoformat()}', sensor, ts, "
                        f"to_json(struct_pack({', '.join(fields)}))::VARCHAR FROM _rows")
            con.unregister("_rows")
            self.rows += t.num_rows

        def close(self) -> None:
            pass

    def finish(self) -> None:
        from spampots.store.messages import MessageStore
        from spampots.store.segments import SegmentWriter

        con = self.con
        groups = con.execute("SELECT DISTINCT day, sensor FROM lines ORDER BY 1, 2").fetchall()
        for day, sensor in groups:
            t0 = dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp()
            w = SegmentWriter(self.out, sensor, clock=lambda t0=t0: t0, max_bytes=1 << 62)
            rel = con.execute("SELECT line FROM lines WHERE day = ? AND sensor = ? ORDER BY t", [day, sensor])
            while True:
                batch = rel.fetchmany(50_000)
                if not batch:
                    break
                w.write("".join(r[0] + "\n" for r in batch).encode())
            w.close()
        con.execute("DROP TABLE lines")
        store = MessageStore(self.out, "synth")
        try:
            for _subject, sha, _size, body, _from in self.vocab.templates:
                store.put(body, sha)
            store.sync()
        finally:
            store.close()


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
