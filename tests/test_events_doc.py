"""docs/events.md and spampots.events must list the same events and fields."""

from __future__ import annotations

import re
from pathlib import Path

from spampots.events import COMMON_FIELDS, EVENT_TYPES, Event

DOC = Path(__file__).parent.parent / "docs" / "events.md"


def _doc_tables() -> dict[str, set[str]]:
    """{section heading: field names in its table}."""
    out: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## ") or line.startswith("### "):
            current = line.lstrip("#").strip()
            out.setdefault(current, set())
        m = re.match(r"^\|\s*([a-z_0-9]+)\s*\|", line)
        if m and current and m.group(1) != "field":
            out[current].add(m.group(1))
    return out


def test_every_event_documented_with_exactly_its_fields():
    tables = _doc_tables()
    documented_events = {k for k in tables if k.startswith("spampots.")}
    assert documented_events == set(EVENT_TYPES), "events in code and docs differ"
    for name, cls in EVENT_TYPES.items():
        own = set(cls.__struct_fields__) - set(Event.__struct_fields__)
        assert tables[name] == own, f"{name}: code {sorted(own)} vs docs {sorted(tables[name])}"


def test_common_fields_documented():
    tables = _doc_tables()
    assert tables["Common fields"] == set(COMMON_FIELDS)
    assert set(COMMON_FIELDS) == set(Event.__struct_fields__) | {"event"}
