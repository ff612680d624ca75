#!/usr/bin/env bash
# Durable reserves of Tollgate over HTTP (driven by wrk) against the Redis Lua reference script
# (bench/redis/tollgate.lua, driven by redis-benchmark), side by side in one run on this machine,
# at the same connection count; then the tail at about half the peak, the per-thread CPU of a
# reserve, the pending-heavy case and the HTTP layer on its own. BENCHMARKS.md, section
# "Reserve with wrk against redis-benchmark", has the figures and how to read them.
#
#   scripts/bench-wrk.sh                                   # defaults below
#   ROUNDS=5 SECONDS=20 CONNECTIONS=64 scripts/bench-wrk.sh
#   TOLLGATE_SOME_SETTING=x scripts/bench-wrk.sh           # every TOLLGATE_* reaches the server
#   BIN=/path/to/other/tollgate scripts/bench-wrk.sh       # a baseline binary, no build
#
# Settings (environment):
#   ROUNDS=3           interleaved rounds: Tollgate, Redis durable, Redis without persistence
#   SECONDS=10         length of each throughput run (bash's own SECONDS counter, read once at
#                      the start: it is 0 unless the caller set it)
#   CONNECTIONS=50     connections of wrk and of redis-benchmark
#   USERS=10000        users the reserves spread over
#   THREADS=2          wrk threads
#   BIN=               the tollgate binary; default: `cargo build --release`, then its binary
#                      (the build users run; the per-thread CPU comes from /proc, not from
#                      symbols, so the profiling profile is not needed)
#   THROUGHPUT=1       the interleaved comparison and per-thread CPU (0: skip it and the tail)
#   TAIL=1             find the connection count giving about half the peak, report its p99
#   PENDING=100000     pending reservations of one user in the pending-heavy case (0: skip)
#   PENDING_SECONDS=5  length of each run of the pending-heavy case
#   PENDING_FILL=sql   how that user gets them: sql (copies of one real reservation) or api
#   HTTP=1             the HTTP layer alone: GET /v1/test/clock and POST /v1/check
#   REDIS_KEYS=user    user: the script's three keys are one user's (behind a one-line prelude);
#                      independent: the unchanged script, each key drawn on its own
#
# Needs wrk, redis-server, redis-cli, redis-benchmark, curl and sqlite3 (Debian: apt-get install
# wrk redis-server curl sqlite3). It only talks to the servers it starts on 127.0.0.1, and stops
# them when it exits. About 4.5 minutes with the defaults. Not run in CI.
set -euo pipefail
secs=$SECONDS
[ "$secs" -gt 0 ] || secs=10
cd "$(dirname "$0")/.."
repo=$(pwd)

ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-50}"
USERS="${USERS:-10000}"
THREADS="${THREADS:-2}"
THROUGHPUT="${THROUGHPUT:-1}"
TAIL="${TAIL:-1}"
[ "$THROUGHPUT" = 1 ] || TAIL=0
PENDING="${PENDING:-100000}"
PENDING_SECONDS="${PENDING_SECONDS:-5}"
PENDING_FILL="${PENDING_FILL:-sql}"
HTTP="${HTTP:-1}"
REDIS_KEYS="${REDIS_KEYS:-user}"
# One lifetime limit that never denies during a run, the same quota for Tollgate and Redis.
QUOTA=1000000000000
# Tollgate's default reservation ttl (60 s), given to the Redis script too.
TTL_MS=60000
# Tokio's worker threads: one per core unless the server is told otherwise.
tokio_workers="${TOKIO_WORKER_THREADS:-$(nproc)}"

die() { echo "error: $*" >&2; exit 1; }

for tool in wrk redis-server redis-cli redis-benchmark curl sqlite3; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install wrk redis-server curl sqlite3)"
done

if [ -z "${BIN:-}" ]; then
  cargo build --release --bin tollgate
  BIN="${CARGO_TARGET_DIR:-target}/release/tollgate"
fi
BIN=$(realpath "$BIN")

work=$(mktemp -d)
# Stops what this script still runs in the background (servers, wrk, samplers): only its own
# live jobs, by process id.
cleanup() {
  local running
  running=$(jobs -p)
  [ -z "$running" ] || kill $running 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --------------------------------------------------------------------------------- helpers

median() {
  sort -g | awk '{v[NR] = $1}
    END {if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# field NAME FILE: the value of NAME=... on the WRK_RESULT line of FILE.
field() { sed -n "s/^WRK_RESULT\(.* \)\{0,1\}$1=\([^ ]*\).*/\2/p" "$2" | head -1; }
# errors FILE: non-2xx answers, denials and socket errors of a wrk run.
errors() { echo $(($(field non2xx "$1") + $(field denied "$1") + $(field socket_errors "$1"))); }
ms() { awk -v us="$1" 'BEGIN {printf "%.2f", us / 1000}'; }
# client_cpu FILE REQUESTS: the load generator's CPU-µs per request, from bash's `time` line.
client_cpu() {
  awk -v n="$2" '/^CLIENT_CPU/ {printf "%.1f", ($2 + $3) * 1e6 / n}' "$1.time"
}

# free_port: a port nothing listens on, below the kernel's range of ephemeral ports. A port in
# that range may be held by a client socket (wrk's, redis-benchmark's), which a connect test does
# not see and which makes the server's bind fail.
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) || low=32768
  [ "${low:-0}" -gt 11000 ] || low=32768
  while :; do
    port=$((10000 + RANDOM % (low - 10000)))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# tg_start: a fresh data dir, `tollgate init`, `tollgate serve` on a free port, the bench plan.
# Sets tg_dir, tg_pid, tg_url, tg_key. The caller's TOLLGATE_* variables reach the server.
tg_start() {
  tg_dir=$(mktemp -d -p "$work")
  "$BIN" init --json --data-dir "$tg_dir/data" >"$tg_dir/init.json" 2>"$tg_dir/init.log" ||
    die "tollgate init failed: $(cat "$tg_dir/init.log")"
  tg_key=$(grep -o '"tg_sk_test_[^"]*"' "$tg_dir/init.json" | head -1 | tr -d '"')
  [ -n "$tg_key" ] || die "no test secret key from tollgate init"
  tg_serve
  curl -sf -X PUT "$tg_url/v1/plans" -H "Authorization: Bearer $tg_key" \
    -H 'Content-Type: application/json' -d '{"defaultPlan": "bench", "plans": [{"id": "bench",
      "limits": [{"id": "bench_0", "quota": '$QUOTA', "window": {"type": "lifetime"},
                  "match": [{"event": "bench.*"}]}]}]}' >/dev/null || die "PUT /v1/plans failed"
}

# tg_serve: `tollgate serve` on $tg_dir/data and a free port; sets tg_pid and tg_url.
tg_serve() {
  RUST_LOG="${RUST_LOG:-warn,tollgate=info}" "$BIN" serve --listen 127.0.0.1:0 \
    --data-dir "$tg_dir/data" >/dev/null 2>"$tg_dir/serve.log" &
  tg_pid=$!
  tg_url=
  for _ in $(seq 300); do
    tg_url=$(grep -so 'listening on http://[0-9.:]*' "$tg_dir/serve.log" | head -1 |
      sed 's/listening on //') || true
    [ -n "$tg_url" ] && break
    kill -0 "$tg_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$tg_url" ] || die "tollgate serve did not start: $(tail -20 "$tg_dir/serve.log")"
}

# tg_halt: stops the server, keeps its data dir.
tg_halt() {
  kill "$tg_pid" 2>/dev/null || true
  wait "$tg_pid" 2>/dev/null || true
}

tg_stop() {
  tg_halt
  rm -rf "$tg_dir"
}

# tg_answered METHOD ROUTE: the requests the server has answered on ROUTE, from /metrics.
tg_answered() {
  curl -sf "$tg_url/metrics" |
    awk -v m="tollgate_http_requests_total{method=\"$1\",route=\"$2\"" \
      'index($0, m) == 1 {n += $NF} END {printf "%d\n", n}'
}

# threads_cpu PID: "tid name ns" for every thread of PID, ns on CPU from schedstat.
threads_cpu() {
  local t
  for t in /proc/"$1"/task/*; do
    [ -r "$t/schedstat" ] || continue
    printf '%s %s %s\n' "${t##*/}" "$(tr ' ' '_' <"$t/comm")" "$(cut -d' ' -f1 "$t/schedstat")"
  done 2>/dev/null
}

# sample_cpu PID OUT SECONDS METHOD ROUTE: per-thread CPU and answered requests on ROUTE over
# the middle half of a run of SECONDS, appended to OUT as "name ns requests".
# A thread's name is cut at 15 characters: the three store threads all show as
# "tollgate-sqlite"; they start in the order sync, writer, checkpoint, so their thread ids,
# ascending, say which is which. Tokio's workers and its blocking pool (SQLite reads, file work)
# share a name too; the workers start with the runtime, before any blocking thread, so they are
# the lowest thread ids of that name.
sample_cpu() {
  local pid=$1 out=$2 seconds=$3 method=$4 route=$5 r0 r1
  sleep "$(awk -v s="$seconds" 'BEGIN {print s / 4}')"
  threads_cpu "$pid" >"$out.0"; r0=$(tg_answered "$method" "$route")
  sleep "$(awk -v s="$seconds" 'BEGIN {print s / 2}')"
  threads_cpu "$pid" >"$out.1"; r1=$(tg_answered "$method" "$route")
  # join: "tid name ns-before name ns-after", for the threads alive at both samples.
  join <(sort "$out.0") <(sort "$out.1") | sort -n |
    awk -v n=$((r1 - r0)) -v workers="$tokio_workers" '
      BEGIN {split("sync writer checkpoint", store, " ")}
      { name = $2
        if (name == "tollgate-sqlite") name = name "-" (++i in store ? store[i] : "?")
        if (name ~ /^tokio-/) name = (++w <= workers ? "tokio-worker" : "tokio-blocking")
        print name, $5 - $3, n }' >>"$out"
}

# print_cpu FILE WHAT: CPU-µs per request by thread name, from sample_cpu's lines.
print_cpu() {
  # Every line of a run carries that run's requests: count them once per run, on the writer's.
  local n
  n=$(awk '$1 ~ /writer$/ {n += $3} END {printf "%d\n", n}' "$1")
  echo "== CPU per $2 by thread name (middle half of each run, $n sampled)"
  awk -v n="$n" '{ns[$1] += $2; total += $2; threads[$1]++} $1 ~ /writer$/ {runs++}
    END {for (k in ns) if (ns[k] > 0)
           printf "%-28s %8.1f CPU-us   (%g thread(s))\n", k, ns[k] / 1000 / n, threads[k] / runs
         printf "%-28s %8.1f CPU-us\n", "all threads", total / 1000 / n}' "$1" | sort -k2 -g -r
}

# run_wrk OUT SCRIPT CONNECTIONS SECONDS [NAME=VALUE...]: wrk against the Tollgate server, the
# settings given to its Lua script; wrk's own CPU time goes to OUT.time.
run_wrk() {
  local out=$1 script=$2 conns=$3 seconds=$4 threads=$THREADS TIMEFORMAT='CLIENT_CPU %3U %3S'
  shift 4
  [ "$conns" -lt "$threads" ] && threads=$conns
  { time env TG_KEY="$tg_key" "$@" wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency \
      -s "$repo/bench/wrk/$script" "$tg_url" >"$out" 2>&1; } 2>"$out.time" ||
    die "wrk failed: $(cat "$out")"
  grep -q '^WRK_RESULT' "$out" || die "wrk printed no result: $(cat "$out")"
}

# redis_start durable|none: a private redis-server in a temp dir; sets rd_dir, rd_pid, rd_port.
redis_start() {
  rd_dir=$(mktemp -d -p "$work")
  rd_port=$(free_port)
  local persistence=(--appendonly no)
  [ "$1" = durable ] && persistence=(--appendonly yes --appendfsync always)
  redis-server --bind 127.0.0.1 --port "$rd_port" --daemonize no --save '' --dir "$rd_dir" \
    "${persistence[@]}" --logfile "$rd_dir/redis.log" &
  rd_pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$rd_port" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  die "redis-server did not start: $(tail "$rd_dir/redis.log")"
}

redis_stop() {
  kill "$rd_pid" 2>/dev/null || true
  wait "$rd_pid" 2>/dev/null || true
  rm -rf "$rd_dir"
}

# redis-benchmark draws every __rand_int__ of a command on its own, so three keys in one command
# would belong to three different users. With REDIS_KEYS=user the command passes one key, the
# user, and a one-line prelude makes the script's three keys of that user (a local KEYS hides the
# global one); the script's own text follows unchanged. The prelude costs the script a little
# (BENCHMARKS.md); REDIS_KEYS=independent runs the unchanged script on three keys drawn apart:
# the same commands on the same number of keys, but counters and pending set of different users.
lua="$work/tollgate-bench.lua"
case "$REDIS_KEYS" in
  user)
    {
      echo "local KEYS = {'tg:{' .. KEYS[1] .. '}:c', 'tg:{' .. KEYS[1] .. '}:p'," \
        "'tg:{' .. KEYS[1] .. '}:q'}"
      cat bench/redis/tollgate.lua
    } >"$lua"
    redis_keys=(1 "bench_u__rand_int__")
    ;;
  independent)
    cp bench/redis/tollgate.lua "$lua"
    redis_keys=(3 "tg:{bench_u__rand_int__}:c" "tg:{bench_u__rand_int__}:p" "tg:{bench_u__rand_int__}:q")
    ;;
  *) die "REDIS_KEYS must be user or independent" ;;
esac

# run_redis OUT REQUESTS: redis-benchmark, one reserve of 1 unit per call for a random user,
# now_ms fixed at the start (no reservation expires during a run, as on Tollgate); its CPU
# time goes to OUT.time.
run_redis() {
  local out=$1 requests=$2 sha now_ms TIMEFORMAT='CLIENT_CPU %3U %3S'
  sha=$(redis-cli -p "$rd_port" -x script load <"$lua")
  now_ms=$(date +%s%3N)
  { time redis-benchmark -p "$rd_port" -c "$CONNECTIONS" -n "$requests" -r "$USERS" --csv \
      evalsha "$sha" "${redis_keys[@]}" reserve 1 "$QUOTA" 1 "$TTL_MS" "$now_ms" \
      >"$out" 2>&1; } 2>"$out.time" || die "redis-benchmark failed: $(cat "$out")"
  # Exactness: the units reserved over all users, which must be one per call.
  redis-cli -p "$rd_port" eval "local n = 0
    for _, k in ipairs(redis.call('KEYS', 'tg:*:c')) do
      n = n + tonumber(redis.call('HGET', k, 'r0') or 0)
    end
    return n" 0 >"$out.reserved"
}

# csv FILE COLUMN: a column of redis-benchmark's CSV line: 1 test, 2 rps, 3 avg_latency_ms,
# 4 min_latency_ms, 5 p50_latency_ms, 6 p95_latency_ms, 7 p99_latency_ms, 8 max_latency_ms.
csv() { tail -1 "$1" | tr -d '"' | cut -d, -f"$2"; }

echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "tollgate: $BIN ($("$BIN" --version 2>/dev/null || echo '?')," \
  "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "$(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $(redis-server --version | cut -d' ' -f1-3)"
env | grep '^TOLLGATE_' | sed 's/=.*//; s/^/passed to the server: /' || true
# The disk: 200-byte writes with O_DSYNC to a new file, about what a durable append costs here.
dd if=/dev/zero of="$work/dsync" bs=200 count=500 oflag=dsync 2>&1 |
  awk '/copied/ {for (i = 1; i < NF; i++) if ($(i + 1) ~ /^s,?$/)
    printf "disk: 500 writes of 200 bytes with O_DSYNC, %.0f us each\n", $i * 1e6 / 500}'
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "settings: ROUNDS=$ROUNDS SECONDS=$secs CONNECTIONS=$CONNECTIONS USERS=$USERS THREADS=$THREADS" \
  "REDIS_KEYS=$REDIS_KEYS"

# -------------------------------------------------------------- 1. throughput, interleaved

if [ "$THROUGHPUT" = 1 ]; then
  cpu="$work/cpu"
  : >"$cpu"
  declare -A redis_requests
  for round in $(seq "$ROUNDS"); do
    echo
    echo "== round $round of $ROUNDS"
    tg_start
    sample_cpu "$tg_pid" "$cpu" "$secs" POST /v1/reserve &
    sampler=$!
    out="$work/tg.$round"
    run_wrk "$out" reserve.lua "$CONNECTIONS" "$secs" TG_USERS="$USERS" TG_PREFIX="r${round}_"
    wait "$sampler"
    tg_stop
    echo "tollgate: $(field rps "$out") reserves/s, p50 $(ms "$(field p50_us "$out")") ms," \
      "p99 $(ms "$(field p99_us "$out")") ms, non-2xx $(field non2xx "$out")," \
      "denied $(field denied "$out"), socket errors $(field socket_errors "$out")"

    for mode in durable none; do
      redis_start "$mode"
      if [ -z "${redis_requests[$mode]:-}" ]; then
        # redis-benchmark runs a number of requests, not a duration: a short run sets it.
        run_redis "$work/probe.$mode" 20000
        redis_requests[$mode]=$(awk -v r="$(csv "$work/probe.$mode" 2)" -v s="$secs" \
          'BEGIN {printf "%d", r * s}')
        redis_stop
        redis_start "$mode"
      fi
      out="$work/redis-$mode.$round"
      run_redis "$out" "${redis_requests[$mode]}"
      redis_stop
      reserved=$(cat "$out.reserved")
      [ "$reserved" = "${redis_requests[$mode]}" ] ||
        die "Redis ($mode) holds $reserved reserved units after ${redis_requests[$mode]} reserves"
      echo "redis $mode: $(csv "$out" 2) reserves/s, p50 $(csv "$out" 5) ms," \
        "p99 $(csv "$out" 7) ms, $reserved of ${redis_requests[$mode]} admitted"
    done
  done

  # Per target: req/s of every round, their median, the median of the rounds' p50 and p99, and
  # the load generator's CPU per request (all rounds).
  rounds=$(seq "$ROUNDS")
  tg_rates=$(for r in $rounds; do field rps "$work/tg.$r"; done)
  tg_median=$(echo "$tg_rates" | median)
  tg_p50=$(for r in $rounds; do field p50_us "$work/tg.$r"; done | median)
  tg_p99=$(for r in $rounds; do field p99_us "$work/tg.$r"; done | median)
  tg_errors=$(for r in $rounds; do errors "$work/tg.$r"; done | awk '{n += $1} END {print n}')
  tg_client=$(for r in $rounds; do client_cpu "$work/tg.$r" "$(field requests "$work/tg.$r")"; echo; done |
    median)
  echo
  echo "== reserves/s, $CONNECTIONS connections, $USERS users, one lifetime limit, ${secs} s per run"
  printf '%-32s %-22s %8s %7s %7s %6s %12s\n' target "req/s per round" median "p50 ms" \
    "p99 ms" errors "client CPU-us"
  printf '%-32s %-22s %8.0f %7s %7s %6s %12s\n' "tollgate (wrk)" "$(printf '%.0f ' $tg_rates)" \
    "$tg_median" "$(ms "$tg_p50")" "$(ms "$tg_p99")" "$tg_errors" "$tg_client"
  declare -A redis_median
  for mode in durable none; do
    rates=$(for r in $rounds; do csv "$work/redis-$mode.$r" 2; done)
    redis_median[$mode]=$(echo "$rates" | median)
    p50=$(for r in $rounds; do csv "$work/redis-$mode.$r" 5; done | median)
    p99=$(for r in $rounds; do csv "$work/redis-$mode.$r" 7; done | median)
    client=$(for r in $rounds; do client_cpu "$work/redis-$mode.$r" "${redis_requests[$mode]}"; echo; done |
      median)
    label="redis appendfsync always (r-b)"
    [ "$mode" = none ] && label="redis no persistence (r-b)"
    printf '%-32s %-22s %8.0f %7.2f %7.2f %6s %12s\n' "$label" "$(printf '%.0f ' $rates)" \
      "${redis_median[$mode]}" "$p50" "$p99" 0 "$client"
  done
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
  echo "ratio tollgate / redis durable: $(ratio "$tg_median" "${redis_median[durable]}")"
  echo "ratio tollgate / redis without persistence: $(ratio "$tg_median" "${redis_median[none]}")"

  # Per-thread CPU per reserve, over the sampled middle halves of every Tollgate run.
  echo
  print_cpu "$cpu" reserve
fi

# ------------------------------------------------------- 2. the tail at about half the peak
# wrk cannot pace its requests, so the load is set by the connection count instead: counts from
# 1 up, doubling, on one server, until the rate passes half the median peak above, then once
# more between the last two; the count whose rate is nearest half the peak gives the p99.
# Closed loop: a connection waits for its answer before it sends again, so a stall delays the
# requests behind it unseen (coordinated omission): the p99 is a lower bound of what paced
# clients would see.
if [ "$TAIL" = 1 ]; then
  half=$(awk -v p="$tg_median" 'BEGIN {printf "%d", p / 2}')
  echo
  echo "== Tollgate reserve latency by connection count (half the peak: $half reserves/s)"
  printf '%-12s %10s %8s %8s %8s %7s\n' connections "req/s" "p50 ms" "p90 ms" "p99 ms" errors
  tg_start
  best=; best_gap=; refined=
  c=1
  while [ "$c" -le "$CONNECTIONS" ]; do
    out="$work/tail.$c"
    run_wrk "$out" reserve.lua "$c" "$secs" TG_USERS="$USERS" TG_PREFIX="tail${c}_"
    rate=$(field rps "$out")
    printf '%-12s %10.0f %8s %8s %8s %7s\n' "$c" "$rate" "$(ms "$(field p50_us "$out")")" \
      "$(ms "$(field p90_us "$out")")" "$(ms "$(field p99_us "$out")")" "$(errors "$out")"
    gap=$(awk -v r="$rate" -v h="$half" 'BEGIN {g = r - h; printf "%d", g < 0 ? -g : g}')
    if [ -z "$best" ] || [ "$gap" -lt "$best_gap" ]; then best=$c; best_gap=$gap; fi
    if awk -v r="$rate" -v h="$half" 'BEGIN {exit !(r >= h)}'; then
      # Past half the peak: once more, between this count and the one before.
      [ "$c" -ge 4 ] && [ -z "$refined" ] && { refined=1; c=$((c * 3 / 4)); continue; }
      break
    fi
    [ -n "$refined" ] && break
    c=$((c * 2))
  done
  tg_stop
  out="$work/tail.$best"
  echo "p99 at about half the peak: $(ms "$(field p99_us "$out")") ms at $best connection(s)," \
    "$(field rps "$out" | cut -d. -f1) reserves/s =" \
    "$(awk -v r="$(field rps "$out")" -v p="$tg_median" 'BEGIN {printf "%.2f", r / p}')" \
    "of the peak (wrk, closed loop)"
fi

# ----------------------------------------------------------------- 3. the pending-heavy case
# One user first gets PENDING pending reservations (ttl one hour: none expires during the runs).
# A reserve of that user costs more the more it holds, so filling through the API takes a time
# that grows with the square of PENDING (PENDING_FILL=api: about 20 min for 100,000 here).
# PENDING_FILL=sql (the default) makes one reservation through the API, stops the server, copies
# that reservation's rows (reservations, reservation_limits) PENDING-1 times under new ids with
# sqlite3, and starts the server again on the same data dir: every row is one the server wrote.
# Then, each run PENDING_SECONDS long:
#   fresh users alone      1 connection reserving for random other users (before the fill)
#   heavy user alone       1 connection reserving for the heavy user
#   both at once           the heavy user's connection beside 8 connections of other users
#   others alone           the same 8 connections of other users, the heavy user idle
if [ "$PENDING" -gt 0 ]; then
  echo
  echo "== the pending-heavy case: one user with $PENDING pending reservations (fill: $PENDING_FILL)"
  tg_start
  heavy="heavy_user"
  run_wrk "$work/fresh" reserve.lua 1 "$PENDING_SECONDS" TG_USERS="$USERS" TG_PREFIX="fresh_"
  started=$(date +%s.%N)
  if [ "$PENDING_FILL" = sql ]; then
    template=$(curl -sf -X POST "$tg_url/v1/reserve" -H "Authorization: Bearer $tg_key" \
      -H 'Content-Type: application/json' \
      -d '{"userId": "'$heavy'", "event": "bench.op", "ttlSeconds": 3600}' |
      grep -o '"reservationId":"[^"]*"' | cut -d'"' -f4) || true
    [ -n "$template" ] || die "the template reserve failed"
    tg_halt
    db="$tg_dir/data/tollgate.db"
    # copy TABLE: its column list, then the same columns with a suffix per copy on the ids.
    copy() {
      sqlite3 "$db" "SELECT group_concat(name, ', ') FROM pragma_table_info('$1')"
      sqlite3 "$db" "SELECT group_concat(CASE WHEN name IN ('reservation_id', 'event_id')
        THEN name || ' || ''_'' || i' ELSE name END, ', ') FROM pragma_table_info('$1')"
    }
    { read -r res_cols; read -r res_select; } < <(copy reservations)
    { read -r lim_cols; read -r lim_select; } < <(copy reservation_limits)
    sqlite3 "$db" "BEGIN;
      CREATE TEMP TABLE n AS WITH RECURSIVE n(i) AS
        (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $((PENDING - 1))) SELECT i FROM n;
      INSERT INTO reservations ($res_cols) SELECT $res_select FROM reservations, temp.n
        WHERE reservation_id = '$template';
      INSERT INTO reservation_limits ($lim_cols) SELECT $lim_select FROM reservation_limits, temp.n
        WHERE reservation_id = '$template';
      COMMIT;"
    tg_serve
  else
    # Reserves for the heavy user until PENDING were answered: wrk runs by time, so it is
    # stopped by SIGINT once /metrics counts them (each thread also stops after its share).
    filled0=$(tg_answered POST /v1/reserve)
    env TG_KEY="$tg_key" TG_USER="$heavy" TG_TTL=3600 TG_MAX=$(((PENDING + THREADS - 1) / THREADS)) \
      wrk -t"$THREADS" -c"$CONNECTIONS" -d3600s --latency -s "$repo/bench/wrk/reserve.lua" \
      "$tg_url" >"$work/fill" 2>&1 &
    filler=$!
    while kill -0 "$filler" 2>/dev/null; do
      [ $(($(tg_answered POST /v1/reserve) - filled0)) -ge "$PENDING" ] &&
        kill -INT "$filler" 2>/dev/null
      sleep 0.5
    done
    wait "$filler" || true
    echo "fill through the API: $(field rps "$work/fill" | cut -d. -f1) reserves/s on average," \
      "p50 $(ms "$(field p50_us "$work/fill")") ms, p99 $(ms "$(field p99_us "$work/fill")") ms," \
      "errors $(errors "$work/fill")"
  fi
  fill_seconds=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
  held=$(curl -sf "$tg_url/v1/users/$heavy/usage" -H "Authorization: Bearer $tg_key" |
    grep -o '"reserved":[0-9]*' | head -1 | cut -d: -f2) || true
  echo "the heavy user holds ${held:-?} reserved units after a fill of ${fill_seconds} s"
  run_wrk "$work/heavy" reserve.lua 1 "$PENDING_SECONDS" TG_USER="$heavy" TG_TTL=3600
  run_wrk "$work/both-heavy" reserve.lua 1 "$PENDING_SECONDS" TG_USER="$heavy" TG_TTL=3600 &
  both=$!
  run_wrk "$work/both-others" reserve.lua 8 "$PENDING_SECONDS" TG_USERS="$USERS" \
    TG_PREFIX="others_"
  wait "$both"
  run_wrk "$work/others" reserve.lua 8 "$PENDING_SECONDS" TG_USERS="$USERS" TG_PREFIX="others2_"
  tg_stop
  printf '%-44s %10s %8s %8s %8s %7s\n' "run (${PENDING_SECONDS} s each)" "req/s" "p50 ms" \
    "p90 ms" "p99 ms" errors
  for run in "fresh:fresh users alone, 1 conn" "heavy:heavy user alone, 1 conn" \
    "both-heavy:both at once: heavy user, 1 conn" \
    "both-others:both at once: other users, 8 conns" "others:other users alone, 8 conns"; do
    out="$work/${run%%:*}"
    printf '%-44s %10.0f %8s %8s %8s %7s\n' "${run#*:}" "$(field rps "$out")" \
      "$(ms "$(field p50_us "$out")")" "$(ms "$(field p90_us "$out")")" \
      "$(ms "$(field p99_us "$out")")" "$(errors "$out")"
  done
fi

# ------------------------------------------------------------------ 4. the HTTP layer alone
# Authenticated routes that write nothing, at the same connection count: GET /v1/test/clock
# (the key from the auth cache, a small JSON answer, no store) and POST /v1/check (JSON in,
# one read transaction on the store's read pool, JSON out).
if [ "$HTTP" = 1 ]; then
  echo
  echo "== the HTTP layer alone, $CONNECTIONS connections, ${secs} s per run"
  tg_start
  printf '%-22s %10s %8s %8s %7s %18s %14s\n' route "req/s" "p50 ms" "p99 ms" errors \
    "server CPU-us/req" "client CPU-us"
  for route in "GET /v1/test/clock" "POST /v1/check"; do
    method=${route%% *} path=${route#* }
    name=${path//\//_}
    : >"$work/http-cpu$name"
    sample_cpu "$tg_pid" "$work/http-cpu$name" "$secs" "$method" "$path" &
    sampler=$!
    out="$work/http$name"
    if [ "$method" = POST ]; then
      run_wrk "$out" fixed.lua "$CONNECTIONS" "$secs" TG_METHOD=POST TG_PATH="$path" \
        TG_BODY='{"userId":"http_u1","event":"bench.op","quantity":1}'
    else
      run_wrk "$out" fixed.lua "$CONNECTIONS" "$secs" TG_METHOD=GET TG_PATH="$path"
    fi
    wait "$sampler"
    n=$(awk '$1 ~ /writer$/ {print $3}' "$work/http-cpu$name")
    printf '%-22s %10.0f %8s %8s %7s %18.1f %14s\n' "$route" "$(field rps "$out")" \
      "$(ms "$(field p50_us "$out")")" "$(ms "$(field p99_us "$out")")" "$(errors "$out")" \
      "$(awk -v n="$n" '{t += $2} END {print t / 1000 / n}' "$work/http-cpu$name")" \
      "$(client_cpu "$out" "$(field requests "$out")")"
  done
  tg_stop
  echo
  print_cpu "$work/http-cpu_v1_test_clock" "GET /v1/test/clock"
  echo
  print_cpu "$work/http-cpu_v1_check" "POST /v1/check"
fi

echo
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
