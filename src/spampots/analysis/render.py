"""Renderers: terminal (rich), Markdown, JSON, CSV and HTML. They only format a Report.

Words (titles, labels, definitions) go through a locale.Translator: English, or Brazilian
Portuguese with --locale pt_BR (pt: the same). Data never does, except the cells of columns whose
values are the report's own words (Column.translate).

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
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ..locale import Translator, number_style
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
    """Thousands separators and two decimals; locale pt_BR (or pt) writes 1.234,56 as the talk does.

    Timestamps are shown to the second (UTC), whatever the column's kind."""
    if value is None:
        return ""
    pt = number_style(locale) == "pt"
    thousands, decimal = (".", ",") if pt else (",", ".")
    if kind == "int":
        return _group(int(value), thousands)
    if kind in ("pct", "num"):
        whole, frac = f"{float(value):.2f}".split(".")
        return _group(int(whole), thousands) + decimal + frac if not whole.startswith("-") \
            else "-" + _group(-int(whole), thousands) + decimal + frac
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.strftime("%d/%m/%Y %H:%M:%S" if pt else "%Y-%m-%d %H:%M:%S")
    if kind == "date" and isinstance(value, dt.date):
        return value.strftime("%d/%m/%Y") if pt else value.isoformat()
    return visible(str(value))


def _tr(locale: str | Translator | None) -> Translator:
    return locale if isinstance(locale, Translator) else Translator(locale)


def _atomic(c: Column, rows: list[tuple], i: int) -> bool:
    """Numbers, dates and timestamps: never wrapped or split."""
    return c.kind in ("int", "pct", "num", "date") or any(isinstance(r[i], dt.date) for r in rows[:50])


def _cells(r: Result, t: Translator, width: int | None = None) -> list[list[str]]:
    out = []
    for row in r.rows:
        cells = []
        for v, c in zip(row, r.columns):
            s = fmt(v, c.kind, t.locale)
            if getattr(c, "translate", False) and isinstance(v, str):
                s = t(s)
            elif width and c.kind == "text" and len(s) > width:
                s = s[: width - 1] + "…"
            cells.append(s)
        out.append(cells)
    return out


def _shown(report: Report, sections: Iterable[str]) -> list[Result]:
    keep = set(sections)
    return [r for r in report.results if r.section in keep]


def _vertical(r: Result, t: Translator) -> list[list[str]]:
    if r.name == "summary":
        return _summary_rows(r, t)
    row = r.rows[0] if r.rows else (None,) * len(r.columns)
    return [[t(c.label), fmt(v, c.kind, t.locale)] for c, v in zip(r.columns, row)]


def _paragraph(r: Result, t: Translator) -> str:
    """layout "text": the one cell of a one-row table, set as prose (e.g. the policy's sentence)."""
    if not r.rows or not r.rows[0] or r.rows[0][0] is None:
        return ""
    text = str(r.rows[0][0])
    return t(text) if r.columns and getattr(r.columns[0], "translate", False) else text


def meta_line(report: Report, t: Translator, *, data_dir: bool = False) -> str:
    """Generated ...; data: ...; enrichment: ...; outbound counting: ...; filters: ... (plain text)."""
    meta = report.meta
    parts = [f"{t('Generated')} {meta.get('generated', '')}"]
    if data_dir:
        parts.append(f"{t('data')}: {meta.get('data_dir', '')}")
    parts.append(f"{t('enrichment')}: {meta.get('enrichment', '')}")
    if meta.get("first_per"):
        parts.append(f"{t('outbound counting: first per')} {meta['first_per']}")
    if meta.get("filters"):
        parts.append(f"{t('filters')}: {meta['filters']}")
    return "; ".join(parts)


# -- terminal ------------------------------------------------------------------------------
SHOWN = ("talk", "more")
SHOWN_DETAIL = ("talk", "more", "detail")  # "series" tables feed the charts: JSON, CSV and HTML only


def terminal(report: Report, *, locale: str | Translator = "en", file=None, detail: bool = False,
             width: Optional[int] = None) -> None:
    """Rich tables that fit the console: a table too wide is cut into parts that repeat its first
    column; numbers, dates and timestamps are never wrapped or split, only text wraps.

    Width: `width`, else the terminal's, else $COLUMNS, else 120 for files and pipes."""
    from rich.console import Console
    from rich.text import Text

    t = _tr(locale)
    console = Console(file=file, highlight=False, markup=False, emoji=False, width=width)
    if width is None and not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 120  # files and pipes: wide enough that numbers never wrap
    for r in _shown(report, SHOWN_DETAIL if detail else SHOWN):
        console.print(Text(t(r.title), style="bold"))  # the console's width, not the table's
        if r.layout == "text":
            console.print(Text(visible(_paragraph(r, t))))
        else:
            for table in _term_tables(r, t, console):
                console.print(table)
        if r.note:
            console.print(Text(t(r.note)))
        console.print()


_TEXT_MIN = 24  # a text column narrower than its longest word folds that word, never below this


def _min_width(label: str, cells: list[str], atomic: bool) -> int:
    """The narrowest a column may get: its longest header word; all of a number, date or timestamp;
    the longest word of a text cell (up to _TEXT_MIN, then it folds)."""
    head = max((len(w) for w in label.split()), default=0)
    if atomic:
        body = max((len(c) for c in cells), default=0)
    else:
        body = min(max((len(w) for c in cells for w in c.split()), default=0), _TEXT_MIN)
    return max(head, body, 1)


def _term_tables(r: Result, t: Translator, console) -> list:
    from rich.table import Table
    from rich.text import Text

    if r.layout == "vertical":
        header = [("", False, False), ("", True, True)]
        rows = [[visible(a), b] for a, b in _vertical(r, t)]
        show_header = False
    else:
        header = [(t(c.label), c.kind in ("int", "pct", "num"), _atomic(c, r.rows, i))
                  for i, c in enumerate(r.columns)]
        rows = _cells(r, t, width=48)
        show_header = True
    mins = [_min_width(label, [cs[i] for cs in rows], atomic) for i, (label, _r, atomic) in enumerate(header)]

    natural = [max(len(label), max((len(cs[i]) for cs in rows), default=0))
               for i, (label, _r, _a) in enumerate(header)]

    def widths(cols: list[int]) -> Optional[list[int]]:
        """Column widths that fit the console (each column costs 3 more: padding and a rule), or None."""
        room = console.width - 3 * len(cols) - 1
        w = [mins[i] for i in cols]
        if sum(w) > room:
            return None
        if sum(natural[i] for i in cols) <= room:
            return [natural[i] for i in cols]
        spare = room - sum(w)
        for n, i in sorted(enumerate(cols), key=lambda x: (not header[x[1]][2], natural[x[1]] - mins[x[1]])):
            give = min(spare, natural[i] - w[n])  # numbers and dates first, then the narrowest text
            w[n] += give
            spare -= give
        return w

    def build(cols: list[int]) -> Table:
        tb = Table(show_header=show_header)
        for i, w in zip(cols, widths(cols) or [None] * len(cols)):
            label, right, atomic = header[i]
            tb.add_column(Text(label), justify="right" if right else "left", width=w, min_width=mins[i],
                          overflow="fold")
        for n, cs in enumerate(rows):
            bold = r.total_row and n == len(rows) - 1
            tb.add_row(*[Text(cs[i], style="bold" if bold else "") for i in cols],
                       end_section=r.total_row and n == len(rows) - 2)
        return tb

    def fits(cols: list[int]) -> bool:
        return widths(cols) is not None

    every = list(range(len(header)))
    if len(every) <= 2 or fits(every):
        return [build(every)]
    # Too wide: parts of the table, each led by the row's key (its leading text columns, at most 2).
    key = [0] + ([1] if not header[1][2] and len(every) > 3 else [])
    parts: list[list[int]] = []
    for i in every[len(key):]:
        if parts and fits(key + parts[-1] + [i]):
            parts[-1].append(i)
        else:
            parts.append([i])
    return [build(key + cols) for cols in parts]


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


def markdown(report: Report, *, locale: str | Translator = "en", detail: bool = False) -> str:
    t = _tr(locale)
    out = [f"# {md_escape(title(report))}", ""]
    out.append(md_escape(meta_line(report, t)) + ".")
    out.append("")
    for r in _shown(report, SHOWN_DETAIL if detail else SHOWN):
        out.append(f"## {md_escape(t(r.title))}")
        out.append("")
        if r.layout == "text":
            out.append(md_escape(_paragraph(r, t)))
        elif r.layout == "vertical":
            out.append(_md_table(["", ""], [[md_escape(a), b] for a, b in _vertical(r, t)], ["l", "r"]))
        else:
            rows = [[md_escape(s) if c.kind == "text" else s for s, c in zip(cs, r.columns)]
                    for cs in _cells(r, t)]
            if r.total_row and rows:
                rows[-1] = [f"**{s}**" for s in rows[-1]]
            out.append(_md_table([md_escape(t(c.label)) for c in r.columns], rows,
                                 ["r" if c.kind in ("int", "pct", "num") else "l" for c in r.columns]))
        out.append("")
        if r.note:
            out.append(f"{t('Obs.:')} {html.escape(t(r.note), quote=False)}")
            out.append("")
        out.append(f"<sub>{html.escape(t(r.definition), quote=False)}</sub>")
        out.append("")
    return "\n".join(out)


def _summary_rows(r: Result, t: Translator) -> list[list[str]]:
    """The talk's shape: period on one line, then the counts; mail/all pairs on one line each."""
    v = dict(zip([c.key for c in r.columns], r.rows[0])) if r.rows else {}
    f = lambda k, kind: fmt(v.get(k), kind, t.locale)  # noqa: E731
    period = f"{f('first_day', 'date')} {t('to')} {f('last_day', 'date')}" if v.get("first_day") \
        else t("(no data)")
    return [[t("Collection period"), period],
            [t("Days collected"), f("days", "int")],
            [t("Total emails"), f("emails", "int")],
            [t("Emails/day"), f("per_day", "num")],
            [t("Recipients"), f("rcpts", "int")],
            [t("Recipients/spam"), f("rcpts_per_spam", "num")],
            [t("Unique IPs (sent email / all sources)"), f"{f('ips_mail', 'int')} / {f('ips_all', 'int')}"],
            [t("Unique ASNs (sent email / all sources)"), f"{f('asns_mail', 'int')} / {f('asns_all', 'int')}"],
            [t("Country codes (sent email / all sources)"), f"{f('cc_mail', 'int')} / {f('cc_all', 'int')}"],
            [t("Sources without AS/country"), f("unlocated", "int")]] \
        + ([[t("Time zone (days, weeks, months, hours)"), f("tz", "text")]] if v.get("tz") else [])


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
td.d{white-space:nowrap;font-variant-numeric:tabular-nums}
p.statement{font-size:1.05rem;max-width:48rem;margin:.6rem 0}
tr.total td{font-weight:600;border-top:2px solid #9aa5b1}
p.def{color:#56616d;font-size:.85rem;max-width:60rem}p.note{font-size:.85rem;font-style:italic}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}figcaption{font-size:.85rem;color:#56616d}
nav ul{columns:2;font-size:.9rem}.meta{color:#56616d;font-size:.9rem}
"""


def _h(s: Any) -> str:
    return html.escape(visible(str(s)), quote=True)


def _html_table(r: Result, t: Translator) -> str:
    if r.layout == "text":
        return f'<p class="statement" id="t-{_h(r.name)}">{_h(_paragraph(r, t))}</p>'
    parts = [f'<table id="t-{_h(r.name)}">']
    if r.layout == "vertical":
        for label, value in _vertical(r, t):
            parts.append(f'<tr><th scope="row">{_h(label)}</th><td class="n">{_h(value)}</td></tr>')
    else:
        cls = [' class="n"' if c.kind in ("int", "pct", "num") else ' class="d"' if _atomic(c, r.rows, i) else ""
               for i, c in enumerate(r.columns)]
        parts.append("<thead><tr>" + "".join(
            f'<th{k} scope="col">{_h(t(c.label))}</th>' for c, k in zip(r.columns, cls)) + "</tr></thead><tbody>")
        cells = _cells(r, t)
        for i, cs in enumerate(cells):
            total = ' class="total"' if r.total_row and i == len(cells) - 1 else ""
            parts.append(f"<tr{total}>" + "".join(f"<td{k}>{_h(s)}</td>" for s, k in zip(cs, cls)) + "</tr>")
        if not cells:
            parts.append(f'<tr><td colspan="{len(r.columns)}">{_h(t("(none)"))}</td></tr>')
        parts.append("</tbody>")
    parts.append("</table>")
    return "\n".join(parts)


def to_html(report: Report, *, locale: str | Translator = "en", charts: dict[str, str] | None = None,
            chart_after: dict[str, list[str]] | None = None) -> str:
    """A self-contained page: inline CSS, inline SVG charts, no script, strict CSP.

    Each chart sits in the section of the table it draws (chart_after); a "series" table (the
    data of a chart only) is shown as its chart and definition, its rows being in JSON/CSV."""
    t = _tr(locale)
    charts = charts or {}
    chart_after = chart_after or {}
    body = [f"<h1>{_h(title(report))}</h1>", f'<p class="meta">{_h(meta_line(report, t, data_dir=True))}</p>']
    shown = [r for r in report.results
             if r.section != "series" or any(n in charts for n in chart_after.get(r.name, []))]
    body.append("<nav><ul>" + "".join(f'<li><a href="#{_h(r.name)}">{_h(t(r.title))}</a></li>'
                                      for r in shown) + "</ul></nav>")
    for r in shown:
        body.append(f'<section id="{_h(r.name)}"><h2>{_h(t(r.title))}</h2>')
        if r.section != "series":
            body.append(_html_table(r, t))
        if r.note:
            body.append(f'<p class="note">{_h(t(r.note))}</p>')
        body.append(f'<p class="def">{_h(t(r.definition))}</p>')
        for name in chart_after.get(r.name, []):
            if name in charts:
                body.append(f'<figure id="chart-{_h(name)}">{charts[name]}</figure>')
        body.append("</section>")
    lang = "pt-BR" if t.locale == "pt_BR" else "en"
    return (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_h(title(report))}</title><style>" + _CSS + "</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


RENDERERS: dict[str, Callable[..., str]] = {"markdown": markdown, "json": to_json, "csv": to_csv}
