"""`spampots notify`: one abuse report per network that hosts abusing sources (CERT.br's workflow).

Named DuckDB queries over the lake views (analysis/lake.py), each with its definition next to
it, group the sources that used the honeypot by AS (or country); :func:`write` puts, per
network, a CSV (one row per source IP), a JSON (everything) and a plain-text notification
body rendered from an editable template, plus an index of all networks. docs/policy.md
repeats every definition, the placeholders and the sanitisation rule.

Every string an abuser (or an AS registrant) chose -- subjects, HELO names, hosts, URLs, AS
names -- is passed through :func:`neutralise` before it reaches a text body or a CSV: it can
neither start a new line (no header injection in a mail built from the body) nor hide behind
terminal escapes or bidi overrides. The JSON keeps the exact values, written as ASCII only.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import duckdb

from spampots.analysis import metrics, progress
from spampots.analysis.enrich import Enricher
from spampots.analysis.metrics import Column, Report, Result

TIME_ZONE = "UTC"
MAX_LEN = 120  # attacker-controlled strings are cut here (after neutralising), "…" marks the cut
BY = ("asn", "country")

# -- the queries -----------------------------------------------------------------------------
# Built in this order; nf_ips needs ip_info (built from nf_uses by the report's enrichment).
BASES: dict[str, tuple[str, str]] = {
    "nf_uses": (
        "One row per use of the honeypot: every proxy.request (kind 'request': a CONNECT, a GET...) and every "
        "smtp.message (kind 'email', 1 email, recipients = len(rcpts)). A row's hop is the proxy protocol "
        "that carried it (socks4, socks4a, socks5, http; for an email the first `via` hop), else 'smtp', or "
        "'submission' for authenticated submission. A session's protocol is the hop of its outermost "
        "(lowest depth, then earliest) row: what the source spoke to our listener. Sessions with only "
        "protocol errors or nothing at all are not uses.",
        """WITH u AS (
              SELECT session, ip_key, src_ip, src_port, ts, listener_port, depth, 'request' AS kind,
                     proxy AS hop, upper(command) AS command, target_host, target_port, url,
                     0 AS emails, 0 AS rcpts, NULL::VARCHAR AS helo, NULL::VARCHAR AS subject,
                     NULL::VARCHAR AS mail_from, NULL::VARCHAR AS sha256
              FROM proxy_request
              UNION ALL
              SELECT session, ip_key, src_ip, src_port, ts, listener_port, depth, 'email',
                     CASE WHEN proxy <> '' THEN proxy WHEN submission THEN 'submission' ELSE 'smtp' END,
                     'MAIL', target_host, target_port, NULL, 1, n_rcpts, helo, subject, mail_from, sha256
              FROM smtp_message)
            , s AS (SELECT session, arg_min(hop, (depth, ts)) AS protocol FROM u GROUP BY session)
            SELECT u.*, s.protocol FROM u JOIN s USING (session)"""),
    "nf_ips": (
        "Per source IP (IPv4-mapped IPv6 as IPv4): first and last seen (earliest and latest use, UTC), "
        "sessions (distinct sessions with a use), emails, recipients, our listener ports, protocols (of "
        "the sessions) and target ports (of requests and emails; none for direct mail), with its AS and "
        "country (the report's enrichment). Its network: by AS, the AS number ('AS64500') when --asn-db "
        "knows it, else the AS name; by country, the country code. NULL (not located, never notified) for "
        "private, reserved and invalid addresses and for addresses no database places.",
        """WITH a AS (
              SELECT ip_key, any_value(src_ip) AS ip, min(ts) AS first_seen, max(ts) AS last_seen,
                     count(DISTINCT session) AS sessions, sum(emails)::BIGINT AS emails,
                     sum(rcpts)::BIGINT AS rcpts,
                     list_sort(list_distinct(list(listener_port))) AS our_ports,
                     list_sort(list_distinct(list(protocol))) AS protocols,
                     list_sort(list_distinct(coalesce(list(target_port) FILTER (target_port > 0), []))) AS target_ports
              FROM nf_uses GROUP BY ip_key)
            SELECT a.*, i.asn AS as_number, i.as_name, i.country, {network} AS network
            FROM a LEFT JOIN ip_info i USING (ip_key)"""),
    "nf_networks": (
        "Per network: source IPs, sessions, emails, recipients, first and last seen; its AS number and name "
        "(by AS) and the countries of its IPs. Ranked by emails, then sessions, then key (descending, "
        "descending, ascending); kept when emails >= --min-emails, then the first --top.",
        """SELECT *, row_number() OVER (ORDER BY emails DESC, sessions DESC, network) AS rank FROM (
              SELECT network, count(*) AS ips, sum(sessions)::BIGINT AS sessions, sum(emails)::BIGINT AS emails,
                     sum(rcpts)::BIGINT AS rcpts, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
                     {as_number} AS as_number, {as_name} AS as_name,
                     list_sort(list_distinct(coalesce(list(country) FILTER (country NOT IN ('', '--')), [])))
                       AS countries
              FROM nf_ips WHERE network IS NOT NULL GROUP BY network)
            WHERE emails >= {min_emails} {limit}"""),
    "nf_services": (
        "What each network abused: per our listener port, session protocol and target port (none = direct "
        "mail to our SMTP server), the distinct sessions, emails and recipients. A session that asked for "
        "two target ports counts on both rows.",
        """SELECT p.network, u.listener_port AS our_port, u.protocol, nullif(u.target_port, 0) AS target_port,
                  count(DISTINCT u.session) AS sessions, sum(u.emails)::BIGINT AS emails,
                  sum(u.rcpts)::BIGINT AS rcpts
           FROM nf_uses u JOIN nf_ips p USING (ip_key) JOIN nf_networks n USING (network)
           GROUP BY ALL ORDER BY network, emails DESC, sessions DESC, our_port, protocol, target_port NULLS FIRST"""),
    "nf_evidence": (
        "A few evidence lines per network (--evidence, default 5): emails before requests; among them the "
        "first of each source IP, then the second of each, and so on, earliest first (ties by IP), so the "
        "lines spread over the network's IPs. Shown in time order. No sensor name is ever shown.",
        # min_by(row, ts, N): the N earliest per IP and kind, a top-N heap instead of a sort of every use
        """WITH top AS (
              SELECT ip_key, kind, min_by(u, (ts, session), greatest({evidence}, 1)) AS uses
              FROM nf_uses u WHERE ip_key IN (SELECT ip_key FROM nf_ips JOIN nf_networks USING (network))
              GROUP BY ip_key, kind),
            e AS (SELECT p.network, t.ip_key, unnest(t.uses) AS r, generate_subscripts(t.uses, 1) AS rn_ip
                  FROM top t JOIN nf_ips p USING (ip_key)),
            ranked AS (SELECT *, row_number() OVER (PARTITION BY network ORDER BY r.kind = 'request', rn_ip, r.ts,
                                                                                 ip_key) AS rn FROM e)
           SELECT network, ip_key, r.ts AS ts, r.src_ip AS src_ip, r.src_port AS src_port,
                  r.listener_port AS listener_port, r.protocol AS protocol, r.kind AS kind, r.command AS command,
                  r.target_host AS target_host, r.target_port AS target_port, r.url AS url, r.rcpts AS rcpts,
                  r.helo AS helo, r.subject AS subject
           FROM ranked WHERE rn <= {evidence} ORDER BY network, ts, ip_key"""),
    "nf_sample": (
        "The sample message of each network, for the ARF report's third part: its earliest email (ties by "
        "session, then IP): time, source IP and port, envelope sender, HELO and the body's SHA-256 in the "
        "message store.",
        """SELECT p.network, min_by(struct_pack(ts := u.ts, src_ip := u.src_ip, src_port := u.src_port,
                                                 mail_from := u.mail_from, helo := u.helo, sha256 := u.sha256),
                                     (u.ts, u.session, u.ip_key)) AS s
           FROM nf_uses u JOIN nf_ips p USING (ip_key) JOIN nf_networks n USING (network)
           WHERE u.kind = 'email' GROUP BY p.network"""),
}
NETWORK_KEY = {
    # AS: the number when known, else the name; never the enrichment's private/unknown/invalid markers.
    "asn": "CASE WHEN i.kind = 'public' AND (i.asn IS NOT NULL OR i.as_name NOT IN ('', 'unknown')) THEN i.as_id END",
    "country": "CASE WHEN i.kind = 'public' AND i.country NOT IN ('', '--') THEN i.country END",
}
# Per network: by AS, its number (when every IP of it has the same) and name; by country, neither.
NETWORK_AS = {"asn": ("min(as_number)", "min(as_name)"), "country": ("NULL::BIGINT", "NULL::VARCHAR")}


@dataclass
class Options:
    by: str = "asn"  # asn | country
    min_emails: int = 1
    top: Optional[int] = None  # None: every network
    evidence: int = 5  # evidence lines per network
    body_ips: int = 50  # IPs listed in the text body (the CSV/JSON have all)
    arf: Optional[Any] = None  # arf.ArfOptions: also write <stem>.eml, a report ready to send


@dataclass
class Network:
    rank: int
    key: str
    as_number: Optional[int]
    as_name: Optional[str]
    countries: list[str]
    ips: int
    sessions: int
    emails: int
    rcpts: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    ip_rows: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    stem: str = ""  # file name stem, set by assign_stems
    sample: Optional[dict[str, Any]] = None  # nf_sample: the earliest email (ts, src_ip, sha256...)
    contacts: list[str] = field(default_factory=list)  # abuse addresses (policy/contacts.py), set by the caller


@dataclass
class Notification:
    """What :func:`collect` found: the networks to notify and what was left out."""

    by: str
    networks: list[Network]
    period: tuple[Optional[dt.date], Optional[dt.date]]  # --from/--to, else the days of the first and last use
    not_located: dict[str, int]  # ips, sessions, emails of sources in no network
    left_out: int  # networks below --min-emails or beyond --top
    meta: dict[str, Any] = field(default_factory=dict)


def collect(con: duckdb.DuckDBPyConnection, *, enricher: Enricher, opts: Options = Options(),
            days: tuple[Optional[dt.date], Optional[dt.date]] = (None, None)) -> Notification:
    """Run the queries over the lake views (already filtered by `days` and sensors, see Lake.connect)."""
    if opts.by not in BY:
        raise ValueError(f"by must be one of {BY}")
    fill = {"network": NETWORK_KEY[opts.by], "as_number": NETWORK_AS[opts.by][0], "as_name": NETWORK_AS[opts.by][1],
            "min_emails": str(int(opts.min_emails)), "evidence": str(int(opts.evidence)),
            "limit": "" if opts.top is None else f"QUALIFY rank <= {int(opts.top)}"}
    for name, (_, sql) in BASES.items():
        if name == "nf_ips":
            # metrics.build_ip_info reads the sources from these two names, as for `policy port25`
            con.execute("CREATE OR REPLACE TEMP VIEW msg_by_ip AS SELECT DISTINCT ip_key FROM nf_uses "
                        "WHERE kind = 'email'")
            con.execute("CREATE OR REPLACE TEMP VIEW src_by_ip AS SELECT DISTINCT ip_key FROM nf_uses")
            metrics.build_ip_info(con, enricher)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {_fill(sql, fill)}")

    nets: dict[str, Network] = {}
    for r in _dicts(con, "SELECT * FROM nf_networks ORDER BY rank"):
        nets[r["network"]] = Network(rank=r["rank"], key=r["network"], as_number=r["as_number"],
                                     as_name=r["as_name"], countries=list(r["countries"] or []), ips=r["ips"],
                                     sessions=r["sessions"], emails=r["emails"], rcpts=r["rcpts"],
                                     first_seen=r["first_seen"], last_seen=r["last_seen"])
    for r in _dicts(con, """SELECT p.* EXCLUDE (ip_key) FROM nf_ips p JOIN nf_networks n USING (network)
                            ORDER BY n.rank, p.emails DESC, p.sessions DESC, p.ip_key"""):
        nets[r.pop("network")].ip_rows.append(r)
    for r in _dicts(con, "SELECT * FROM nf_services"):
        nets[r.pop("network")].services.append(r)
    for r in _dicts(con, "SELECT * EXCLUDE (ip_key) FROM nf_evidence"):
        nets[r.pop("network")].evidence.append(r)
    for r in _dicts(con, "SELECT * FROM nf_sample"):
        nets[r["network"]].sample = r["s"]

    first, last = con.execute("SELECT min(ts), max(ts) FROM nf_uses").fetchone()
    nl = con.execute("""SELECT count(*), coalesce(sum(sessions), 0), coalesce(sum(emails), 0)
                        FROM nf_ips WHERE network IS NULL""").fetchone()
    located = con.execute("SELECT count(DISTINCT network) FROM nf_ips WHERE network IS NOT NULL").fetchone()[0]
    networks = list(nets.values())
    assign_stems(networks)
    period = (days[0] or (first.date() if first else None), days[1] or (last.date() if last else None))
    return Notification(by=opts.by, networks=networks, period=period,
                        not_located=dict(ips=nl[0], sessions=int(nl[1]), emails=int(nl[2])),
                        left_out=located - len(networks),
                        meta={"generated": utc(dt.datetime.now(dt.timezone.utc)), "enrichment": enricher.source,
                              "time_zone": TIME_ZONE})


def _fill(sql: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        sql = sql.replace("{" + k + "}", v)
    return sql


def _dicts(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


# -- sanitising ------------------------------------------------------------------------------
def neutralise(value: object, cap: Optional[int] = MAX_LEN) -> str:
    """`value` as one harmless line of text.

    Every character Python's str.isprintable() rejects -- C0 and C1 controls (CR, LF, ESC...),
    DEL, format characters such as the bidi overrides U+202A-202E and U+2066-2069 and zero-width
    ones, line/paragraph separators, any space but ' ', surrogates, private-use and unassigned
    code points -- is written as a visible escape (\\x0d, \\u202e, \\U000e0001). Then the text
    is cut to `cap` characters, the last being "…".
    """
    if value is None:
        return ""
    s = str(value)
    if not s.isprintable():
        s = "".join(ch if ch.isprintable() else _escape(ch) for ch in s)
    if cap is not None and len(s) > cap:
        s = s[: cap - 1] + "…"
    return s


def _escape(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _quoted(value: object) -> str:
    """A neutralised string in double quotes. Its own backslashes and quotes are escaped first, so a
    quote inside cannot close it and a literal "\\x0d" in it never reads as a neutralised CR."""
    return '"' + neutralise(str(value).replace("\\", "\\\\").replace('"', '\\"')) + '"'


# -- file names ------------------------------------------------------------------------------
_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
_RESERVED = {"index", "con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}


def safe_stem(key: str, taken: Optional[set[str]] = None) -> str:
    """A file name stem for network `key`: the key itself when it is a plain name (letters, digits,
    '-', '_'; at most 48; not 'index' nor a Windows device name; not already taken, ignoring case),
    else a slug of it plus '-' and 8 hex digits of its SHA-256. Never a path: no '/', '\\', '.'."""
    if _SAFE_STEM.fullmatch(key) and key.lower() not in _RESERVED and key.lower() not in (taken or set()):
        return key
    slug = re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")[:40] or "network"
    return f"{slug}-{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def assign_stems(networks: list[Network]) -> None:
    taken: set[str] = set()
    for n in networks:
        n.stem = safe_stem(n.key, taken)
        taken.add(n.stem.lower())


# -- template ----------------------------------------------------------------------------------
PLACEHOLDERS: dict[str, str] = {
    "network": "the network's key: 'AS64500', an AS name (no AS number known) or a country code",
    "network_name": "'AS64500 EXAMPLE-NET' (by AS, with the name), the AS name, or the country code",
    "as_number": "the AS number without 'AS', or empty",
    "as_name": "the AS name, or empty (--by country)",
    "country": "the countries of the network's IPs, comma-separated",
    "by": "'AS' or 'country'",
    "rank": "the network's place in the ranking (1 = most emails)",
    "ips": "number of source IPs",
    "sessions": "number of sessions",
    "emails": "number of emails",
    "recipients": "number of recipients",
    "first_seen": "the network's first use (UTC, 2026-01-05T10:00:01Z)",
    "last_seen": "the network's last use (UTC)",
    "period": "the selection: --from/--to, else the first and last use of any network (UTC days)",
    "timezone": "UTC",
    "generated": "when the report was made (UTC)",
    "ip_table": "a text table of the IPs (first/last seen, sessions, emails, recipients), at most --body-ips",
    "services": "a text table of what was abused: our port, protocol, target port, sessions, emails, recipients",
    "evidence": "the evidence lines: time (UTC), source IP and port, our port/protocol, what was asked",
    "csv_file": "the name of the network's CSV file",
    "json_file": "the name of the network's JSON file",
}


class TemplateError(ValueError):
    """A template that cannot be rendered: unknown placeholder, a stray '$', unreadable."""


def default_template() -> str:
    return resources.files("spampots").joinpath("data/notify_template.txt").read_text(encoding="utf-8")


def load_template(path: Optional[Path] = None) -> string.Template:
    """The template (default: the packaged one), checked: every $placeholder must be known."""
    try:
        text = default_template() if path is None else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"cannot read the template: {e}") from None
    t = string.Template(text)
    if not t.is_valid():
        bad = next(m for m in t.pattern.finditer(text) if m.group("invalid") is not None)
        line = text.count("\n", 0, bad.start()) + 1
        raise TemplateError(f"a '$' not followed by a placeholder name (line {line}); write $$ for a dollar sign")
    unknown = sorted(set(t.get_identifiers()) - set(PLACEHOLDERS))
    if unknown:
        raise TemplateError("unknown placeholder(s): " + ", ".join("$" + u for u in unknown)
                            + "; known: " + ", ".join("$" + k for k in PLACEHOLDERS))
    return t


# -- formatting --------------------------------------------------------------------------------
def utc(t: Optional[dt.datetime]) -> str:
    """2026-01-05T10:00:01Z (the lake's timestamps are naive UTC)."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else ""


def network_name(n: Network) -> str:
    if n.as_number is not None and n.as_name:
        return f"AS{n.as_number} {neutralise(n.as_name)}"
    return neutralise(n.key)


def _text_table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: "  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                          for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header)] + [line(r) for r in rows])


def ip_table(n: Network, limit: int = 50) -> str:
    rows = [[neutralise(r["ip"]), utc(r["first_seen"]), utc(r["last_seen"]), f"{r['sessions']:,}",
             f"{r['emails']:,}", f"{r['rcpts']:,}"] for r in n.ip_rows[:limit]]
    text = _text_table(["IP address", f"First seen ({TIME_ZONE})", f"Last seen ({TIME_ZONE})", "Sessions",
                        "Emails", "Recipients"], rows, {3, 4, 5})
    more = len(n.ip_rows) - len(rows)
    return text + (f"\n  ... and {more:,} more (see the CSV)" if more > 0 else "")


def services_table(n: Network) -> str:
    rows = [[str(s["our_port"]), neutralise(s["protocol"]),
             str(s["target_port"]) if s["target_port"] is not None else "(direct)",
             f"{s['sessions']:,}", f"{s['emails']:,}", f"{s['rcpts']:,}"] for s in n.services]
    return _text_table(["Our port", "Protocol", "Target port", "Sessions", "Emails", "Recipients"], rows,
                       {0, 3, 4, 5})


def evidence_line(e: dict[str, Any]) -> str:
    """One line: time, source, our port/protocol, then what was asked; attacker strings neutralised."""
    head = (f"{utc(e['ts'])}  {neutralise(e['src_ip'])} port {e['src_port']} -> our port "
            f"{e['listener_port']}/{neutralise(e['protocol'])}: ")
    target = f"{neutralise(e['target_host'])}:{e['target_port']}" if e["target_host"] else None
    if e["kind"] == "email":
        what = f"email to {target}" if target else "email (direct)"
        what += f", {e['rcpts']:,} recipient{'s' if e['rcpts'] != 1 else ''}"
        if e["helo"] is not None:
            what += f", HELO {_quoted(e['helo'])}"
        if e["subject"] is not None:
            what += f", subject {_quoted(e['subject'])}"
    else:
        what = f"{neutralise(e['command'])} " + (neutralise(e["url"]) if e["url"] else (target or "(no target)"))
    return head + what


def placeholders(n: Network, note: Notification, opts: Options, generated: str) -> dict[str, str]:
    """The values of every placeholder for network `n` (PLACEHOLDERS lists them)."""
    first, last = note.period
    return {
        "network": neutralise(n.key), "network_name": network_name(n),
        "as_number": "" if n.as_number is None else str(n.as_number), "as_name": neutralise(n.as_name),
        "country": ", ".join(neutralise(c) for c in n.countries), "by": "AS" if note.by == "asn" else "country",
        "rank": str(n.rank), "ips": f"{n.ips:,}", "sessions": f"{n.sessions:,}", "emails": f"{n.emails:,}",
        "recipients": f"{n.rcpts:,}", "first_seen": utc(n.first_seen), "last_seen": utc(n.last_seen),
        "period": f"{first or '…'} to {last or '…'}", "timezone": TIME_ZONE, "generated": generated,
        "ip_table": ip_table(n, opts.body_ips), "services": services_table(n),
        "evidence": "\n".join("  " + evidence_line(e) for e in n.evidence) or "  (none)",
        "csv_file": f"{n.stem}.csv", "json_file": f"{n.stem}.json",
    }


def body(template: string.Template, n: Network, note: Notification, opts: Options, generated: str) -> str:
    text = template.substitute(placeholders(n, note, opts, generated))
    return text if text.endswith("\n") else text + "\n"


# -- files -------------------------------------------------------------------------------------
IP_COLUMNS = ["ip", "first_seen", "last_seen", "sessions", "emails", "recipients", "our_ports", "protocols",
              "target_ports", "as_number", "as_name", "country"]
INDEX_COLUMNS = ["rank", "network", "as_number", "as_name", "countries", "ips", "sessions", "emails",
                 "recipients", "first_seen", "last_seen", "files", "contact"]


def _ip_record(r: dict[str, Any]) -> dict[str, Any]:
    return {"ip": r["ip"], "first_seen": utc(r["first_seen"]), "last_seen": utc(r["last_seen"]),
            "sessions": r["sessions"], "emails": r["emails"], "recipients": r["rcpts"],
            "our_ports": list(r["our_ports"]), "protocols": list(r["protocols"]),
            "target_ports": list(r["target_ports"]), "as_number": r["as_number"], "as_name": r["as_name"],
            "country": r["country"]}


def _evidence_record(e: dict[str, Any]) -> dict[str, Any]:
    return {"time": utc(e["ts"]), "ip": e["src_ip"], "src_port": e["src_port"], "our_port": e["listener_port"],
            "protocol": e["protocol"], "kind": e["kind"], "command": e["command"],
            "target_host": e["target_host"], "target_port": e["target_port"] or None, "url": e["url"],
            "recipients": e["rcpts"], "helo": e["helo"], "subject": e["subject"], "line": evidence_line(e)}


def _index_record(n: Network) -> dict[str, Any]:
    return {"rank": n.rank, "network": n.key, "as_number": n.as_number, "as_name": n.as_name,
            "countries": n.countries, "ips": n.ips, "sessions": n.sessions, "emails": n.emails,
            "recipients": n.rcpts, "first_seen": utc(n.first_seen), "last_seen": utc(n.last_seen),
            "files": n.stem, "contact": " ".join(n.contacts)}


def network_json(n: Network, note: Notification, generated: str) -> dict[str, Any]:
    first, last = (d.isoformat() if d else None for d in note.period)
    return {"network": {"key": n.key, "by": note.by, "as_number": n.as_number, "as_name": n.as_name,
                        "countries": n.countries},
            "time_zone": TIME_ZONE, "period": {"from": first, "to": last}, "generated": generated,
            "totals": {"ips": n.ips, "sessions": n.sessions, "emails": n.emails, "recipients": n.rcpts,
                       "first_seen": utc(n.first_seen), "last_seen": utc(n.last_seen)},
            "ips": [_ip_record(r) for r in n.ip_rows],
            "services": [{"our_port": s["our_port"], "protocol": s["protocol"], "target_port": s["target_port"],
                          "sessions": s["sessions"], "emails": s["emails"], "recipients": s["rcpts"]}
                         for s in n.services],
            "evidence": [_evidence_record(e) for e in n.evidence]}


def _csv_value(v: Any) -> Any:
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    if isinstance(v, str):
        v = neutralise(v, cap=None)
        if v[:1] in ("=", "+", "-", "@"):
            v = "'" + v  # a spreadsheet would run it as a formula
    return "" if v is None else v


def _write_csv(path: Path, columns: list[str], records: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in records:
            w.writerow([_csv_value(r[c]) for c in columns])


def _write_json(path: Path, doc: Any) -> None:
    # ASCII only: the exact values, and no control or bidi character is ever raw in the file
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=True) + "\n", encoding="ascii")


def write(out: Path, note: Notification, template: string.Template, opts: Options = Options(), *,
          now: Optional[dt.datetime] = None, quiet: bool = True) -> list[Path]:
    """Write <stem>.csv, <stem>.json, <stem>.txt (and <stem>.eml with `opts.arf`, policy/arf.py) per
    network and index.csv/index.json into `out` (created if missing). Returns the paths written."""
    generated = utc(now) if now else note.meta.get("generated") or utc(dt.datetime.now(dt.timezone.utc))
    made = (now.replace(tzinfo=dt.timezone.utc) if now and now.tzinfo is None else now) or \
        dt.datetime.now(dt.timezone.utc)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with progress.bar("writing reports", total=len(note.networks), quiet=quiet) as tick:
        for n in note.networks:
            base = out / n.stem
            _write_csv(base.with_name(n.stem + ".csv"), IP_COLUMNS, [_ip_record(r) for r in n.ip_rows])
            _write_json(base.with_name(n.stem + ".json"), network_json(n, note, generated))
            text = body(template, n, note, opts, generated)
            base.with_name(n.stem + ".txt").write_text(text, encoding="utf-8")
            paths += [base.with_name(n.stem + s) for s in (".csv", ".json", ".txt")]
            if opts.arf is not None:
                from . import arf

                paths.append(base.with_name(n.stem + ".eml"))
                paths[-1].write_bytes(arf.build(n, note, text, opts.arf, made))
            tick()
    index = [_index_record(n) for n in note.networks]
    _write_csv(out / "index.csv", INDEX_COLUMNS, index)
    period = {"from": note.period[0].isoformat() if note.period[0] else None,
              "to": note.period[1].isoformat() if note.period[1] else None}
    _write_json(out / "index.json", {"meta": {**note.meta, "generated": generated, "by": note.by, "period": period,
                                              "not_located": note.not_located, "left_out": note.left_out},
                                     "networks": index})
    return paths + [out / "index.csv", out / "index.json"]


# -- the summary, through the report's renderers -------------------------------------------------
SUMMARY_DEF = ("Networks that hosted sources using the honeypot (nf_networks): ranked by emails; by AS (the AS "
               "number when known, else the name) or by country. Days UTC; the files have the exact times.")


def summary(note: Notification) -> Report:
    """The index as a Report, for analysis/render.py (terminal, markdown, json, csv)."""
    cols = [Column("rank", "#", "int"), Column("network", "Network"), Column("as_name", "AS name"),
            Column("countries", "Countries"), Column("ips", "IPs", "int"), Column("sessions", "Sessions", "int"),
            Column("emails", "Emails", "int"), Column("recipients", "Recipients", "int"),
            Column("first_day", "First day (UTC)", "date"), Column("last_day", "Last day (UTC)", "date"),
            Column("files", "Files"), Column("contact", "Contact")]
    # by AS name (no --asn-db) the name is the key: not shown twice
    rows = [(n.rank, n.key, n.as_name if n.as_name != n.key else "", ", ".join(n.countries), n.ips, n.sessions,
             n.emails, n.rcpts, n.first_seen.date(), n.last_seen.date(), n.stem, " ".join(n.contacts))
            for n in note.networks]
    nl = note.not_located
    notes = []
    if note.meta.get("contacts"):
        lost = [neutralise(n.key) for n in note.networks if not n.contacts]
        if lost:
            notes.append(f"{len(lost):,} networks have no abuse contact in {note.meta['contacts']} and are not "
                         "mailed: " + ", ".join(lost) + ".")
    if nl["ips"]:
        notes.append(f"{nl['ips']:,} source IPs ({nl['emails']:,} emails) are in no network (private, reserved "
                     "or not located) and are not notified.")
    if note.left_out:
        notes.append(f"{note.left_out:,} networks below --min-emails or beyond --top are left out.")
    title = "Networks to notify (by AS)" if note.by == "asn" else "Networks to notify (by country)"
    res = Result("notify_networks", title, SUMMARY_DEF, cols, rows, note=" ".join(notes))
    meta = {"title": "spampots notify", **note.meta,
            "not_located": nl, "left_out": note.left_out}
    return Report([res], meta)
