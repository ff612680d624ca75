#!/usr/bin/env bash
# Checks the running server against its own `/openapi.json` with schemathesis (`--checks all`):
# every status it answers is documented, every answer matches its schema, every input the
# schemas allow is taken and every input they forbid is refused. Exits non-zero on any finding.
#
# It starts its own server from ${TOLLGATE_BIN:-target/debug/tollgate} on a fresh data dir and a
# free port, applies a small plan document with the test secret key, then runs three passes:
#   1. every route except /admin/... and PUT /v1/plans, with `Authorization: Bearer <test
#      secret key>` (the /webhooks/... route takes no key; the header is ignored there);
#   2. PUT /v1/plans, after pass 1, which relies on the plans applied here;
#   3. the /admin/... routes, with the admin token. This pass runs last because it may revoke
#      keys it lists. It leaves out POST /admin/v1/token/rotate: its first call would replace
#      the very token the pass runs with (crates/cli/tests/operations.rs tests it).
#
# schemathesis must be on PATH; this script installs nothing. To install it:
#   python3 -m venv /tmp/st-venv && /tmp/st-venv/bin/pip install schemathesis==4.32.5
#   PATH=/tmp/st-venv/bin:$PATH scripts/schemathesis.sh
#
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (examples per operation and phase, default 100; the whole run
# takes about 1.5 minutes on 2 cores), SCHEMATHESIS_SEED (for a reproducible run), and extra
# arguments, which go to every `schemathesis run` call (e.g. `--include-path /v1/track`).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${TOLLGATE_BIN:-target/debug/tollgate}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-100}"

if ! command -v schemathesis >/dev/null; then
    echo "schemathesis is not on PATH; see the header of $0 for how to install it" >&2
    exit 2
fi
if [[ ! -x "$bin" ]]; then
    echo "no tollgate binary at $bin (cargo build --bin tollgate, or set TOLLGATE_BIN)" >&2
    exit 2
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A port the kernel just handed out and released: free unless something races for it.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"

"$bin" init --data-dir "$work/data" --json >"$work/init.json"
secret="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["keys"]["test"]["secret"])' <"$work/init.json")"
admin="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["adminToken"])' <"$work/init.json")"

"$bin" serve --data-dir "$work/data" --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 300); do
    if curl -fsS "$base/readyz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [[ -z "$ready" ]]; then
    echo "the server did not become ready; its log:" >&2
    cat "$work/server.log" >&2
    exit 1
fi

# A small plan document, so metering routes meet a plan, a limit and a credit pack.
curl -fsS -X PUT "$base/v1/plans" \
    -H "Authorization: Bearer $secret" -H 'Content-Type: application/json' \
    --data-binary @- >/dev/null <<'JSON'
{ "defaultPlan": "free",
  "plans": [
    { "id": "free", "name": "Free",
      "limits": [
        { "id": "images_daily", "quota": 10,
          "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
          "match": [{"event": "image.*"}] } ] },
    { "id": "pro", "name": "Pro", "seats": 5,
      "limits": [
        { "id": "images_daily", "quota": 1000,
          "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
          "match": [{"event": "image.*"}] } ] } ],
  "creditPacks": [
    { "id": "pack50", "name": "50 images",
      "items": [ { "id": "imgs", "quantity": 50, "match": [{"event": "image.*"}] } ] } ] }
JSON

# What JSON Schema cannot say, settled before each request (see docs/api.md):
# - JSON Schema counts 2.0 as an integer; Tollgate refuses any number written with a fraction
#   or an exponent (API.md §1: no floats), so whole floats are sent as integers;
# - a tracked `occurredAt` must lie within 35 days before the environment's now, and a grant's
#   `expiresAt` after it; a schema cannot be relative to now, so a well-formed timestamp there is
#   moved to the environment's now (read from the test clock, which pass 1 may advance);
# - time zones must be names of the tz database; a schema cannot list it, so a string that is
#   one is kept and any other string becomes UTC;
# - a subscription's `customLimits` must name limits of its plan; the keys become
#   `images_daily`, the one limit of the plans applied below;
# - an identify's `userId` must differ from its `anonymousId`; equal ones are told apart;
# - an analytics range must have `to` after `from` (it becomes the last day); a grouping holds
#   one time unit at most, and names a dimension, a unit or `metadata.KEY`; a status filter
#   names a status; a funnel step is an event name; a capture names a user or an anonymous id,
#   not both;
# - free-form JSON (identify's `traits`, a capture's `properties`) is read as JSON numbers in
#   the f64 range; a literal past about 1.8e308 is refused as malformed, so such numbers
#   become 0.
mkdir -p "$work/hooks"
cat >"$work/hooks/tollgate_schemathesis_hooks.py" <<'PY'
import datetime
import json
import os
import re
import urllib.request
import zoneinfo

import schemathesis

BASE = os.environ["TOLLGATE_ST_BASE"]
KEY = os.environ["TOLLGATE_ST_KEY"]
ZONES = zoneinfo.available_timezones() | {"UTC"}


def _whole(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


def _is_timestamp(value):
    if not isinstance(value, str):
        return False
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


def _now():
    request = urllib.request.Request(BASE + "/v1/test/clock", headers={"Authorization": "Bearer " + KEY})
    with urllib.request.urlopen(request, timeout=5) as answer:
        now = json.load(answer)["now"]
    return datetime.datetime.fromisoformat(now.replace("Z", "+00:00"))


def _stamp(at):
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _zones(value):
    if isinstance(value, dict):
        return {
            k: ("UTC" if k == "timezone" and isinstance(v, str) and v not in ZONES else _zones(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_zones(v) for v in value]
    return value


EVENT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
UNITS = {"hour", "day", "week", "month"}
DIMENSIONS = {"userId", "accountId", "event", "planId", "status"}
METRICS = {"events", "quantity", "costMicros", "users"}
RANGED = {"POST /v1/analytics/usage", "POST /v1/analytics/funnel",
          "GET /v1/analytics/top-users", "GET /v1/analytics/margin"}


def _grouping(names):
    kept, unit = [], False
    for name in names:
        if not isinstance(name, str):
            continue
        if name in UNITS:
            if unit:
                continue
            unit = True
        elif name not in DIMENSIONS:
            name = "metadata.model"
        kept.append(name)
    return kept


def _analytics(route, body):
    now = _now()
    if "from" in body and "to" in body:
        body["from"] = _stamp(now - datetime.timedelta(days=1))
        body["to"] = _stamp(now)
    if route == "POST /v1/analytics/usage":
        if isinstance(body.get("groupBy"), list):
            body["groupBy"] = _grouping(body["groupBy"])
        if isinstance(body.get("metrics"), list):
            body["metrics"] = [m for m in body["metrics"] if isinstance(m, str) and m in METRICS]
        filters = body.get("filters")
        if isinstance(filters, dict):
            if "status" in filters:
                filters["status"] = "committed"
            if filters.get("metadata"):
                filters["metadata"] = {"model": "flux-pro"}
    if route == "POST /v1/analytics/funnel" and isinstance(body.get("steps"), list):
        body["steps"] = [s if isinstance(s, str) and EVENT.match(s) else "signed_up"
                         for s in body["steps"]]


def _finite(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > 1e300:
        return 0
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    route = f"{case.method.upper()} {case.path}"
    if route in RANGED and isinstance(case.query, dict):
        now = _now()
        if "from" in case.query or "to" in case.query:
            case.query["from"] = _stamp(now - datetime.timedelta(days=1))
            case.query["to"] = _stamp(now)
    body = case.body
    if not isinstance(body, (dict, list)):
        return
    body = _zones(_whole(body))
    if isinstance(body, dict) and route in ("POST /v1/identify", "POST /v1/capture"):
        for free in ("traits", "properties"):
            if free in body:
                body[free] = _finite(body[free])
    if isinstance(body, dict) and route in RANGED:
        _analytics(route, body)
    if isinstance(body, dict) and route == "POST /v1/capture":
        if body.get("userId") is not None:
            body.pop("anonymousId", None)
        elif body.get("anonymousId") is not None:
            body.pop("userId", None)
        else:
            body["userId"] = "u1"
            body.pop("anonymousId", None)
        if _is_timestamp(body.get("occurredAt")):
            body["occurredAt"] = _stamp(_now())
    if isinstance(body, dict):
        if route == "POST /v1/track" and _is_timestamp(body.get("occurredAt")):
            body["occurredAt"] = _stamp(_now())
        if route == "POST /v1/identify" and body.get("userId") == body.get("anonymousId"):
            if isinstance(body.get("userId"), str):
                body["userId"] = ("u_" + body["userId"])[:256]
        limits = body.get("customLimits")
        if route == "POST /v1/subscriptions" and isinstance(limits, dict) and limits:
            body["customLimits"] = {"images_daily": next(iter(limits.values()))}
        if route == "POST /v1/credits/grants" and _is_timestamp(body.get("expiresAt")):
            body["expiresAt"] = _stamp(_now() + datetime.timedelta(days=1))
    case.body = body
PY
# A plan document holds rules between its fields that a schema cannot state (defaultPlan and
# anonymousPlan name plans of the document, ids are unique, a window takes `period` or `seconds`
# by its type, a concurrency limit ignores its window): the schema states every field's own
# limits, and schema-valid documents that break those rules are refused with `400` naming the
# field. So PUT /v1/plans skips only the check that schema-valid input is accepted.
# Every check is on (what `--checks all` would say; the command line would also override the
# exception below).
cat >"$work/schemathesis.toml" <<'TOML'
[checks]
enabled = true

[[operations]]
include-name = "PUT /v1/plans"
checks.positive_data_acceptance.enabled = false
TOML

export PYTHONPATH="$work/hooks${PYTHONPATH:+:$PYTHONPATH}"
export SCHEMATHESIS_HOOKS=tollgate_schemathesis_hooks
export TOLLGATE_ST_BASE="$base" TOLLGATE_ST_KEY="$secret"

extra=("$@")
common=(--max-examples "$max_examples" --no-color --workers 1 --generation-database none
    --suppress-health-check all)
if [[ -n "${SCHEMATHESIS_SEED:-}" ]]; then
    common+=(--seed "$SCHEMATHESIS_SEED")
fi

status=0
# From the scratch directory: schemathesis keeps a cache of failures (`.schemathesis/`) in its
# working directory, which must not land in the checkout.
run() {
    (cd "$work" && schemathesis --config-file "$work/schemathesis.toml" \
        run "$base/openapi.json" "${common[@]}" "$@") || status=1
}
echo "== pass 1: every route but /admin and PUT /v1/plans, with the test secret key"
run --exclude-path-regex '^/admin/' --exclude-name 'PUT /v1/plans' \
    -H "Authorization: Bearer $secret" "${extra[@]}"

echo "== pass 2: PUT /v1/plans (last of the keyed routes: it replaces the plans pass 1 uses)"
run --include-name 'PUT /v1/plans' -H "Authorization: Bearer $secret" "${extra[@]}"

echo "== pass 3: /admin routes, with the admin token (last: it may revoke keys it lists)"
run --include-path-regex '^/admin/' --exclude-name 'POST /admin/v1/token/rotate' \
    -H "Authorization: Bearer $admin" "${extra[@]}"

if [[ "$status" -ne 0 ]]; then
    echo "schemathesis found problems; the server's log ends:" >&2
    tail -n 50 "$work/server.log" >&2
fi
exit "$status"
