"""Charts (matplotlib, Agg): SVG and PNG files for papers and slides, inline SVG for the HTML.

SVG text stays text (svg.fonttype 'none': no embedded fonts, no external ones either:
the viewer's sans-serif is used), ids are prefixed per chart so several SVGs can live in
one page, and mathtext is off so a '$' in a label is just a dollar.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable

from .metrics import CATEGORIES, OUTBOUND_LABELS, Report, Result

# Which table each chart illustrates (the HTML places it after that table).
CHART_AFTER = {"summary": ["daily"], "ports": ["ports"], "outbound_socks": ["outbound"],
               "top_countries": ["countries"], "top_asns": ["asns"], "per_sensor": ["hours"]}
_COLORS = ["#2f6690", "#d1495b", "#edae49", "#66a182", "#8d6a9f", "#3a7d44"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "text.parse_math": False, "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False,
                         "font.family": "sans-serif", "svg.hashsalt": "spampots"})
    return plt


def _rows(report: Report, name: str) -> list[tuple]:
    try:
        return report.get(name).rows
    except KeyError:
        return []


def _daily(plt, report: Report):
    rows = [r for r in _rows(report, "daily") if r[0] is not None]
    fig, ax = plt.subplots(figsize=(8, 3))
    if rows:
        days = [r[0] for r in rows]
        ax.plot(days, [r[1] for r in rows], color=_COLORS[0], lw=1, label="emails")
        ax2 = ax.twinx()
        ax2.plot(days, [r[2] for r in rows], color=_COLORS[1], lw=1, label="recipients")
        ax2.set_ylabel("recipients per day", color=_COLORS[1])
        ax2.spines["right"].set_visible(True)
        fig.autofmt_xdate()
    ax.set_ylabel("emails per day", color=_COLORS[0])
    ax.set_title(f"Emails and recipients per day ({report.meta.get('tz', 'UTC')})")
    return fig


def _ports(plt, report: Report):
    rows = _rows(report, "ports")[:15]
    fig, ax = plt.subplots(figsize=(8, 3))
    labels = [f"{r[0]}\n{r[2]}" for r in rows]
    colors = [{"SOCKS": _COLORS[0], "HTTP": _COLORS[1], "SMTP": _COLORS[2]}.get(r[1], _COLORS[4]) for r in rows]
    ax.bar(range(len(rows)), [r[4] or 0 for r in rows], color=colors)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("% of emails")
    ax.set_title("Abused ports (colour: SOCKS / HTTP / SMTP)")
    return fig


def _outbound(plt, report: Report):
    fig, ax = plt.subplots(figsize=(6, 3))
    tables = [r for r in report.results if r.name.startswith("outbound_")]
    for i, cat in enumerate(CATEGORIES):
        label = OUTBOUND_LABELS[cat]
        vals, bottoms = [], []
        for t in tables:
            body = {row[0]: row[2] for row in t.rows}
            below = sum(body.get(OUTBOUND_LABELS[c], 0) for c in CATEGORIES[:i])
            vals.append(body.get(label, 0))
            bottoms.append(below)
        ax.barh([t.title.split(": ")[-1] for t in tables], vals, left=bottoms, color=_COLORS[i], label=label)
    ax.set_xlabel("% of attempts")
    ax.set_xlim(0, 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, frameon=False, fontsize=8)
    ax.set_title("Outbound attempts per proxy protocol")
    fig.subplots_adjust(bottom=0.35)
    return fig


def _top(plt, result: list[tuple], label: Callable[[tuple], str], value_idx: int, title: str):
    rows = [r for r in result if r[value_idx]][:10][::-1]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh([label(r)[:40] for r in rows], [r[value_idx] for r in rows], color=_COLORS[0])
    ax.set_xlabel("emails")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _countries(plt, report: Report):
    return _top(plt, _rows(report, "top_countries"), lambda r: str(r[0]), 1, "Top countries by emails")


def _asns(plt, report: Report):
    return _top(plt, _rows(report, "top_asns"), lambda r: " ".join(x for x in (r[0], r[1]) if x), 3,
                "Top ASNs by emails")


def _hours(plt, report: Report):
    rows = _rows(report, "hours")
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.bar([r[0] for r in rows], [r[1] for r in rows], color=_COLORS[3])
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlabel(f"hour of day ({report.meta.get('tz', 'UTC')})")
    ax.set_ylabel("sessions")
    ax.set_title("Sessions per hour of day")
    return fig


def _port25_month(plt, report: Report):
    """`spampots policy port25`: emails per month, prevented (bottom) and not prevented, stacked."""
    r = report.get("port25_by_month")
    rows = [dict(zip([c.key for c in r.columns], row)) for row in r.rows]
    months = [str(x["month"]) for x in rows]
    prev = [x["emails_prevented"] or 0 for x in rows]
    rest = [x["emails_not"] or 0 for x in rows]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(months, prev, color=_COLORS[0], label="prevented (25/TCP)")
    ax.bar(months, rest, bottom=prev, color=_COLORS[2], label="not prevented")
    ax.set_ylabel("emails")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_title("Emails per month (UTC): what Port 25 Management would have prevented")
    if len(months) > 12:
        fig.autofmt_xdate()
    return fig


# The policy page's charts, kept apart from the report's: render(..., charts=POLICY_CHARTS, ...).
POLICY_CHARTS: dict[str, Callable] = {"port25_month": _port25_month}
POLICY_SOURCES = {"port25_month": "port25_by_month"}
POLICY_CHART_AFTER = {"port25_by_month": ["port25_month"]}

CHARTS: dict[str, Callable] = {"daily": _daily, "ports": _ports, "outbound": _outbound,
                               "countries": _countries, "asns": _asns, "hours": _hours}
SOURCES = {"daily": "daily", "ports": "ports", "outbound": "outbound_http", "countries": "top_countries",
           "asns": "top_asns", "hours": "hours"}  # the table each chart draws


def _svg(fig, name: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    s = buf.getvalue()
    s = re.sub(r"<metadata>.*?</metadata>", "", s, flags=re.S)
    s = s.replace('id="', f'id="{name}-').replace("url(#", f"url(#{name}-").replace('href="#', f'href="#{name}-')
    return s


def render(report: Report, out_dir: Path | None = None, *, svg: bool = True,
           charts: dict[str, Callable] | None = None, sources: dict[str, str] | None = None) -> dict[str, str]:
    """Draw every chart (default: the report's CHARTS); write <name>.svg and <name>.png to out_dir if given.

    `sources` names the table each chart draws; a chart whose table is absent is skipped.
    Returns inline SVG (no XML prolog) per chart name when `svg` is set.
    """
    charts = CHARTS if charts is None else charts
    sources = SOURCES if sources is None else sources
    plt = _plt()
    inline: dict[str, str] = {}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    present = {r.name for r in report.results}
    for name, draw in charts.items():
        if sources[name] not in present:
            continue  # e.g. --talk-only: no per-day table, no per-day chart
        fig = draw(plt, report)
        try:
            text = _svg(fig, name)
            if out_dir:
                (out_dir / f"{name}.svg").write_text(text)
                fig.savefig(out_dir / f"{name}.png", dpi=150, metadata={"Software": None}, bbox_inches="tight")
            if svg:
                inline[name] = text[text.index("<svg"):]
        finally:
            plt.close(fig)
    return inline


__all__ = ["render", "CHARTS", "CHART_AFTER", "POLICY_CHARTS", "POLICY_SOURCES", "POLICY_CHART_AFTER", "Result"]
