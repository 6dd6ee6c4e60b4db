#!/usr/bin/env bash
# bench.sh — run the benchmark program in bench/ against every server.
#
#   scripts/bench.sh            # full run (5 rounds × 1s per workload and subject, ≈ 5 min), writes bench/RESULTS.md
#   scripts/bench.sh -quick     # smoke run (1 round × 300ms), report on standard output
#   scripts/bench.sh -only Redis -rounds 5   # other flags of the program (see: cd bench && go run . -h)
#
# PostgreSQL and Redis are expected where the tests expect them (127.0.0.1:5432
# and :6379, or DLOCK_TEST_POSTGRES_URL / DLOCK_TEST_REDIS_URL). Unless their
# variables are already set, this script starts the extra redis-server
# processes for Redlock (DLOCK_TEST_REDLOCK_URLS; the first three are used)
# and a FerretDB server (DLOCK_TEST_MONGO_URL; first build ≈ 2 min), and
# stops them afterwards. A server that does not answer is left out of the
# report, which says so.
#
# The machine should be otherwise idle: on two shared vCPUs other work moves
# every figure. The program interleaves the libraries and repeats rounds to
# make the comparison fair within one run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DLOCK_RUN_DIR=${DLOCK_RUN_DIR:-$PWD/.run}

started=()
cleanup() {
	for s in "${started[@]}"; do scripts/"$s".sh stop >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# Servers that were already running (another engineer's tests, say) are
# used and left running; only those started here are stopped.
if [[ -z ${DLOCK_TEST_REDLOCK_URLS:-} ]] && command -v redis-server >/dev/null; then
	log=$(mktemp)
	eval "$(scripts/redis-servers.sh start 2>"$log")"
	grep -q 'started redis-server' "$log" && started+=(redis-servers)
	cat "$log" >&2
	rm -f "$log"
fi
if [[ -z ${DLOCK_TEST_MONGO_URL:-} ]]; then
	log=$(mktemp)
	if out=$(scripts/ferretdb.sh start 2>"$log"); then
		eval "$out"
		grep -q 'already running' "$log" || started+=(ferretdb)
	else
		echo "bench.sh: FerretDB did not start; MongoDB is left out" >&2
	fi
	cat "$log" >&2
	rm -f "$log"
fi

cd bench
go build -o "$DLOCK_RUN_DIR/dlock-bench" .
"$DLOCK_RUN_DIR/dlock-bench" -command "scripts/bench.sh $*" "$@"
