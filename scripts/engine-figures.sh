#!/usr/bin/env bash
# The engine's repeatable figures (BENCHMARKS.md, "The engine: instructions, memory, restart"):
#   callgrind  instructions per reserve+commit pair, per reserve and per commit, per thread, for
#              the engine and for the plain SQLite store; two values of N, the difference divided
#              by the extra commands so start-up and warm-up cancel out; each measured twice
#   rss        VmRSS after one reserve+commit per user, 3 lifetime limits, engine and SQLite
#   restart    kill -9 a writer with an unapplied log tail, time the open that replays it; time
#              the open of a data dir holding many users
# Usage: scripts/engine-figures.sh [callgrind|callgrind-report|rss|restart|all]   (default: all)
#   callgrind-report re-reads the callgrind files already in $OUT.
# Knobs (env): USERS (1000), N1 (2000), N2 (4000), RSS_USERS ("200000 400000"), CONCURRENCY (64),
#   RECORDS (200000), OPEN_USERS (1000000), STORES ("engine sqlite"), SETTLE (empty; 1 passes
#   --settle: after each command wait until the tables hold it), CG_CONCURRENCY (1: callers of the
#   callgrind runs; 1 makes every batch one command, 64 makes the projection's transactions hold
#   dozens), OUT (a temp dir; logs and callgrind files stay there).
# Needs valgrind (Debian package `valgrind`) and python3 for `callgrind`.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
USERS=${USERS:-1000}
N1=${N1:-2000}
N2=${N2:-4000}
RSS_USERS=${RSS_USERS:-"200000 400000"}
CONCURRENCY=${CONCURRENCY:-64}
RECORDS=${RECORDS:-200000}
OPEN_USERS=${OPEN_USERS:-1000000}
STORES=${STORES:-"engine sqlite"}
SETTLE=${SETTLE:-}
CG_CONCURRENCY=${CG_CONCURRENCY:-1}
OUT=${OUT:-$(mktemp -d /tmp/engine-figures.XXXXXX)}
mkdir -p "$OUT"

# ENGINE_OPS_BIN: measure that binary (e.g. a copy built at another commit) instead of building.
# The profiling profile is the release build with debug info, with which callgrind_annotate
# names each function's source file and annotates its lines (the release profile carries none;
# the instruction counts are the same). The same binary serves `rss` and `restart`.
if [ -n "${ENGINE_OPS_BIN:-}" ]; then
  BIN=$ENGINE_OPS_BIN
else
  cargo build --profile profiling -p tollgate-store-sqlite --example engine_ops >&2
  BIN=${CARGO_TARGET_DIR:-target}/profiling/examples/engine_ops
fi

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) nproc=$(nproc) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# output in $OUT"

# Runs the example under callgrind, one output file per thread.
callgrind_run() { # store mode n tag
  local prefix="$OUT/cg.$1.$2.$3.$4"
  rm -f "$prefix".*
  valgrind --tool=callgrind --separate-threads=yes --dump-instr=no \
    --callgrind-out-file="$prefix.%p" \
    "$BIN" --store "$1" --mode "$2" --users "$USERS" --ops "$3" ${SETTLE:+--settle} \
    --concurrency "$CG_CONCURRENCY" \
    >"$prefix.log" 2>&1
}

callgrind() {
  for store in $STORES; do
    for mode in pairs reserves; do
      for rep in 1 2; do
        callgrind_run "$store" "$mode" "$N1" "r$rep"
        callgrind_run "$store" "$mode" "$N2" "r$rep"
      done
    done
  done
  callgrind_report
}

# Names each per-thread file by its thread's entry function (the highest inclusive cost matching
# a known entry), then prints (Ir at N2 - Ir at N1) / (N2 - N1) per thread; commit = pair - reserve.
callgrind_report() {
  python3 -B - "$OUT" "$N1" "$N2" "$STORES" <<'PY'
import glob, re, sys
sys.path.insert(0, "scripts")
from callgrind_threads import totals
out, n1, n2, stores = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
ROLES = [
    ("engine", r"tollgate_store_sqlite::engine::Engine>?::run\b"),
    ("engine-sync", r"tollgate_store_sqlite::engine::syncer\b"),
    ("projection", r"tollgate_store_sqlite::engine::projection\b"),
    ("sqlite-writer", r"tollgate_store_sqlite::writer::run\b"),
    ("sqlite-sync", r"tollgate_store_sqlite::writer::syncer\b"),
    ("checkpoint", r"tollgate_store_sqlite::checkpointer"),
    ("log-spare", r"tollgate_log::segment::create_spare"),
    ("tokio", r"blocking::pool::Inner::run|multi_thread::worker::run"),
]
def load(store, mode, n, rep):
    return totals(sorted(glob.glob(f"{out}/cg.{store}.{mode}.{n}.r{rep}.*-*")), ROLES)
ORDER = ["engine", "engine-sync", "projection", "sqlite-writer", "sqlite-sync", "checkpoint",
         "log-spare", "tokio", "main", "other"]
for store in stores:
    per = {}
    for mode in ["pairs", "reserves"]:
        for rep in [1, 2]:
            a, b = load(store, mode, n1, rep), load(store, mode, n2, rep)
            d = {r: (b.get(r, 0) - a.get(r, 0)) / (n2 - n1) for r in set(a) | set(b)}
            d["total"] = sum(d.values())
            per[(mode, rep)] = d
    runs = [("pairs", 1), ("pairs", 2), ("reserves", 1), ("reserves", 2)]
    print(f"\n## {store}: instructions per command, (Ir at N={n2} - Ir at N={n1}) / {n2 - n1}")
    print("| thread | pair, run 1 | pair, run 2 | reserve, run 1 | reserve, run 2 | commit (pair - reserve) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in [r for r in ORDER + ["total"] if any(r in d for d in per.values())]:
        v = [per[k].get(r, 0) for k in runs]
        commit = (v[0] + v[1]) / 2 - (v[2] + v[3]) / 2
        print(f"| {r} | {v[0]:,.0f} | {v[1]:,.0f} | {v[2]:,.0f} | {v[3]:,.0f} | {commit:,.0f} |")
    sizes = []
    for mode, rep in runs:
        log = open(f"{out}/cg.{store}.{mode}.{n2}.r{rep}.log", errors="replace").read()
        m = re.search(r"commands_per_transaction=([\d.]+)", log)
        sizes.append(m.group(1) if m else "?")
    print(f"\ncommands per SQLite transaction at N={n2} (pair 1, pair 2, reserve 1, reserve 2): "
          + ", ".join(sizes))
    t = [per[k]["total"] for k in runs]
    print(f"\nrepeat: pair totals differ by {abs(t[0] - t[1]) / t[0] * 100:.3f} %, "
          f"reserve totals by {abs(t[2] - t[3]) / t[2] * 100:.3f} %")
PY
}

rss() {
  for users in $RSS_USERS; do
    for store in engine sqlite; do
      /usr/bin/time -f "wall_s=%e user_s=%U sys_s=%S" \
        "$BIN" --mode fill --store "$store" --users "$users" --limits 3 --concurrency "$CONCURRENCY" 2>&1
    done
  done
}

restart() {
  local d="$OUT/restart"
  for stall in "" "--stall-projection"; do
    rm -rf "$d" && mkdir -p "$d"
    echo "# kill -9 after $RECORDS answered commands ${stall:-(projection running)}"
    "$BIN" --mode restart --dir "$d" --users 10000 --concurrency "$CONCURRENCY" --records "$RECORDS" $stall
    echo "# the same data dir opened again (nothing to replay)"
    "$BIN" --mode open --dir "$d"
  done
  for users in 1000 "$OPEN_USERS"; do
    d="$OUT/open-$users"
    rm -rf "$d" && mkdir -p "$d"
    echo "# fill $users users (3 limits) into $d, then open it three times"
    "$BIN" --mode fill --store engine --users "$users" --limits 3 --concurrency "$CONCURRENCY" --dir "$d"
    for rep in 1 2 3; do
      "$BIN" --mode open --dir "$d"
    done
  done
}

case "$what" in
  callgrind) callgrind ;;
  callgrind-report) callgrind_report ;;
  rss) rss ;;
  restart) restart ;;
  all) callgrind; rss; restart ;;
  *) echo "usage: $0 [callgrind|callgrind-report|rss|restart|all]" >&2; exit 2 ;;
esac
