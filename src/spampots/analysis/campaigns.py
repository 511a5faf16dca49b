"""Campaigns: messages grouped by what stays constant across them (pure, no I/O).

The idea is the frequent-pattern one of Calais et al. (CEAS 2008): a campaign's messages share
the parts its template fixes, and differ in the parts it obfuscates. Here the items of a
message are the word 3-shingles of its *layout* (message_features.mask: links, addresses,
numbers, random tokens and the recipient's name already masked). Then:

1. Items that occur in one message only are dropped (the FP-tree's minimum support of
   2): word salad, misspellings and whatever else a spammer varies per message never repeat,
   while the template's shingles repeat in every message of the campaign. In a big batch the
   support needed grows to MIN_SUPPORT_SHARE of its messages (salad repeats by chance there);
   a layout left with no item then falls back to support 2. Items already known to a campaign
   count as repeated, so new data meets old campaigns.
2. One pass over the distinct layouts, in order of first appearance: an inverted index from
   item to campaign finds the candidates (no comparison of all pairs); a layout joins the
   campaign whose representative shares the most of its items when that is at least
   MIN_SHARE of the layout's items and of the representative's; otherwise it founds a campaign,
   whose id is derived from its first layout (``cmp-`` and 12 hex digits), so ids are stable.
   A member that matches less than closely becomes an extra representative (up to MAX_REPS),
   so a campaign's variants (an HTML and a plain version, a second paragraph) still join.
3. The template: the first layout's words, those not covered by a shingle that at least half
   of the campaign's (sampled) members share shown as ``*``.

Incremental: :class:`CampaignIndex` keeps the representatives and the layout -> campaign map;
:meth:`CampaignIndex.add` assigns only layouts it has not seen, to existing campaigns first.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

SHINGLE = 3
MIN_SHARE = 0.5  # of a layout's items (and of the representative's) that must be shared to join
CLOSE = 0.8  # a member matching at least this well is not kept as an extra representative
MAX_REPS = 8  # representatives per campaign
MAX_ITEMS = 512  # items per layout (the first ones: a template's constant text is usually early)
STOP_POSTINGS = 2000  # an item in more campaigns than this is boilerplate: it finds no candidates
# Minimum support grows with the batch: among hundreds of thousands of bodies, word salad drawn from
# a finite vocabulary repeats some 3-shingles by chance, and a layout made mostly of those would
# found a campaign of its own (200,000 bodies of 24 campaigns gave 306). A template's shingles
# repeat in every message of its campaign, far above this share.
MIN_SUPPORT_SHARE = 1e-4
_TOKEN_RE = re.compile(r"\w+|\n")


def tokens(layout: str) -> list[str]:
    return _TOKEN_RE.findall(layout)


_K = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1  # items fit a signed 64-bit Parquet column
_words: dict[str, int] = {}  # word -> its hash: each word is hashed once, shingles combine them


def _wh(w: str) -> int:
    h = _words.get(w)
    if h is None:
        if len(_words) >= 1 << 20:  # bounded: a salad of a million made-up words starts it over
            _words.clear()
        h = _words[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
    return h


def _gram(words: Sequence[str]) -> int:
    """A stable 63-bit hash of a word sequence (order matters)."""
    h = len(words)
    for w in words:
        h = (h * _K + _wh(w)) & 0xFFFFFFFFFFFFFFFF
    return h & _MASK


def _grams(words: Sequence[str]) -> list[int]:
    if len(words) < SHINGLE:
        return [_gram(words)] if words else []
    return [_gram(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)]


def items(layout: str) -> list[int]:
    """The layout's items: hashed word 3-shingles (its words alone when it has fewer than 3)."""
    return list(dict.fromkeys(_grams([t for t in tokens(layout) if t != "\n"])))[:MAX_ITEMS]


def campaign_id(layout_hash: str) -> str:
    return "cmp-" + hashlib.sha256(layout_hash.encode()).hexdigest()[:12]


@dataclass
class Rep:
    campaign: str
    layout_hash: str
    items: frozenset[int]


@dataclass
class Layout:
    layout_hash: str
    layout: str
    first_ts: float = 0.0  # sort key: layouts are assigned in order of first appearance
    messages: int = 1  # distinct bodies with this layout: an item's support counts messages


@dataclass
class CampaignIndex:
    reps: list[Rep] = field(default_factory=list)
    assigned: dict[str, str] = field(default_factory=dict)  # layout_hash -> campaign id
    _postings: dict[int, list[int]] = field(default_factory=dict)  # item -> indexes into reps
    _nreps: Counter = field(default_factory=Counter)  # campaign -> representatives

    def __post_init__(self) -> None:
        reps, self.reps = self.reps, []
        for r in reps:
            self._add_rep(r)

    def _add_rep(self, rep: Rep) -> None:
        n = len(self.reps)
        self.reps.append(rep)
        self._nreps[rep.campaign] += 1
        for i in rep.items:
            self._postings.setdefault(i, []).append(n)

    def _best(self, f: frozenset[int]) -> tuple[int, float]:
        hits: Counter = Counter()
        for i in f:
            post = self._postings.get(i)
            if post and len(post) <= STOP_POSTINGS:
                hits.update(post)
        best, score = -1, 0.0
        for r, h in hits.items():
            s = min(h / len(f), h / len(self.reps[r].items))
            if s > score or (s == score and best >= 0 and r < best):
                best, score = r, s
        return best, score

    def add(self, layouts: Iterable[Layout]) -> dict[str, str]:
        """Assign the layouts not seen before; returns layout_hash -> campaign id for them."""
        new = sorted({lay.layout_hash: lay for lay in layouts if lay.layout_hash not in self.assigned}.values(),
                     key=lambda lay: (lay.first_ts, lay.layout_hash))
        sets = [frozenset(items(lay.layout)) for lay in new]
        df: Counter = Counter()
        for lay, s in zip(new, sets):
            for i in s:
                df[i] += lay.messages
        need = max(2.0, MIN_SUPPORT_SHARE * sum(lay.messages for lay in new))
        out: dict[str, str] = {}
        for lay, s in zip(new, sets):
            # A campaign too small for the batch's share keeps the plain minimum support of 2.
            f = (frozenset(i for i in s if df[i] >= need or i in self._postings)
                 or frozenset(i for i in s if df[i] >= 2) or s)
            cid = None
            if f:
                best, score = self._best(f)
                if best >= 0 and score >= MIN_SHARE:
                    cid = self.reps[best].campaign
                    if score < CLOSE and self._nreps[cid] < MAX_REPS:
                        self._add_rep(Rep(cid, lay.layout_hash, f))
            if cid is None:
                cid = campaign_id(lay.layout_hash)
                if f:
                    self._add_rep(Rep(cid, lay.layout_hash, f))
            self.assigned[lay.layout_hash] = out[lay.layout_hash] = cid
        return out


def template(layouts: Sequence[str], sample: int = 50) -> str:
    """The campaign's template from its members' layouts (the first one is shown): words covered
    by a shingle at least half of the (first `sample`) members share, others as ``*``."""
    if not layouts:
        return ""
    members = layouts[:sample]
    support: Counter = Counter()
    for lay in members:
        support.update(set(items(lay)))
    need = max(1, (len(members) + 1) // 2)
    toks = tokens(members[0])
    words = [(k, t) for k, t in enumerate(toks) if t != "\n"]
    keep = [False] * len(toks)
    width = min(SHINGLE, len(words))
    for j, g in enumerate(_grams([t for _, t in words])):
        if support[g] >= need:
            for k, _ in words[j:j + width]:
                keep[k] = True
    out: list[str] = []
    for k, t in enumerate(toks):
        w = t if (keep[k] or t == "\n") else "*"
        if w == "*" and out and out[-1] == "*":
            continue
        out.append(w)
    return re.sub(r" ?\n ?", "\n", " ".join(out)).strip()
