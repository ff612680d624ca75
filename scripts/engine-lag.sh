#!/usr/bin/env bash
# The engine's projection lag at peak: `tollgate serve --engine`, wrk driving POST /v1/reserve
# for DURATION seconds (default 60) at CONNECTIONS (50) over USERS (10,000), the gauge
# tollgate_engine_projection_lag_records read from /metrics every second. Prints each sample,
# the mean and the max, wrk's result and the engine's command counts.
#
#   scripts/engine-lag.sh                    # builds the release binary first
#   BIN=target/release/tollgate DURATION=30 scripts/engine-lag.sh
#
# The release build: the figures are rates and lags, which debug info would not change.
#
# Needs wrk and curl (Debian: apt-get install wrk curl).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_SECONDS="${DURATION:-60}"
CONNECTIONS="${CONNECTIONS:-50}"
USERS="${USERS:-10000}"
PORT="${PORT:-7302}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin tollgate
  BIN="${CARGO_TARGET_DIR:-target}/release/tollgate"
fi
dir=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
"$BIN" init --json --data-dir "$dir/data" >"$dir/init.json" 2>/dev/null
key=$(grep -o '"tg_sk_test_[^"]*"' "$dir/init.json" | head -1 | tr -d '"')
TOLLGATE_ENGINE=1 "$BIN" serve --data-dir "$dir/data" --listen "127.0.0.1:$PORT" \
  >"$dir/serve.log" 2>&1 &
server=$!
url="http://127.0.0.1:$PORT"
for _ in $(seq 1 50); do curl -sf "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf -X PUT "$url/v1/plans" -H "Authorization: Bearer $key" \
  -H 'Content-Type: application/json' -d '{"defaultPlan": "bench", "plans": [{"id": "bench",
   "limits": [{"id": "calls", "quota": 1000000000000, "window": {"type": "lifetime"},
   "match": [{"event": "bench.*"}]}]}]}' >/dev/null
TG_KEY="$key" TG_USERS="$USERS" wrk -t2 -c"$CONNECTIONS" -d"${RUN_SECONDS}s" \
  -s bench/wrk/reserve.lua "$url" >"$dir/wrk.txt" 2>&1 &
load=$!
max=0 sum=0 n=0
while kill -0 "$load" 2>/dev/null; do
  lag=$(curl -s "$url/metrics" | awk '/^tollgate_engine_projection_lag_records /{print $2}')
  lag=${lag:-0}
  n=$((n + 1)) sum=$((sum + lag))
  [ "$lag" -gt "$max" ] && max=$lag
  echo "t=${n}s lag=$lag records"
  sleep 1
done
wait "$load"
echo "samples=$n mean_lag=$((sum / (n > 0 ? n : 1))) max_lag=$max"
grep WRK_RESULT "$dir/wrk.txt"
curl -s "$url/metrics" | grep -E '^tollgate_engine'
