"""Source addresses for `spampots synth`: broadband and hosting networks, heavy-tailed, coming and going.

The talk gives only the counts (216,888 IPs, 3,006 ASNs, 165 country codes at full size). Everything
else here is an assumption, marked as such: which networks, how volume is spread over them, and
when each source is active.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .enrich import bundled

TALK_IPS, TALK_ASNS, TALK_COUNTRIES = 216_888, 3_006, 165

# assumption: abusers sit in access (broadband, cable, DSL, mobile) and hosting networks; an AS named
# like a bank, police, government, military or school is not such a network, so it is never drawn.
AVOID = re.compile(r"\b(bank|banco|banque|banca|sparkasse|police|polic[ií]a|pol[ií]cia|gov|government|"
                   r"gouvernement|governo|gobierno|ministr|ministerio|military|army|navy|air ?force|defen[cs]e|"
                   r"court|tribunal|parliament|senate|congress|federal|treasury|embassy|municipal|prefeitura|"
                   r"city of|county|state of|univ|universi|school|college|academ|institut|hospital|health)",
                   re.IGNORECASE)
ACCESS_OR_HOSTING = re.compile(r"(tele|broadband|cable|dsl|fib(er|re)|net|online|host|data ?cent|server|"
                               r"cloud|communica|isp\b|internet|mobile|wireless|vps|colo|web|cable|adsl)",
                               re.IGNORECASE)
ZIPF_AS = 1.0  # assumption: ASes' shares of sources fall as 1/rank (a few big ISPs hold most abusers)
ZIPF_IP = 1.0  # assumption: sources' shares of sessions fall as 1/rank (a few bots send most)
MEAN_LIFE_DAYS = 45  # assumption: a source (an infected host, a rented server) abuses for ~6 weeks


@dataclass
class Pool:
    """n sources: address, weight, first and last active day (inclusive)."""

    ips: list[str]
    ip_ints: np.ndarray  # uint64, the ip_key of each
    weight: np.ndarray  # float64, relative share of sessions while active
    first_day: np.ndarray  # int64
    last_day: np.ndarray  # int64
    asns: int  # distinct AS names drawn
    countries: int  # distinct countries drawn

    def __len__(self) -> int:
        return len(self.ips)


def _networks() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(first, last, AS label, country index, country codes) of the eligible networks."""
    ranges, cc = bundled().public_as_ranges()
    ok_name = np.array([bool(ACCESS_OR_HOSTING.search(n)) and not AVOID.search(n) for n in ranges.labels])
    keep = ok_name[ranges.label]
    codes, cc_i = np.unique(np.array(cc, dtype=object)[keep].astype(str), return_inverse=True)
    return ranges.first[keep], ranges.last[keep], ranges.label[keep], cc_i, [str(c) for c in codes]


def ip_pool(n: int, days: int, seed: int) -> Pool:
    """n distinct public IPv4 sources: a random sample of the talk's population (all of it at n = 216,888).

    The population: 216,888 addresses in 3,006 ASes of 165 countries. ASes are (AS name, country)
    pairs of distinct names: one per country first (countries drawn with weight = how many
    eligible ASes they hold), then the rest. Every AS gets one address before any gets a second;
    the others are spread over the ASes by a 1/rank weight, each in a random network of the AS.
    """
    rng = np.random.default_rng([seed, 1])
    first, last, label, cc_i, _codes = _networks()
    # (label, country) pairs; a label is kept in one country only, so names stay distinct
    pair = label.astype(np.int64) * 4096 + cc_i
    pairs, pair_of_net = np.unique(pair, return_inverse=True)
    p_label, p_cc = pairs // 4096, pairs % 4096
    order = rng.permutation(len(pairs))
    _, first_of_label = np.unique(p_label[order], return_index=True)
    cand = order[np.sort(first_of_label)]  # one random country per AS name
    per_cc = np.bincount(p_cc[cand], minlength=p_cc.max() + 1).astype(np.float64)
    n_cc = int(min(TALK_COUNTRIES, np.count_nonzero(per_cc)))
    ccs = rng.choice(len(per_cc), size=n_cc, replace=False, p=per_cc / per_cc.sum())
    in_cc = cand[np.isin(p_cc[cand], ccs)]
    rng.shuffle(in_cc)
    _, head = np.unique(p_cc[in_cc], return_index=True)  # one AS per chosen country first
    rest = np.setdiff1d(in_cc, in_cc[head], assume_unique=True)
    rest = rng.permutation(rest)[: max(0, TALK_ASNS - len(head))]
    ases = np.concatenate([rng.permutation(in_cc[head]), rest])  # candidate pairs, in rank order
    # networks of each chosen pair
    net_order = np.argsort(pair_of_net, kind="stable")
    lo = np.searchsorted(pair_of_net[net_order], ases, side="left")
    hi = np.searchsorted(pair_of_net[net_order], ases, side="right")
    w_as = 1.0 / np.arange(1, len(ases) + 1) ** ZIPF_AS
    size = max(n, TALK_IPS)  # the talk's population; a smaller pool is a random sample of it
    got, got_as = np.empty(0, np.uint64), np.empty(0, np.int64)
    forced = np.arange(min(size, len(ases)))  # every AS once
    while len(got) < size:
        need = size - len(got)
        a = np.concatenate([forced, rng.choice(len(ases), size=need + 64, p=w_as / w_as.sum())])
        forced = np.empty(0, np.int64)
        net = net_order[lo[a] + (rng.random(len(a)) * (hi[a] - lo[a])).astype(np.int64)]
        span = (last[net] - first[net] + np.uint64(1)).astype(np.float64)
        addr = first[net] + (rng.random(len(a)) * span).astype(np.uint64)
        ok = ((addr & np.uint64(0xFF)) != 0) & ((addr & np.uint64(0xFF)) != 255)
        # keep the first draw of each address, in draw order (the forced ones come first)
        both, both_as = np.concatenate([got, addr[ok]]), np.concatenate([got_as, a[ok]])
        _, idx = np.unique(both, return_index=True)
        idx = np.sort(idx)[:size]
        got, got_as = both[idx], both_as[idx]
    pick = np.sort(rng.choice(size, size=n, replace=False)) if n < size else np.arange(size)
    got, got_as = got[pick], got_as[pick]
    ips = [f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}" for x in got.tolist()]
    weight = 1.0 / rng.permutation(np.arange(1, n + 1)).astype(np.float64) ** ZIPF_IP
    # a small pool lives longer, so that every day still has ~20 sources to draw from
    mean_life = max(MEAN_LIFE_DAYS, min(days, 20 * days / n))
    life = np.minimum(days, rng.geometric(1.0 / mean_life, size=n))
    # a source may have started before the capture and end after it: its window is cut to [0, days)
    start = rng.integers(-life + 1, days, size=n)
    first_day, last_day = np.maximum(start, 0), np.minimum(start + life - 1, days - 1)
    used = ases[got_as]
    return Pool(ips, got, weight, first_day, last_day, asns=len(np.unique(p_label[used])),
                countries=len(np.unique(p_cc[used])))


class DayPicker:
    """Picks sources for the sessions of one day: the sources whose window starts that day first
    (so every source is seen), then by weight among those active."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def pick(self, day: int, n: int, rng: np.random.Generator, *, first_piece: bool = True) -> np.ndarray:
        """Pool indexes of n sessions of `day`; the sources starting that day go to its first piece."""
        p = self.pool
        active = np.flatnonzero((p.first_day <= day) & (p.last_day >= day))
        if not len(active):  # a day between windows (tiny pools): any source
            active = np.arange(len(p))
        new = rng.permutation(np.flatnonzero(p.first_day == day))[:n] if first_piece else np.empty(0, np.int64)
        out = np.empty(n, np.int64)
        out[: len(new)] = new
        if n > len(new):
            cum = np.cumsum(p.weight[active])
            u = rng.random(n - len(new)) * cum[-1]
            out[len(new):] = active[np.minimum(np.searchsorted(cum, u, side="right"), len(active) - 1)]
        return rng.permutation(out)
