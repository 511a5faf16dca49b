"""Charts (matplotlib, Agg): SVG and PNG files for papers and slides, inline SVG for the HTML.

SVG text stays text (svg.fonttype 'none': no embedded fonts, no external ones either:
the viewer's sans-serif is used), ids are prefixed per chart so several SVGs can live in
one page, and mathtext is off so a '$' in a label is just a dollar.

One y axis per chart, starting at 0; per-day charts span exactly the days in the data. The map
is drawn from Natural Earth geometry shipped in the package (data/world-110m.json), so nothing
is fetched. Every word on a chart goes through the report's Translator (--locale).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

from ..locale import Translator
from .metrics import CATEGORIES, OUTBOUND_LABELS, Report, Result

# Which table each chart illustrates (the HTML places it in that table's section).
CHART_AFTER = {"ports": ["ports"], "outbound_socks": ["outbound"], "top_countries": ["countries"],
               "top_asns": ["asns"], "hours": ["hours"], "daily": ["daily"],
               "daily_protocol": ["daily_protocol"], "daily_port": ["daily_port"], "daily_sensor": ["daily_sensor"],
               "country_sources": ["map"]}
_COLORS = ["#2f6690", "#d1495b", "#edae49", "#66a182", "#8d6a9f", "#3a7d44", "#9aa5b1"]
_PROTO_COLORS = {"SOCKS": _COLORS[0], "HTTP": _COLORS[1], "SMTP": _COLORS[2]}
Draw = Callable[..., object]


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


def _day_axis(ax, days: list[dt.date], t: Translator) -> None:
    """x from the first to the last day of the data (half a day of margin), dates as numbers."""
    import matplotlib.dates as mdates

    if not days:
        return
    lo = dt.datetime.combine(min(days), dt.time()) - dt.timedelta(hours=12)
    hi = dt.datetime.combine(max(days), dt.time()) + dt.timedelta(hours=12)
    ax.set_xlim(lo, hi)
    pt = t.locale == "pt_BR"
    span = (max(days) - min(days)).days
    if span <= 10:
        locator, fmt = mdates.DayLocator(), "%d/%m/%Y" if pt else "%Y-%m-%d"
    elif span <= 180:
        locator, fmt = mdates.AutoDateLocator(minticks=3, maxticks=8), "%d/%m" if pt else "%m-%d"
    else:
        locator, fmt = mdates.AutoDateLocator(minticks=3, maxticks=10), "%m/%Y" if pt else "%Y-%m"
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt))


def _per_day(ax, days: list[dt.date], values: list[float], bottom: Optional[list[float]] = None, **kw) -> None:
    """Bars of one day each for short periods, a filled step for long ones (bars would be hairlines)."""
    x = [dt.datetime.combine(d, dt.time()) for d in days]
    if len(days) <= 62 or (max(days) - min(days)).days <= 62:
        ax.bar(x, values, width=0.8, bottom=bottom, **kw)
    else:
        base = bottom or [0] * len(values)
        top = [b + v for b, v in zip(base, values)]
        ax.fill_between(x, base, top, step="mid", lw=0, **kw)


def _daily(plt, report: Report, t: Translator):
    """Emails per day and recipients per day: two panels, each on its own axis from 0."""
    rows = [r for r in _rows(report, "daily") if r[0] is not None]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True)
    days = [r[0] for r in rows]
    if rows:
        _per_day(ax1, days, [r[1] or 0 for r in rows], color=_COLORS[0])
        _per_day(ax2, days, [r[2] or 0 for r in rows], color=_COLORS[1])
        _day_axis(ax2, days, t)
    for ax, label in ((ax1, t("emails per day")), (ax2, t("recipients per day"))):
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    ax1.set_title(t("Emails and recipients per day") + f" ({report.meta.get('tz', 'UTC')})")
    fig.tight_layout()
    return fig


def _stacked_days(plt, rows: list[tuple], title: str, t: Translator, colors: Callable[[str, int], str]):
    """rows (day, key, value): one bar (or band) per day, stacked by key, biggest key at the bottom."""
    rows = [r for r in rows if r[0] is not None]
    days = sorted({r[0] for r in rows})
    totals: dict[str, float] = {}
    for _d, k, v in rows:
        totals[str(k)] = totals.get(str(k), 0) + (v or 0)
    keys = sorted(totals, key=lambda k: (k == "other", -totals[k], k))
    by = {(r[0], str(r[1])): r[2] or 0 for r in rows}
    fig, ax = plt.subplots(figsize=(8, 3))
    bottom = [0.0] * len(days)
    for i, k in enumerate(keys):
        vals = [by.get((d, k), 0) for d in days]
        _per_day(ax, days, vals, bottom=list(bottom), color=colors(k, i), label=t(k) if k == "other" else k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    _day_axis(ax, days, t)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(t("emails per day"))
    ax.set_title(title)
    if keys:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _daily_protocol(plt, report: Report, t: Translator):
    return _stacked_days(plt, _rows(report, "daily_protocol"), t("Emails per day by protocol (UTC)"), t,
                         lambda k, i: _PROTO_COLORS.get(k, _COLORS[4]))


def _daily_port(plt, report: Report, t: Translator):
    return _stacked_days(plt, _rows(report, "daily_port"), t("Emails per day by port (UTC)"), t,
                         lambda k, i: _COLORS[-1] if k == "other" else _COLORS[i % (len(_COLORS) - 1)])


def _daily_sensor(plt, report: Report, t: Translator):
    return _stacked_days(plt, _rows(report, "daily_sensor"), t("Emails per day by sensor (UTC)"), t,
                         lambda k, i: _COLORS[-1] if k == "other" else _COLORS[i % (len(_COLORS) - 1)])


def _ports(plt, report: Report, t: Translator):
    rows = _rows(report, "ports")[:15]
    fig, ax = plt.subplots(figsize=(8, 3))
    labels = [f"{r[0]}\n{r[2]}" for r in rows]
    colors = [_PROTO_COLORS.get(r[1], _COLORS[4]) for r in rows]
    ax.bar(range(len(rows)), [r[4] or 0 for r in rows], color=colors)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(t("% of emails"))
    ax.set_title(t("Abused ports (colour: SOCKS / HTTP / SMTP)"))
    return fig


def _outbound(plt, report: Report, t: Translator):
    fig, ax = plt.subplots(figsize=(6, 3))
    tables = [r for r in report.results if r.name.startswith("outbound_")]
    for i, cat in enumerate(CATEGORIES):
        label = OUTBOUND_LABELS[cat]
        vals, bottoms = [], []
        for tb in tables:
            body = {row[0]: row[2] for row in tb.rows}
            below = sum(body.get(OUTBOUND_LABELS[c], 0) for c in CATEGORIES[:i])
            vals.append(body.get(label, 0))
            bottoms.append(below)
        ax.barh([tb.title.split(": ")[-1] for tb in tables], vals, left=bottoms, color=_COLORS[i], label=t(label))
    ax.set_xlabel(t("% of attempts"))
    ax.set_xlim(0, 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, frameon=False, fontsize=8)
    ax.set_title(t("Outbound attempts per proxy protocol"))
    fig.subplots_adjust(bottom=0.35)
    return fig


def _top(plt, result: list[tuple], label: Callable[[tuple], str], value_idx: int, title: str, t: Translator):
    rows = [r for r in result if r[value_idx]][:10][::-1]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh([label(r)[:40] for r in rows], [r[value_idx] for r in rows], color=_COLORS[0])
    ax.set_xlim(left=0)
    ax.set_xlabel(t("emails"))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _countries(plt, report: Report, t: Translator):
    return _top(plt, _rows(report, "top_countries"), lambda r: str(r[0]), 1, t("Top countries by emails"), t)


def _asns(plt, report: Report, t: Translator):
    return _top(plt, _rows(report, "top_asns"), lambda r: " ".join(x for x in (r[0], r[1]) if x), 3,
                t("Top ASNs by emails"), t)


def _hours(plt, report: Report, t: Translator):
    rows = _rows(report, "hours")
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.bar([r[0] for r in rows], [r[1] for r in rows], color=_COLORS[3])
    ax.set_xticks(range(0, 24, 2))
    ax.set_ylim(bottom=0)
    ax.set_xlabel(t("hour of day") + f" ({report.meta.get('tz', 'UTC')})")
    ax.set_ylabel(t("sessions"))
    ax.set_title(t("Sessions per hour of day"))
    return fig


@lru_cache(maxsize=1)
def world() -> dict[str, list[list[float]]]:
    """ISO alpha-2 -> outer rings as flat [lon, lat, lon, lat, ...] lists (Natural Earth 1:110m)."""
    text = resources.files("spampots").joinpath("data/world-110m.json").read_text()
    return json.loads(text)["countries"]


def _map(plt, report: Report, t: Translator):
    """Choropleth: source IPs per country, on a log scale (a few countries dwarf the rest)."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter

    counts = {str(r[0]).upper(): r[1] or 0 for r in _rows(report, "country_sources") if r[0]}
    shapes = world()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    polys, values, empty = [], [], []
    for code, rings in shapes.items():
        for flat in rings:
            ring = list(zip(flat[0::2], flat[1::2]))
            if counts.get(code):
                polys.append(ring)
                values.append(counts[code])
            else:
                empty.append(ring)
    ax.add_collection(PolyCollection(empty, facecolor="#eceff2", edgecolor="#ffffff", linewidth=0.3))
    if polys:
        top = max(values)
        coll = PolyCollection(polys, array=values, cmap="YlOrRd", norm=LogNorm(vmin=1, vmax=max(top, 2)),
                              edgecolor="#ffffff", linewidth=0.3)
        ax.add_collection(coll)
        bar = fig.colorbar(coll, ax=ax, shrink=0.7, pad=0.01)
        bar.set_ticks(sorted({1, top} | {10 ** k for k in range(1, int(math.log10(top)) + 1)}))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}" if v >= 1 else ""))
        bar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda _v, _p: ""))
        bar.set_label(t("source IPs (log scale)"))
    ax.set_xlim(-180, 180)
    ax.set_ylim(-58, 84)
    ax.set_aspect(1 / math.cos(math.radians(25)))
    ax.set_axis_off()
    located = sum(counts.values())
    mapped = sum(v for k, v in counts.items() if k in shapes)
    ax.set_title(t("Source IPs by country"))
    if located > mapped:
        ax.text(0.0, -0.02, t(f"Not on the map (too small at this scale): {located - mapped:,} source IPs"),
                transform=ax.transAxes, fontsize=7, color="#56616d")
    return fig


def _port25_month(plt, report: Report, t: Translator):
    """`spampots policy port25`: emails per month, prevented (bottom) and not prevented, stacked."""
    r = report.get("port25_by_month")
    rows = [dict(zip([c.key for c in r.columns], row)) for row in r.rows]
    months = [str(x["month"]) for x in rows]
    prev = [x["emails_prevented"] or 0 for x in rows]
    rest = [x["emails_not"] or 0 for x in rows]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(months, prev, color=_COLORS[0], label=t("prevented (25/TCP)"))
    ax.bar(months, rest, bottom=prev, color=_COLORS[2], label=t("not prevented"))
    ax.set_ylim(bottom=0)
    ax.set_ylabel(t("emails"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_title(t("Emails per month (UTC): what Port 25 Management would have prevented"))
    if len(months) > 12:
        fig.autofmt_xdate()
    return fig


# The policy page's charts, kept apart from the report's: render(..., charts=POLICY_CHARTS, ...).
POLICY_CHARTS: dict[str, Draw] = {"port25_month": _port25_month}
POLICY_SOURCES = {"port25_month": "port25_by_month"}
POLICY_CHART_AFTER = {"port25_by_month": ["port25_month"]}

CHARTS: dict[str, Draw] = {"daily": _daily, "daily_protocol": _daily_protocol, "daily_port": _daily_port,
                           "daily_sensor": _daily_sensor, "ports": _ports, "outbound": _outbound, "countries": _countries, "map": _map,
                           "asns": _asns, "hours": _hours}
SOURCES = {"daily": "daily", "daily_protocol": "daily_protocol", "daily_port": "daily_port",
           "daily_sensor": "daily_sensor", "ports": "ports",
           "outbound": "outbound_http", "countries": "top_countries", "map": "country_sources",
           "asns": "top_asns", "hours": "hours"}  # the table each chart draws


def _svg(fig, name: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    s = buf.getvalue()
    s = re.sub(r"<metadata>.*?</metadata>", "", s, flags=re.S)
    s = s.replace('id="', f'id="{name}-').replace("url(#", f"url(#{name}-").replace('href="#', f'href="#{name}-')
    return s


def figures(report: Report, *, charts: dict[str, Draw] | None = None, sources: dict[str, str] | None = None,
            locale: str | Translator = "en"):
    """(name, matplotlib figure) for every chart whose table is in the report; the caller closes them."""
    charts = CHARTS if charts is None else charts
    sources = SOURCES if sources is None else sources
    t = locale if isinstance(locale, Translator) else Translator(locale)
    plt = _plt()
    present = {r.name for r in report.results}
    for name, draw in charts.items():
        if sources[name] in present:  # e.g. --talk-only: no per-day table, no per-day chart
            yield name, draw(plt, report, t)


def render(report: Report, out_dir: Path | None = None, *, svg: bool = True,
           charts: dict[str, Draw] | None = None, sources: dict[str, str] | None = None,
           locale: str | Translator = "en") -> dict[str, str]:
    """Draw every chart (default: the report's CHARTS); write <name>.svg and <name>.png to out_dir if given.

    `sources` names the table each chart draws; a chart whose table is absent is skipped.
    Returns inline SVG (no XML prolog) per chart name when `svg` is set.
    """
    plt = _plt()
    inline: dict[str, str] = {}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures(report, charts=charts, sources=sources, locale=locale):
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


__all__ = ["render", "figures", "world", "CHARTS", "CHART_AFTER", "POLICY_CHARTS", "POLICY_SOURCES",
           "POLICY_CHART_AFTER", "Result"]
