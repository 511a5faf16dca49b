"""Which stored messages belong to a campaign, for `spampots export --campaign`.

Two kinds of key:
- ``cmp-`` and hex digits: a campaign of analysis/campaigns.py (`spampots campaigns`, the
  report's Campaigns table). The lake's message features and campaigns are brought up to date
  first (message_lake.update), so the ids are those `spampots campaigns` shows.
- 4 to 16 hex digits: the older subject key (SQL macro campaign_key, schema.MACROS), so that
  the report, Spark and export can never disagree on it.
Both are answered from the lake (compacted Parquet + segments not compacted yet).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

KEY_RE = re.compile(r"^[0-9a-f]{4,16}$")


def check_key(key: str) -> str:
    """The key lower-cased, or ValueError: a campaign id (cmp-…) or 4 to 16 hex digits (a
    prefix of the subject hash)."""
    k = key.strip().lower()
    if k.startswith("cmp-"):
        from .campaign_report import check_id

        return check_id(k)
    if not KEY_RE.match(k):
        raise ValueError(f"campaign {key!r}: expected a campaign id (cmp-…) or 4 to 16 hex digits of a subject hash")
    return k


def campaign_shas(data_dir: Path, keys: list[str], *, cache_dir: Optional[Path] = None) -> set[str]:
    """sha256 of every message of the campaigns `keys` (checked with check_key)."""
    from .lake import Lake

    lake = Lake(data_dir, cache_dir=cache_dir)
    new = [k for k in keys if k.startswith("cmp-")]
    old = [k for k in keys if not k.startswith("cmp-")]
    out: set[str] = set()
    if new:
        from . import campaign_report, message_lake

        message_lake.update(lake)
    con = lake.connect()
    try:
        if new:
            message_lake.create_views(con, lake.root)
            out |= campaign_report.shas(con, new)
        if old:
            cond = " OR ".join("starts_with(campaign_key(subject), ?)" for _ in old)
            rows = con.execute(f"SELECT DISTINCT sha256 FROM smtp_message WHERE {cond}", old).fetchall()
            out |= {r[0] for r in rows if r[0]}
    finally:
        con.close()
    return out
