#!/usr/bin/env bash
# test.sh — the whole test suite, with every server it needs.
#
#   scripts/test.sh                 # go test -race ./... with all backends
#   scripts/test.sh -run Conformance ./drivers/redislocker   # other go test arguments
#
# PostgreSQL and Redis are expected where they usually are (127.0.0.1:5432
# and :6379, or DLOCK_TEST_POSTGRES_URL / DLOCK_TEST_REDIS_URL). This script
# starts the rest itself: five extra redis-server processes for the Redlock
# tests and a FerretDB server for the MongoDB tests (its first build takes
# about two minutes), and stops them when the tests end. A backend that is
# still missing is skipped, unless DLOCK_TEST_REQUIRE_BACKENDS=1, which makes
# it a failure (CI sets it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DLOCK_RUN_DIR=${DLOCK_RUN_DIR:-$PWD/.run}

started=()
cleanup() {
	for s in "${started[@]}"; do scripts/"$s".sh stop >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

if [[ -z ${DLOCK_TEST_REDLOCK_URLS:-} ]] && command -v redis-server >/dev/null; then
	eval "$(scripts/redis-servers.sh start)"
	started+=(redis-servers)
fi
if [[ -z ${DLOCK_TEST_MONGO_URL:-} ]]; then
	eval "$(scripts/ferretdb.sh start)"
	started+=(ferretdb)
fi

args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(./...)
go test -race -count=1 -timeout 20m "${args[@]}"
