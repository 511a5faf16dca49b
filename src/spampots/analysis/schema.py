"""The lake's tables, derived from the event vocabulary in ``spampots.events``.

One table per event type, named after its tag without the ``spampots.`` prefix
(``spampots.smtp.message`` -> ``smtp_message``). The columns are the event's
fields with DuckDB types read off the msgspec annotations, so a field added to
``events.py`` reaches the lake without touching this module. A few derived
columns are added (see :data:`DERIVED`); their SQL lives here, once, and is used
both when compacting closed segments and when reading open ones.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import msgspec.inspect as mi

from spampots import events

# Fields that never need 64 bits; smaller types make the lake scans cheaper.
_SMALL_INTS = {"v", "src_port", "listener_port", "depth", "target_port", "port",
               "reply_code", "index", "status", "cipher_count"}


def _duck_type(t: mi.Type, name: str) -> str:
    if name == "ts":
        return "TIMESTAMP"  # ISO 8601 UTC with a Z: DuckDB parses it straight into a naive UTC timestamp
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if all(isinstance(x, (mi.IntType, mi.FloatType)) for x in inner):
            return "DOUBLE" if any(isinstance(x, mi.FloatType) for x in inner) else _duck_type(inner[0], name)
        if len(inner) == 1:
            return _duck_type(inner[0], name)
        return "JSON"
    if isinstance(t, mi.StrType):
        return "VARCHAR"
    if isinstance(t, mi.BoolType):
        return "BOOLEAN"
    if isinstance(t, mi.IntType):
        return "INTEGER" if name in _SMALL_INTS else "BIGINT"
    if isinstance(t, mi.FloatType):
        return "DOUBLE"
    if isinstance(t, mi.ListType):
        item = _duck_type(t.item_type, name)
        return "JSON" if item == "JSON" else f"{item}[]"
    return "JSON"  # dicts, nested structs, Any: kept as JSON text


@dataclass(frozen=True)
class Table:
    name: str  # lake table / view name
    event: str  # dotted event tag
    columns: tuple[tuple[str, str], ...]  # (field, DuckDB type), the event's own fields


def table_name(tag: str) -> str:
    return tag.removeprefix("spampots.").replace(".", "_")


def _build() -> dict[str, Table]:
    out: dict[str, Table] = {}
    for tag, cls in events.EVENT_TYPES.items():
        cols = tuple((f.name, _duck_type(f.type, f.name)) for f in mi.type_info(cls).fields)
        out[table_name(tag)] = Table(table_name(tag), tag, cols)
    return out


TABLES: dict[str, Table] = _build()


def json_columns() -> dict[str, str]:
    """Union of all fields, for reading a segment of mixed events in one pass.

    A field whose type differs between events is read as JSON and cast per table.
    """
    cols: dict[str, str] = {"event": "VARCHAR"}
    for t in TABLES.values():
        for name, typ in t.columns:
            cols[name] = "JSON" if cols.get(name, typ) != typ else typ
    return cols


# SQL macros shared by compaction, open-segment views and queries.
#  norm_ip: IPv4-mapped IPv6 (::ffff:a.b.c.d, as a dual-stack socket reports) becomes a.b.c.d.
#  campaign_key: a campaign is the messages whose Subject has the same template: whitespace runs
#           collapsed and trimmed, digit runs -> '#', ASCII letters lower-cased; the key is the first 16
#           hex digits of the template's md5. No subject (or a blank one): no campaign. Computed at query
#           time, never stored, so the definition can change without rebuilding the lake.
#  ip_key:  IPv4 -> its 32-bit value (reversible, see ip_str); anything else -> a stable
#           64-bit md5 prefix with the top bit set, so it never collides with IPv4.
#           Grouping by this integer is ~3x cheaper than by the string.
#  utc_to_local: a naive UTC timestamp (the lake's ts) as the naive local time of an IANA zone
#           (the report's --tz): days, weeks and hours are bucketed on it.
MACROS = r"""
CREATE OR REPLACE MACRO norm_ip(ip) AS
  CASE WHEN lower(ip) LIKE '::ffff:%' AND ip LIKE '%.%' THEN substr(ip, 8) ELSE ip END;
CREATE OR REPLACE MACRO is_ipv4(ip) AS
  regexp_full_match(ip, '\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}');
CREATE OR REPLACE MACRO ip_key(ip) AS
  CASE WHEN ip IS NULL OR ip = '' THEN 0::UBIGINT
       WHEN is_ipv4(ip) THEN (split_part(ip, '.', 1)::UBIGINT << 24) | (split_part(ip, '.', 2)::UBIGINT << 16)
                           | (split_part(ip, '.', 3)::UBIGINT << 8) | split_part(ip, '.', 4)::UBIGINT
       ELSE md5_number_upper(lower(ip)) | (1::UBIGINT << 63) END;
CREATE OR REPLACE MACRO ip_str(k) AS
  CASE WHEN k < 4294967296 THEN ((k >> 24) & 255)::VARCHAR || '.' || ((k >> 16) & 255)::VARCHAR || '.'
       || ((k >> 8) & 255)::VARCHAR || '.' || (k & 255)::VARCHAR END;
CREATE OR REPLACE MACRO proto_class(p) AS
  CASE WHEN p IN ('socks4', 'socks4a', 'socks5') THEN 'SOCKS' WHEN p = 'http' THEN 'HTTP'
       WHEN p IS NULL OR p = '' THEN 'SMTP' ELSE upper(p) END;
CREATE OR REPLACE MACRO subject_template(s) AS
  translate(regexp_replace(trim(regexp_replace(s, '[ \t\r\n\f\v]+', ' ', 'g')), '[0-9]+', '#', 'g'),
            'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz');
CREATE OR REPLACE MACRO campaign_key(s) AS
  CASE WHEN subject_template(s) <> '' THEN substr(md5(subject_template(s)), 1, 16) END;
CREATE OR REPLACE MACRO utc_to_local(ts, zone) AS
  timezone(zone, timezone('UTC', ts));
CREATE OR REPLACE MACRO email_domain(a) AS
  lower(CASE WHEN a LIKE '%@%' THEN rtrim(split_part(a, '@', -1), '> ') ELSE '' END);
"""

def local_day(tz: str) -> str:
    """SQL for a row's day in IANA zone `tz`: the lake's own `day` partition column for UTC, else
    its `ts` (naive UTC) converted by macro utc_to_local."""
    if tz == "UTC":
        return "day"
    if "'" in tz:
        raise ValueError(f"not a time zone name: {tz!r}")
    return f"CAST(utc_to_local(ts, '{tz}') AS DATE)"


def period_where(day_from: dt.date | None, day_to: dt.date | None, tz: str = "UTC") -> list[str]:
    """SQL conditions keeping the rows of days day_from..day_to (inclusive, either open) in zone `tz`.

    The `day` column is the UTC day and what the lake is partitioned by: for another zone it is
    widened by one day each side (no zone is more than 14 h off UTC), so the scan still skips
    the other days, and the row's local day is then compared exactly.
    """
    widen = dt.timedelta(days=0 if tz == "UTC" else 1)
    out = []
    if day_from:
        out.append(f"day >= DATE '{(day_from - widen).isoformat()}'")
    if day_to:
        out.append(f"day <= DATE '{(day_to + widen).isoformat()}'")
    if tz != "UTC":
        if day_from:
            out.append(f"{local_day(tz)} >= DATE '{day_from.isoformat()}'")
        if day_to:
            out.append(f"{local_day(tz)} <= DATE '{day_to.isoformat()}'")
    return out


# Sample buckets of a session (session_bucket); a multiple of every SAMPLED rate.
BUCKETS = 4096

# Extra columns per table: (name, type, SQL expression over the raw event columns). Parts written
# before a derived column existed get it computed from its expression when read (lake.py).
DERIVED: dict[str, tuple[tuple[str, str, str], ...]] = {
    "*": (("ip_key", "UBIGINT", "ip_key(norm_ip(src_ip))"),),
    "smtp_message": (
        ("n_rcpts", "INTEGER", "coalesce(len(rcpts), 0)"),
        # The proxy protocol that carried the mail: first hop of `via` ("socks5:mx:25"), '' if direct.
        ("proxy", "VARCHAR", "coalesce(split_part(via[1], ':', 1), '')"),
        # Domains repeat a lot: a dictionary-encoded list of them is ~6x cheaper to count than rcpts.
        ("rcpt_domains", "VARCHAR[]", "list_transform(rcpts, lambda a: email_domain(a))"),
        ("sender_domain", "VARCHAR", "email_domain(mail_from)"),
        # The session's sample bucket, 0..4095 (md5 of the session id): the report's heavy tables read
        # the sessions of buckets below a bound that scales with the data set (metrics.build_sample);
        # the md5 is paid once here, not by every report. A session is all in one bucket.
        ("session_bucket", "SMALLINT", f"md5_number_lower(session) % {BUCKETS}"),
    ),
    # 64-bit key of the session id: joins on it are ~3x cheaper than on the string.
    "proxy_request": (("session_key", "UBIGINT", "md5_number_lower(session)"),),
    "protocol_error": (("session_key", "UBIGINT", "md5_number_lower(session)"),),
}

# Tables of which the lake also keeps a sample of sessions, as table "<name>_sample": the rows
# of 1 session in N (by the md5 of the session id, so a session is all in or all out): the
# sessions whose session_bucket is a multiple of N. Above 64 x --exact-limit emails the report's
# heavy top-N tables read it instead of every row (see metrics.build_sample).
SAMPLED: dict[str, int] = {"smtp_message": 64}


def sample_pred(table: str) -> str:
    return f"md5_number_lower(session) % {SAMPLED[table]} = 0"


# Computed per session when events are compacted (see lake.py), not per row.
SESSION_FLAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "proxy_request": (("first_in_session", "BOOLEAN"),),
}


def select_list(table: str, source_types: dict[str, str] | None = None) -> str:
    """SELECT list turning raw JSON columns into the lake columns of `table`.

    Leaves out `day` and the session flags, which the caller adds.
    """
    parts = []
    for name, typ in TABLES[table].columns:
        expr = "norm_ip(src_ip)" if name == "src_ip" else f'"{name}"'
        if source_types is not None and source_types.get(name, typ) != typ:
            expr = f"TRY_CAST({expr} AS {typ})"
        parts.append(f'{expr} AS "{name}"')
    for name, typ, expr in DERIVED["*"] + DERIVED.get(table, ()):
        parts.append(f"({expr})::{typ} AS {name}")
    return ", ".join(parts)


def lake_columns(table: str) -> list[tuple[str, str]]:
    """All columns of a lake table, in order: event fields, derived, flags, `day`."""
    derived = [(n, ty) for n, ty, _ in DERIVED["*"] + DERIVED.get(table, ())]
    return list(TABLES[table].columns) + derived + list(SESSION_FLAGS.get(table, ())) + [("day", "DATE")]
