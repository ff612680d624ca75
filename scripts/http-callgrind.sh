#!/usr/bin/env bash
# Instructions per durable `POST /v1/reserve` on each thread of `tollgate serve --engine`,
# counted by callgrind: deterministic, so a change to the HTTP layer can be measured on a busy
# machine where wall-clock benchmarks are noise (Tollgate issue 14, BENCHMARKS.md).
#
#   scripts/http-callgrind.sh                          # profiling build, then N=1000 and 2N
#   BIN=/path/to/tollgate scripts/http-callgrind.sh    # that binary, no build
#   N=2000 REPS=2 scripts/http-callgrind.sh            # more requests, two runs of each size
#   ENGINE=0 scripts/http-callgrind.sh                 # the store without the engine
#   OUT=/tmp/cg scripts/http-callgrind.sh report       # re-read the callgrind files in OUT
#
# Each run starts a fresh server (`tollgate init`, then `serve` under
# `valgrind --tool=callgrind --separate-threads=yes`), stores a plan with one lifetime limit
# that never denies, sends WARMUP reserves, then N (or 2N) more, one at a time on one keep-alive
# connection (a small Python client; every answer must be 200 with a reservation id), and
# stops the server with SIGTERM. Per thread role, (Ir of the 2N run - Ir of the N run) / N is
# what one reserve costs: startup, warm-up and shutdown cancel out. Each per-thread file is
# named by its entry function: `tokio-worker` (a runtime worker: `multi_thread::worker::run`
# in its stack), `tokio-blocking` (the blocking pool), the engine's and SQLite's threads, and
# `main` (the thread that runs `block_on`, which accepts connections).
#
# Settings (environment): N=1000, REPS=1, WARMUP=200, USERS=1000 (reserves cycle over
# USERS users), ENGINE=1, BIN (default: `cargo build --profile profiling -p tollgate-cli` and
# its binary: the release build with debug info, so that callgrind_annotate names each
# function's source file and can annotate its lines; the release profile has none; the
# instruction counts are the same either way), OUT (default: a new temp dir; the callgrind
# files and logs stay there).
# Needs valgrind, callgrind_annotate and python3. About 2 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-1000}"
REPS="${REPS:-1}"
WARMUP="${WARMUP:-200}"
USERS="${USERS:-1000}"
ENGINE="${ENGINE:-1}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"

die() { echo "error: $*" >&2; exit 1; }

server_pid=
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
}
trap cleanup EXIT

# send URL KEY COUNT: COUNT reserves, one at a time on one connection, each checked.
send() {
  python3 - "$@" <<'PY'
import http.client, sys, urllib.parse
url, key, count, users = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
for i in range(count):
    body = '{"userId":"cg_u%d","event":"bench.op","quantity":1}' % (i % users)
    conn.request("POST", "/v1/reserve", body, headers)
    r = conn.getresponse()
    text = r.read()
    if r.status != 200 or b'"reservationId":"' not in text:
        sys.exit(f"reserve {i}: {r.status} {text[:200]!r}")
PY
}

# run COUNT TAG: one server under callgrind, WARMUP + COUNT reserves, per-thread files in OUT.
run() {
  local count=$1 tag=$2 dir key url prefix
  dir=$(mktemp -d -p "$OUT")
  prefix="$OUT/cg.$count.$tag"
  rm -f "$prefix".*
  "$BIN" init --json --data-dir "$dir/data" >"$dir/init.json" 2>"$dir/init.log" ||
    die "tollgate init failed: $(cat "$dir/init.log")"
  key=$(grep -o '"tg_sk_test_[^"]*"' "$dir/init.json" | head -1 | tr -d '"')
  [ -n "$key" ] || die "no test secret key from tollgate init"
  TOLLGATE_ENGINE="$ENGINE" RUST_LOG="${RUST_LOG:-warn,tollgate=info}" \
    valgrind --tool=callgrind --separate-threads=yes --dump-instr=no \
    --callgrind-out-file="$prefix.%p" \
    "$BIN" serve --listen 127.0.0.1:0 --data-dir "$dir/data" >"$dir/serve.out" 2>"$dir/serve.log" &
  server_pid=$!
  url=
  for _ in $(seq 600); do
    url=$(grep -so 'listening on http://[0-9.:]*' "$dir/serve.log" | head -1 |
      sed 's/listening on //') || true
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$url" ] || die "tollgate serve did not start: $(tail -20 "$dir/serve.log")"
  curl -sf -X PUT "$url/v1/plans" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' -d '{"defaultPlan": "bench", "plans": [{"id": "bench",
      "limits": [{"id": "bench_0", "quota": 1000000000000, "window": {"type": "lifetime"},
                  "match": [{"event": "bench.*"}]}]}]}' >/dev/null || die "PUT /v1/plans failed"
  send "$url" "$key" "$WARMUP" "$USERS"
  send "$url" "$key" "$count" "$USERS"
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=
}

report() {
  python3 -B - "$OUT" "$N" "$((2 * N))" "$REPS" <<'PY'
import glob, sys
sys.path.insert(0, "scripts")
from callgrind_threads import totals
out, n1, n2, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ROLES = [
    ("tokio-worker", r"multi_thread::worker::run\b"),
    ("engine", r"tollgate_store_sqlite::engine::Engine>?::run\b"),
    ("engine-sync", r"tollgate_store_sqlite::engine::syncer\b"),
    ("projection", r"tollgate_store_sqlite::engine::projection\b"),
    ("sqlite-writer", r"tollgate_store_sqlite::writer::run\b"),
    ("sqlite-sync", r"tollgate_store_sqlite::writer::syncer\b"),
    ("checkpoint", r"tollgate_store_sqlite::checkpointer"),
    ("log-spare", r"tollgate_log::segment::create_spare"),
    ("tokio-blocking", r"blocking::pool::Inner::run"),
]
def load(n, rep):
    files = sorted(glob.glob(f"{out}/cg.{n}.r{rep}.*-*"))
    if not files:
        sys.exit(f"no callgrind files cg.{n}.r{rep}.* in {out}")
    return totals(files, ROLES)
ORDER = ["tokio-worker", "tokio-blocking", "main", "engine", "engine-sync", "projection",
         "sqlite-writer", "sqlite-sync", "checkpoint", "log-spare", "other"]
per = []
for rep in range(1, reps + 1):
    a, b = load(n1, rep), load(n2, rep)
    d = {r: (b.get(r, 0) - a.get(r, 0)) / (n2 - n1) for r in set(a) | set(b)}
    d["total"] = sum(d.values())
    per.append(d)
print(f"instructions per reserve, (Ir at {n2} - Ir at {n1}) / {n2 - n1}, files in {out}")
print("| thread | " + " | ".join(f"run {i + 1}" for i in range(reps)) + " |")
print("|---|" + "---:|" * reps)
for r in [r for r in ORDER + ["total"] if any(r in d for d in per)]:
    print(f"| {r} | " + " | ".join(f"{d.get(r, 0):,.0f}" for d in per) + " |")
PY
}

if [ "${1:-}" = report ]; then
  report
  exit
fi

command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
if [ -z "${BIN:-}" ]; then
  cargo build --profile profiling -p tollgate-cli >&2
  BIN="${CARGO_TARGET_DIR:-target}/profiling/tollgate"
fi
BIN=$(realpath "$BIN")
echo "# $(date -u +%FT%TZ) $BIN commit $(git rev-parse --short HEAD) ENGINE=$ENGINE N=$N WARMUP=$WARMUP USERS=$USERS"
for rep in $(seq "$REPS"); do
  run "$N" "r$rep"
  run "$((2 * N))" "r$rep"
done
report
