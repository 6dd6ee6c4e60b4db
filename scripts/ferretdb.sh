#!/usr/bin/env bash
# ferretdb.sh start|stop|status — run FerretDB (a MongoDB wire-protocol
# server, SQLite backend in a temporary directory) on a loopback port for
# dlock's MongoDB tests.
#
#   eval "$(scripts/ferretdb.sh start)"   # exports DLOCK_TEST_MONGO_URL
#   go test -race ./drivers/mongolocker/
#   scripts/ferretdb.sh stop
#
# start builds tools/ferretdb into the run directory (first build ≈ 2 min),
# starts it in the background, waits until it answers a ping, writes a
# pidfile, and prints only the export line on stdout; messages go to stderr.
# It is idempotent: a server already running from the pidfile is reused.
#
# Environment: DLOCK_RUN_DIR (default <repo>/.run), DLOCK_FERRETDB_PORT
# (default 27018).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=${DLOCK_RUN_DIR:-$repo/.run}
port=${DLOCK_FERRETDB_PORT:-27018}
bin=$run_dir/ferretdb
pidfile=$run_dir/ferretdb.pid
logfile=$run_dir/ferretdb.log
url="mongodb://127.0.0.1:$port/"

log() { echo "ferretdb.sh: $*" >&2; }

running() {
	[[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# ping sends an OP_MSG {ping: 1, $db: "admin"} and checks for ok: 1.0.
ping() {
	local reply
	reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
		# header: length 51, requestID 1, responseTo 0, opCode 2013 (OP_MSG);
		# flags 0; section kind 0; document {ping: int32 1, $db: "admin"}.
		printf '\x33\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00\x00\x00\x00\x1e\x00\x00\x00\x10ping\x00\x01\x00\x00\x00\x02$db\x00\x06\x00\x00\x00admin\x00\x00' >&3
		timeout 2 head -c 38 <&3 | od -An -tx1 | tr -d ' \n') 2>/dev/null) || return 1
	# ok: double 1.0 is encoded as 01 6f 6b 00 00..00 f0 3f.
	[[ $reply == *016f6b00000000000000f03f* ]]
}

start() {
	mkdir -p "$run_dir"
	if running; then
		if ping; then
			log "already running (pid $(cat "$pidfile")) on $url"
			echo "export DLOCK_TEST_MONGO_URL=$url"
			return 0
		fi
		log "pid $(cat "$pidfile") does not answer on port $port; restarting it"
		stop
	fi
	log "building $bin"
	(cd "$repo/tools/ferretdb" && go build -o "$bin" .) >&2
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		log "port $port is already taken by another program; set DLOCK_FERRETDB_PORT"
		return 1
	fi
	setsid nohup "$bin" -listen "127.0.0.1:$port" >"$logfile" 2>&1 </dev/null &
	echo $! >"$pidfile"
	local deadline=$((SECONDS + 30))
	while ((SECONDS < deadline)); do
		if ping; then
			log "running (pid $(cat "$pidfile")) on $url; log in $logfile"
			echo "export DLOCK_TEST_MONGO_URL=$url"
			return 0
		fi
		if ! running; then
			log "exited at start; log follows"
			cat "$logfile" >&2
			rm -f "$pidfile"
			return 1
		fi
		sleep 0.1
	done
	log "no answer on port $port after 30s; stopping it"
	stop
	return 1
}

stop() {
	if ! [[ -f $pidfile ]]; then
		log "not running"
		return 0
	fi
	local pid i
	pid=$(cat "$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "pid $pid ignored SIGTERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$pidfile"
	log "stopped"
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) if running && ping; then echo "running on $url"; else echo "not running"; exit 1; fi ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
