"""`spampots policy port25`: what Port 25 Management at the sensor's ISP would have prevented.

Named DuckDB queries over the lake views (analysis/lake.py), each with its definition next
to it; they return the analysis Report/Result objects so analysis/render.py formats them.
docs/policy.md repeats every definition.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from spampots.analysis import metrics
from spampots.analysis.enrich import Enricher
from spampots.analysis.metrics import LISTENERS, Column, Report, Result

PREVENTED = ("tunnel to 25/TCP", "open relay on our 25/TCP")
# Classification of each email (smtp.message), first matching rule wins.
MAIL_CATEGORY = """
CASE WHEN m.depth >= 1 AND m.target_port = 25 THEN 'tunnel to 25/TCP'
     WHEN m.submission THEN 'authenticated submission'
     WHEN m.depth = 0 AND coalesce(k.kind = 'smtp', m.listener_port = 25) THEN 'open relay on our 25/TCP'
     WHEN m.depth >= 1 AND m.target_port = 587 THEN 'tunnel to 587/TCP'
     WHEN m.depth >= 1 AND m.target_port = 465 THEN 'tunnel to 465/TCP'
     WHEN m.depth >= 1 THEN 'tunnel to other ports'
     ELSE 'direct SMTP on other ports' END"""
REQUEST_CATEGORY = """
CASE WHEN target_port = 25 THEN 'tunnel to 25/TCP' WHEN lower(command) = 'get' THEN 'web GET'
     WHEN target_port = 587 THEN 'tunnel to 587/TCP' WHEN target_port = 465 THEN 'tunnel to 465/TCP'
     ELSE 'tunnel to other ports' END"""
OUTCOME = f"CASE WHEN category IN {PREVENTED!r} THEN 'prevented' ELSE 'not prevented' END"

# Base tables, built once; every table below is a small GROUP BY over p25_facts. Each large table is
# read once and grouped by hash on few keys (no per-row window or sort): at 10M emails the four bases
# hold a few million rows, not one per email and session.
BASES: dict[str, tuple[str, str]] = {
    "p25_kinds": (
        "What each listener port is (sensor.start listeners: socks, http, smtp, submission, smtps).",
        LISTENERS),
    "p25_mail": (
        "Every email (smtp.message) with its category: depth >= 1 and target_port 25 -> 'tunnel to 25/TCP'; "
        "submission true -> 'authenticated submission'; depth 0 on an smtp listener (the sensor.start kind, "
        "or port 25 when no sensor.start names the port) -> 'open relay on our 25/TCP'; depth >= 1 to 587, "
        "465 or any other port -> 'tunnel to 587/TCP', 'tunnel to 465/TCP', 'tunnel to other ports'; "
        "anything else -> 'direct SMTP on other ports'. Its protocol is that of the first via hop (SMTP if none). "
        "Kept grouped by session, day, depth, category and protocol: emails, recipients and the first ts.",
        f"""SELECT m.session, m.ip_key, m.sensor, m.day, m.depth,
                   proto_class(m.proxy) AS proxy_class, {MAIL_CATEGORY} AS category,
                   count(*) AS emails, sum(m.n_rcpts) AS rcpts, min(m.ts) AS ts
            FROM smtp_message m LEFT JOIN p25_kinds k ON k.port = m.listener_port
            GROUP BY ALL"""),
    "p25_sessions": (
        "Every session that sent mail or asked a proxy for something, in one category: that of its first "
        "email, else that of its deepest proxy.request (in a chain, the hop that leaves: target_port 25 -> "
        "'tunnel to 25/TCP', command GET -> 'web GET', 587/465 -> their tunnel, else 'tunnel to other ports'). "
        "Its protocol is that of its outermost hop (the depth-0 request; SMTP for direct mail). Sessions with "
        "only errors or nothing at all are not uses and are left out.",
        # first email: smallest (prio 0, deepest, earliest); outermost hop: smallest (depth, request first, ts)
        f"""WITH u AS (
              SELECT session, ip_key, sensor, day, ts, depth, 0 AS prio, proxy_class, category FROM p25_mail
              UNION ALL
              SELECT session, ip_key, sensor, day, ts, depth, 1, proto_class(proxy), {REQUEST_CATEGORY}
              FROM proxy_request),
            s AS (
              SELECT arg_min({{'ip_key': ip_key, 'sensor': sensor, 'day': day, 'category': category}},
                             {{'prio': prio, 'depth': -depth, 'ts': ts}}) AS c,
                     arg_min(proxy_class, {{'depth': depth, 'prio': -prio, 'ts': ts}}) AS proxy_class
              FROM u GROUP BY session)
            SELECT c.ip_key, c.sensor, c.day, c.category, proxy_class FROM s"""),
    "p25_facts": (
        "Sessions (sessions), emails (emails) and their recipients (rcpts = len(rcpts)) per source, sensor, "
        f"UTC month, category and protocol, with the outcome (prevented = {' or '.join(PREVENTED)}; everything "
        "else is not prevented) and the source's country and AS (ip_info, as in `spampots report`; '??' / "
        "'unknown' when the address is not located).",
        f"""SELECT f.*, {OUTCOME} AS outcome,
                   coalesce(nullif(i.country, ''), '??') AS country, i.as_id, i.as_name, i.asn FROM (
              SELECT ip_key, sensor, month, category, proxy_class, sum(sessions)::BIGINT AS sessions,
                     sum(emails)::BIGINT AS emails, sum(rcpts)::BIGINT AS rcpts FROM (
                SELECT ip_key, sensor, strftime(day, '%Y-%m') AS month, category, proxy_class,
                       count(*) AS sessions, 0 AS emails, 0 AS rcpts
                FROM p25_sessions GROUP BY ALL
                UNION ALL
                SELECT ip_key, sensor, strftime(day, '%Y-%m'), category, proxy_class, 0, sum(emails), sum(rcpts)
                FROM p25_mail GROUP BY ALL)
              GROUP BY ALL) f
            LEFT JOIN ip_info i USING (ip_key)"""),
}

_SUMS = """coalesce(sum(sessions), 0)::BIGINT AS sessions, coalesce(sum(emails), 0)::BIGINT AS emails,
  100.0 * sum(emails) / nullif((SELECT sum(emails) FROM p25_facts), 0) AS emails_pct,
  coalesce(sum(rcpts), 0)::BIGINT AS rcpts, count(DISTINCT ip_key) AS ips"""
_SPLIT = """SELECT {dim} AS {key},
  coalesce(sum(emails) FILTER (outcome = 'prevented'), 0)::BIGINT AS emails_prevented,
  coalesce(sum(emails) FILTER (outcome = 'not prevented'), 0)::BIGINT AS emails_not,
  100.0 * sum(emails) FILTER (outcome = 'prevented') / nullif(sum(emails), 0) AS prevented_pct,
  coalesce(sum(sessions) FILTER (outcome = 'prevented'), 0)::BIGINT AS sessions_prevented,
  coalesce(sum(sessions) FILTER (outcome = 'not prevented'), 0)::BIGINT AS sessions_not,
  coalesce(sum(rcpts) FILTER (outcome = 'prevented'), 0)::BIGINT AS rcpts_prevented,
  coalesce(sum(rcpts) FILTER (outcome = 'not prevented'), 0)::BIGINT AS rcpts_not,
  count(DISTINCT ip_key) FILTER (outcome = 'prevented') AS ips_prevented,
  count(DISTINCT ip_key) FILTER (outcome = 'not prevented') AS ips_not
FROM p25_facts GROUP BY 1 ORDER BY {order}"""
_COUNTS = [Column("sessions", "Sessions", "int"), Column("emails", "Emails", "int"),
           Column("emails_pct", "% emails", "pct"), Column("rcpts", "Recipients", "int"),
           Column("ips", "Source IPs", "int")]
# Short labels: ten columns must fit a 120-column terminal.
_SPLIT_COLS = [Column("emails_prevented", "Emails prev.", "int"), Column("emails_not", "Emails not", "int"),
               Column("prevented_pct", "% prev.", "pct"),
               Column("sessions_prevented", "Sess. prev.", "int"), Column("sessions_not", "Sess. not", "int"),
               Column("rcpts_prevented", "Rcpts prev.", "int"), Column("rcpts_not", "Rcpts not", "int"),
               Column("ips_prevented", "IPs prev.", "int"), Column("ips_not", "IPs not", "int")]
_SHARE = """greatest(1, ceil(n * {p}))::BIGINT AS top{t},
  100.0 * sum(e) FILTER (rn <= greatest(1, ceil(n * {p}))) / any_value(tot) AS top{t}_share"""


@dataclass(frozen=True)
class Query:
    name: str
    title: str
    definition: str
    columns: list[Column]
    sql: str
    total_row: bool = False


QUERIES: list[Query] = [
    Query("port25_outcome", "Port 25 Management: prevented and not prevented",
          "Prevented: tunnels (HTTP/SOCKS) whose target is 25/TCP and open-relay use of our port 25 (direct "
          "mail at depth 0 on an smtp listener, not submission). Not prevented: tunnels to 587/465/other ports, "
          "web GETs, authenticated submission, direct SMTP on other ports. Sessions, emails and recipients add "
          "up; a source IP can be on both rows, the total counts it once.",
          [Column("outcome", "Outcome", translate=True)] + _COUNTS,
          f"""SELECT * FROM (SELECT outcome, {_SUMS} FROM p25_facts GROUP BY 1 ORDER BY outcome DESC)
              UNION ALL SELECT 'total', {_SUMS} FROM p25_facts""", total_row=True),
    Query("port25_categories", "What the abusers used",
          "Each session and email in its category (see p25_mail, p25_sessions): the rows add up to the total.",
          [Column("outcome", "Outcome", translate=True), Column("category", "Use", translate=True)] + _COUNTS,
          f"""SELECT * FROM (SELECT outcome, category, {_SUMS} FROM p25_facts GROUP BY 1, 2
                             ORDER BY outcome DESC, emails DESC, category)
              UNION ALL SELECT 'total', 'all', {_SUMS} FROM p25_facts""", total_row=True),
    Query("port25_by_sensor", "Per sensor",
          "Emails, sessions, recipients and distinct source IPs per sensor, prevented or not.",
          [Column("sensor", "Sensor")] + _SPLIT_COLS, _SPLIT.format(dim="sensor", key="sensor", order="1")),
    Query("port25_by_protocol", "Per protocol",
          "The same per protocol of the outermost hop: SOCKS (socks4/4a/5), HTTP, or SMTP (no proxy).",
          [Column("protocol", "Protocol")] + _SPLIT_COLS, _SPLIT.format(dim="proxy_class", key="protocol", order="1")),
    Query("port25_by_month", "Per month (trend)",
          "The same per UTC month of the session's first event or of the email.",
          [Column("month", "Month")] + _SPLIT_COLS, _SPLIT.format(dim="month", key="month", order="1")),
    Query("port25_by_country", "Per source country (top {top})",
          "The same per country of the source IP (GeoLite2 via geoip2fast, as `spampots report`; ?? = not "
          "located), the {top} with most emails.",
          [Column("country", "Country")] + _SPLIT_COLS,
          _SPLIT.format(dim="country", key="country", order="emails_prevented + emails_not DESC, 1 LIMIT {top}")),
    Query("port25_by_asn", "Per source AS (top {top})",
          "The same per AS of the source IP (--asn-db, else the bundled AS names; unknown = not located), "
          "the {top} with most emails.",
          [Column("as_id", "AS"), Column("as_name", "AS name")] + _SPLIT_COLS,
          # grouped by as_id (AS number, else the name); the AS column shows the number only, so an AS
          # known by its name alone is not named twice
          "SELECT * EXCLUDE (as_key) FROM (" + _SPLIT.format(
              dim="coalesce(as_id, 'unknown')",
              key="as_key, coalesce('AS' || any_value(asn)::VARCHAR, '') AS as_id, "
                  "coalesce(any_value(as_name), 'unknown') AS as_name",
              order="emails_prevented + emails_not DESC, 1 LIMIT {top}")
          + ") ORDER BY emails_prevented + emails_not DESC, as_key"),
    Query("port25_concentration", "How concentrated the abuse is",
          "Sources ranked by emails (ties by key); top 1%/10% = the ceil(1%/10% of them) first, at least one; "
          "share = their emails / all emails of the scope. Units: source IP, and AS (located sources only). "
          "Scopes: all captured spam, prevented, not prevented.",
          [Column("unit", "Unit", translate=True), Column("scope", "Scope", translate=True),
           Column("sources", "Sources", "int"),
           Column("emails", "Emails", "int"),
           Column("top1", "Top 1%", "int"), Column("top1_share", "% emails from top 1%", "pct"),
           Column("top10", "Top 10%", "int"), Column("top10_share", "% emails from top 10%", "pct")],
          f"""WITH e AS (
                SELECT 'all spam' AS scope, ip_key::VARCHAR AS ip, as_id, emails FROM p25_facts WHERE emails > 0
                UNION ALL SELECT outcome, ip_key::VARCHAR, as_id, emails FROM p25_facts WHERE emails > 0),
              k AS (SELECT 'source IP' AS unit, scope, ip AS key, sum(emails) AS e FROM e GROUP BY ALL
                    UNION ALL SELECT 'AS', scope, as_id, sum(emails) FROM e WHERE as_id IS NOT NULL GROUP BY ALL),
              r AS (SELECT *, row_number() OVER (PARTITION BY unit, scope ORDER BY e DESC, key) AS rn,
                           count(*) OVER (PARTITION BY unit, scope) AS n,
                           sum(e) OVER (PARTITION BY unit, scope) AS tot FROM k)
              SELECT unit, scope, any_value(n) AS sources, any_value(tot)::BIGINT AS emails,
                     {_SHARE.format(p=0.01, t=1)}, {_SHARE.format(p=0.10, t=10)}
              FROM r GROUP BY unit, scope, n
              ORDER BY unit DESC, CASE scope WHEN 'all spam' THEN 0 WHEN 'prevented' THEN 1 ELSE 2 END"""),
]

STATEMENT_DEF = ("Captured spam = every smtp.message; relied on outbound 25/TCP = the prevented emails "
                 "(port25_outcome).")


def statement(outcome: Result) -> str:
    """The plain-language sentence a CSIRT can paste into a letter to an ISP."""
    rows = {r[0]: dict(zip([c.key for c in outcome.columns], r)) for r in outcome.rows}
    total = rows.get("total", {}).get("emails") or 0
    if not total:
        return "No spam was captured in this period, so there is nothing to estimate."
    prev = rows.get("prevented", {}).get("emails") or 0
    rest = total - prev
    ips = rows.get("prevented", {}).get("ips") or 0
    return (f"{100.0 * prev / total:.1f}% of the captured spam ({prev:,} emails, from {ips:,} source IPs) "
            f"relied on outbound 25/TCP: Port 25 Management at the ISP would have stopped it. "
            f"The other {100.0 * rest / total:.1f}% ({rest:,} emails) went through tunnels to 587, 465 or other "
            f"ports, or authenticated submission, which the policy leaves open.")


def _ip_info(con: duckdb.DuckDBPyConnection, enricher: Enricher | None) -> None:
    """ip_info(ip_key, country, as_id, as_name, ...) for every source that used us, via the report's code."""
    if enricher is None:
        con.execute("CREATE OR REPLACE TEMP TABLE ip_info AS SELECT NULL::UBIGINT AS ip_key, NULL::VARCHAR AS "
                    "country, NULL::VARCHAR AS as_id, NULL::VARCHAR AS as_name, NULL::BIGINT AS asn WHERE false")
        return
    # metrics.build_ip_info reads the sources from these two names
    con.execute("CREATE OR REPLACE TEMP VIEW msg_by_ip AS SELECT DISTINCT ip_key FROM p25_mail")
    con.execute("CREATE OR REPLACE TEMP VIEW src_by_ip AS SELECT DISTINCT ip_key FROM p25_sessions")
    metrics.build_ip_info(con, enricher)


def run(con: duckdb.DuckDBPyConnection, *, enricher: Enricher | None = None, top: int = 20) -> Report:
    """Build the base tables, run every query; the first table is the summary statement.

    Without an enricher the country and AS tables show every source as not located.
    """
    for name, (_, sql) in BASES.items():
        if name == "p25_facts":
            _ip_info(con, enricher)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
    results = []
    for q in QUERIES:
        rows = [tuple(r) for r in con.execute(q.sql.replace("{top}", str(int(top)))).fetchall()]
        results.append(Result(q.name, q.title.replace("{top}", str(top)), q.definition.replace("{top}", str(top)),
                              q.columns, rows, total_row=q.total_row))
    text = statement(results[0])
    results.insert(0, Result("port25_statement", "In one sentence", STATEMENT_DEF,
                             [Column("statement", "Summary", translate=True)], [(text,)], layout="text"))
    meta = {"generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "enrichment": enricher.source if enricher else "none", "statement": text}
    return Report(results, meta)
