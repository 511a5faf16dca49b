"""Campaigns at scale: the report's campaign pipeline over a big event lake (``spampots synth``,
up to the talk-scale 524.6M messages), timed phase by phase.

    python bench/campaigns_scale.py LAKE_DATA_DIR [--bodies 200000] [--seed 14] [--scratch DIR [--keep]]
                                    [--baseline]

``spampots synth`` writes events only: their sha256 values name no body. So this makes a body
population first and maps every smtp_message row onto it:

- K distinct bodies (``--bodies``, 200,000 by default: an assumption, about one distinct body per
  2,600 messages at talk scale) from the 24 labelled campaigns of analysis/spam_corpus.py, with
  their obfuscations (random tokens, names, word salad, HTML/plain, base64/QP, charsets), stored
  in a message store in a scratch data dir. Body i belongs to campaign i mod 24.
- Each message gets a body in SQL, on the fly (a view over the lake's smtp_message: no copy of
  the rows): its session picks the campaign and the message (session, index, time) picks one of
  the campaign's bodies, both heavy-tailed: rank r = floor((n+1)^u) - 1 for a hash u in [0, 1),
  so P(r) falls like log(1 + 1/(r+1)), about 1/r. A campaign is so sent by many sessions and
  sources, some bodies by millions of messages and most by few.

Then the real pipeline of ``spampots report`` (analysis/message_lake.py, campaign_report.py):

1. features: message_features.parse once per distinct body (message_lake.update_features);
2. grouping: the distinct layouts into campaigns, one pass (message_lake.update_campaigns);
3. tables: the campaign tables over all messages (campaign_report.add_to_report: the list with
   messages, recipients, sources, protocols, ports, MX hosts, URL domains, languages, first and
   last seen; the detail of the 5 largest with ASes and countries; the strategies table).

With --baseline, the previous way of making the tables (a temporary copy of every campaign message
with its body's URLs, then the list from it) is timed too, on the same connection, and its list
checked against ours.

Each phase prints wall time, CPU time (this process: DuckDB's threads included) and peak RSS.
Last, the checks: every labelled campaign found and none merged with another (scores over the
distinct bodies), and the campaigns' messages add up to the lake's.

Loopback and network free: it reads files only. The scratch dir is removed unless --keep.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from spampots.analysis import campaign_report as cr  # noqa: E402
from spampots.analysis import message_lake as ml  # noqa: E402
from spampots.analysis.campaign_eval import scores  # noqa: E402
from spampots.analysis.lake import Lake, report_memory_limit  # noqa: E402
from spampots.analysis.spam_corpus import TEMPLATES, message  # noqa: E402
from spampots.store.messages import MessageStore  # noqa: E402

C = len(TEMPLATES)
U = "(hash({x}) / 18446744073709551616.0)"  # a hash as a uniform number in [0, 1)


def rank(n: str, x: str) -> str:
    """SQL: a heavy-tailed rank in [0, n) from the hash of `x` (floor((n+1)^u) - 1)."""
    return f"least({n} - 1, CAST(floor(pow({n} + 1, {U.format(x=x)})) AS BIGINT) - 1)"


def body_view(k: int) -> str:
    """The lake's smtp_message (renamed smtp_message_events) with each row's sha256 replaced by
    one of the k bodies in table bench_body(k, sha256): campaign by session, body by message."""
    per = k // C
    camp = rank(str(C), "session")
    body = rank(str(per), "session, \"index\", ts")
    return f"""CREATE OR REPLACE VIEW smtp_message AS
        SELECT m.* REPLACE (b.sha256 AS sha256)
        FROM smtp_message_events m JOIN bench_body b ON b.k = {camp} + {C} * ({body})"""


# The baseline: how the campaign tables were made before, a temporary copy of every campaign
# message with its body's URLs, then the list from it (too big for memory and disk at 524.6M).
OLD_COPY = """CREATE TEMP TABLE old_campaign_message AS
    SELECT m.ts, m.day, m.src_ip, m.ip_key, m.listener_port, m.proxy, m.target_host, m.n_rcpts, m.sender_domain,
           m.subject, m.sha256, l.campaign, f.url_domains, f.urls, f.from_domain, f.language
    FROM smtp_message m JOIN message_features f USING (sha256) JOIN campaign_layout l USING (layout_hash)"""
OLD_LIST = """SELECT c.campaign, min(c.ts), max(c.ts), count(*) AS messages, sum(c.n_rcpts), count(DISTINCT c.ip_key),
       list_sort(list_distinct(list(coalesce(nullif(c.proxy, ''), 'direct')))), list_sort(list_distinct(list(c.listener_port))),
       count(DISTINCT c.target_host), len(list_distinct(flatten(list(c.url_domains)))),
       list_sort(list_distinct(list(nullif(c.language, ''))))
FROM old_campaign_message c GROUP BY c.campaign ORDER BY messages DESC, c.campaign"""


def baseline(con) -> list[tuple]:  # noqa: ANN001
    con.execute(OLD_COPY)
    out = con.execute(OLD_LIST).fetchall()
    con.execute("DROP TABLE old_campaign_message")
    return out


@dataclass
class Phase:
    name: str
    wall: float
    cpu: float
    rss_mb: float


class Meter:
    """Wall, CPU and peak RSS per phase (the peak is reset between phases where Linux allows)."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []

    @staticmethod
    def _reset_peak() -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    @staticmethod
    def _peak_mb() -> float:
        try:
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def run(self, name: str, fn, *a, **kw):  # noqa: ANN001, ANN201
        self._reset_peak()
        t, c = time.perf_counter(), time.process_time()
        out = fn(*a, **kw)
        ph = Phase(name, time.perf_counter() - t, time.process_time() - c, self._peak_mb())
        self.phases.append(ph)
        print(f"  {name:44} {ph.wall:9.1f} s wall {ph.cpu:9.1f} s CPU   peak RSS {ph.rss_mb:7,.0f} MB", flush=True)
        return out


def make_bodies(data_dir: Path, k: int, seed: int) -> tuple[list[str], list[int]]:
    """k bodies of the labelled campaigns (body i: campaign i mod C) in data_dir's message store
    (kept there and listed in bodies-<k>-<seed>.parquet: another run with --scratch reuses them)."""
    listing = data_dir / f"bodies-{k}-{seed}.parquet"
    if listing.exists():
        t = pq.read_table(listing)
        return t.column("sha256").to_pylist(), t.column("label").to_pylist()
    rng = random.Random(seed)
    store = MessageStore(data_dir, sensor="bench")
    shas, labels = [], []
    try:
        for start in range(0, k, 5000):
            with store.batch():
                for i in range(start, min(k, start + 5000)):
                    m = message(TEMPLATES[i % C], rng, i, i % C)
                    shas.append(store.put(m.raw)[0])
                    labels.append(m.label)
                store.sync()
    finally:
        store.close()
    pq.write_table(pa.table({"sha256": shas, "label": labels}), listing)
    return shas, labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lake_data_dir", type=Path, help="a data dir whose lake/ holds the events (spampots synth --out)")
    ap.add_argument("--bodies", type=int, default=200_000, help="distinct bodies K (default 200,000)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--scratch", type=Path, help="scratch data dir (default: a new temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (its bodies serve the next run)")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the previous way (a copy of every campaign message, then the list)")
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory limit (default: the report's)")
    args = ap.parse_args()
    if args.bodies < C:
        ap.error(f"--bodies: at least {C}")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="campaigns-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    limit = args.memory_limit or report_memory_limit()
    print(f"lake {args.lake_data_dir}; {args.bodies:,} distinct bodies of {C} labelled campaigns (seed {args.seed}); "
          f"DuckDB memory limit {limit}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    m = Meter()
    try:
        shas, labels = m.run("bodies: make and store", make_bodies, scratch, args.bodies, args.seed)
        # Our lake root in the scratch dir (features and campaigns from scratch each run); the
        # events are read from the big lake (its base, read-only).
        shutil.rmtree(scratch / "lake", ignore_errors=True)
        lake = Lake(args.lake_data_dir, root=scratch / "lake")
        con = lake.connect(memory_limit=limit)
        con.execute("SET enable_progress_bar = false")
        con.execute("ALTER VIEW smtp_message RENAME TO smtp_message_events")
        con.register("_bodies", pa.table({"k": list(range(len(shas))), "sha256": shas}))
        con.execute("CREATE TEMP TABLE bench_body AS SELECT * FROM _bodies")
        con.unregister("_bodies")
        con.execute(body_view(len(shas)))
        n_msgs = m.run("count the lake's messages", lambda: con.execute("SELECT count(*) FROM smtp_message_events")
                       .fetchone()[0])
        print(f"  {n_msgs:,} smtp_message rows", flush=True)
        # What the bench's own mapping costs (each scan of the events below pays it again).
        m.run("the body mapping alone (one scan)", lambda: con.execute(
            "SELECT count(DISTINCT sha256) FROM smtp_message").fetchone())

        st = m.run("1. features (parse each distinct body once)", ml.update_features, con, scratch, lake.root)
        st = m.run("2. grouping (distinct layouts, one pass)", ml.update_campaigns, con, lake.root, st)
        print(f"  parsed {st.parsed:,} bodies ({st.missing:,} missing), {st.layouts:,} distinct layouts, "
              f"{st.campaigns:,} campaigns", flush=True)
        ml.create_views(con, lake.root)
        report = SimpleNamespace(results=[])
        m.run("3. campaign tables over all messages", cr.add_to_report, report, con, None, 20)
        rows = m.run("   the full list (every campaign)", cr.search, con, top=1_000_000)
        if args.baseline:
            old = m.run("baseline: the list from a copy of the rows", baseline, con)
            keys = ("campaign", "first_seen", "last_seen", "messages", "recipients", "sources", "protocols", "ports",
                    "mx_hosts", "url_domains", "languages")
            same = [tuple(r) for r in old] == [tuple(r[k] for k in keys) for r in rows]
            print(f"  baseline list: {len(old)} campaigns, {'the same' if same else 'DIFFERENT'} figures")

        # -- checks ------------------------------------------------------------------------------
        # Scored over the bodies some message was mapped to (the heavy tail leaves a few unused).
        camp = dict(con.execute("SELECT sha256, campaign FROM message_campaign").fetchall())
        used = [(s, lab) for s, lab in zip(shas, labels) if s in camp]
        labels = [lab for _, lab in used]
        groups = [camp[s] for s, _ in used]
        sc = scores(labels, groups)
        found = set(labels)
        per_label = Counter(labels)
        print(f"\ncheck: {len(used):,} of the {len(shas):,} bodies were given to messages")
        print(f"check: {len(found)} of {C} labelled campaigns found; {sc.groups:,} campaigns over these "
              f"{len(used):,} bodies: ARI {sc.ari:.3f}, purity {sc.purity:.3f}, inverse purity "
              f"{sc.inverse_purity:.3f}, merged {len(sc.merged)}; bodies per campaign {min(per_label.values()):,}"
              f"-{max(per_label.values()):,}")
        cells = Counter(zip(groups, labels))
        for g in sorted({g for g, _ in cells if len({lab for gg, lab in cells if gg == g}) > 1}):
            print(f"  merged in {g}: " + ", ".join(f"campaign {lab} ({n:,} bodies)"
                                                  for (gg, lab), n in sorted(cells.items()) if gg == g))
        splits = Counter(lab for _, lab in cells)
        print(f"  campaigns per labelled campaign: {', '.join(f'{lab}: {splits[lab]}' for lab in sorted(splits))}")
        total = sum(r["messages"] for r in rows)
        print(f"check: the campaigns' messages add up to {total:,} of {n_msgs:,} "
              f"({'equal' if total == n_msgs else 'DIFFERENT'}); tables: {', '.join(r.name for r in report.results)}")
        big = rows[:5]
        for r in big:
            print(f"  {r['campaign']} {r['messages']:>13,} msgs {r['recipients']:>13,} rcpts {r['sources']:>9,} IPs "
                  f"{','.join(r['protocols'])} ports {len(r['ports'])} MX {r['mx_hosts']:,} "
                  f"{r['first_seen']:%Y-%m-%d}..{r['last_seen']:%Y-%m-%d}")
        con.close()
        ours = [p for p in m.phases[3:] if not p.name.startswith("baseline")]
        print(f"\npipeline (phases 1-3 and the full list): {sum(p.wall for p in ours):,.0f} s wall, "
              f"{sum(p.cpu for p in ours):,.0f} s CPU; peak RSS {max(p.rss_mb for p in ours):,.0f} MB")
        ok = len(found) == C and not sc.merged and total == n_msgs
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
