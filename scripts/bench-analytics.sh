#!/usr/bin/env bash
# Analytics at scale (BENCHMARKS.md, "Analytics over 10 million events"): loads synthetic usage
# events with `tollgate seed-events`, starts `tollgate serve` on them and times, over HTTP with
# curl, the two questions of docs/analytics.md:
#   Q1  one user's last hour by model (POST /v1/analytics/usage, seed_u0, image.*)
#   Q2  top users by cost over the last 30 days (GET /v1/analytics/top-users)
#   Q3  the same over 29 days from noon to noon, the range that leaves the most events to the
#       table (half a day at either end; docs/analytics.md, "At scale")
# on SQLite, and on PostgreSQL when TOLLGATE_BENCH_POSTGRES_URL names a server on which the
# script may create and drop the database `tollgate_bench_analytics`.
#
#   scripts/bench-analytics.sh                          # 10,000,000 events, 10,000 users
#   EVENTS=1000000 RUNS=50 scripts/bench-analytics.sh
#   TOLLGATE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/bench-analytics.sh
#
# Settings (environment): EVENTS (10000000), USERS (10000), RUNS (20, per question),
# BIN (default: `cargo build --release`, then its binary), KEEP=1 keeps the SQLite data dir.
# Needs curl and jq. Not run in CI (a 10-million-event load takes minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${EVENTS:-10000000}"
USERS="${USERS:-10000}"
RUNS="${RUNS:-20}"
if [[ -z "${BIN:-}" ]]; then
  cargo build --release --quiet -p tollgate-cli
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/tollgate"
fi
work=$(mktemp -d)
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [[ "${KEEP:-0}" == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT

die() { echo "bench-analytics: $*" >&2; exit 1; }

# serve STORAGE-ARGS...: starts the server, sets $url.
serve() {
  RUST_LOG="warn,tollgate=info" "$BIN" serve --listen 127.0.0.1:0 "$@" >"$work/serve.log" 2>&1 &
  server_pid=$!
  url=""
  for _ in $(seq 1 300); do
    url=$(grep -so 'listening on http://[0-9.:]*' "$work/serve.log" | head -1 | sed 's/listening on //') || true
    [[ -n "$url" ]] && break
    sleep 0.1
  done
  [[ -n "$url" ]] || die "the server did not start: $(tail -20 "$work/serve.log")"
}

stop() {
  kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# stats FILE: median, p90 and max of the seconds in FILE, in ms.
stats() {
  sort -n "$1" | awk '{ v[NR] = $1 * 1000 } END {
    printf "median %.1f ms, p90 %.1f ms, max %.1f ms (%d runs)\n",
      v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)], v[NR], NR }'
}

# time_it NAME FILE CURL-ARGS...: runs the request RUNS times (after one warm-up), checking 200.
time_it() {
  local name=$1 out=$2
  shift 2
  : >"$out"
  curl -s -o "$work/answer.json" "$@" -H "Authorization: Bearer $key"
  for _ in $(seq 1 "$RUNS"); do
    code=$(curl -s -o "$work/answer.json" -w '%{http_code} %{time_total}' "$@" \
      -H "Authorization: Bearer $key")
    [[ "${code%% *}" == 200 ]] || die "$name answered ${code%% *}: $(cat "$work/answer.json")"
    echo "${code#* }" >>"$out"
  done
  printf '%-44s %s\n' "$name" "$(stats "$out")"
}

questions() {
  local label=$1
  local to from
  to=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  from=$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)
  time_it "$label Q1 last hour of seed_u0 by model" "$work/q1" \
    -X POST "$url/v1/analytics/usage" -H 'Content-Type: application/json' \
    -d "{\"from\":\"$from\",\"to\":\"$to\",\"filters\":{\"userId\":\"seed_u0\",\"event\":\"image.*\"},
         \"groupBy\":[\"metadata.model\"],\"metrics\":[\"events\",\"quantity\",\"costMicros\"]}"
  echo "    $(jq -c '.rows' "$work/answer.json")"
  time_it "$label Q2 top 10 users by cost, 30 days" "$work/q2" \
    "$url/v1/analytics/top-users?by=costMicros&limit=10"
  echo "    $(jq -c '.users[0]' "$work/answer.json")"
  # Noon to noon: both partial days are half a day, the most events the rollup leaves to read.
  local noon_from noon_to
  noon_from=$(date -u -d '-30 days' +%Y-%m-%dT12:00:00Z)
  noon_to=$(date -u -d '-1 days' +%Y-%m-%dT12:00:00Z)
  time_it "$label Q3 top 10 users by cost, noon to noon" "$work/q3" \
    "$url/v1/analytics/top-users?by=costMicros&limit=10&from=$noon_from&to=$noon_to"
}

echo "== $EVENTS events over $USERS users; $RUNS runs a question; $("$BIN" --version)"
echo "== SQLite"
"$BIN" init --json --data-dir "$work/data" >"$work/keys.json"
key=$(jq -r '.keys.test.secret' "$work/keys.json")
"$BIN" seed-events --data-dir "$work/data" --events "$EVENTS" --users "$USERS"
echo "database: $(du -sh "$work/data" | cut -f1)"
serve --data-dir "$work/data"
questions "sqlite"
stop

if [[ -n "${TOLLGATE_BENCH_POSTGRES_URL:-}" ]]; then
  echo "== PostgreSQL"
  admin_url=$TOLLGATE_BENCH_POSTGRES_URL
  db_url="${admin_url%/*}/tollgate_bench_analytics"
  psql -q "$admin_url" -c 'DROP DATABASE IF EXISTS tollgate_bench_analytics' \
    -c 'CREATE DATABASE tollgate_bench_analytics'
  "$BIN" init --json --database-url "$db_url" >"$work/pg-keys.json"
  key=$(jq -r '.keys.test.secret' "$work/pg-keys.json")
  "$BIN" seed-events --database-url "$db_url" --events "$EVENTS" --users "$USERS"
  echo "database: $(psql -Atq "$db_url" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"
  serve --database-url "$db_url"
  questions "postgres"
  stop
  psql -q "$admin_url" -c 'DROP DATABASE tollgate_bench_analytics'
fi
