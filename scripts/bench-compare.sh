#!/usr/bin/env bash
# Tollgate against the Redis Lua reference script (bench/redis/tollgate.lua), in one run on this
# machine: reserve+commit pairs at several concurrencies, each target run ROUNDS times
# interleaved (Tollgate on SQLite, Redis with appendfsync always, Redis without persistence),
# then a paced run of Tollgate at half its measured peak for the tail latency.
#
#   scripts/bench-compare.sh                 # defaults below
#   CONCURRENCY="1 16" ROUNDS=5 SECONDS_PER_RUN=10 scripts/bench-compare.sh
#
# Needs redis-server on PATH (Debian: apt-get install redis-server). Prints every table and a
# summary; exits non-zero if any run breaks exactness.
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY="${CONCURRENCY:-1 4 16 64}"
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
USERS="${USERS:-10000}"

# The release build users run: the figures are rates and latencies, which debug info would not
# change (the profiling profile is for callgrind and perf).
cargo build --release --bin tollgate
bin="${CARGO_TARGET_DIR:-target}/release/tollgate"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

peak=0
for c in $CONCURRENCY; do
  echo
  echo "== reserve+commit, $c client(s), $ROUNDS round(s) of ${SECONDS_PER_RUN} s"
  "$bin" bench --compare-redis --rounds "$ROUNDS" --concurrency "$c" \
    --duration-seconds "$SECONDS_PER_RUN" --users "$USERS" 2>/dev/null | tee "$out/c$c.txt" |
    sed -n '/^comparison/,$p'
  rate=$(awk '/^tollgate \(sqlite, own server\)/ && seen {print $(NF-3)} /^comparison/ {seen=1}' \
    "$out/c$c.txt" | cut -d. -f1)
  if [ "${rate:-0}" -gt "$peak" ]; then peak=$rate; peak_c=$c; fi
done

half=$((peak / 2))
if [ "$half" -gt 0 ]; then
  echo
  echo "== Tollgate paced at half its peak: $half pairs/s (peak $peak at $peak_c clients)"
  "$bin" bench --rate "$half" --concurrency "$peak_c" --duration-seconds "$SECONDS_PER_RUN" \
    --users "$USERS" 2>/dev/null
fi
echo
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
