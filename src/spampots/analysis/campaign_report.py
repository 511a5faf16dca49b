"""What analysts see of campaigns: the list (searchable) and one campaign in detail.

SQL over the lake's views (lake.Lake.connect) plus message_lake.create_views: each message of a
campaign is an smtp_message event whose body's layout (message_features) was assigned to it
(campaign_layout). Sources are enriched (AS, country) by the same Enricher as the report.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import duckdb

ID_RE = re.compile(r"^cmp-[0-9a-f]{4,12}$")

# One scan of the events per connection, kept for every query of a listing or a report: the
# campaigns' messages counted along each axis the tables show (GROUPING SETS), not copied. A copy
# of the rows (with their URLs) would not fit in memory nor on disk at 524.6M messages; these
# counts are as many rows as there are campaign x (body, day, source, port and protocol, MX host,
# sender domain). What belongs to a body (URLs, From domain, language, subject, text) is read from
# message_features through the `body` rows, weighted by their messages.
AGG = """CREATE TEMP TABLE IF NOT EXISTS campaign_agg AS
    SELECT c.campaign,
           CASE WHEN grouping(m.sha256) = 0 THEN 'body' WHEN grouping(m.day) = 0 THEN 'day'
                WHEN grouping(m.ip_key) = 0 THEN 'source' WHEN grouping(m.listener_port) = 0 THEN 'port'
                WHEN grouping(m.target_host) = 0 THEN 'mx' ELSE 'sender' END AS axis,
           m.sha256, m.day, m.ip_key, any_value(m.src_ip) AS src_ip, m.listener_port, m.proxy, m.target_host,
           m.sender_domain, count(*) AS n, sum(m.n_rcpts) AS rcpts, min(m.ts) AS first_ts, max(m.ts) AS last_ts
    FROM smtp_message m JOIN message_campaign c USING (sha256)
    GROUP BY GROUPING SETS ((c.campaign, m.sha256), (c.campaign, m.day), (c.campaign, m.ip_key),
                            (c.campaign, m.listener_port, m.proxy), (c.campaign, m.target_host),
                            (c.campaign, m.sender_domain))"""
BODIES = "(SELECT a.*, f.* EXCLUDE (sha256) FROM campaign_agg a JOIN message_features f USING (sha256) " \
         "WHERE a.axis = 'body')"

LIST = f"""WITH c AS (SELECT campaign, sum(n) AS messages, sum(rcpts) AS recipients, min(first_ts) AS first_seen,
                  max(last_ts) AS last_seen FROM campaign_agg WHERE axis = 'day' GROUP BY 1),
     s AS (SELECT campaign, count(DISTINCT ip_key) AS sources FROM campaign_agg WHERE axis = 'source' GROUP BY 1),
     p AS (SELECT campaign, list_sort(list_distinct(list(coalesce(nullif(proxy, ''), 'direct')))) AS protocols,
                  list_sort(list_distinct(list(listener_port))) AS ports FROM campaign_agg WHERE axis = 'port'
           GROUP BY 1),
     x AS (SELECT campaign, count(DISTINCT target_host) AS mx_hosts FROM campaign_agg WHERE axis = 'mx' GROUP BY 1),
     b AS (SELECT campaign, len(list_distinct(flatten(list(url_domains)))) AS url_domains,
                  list_sort(list_distinct(list(nullif(language, '')))) AS languages FROM {BODIES} GROUP BY 1)
SELECT c.campaign, t.template, c.first_seen, c.last_seen, c.messages, c.recipients, s.sources, p.protocols,
       p.ports, x.mx_hosts, b.url_domains, b.languages
FROM c JOIN s USING (campaign) JOIN p USING (campaign) JOIN x USING (campaign) JOIN b USING (campaign)
     LEFT JOIN campaign_template t USING (campaign)
WHERE {{where}}
ORDER BY c.messages DESC, c.campaign LIMIT {{top}}"""


def check_id(cid: str) -> str:
    """A campaign id (or a prefix of 4+ hex digits after ``cmp-``), lower-cased; ValueError if not."""
    c = cid.strip().lower()
    if not ID_RE.match(c):
        raise ValueError(f"campaign {cid!r}: expected cmp- and 4 to 12 hex digits, as `spampots campaigns` shows")
    return c


def search(con: duckdb.DuckDBPyConnection, *, url_domains: Sequence[str] = (), sender_domains: Sequence[str] = (),
           text: Sequence[str] = (), ids: Sequence[str] = (), top: int = 20) -> list[dict[str, Any]]:
    """Campaigns, largest first. Each filter narrows: a campaign matches when one of its messages
    links to a URL under the domain, comes from the sender domain (envelope or From: header), or
    when its template or one of its messages' text contains every text term (case-insensitive)."""
    con.execute(AGG)
    where, params = ["true"], []
    for d in url_domains:
        where.append(f"c.campaign IN (SELECT campaign FROM {BODIES}, unnest(url_domains) AS u(d) "
                     "WHERE u.d = ? OR u.d LIKE ?)")
        params += [d.lower().strip("."), "%." + d.lower().strip(".")]
    for d in sender_domains:
        where.append("c.campaign IN (SELECT campaign FROM campaign_agg WHERE axis = 'sender' AND sender_domain = ? "
                     f"UNION SELECT campaign FROM {BODIES} WHERE from_domain = ? OR from_domain LIKE ?)")
        params += [d.lower(), d.lower(), "%." + d.lower()]
    for t in text:  # the subject: as the body has it (encoded words decoded), the event's is the same header
        where.append("c.campaign IN (SELECT campaign FROM campaign_template WHERE template ILIKE ? "
                     f"UNION SELECT campaign FROM {BODIES} WHERE subject ILIKE ? OR text ILIKE ?)")
        params += ["%" + t + "%"] * 3
    if ids:
        where.append("(" + " OR ".join("starts_with(c.campaign, ?)" for _ in ids) + ")")
        params += list(ids)
    cur = con.execute(LIST.format(where=" AND ".join(where), top=int(top)), params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def resolve(con: duckdb.DuckDBPyConnection, prefixes: Sequence[str]) -> list[str]:
    """Full campaign ids for id prefixes (check_id'ed)."""
    if not prefixes:
        return []
    cond = " OR ".join("starts_with(campaign, ?)" for _ in prefixes)
    return [r[0] for r in con.execute(f"SELECT DISTINCT campaign FROM campaign_layout WHERE {cond} ORDER BY 1",
                                      list(prefixes)).fetchall()]


def shas(con: duckdb.DuckDBPyConnection, ids: Sequence[str]) -> set[str]:
    """sha256 of every stored body of the campaigns (ids or prefixes)."""
    if not ids:
        return set()
    cond = " OR ".join("starts_with(campaign, ?)" for _ in ids)
    return {r[0] for r in con.execute(f"SELECT DISTINCT sha256 FROM message_campaign WHERE {cond}",
                                      list(ids)).fetchall()}


def _top(con: duckdb.DuckDBPyConnection, sql: str, cid: str, n: int = 10) -> list[tuple]:
    return con.execute(sql + f" LIMIT {int(n)}", [cid]).fetchall()


def detail(con: duckdb.DuckDBPyConnection, cid: str, enricher: Optional[Any] = None,
           top: int = 10) -> Optional[dict[str, Any]]:
    """One campaign: template, timeline (messages per day), sources (with AS and country when an
    Enricher is given), ports and protocols, target MX hosts, URL domains and URLs, sender domains,
    languages, subjects. None if there is no such campaign."""
    rows = search(con, ids=[cid], top=1)
    if not rows:
        return None
    d = rows[0]
    cid = d["campaign"]
    d["timeline"] = _top(con, """SELECT day, sum(n) FROM campaign_agg WHERE axis = 'day' AND campaign = ?
        GROUP BY 1 ORDER BY 1""", cid, 10_000)
    d["ports_protocols"] = _top(con, """SELECT listener_port, coalesce(nullif(proxy, ''), 'direct'), sum(n) AS n
        FROM campaign_agg WHERE axis = 'port' AND campaign = ? GROUP BY 1, 2 ORDER BY n DESC, 1, 2""", cid, 50)
    d["mx"] = _top(con, """SELECT coalesce(target_host, '(direct)'), sum(n) AS n FROM campaign_agg
        WHERE axis = 'mx' AND campaign = ? GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    d["url_domains_top"] = _top(con, f"""SELECT u.d, sum(n) AS n FROM {BODIES}, unnest(url_domains) AS u(d)
        WHERE campaign = ? GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    d["urls"] = _top(con, f"""SELECT u.u, sum(n) AS n FROM {BODIES}, unnest(urls) AS u(u)
        WHERE campaign = ? GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    d["sender_domains"] = _top(con, """SELECT coalesce(nullif(sender_domain, ''), '<>'), sum(n) AS n
        FROM campaign_agg WHERE axis = 'sender' AND campaign = ? GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    d["subjects"] = _top(con, f"""SELECT subject, sum(n) AS n FROM {BODIES} WHERE campaign = ?
        GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    srcs = _top(con, """SELECT norm_ip(any_value(src_ip)), sum(n) AS n FROM campaign_agg
        WHERE axis = 'source' AND campaign = ? GROUP BY ip_key ORDER BY n DESC, 1""", cid, 100_000)
    info: dict[str, tuple] = {}
    if enricher is not None and srcs:
        t = enricher.enrich([ip for ip, _ in srcs])
        for r in t.to_pylist():
            info[r["ip"]] = (r.get("asn"), r.get("as_name") or "", r.get("country") or "")
    d["sources_top"] = [(ip, n, *info.get(ip, (None, "", ""))) for ip, n in srcs[:top]]
    ases: dict[str, int] = {}
    countries: dict[str, int] = {}
    for ip, n in srcs:
        asn, name, cc = info.get(ip, (None, "", ""))
        key = f"AS{asn} {name}".strip() if asn else (name or "unknown")
        ases[key] = ases.get(key, 0) + n
        countries[cc or "unknown"] = countries.get(cc or "unknown", 0) + n
    d["ases"] = sorted(ases.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    d["countries"] = sorted(countries.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    d["n_ases"] = len([k for k in ases if k != "unknown"])
    d["n_countries"] = len([k for k in countries if k != "unknown"])
    return d


# -- in the report --------------------------------------------------------------------------------
TABLE_DEFINITION = (
    "A campaign is the messages whose bodies share what a spam operation keeps constant: the word "
    "3-shingles of the text (HTML reduced to text, any transfer encoding and charset decoded) with "
    "links, addresses, numbers, random tokens and the recipient's name masked, found in more than one "
    "message; see docs/campaigns.md. Ids (cmp-…) are stable as data arrives. For each: its template "
    "(* where messages differ), emails, recipients, source IPs, proxy protocols (direct: straight to an "
    "SMTP port), URL domains, languages, first and last seen. `spampots campaigns ID` shows one, "
    "`spampots export --campaign ID` writes its messages.")
DETAIL_DEFINITION = ("One of the largest campaigns: its template, messages per day, sources (AS, country), "
                     "listener ports and proxy protocols, target MX hosts, URL domains and URLs.")
DETAILS = 5  # campaigns shown in detail
STRATEGY_DEFINITION = (
    "The campaigns' strategies, as the CEAS 2008 characterisation: each campaign is counted under the "
    "protocol that carried most of its emails (SOCKS: SOCKS4/4a/5; HTTP: HTTP CONNECT or a POST to port 25; "
    "SMTP: straight to an SMTP port, no proxy) and under how many source IPs sent it (1, 2-10, 11-100, "
    "more than 100). Emails are the campaigns' emails.")
STRATEGY = """WITH pc AS (
    SELECT campaign, proto_class(proxy) AS cls, sum(n) AS n FROM campaign_agg WHERE axis = 'port' GROUP BY 1, 2),
ips AS (SELECT campaign, count(DISTINCT ip_key) AS ips FROM campaign_agg WHERE axis = 'source' GROUP BY 1),
per AS (
    SELECT campaign, arg_max(cls, n) AS protocol, any_value(ips) AS ips, sum(n) AS emails
    FROM pc JOIN ips USING (campaign) GROUP BY campaign)
SELECT protocol, CASE WHEN ips = 1 THEN '1' WHEN ips <= 10 THEN '2-10' WHEN ips <= 100 THEN '11-100'
                      ELSE 'more than 100' END AS sources,
       count(*) AS campaigns, sum(emails) AS emails, min(ips) AS o
FROM per GROUP BY 1, 2 ORDER BY protocol, o"""


def _pairs(rows: Sequence[tuple], n: int = 10) -> str:
    return ", ".join(f"{k} ({v:,})" for k, v in list(rows)[:n]) or "-"


def add_to_report(report: Any, con: duckdb.DuckDBPyConnection, enricher: Optional[Any], top: int) -> bool:
    """Put the campaigns into `report` (metrics.Report): the Campaigns table becomes these
    campaigns (the subject-key table stays, renamed subject_campaigns), and the largest
    DETAILS campaigns get a detail table each. False (report untouched) if the lake has none."""
    from .metrics import Column as C, Result, campaign_os_sql

    rows = search(con, top=top)
    if not rows:
        return False
    table = Result("campaigns", "Campaigns", TABLE_DEFINITION,
                   [C("campaign", "Campaign"), C("template", "Template"), C("emails", "Emails", "int"),
                    C("rcpts", "Recipients", "int"), C("ips", "Source IPs", "int"), C("protocols", "Protocols"),
                    C("url_domains", "URL domains", "int"), C("languages", "Languages"),
                    C("first", "First"), C("last", "Last")],
                   [(r["campaign"], _flat(r["template"] or "", 160), r["messages"], r["recipients"], r["sources"],
                     ", ".join(r["protocols"]), r["url_domains"], ", ".join(r["languages"]),
                     f"{r['first_seen']:%Y-%m-%d %H:%M}", f"{r['last_seen']:%Y-%m-%d %H:%M}") for r in rows],
                   section="more")
    details = []
    for r in rows[:DETAILS]:
        d = detail(con, r["campaign"], enricher)
        if d is None:
            continue
        facts = [
            ("Template", d["template"] or ""),
            ("Messages", f"{d['messages']:,} to {d['recipients']:,} recipients, {d['first_seen']:%Y-%m-%d %H:%M} "
                         f"to {d['last_seen']:%Y-%m-%d %H:%M}"),
            ("Timeline (per day)", _pairs([(str(day), n) for day, n in d["timeline"]], 60)),
            ("Sources", f"{d['sources']:,} in {d['n_ases']:,} ASes, {d['n_countries']:,} countries: "
                        + ", ".join(f"{ip} ({n:,}{', AS' + str(asn) if asn else ''}{', ' + cc if cc else ''})"
                                    for ip, n, asn, _name, cc in d["sources_top"])),
            ("ASes", _pairs(d["ases"])),
            ("Countries", _pairs(d["countries"])),
            ("Ports and protocols", ", ".join(f"{port}/{proto} ({n:,})" for port, proto, n in d["ports_protocols"])),
            ("Target MX hosts", _pairs(d["mx"])),
            ("URL domains", _pairs(d["url_domains_top"])),
            ("URLs", _pairs(d["urls"], 5)),
            ("Sender domains", _pairs(d["sender_domains"])),
            ("Languages", ", ".join(d["languages"]) or "-"),
        ]
        details.append(Result(f"campaign_{d['campaign']}", f"Campaign {d['campaign']}", DETAIL_DEFINITION,
                              [C("field", "Field"), C("value", "Value")], facts, section="detail"))
    strategy = Result("campaign_strategies", "Campaigns by proxy protocol and sources", STRATEGY_DEFINITION,
                      [C("protocol", "Protocol"), C("sources", "Source IPs"), C("campaigns", "Campaigns", "int"),
                       C("emails", "Emails", "int")],
                      [r[:4] for r in con.execute(STRATEGY).fetchall()], section="more")
    details.insert(0, strategy)
    for res in report.results:  # the SYN fingerprints per campaign: of these campaigns, not the subject key's
        if res.name == "campaign_os":
            sql = campaign_os_sql("c.campaign", "JOIN message_campaign c ON c.sha256 = m.sha256")
            res.rows = [tuple(r) for r in con.execute(sql.format(top=int(top))).fetchall()]
    out = []
    for res in report.results:
        if res.name == "campaigns":  # the subject key, kept under its own name
            res.name, res.title = "subject_campaigns", "Campaigns by subject"
            out += [table, *details]
        out.append(res)
    if table not in out:
        out += [table, *details]
    report.results = out
    return True


def _flat(s: str, n: int) -> str:
    s = " / ".join(x for x in s.splitlines() if x.strip())
    return s if len(s) <= n else s[: n - 1] + "…"


def report_step(report: Any, lake: Any, con: duckdb.DuckDBPyConnection, enricher: Optional[Any], *, top: int,
                quiet: bool = True, memory_limit: Optional[str] = None, threads: Optional[int] = None) -> None:
    """`spampots report`: bring the lake's features and campaigns up to date (all days and
    sensors; within the report's --memory-limit and --threads), then put the campaigns of the
    report's selection into it (add_to_report)."""
    import sys

    from . import message_lake

    st = message_lake.update(lake, memory_limit=memory_limit, threads=threads)
    if not quiet and (st.parsed or st.missing):
        print(f"spampots report: campaigns: parsed {st.parsed:,} new messages ({st.missing:,} bodies not in "
              f"the store), {st.campaigns_new:,} new campaigns", file=sys.stderr)
    message_lake.create_views(con, lake.root)
    add_to_report(report, con, enricher, top)
