#!/usr/bin/env bash
# Tries every example the way its README tells a new user, against a freshly started real server:
#   (a) the TypeScript SDK installed into an EMPTY folder (`npm install <repo>/sdks/typescript`)
#       and a ten-line script that reserves and commits;
#   (b) examples/express: `npm ci`, `npm start`, POST /generate three times → 200, 200, 429;
#   (c) examples/nextjs: `npm ci`, `npm run build`, `npm start`, POST /api/generate → 200, 200,
#       429, and a failing render → 502 with the hold released;
#   (d) examples/fastapi: a FRESH virtualenv, `pip install <repo>/sdks/python` and the example's
#       requirements, uvicorn, POST /chat until it answers 429; the tokens streamed must equal
#       the usage the server reports.
# Every check prints what it checks; any mismatch fails the script. Every process it starts is
# killed on exit. Needs curl, jq, Node.js 20+ with npm, Python 3.9+, and the npm registry and PyPI.
#
#   TOLLGATE_BIN=target/debug/tollgate scripts/test-examples.sh     # the default binary
#   scripts/test-examples.sh a c                                      # only some parts
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

BIN=${TOLLGATE_BIN:-target/debug/tollgate}
[[ "$BIN" == /* ]] || BIN="$REPO/$BIN"
if [[ ! -x "$BIN" ]]; then
  echo "test-examples: no tollgate binary at $BIN (cargo build --bin tollgate, or set TOLLGATE_BIN)" >&2
  exit 1
fi
for tool in curl jq node npm python3; do
  command -v "$tool" >/dev/null || { echo "test-examples: $tool is required" >&2; exit 1; }
done
PARTS=${*:-a b c d}

export NEXT_TELEMETRY_DISABLED=1 npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-examples.XXXXXX")
PIDS=()

# Kills every process group this script started (each is started with setsid), then the temp dir.
cleanup() {
  local status=$? pid
  for pid in "${PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
  if [[ $status -ne 0 ]]; then echo "test-examples: FAILED (status $status)" >&2; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "  FAIL: $*" >&2; exit 1; }
ok() { echo "  ok: $*"; }

# Starts "$@" in its own process group (so cleanup kills its children too), logging to $1's log.
start() {
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until `curl URL` gets any HTTP answer (up to $2 seconds), else shows the log and fails.
wait_http() {
  local url=$1 seconds=$2 log=$3 i
  for ((i = 0; i < seconds * 4; i++)); do
    if curl -s -o /dev/null "$url"; then return 0; fi
    kill -0 "$LAST_PID" 2>/dev/null || { tail -30 "$log" >&2; fail "the process behind $url exited"; }
    sleep 0.25
  done
  tail -30 "$log" >&2
  fail "$url did not answer within ${seconds}s"
}

# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
  if [[ "$2" == "$3" ]]; then ok "$1 = $3"; else fail "$1: expected $3, got $2"; fi
}

# The server's view of a user's limit: `usage USER LIMIT_ID FIELD` (used, reserved, remaining).
usage() {
  curl -sS -f "$TG_URL/v1/users/$1/usage" -H "Authorization: Bearer $TG_KEY" |
    jq -r --arg id "$2" --arg f "$3" '.limits[] | select(.limitId == $id) | .[$f]'
}

# POSTs JSON to an example: `post URL USER BODY OUT` → prints the HTTP status, the body in OUT.
post() {
  curl -sS -o "$4" -w '%{http_code}' -X POST "$1" -H "x-user-id: $2" -H 'Content-Type: application/json' -d "$3"
}

# Three renders for one user against the plan's quota of 2: 200, 200, 429 (with the limits).
expect_200_200_429() {
  local url=$1 user=$2 label=$3 n status
  for n in 1 2 3; do
    status=$(post "$url" "$user" '{"prompt": "a red fox"}' "$WORK/out.json")
    if [[ $n -lt 3 ]]; then
      expect_eq "$label render $n status" "$status" 200
      expect_eq "$label render $n image url" "$(jq -r '.image.url' "$WORK/out.json")" "https://images.example/a%20red%20fox.png"
    else
      expect_eq "$label render 3 status (over quota)" "$status" 429
      expect_eq "$label 429 names the limit" "$(jq -r '.limits[0].limitId' "$WORK/out.json")" images
      expect_eq "$label 429 remaining" "$(jq -r '.limits[0].remaining' "$WORK/out.json")" 0
    fi
  done
  expect_eq "$label server usage: used" "$(usage "$user" images used)" 2
  expect_eq "$label server usage: reserved" "$(usage "$user" images reserved)" 0
}

timed() {
  local name=$1 began=$SECONDS
  shift
  echo
  echo "== ($name) $*"
  "part_$name"
  echo "== ($name) passed in $((SECONDS - began))s"
  TIMES+=("($name) $((SECONDS - began))s")
}
TIMES=()

# ---------------------------------------------------------------------------------------------
start_server() {
  echo "== the server: $BIN"
  "$BIN" init --data-dir "$WORK/data" --json >"$WORK/init.json"
  TG_KEY=$(jq -r '.keys.test.secret' "$WORK/init.json")
  [[ "$TG_KEY" == tg_sk_test_* ]] || fail "init --json gave no test secret key"
  start "$WORK/server.log" "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:0
  local i addr=""
  for ((i = 0; i < 80; i++)); do
    addr=$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$WORK/server.log" | head -1)
    [[ -n "$addr" ]] && break
    kill -0 "$LAST_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; fail "tollgate serve exited"; }
    sleep 0.25
  done
  [[ -n "$addr" ]] || { cat "$WORK/server.log" >&2; fail "tollgate serve logged no 'listening on'"; }
  TG_URL=$addr
  ok "serving on $TG_URL"
}

# The plan of parts a-c: 2 images per user, ever. (Part d applies the FastAPI example's own.)
apply_image_plan() {
  local plan='{"defaultPlan":"free","plans":[{"id":"free","limits":[{"id":"images","quota":2,"window":{"type":"lifetime"},"match":[{"event":"image.*"}]}]}]}'
  curl -sS -f -o /dev/null -X PUT "$TG_URL/v1/plans" -H "Authorization: Bearer $TG_KEY" \
    -H 'Content-Type: application/json' -d "$plan" || fail "PUT /v1/plans was refused"
  ok "plan applied: 2 images per user"
}

# (a) The SDK in an empty folder, as its README says, and a ten-line script.
part_a() {
  apply_image_plan
  local dir="$WORK/empty-app"
  mkdir "$dir"
  (cd "$dir" && npm init -y >/dev/null && npm install --no-audit --no-fund "$REPO/sdks/typescript") >"$WORK/a-npm.log" 2>&1 ||
    { tail -30 "$WORK/a-npm.log" >&2; fail "npm install of the SDK into an empty folder"; }
  ok "npm init -y && npm install $REPO/sdks/typescript"
  cat >"$dir/try.mjs" <<'EOF'
import { Tollgate } from "@tollgate/sdk";

const tollgate = new Tollgate({ baseUrl: process.env.TOLLGATE_URL, secretKey: process.env.TOLLGATE_KEY });
const answer = await tollgate.reserve({ userId: "u_sdk", event: "image.render", quantity: 1 });
if (!answer.allowed) throw new Error(`denied: ${JSON.stringify(answer.reasons)}`);
const commit = await tollgate.commit(answer.reservationId, { quantity: 1 });
console.log(JSON.stringify({ reservationId: answer.reservationId, status: commit.status }));
const usage = await tollgate.usage("u_sdk");
console.log(JSON.stringify(usage.limits.map((l) => ({ id: l.limitId, used: l.used }))));
EOF
  (cd "$dir" && TOLLGATE_URL=$TG_URL TOLLGATE_KEY=$TG_KEY node try.mjs) >"$WORK/a.out" 2>&1 ||
    { cat "$WORK/a.out" >&2; fail "the ESM script (import) failed"; }
  expect_eq "ESM script: commit status" "$(head -1 "$WORK/a.out" | jq -r .status)" committed
  expect_eq "ESM script: the reservation id prefix" "$(head -1 "$WORK/a.out" | jq -r '.reservationId[0:4]')" rsv_
  expect_eq "ESM script: usage it read back" "$(sed -n 2p "$WORK/a.out")" '[{"id":"images","used":1}]'
  # The same package through require() (its CommonJS build), as a CommonJS project would use it.
  local cjs
  cjs=$(cd "$dir" && node -e 'const { Tollgate, QuotaExceededError } = require("@tollgate/sdk");
    console.log(typeof Tollgate, typeof QuotaExceededError)') || fail "require(\"@tollgate/sdk\") failed"
  expect_eq "CommonJS require exports" "$cjs" "function function"
  expect_eq "server usage of u_sdk: used" "$(usage u_sdk images used)" 1
  expect_eq "server usage of u_sdk: reserved" "$(usage u_sdk images reserved)" 0
}

# (b) examples/express, as its README says (npm ci for the committed lockfile).
part_b() {
  apply_image_plan
  local dir="$REPO/examples/express" port
  (cd "$dir" && npm ci --no-audit --no-fund) >"$WORK/b-npm.log" 2>&1 ||
    { tail -30 "$WORK/b-npm.log" >&2; fail "npm ci in examples/express"; }
  ok "npm ci"
  port=$(free_port)
  start "$WORK/express.log" env -C "$dir" PORT="$port" TOLLGATE_URL="$TG_URL" TOLLGATE_KEY="$TG_KEY" npm start
  wait_http "http://127.0.0.1:$port/usage" 30 "$WORK/express.log"
  ok "npm start: listening on port $port"
  expect_200_200_429 "http://127.0.0.1:$port/generate" u_express express
  local status
  status=$(post "http://127.0.0.1:$port/generate" u_express_fail '{"prompt": "fail"}' "$WORK/out.json")
  expect_eq "express failing render status" "$status" 500
  expect_eq "express failing render: server usage used" "$(usage u_express_fail images used)" 0
  expect_eq "express failing render: server usage reserved" "$(usage u_express_fail images reserved)" 0
}

# (c) examples/nextjs, as its README says: a production build, then next start.
part_c() {
  apply_image_plan
  local dir="$REPO/examples/nextjs" port began
  (cd "$dir" && npm ci --no-audit --no-fund) >"$WORK/c-npm.log" 2>&1 ||
    { tail -30 "$WORK/c-npm.log" >&2; fail "npm ci in examples/nextjs"; }
  ok "npm ci"
  began=$SECONDS
  (cd "$dir" && npm run build) >"$WORK/c-build.log" 2>&1 ||
    { tail -40 "$WORK/c-build.log" >&2; fail "npm run build (next build)"; }
  ok "npm run build (next build) in $((SECONDS - began))s"
  port=$(free_port)
  began=$SECONDS
  start "$WORK/next.log" env -C "$dir" TOLLGATE_URL="$TG_URL" TOLLGATE_KEY="$TG_KEY" npm start -- -p "$port" -H 127.0.0.1
  wait_http "http://127.0.0.1:$port/" 60 "$WORK/next.log"
  ok "npm start (next start) answering on port $port after $((SECONDS - began))s"
  expect_200_200_429 "http://127.0.0.1:$port/api/generate" u_next next
  local status
  status=$(post "http://127.0.0.1:$port/api/generate" u_next_fail '{"prompt": "fail"}' "$WORK/out.json")
  expect_eq "next failing render status" "$status" 502
  expect_eq "next failing render: server usage used" "$(usage u_next_fail images used)" 0
  expect_eq "next failing render: server usage reserved" "$(usage u_next_fail images reserved)" 0
  status=$(post "http://127.0.0.1:$port/api/generate" "" '{"prompt": "x"}' "$WORK/out.json")
  expect_eq "next without x-user-id status" "$status" 400
}

# (d) examples/fastapi in a fresh virtualenv, as its README says (its plans.json applied first).
part_d() {
  local dir="$REPO/examples/fastapi" venv="$WORK/venv" port
  python3 -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check --quiet "$REPO/sdks/python" >"$WORK/d-pip.log" 2>&1 ||
    { tail -30 "$WORK/d-pip.log" >&2; fail "pip install sdks/python"; }
  ok "fresh venv: pip install $REPO/sdks/python"
  (cd "$dir" && "$venv/bin/pip" install --disable-pip-version-check --quiet -r requirements.txt) >>"$WORK/d-pip.log" 2>&1 ||
    { tail -30 "$WORK/d-pip.log" >&2; fail "pip install -r examples/fastapi/requirements.txt"; }
  ok "pip install -r requirements.txt"
  curl -sS -f -o /dev/null -X PUT "$TG_URL/v1/plans" -H "Authorization: Bearer $TG_KEY" \
    -H 'Content-Type: application/json' -d @"$dir/plans.json" || fail "PUT examples/fastapi/plans.json"
  ok "examples/fastapi/plans.json applied"
  port=$(free_port)
  start "$WORK/uvicorn.log" env -C "$dir" TOLLGATE_URL="$TG_URL" TOLLGATE_KEY="$TG_KEY" \
    "$venv/bin/uvicorn" app:app --host 127.0.0.1 --port "$port"
  wait_http "http://127.0.0.1:$port/openapi.json" 30 "$WORK/uvicorn.log"
  ok "uvicorn app:app on port $port"
  local quota n status streamed=0 tokens answers=0
  quota=$(usage u_chat tokens_daily remaining)
  expect_eq "u_chat's daily tokens before chatting" "$quota" 200
  local message="the quick brown fox jumps over the lazy dog and then it naps in the warm sun all day long"
  for ((n = 1; n <= 40; n++)); do
    status=$(curl -sS -N -o "$WORK/chat.txt" -w '%{http_code}' -X POST "http://127.0.0.1:$port/chat" \
      -H 'Content-Type: application/json' -d "{\"user_id\": \"u_chat\", \"message\": \"$message\"}")
    if [[ "$status" == 429 ]]; then break; fi
    expect_eq "chat $n status" "$status" 200
    tokens=$(wc -w <"$WORK/chat.txt")
    [[ "$tokens" -gt 0 ]] || fail "chat $n streamed no tokens"
    streamed=$((streamed + tokens))
    answers=$((answers + 1))
  done
  expect_eq "chat $n status (over quota)" "$status" 429
  expect_eq "429 body error" "$(jq -r .error "$WORK/chat.txt")" quota_exceeded
  [[ $answers -ge 2 ]] || fail "only $answers chats were allowed before the 429"
  ok "$answers chats streamed $streamed tokens in all before the 429"
  # The commit after the last token is sent after the stream ends: give it a moment to land.
  local used reserved i
  for ((i = 0; i < 20; i++)); do
    reserved=$(usage u_chat tokens_daily reserved)
    [[ "$reserved" == 0 ]] && break
    sleep 0.25
  done
  used=$(usage u_chat tokens_daily used)
  expect_eq "server usage of u_chat = tokens streamed" "$used" "$streamed"
  expect_eq "server usage of u_chat: reserved" "$reserved" 0
  expect_eq "the 429's remaining = what the server says is left" \
    "$(jq -r .remaining "$WORK/chat.txt")" "$(usage u_chat tokens_daily remaining)"
}

began_all=$SECONDS
start_server
for part in $PARTS; do
  case $part in
    a) timed a "the TypeScript SDK in an empty folder" ;;
    b) timed b "examples/express" ;;
    c) timed c "examples/nextjs" ;;
    d) timed d "examples/fastapi in a fresh virtualenv" ;;
    *) fail "unknown part $part (a, b, c or d)" ;;
  esac
done
echo
echo "== all passed in $((SECONDS - began_all))s: ${TIMES[*]}"
