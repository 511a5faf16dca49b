#!/usr/bin/env bash
# Run every atheris harness for RUNS inputs (default 1,000,000), one after another, and
# print each one's final line (inputs up to MAX_LEN bytes, default 2048; the harness limits are
# small, so every limit path is reachable well within that). Logs and any crash reproducer go to OUT (default /tmp/spampots-fuzz/logs).
#   bash fuzz/run_all.sh [RUNS] [harness ...]
set -uo pipefail
cd "$(dirname "$0")"
RUNS=${1:-1000000}; shift || true
OUT=${OUT:-/tmp/spampots-fuzz/logs}
mkdir -p "$OUT"
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(proxy_header socks4 socks5 tls_hello http smtp)
for n in "${names[@]}"; do
  start=$(date +%s)
  python3 "fuzz_$n.py" -runs="$RUNS" -max_len="${MAX_LEN:-2048}" -timeout=600 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$OUT/$n-" > "$OUT/$n.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  echo "$n: exit $rc after ${secs}s: $(grep -E '^(#[0-9]+\s+DONE|stat::number_of_executed_units)' "$OUT/$n.log" | tr '\n' ' ')"
  grep -E '^==[0-9]+== ERROR|Uncaught Python exception|AssertionError' "$OUT/$n.log" | head -3
done
