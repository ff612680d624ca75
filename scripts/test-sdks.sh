#!/usr/bin/env bash
# Runs the SDKs' own test suites against the real `tollgate` binary (each suite starts its own
# servers on temp data dirs): the TypeScript SDK with `node --test`, the Python SDK with pytest.
# Needs Node.js 18+ with npm and Python 3.9+; installs their packages from the npm registry and
# PyPI (into sdks/typescript/node_modules and target/sdk-venv), never elsewhere.
#
#   scripts/test-sdks.sh            # builds target/debug/tollgate first if TOLLGATE_BIN is unset
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${TOLLGATE_BIN:-}" ]]; then
  cargo build --bin tollgate
  export TOLLGATE_BIN="$PWD/target/debug/tollgate"
fi
echo "== SDK tests against $TOLLGATE_BIN"

echo "== TypeScript SDK (node --test)"
(cd sdks/typescript && npm ci --no-audit --no-fund && npm test)

echo "== Python SDK (pytest)"
venv=target/sdk-venv
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -e 'sdks/python[test]'
"$venv/bin/pytest" sdks/python/tests -q
