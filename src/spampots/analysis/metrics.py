"""The report's metrics: named DuckDB queries over the lake views, each with its definition.

The views (one per event type, see schema.py/lake.py) are already filtered by the
report's --from/--to/--sensor. Before the metrics run, a few *base tables* are built
in one pass each over the big tables (messages, sessions, proxy requests); most
metrics are then small queries over those. docs/report.md repeats every definition;
tests/test_analysis_docs.py checks that each metric here is documented there.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import duckdb
import pyarrow as pa

from . import fingerprints, schema
from .enrich import Enricher
from .ports import PortInfo

from . import FIRST_PER  # noqa: F401  (re-exported)
from .progress import Step


def _no_step(name: str, total: Optional[int] = None) -> None:
    pass


CATEGORIES = ("to 25/TCP", "to other ports", "GET", "errors")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: str = "text"  # text | int | pct | num | date
    translate: bool = False  # the values are the report's own words (translated by --locale), never data


@dataclass
class Result:
    name: str
    title: str
    definition: str
    columns: list[Column]
    rows: list[tuple]
    layout: str = "table"  # table | vertical (one row shown as label/value pairs)
    section: str = "talk"  # talk | more | detail (long tables) | series (a chart's data: JSON, CSV, HTML chart)
    note: str = ""
    total_row: bool = False  # last row is a total


@dataclass
class Options:
    first_per: str = "connection"
    top: int = 10
    exact_limit: int = 5_000_000  # above this many messages, the heavy top-N tables use the sample
    talk_only: bool = False  # only the talk's tables (and the base tables they need)
    p0f_db: str = ""  # p0f.fp classifying the SYN fingerprints; "" = Debian's when installed
    tz: str = "UTC"  # IANA zone that days, weeks, months and hours are bucketed in (cli checks it)


@dataclass
class Report:
    results: list[Result]
    meta: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Result:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Base tables: one scan each over the big tables.
BASES: dict[str, tuple[str, str]] = {
    "msg_cube": (
        "Emails (smtp.message events, i.e. messages answered 250) and their recipients (len(rcpts)) per "
        "day, listener port, carrying proxy protocol, sensor and depth.",
        """SELECT {day} AS day, listener_port, proxy, sensor, depth, count(*) AS emails, sum(n_rcpts)::BIGINT AS rcpts
           FROM smtp_message GROUP BY ALL"""),
    "msg_by_ip": (
        "Emails per source IP.",
        "SELECT ip_key, count(*) AS emails FROM smtp_message GROUP BY ip_key"),
    "sess_cube": (
        "Sessions (session.open events) per day, listener port and sensor.",
        "SELECT {day} AS day, listener_port, sensor, count(*) AS sessions FROM session_open GROUP BY ALL"),
    "sess_hours": (
        "Sessions per hour of day (in the report's time zone).",
        "SELECT {hour} AS hour, count(*) AS sessions FROM session_open GROUP BY 1"),
    "src_by_ip": (
        "Sessions per source IP: every source that connected, mail or not.",
        "SELECT ip_key, count(*) AS sessions FROM session_open GROUP BY ip_key"),
    "sensor_ips": (
        "Distinct source IPs per sensor: exact up to --exact-limit sessions, a HyperLogLog estimate "
        "(approx_count_distinct, about 2% error) above.",
        "SELECT sensor, {distinct} AS ips FROM session_open GROUP BY sensor"),
    "req_cube": (
        "Proxy requests per day, sensor, proxy protocol, depth, category and whether the request "
        "was the first of its session.",
        """SELECT {day} AS day, sensor, proxy, depth, first_in_session,
                  CASE WHEN target_port = 25 THEN 'to 25/TCP' WHEN lower(command) = 'get' THEN 'GET'
                       ELSE 'to other ports' END AS category,
                  count(*) AS requests
           FROM proxy_request GROUP BY ALL"""),
    # After msg_cube and sess_cube, which it reads.
    "sensor_labels": (
        "The ISP and network labels (`[sensor] isp` and `network`, carried by spampots.sensor.start) of "
        "each sensor on each day it has sessions or emails: those of its latest start on or before that "
        "day (its last start of a day, if several), else those of its first start; `(unlabelled)` when "
        "the label is empty or no start was recorded.",
        """WITH st AS (SELECT sensor, {day} AS day, arg_max(isp, ts) AS isp, arg_max(network, ts) AS network
                       FROM sensor_start_all GROUP BY sensor, {day}),
                l AS (SELECT sensor, day, isp, network, lead(day) OVER (PARTITION BY sensor ORDER BY day) AS until,
                             row_number() OVER (PARTITION BY sensor ORDER BY day) AS n FROM st),
                d AS (SELECT sensor, day FROM sess_cube UNION SELECT sensor, day FROM msg_cube)
           SELECT d.sensor, d.day, coalesce(nullif(l.isp, ''), '(unlabelled)') AS isp,
                  coalesce(nullif(l.network, ''), '(unlabelled)') AS network
           FROM d LEFT JOIN l ON l.sensor = d.sensor AND (d.day >= l.day OR l.n = 1)
                                 AND (l.until IS NULL OR d.day < l.until)"""),
    "label_ips": (
        "The distinct source IPs (of session.open events) of each pair of ISP and network label "
        "(sensor_labels): one scan of the sessions serves per_isp and per_network, exactly.",
        """SELECT DISTINCT l.isp, l.network, o.ip_key
           FROM (SELECT sensor, {day} AS day, ip_key FROM session_open) o JOIN sensor_labels l USING (sensor, day)"""),
}
# Addresses that are not IPv4 have a hashed ip_key (top bit set): fetch their text once.
# Parquet min/max statistics on ip_key let the scan skip every IPv4-only row group.
V6_NAMES = """SELECT DISTINCT ip_key, src_ip AS ip FROM smtp_message WHERE ip_key >= 9223372036854775808
              UNION SELECT DISTINCT ip_key, src_ip FROM session_open WHERE ip_key >= 9223372036854775808"""

# Outbound attempts ("Tentativas de Saída de Tráfego"), see docs/report.md for the reading.
ERROR_SESSIONS = """
err_sessions AS (
  SELECT session_key, any_value(ip_key) AS ip_key, min(ts) AS ts,
         arg_min(lower(split_part(kind, '.', 1)), ts) AS prefix, any_value(listener_port) AS listener_port
  FROM protocol_error WHERE depth = 0 GROUP BY session_key
),
err AS (
  SELECT ip_key, ts,
         CASE WHEN prefix IN ('socks', 'socks4', 'socks4a', 'socks5') THEN 'SOCKS' WHEN prefix = 'http' THEN 'HTTP'
              ELSE coalesce(p.protocol, 'OTHER') END AS class,
         'errors' AS category
  FROM err_sessions e LEFT JOIN port_names p ON p.port = e.listener_port
  WHERE NOT EXISTS (SELECT 1 FROM proxy_request r WHERE r.session_key = e.session_key)
)"""
# connection / none: the requests come straight from req_cube (no second scan of the requests).
ATTEMPTS_CUBE = """
WITH {errors}
SELECT class, category, sum(n)::BIGINT AS requests FROM (
  SELECT proto_class(proxy) AS class, category, requests AS n FROM req_cube WHERE depth = 0 {req_filter}
  UNION ALL SELECT class, category, 1 FROM err WHERE class <> 'SMTP')
GROUP BY ALL
"""
# source-ip: the earliest attempt (request or error session) of each source IP, per protocol.
ATTEMPTS_PER_IP = """
WITH req AS (
  SELECT ip_key, ts, proto_class(proxy) AS class,
         CASE WHEN target_port = 25 THEN 'to 25/TCP' WHEN lower(command) = 'get' THEN 'GET'
              ELSE 'to other ports' END AS category
  FROM proxy_request WHERE depth = 0
), {errors},
attempts AS (SELECT * FROM req UNION ALL SELECT * FROM err WHERE class <> 'SMTP')
SELECT class, category, count(*) AS requests
FROM (SELECT class, arg_min(category, ts) AS category FROM attempts GROUP BY ip_key, class)
GROUP BY ALL
"""


def attempts_sql(first_per: str) -> str:
    if first_per not in FIRST_PER:
        raise ValueError(f"first_per must be one of {FIRST_PER}")
    if first_per == "source-ip":
        return ATTEMPTS_PER_IP.format(errors=ERROR_SESSIONS.strip())
    return ATTEMPTS_CUBE.format(errors=ERROR_SESSIONS.strip(),
                                req_filter="AND first_in_session" if first_per == "connection" else "")


# Sensor availability: the one SQL form of the rule in spampots.transport.availability (which
# docs/network.md describes). Beats of a sensor in time order (ties: heartbeat < start < stop, as
# there); each pair of consecutive beats is a span, up or not; zero-length spans are dropped and
# consecutive non-up spans merge into one gap (the island of up spans before it gives its id).
# A sensor of several workers has one heartbeat per worker: the interval is read off each
# worker's own beats (its heartbeats and the sensor's starts and stops), never off the
# interleaved beats of all of them; the sensor is up while any worker beats.
AVAILABILITY_TOLERANCE = 2.5
AVAILABILITY_DEFAULT_INTERVAL_S = 60.0
AVAILABILITY_DEFINITION = (
    "Per sensor, from its spampots.sensor.start, spampots.sensor.heartbeat and spampots.sensor.stop events "
    "(beats) in the range: first and last beat seen; hours covered = last - first; the heartbeat interval = "
    "the median spacing of its consecutive heartbeats (60 s if it has fewer than two). Between two consecutive "
    "beats the sensor is up when they are at most 2.5 x the interval apart, the earlier is not a stop and the "
    "later is not a start (a start after a gap means it was down until then); any other stretch is a gap, "
    "and adjacent gap stretches count as one. Hours up: the up stretches; % up: hours up / hours covered; "
    "gaps: their number; longest gap in minutes. The same rule as spampots.transport.availability. "
    "With workers (each beats on its own) the interval is the median spacing of each worker's consecutive "
    "heartbeats, and the sensor is up while any of them beats.")
AVAILABILITY_WORKERS_DEFINITION = (
    "The availability rule of the availability table per worker of the sensors that ran with more than one "
    "worker process: a worker's beats are its own heartbeats and the sensor's starts and stops. A worker "
    "that died and was started again at once shows no gap; one that hung or kept dying does.")


def _availability_sql(key: tuple[str, ...], beats: str, where: str = "") -> str:
    """The availability rule per ``key`` (sensor, or sensor and worker) over ``beats``."""
    cols = ", ".join(key)
    on = lambda a: " AND ".join(f"{a}.{c} = seen.{c}" for c in key)  # noqa: E731
    return f"""
WITH hb AS (SELECT sensor, coalesce(worker, 0) AS worker, ts FROM sensor_heartbeat),
workers AS (SELECT DISTINCT sensor, worker FROM hb),
life AS (SELECT sensor, ts, 'start' AS kind FROM sensor_start UNION ALL SELECT sensor, ts, 'stop' FROM sensor_stop),
wbeats AS (
  SELECT sensor, worker, ts, 'heartbeat' AS kind FROM hb
  UNION ALL SELECT l.sensor, w.worker, l.ts, l.kind FROM life l JOIN workers w USING (sensor)
  UNION ALL SELECT sensor, 0, ts, kind FROM life WHERE sensor NOT IN (SELECT sensor FROM workers)),
spacing AS (
  SELECT sensor, worker, kind, lead(kind) OVER w AS next_kind, epoch(lead(ts) OVER w) - epoch(ts) AS dur
  FROM wbeats WINDOW w AS (PARTITION BY sensor, worker ORDER BY ts, kind)),
rule AS (
  SELECT {cols}, coalesce(median(dur) FILTER (WHERE kind = 'heartbeat' AND next_kind = 'heartbeat' AND dur > 0),
                          {AVAILABILITY_DEFAULT_INTERVAL_S}) AS interval_s
  FROM spacing GROUP BY {cols}),
beats AS ({beats}),
pairs AS (
  SELECT {cols}, ts, kind, lead(kind) OVER w AS next_kind, epoch(lead(ts) OVER w) - epoch(ts) AS dur
  FROM beats WINDOW w AS (PARTITION BY {cols} ORDER BY ts, kind)),
spans AS (
  SELECT {cols}, ts, kind, dur,
         kind <> 'stop' AND next_kind <> 'start' AND dur <= {AVAILABILITY_TOLERANCE} * interval_s AS up
  FROM pairs JOIN rule USING ({cols}) WHERE dur > 0),
gaps AS (
  SELECT {cols}, sum(dur) AS gap_s
  FROM (SELECT *, sum(up::INTEGER) OVER (PARTITION BY {cols} ORDER BY ts, kind ROWS UNBOUNDED PRECEDING) AS island
        FROM spans)
  WHERE NOT up GROUP BY {cols}, island),
seen AS (SELECT {cols}, min(ts) AS first_seen, max(ts) AS last_seen FROM beats GROUP BY {cols})
SELECT {cols}, first_seen, last_seen, (epoch(last_seen) - epoch(first_seen)) / 3600.0 AS hours_covered,
       coalesce((SELECT sum(dur) FROM spans s WHERE {on("s")} AND up), 0) / 3600.0 AS hours_up,
       100.0 * coalesce((SELECT sum(dur) FROM spans s WHERE {on("s")} AND up), 0)
             / nullif(epoch(last_seen) - epoch(first_seen), 0) AS up_pct,
       (SELECT count(*) FROM gaps g WHERE {on("g")}) AS gaps,
       coalesce((SELECT max(gap_s) FROM gaps g WHERE {on("g")}), 0) / 60.0 AS longest_gap_min,
       interval_s
FROM seen JOIN rule USING ({cols}) {where} ORDER BY {cols}
"""


AVAILABILITY_SQL = _availability_sql(("sensor",), "SELECT sensor, ts, kind FROM life UNION ALL "
                                                  "SELECT sensor, ts, 'heartbeat' FROM hb")
AVAILABILITY_WORKERS_SQL = _availability_sql(
    ("sensor", "worker"), "SELECT * FROM wbeats",
    "WHERE sensor IN (SELECT sensor FROM workers GROUP BY sensor HAVING count(*) > 1)")


# ---------------------------------------------------------------------------------------------
@dataclass
class Metric:
    name: str
    title: str
    definition: str
    sql: str
    columns: list[Column]
    section: str = "more"
    layout: str = "table"
    sampled: bool = False  # runs over smtp_sample when the data set is large
    post: Optional[Callable[[list[tuple]], list[tuple]]] = None
    total_row: bool = False  # its last row is a total

    def query(self, opts: Options, *, approx_ips: bool = False) -> str:
        """The SQL with the report's options filled in: {top}, {day}, {hour}, {tz}, {distinct}."""
        distinct = "approx_count_distinct(ip_key)" if approx_ips else "count(DISTINCT ip_key)"
        return self.sql.format(top=int(opts.top), distinct=distinct, **time_exprs(opts.tz))


def _daily_top(col: str, as_text: str, label: str) -> str:
    """Emails per day by msg_cube's `col`: its six values with most emails, the rest as 'other'."""
    return f"""WITH top AS (SELECT {col} FROM msg_cube GROUP BY 1 ORDER BY sum(emails) DESC, 1 LIMIT 6)
           SELECT day, CASE WHEN {col} IN (SELECT {col} FROM top) THEN {as_text} ELSE 'other' END AS {label},
                  sum(emails)::BIGINT AS emails
           FROM msg_cube GROUP BY ALL ORDER BY day, {label}"""


def campaign_os_sql(campaign: str, join: str = "") -> str:
    """campaign_os's SQL ({top} left to fill) where an email's campaign is SQL `campaign` over
    smtp_message m (plus `join`): the subject key here, the content campaigns in campaign_report."""
    return f"""WITH so AS (SELECT o.session, coalesce(f.os, 'unknown') AS os
                       FROM session_open o LEFT JOIN sig_os f ON f.tcp_sig = o.tcp_sig
                       WHERE o.tcp_sig IS NOT NULL),
                m AS (SELECT {campaign} AS campaign, so.os FROM smtp_message m {join}
                      JOIN so ON so.session = m.session),
                j AS (SELECT campaign, os, count(*) AS emails FROM m GROUP BY 1, 2),
                tot AS (SELECT campaign, sum(emails) AS total FROM j WHERE campaign IS NOT NULL
                        GROUP BY campaign ORDER BY total DESC, campaign LIMIT {{top}})
           SELECT j.campaign, j.os, j.emails, 100.0 * j.emails / tot.total AS pct
           FROM j JOIN tot ON tot.campaign = j.campaign
           ORDER BY tot.total DESC, j.campaign, j.emails DESC, j.os"""


C = Column
TOTAL_EMAILS = "(SELECT nullif(sum(emails), 0) FROM msg_cube)"

METRICS: list[Metric] = [
    Metric(
        "summary", "Collection summary",
        "Period: first and last day with any event (days of the report's time zone, --tz, UTC by default; "
        "the Time zone row names it). Days collected: distinct days with any event "
        "(sessions, mail, or sensor start/heartbeat). Emails: smtp.message events (messages accepted "
        "with 250). Emails/day: emails / days collected. Recipients: the accepted RCPTs of those "
        "messages. Recipients/spam: recipients / emails. Unique IPs, ASNs and country codes are counted "
        "over the sources that sent email and over all sources (every source that opened a session); "
        "an AS is counted by its number when one is known (named or not), otherwise by its name. "
        "Private, unknown and invalid addresses count as IPs but never as an ASN or country. "
        "Sources without AS/country: sources with no AS or no country, or not public.",
        """
        WITH days AS (SELECT day FROM msg_cube UNION SELECT day FROM sess_cube
                      UNION SELECT {day} FROM sensor_start UNION SELECT {day} FROM sensor_heartbeat),
        info AS (SELECT *, (asn IS NOT NULL OR as_name <> 'unknown') AS has_as FROM ip_info),
        senders AS (SELECT i.* FROM msg_by_ip m JOIN info i USING (ip_key)),
        sources AS (SELECT i.* FROM info i WHERE ip_key IN (SELECT ip_key FROM src_by_ip)
                                              OR ip_key IN (SELECT ip_key FROM msg_by_ip))
        SELECT (SELECT min(day) FROM days) AS first_day, (SELECT max(day) FROM days) AS last_day,
               (SELECT count(*) FROM days) AS days,
               (SELECT coalesce(sum(emails), 0) FROM msg_cube) AS emails,
               (SELECT coalesce(sum(emails), 0) FROM msg_cube) / nullif((SELECT count(*) FROM days), 0) AS per_day,
               (SELECT coalesce(sum(rcpts), 0) FROM msg_cube) AS rcpts,
               (SELECT sum(rcpts) / nullif(sum(emails), 0) FROM msg_cube) AS rcpts_per_spam,
               (SELECT count(*) FROM senders) AS ips_mail,
               (SELECT count(*) FROM sources) AS ips_all,
               (SELECT count(DISTINCT as_id) FROM senders WHERE kind = 'public' AND has_as) AS asns_mail,
               (SELECT count(DISTINCT as_id) FROM sources WHERE kind = 'public' AND has_as) AS asns_all,
               (SELECT count(DISTINCT country) FROM senders WHERE country <> '--') AS cc_mail,
               (SELECT count(DISTINCT country) FROM sources WHERE country <> '--') AS cc_all,
               (SELECT count(*) FROM sources WHERE kind <> 'public' OR country = '--' OR NOT has_as) AS unlocated,
               '{tz}' AS tz
        """,
        [C("first_day", "First day", "date"), C("last_day", "Last day", "date"),
         C("days", "Days collected", "int"), C("emails", "Total emails", "int"),
         C("per_day", "Emails/day", "num"), C("rcpts", "Recipients", "int"),
         C("rcpts_per_spam", "Recipients/spam", "num"),
         C("ips_mail", "Unique IPs (sent email)", "int"), C("ips_all", "Unique IPs (all sources)", "int"),
         C("asns_mail", "Unique ASNs (sent email)", "int"), C("asns_all", "Unique ASNs (all sources)", "int"),
         C("cc_mail", "Country codes (sent email)", "int"), C("cc_all", "Country codes (all sources)", "int"),
         C("unlocated", "Sources without AS/country (private, unknown)", "int"), C("tz", "Time zone")],
        section="talk", layout="vertical"),
    Metric(
        "ports", "Abused ports (by emails)",
        "Share of emails by the listener port the abuser connected to (even when the mail went through "
        "a tunnel), split by the protocol that carried it: the proxy protocol of the message's first "
        "`via` hop (socks4/4a/5 -> SOCKS, http -> HTTP), SMTP when sent to us directly. Service names "
        "come from port_names.",
        f"""SELECT c.listener_port AS port, proto_class(c.proxy) AS protocol,
                   coalesce(p.service, '?') AS service, sum(c.emails) AS emails,
                   100.0 * sum(c.emails) / {TOTAL_EMAILS} AS pct
            FROM msg_cube c LEFT JOIN port_names p ON p.port = c.listener_port
            GROUP BY ALL ORDER BY emails DESC, port, protocol""",
        [C("port", "Port", "text"), C("protocol", "Protocol"), C("service", "Service"),
         C("emails", "Emails", "int"), C("pct", "%", "pct")], section="talk"),
    Metric(
        "ports_sessions", "Abused ports (by sessions)",
        "Share of sessions (session.open events) by listener port, with the port's protocol and service "
        "(port_names). Counts every connection, including those that never sent a request or a message.",
        """SELECT c.listener_port AS port, coalesce(p.protocol, '?') AS protocol,
                  coalesce(p.service, '?') AS service, sum(c.sessions) AS sessions,
                  100.0 * sum(c.sessions) / (SELECT nullif(sum(sessions), 0) FROM sess_cube) AS pct
           FROM sess_cube c LEFT JOIN port_names p ON p.port = c.listener_port
           GROUP BY ALL ORDER BY sessions DESC, port""",
        [C("port", "Port", "text"), C("protocol", "Protocol"), C("service", "Service"),
         C("sessions", "Sessions", "int"), C("pct", "%", "pct")], section="talk"),
    Metric(
        "top_countries", "Top countries",
        "Emails and source IPs by the country of the source IP (offline enrichment). `--` gathers "
        "private, unknown and invalid addresses. Emails % is of all emails.",
        f"""WITH m AS (SELECT i.country, sum(m.emails) AS emails, count(*) AS ips
                       FROM msg_by_ip m JOIN ip_info i USING (ip_key) GROUP BY 1),
                 a AS (SELECT country, count(*) AS sources FROM ip_info
                       WHERE ip_key IN (SELECT ip_key FROM src_by_ip) GROUP BY 1)
            SELECT country, coalesce(m.emails, 0) AS emails, 100.0 * coalesce(m.emails, 0) / {TOTAL_EMAILS} AS pct,
                   coalesce(m.ips, 0) AS ips, coalesce(a.sources, 0) AS sources
            FROM m FULL JOIN a USING (country)
            ORDER BY emails DESC, sources DESC, country LIMIT {{top}}""",
        [C("country", "Country"), C("emails", "Emails", "int"), C("pct", "% emails", "pct"),
         C("ips", "IPs (sent email)", "int"), C("sources", "IPs (all sources)", "int")]),
    Metric(
        "top_asns", "Top ASNs",
        "Emails and source IPs by the AS of the source IP. AS numbers come from the installed IPFire "
        "location database or --asn-db; with the bundled data alone an AS is known by its name only.",
        f"""WITH m AS (SELECT i.as_id, sum(m.emails) AS emails, count(*) AS ips
                       FROM msg_by_ip m JOIN ip_info i USING (ip_key) GROUP BY 1),
                 a AS (SELECT as_id, min(asn) AS asn, min(as_name) AS as_name,
                              mode() WITHIN GROUP (ORDER BY country) AS country, count(*) AS sources FROM ip_info
                       WHERE ip_key IN (SELECT ip_key FROM src_by_ip) OR ip_key IN (SELECT ip_key FROM msg_by_ip)
                       GROUP BY 1)
            SELECT coalesce('AS' || a.asn::VARCHAR, '') AS asn, a.as_name, a.country,
                   coalesce(m.emails, 0) AS emails, 100.0 * coalesce(m.emails, 0) / {TOTAL_EMAILS} AS pct,
                   coalesce(m.ips, 0) AS ips, a.sources
            FROM a LEFT JOIN m USING (as_id)
            ORDER BY emails DESC, sources DESC, as_name, as_id LIMIT {{top}}""",
        [C("asn", "ASN"), C("as_name", "AS name"), C("country", "Country"), C("emails", "Emails", "int"),
         C("pct", "% emails", "pct"), C("ips", "IPs (sent email)", "int"), C("sources", "IPs (all sources)", "int")]),
    Metric(
        "per_sensor", "Per sensor",
        "For each sensor: days with sessions, sessions, depth-0 proxy requests, emails, recipients and "
        "distinct source IPs (sensor_ips).",
        """WITH s AS (SELECT sensor, count(DISTINCT day) AS days, sum(sessions) AS sessions FROM sess_cube GROUP BY 1),
                m AS (SELECT sensor, sum(emails) AS emails, sum(rcpts) AS rcpts FROM msg_cube GROUP BY 1),
                r AS (SELECT sensor, sum(requests) AS requests FROM req_cube WHERE depth = 0 GROUP BY 1),
                i AS (SELECT sensor, ips FROM sensor_ips)
           SELECT sensor, coalesce(s.days, 0) AS days, coalesce(s.sessions, 0) AS sessions,
                  coalesce(r.requests, 0) AS requests, coalesce(m.emails, 0) AS emails,
                  coalesce(m.rcpts, 0) AS rcpts, coalesce(i.ips, 0) AS ips
           FROM s FULL JOIN m USING (sensor) FULL JOIN r USING (sensor) FULL JOIN i USING (sensor)
           ORDER BY emails DESC, sessions DESC, sensor""",
        [C("sensor", "Sensor"), C("days", "Days", "int"), C("sessions", "Sessions", "int"),
         C("requests", "Proxy requests", "int"), C("emails", "Emails", "int"),
         C("rcpts", "Recipients", "int"), C("ips", "Source IPs", "int")]),
    Metric(
        "availability", "Sensor availability",
        AVAILABILITY_DEFINITION, AVAILABILITY_SQL,
        [C("sensor", "Sensor"), C("first_seen", "First seen"), C("last_seen", "Last seen"),
         C("hours_covered", "Hours covered", "num"), C("hours_up", "Hours up", "num"), C("up_pct", "% up", "pct"),
         C("gaps", "Gaps", "int"), C("longest_gap_min", "Longest gap (min)", "num"),
         C("interval_s", "Heartbeat interval (s)", "num")]),
    Metric(
        "availability_workers", "Worker availability",
        AVAILABILITY_WORKERS_DEFINITION, AVAILABILITY_WORKERS_SQL,
        [C("sensor", "Sensor"), C("worker", "Worker", "int"), C("first_seen", "First seen"),
         C("last_seen", "Last seen"), C("hours_covered", "Hours covered", "num"), C("hours_up", "Hours up", "num"),
         C("up_pct", "% up", "pct"), C("gaps", "Gaps", "int"), C("longest_gap_min", "Longest gap (min)", "num"),
         C("interval_s", "Heartbeat interval (s)", "num")]),
    Metric(
        "target_mx", "Target mail servers",
        "Emails by the mail server the abuser asked the proxy for (target_host of the message's tunnel); "
        "`(direct)` when the mail was sent to our SMTP listener directly.",
        """SELECT coalesce(nullif(lower(target_host), ''), '(direct)') AS target, count(*) AS emails,
                  100.0 * count(*) / sum(count(*)) OVER () AS pct, count(DISTINCT ip_key) AS ips
           FROM smtp_sample GROUP BY 1 ORDER BY emails DESC, target LIMIT {top}""",
        [C("target", "Target host"), C("emails", "Emails", "int"), C("pct", "%", "pct"),
         C("ips", "Source IPs", "int")], sampled=True),
    Metric(
        "rcpt_domains", "Recipient domains",
        "Accepted recipients (each RCPT of each email) by the domain part of the address.",
        """SELECT nullif(domain, '') AS domain, count(*) AS rcpts, 100.0 * count(*) / sum(count(*)) OVER () AS pct
           FROM (SELECT unnest(rcpt_domains) AS domain FROM smtp_sample)
           GROUP BY 1 ORDER BY rcpts DESC, domain LIMIT {top}""",
        [C("domain", "Domain"), C("rcpts", "Recipients", "int"), C("pct", "%", "pct")], sampled=True),
    Metric(
        "helo", "HELO names",
        "Emails by the HELO/EHLO name the client gave in the SMTP session that sent them.",
        """SELECT helo, count(*) AS emails, 100.0 * count(*) / sum(count(*)) OVER () AS pct,
                  count(DISTINCT ip_key) AS ips
           FROM smtp_sample GROUP BY 1 ORDER BY emails DESC, helo LIMIT {top}""",
        [C("helo", "HELO"), C("emails", "Emails", "int"), C("pct", "%", "pct"), C("ips", "Source IPs", "int")],
        sampled=True),
    Metric(
        "sender_domains", "Sender domains",
        "Emails by the domain of the envelope sender (MAIL FROM); empty for the null sender <>.",
        """SELECT nullif(sender_domain, '') AS domain, count(*) AS emails,
                  100.0 * count(*) / sum(count(*)) OVER () AS pct
           FROM smtp_sample GROUP BY 1 ORDER BY emails DESC, domain LIMIT {top}""",
        [C("domain", "Sender domain"), C("emails", "Emails", "int"), C("pct", "%", "pct")], sampled=True),
    Metric(
        "subjects", "Subjects",
        "Emails by Subject header (as decoded by the sensor), with the first and last day seen.",
        """SELECT subject, count(*) AS emails, 100.0 * count(*) / sum(count(*)) OVER () AS pct,
                  min({day}) AS first_day, max({day}) AS last_day
           FROM smtp_sample GROUP BY 1 ORDER BY emails DESC, subject LIMIT {top}""",
        [C("subject", "Subject"), C("emails", "Emails", "int"), C("pct", "%", "pct"),
         C("first_day", "First", "date"), C("last_day", "Last", "date")], sampled=True),
    Metric(
        "campaigns", "Campaigns",
        "A campaign is the emails whose Subject has the same template: whitespace runs collapsed and "
        "trimmed, digit runs replaced by #, ASCII letters lower-cased (macro subject_template); its hash is "
        "the first 16 hex digits of the template's md5 (macro campaign_key). Emails without a subject belong "
        "to no campaign. For each: an example subject (the smallest), emails, recipients, source IPs, "
        "distinct message bodies (sha256), sensors, first and last day. "
        "`spampots export --campaign HASH` writes a campaign's messages.",
        # The key is computed once per distinct subject and joined back (the regex chain per row
        # was most of this table's time); emails without a campaign drop out after the join.
        # MATERIALIZED: else DuckDB pulls the key's expression above the join, back to every row.
        """WITH k AS MATERIALIZED (SELECT subject, campaign_key(subject) AS campaign
                      FROM (SELECT DISTINCT subject FROM smtp_sample WHERE subject IS NOT NULL)),
                c AS (SELECT k.campaign, s.subject, s.n_rcpts, s.ip_key, s.sha256, s.sensor, {day} AS day
                      FROM smtp_sample s JOIN k ON k.subject = s.subject)
           SELECT campaign, min(subject) AS subject, count(*) AS emails, sum(n_rcpts) AS rcpts,
                  count(DISTINCT ip_key) AS ips, count(DISTINCT sha256) AS bodies,
                  count(DISTINCT sensor) AS sensors, min(day) AS first_day, max(day) AS last_day
           FROM c WHERE campaign IS NOT NULL
           GROUP BY campaign ORDER BY emails DESC, campaign LIMIT {top}""",
        [C("campaign", "Campaign"), C("subject", "Example subject"), C("emails", "Emails", "int"),
         C("rcpts", "Recipients", "int"), C("ips", "Source IPs", "int"), C("bodies", "Bodies", "int"),
         C("sensors", "Sensors", "int"), C("first_day", "First", "date"), C("last_day", "Last", "date")],
        sampled=True),
    Metric(
        "credentials", "Credentials tried",
        "Username/password pairs offered to the SOCKS5 (RFC 1929) and HTTP proxy authentication "
        "(proxy.request) and to SMTP AUTH (smtp.auth), with attempts and distinct source IPs.",
        """WITH c AS (SELECT proxy AS via, username, password, ip_key FROM proxy_request
                      WHERE username IS NOT NULL OR password IS NOT NULL
                      UNION ALL
                      SELECT 'smtp ' || lower(mechanism), username, password, ip_key FROM smtp_auth
                      WHERE username IS NOT NULL OR password IS NOT NULL)
           SELECT via AS protocol, username, password, count(*) AS attempts, count(DISTINCT ip_key) AS ips
           FROM c GROUP BY ALL ORDER BY attempts DESC, protocol, username, password LIMIT {top}""",
        [C("protocol", "Protocol"), C("username", "Username"), C("password", "Password"),
         C("attempts", "Attempts", "int"), C("ips", "Source IPs", "int")]),
    Metric(
        "proxy_chains", "Proxy chains",
        "Depth 0 is a request on our listener; depth n a request made inside the n-th tunnel (a chain of "
        "proxies, all played by us). Requests and emails at each depth; sessions: distinct sessions "
        "with a request at that depth.",
        """WITH r AS (SELECT depth, sum(requests) AS requests FROM req_cube GROUP BY 1),
                s AS (SELECT 0 AS depth, sum(requests) AS sessions FROM req_cube WHERE depth = 0 AND first_in_session
                      UNION ALL
                      SELECT depth, count(DISTINCT session) FROM proxy_request WHERE depth > 0 GROUP BY 1),
                m AS (SELECT depth, sum(emails) AS emails FROM msg_cube GROUP BY 1)
           SELECT depth, coalesce(r.requests, 0) AS requests, coalesce(s.sessions, 0) AS sessions,
                  coalesce(m.emails, 0) AS emails
           FROM r FULL JOIN s USING (depth) FULL JOIN m USING (depth) ORDER BY depth""",
        [C("depth", "Depth", "int"), C("requests", "Proxy requests", "int"), C("sessions", "Sessions", "int"),
         C("emails", "Emails", "int")]),
    Metric(
        "tls_sni", "TLS SNI in tunnels",
        "TLS ClientHellos seen inside tunnels, by server name indication (empty: no SNI).",
        """SELECT sni, count(*) AS hellos, count(DISTINCT ip_key) AS ips,
                  string_agg(DISTINCT tls_version, ' ') AS versions
           FROM tls_hello GROUP BY 1 ORDER BY hellos DESC, sni LIMIT {top}""",
        [C("sni", "SNI"), C("hellos", "ClientHellos", "int"), C("ips", "Source IPs", "int"),
         C("versions", "TLS versions")]),
    Metric(
        "limits", "Limits hit",
        "limit.hit events by limit name: how often a configured bound stopped a client "
        "(an event's count is the hits coalesced into it).",
        """SELECT "limit", sum(coalesce("count", 1))::BIGINT AS hits, count(DISTINCT session) AS sessions, count(DISTINCT ip_key) AS ips,
                  max(observed) AS max_observed
           FROM limit_hit GROUP BY 1 ORDER BY hits DESC, "limit" """,
        [C("limit", "Limit"), C("hits", "Hits", "int"), C("sessions", "Sessions", "int"),
         C("ips", "Source IPs", "int"), C("max_observed", "Largest observed", "num")]),
    Metric(
        "hours", "Sessions per hour of day ({tz})",
        "Sessions (session.open) by the hour of day they started, in the report's time zone.",
        """SELECT h.hour, coalesce(c.sessions, 0) AS sessions,
                  100.0 * coalesce(c.sessions, 0) / (SELECT nullif(sum(sessions), 0) FROM sess_hours) AS pct
           FROM range(24) h(hour) LEFT JOIN sess_hours c ON c.hour = h.hour ORDER BY 1""",
        [C("hour", "Hour", "int"), C("sessions", "Sessions", "int"), C("pct", "%", "pct")], section="detail"),
    Metric(
        "daily", "Emails and recipients per day",
        "Emails and recipients per day (in the report's time zone), and sessions that day.",
        """WITH m AS (SELECT day, sum(emails) AS emails, sum(rcpts) AS rcpts FROM msg_cube GROUP BY 1),
                s AS (SELECT day, sum(sessions) AS sessions FROM sess_cube GROUP BY 1)
           SELECT day, coalesce(emails, 0) AS emails, coalesce(rcpts, 0) AS rcpts, coalesce(sessions, 0) AS sessions
           FROM m FULL JOIN s USING (day) ORDER BY day""",
        [C("day", "Day", "date"), C("emails", "Emails", "int"), C("rcpts", "Recipients", "int"),
         C("sessions", "Sessions", "int")], section="detail"),
    Metric(
        "source_os", "Source operating systems (SYN fingerprints)",
        "Sessions whose SYN the sensor fingerprinted (session.open tcp_sig, p0f's raw signature; none "
        "behind a PROXY-protocol front end) by the operating system p0f's database gives for the "
        "signature (table sig_os; \"(fuzzy)\": p0f's fuzzy match, \"unknown\": no signature matched) and "
        "by the protocol of the listener port (port_names), with distinct source IPs. % is of "
        "fingerprinted sessions.",
        """WITH s AS (SELECT o.tcp_sig, o.ip_key, coalesce(p.protocol, '?') AS protocol
                      FROM session_open o LEFT JOIN port_names p ON p.port = o.listener_port
                      WHERE o.tcp_sig IS NOT NULL)
           SELECT coalesce(f.os, 'unknown') AS os, s.protocol AS protocol, count(*) AS sessions,
                  count(DISTINCT s.ip_key) AS ips,
                  100.0 * count(*) / (SELECT nullif(count(*), 0) FROM s) AS pct
           FROM s LEFT JOIN sig_os f ON f.tcp_sig = s.tcp_sig
           GROUP BY 1, 2 ORDER BY sessions DESC, os, protocol LIMIT {top}""",
        [C("os", "OS (p0f)"), C("protocol", "Protocol"), C("sessions", "Sessions", "int"),
         C("ips", "Source IPs", "int"), C("pct", "%", "pct")]),
    Metric(
        "campaign_os", "Campaigns by source operating system",
        "For the campaigns with the most fingerprinted emails (those of the Campaigns table, cmp-..., when the "
        "report computes them; else the subject key, macro campaign_key): the emails of each by the operating "
        "system of the session that carried them (as in source_os), and their share of the campaign's "
        "fingerprinted emails. Bots on compromised desktops and spammers' own servers show up as different systems.",
        campaign_os_sql("campaign_key(m.subject)"),
        [C("campaign", "Campaign"), C("os", "OS (p0f)"), C("emails", "Emails", "int"),
         C("pct", "% of campaign", "pct")]),
    # The data of the per-day stacked charts and of the map (section "series": charts, JSON, CSV).
    Metric(
        "daily_protocol", "Emails per day by protocol",
        "Emails per day (in the report's time zone), split by the protocol that carried them (as in the ports table: SOCKS, HTTP, "
        "or SMTP when sent to us directly).",
        """SELECT day, proto_class(proxy) AS protocol, sum(emails)::BIGINT AS emails
           FROM msg_cube GROUP BY ALL ORDER BY day, protocol""",
        [C("day", "Day", "date"), C("protocol", "Protocol"), C("emails", "Emails", "int")], section="series"),
    Metric(
        "daily_port", "Emails per day by port",
        "Emails per day (in the report's time zone), split by the listener port the abuser connected to: the six ports with most "
        "emails, the rest as `other`.",
        _daily_top("listener_port", "listener_port::VARCHAR", "port"),
        [C("day", "Day", "date"), C("port", "Port"), C("emails", "Emails", "int")], section="series"),
    Metric(
        "daily_sensor", "Emails per day by sensor",
        "Emails per day (in the report's time zone), split by the sensor that captured them: the six sensors with most emails, the "
        "rest as `other`.",
        _daily_top("sensor", "sensor", "sensor"),
        [C("day", "Day", "date"), C("sensor", "Sensor"), C("emails", "Emails", "int")], section="series"),
    Metric(
        "country_sources", "Sources by country",
        "Every country with a source (an IP that opened a session or sent email), with its number of "
        "source IPs and emails; private, unknown and invalid addresses (`--`) are left out. Drawn as a map.",
        """SELECT i.country, count(*) AS sources, coalesce(sum(m.emails), 0)::BIGINT AS emails
           FROM ip_info i LEFT JOIN msg_by_ip m USING (ip_key)
           WHERE i.country <> '--' AND (i.ip_key IN (SELECT ip_key FROM src_by_ip) OR m.ip_key IS NOT NULL)
           GROUP BY 1 ORDER BY sources DESC, country""",
        [C("country", "Country"), C("sources", "Source IPs", "int"), C("emails", "Emails", "int")],
        section="series"),
]

# ---------------------------------------------------------------------------------------------
# The talk's sequels: destination ccTLDs, weekly/monthly series and their splits, per-ISP and
# per-network tables (from the sensors' [sensor] isp/network labels), crossed tables.
# Recipients per TLD (n), and the TLD's kind. The TLD is the last label of the domain (lower-cased
# by email_domain, trailing dots dropped); it is worked out once per distinct domain (domains
# repeat: at 1M emails, per recipient it took 9 s, per domain under 1 s).
RCPT_TLD = """
SELECT CASE WHEN regexp_full_match(tld, '[a-z][a-z]') THEN 'country'
            WHEN regexp_full_match(tld, '[a-z][a-z0-9-][a-z0-9-]+') THEN 'generic' ELSE 'none' END AS kind,
       tld, sum(n) AS n
FROM (SELECT CASE WHEN rtrim(domain, '.') LIKE '%.%' THEN split_part(rtrim(domain, '.'), '.', -1) ELSE '' END AS tld, n
      FROM (SELECT domain, count(*) AS n FROM (SELECT unnest(rcpt_domains) AS domain FROM smtp_sample) GROUP BY domain))
GROUP BY 1, 2"""
TLD_DEFINITION = (
    "The TLD of a recipient is the last label of its address's domain (lower-cased, trailing dots dropped). "
    "Two ASCII letters: a country code (ccTLD, as written: .uk, .eu and .su count as codes too). Three or "
    "more letters, digits or hyphens starting with a letter (com, info, xn--p1ai): generic. Anything else "
    "(no domain, no dot, an address literal, a number): none.")


def _series(period: str) -> str:
    """Emails, recipients and sessions per `period` (an expression over the cubes' `day`)."""
    return f"""WITH m AS (SELECT {period} AS period, sum(emails) AS emails, sum(rcpts) AS rcpts
                      FROM msg_cube GROUP BY 1),
                s AS (SELECT {period} AS period, sum(sessions) AS sessions FROM sess_cube GROUP BY 1)
           SELECT period, coalesce(emails, 0) AS emails, coalesce(rcpts, 0) AS rcpts,
                  coalesce(sessions, 0) AS sessions
           FROM m FULL JOIN s USING (period) ORDER BY period"""


def _series_split(period: str) -> str:
    """The series of `period` split three ways, one row per (period, split, value)."""
    msg = [f"SELECT {period} AS period, '{k}' AS split, {v} AS value, sum(emails) AS emails, sum(rcpts) AS rcpts "
           "FROM msg_cube GROUP BY 1, 2, 3" for k, v in (("protocol", "proto_class(proxy)"),
                                                          ("port", "CAST(listener_port AS VARCHAR)"),
                                                          ("sensor", "sensor"))]
    sess = [f"SELECT {period} AS period, '{k}' AS split, {v} AS value, sum(c.sessions) AS sessions "
            "FROM sess_cube c LEFT JOIN port_names p ON p.port = c.listener_port GROUP BY 1, 2, 3"
            for k, v in (("protocol", "coalesce(p.protocol, '?')"), ("port", "CAST(c.listener_port AS VARCHAR)"),
                         ("sensor", "c.sensor"))]
    return f"""WITH m AS ({' UNION ALL '.join(msg)}),
                s AS ({' UNION ALL '.join(sess)})
           SELECT period, split, value, coalesce(emails, 0) AS emails, coalesce(rcpts, 0) AS rcpts,
                  coalesce(sessions, 0) AS sessions
           FROM m FULL JOIN s USING (period, split, value)
           ORDER BY period, split, emails DESC, sessions DESC, value"""


SERIES_COLUMNS = [C("emails", "Emails", "int"), C("rcpts", "Recipients", "int"), C("sessions", "Sessions", "int")]
SPLIT_COLUMNS = [C("split", "Split"), C("value", "Value")] + SERIES_COLUMNS
SPLIT_DEFINITION = (
    "split by protocol, by listener port and by sensor (each a group of rows; each group adds up to the "
    "period's totals). Emails' protocol is the one that carried the mail (as in `ports`); sessions' "
    "protocol is what the listener port speaks (port_names, as in `ports_sessions`).")
WEEK = "CAST(date_trunc('week', day) AS DATE)"
MONTH = "CAST(date_trunc('month', day) AS DATE)"


def _per_label(keys: list[str]) -> str:
    """Sensors, sessions, emails, recipients and source IPs per value of sensor_labels `keys`."""
    k = ", ".join(keys)
    return f"""WITH n AS (SELECT {k}, count(DISTINCT sensor) AS sensors FROM sensor_labels GROUP BY {k}),
                s AS (SELECT {k}, sum(c.sessions) AS sessions FROM sess_cube c JOIN sensor_labels l USING (sensor, day)
                      GROUP BY {k}),
                m AS (SELECT {k}, sum(c.emails) AS emails, sum(c.rcpts) AS rcpts
                      FROM msg_cube c JOIN sensor_labels l USING (sensor, day) GROUP BY {k}),
                i AS (SELECT {k}, count(DISTINCT ip_key) AS ips FROM label_ips GROUP BY {k})
           SELECT {k}, n.sensors, coalesce(s.sessions, 0) AS sessions, coalesce(m.emails, 0) AS emails,
                  coalesce(m.rcpts, 0) AS rcpts, coalesce(i.ips, 0) AS ips
           FROM n LEFT JOIN s USING ({k}) LEFT JOIN m USING ({k}) LEFT JOIN i USING ({k})
           ORDER BY emails DESC, sessions DESC, {k}"""


LABEL_COLUMNS = [C("sensors", "Sensors", "int"), C("sessions", "Sessions", "int"), C("emails", "Emails", "int"),
                 C("rcpts", "Recipients", "int"), C("ips", "Source IPs", "int")]

METRICS.extend([
    Metric(
        "rcpt_cctld", "Recipients by destination country code (ccTLD)",
        "Accepted recipients (each RCPT of each email) by the TLD of their domain: one row per country-code "
        "TLD, one row `generic` for all generic TLDs together and one row `(none)`; % of all recipients. "
        + TLD_DEFINITION,
        f"""SELECT CASE kind WHEN 'country' THEN '.' || tld WHEN 'generic' THEN 'generic' ELSE '(none)' END AS tld,
                   sum(n) AS rcpts, 100.0 * sum(n) / sum(sum(n)) OVER () AS pct
            FROM ({RCPT_TLD}) GROUP BY 1 ORDER BY rcpts DESC, tld LIMIT {{top}}""",
        [C("tld", "TLD"), C("rcpts", "Recipients", "int"), C("pct", "%", "pct")], sampled=True),
    Metric(
        "rcpt_brazil", "Brazilian recipients against foreign ones",
        "Accepted recipients by the TLD of their domain: .br (Brazil); another country code (foreign); a "
        "generic TLD (.com and the like: the country is not known from the address); none. "
        + TLD_DEFINITION,
        f"""WITH g AS (SELECT CASE WHEN kind = 'country' AND tld = 'br' THEN 1 WHEN kind = 'country' THEN 2
                                   WHEN kind = 'generic' THEN 3 ELSE 4 END AS k, sum(n) AS n
                       FROM ({RCPT_TLD}) GROUP BY 1),
                 l AS (SELECT 1 AS k, '.br (Brazil)' AS label UNION ALL SELECT 2, 'Other country codes (foreign)'
                       UNION ALL SELECT 3, 'Generic TLDs (country unknown)' UNION ALL SELECT 4, 'No TLD'
                       UNION ALL SELECT 5, 'Total')
            SELECT l.label AS destination,
                   CASE WHEN l.k = 5 THEN (SELECT coalesce(sum(n), 0) FROM g) ELSE coalesce(g.n, 0) END AS rcpts,
                   100.0 * CASE WHEN l.k = 5 THEN (SELECT sum(n) FROM g) ELSE coalesce(g.n, 0) END
                         / (SELECT nullif(sum(n), 0) FROM g) AS pct
            FROM l LEFT JOIN g USING (k) ORDER BY l.k""",
        [C("destination", "Destination"), C("rcpts", "Recipients", "int"), C("pct", "%", "pct")],
        sampled=True, total_row=True),
    Metric(
        "weekly", "Emails and recipients per week",
        "Emails, recipients and sessions per week (Monday to Sunday, in the report's time zone), "
        "named by its Monday.",
        _series(WEEK), [C("period", "Week", "date")] + SERIES_COLUMNS, section="detail"),
    Metric(
        "monthly", "Emails and recipients per month",
        "Emails, recipients and sessions per calendar month (in the report's time zone), named by its first day.",
        _series(MONTH), [C("period", "Month", "date")] + SERIES_COLUMNS),
    Metric(
        "daily_split", "Per day, by protocol, port and sensor",
        "The `daily` series " + SPLIT_DEFINITION,
        _series_split("day"), [C("period", "Day", "date")] + SPLIT_COLUMNS, section="detail"),
    Metric(
        "weekly_split", "Per week, by protocol, port and sensor",
        "The `weekly` series " + SPLIT_DEFINITION,
        _series_split(WEEK), [C("period", "Week", "date")] + SPLIT_COLUMNS, section="detail"),
    Metric(
        "monthly_split", "Per month, by protocol, port and sensor",
        "The `monthly` series " + SPLIT_DEFINITION,
        _series_split(MONTH), [C("period", "Month", "date")] + SPLIT_COLUMNS, section="detail"),
    Metric(
        "per_isp", "Per ISP",
        "For each ISP label (`[sensor] isp` of the sensors, see sensor_labels): its sensors, sessions, "
        "emails, recipients and distinct source IPs (of every session, label_ips).",
        _per_label(["isp"]), [C("isp", "ISP")] + LABEL_COLUMNS),
    Metric(
        "per_network", "Per network",
        "As `per_isp`, for each pair of ISP and network label (`[sensor] network`).",
        _per_label(["isp", "network"]), [C("isp", "ISP"), C("network", "Network")] + LABEL_COLUMNS),
    Metric(
        "country_protocol", "Countries by proxy protocol",
        "Emails by the country of the source IP, crossed with the protocol that carried them (as in "
        "`ports`: SOCKS, HTTP, or SMTP when sent to us directly): emails, % of all emails, and the "
        "share of the country's emails each protocol carried (the three add up to 100 unless some "
        "other protocol carried mail); source IPs that sent them.",
        """WITH m AS (SELECT i.country, proto_class(s.proxy) AS protocol, s.ip_key
                      FROM smtp_sample s JOIN ip_info i USING (ip_key))
           SELECT country, count(*) AS emails, 100.0 * count(*) / sum(count(*)) OVER () AS pct,
                  100.0 * count(*) FILTER (WHERE protocol = 'SOCKS') / count(*) AS socks,
                  100.0 * count(*) FILTER (WHERE protocol = 'HTTP') / count(*) AS http,
                  100.0 * count(*) FILTER (WHERE protocol = 'SMTP') / count(*) AS smtp,
                  count(DISTINCT ip_key) AS ips
           FROM m GROUP BY country ORDER BY emails DESC, country LIMIT {top}""",
        [C("country", "Country"), C("emails", "Emails", "int"), C("pct", "% emails", "pct"),
         C("socks", "% SOCKS", "pct"), C("http", "% HTTP", "pct"), C("smtp", "% SMTP (direct)", "pct"),
         C("ips", "Source IPs", "int")], sampled=True),
    Metric(
        "as_port", "ASes by port",
        "Emails by the AS of the source IP crossed with the listener port the abuser connected to (the "
        "port's protocol from port_names): the top pairs, with % of all emails and the source IPs.",
        """WITH m AS (SELECT i.as_id, i.asn, i.as_name, s.listener_port, s.ip_key
                      FROM smtp_sample s JOIN ip_info i USING (ip_key)),
                c AS (SELECT as_id, min(asn) AS asn, min(as_name) AS as_name, listener_port, count(*) AS emails,
                             count(DISTINCT ip_key) AS ips
                      FROM m GROUP BY as_id, listener_port)
           SELECT coalesce('AS' || c.asn::VARCHAR, '') AS asn, c.as_name, c.listener_port AS port,
                  coalesce(p.protocol, '?') AS protocol, c.emails,
                  100.0 * c.emails / sum(c.emails) OVER () AS pct, c.ips
           FROM c LEFT JOIN port_names p ON p.port = c.listener_port
           ORDER BY emails DESC, as_name, port, as_id LIMIT {top}""",
        [C("asn", "ASN"), C("as_name", "AS name"), C("port", "Port", "text"), C("protocol", "Protocol"),
         C("emails", "Emails", "int"), C("pct", "% emails", "pct"), C("ips", "Source IPs", "int")], sampled=True),
])

OUTBOUND_DEFINITION = (
    "Outbound attempts per proxy protocol. Each proxy.request on our listener (depth 0) is one attempt: "
    "target port 25 -> to 25/TCP; else an HTTP absolute-form GET -> GET; else -> to other ports. A session "
    "with a protocol.error at depth 0 and no proxy.request at all is one `errors` attempt, of SOCKS or HTTP "
    "by the error kind's prefix (socks4/socks4a/socks5 -> SOCKS, http -> HTTP) and otherwise by what the "
    "listener port speaks (port_names); errors on SMTP listeners are not outbound attempts. "
    "Counting (--first-per): connection = the first request of each session (default); source-ip = the "
    "first attempt of each source IP per protocol; none = every request.")

OUTBOUND_LABELS = {"to 25/TCP": "Out to 25/TCP", "to other ports": "Out to other ports",
                   "GET": "GET (usually web)", "errors": "Errors"}


# ---------------------------------------------------------------------------------------------
LISTENERS = """
SELECT l.port::INTEGER AS port,
       mode() WITHIN GROUP (ORDER BY CASE lower(l.kind) WHEN 'socks' THEN 'SOCKS' WHEN 'http' THEN 'HTTP'
                 WHEN 'smtp' THEN 'SMTP' WHEN 'submission' THEN 'SMTP' WHEN 'smtps' THEN 'SMTP' END) AS protocol,
       mode() WITHIN GROUP (ORDER BY lower(l.kind)) AS kind
FROM (SELECT unnest(from_json(listeners, '[{"port": "INTEGER", "kind": "VARCHAR"}]')) AS l FROM sensor_start_all)
WHERE l.port IS NOT NULL GROUP BY 1
"""


def port_table(con: duckdb.DuckDBPyConnection, ports: dict[int, PortInfo]) -> None:
    """port_names(port, protocol, service): what each port speaks and is called.

    Protocol: the kind the sensors' own listeners declared for that port (sensor.start), else
    the port table's. Service: the port table's name, else the listener kind (so a sensor run
    with --port-offset still shows "socks" for 21080).
    """
    rows = sorted(ports.values(), key=lambda p: p.port)
    con.register("_ports", pa.table({"port": [p.port for p in rows], "protocol": [p.protocol for p in rows],
                                     "service": [p.service for p in rows]}))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE port_names AS
        WITH l AS ({LISTENERS})
        SELECT port::INTEGER AS port, coalesce(l.protocol, t.protocol) AS protocol,
               coalesce(t.service, l.kind) AS service
        FROM _ports t FULL JOIN l USING (port)""")
    con.unregister("_ports")


def time_exprs(tz: str) -> dict[str, str]:
    """The SQL for `day` and `hour` of a row (its `ts`, naive UTC) in zone `tz`.

    UTC reads the lake's own `day` partition column; another zone converts each `ts`
    (macro utc_to_local), so only a report that asks for a zone pays for it.
    """
    day = schema.local_day(tz)  # raises ValueError on a name that cannot be one
    if tz == "UTC":
        return {"day": day, "hour": "hour(ts)", "tz": tz}
    return {"day": day, "hour": f"hour(utc_to_local(ts, '{tz}'))", "tz": tz}


def zone_problem(con: duckdb.DuckDBPyConnection, tz: str) -> Optional[str]:
    """None if the engine knows zone `tz`; else why not. The command line checks the name against
    the system's tz database, but DuckDB (ICU) and Spark (Java) carry their own."""
    if tz == "UTC":
        return None
    try:
        probe = "SELECT CAST('2000-01-01 00:00:00' AS TIMESTAMP) AS ts"
        con.execute(f"SELECT {time_exprs(tz)['hour']} FROM ({probe})").fetchall()
    except Exception as e:  # duckdb.Error, Spark's AnalysisException and kin
        return f"not a time zone this engine knows ({str(e).splitlines()[0][:120]})"
    return None


def bases_for(metrics: list["Metric"]) -> list[str]:
    """The base tables the given metrics use, in build order (some are always built: enrichment,
    sampling and the outbound attempts read them)."""
    always = {"msg_cube", "msg_by_ip", "src_by_ip", "req_cube"}
    return [name for name in BASES
            if name in always or any(re.search(rf"\b{name}\b", m.sql) for m in metrics)]


def build_bases(con: duckdb.DuckDBPyConnection, timings: dict[str, float], opts: Options,
                metrics: list["Metric"], step: Step = _no_step) -> bool:
    """Create the base tables the given metrics use; True if sensor_ips had to be estimated.

    Separate GROUP BYs beat one GROUPING SETS pass here: the per-IP grouping is the costly one
    and carries no other aggregate; the cubes group few, cheap columns.
    """
    sessions = con.execute("SELECT count(*) FROM session_open").fetchone()[0]
    distinct = "count(DISTINCT ip_key)" if sessions <= opts.exact_limit else "approx_count_distinct(ip_key)"
    for name in bases_for(metrics):
        step(f"base table {name}")
        t = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {BASES[name][1].format(distinct=distinct, **time_exprs(opts.tz))}")
        timings[name] = time.perf_counter() - t
    return sessions > opts.exact_limit


def build_ip_info(con: duckdb.DuckDBPyConnection, enricher: Enricher) -> None:
    """ip_info(ip_key, ip, asn, as_name, country, kind, as_id): one row per source key.

    Two spellings of an IPv6 address share a key: the smallest spelling is the one looked up.
    On DuckDB with a cache file, the cache is joined in SQL and only the addresses it lacks go
    through Python (a warm cache costs one hash join, not a round trip of every address).
    """
    con.execute("""CREATE OR REPLACE TEMP TABLE ip_keys AS
        SELECT ip_key, ip_str(ip_key) AS ip FROM (SELECT ip_key FROM msg_by_ip UNION SELECT ip_key FROM src_by_ip)""")
    if con.execute("SELECT count(*) FROM ip_keys WHERE ip IS NULL").fetchone()[0]:  # some not IPv4: scan for them
        con.execute(f"""CREATE OR REPLACE TEMP TABLE ip_keys AS
            WITH v6 AS (SELECT ip_key, min(ip) AS ip FROM ({V6_NAMES}) GROUP BY ip_key)
            SELECT k.ip_key, coalesce(k.ip, v6.ip) AS ip FROM ip_keys k LEFT JOIN v6 USING (ip_key)""")
    cache = enricher.cache_path if isinstance(con, duckdb.DuckDBPyConnection) else None
    if cache is not None:
        src = f"read_parquet('{str(cache).replace(chr(39), chr(39) * 2)}')"
        lacking = "SELECT ip FROM ip_keys WHERE ip IS NOT NULL"
        if cache.exists():
            lacking += f" AND ip NOT IN (SELECT ip FROM {src} WHERE ip IS NOT NULL)"
        missing = [r[0] for r in con.execute(lacking).fetchall()]
        if missing:
            enricher.enrich(missing)  # looks them up and adds them to the cache file
    if cache is not None and cache.exists():
        info = src
    else:
        con.register("_ip_info", enricher.enrich(
            [r[0] for r in con.execute("SELECT ip FROM ip_keys WHERE ip IS NOT NULL").fetchall()]))
        info = "_ip_info"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ip_info AS
        SELECT k.ip_key, c.ip, c.asn, c.as_name, c.country, c.kind,
               CASE WHEN c.asn IS NOT NULL THEN 'AS' || c.asn::VARCHAR ELSE c.as_name END AS as_id
        FROM ip_keys k JOIN {info} c ON c.ip = k.ip""")
    if info == "_ip_info":
        con.unregister("_ip_info")


def sample_buckets(emails: int, exact_limit: int) -> int:
    """How many of the schema.BUCKETS session buckets the heavy tables read for `emails` emails.

    All of them up to `exact_limit` emails (exact); above, the fewest that still hold about
    `exact_limit` emails, so the work of those tables stays flat instead of dropping at the limit;
    at 64 x the limit and beyond, the lake's stored sample (1 bucket in 64: BUCKETS / 64, as many
    rows as the bound would give there, but read without touching the other rows), which then
    grows with the data. Rows read (expected): at least min(n, L), and never fewer for a bigger n
    by more than one bucket's worth (n / BUCKETS).
    """
    if emails <= exact_limit:
        return schema.BUCKETS
    stored = schema.BUCKETS // schema.SAMPLED["smtp_message"]
    k = -(-schema.BUCKETS * max(exact_limit, 0) // emails)  # ceil
    return min(schema.BUCKETS, max(k, stored))


def _computed(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """True if the lake computes derived `column` of `table` at read time (lake.connect says so)."""
    if not isinstance(con, duckdb.DuckDBPyConnection):
        return False
    try:
        return bool(con.execute('SELECT count(*) FROM computed_columns WHERE "table" = ? AND "column" = ?',
                                [table, column]).fetchone()[0])
    except duckdb.CatalogException:  # a connection not made by lake.connect
        return False


def build_sample(con: duckdb.DuckDBPyConnection, opts: Options) -> tuple[str, float]:
    """smtp_sample: every message up to opts.exact_limit, else the sessions of some sample buckets.

    Returns (note, scale): counts of the sampled tables are multiplied by `scale`.
    """
    emails = con.execute("SELECT coalesce(sum(emails), 0) FROM msg_cube").fetchone()[0]
    k = sample_buckets(emails, opts.exact_limit)
    per = schema.SAMPLED["smtp_message"]
    if k >= schema.BUCKETS:
        con.execute("CREATE OR REPLACE TEMP VIEW smtp_sample AS SELECT * FROM smtp_message")
        return "", 1.0
    what = f"a sample of {k} in {schema.BUCKETS} sessions ({100 * k / schema.BUCKETS:.3g}%, by session id)"
    if k * per <= schema.BUCKETS:  # the lake keeps these sessions as a table of their own
        src, what = "SELECT * FROM smtp_message_sample", f"the lake's sample of 1 session in {per}"
    elif _computed(con, "smtp_message", "session_bucket"):  # parts older than the column: one md5 pass
        con.execute(f"""CREATE OR REPLACE TEMP TABLE sample_sessions AS SELECT DISTINCT session FROM smtp_message
                        WHERE md5_number_lower(session) % {schema.BUCKETS} < {k}""")
        src = "SELECT * FROM smtp_message WHERE session IN (SELECT session FROM sample_sessions)"
    else:
        src = f"SELECT * FROM smtp_message WHERE session_bucket < {k}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW smtp_sample AS {src}")
    n = con.execute("SELECT count(*) FROM smtp_sample").fetchone()[0]
    if not n:
        con.execute("CREATE OR REPLACE TEMP VIEW smtp_sample AS SELECT * FROM smtp_message")
        return "", 1.0
    note = (f"Estimated from {what} ({n:,} of {emails:,} emails, above --exact-limit {opts.exact_limit:,}): "
            "email and recipient counts scaled up, IP counts as seen in the sample.")
    return note, emails / n


def run(con: duckdb.DuckDBPyConnection, *, ports: dict[int, PortInfo], enricher: Enricher,
        opts: Options = Options(), step: Step = _no_step) -> Report:
    """Build the base tables and run every metric.

    `con`: a DuckDB connection (lake.Lake.connect), or a spark.SparkConnection, which offers the
    same execute/register/unregister and translates the SQL (dialect.py).
    `step(name, total)`: told as each step starts (progress.steps shows them).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    port_table(con, ports)
    selected = [m for m in METRICS if m.section == "talk" or not opts.talk_only]
    sampled = any(m.sampled for m in selected)
    fingerprinted = any(re.search(r"\bsig_os\b", m.sql) for m in selected)
    step("counting sessions", len(bases_for(selected)) + 3 + sampled + fingerprinted + len(selected))
    approx_ips = build_bases(con, timings, opts, selected, step)
    fp_source = ""
    if fingerprinted:
        step("SYN fingerprints")
        t = time.perf_counter()
        db = fingerprints.load_db(opts.p0f_db)
        fingerprints.build_sig_os(con, db)
        fp_source = fingerprints.db_source(db)
        timings["fingerprints"] = time.perf_counter() - t
    step("enriching source IPs")
    t = time.perf_counter()
    build_ip_info(con, enricher)
    timings["enrichment"] = time.perf_counter() - t
    step("outbound attempts")
    t = time.perf_counter()
    con.execute(f"CREATE OR REPLACE TEMP TABLE attempts AS {attempts_sql(opts.first_per)}")
    timings["attempts"] = time.perf_counter() - t
    sample_note, scale = "", 1.0
    if sampled:
        step("sample")
        t = time.perf_counter()
        sample_note, scale = build_sample(con, opts)
        timings["sample"] = time.perf_counter() - t

    results: list[Result] = []
    for m in selected:
        step(f"table {m.name}")
        t = time.perf_counter()
        rows = con.execute(m.query(opts, approx_ips=approx_ips)).fetchall()
        if m.sampled and scale != 1.0:
            rows = [tuple(round(v * scale) if c.kind == "int" and c.key in ("emails", "rcpts") and v is not None
                          else v for v, c in zip(r, m.columns)) for r in rows]
        timings[m.name] = time.perf_counter() - t
        note = sample_note if m.sampled else ""
        if m.name == "per_sensor" and approx_ips:
            note = "Source IPs per sensor are HyperLogLog estimates (about 2% error)."
        results.append(Result(m.name, m.title.format(tz=opts.tz), m.definition, m.columns, rows, layout=m.layout,
                              section=m.section, note=note, total_row=m.total_row))
        if m.name == "ports_sessions":
            results.extend(outbound_results(con, opts.first_per))
    timings["total"] = time.perf_counter() - t0
    meta = {"first_per": opts.first_per, "enrichment": enricher.source, "fingerprints": fp_source,
            "timings": timings, "tz": opts.tz,
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return Report(results, meta)


def outbound_results(con: duckdb.DuckDBPyConnection, first_per: str) -> list[Result]:
    rows = con.execute("SELECT class, category, requests FROM attempts").fetchall()
    by_class: dict[str, dict[str, int]] = {}
    for cls, cat, n in rows:
        by_class.setdefault(cls, {})[cat] = n
    out = []
    note = {"connection": "Only the first request of each connection (session) is counted.",
            "source-ip": "Only the first attempt of each source IP is counted.",
            "none": "Every request is counted."}[first_per]
    for cls in ["HTTP", "SOCKS"] + sorted(set(by_class) - {"HTTP", "SOCKS"}):
        counts = by_class.get(cls, {})
        total = sum(counts.values())
        cats = [c for c in CATEGORIES if c != "GET" or cls == "HTTP" or counts.get(c)]
        body = [(OUTBOUND_LABELS[c], counts.get(c, 0), 100.0 * counts.get(c, 0) / total if total else 0.0)
                for c in cats]
        body.append(("Total", total, 100.0 if total else 0.0))
        out.append(Result(f"outbound_{cls.lower()}", f"Outbound attempts: {cls}", OUTBOUND_DEFINITION,
                          [Column("type", "Type", translate=True), Column("requests", "Requests", "int"),
                           Column("pct", "%", "pct")], body, section="talk", note=note, total_row=True))
    return out
