#!/usr/bin/env bash
# torture.sh BACKEND DURATION [FAULT...] — build cmd/dlock-torture and run it
# against one storage, printing its summary; exits non-zero if the run failed
# (an overlap among accepted writes, tokens not rising, a lock overlap on a
# storage that promises exclusion, a loss not detected, a crashed worker).
#
#   scripts/torture.sh pg 1m kill stop pgterm drop
#   scripts/torture.sh redis 10m all
#   scripts/torture.sh redlock 10m all               # Redlock nodes without persistence
#   TORTURE_FLAGS=-redlock-persist scripts/torture.sh redlock 10m all
#   scripts/torture.sh mongo 1m kill stop drop       # starts FerretDB if needed
#   scripts/torture.sh pg 10m all pgrestart          # restarts the shared PostgreSQL!
#
# BACKEND is pg, redis, redlock or mongo; DURATION a Go duration (30s, 10m).
# FAULTs are kill, stop, pgterm, pgrestart, redis-restart, redis-majority,
# latency, drop, partition, or "all" (every fault that applies except
# pgrestart); with none given, "kill stop pgterm drop latency partition".
# pgrestart restarts the PostgreSQL server every test uses: run it alone.
#
# Environment: DLOCK_TEST_POSTGRES_URL (fenced log; pg locks),
# DLOCK_TEST_REDIS_URL, DLOCK_TEST_MONGO_URL (else scripts/ferretdb.sh starts
# FerretDB), TORTURE_FLAGS (extra flags, e.g. "-procs 4 -ttl 2s -v"; see
# dlock-torture -h), DLOCK_RUN_DIR (default <repo>/.run).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=${DLOCK_RUN_DIR:-$repo/.run}

if (($# < 2)); then
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
fi
backend=$1 duration=$2
shift 2
faults=${*:-kill stop pgterm drop latency partition}
faults=${faults// /,}

flags=()
[[ ,$faults, == *,pgrestart,* ]] && flags+=(-allow-pg-restart)

mkdir -p "$run_dir"
bin=$run_dir/dlock-torture
(cd "$repo" && go build -o "$bin" ./cmd/dlock-torture)

if [[ $backend == mongo && -z ${DLOCK_TEST_MONGO_URL:-} ]]; then
	eval "$("$repo/scripts/ferretdb.sh" start)"
fi

# shellcheck disable=SC2086 # TORTURE_FLAGS is a list of flags
exec "$bin" -backend "$backend" -duration "$duration" -faults "$faults" "${flags[@]}" ${TORTURE_FLAGS:-}
