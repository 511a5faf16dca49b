"""Campaign grouping at scale (analysis/campaigns.py, pure): among tens of thousands of bodies,
word salad from a finite vocabulary repeats shingles by chance; those must not outweigh the
template's, or one campaign splits into hundreds (bench/campaigns_scale.py found 306 campaigns
for 24 at 200,000 bodies)."""

from __future__ import annotations

import random
from collections import Counter

from spampots.analysis import campaigns as cp

TEMPLATE = "offer genuine software lowest prices windows office photoshop instant download"


def _layouts(n: int, vocab: int, seed: int = 14) -> list[cp.Layout]:
    rng = random.Random(seed)
    words = [f"salad{k}" for k in range(vocab)]
    # 10 constant words (8 shingles), 40 of salad: about 10 salad shingles per layout repeat
    # in another layout by chance (vocab 150: 3.4M shingles for 1.2M drawn).
    return [cp.Layout(f"l{i}", TEMPLATE + "\n" + " ".join(rng.choice(words) for _ in range(40)), float(i))
            for i in range(n)]


def test_chance_repeats_of_salad_do_not_split_a_big_campaign() -> None:
    idx = cp.CampaignIndex()
    idx.add(_layouts(30_000, 150))
    sizes = Counter(idx.assigned.values())
    # With support 2 alone, 29,627 campaigns; now one holds all but the few layouts whose
    # salad repeats three times or more (about 1.5% here, where salad repeats far more than
    # in real spam).
    assert sizes.most_common(1)[0][1] >= 0.97 * 30_000, sizes.most_common(3)


def test_a_small_batch_keeps_support_two() -> None:
    # 50 layouts: the share asks for less than 2, so a salad shingle seen twice still counts,
    # and the template's 8 shingles (in every layout) hold the campaign together.
    idx = cp.CampaignIndex()
    idx.add(_layouts(50, 150))
    assert len(set(idx.assigned.values())) == 1
