"""Keep the pt_BR catalog complete: list the report's words it lacks, and compile it (dev time).

    python3 scripts/i18n.py update [DATA_DIR ...]   # add every missing msgid (empty msgstr) to the .po
    python3 scripts/i18n.py compile                 # .po -> .mo (no gettext tools needed)

Words come from the definitions themselves (every metric and policy query, their columns and
notes) and from rendering the report and `spampots policy port25` over each DATA_DIR in every
format, charts included, so strings built at run time are found too. Then translate the new
entries in src/spampots/locale/pt_BR/LC_MESSAGES/spampots.po and compile.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from spampots.locale import Translator, catalog_path, read_po, write_mo


def static_words() -> list[str]:
    """Every title, label, definition and fixed note the report and the policy page can show."""
    from spampots.analysis import metrics
    from spampots.policy import port25

    words: list[str] = []
    for m in metrics.METRICS:
        words += [m.title, m.definition] + [c.label for c in m.columns]
    words += [metrics.OUTBOUND_DEFINITION, *metrics.OUTBOUND_LABELS.values(), "Type", "Requests"]
    for q in port25.QUERIES:
        words += [q.title, q.definition] + [c.label for c in q.columns]
    words += [port25.STATEMENT_DEF, "In one sentence", "Summary"]
    return words


def rendered_words(data_dir: Path, t: Translator) -> None:
    """Render everything over `data_dir` through `t` (which records what it is asked)."""
    from spampots.analysis import charts, metrics, ports, render
    from spampots.analysis.enrich import Enricher
    from spampots.analysis.lake import Lake
    from spampots.policy import port25

    lake = Lake(data_dir)
    lake.compact(quiet=True)
    for first_per, limit in (("connection", 5_000_000), ("source-ip", 0), ("none", 0)):
        rep = metrics.run(lake.connect(), ports=ports.load(), enricher=Enricher(),
                          opts=metrics.Options(first_per=first_per, exact_limit=limit))
        pol = port25.run(lake.connect(), enricher=Enricher())
        for r, ch, src, after in ((rep, charts.CHARTS, charts.SOURCES, charts.CHART_AFTER),
                                  (pol, charts.POLICY_CHARTS, charts.POLICY_SOURCES, charts.POLICY_CHART_AFTER)):
            render.terminal(r, locale=t, file=io.StringIO(), detail=True)
            render.markdown(r, locale=t, detail=True)
            svg = charts.render(r, None, charts=ch, sources=src, locale=t)
            render.to_html(r, locale=t, charts=svg, chart_after=after)


def main(argv: list[str]) -> int:
    po = catalog_path("pt_BR")
    if argv[:1] == ["compile"]:
        write_mo(read_po(po), catalog_path("pt_BR", ".mo"))
        return 0
    if argv[:1] != ["update"]:
        print(__doc__, file=sys.stderr)
        return 2
    static = {w for w in static_words() if "{top}" not in w}  # those are shown with the number: rendered
    t = Translator("en")
    for d in argv[1:]:
        rendered_words(Path(d), t)
    have = read_po(po) if po.exists() else {}
    words = {w if w in static else t.key(w) for w in static | t.asked if w not in have and t.key(w) not in have}
    new = sorted(w for w in words if w)
    with open(po, "a", encoding="utf-8") as f:
        for w in new:
            f.write("\nmsgid " + _quote(w) + "\nmsgstr \"\"\n")
    print(f"{len(new)} new msgids in {po}", file=sys.stderr)
    return 0


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
