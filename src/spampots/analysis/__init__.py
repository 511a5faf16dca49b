"""Analysis of what sensors stored: lake, metrics, enrichment, reports.

Kept import-light: the CLI registers these commands on every `spampots` call,
including `spampots run`, which must not pay for DuckDB, NumPy or PyArrow.
"""

# How the talk's "first attempt" is counted (see docs/report.md).
FIRST_PER = ("connection", "source-ip", "none")
