"""Renderers: numbers like the talk, and hostile text made harmless in every format."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from spampots.analysis import render
from spampots.analysis.metrics import Column, Report, Result

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
    assert "Obs.: Only the first request" in md
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
