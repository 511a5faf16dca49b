"""`spampots serve`: the live web dashboard over a data dir, read-only (docs/dashboard.md)."""
