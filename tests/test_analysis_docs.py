"""docs/report.md carries every metric definition, word for word, and every base table and option."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from spampots.analysis import metrics
from spampots.analysis.cli import register

DOC = Path(__file__).resolve().parents[1] / "docs" / "report.md"


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


@pytest.fixture(scope="module")
def doc() -> str:
    return _norm(DOC.read_text())


@pytest.mark.parametrize("m", metrics.METRICS, ids=lambda m: m.name)
def test_every_metric_is_defined_in_the_docs(doc: str, m: metrics.Metric) -> None:
    assert f"`{m.name}`" in doc
    assert _norm(m.definition) in doc


def test_bases_and_outbound_definition(doc: str) -> None:
    for name, (definition, _sql) in metrics.BASES.items():
        assert f"`{name}`: {_norm(definition)}" in doc
    assert _norm(metrics.OUTBOUND_DEFINITION) in doc


def test_every_report_option_is_documented(doc: str) -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    register(sub)
    for name in ("report", "synth"):
        for action in sub.choices[name]._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert f"`{opt}" in doc or f"{opt} " in doc or f"/ `{opt}" in doc, (name, opt)
