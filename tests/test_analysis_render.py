"""Renderers: numbers like the talk, hostile text made harmless in every format, terminal tables
that fit 80 columns, charts on the data's own axes, and every word in Brazilian Portuguese."""

from __future__ import annotations

import csv
import datetime as dt
import gettext
import io
import json
import re
from pathlib import Path

import pytest

from spampots.analysis import charts, metrics, render
from spampots.analysis.cli import main as cli_main
from spampots.analysis.metrics import Column, Report, Result
from spampots.locale import LOCALE_DIR, Translator, catalog_path, read_po
from spampots.policy import port25
from test_analysis_availability import T0, _write
from test_analysis_pipeline import report, talk_like
from test_policy_port25 import capture as policy_capture

EVIL = "<script>alert(1)</script> | [x](javascript:1) *b* \x1b[31mRED\x1b[0m\u202eevil [bold]m[/bold]"


def _report() -> Report:
    return Report([
        Result("subjects", "Subjects", "defs", [Column("subject", "Subject"), Column("emails", "Emails", "int"),
                                                Column("pct", "%", "pct"), Column("first", "First", "date")],
               [(EVIL, 1234567, 97.6249, dt.date(2006, 6, 10)), ("=cmd|' /C calc'!A0", 5, 2.3751, None)],
               section="more"),
        Result("outbound_http", "Outbound attempts: HTTP", "defs",
               [Column("type", "Type"), Column("requests", "Requests", "int"), Column("pct", "%", "pct")],
               [("Out to 25/TCP", 89_496_969, 97.62), ("Total", 91_677_255, 100.0)], section="talk",
               total_row=True, note="Only the first request of each connection (session) is counted."),
    ], {"generated": "now", "first_per": "connection", "enrichment": "x"})


@pytest.mark.parametrize("value,kind,locale,text", [
    (524_585_779, "int", "en", "524,585,779"), (524_585_779, "int", "pt", "524.585.779"),
    (9.1606, "num", "pt", "9,16"), (1_125_720.547, "num", "en", "1,125,720.55"), (97.6249, "pct", "en", "97.62"),
    (0.005, "pct", "en", "0.01"), (-1234.5, "num", "en", "-1,234.50"), (dt.date(2006, 6, 10), "date", "pt", "10/06/2006"),
    (None, "int", "en", ""),
])
def test_numbers_like_the_talk(value, kind, locale, text) -> None:
    assert render.fmt(value, kind, locale) == text


def test_markdown_escapes_and_keeps_the_talks_shape() -> None:
    md = render.markdown(_report(), locale="pt")
    assert "| Out to 25/TCP | 89.496.969 | 97,62 |" in md
    assert "| **Total** | **91.677.255** | **100,00** |" in md
    assert "Obs.: Só a primeira requisição" in md  # pt is pt_BR: words translated too
    line = next(x for x in md.splitlines() if "alert" in x)
    assert "<script>" not in line and "&lt;script&gt;" in line
    assert line.count(" | ") == 3  # the pipe in the subject does not split the row
    assert "\\[x\\]" in line and "\x1b" not in md and "\u202e" not in md


def test_terminal_never_interprets_data() -> None:
    out = io.StringIO()
    render.terminal(_report(), file=out)
    assert "1,234,567" in out.getvalue() and "97.62" in out.getvalue()
    hostile = "\x1b[31mRED\x1b[0m \u202eevil [bold]m[/bold]"
    out = io.StringIO()
    render.terminal(Report([Result("x", "X", "", [Column("s", "S")], [(hostile,)])]), file=out)
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text
    assert "\\x1b[31mRED" in text and "\\u202eevil" in text  # shown, not sent to the terminal
    assert "[bold]m[/bold]" in text  # rich markup in data stays literal


def test_csv_neutralises_formulas_and_json_is_plain() -> None:
    text = render.to_csv(_report())
    assert text.startswith("# subjects: Subjects\nsubject,emails,pct,first\n")
    rows = list(csv.reader(io.StringIO(text.split("\n\n")[0].split("\n", 1)[1])))
    assert rows[1][0] == render.visible(EVIL) and rows[2][0].startswith("'=cmd")
    doc = json.loads(render.to_json(_report()))
    assert doc["tables"]["subjects"]["rows"][0] == {"subject": EVIL, "emails": 1234567, "pct": 97.6249,
                                                   "first": "2006-06-10"}
    assert doc["tables"]["outbound_http"]["note"].startswith("Only the first")


def test_html_escapes_everything() -> None:
    html = render.to_html(_report())
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "\x1b" not in html and "\u202e" not in html
    assert '<tr class="total"><td>Total</td>' in html


# -- a real capture: the talk-like day, a sensor beating every minute (timestamps with microseconds) ----
@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("capture")
    talk_like(d).flush()
    t0 = T0.timestamp() + 0.123456
    _write(d, "br-dsl-1", [(t0, "start")] + [(t0 + 60 * i + 0.5, "heartbeat") for i in range(1, 30)])
    return d


@pytest.fixture(scope="module")
def rep(captured: Path) -> Report:
    return report(captured)


@pytest.fixture(scope="module")
def policy_rep(tmp_path_factory: pytest.TempPathFactory) -> Report:
    from spampots.analysis.enrich import Enricher
    from spampots.analysis.lake import Lake

    d = tmp_path_factory.mktemp("policy")
    policy_capture(d)
    lake = Lake(d)
    lake.compact()
    return port25.run(lake.connect(), enricher=Enricher(None, cache_dir=d / "cache"))


def _dates(r: Report, locale: str) -> set[str]:
    """Every date and timestamp the terminal shows, as formatted."""
    return {render.fmt(v, c.kind, locale) for res in render._shown(r, render.SHOWN_DETAIL)
            for row in res.rows for v, c in zip(row, res.columns) if isinstance(v, dt.date)}


@pytest.mark.parametrize("locale", ["en", "pt_BR"])
def test_terminal_tables_fit_80_columns_and_keep_dates_whole(rep: Report, policy_rep: Report, locale: str) -> None:
    for r in (rep, policy_rep):
        buf = io.StringIO()
        render.terminal(r, locale=locale, file=buf, width=80, detail=True)
        text = buf.getvalue()
        assert max(len(line) for line in text.splitlines()) <= 80
        dates = _dates(r, locale)
        assert dates or r is policy_rep
        for d in dates:
            assert d in text, d  # never split over two lines ("2026-1 / 2-06")
        for res in render._shown(r, render.SHOWN_DETAIL):  # every table there, its columns all shown
            if res.layout == "table":
                t = Translator(locale)
                assert t(res.title) in text
    avail = rep.get("availability")
    assert avail.rows and "2026-01-05 10:00:00" in _dates(rep, "en")  # seconds, no microseconds


def test_cli_honours_columns(captured: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert cli_main(["report", "--data-dir", str(captured), "-q", "--detail", "--no-compact"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "2026-01-05 10:00:00" in out and "Sensor availability" in out


def test_timestamps_to_the_second_never_wrapped(rep: Report) -> None:
    assert render.fmt(dt.datetime(2026, 1, 5, 10, 0, 0, 123456), "text") == "2026-01-05 10:00:00"
    assert render.fmt(dt.datetime(2026, 1, 5, 10, 0, 0, 123456), "text", "pt_BR") == "05/01/2026 10:00:00"
    html = render.to_html(rep)
    table = html[html.index('id="t-availability"'):]
    table = table[: table.index("</table>")]
    assert '<td class="d">2026-01-05 10:00:00</td>' in table and ".123456" not in table
    assert "td.d{white-space:nowrap" in html


# -- charts ------------------------------------------------------------------------------------------
def _figures(r: Report, locale: str = "en") -> dict:
    return dict(charts.figures(r, locale=locale))


def _close(figs: dict) -> None:
    import matplotlib.pyplot as plt

    for f in figs.values():
        plt.close(f)


def _days(ax) -> tuple[dt.date, dt.date]:
    import matplotlib.dates as mdates

    lo, hi = ax.get_xlim()
    return mdates.num2date(lo).date(), mdates.num2date(hi).date()


def test_one_day_capture_charts_that_day(rep: Report) -> None:
    figs = _figures(rep)
    try:
        for name in ("daily", "daily_protocol", "daily_port", "daily_sensor"):
            for ax in figs[name].axes:
                lo, hi = _days(ax)
                assert dt.date(2026, 1, 4) <= lo and hi <= dt.date(2026, 1, 6), (name, lo, hi)
                assert ax.get_ylim()[0] == 0
        bars = [p.get_height() for ax in figs["daily_protocol"].axes for p in ax.patches]
        assert sorted(bars) == [1, 2, 4]  # SMTP 1, HTTP 2, SOCKS 4 emails that day, stacked
    finally:
        _close(figs)


def _long_report(days: int = 466) -> Report:
    start = dt.date(2006, 6, 10)
    daily = [(start + dt.timedelta(i), 1000 + (i % 7) * 50, 9000 + (i % 5) * 400, 20000) for i in range(days)]
    proto = [(d, p, n) for d, e, _r, _s in daily for p, n in (("SOCKS", e * 6 // 10), ("HTTP", e * 4 // 10))]
    ports = [(d, p, n) for d, e, _r, _s in daily for p, n in (("1080", e // 2), ("8080", e // 4), ("other", e // 4))]
    m = {x.name: x for x in metrics.METRICS}
    res = [Result(n, m[n].title, m[n].definition, m[n].columns, rows, section=m[n].section)
           for n, rows in (("daily", daily), ("daily_protocol", proto), ("daily_port", ports))]
    return Report(res, {})


def test_long_capture_one_axis_per_chart_from_zero() -> None:
    figs = _figures(_long_report())
    try:
        for name, fig in figs.items():
            boxes = [tuple(round(v, 4) for v in ax.get_position().bounds) for ax in fig.axes]
            assert len(boxes) == len(set(boxes)), name  # no twin axes sharing one plot
            for ax in fig.axes:
                assert ax.get_ylim()[0] == 0, name
                lo, hi = _days(ax)
                assert lo >= dt.date(2006, 6, 9) and hi <= dt.date(2007, 9, 20), (name, lo, hi)
        legend = [x.get_text() for x in figs["daily_port"].axes[0].get_legend().get_texts()]
        assert legend == ["1080", "8080", "other"]
    finally:
        _close(figs)


def test_map_colours_the_countries_with_sources(rep: Report) -> None:
    from matplotlib.collections import PolyCollection

    sources = {r[0]: r[1] for r in rep.get("country_sources").rows}
    assert sources and "--" not in sources
    world = charts.world()
    assert {"BR", "US", "AU", "CH", "RU", "FJ"} <= set(world)
    figs = _figures(rep)
    try:
        coloured = [c for c in figs["map"].axes[0].collections
                    if isinstance(c, PolyCollection) and c.get_array() is not None]
        assert len(coloured) == 1
        values = list(coloured[0].get_array())
        assert len(values) == sum(len(world[k]) for k in sources)  # every ring of every such country
        assert set(values) == set(sources.values())
    finally:
        _close(figs)
    for rings in world.values():  # no ring crosses the map (the antimeridian is split at build time)
        for flat in rings:
            lons = flat[0::2]
            assert max(abs(b - a) for a, b in zip(lons, lons[1:])) <= 180


def test_html_places_each_chart_in_its_own_section(rep: Report) -> None:
    page = render.to_html(rep, charts=charts.render(rep), chart_after=charts.CHART_AFTER)
    sections = dict(re.findall(r'<section id="([a-z_0-9]+)">(.*?)</section>', page, re.S))
    assert 'id="chart-hours"' in sections["hours"] and "<figure" not in sections["per_sensor"]
    assert 'id="chart-daily"' in sections["daily"] and "<figure" not in sections["summary"]
    for name, chart in (("daily_protocol", "daily_protocol"), ("daily_port", "daily_port"),
                        ("daily_sensor", "daily_sensor"), ("country_sources", "map"), ("top_countries", "countries")):
        assert f'id="chart-{chart}"' in sections[name], name
    assert 'id="t-daily_protocol"' not in page  # a chart's data: in JSON and CSV, drawn in the page


# -- pt_BR -------------------------------------------------------------------------------------------
def _render_all(r: Report, t: Translator, policy: bool = False) -> str:
    ch = (charts.render(r, charts=charts.POLICY_CHARTS, sources=charts.POLICY_SOURCES, locale=t) if policy
          else charts.render(r, locale=t))
    buf = io.StringIO()
    render.terminal(r, locale=t, file=buf, detail=True, width=80)
    return "\n".join([buf.getvalue(), render.markdown(r, locale=t, detail=True),
                      render.to_html(r, locale=t, charts=ch,
                                     chart_after=charts.POLICY_CHART_AFTER if policy else charts.CHART_AFTER)])


def _words(r: Report) -> list[str]:
    return [w for res in r.results for w in [res.title, res.definition, res.note] + [c.label for c in res.columns]
            if w]


def test_pt_BR_leaves_no_word_untranslated(rep: Report, policy_rep: Report) -> None:
    t = Translator("pt_BR")
    pages = [_render_all(rep, t), _render_all(policy_rep, t, policy=True)]
    assert t.missing == set()  # every word asked for while rendering, charts included
    # and whatever the data: every table any report can show (a new table fails here until translated)
    static = [w.replace("{top}", "20") for m in metrics.METRICS for w in [m.title, m.definition]
              + [c.label for c in m.columns]]
    static += [w.replace("{top}", "20") for q in port25.QUERIES for w in [q.title, q.definition]
               + [c.label for c in q.columns]]
    static += [metrics.OUTBOUND_DEFINITION, port25.STATEMENT_DEF, *metrics.OUTBOUND_LABELS.values()]
    static += _words(rep) + _words(policy_rep)
    assert [w for w in static if not t.has(w)] == []
    # nothing English is left on the pages: no title or definition, no English sentence
    for w in _words(rep) + _words(policy_rep):
        if len(w.split()) >= 3 and t(w) != w:
            assert all(w not in page for page in pages), w
    assert "Resumo da coleta" in pages[0] and "Collection summary" not in pages[0]
    assert "05/01/2026" in pages[0] and "Gerência da Porta 25" in pages[1]
    assert 'lang="pt-BR"' in pages[0] and "e-mails por dia" in pages[0]  # a chart's words too


def test_catalog_compiled_and_pt_is_an_alias(captured: Path, tmp_path: Path) -> None:
    po = read_po(catalog_path("pt_BR"))
    mo = gettext.translation("spampots", localedir=str(LOCALE_DIR), languages=["pt_BR"])
    compiled = mo._catalog  # type: ignore[attr-defined]
    assert {k: v for k, v in po.items() if k and v} == {k: v for k, v in compiled.items() if k}
    assert all(po.values())  # no empty translation
    outs = []
    for loc in ("pt", "pt_BR"):
        out = tmp_path / f"{loc}.md"
        assert cli_main(["report", "--data-dir", str(captured), "-q", "--no-compact", "--locale", loc,
                         "--out", str(out)]) == 0
        outs.append(re.sub(r"Gerado em \S+", "", out.read_text()))
    assert outs[0] == outs[1] and "## Resumo da coleta" in outs[0]
