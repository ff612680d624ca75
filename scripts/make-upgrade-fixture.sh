#!/usr/bin/env bash
# Makes the data dir of an earlier release for the upgrade test (crates/cli/tests/operations.rs,
# docs/operations.md "Upgrades"): the given binary creates an install, gets plans, a
# subscription, committed, pending and tracked usage and a credit grant, and stops; the
# database is then made one self-contained file and copied with the keys into OUT.
#
#   BIN=/path/to/old/tollgate RELEASE=<commit> \
#     scripts/make-upgrade-fixture.sh crates/cli/tests/fixtures/upgrade/<schema version>
#
# Build BIN from the release's commit in its own worktree and target dir, e.g.
#   git worktree add --detach ../old e6e2617 && (cd ../old && CARGO_TARGET_DIR=../target-old \
#     cargo build -p tollgate-cli --bin tollgate)
# Needs curl and python3 (its sqlite3 module).
set -euo pipefail
out=${1:?usage: BIN=… scripts/make-upgrade-fixture.sh OUT_DIR}
bin=${BIN:?BIN names the tollgate binary of the earlier release}
work=$(mktemp -d)
server=
cleanup() {
  [[ -n "$server" ]] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" init --data-dir "$work/data" --json >"$work/keys.json"
key=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["keys"]["test"]["secret"])' <"$work/keys.json")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" serve --data-dir "$work/data" --listen "127.0.0.1:$port" 2>"$work/server.log" &
server=$!
url="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -sf "$url/readyz" >/dev/null && break
  sleep 0.1
done
call() { # METHOD PATH [BODY]
  local args=(-sf -X "$1" "$url$2" -H "Authorization: Bearer $key")
  [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' -d "$3")
  curl "${args[@]}"
  echo
}
call PUT /v1/plans '{
  "defaultPlan": "free",
  "plans": [
    { "id": "free", "name": "Free",
      "limits": [ { "id": "images_daily", "label": "Images per day", "quota": 10,
        "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
        "match": [{"event": "image.*"}] } ] },
    { "id": "pro", "name": "Pro",
      "limits": [ { "id": "images_monthly", "label": "Images per month", "quota": 500,
        "window": {"type": "subscription"}, "match": [{"event": "image.*"}] } ] } ],
  "creditPacks": [
    { "id": "pack50", "name": "50 images", "expiresAfterDays": 90,
      "items": [ { "id": "imgs", "quantity": 50, "match": [{"event": "image.*"}] } ] } ] }'
call POST /v1/subscriptions '{"userId": "u_pro", "planId": "pro"}'
reservation_id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["reservationId"])'; }
committed=()
for _ in 1 2 3; do
  rsv=$(call POST /v1/reserve '{"userId": "u_pro", "event": "image.render", "quantity": 2}' |
    reservation_id)
  call POST "/v1/reservations/$rsv/commit" '{}'
  committed+=("\"$rsv\"")
done
pending=$(call POST /v1/reserve '{"userId": "u_pro", "event": "image.render", "ttlSeconds": 3600}' |
  reservation_id)
call POST /v1/track '{"userId": "u_free", "event": "image.render", "quantity": 4}'
call POST /v1/credits/grants '{"userId": "u_free", "packId": "pack50", "externalRef": "pi_fixture"}'
kill -TERM "$server"
wait "$server" || true
server=

# One file: the WAL folded in, rollback journal, no free pages.
python3 - "$work/data/tollgate.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.execute("PRAGMA journal_mode=DELETE")
db.execute("VACUUM")
print("schema version", db.execute("PRAGMA user_version").fetchone()[0])
db.close()
EOF
mkdir -p "$out"
cp "$work/data/tollgate.db" "$out/tollgate.db"
cp "$work/keys.json" "$out/keys.json"
# What the test looks for: the reservations made above.
(IFS=,; echo "{\"committed\": [${committed[*]}], \"pending\": \"$pending\"}") >"$out/expect.json"
echo "${RELEASE:-unknown} ($("$bin" --version))" >"$out/RELEASE"
ls -l "$out"
