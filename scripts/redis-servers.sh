#!/usr/bin/env bash
# redis-servers.sh start|stop|status — extra redis-server processes for the
# Redlock tests: independent servers on loopback, no persistence.
#
#   eval "$(scripts/redis-servers.sh start)"   # exports DLOCK_TEST_REDLOCK_URLS
#   scripts/redis-servers.sh stop
#
# start prints only the export line on stdout (messages go to stderr) and is
# idempotent: servers already answering are kept. stop kills them by pidfile.
#
# Environment:
#   DLOCK_REDLOCK_PORTS  space- or comma-separated ports (default 16379-16383)
#   DLOCK_RUN_DIR        run directory for pidfiles and logs (default <repo>/.run)
#   REDIS_SERVER         redis-server binary (default: redis-server in PATH)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=${DLOCK_RUN_DIR:-$repo/.run}/redis
ports=${DLOCK_REDLOCK_PORTS:-16379 16380 16381 16382 16383}
ports=${ports//,/ }
server=${REDIS_SERVER:-redis-server}

log() { echo "redis-servers: $*" >&2; }

# ping PORT: succeeds when a Redis server on 127.0.0.1:PORT answers PONG.
ping() {
	local reply
	if command -v redis-cli >/dev/null 2>&1; then
		reply=$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) || return 1
	else
		exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
		printf 'PING\r\n' >&3
		read -r -t 1 reply <&3 || true
		exec 3>&- 3<&-
		reply=${reply%$'\r'}
		reply=${reply#+}
	fi
	[[ $reply == PONG ]]
}

start() {
	command -v "$server" >/dev/null 2>&1 || { log "$server not found"; exit 1; }
	mkdir -p "$run_dir"
	local urls=() port dir
	for port in $ports; do
		dir=$run_dir/$port
		if ping "$port"; then
			log "port $port already answers; keeping it"
		else
			mkdir -p "$dir"
			"$server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
				--daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" \
				--logfile "$dir/redis.log" --loglevel warning >&2
			log "started redis-server on port $port"
		fi
		urls+=("redis://127.0.0.1:$port")
	done
	for port in $ports; do
		local i
		for ((i = 0; i < 200; i++)); do
			ping "$port" && break
			sleep 0.05
		done
		ping "$port" || { log "redis-server on port $port does not answer; see $run_dir/$port/redis.log"; exit 1; }
	done
	local IFS=,
	echo "export DLOCK_TEST_REDLOCK_URLS=${urls[*]}"
}

stop() {
	local port pidfile pid i
	for port in $ports; do
		pidfile=$run_dir/$port/redis.pid
		[[ -f $pidfile ]] || continue
		pid=$(cat "$pidfile")
		if kill "$pid" 2>/dev/null; then
			for ((i = 0; i < 100; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.05
			done
			kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
			log "stopped redis-server on port $port (pid $pid)"
		fi
		rm -f "$pidfile"
	done
}

status() {
	local port
	for port in $ports; do
		if ping "$port"; then log "port $port: up"; else log "port $port: down"; fi
	done
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
