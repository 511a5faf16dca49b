"""Scores of a grouping against known labels: adjusted Rand index (Hubert and Arabie), purity,
inverse purity, and the labelled campaigns that a grouping merged."""

from __future__ import annotations

from collections import Counter, defaultdict
from math import comb
from typing import Hashable, Sequence

import msgspec


class Scores(msgspec.Struct):
    messages: int
    groups: int
    ari: float
    purity: float
    inverse_purity: float
    merged: list[list[Hashable]]  # sets of labels that share a group


def scores(labels: Sequence[Hashable], groups: Sequence[Hashable]) -> Scores:
    n = len(labels)
    cells = Counter(zip(labels, groups))
    by_label = Counter(labels)
    by_group = Counter(groups)
    s_cells = sum(comb(c, 2) for c in cells.values())
    s_lab = sum(comb(c, 2) for c in by_label.values())
    s_grp = sum(comb(c, 2) for c in by_group.values())
    expected = s_lab * s_grp / comb(n, 2) if n > 1 else 0.0
    top = (s_lab + s_grp) / 2
    ari = 1.0 if top == expected else (s_cells - expected) / (top - expected)
    best_in_group: dict[Hashable, int] = defaultdict(int)
    best_in_label: dict[Hashable, int] = defaultdict(int)
    labels_of: dict[Hashable, set] = defaultdict(set)
    for (lab, grp), c in cells.items():
        best_in_group[grp] = max(best_in_group[grp], c)
        best_in_label[lab] = max(best_in_label[lab], c)
        labels_of[grp].add(lab)
    merged = sorted(sorted(v, key=str) for v in labels_of.values() if len(v) > 1)
    return Scores(n, len(by_group), ari, sum(best_in_group.values()) / n if n else 1.0,
                  sum(best_in_label.values()) / n if n else 1.0, merged)
