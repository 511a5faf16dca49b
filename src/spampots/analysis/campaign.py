"""Which stored messages belong to a campaign (see the `campaigns` metric and schema.MACROS).

The campaign key is SQL only (macro campaign_key), so that the report, Spark and export can
never disagree on it: export asks the lake (compacted Parquet + segments not compacted yet).
"""

from __future__ import annotations

import re
from pathlib import Path

KEY_RE = re.compile(r"^[0-9a-f]{4,16}$")


def check_key(key: str) -> str:
    """The key lower-cased, or ValueError: 4 to 16 hex digits (a prefix of the 16 the report shows)."""
    k = key.strip().lower()
    if not KEY_RE.match(k):
        raise ValueError(f"campaign {key!r}: expected 4 to 16 hex digits, as in the report's Campaign column")
    return k


def campaign_shas(data_dir: Path, keys: list[str]) -> set[str]:
    """sha256 of every message whose campaign key starts with one of `keys` (checked with check_key)."""
    from .lake import Lake

    con = Lake(data_dir).connect()
    try:
        cond = " OR ".join("starts_with(campaign_key(subject), ?)" for _ in keys)
        rows = con.execute(f"SELECT DISTINCT sha256 FROM smtp_message WHERE {cond}", keys).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows if r[0]}
