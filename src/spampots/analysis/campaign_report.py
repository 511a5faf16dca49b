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

MESSAGES = """CREATE OR REPLACE TEMP VIEW campaign_message AS
    SELECT m.*, l.campaign, f.url_domains, f.urls, f.from_domain, f.language, f.text, f.layout_hash
    FROM smtp_message m JOIN message_features f USING (sha256) JOIN campaign_layout l USING (layout_hash)"""

LIST = """SELECT c.campaign, any_value(t.template) AS template, min(c.ts) AS first_seen, max(c.ts) AS last_seen,
       count(*) AS messages, sum(c.n_rcpts) AS recipients, count(DISTINCT c.ip_key) AS sources,
       list_sort(list_distinct(list(coalesce(nullif(c.proxy, ''), 'direct')))) AS protocols,
       list_sort(list_distinct(list(c.listener_port))) AS ports,
       count(DISTINCT c.target_host) AS mx_hosts,
       len(list_distinct(flatten(list(c.url_domains)))) AS url_domains,
       list_sort(list_distinct(list(nullif(c.language, '')))) AS languages
FROM campaign_message c LEFT JOIN campaign_template t USING (campaign)
WHERE {where}
GROUP BY c.campaign ORDER BY messages DESC, c.campaign LIMIT {top}"""


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
    con.execute(MESSAGES)
    where, params = ["true"], []
    for d in url_domains:
        where.append("c.campaign IN (SELECT campaign FROM campaign_message, unnest(url_domains) AS u(d) "
                     "WHERE u.d = ? OR u.d LIKE ?)")
        params += [d.lower().strip("."), "%." + d.lower().strip(".")]
    for d in sender_domains:
        where.append("c.campaign IN (SELECT campaign FROM campaign_message WHERE sender_domain = ? "
                     "OR from_domain = ? OR from_domain LIKE ?)")
        params += [d.lower(), d.lower(), "%." + d.lower()]
    for t in text:
        where.append("c.campaign IN (SELECT campaign FROM campaign_template WHERE template ILIKE ? "
                     "UNION SELECT campaign FROM campaign_message WHERE text ILIKE ? OR subject ILIKE ?)")
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
    con.execute(MESSAGES)
    rows = search(con, ids=[cid], top=1)
    if not rows:
        return None
    d = rows[0]
    cid = d["campaign"]
    d["timeline"] = _top(con, "SELECT day, count(*) FROM campaign_message WHERE campaign = ? GROUP BY 1 ORDER BY 1",
                         cid, 10_000)
    d["ports_protocols"] = _top(con, """SELECT listener_port, coalesce(nullif(proxy, ''), 'direct'), count(*) AS n
        FROM campaign_message WHERE campaign = ? GROUP BY 1, 2 ORDER BY n DESC, 1, 2""", cid, 50)
    d["mx"] = _top(con, """SELECT coalesce(target_host, '(direct)'), count(*) AS n FROM campaign_message
        WHERE campaign = ? GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    d["url_domains_top"] = _top(con, """SELECT u.d, count(*) AS n FROM campaign_message, unnest(url_domains) AS u(d)
        WHERE campaign = ? GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    d["urls"] = _top(con, """SELECT u.u, count(*) AS n FROM campaign_message, unnest(urls) AS u(u)
        WHERE campaign = ? GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    d["sender_domains"] = _top(con, """SELECT coalesce(nullif(sender_domain, ''), '<>'), count(*) AS n
        FROM campaign_message WHERE campaign = ? GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    d["subjects"] = _top(con, """SELECT subject, count(*) AS n FROM campaign_message WHERE campaign = ?
        GROUP BY 1 ORDER BY n DESC, 1""", cid, top)
    srcs = _top(con, """SELECT norm_ip(src_ip), count(*) AS n FROM campaign_message WHERE campaign = ?
        GROUP BY 1 ORDER BY n DESC, 1""", cid, 100_000)
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
