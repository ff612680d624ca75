#!/usr/bin/env bash
# Runs the black-box suite of crates/cli against PostgreSQL: every test server gets a fresh
# database `tg_t_<random>` (dropped when the test ends), and the PostgreSQL-only tests
# (multinode, pg_outage) run too.
#
#   scripts/test-postgres.sh                 # the whole suite of tollgate-cli
#   scripts/test-postgres.sh --test race     # one test file; arguments go to `cargo test`
#   scripts/test-postgres.sh --clean         # first drop leftover tg_t_* databases (needs psql;
#                                            # only when no other test run is going on)
#
# TOLLGATE_TEST_POSTGRES_URL names a database whose user may create databases; the default is
# the local trust-auth server: postgres://postgres@127.0.0.1:5432/test.
set -euo pipefail
cd "$(dirname "$0")/.."

export TOLLGATE_TEST_POSTGRES_URL="${TOLLGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
export TOLLGATE_TEST_BACKEND=postgres

if [[ "${1:-}" == "--clean" ]]; then
    shift
    if ! command -v psql >/dev/null; then
        echo "--clean needs psql" >&2
        exit 2
    fi
    leftovers=$(psql "$TOLLGATE_TEST_POSTGRES_URL" -Atc \
        "SELECT datname FROM pg_database WHERE datname LIKE 'tg\_t\_%'")
    for db in $leftovers; do
        echo "dropping leftover test database $db"
        psql "$TOLLGATE_TEST_POSTGRES_URL" -qc \
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$db'" >/dev/null
        psql "$TOLLGATE_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS \"$db\""
    done
fi

if command -v pg_isready >/dev/null && ! pg_isready -q -d "$TOLLGATE_TEST_POSTGRES_URL"; then
    echo "PostgreSQL is not accepting connections at $TOLLGATE_TEST_POSTGRES_URL" >&2
    exit 1
fi

exec cargo test -p tollgate-cli --tests "$@"
