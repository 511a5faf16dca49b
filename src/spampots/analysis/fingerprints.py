"""Who sends: the sources' operating systems, from the SYN fingerprints the sensor recorded.

The sensor records each session's SYN as a p0f raw signature (session.open's ``tcp_sig``);
the report classifies the distinct signatures (few, however many sessions) with p0f's
database and joins the labels back in SQL, so both engines run the same queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from ..protocols.synfp import P0F_DB, P0fDb, parse_raw

NO_DB = "unclassified (no p0f database)"
UNKNOWN = "unknown"


def load_db(path: Optional[str]) -> Optional[P0fDb]:
    """The p0f database named (an error if unreadable), else Debian's when installed, else None."""
    if path:
        return P0fDb.load(path)
    return P0fDb.load(P0F_DB) if P0F_DB.exists() else None


def build_sig_os(con: Any, db: Optional[P0fDb]) -> int:
    """Temp table sig_os(tcp_sig, os): p0f's label for every distinct recorded signature
    ("unknown" when none matches; a fuzzy match is marked "(fuzzy)"). Returns the count."""
    sigs = [r[0] for r in con.execute(
        "SELECT DISTINCT tcp_sig FROM session_open WHERE tcp_sig IS NOT NULL").fetchall()]
    labels = []
    for raw in sigs:
        sig = parse_raw(raw)
        if db is None:
            labels.append(NO_DB)
        elif sig is None:
            labels.append(UNKNOWN)
        else:
            label, fuzzy = db.classify(sig)
            labels.append((label + " (fuzzy)" if fuzzy else label) if label else UNKNOWN)
    con.register("_sig_os", pa.table({"tcp_sig": pa.array(sigs, pa.string()), "os": pa.array(labels, pa.string())}))
    con.execute("CREATE OR REPLACE TEMP TABLE sig_os AS SELECT tcp_sig, os FROM _sig_os")
    con.unregister("_sig_os")
    return len(sigs)


def db_source(db: Optional[P0fDb]) -> str:
    return f"p0f {Path(db.source).name} ({len(db.refs)} SYN signatures)" if db is not None else "none"
