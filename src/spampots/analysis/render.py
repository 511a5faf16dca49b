"""Renderers: terminal (rich), Markdown, JSON, CSV and HTML. They only format a Report.

Every string that came from the network (subjects, HELO names, usernames, hosts...) is
treated as hostile: control characters are made visible in the terminal, Markdown and HTML
special characters are escaped, rich markup is never parsed from data, and in CSV control
characters are made visible too and cells that a spreadsheet would run as a formula are
prefixed with a quote.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from .metrics import Column, Report, Result

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def visible(s: str) -> str:
    """Control characters (and bidi overrides) shown as \\xNN / \\uNNNN, never interpreted."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", s)


# -- numbers like the talk -----------------------------------------------------------------
def _group(n: int, sep: str) -> str:
    s = f"{abs(n):,}".replace(",", sep)
    return ("-" if n < 0 else "") + s


def fmt(value: Any, kind: str, locale: str = "en") -> str:
    """Thousands separators and two decimals; locale 'pt' writes 1.234,56 as the talk does."""
    if value is None:
        return ""
    thousands, decimal = (".", ",") if locale == "pt" else (",", ".")
    if kind == "int":
        return _group(int(value), thousands)
    if kind in ("pct", "num"):
        whole, frac = f"{float(value):.2f}".split(".")
        return _group(int(whole), thousands) + decimal + frac if not whole.startswith("-") \
            else "-" + _group(-int(whole), thousands) + decimal + frac
    if kind == "date" and isinstance(value, (dt.date, dt.datetime)):
        return value.strftime("%d/%m/%Y") if locale == "pt" else value.isoformat()
    return visible(str(value))


def _cells(r: Result, locale: str, width: int | None = None) -> list[list[str]]:
    out = []
    for row in r.rows:
        cells = []
        for v, c in zip(row, r.columns):
            s = fmt(v, c.kind, locale)
            if width and c.kind == "text" and len(s) > width:
                s = s[: width - 1] + "…"
            cells.append(s)
        out.append(cells)
    return out


def _shown(report: Report, sections: Iterable[str]) -> list[Result]:
    keep = set(sections)
    return [r for r in report.results if r.section in keep]


def _vertical(r: Result, locale: str) -> list[tuple[str, str]]:
    row = r.rows[0] if r.rows else (None,) * len(r.columns)
    return [(c.label, fmt(v, c.kind, locale)) for c, v in zip(r.columns, row)]


# -- terminal ------------------------------------------------------------------------------
def terminal(report: Report, *, locale: str = "en", file=None, detail: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file, highlight=False, markup=False, emoji=False)
    if not console.is_terminal:
        console.width = 120  # files and pipes: wide enough that numbers never wrap
    for r in _shown(report, ("talk", "more", "detail") if detail else ("talk", "more")):
        t = Table(title=Text(r.title, style="bold"), title_justify="left",
                  caption=Text(r.note) if r.note else None, caption_justify="left")
        if r.layout == "vertical":
            t.show_header = False
            t.add_column("")
            t.add_column("", justify="right")
            for label, value in _summary_rows(r, locale) if r.name == "summary" else _vertical(r, locale):
                t.add_row(Text(label), Text(value))
        else:
            for c in r.columns:
                t.add_column(Text(c.label), justify="right" if c.kind in ("int", "pct", "num") else "left",
                             overflow="fold")
            cells = _cells(r, locale, width=48)
            for i, cs in enumerate(cells):
                last = r.total_row and i == len(cells) - 1
                t.add_row(*[Text(s, style="bold" if last else "") for s in cs], end_section=(
                    r.total_row and i == len(cells) - 2))
        console.print(t)
        console.print()


# -- markdown ------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(s: str) -> str:
    s = html.escape(visible(s), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", s)


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def title(report: Report) -> str:
    """The page title: report.meta["title"] (e.g. "spampots policy port25"), else "spampots report"."""
    return str(report.meta.get("title") or "spampots report")


def markdown(report: Report, *, locale: str = "en", detail: bool = False) -> str:
    out = [f"# {md_escape(title(report))}", ""]
    meta = report.meta
    counting = f"; outbound counting: first per {meta['first_per']}" if meta.get("first_per") else ""
    out.append(f"Generated {meta.get('generated', '')}; enrichment: {html.escape(str(meta.get('enrichment', '')))}"
               f"{counting}.")
    if meta.get("filters"):
        out.append(f"Filters: {md_escape(meta['filters'])}.")
    out.append("")
    for r in _shown(report, ("talk", "more", "detail") if detail else ("talk", "more")):
        out.append(f"## {r.title}")
        out.append("")
        if r.layout == "vertical":
            rows = [[a, b] for a, b in _vertical(r, locale)]
            if r.name == "summary":
                rows = _summary_rows(r, locale)
            out.append(_md_table(["", ""], rows, ["l", "r"]))
        else:
            rows = [[md_escape(s) if c.kind == "text" else s for s, c in zip(cs, r.columns)]
                    for cs in _cells(r, locale)]
            if r.total_row and rows:
                rows[-1] = [f"**{s}**" for s in rows[-1]]
            out.append(_md_table([c.label for c in r.columns], rows,
                                 ["r" if c.kind in ("int", "pct", "num") else "l" for c in r.columns]))
        out.append("")
        if r.note:
            out.append(f"Obs.: {html.escape(r.note, quote=False)}")
            out.append("")
        out.append(f"<sub>{html.escape(r.definition, quote=False)}</sub>")
        out.append("")
    return "\n".join(out)


def _summary_rows(r: Result, locale: str) -> list[list[str]]:
    """The talk's shape: period on one line, then the counts; mail/all pairs on one line each."""
    v = dict(zip([c.key for c in r.columns], r.rows[0])) if r.rows else {}
    f = lambda k, kind: fmt(v.get(k), kind, locale)  # noqa: E731
    period = f"{f('first_day', 'date')} to {f('last_day', 'date')}" if v.get("first_day") else "(no data)"
    return [["Collection period", period],
            ["Days collected", f("days", "int")],
            ["Total emails", f("emails", "int")],
            ["Emails/day", f("per_day", "num")],
            ["Recipients", f("rcpts", "int")],
            ["Recipients/spam", f("rcpts_per_spam", "num")],
            ["Unique IPs (sent email / all sources)", f"{f('ips_mail', 'int')} / {f('ips_all', 'int')}"],
            ["Unique ASNs (sent email / all sources)", f"{f('asns_mail', 'int')} / {f('asns_all', 'int')}"],
            ["Country codes (sent email / all sources)", f"{f('cc_mail', 'int')} / {f('cc_all', 'int')}"],
            ["Sources without AS/country", f("unlocated", "int")]] \
        + ([["Time zone (days, weeks, months, hours)", f("tz", "text")]] if v.get("tz") else [])


# -- JSON ----------------------------------------------------------------------------------
def _jsonable(v: Any) -> Any:
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, float):
        return round(v, 6)
    return v


def to_json(report: Report) -> str:
    doc = {"meta": report.meta, "tables": {}}
    for r in report.results:
        doc["tables"][r.name] = {
            "title": r.title, "definition": r.definition, "note": r.note, "section": r.section,
            "columns": [{"key": c.key, "label": c.label, "kind": c.kind} for c in r.columns],
            "rows": [{c.key: _jsonable(v) for c, v in zip(r.columns, row)} for row in r.rows]}
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str)


# -- CSV -----------------------------------------------------------------------------------
def _csv_cell(v: Any, c: Column) -> Any:
    v = _jsonable(v)
    if not isinstance(v, str):
        return v
    v = visible(v)  # ESC, BEL, CR, bidi overrides: shown, never passed to a terminal or sheet
    if c.kind == "text" and v[:1] in ("=", "+", "-", "@"):
        return "'" + v  # a spreadsheet would run it as a formula
    return v


def _csv_table(r: Result, w: Any) -> None:
    w.writerow([c.key for c in r.columns])
    for row in r.rows:
        w.writerow([_csv_cell(v, c) for v, c in zip(row, r.columns)])


def to_csv(report: Report) -> str:
    """All tables in one stream: a `# name: title` line, a header row, rows, a blank line."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in report.results:
        buf.write(f"# {r.name}: {r.title}\n")
        _csv_table(r, w)
        buf.write("\n")
    return buf.getvalue()


def csv_dir(report: Report, out: Path) -> list[Path]:
    """One <name>.csv per table in directory `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in report.results:
        p = out / f"{r.name}.csv"
        with open(p, "w", newline="") as f:
            _csv_table(r, csv.writer(f, lineterminator="\n"))
        paths.append(p)
    return paths


# -- HTML ----------------------------------------------------------------------------------
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;max-width:72rem;
color:#1d232a;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #d5dbe1;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{padding:.25rem .7rem;border-bottom:1px solid #e4e8ec;text-align:left;vertical-align:top;
max-width:40rem;overflow-wrap:anywhere}
th{background:#f3f5f7}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.total td{font-weight:600;border-top:2px solid #9aa5b1}
p.def{color:#56616d;font-size:.85rem;max-width:60rem}p.note{font-size:.85rem;font-style:italic}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}figcaption{font-size:.85rem;color:#56616d}
nav ul{columns:2;font-size:.9rem}.meta{color:#56616d;font-size:.9rem}
"""


def _h(s: Any) -> str:
    return html.escape(visible(str(s)), quote=True)


def _html_table(r: Result, locale: str) -> str:
    parts = [f'<table id="t-{_h(r.name)}">']
    if r.layout == "vertical":
        rows = _summary_rows(r, locale) if r.name == "summary" else [list(x) for x in _vertical(r, locale)]
        for label, value in rows:
            parts.append(f'<tr><th scope="row">{_h(label)}</th><td class="n">{_h(value)}</td></tr>')
    else:
        num = [c.kind in ("int", "pct", "num") for c in r.columns]
        parts.append("<thead><tr>" + "".join(
            f'<th{" class=n" if n else ""} scope="col">{_h(c.label)}</th>' for c, n in zip(r.columns, num))
            + "</tr></thead><tbody>")
        cells = _cells(r, locale)
        for i, cs in enumerate(cells):
            cls = ' class="total"' if r.total_row and i == len(cells) - 1 else ""
            parts.append(f"<tr{cls}>" + "".join(
                f'<td{" class=n" if n else ""}>{_h(s)}</td>' for s, n in zip(cs, num)) + "</tr>")
        if not cells:
            parts.append(f'<tr><td colspan="{len(r.columns)}">(none)</td></tr>')
        parts.append("</tbody>")
    parts.append("</table>")
    return "\n".join(parts)


def to_html(report: Report, *, locale: str = "en", charts: dict[str, str] | None = None,
            chart_after: dict[str, list[str]] | None = None) -> str:
    """A self-contained page: inline CSS, inline SVG charts, no script, strict CSP."""
    charts = charts or {}
    chart_after = chart_after or {}
    meta = report.meta
    body = [f"<h1>{_h(title(report))}</h1>",
            f'<p class="meta">Generated {_h(meta.get("generated", ""))} &middot; data: {_h(meta.get("data_dir", ""))}'
            f' &middot; enrichment: {_h(meta.get("enrichment", ""))}'
            + (f' &middot; outbound counting: first per {_h(meta["first_per"])}' if meta.get("first_per") else "")
            + (f' &middot; filters: {_h(meta["filters"])}' if meta.get("filters") else "") + "</p>"]
    body.append("<nav><ul>" + "".join(f'<li><a href="#{_h(r.name)}">{_h(r.title)}</a></li>'
                                      for r in report.results) + "</ul></nav>")
    for r in report.results:
        body.append(f'<section id="{_h(r.name)}"><h2>{_h(r.title)}</h2>')
        body.append(_html_table(r, locale))
        if r.note:
            body.append(f'<p class="note">{_h(r.note)}</p>')
        body.append(f'<p class="def">{_h(r.definition)}</p>')
        for name in chart_after.get(r.name, []):
            if name in charts:
                body.append(f'<figure id="chart-{_h(name)}">{charts[name]}</figure>')
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_h(title(report))}</title><style>" + _CSS + "</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


RENDERERS: dict[str, Callable[..., str]] = {"markdown": markdown, "json": to_json, "csv": to_csv}
