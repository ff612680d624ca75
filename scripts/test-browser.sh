#!/usr/bin/env bash
# The browser widget (GET /widget.js) in a real headless Chromium, in the page of
# examples/widget, against a real `tollgate serve` (tests/browser/widget.test.mjs, run with
# `node --test`). Installs the pinned playwright-core with `npm ci` into
# tests/browser/node_modules; uses Debian's Chromium and downloads no browser. Leaves a
# screenshot and the logs of every process in target/browser-artifacts/.
# Needs Node.js 20+ with npm, the npm registry (for the first `npm ci`), and /usr/bin/chromium.
#
#   TOLLGATE_BIN=target/debug/tollgate scripts/test-browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

BIN=${TOLLGATE_BIN:-}
if [[ -z "$BIN" ]]; then
  echo "test-browser: set TOLLGATE_BIN to a built tollgate binary (cargo build -p tollgate-cli; TOLLGATE_BIN=target/debug/tollgate)" >&2
  exit 1
fi
[[ "$BIN" == /* ]] || BIN="$REPO/$BIN"
if [[ ! -x "$BIN" ]]; then
  echo "test-browser: no tollgate binary at $BIN (cargo build -p tollgate-cli, or set TOLLGATE_BIN)" >&2
  exit 1
fi
CHROMIUM=/usr/bin/chromium
if [[ ! -x "$CHROMIUM" ]]; then
  echo "test-browser: Chromium is needed at $CHROMIUM; install it with:" >&2
  echo "  apt-get install -y chromium" >&2
  exit 1
fi
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "test-browser: $tool is required (Node.js 20+)" >&2; exit 1; }
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [[ "$node_major" -lt 20 ]]; then
  echo "test-browser: Node.js 20+ is required (playwright-core); this is $(node --version)" >&2
  exit 1
fi

export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
# Never fetch a browser build: the test drives the system Chromium.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) ||
  { echo "test-browser: npm ci in tests/browser failed" >&2; exit 1; }

mkdir -p target/browser-artifacts
echo "test-browser: $BIN, $("$CHROMIUM" --version 2>/dev/null | head -1)"
TOLLGATE_BIN=$BIN CHROMIUM_PATH=$CHROMIUM node --test --test-reporter=spec tests/browser/widget.test.mjs
echo "test-browser: screenshot and logs in $REPO/target/browser-artifacts/"
