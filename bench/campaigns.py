"""Campaign grouping, side by side: the exact-subject key (the report's old Campaigns table),
TLSH alone, ssdeep alone (SHIVA's way; when ppdeep or ssdeep is installed), a frequent-pattern
tree over message features (CEAS 2008, simplified) and the constant-shingle campaigns
(analysis/campaigns.py), on the labelled corpus of analysis/spam_corpus.py. Then the cost:
parsing per message, grouping per distinct layout (also on a large synthetic set of layouts),
and what that means for 524.6M messages.

    python bench/campaigns.py [--per-campaign 30] [--seed 14] [--layouts 200000]

No network: the corpus is made here and parsed in process (tests/test_campaigns_eval.py sends
the same corpus through a real sensor).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from spampots.analysis import campaigns as cp  # noqa: E402
from spampots.analysis import message_features as mf  # noqa: E402
from spampots.analysis.campaign_eval import scores  # noqa: E402
from spampots.analysis.spam_corpus import SALAD, corpus  # noqa: E402

TALK_MESSAGES = 524_600_000


def subject_key(subjects: list[str]) -> list[str]:
    """The report's old key, computed by its own SQL macro (schema.campaign_key)."""
    from spampots.analysis.lake import new_connection

    con = new_connection()
    return [r[0] for r in con.execute("SELECT campaign_key(s) FROM unnest(?) AS t(s)", [subjects]).fetchall()]


def leader(values: list[str], distance, threshold: float) -> list[int]:  # noqa: ANN001
    """Single pass, each message joins the first leader within `threshold` (all leaders compared)."""
    leaders: list[str] = []
    out = []
    for v in values:
        for k, lv in enumerate(leaders):
            if v and lv and distance(v, lv) <= threshold:
                out.append(k)
                break
        else:
            leaders.append(v)
            out.append(len(leaders) - 1)
    return out


def fp_tree(feats: list[mf.Features]) -> list[tuple]:
    """Frequent-pattern tree over per-message items, ordered by global frequency; a message's
    campaign is the deepest node of its path that at least 2 messages share (min support 2).
    Items: language, MIME shape, subject template, first URL's domain, From domain, layout hash."""
    rows = []
    for f in feats:
        rows.append([("lang", f.language), ("mime", ",".join(p.content_type for p in f.parts)),
                     ("subj", mf.mask(f.subject)), ("url", f.url_domains[0] if f.url_domains else ""),
                     ("from", f.from_domain), ("layout", f.layout_hash)])
    freq = Counter(i for r in rows for i in r)
    paths = [tuple(sorted(r, key=lambda i: (-freq[i], i))) for r in rows]
    support = Counter(p[:k] for p in paths for k in range(1, len(p) + 1))
    out = []
    for p in paths:
        k = max((k for k in range(1, len(p) + 1) if support[p[:k]] >= 2), default=len(p))
        out.append(p[:k])
    return out


def constant_shingles(feats: list[mf.Features]) -> tuple[list[str], int, float]:
    first: dict[str, mf.Features] = {}
    n = Counter(f.layout_hash for f in feats)
    for f in feats:
        first.setdefault(f.layout_hash, f)
    idx = cp.CampaignIndex()
    t = time.perf_counter()
    idx.add(cp.Layout(h, f.layout, i, n[h]) for i, (h, f) in enumerate(first.items()))
    return [idx.assigned[f.layout_hash] for f in feats], len(first), time.perf_counter() - t


def synthetic_layouts(n: int, per: int, seed: int) -> list[cp.Layout]:
    """`n` distinct layouts from n/per campaigns: a fixed 40-word template each, with 10 to 30
    words of salad in every layout (the worst case: no two layouts alike)."""
    rng = random.Random(seed)
    words = SALAD + [f"w{k}" for k in range(20000)]
    out = []
    for c in range(max(1, n // per)):
        tpl = " ".join(rng.choice(words) for _ in range(40))
        for k in range(per):
            salad = " ".join(rng.choice(words) for _ in range(rng.randint(10, 30)))
            out.append(cp.Layout(f"{c}-{k}", tpl + "\n" + salad, len(out), 1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-campaign", type=int, default=30)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--layouts", type=int, default=200_000, help="synthetic distinct layouts for the cost run")
    args = ap.parse_args()

    msgs = corpus(per_campaign=args.per_campaign, seed=args.seed)
    labels = [m.label for m in msgs]
    mf.parse(msgs[0].raw)  # load the language models once (a fixed cost, not per message)
    t, c = time.perf_counter(), time.process_time()
    feats = [mf.parse(m.raw, received=0.0, rcpts=[m.rcpt]) for m in msgs]
    parse_wall = (time.perf_counter() - t) / len(msgs)
    parse_s = (time.process_time() - c) / len(msgs)  # CPU: what the extrapolation uses (a busy machine
    # stretches wall time, not the work)
    print(f"corpus: {len(msgs)} messages, {len(set(labels))} labelled campaigns, seed {args.seed}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"parse (message_features.parse): {parse_s * 1e3:.2f} ms CPU per message ({parse_wall * 1e3:.2f} ms wall)")

    import tlsh

    texts = [f.subject + "\n" + f.text for f in feats]
    methods: list[tuple[str, list]] = [("exact subject key (old report)", subject_key([f.subject for f in feats]))]
    tl = [tlsh.hash(x.encode()) for x in texts]
    tl = [h if h not in ("", "TNULL") else "" for h in tl]
    for thr in (50, 100):
        methods.append((f"TLSH alone (leader, diff <= {thr})", leader(tl, tlsh.diff, thr)))
    try:
        import ppdeep as fuzzy  # pure Python, same hashes as ssdeep
    except ImportError:
        try:
            import ssdeep as fuzzy  # type: ignore[no-redef]
        except ImportError:
            fuzzy = None
    if fuzzy is not None:
        sd = [fuzzy.hash(x) for x in texts]
        methods.append(("ssdeep alone (leader, score >= 50)", leader(sd, lambda a, b: 100 - fuzzy.compare(a, b), 50)))
    else:
        print("ssdeep: neither ppdeep nor ssdeep installed; skipped")
    methods.append(("FP-tree over features (CEAS 2008, simplified)", fp_tree(feats)))
    ours, n_layouts, group_s = constant_shingles(feats)
    methods.append(("constant shingles (spampots campaigns)", ours))
    print(f"\n{'method':48} {'groups':>6} {'ARI':>6} {'purity':>7} {'inv.pur':>7} merged")
    for name, groups in methods:
        s = scores(labels, groups)
        print(f"{name:48} {s.groups:6d} {s.ari:6.3f} {s.purity:7.3f} {s.inverse_purity:7.3f} {len(s.merged)}")

    print(f"\ngrouping cost on the corpus: {n_layouts} distinct layouts in {group_s * 1e3:.1f} ms")
    lays = synthetic_layouts(args.layouts, 50, args.seed)
    idx = cp.CampaignIndex()
    t, c = time.perf_counter(), time.process_time()
    half = len(lays) // 2
    idx.add(lays[:half])
    c_half = time.process_time() - c
    idx.add(lays[half:])  # incremental: the second half meets the campaigns of the first
    wall = time.perf_counter() - t
    total = time.process_time() - c
    per_layout = total / len(lays)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"synthetic: {len(lays):,} distinct layouts (50 per campaign, salad in each): {total:.1f} s CPU "
          f"({wall:.1f} s wall; {per_layout * 1e6:.0f} us per layout; first half {c_half:.1f} s), "
          f"{len(set(idx.assigned.values())):,} campaigns (expected {len(lays) // 50:,}), peak RSS {rss:,.0f} MB")
    cores = 1
    print(f"\n{TALK_MESSAGES:,} messages (talk scale), not run here, extrapolated from the figures above:")
    print(f"  parse every body once, worst case all distinct: {TALK_MESSAGES * parse_s / 3600 / cores:,.0f} core-hours "
          f"(parallel per body: / cores)")
    print(f"  group, worst case one distinct layout per message: {TALK_MESSAGES * per_layout / 3600:,.1f} hours "
          f"in one process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
