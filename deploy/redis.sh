#!/usr/bin/env bash
# Starts a redis-server for examlab on 127.0.0.1:6379 with append-only
# persistence under the given directory, unless one already answers there.
set -euo pipefail
dir=${1:-./var/redis}
port=${EXAMLAB_REDIS_PORT:-6379}
if redis-cli -p "$port" ping >/dev/null 2>&1; then
	echo "redis already running on 127.0.0.1:$port"
	exit 0
fi
mkdir -p "$dir"
redis-server --bind 127.0.0.1 --port "$port" --dir "$(cd "$dir" && pwd)" \
	--appendonly yes --appendfsync everysec --save "900 1" \
	--daemonize yes --logfile "$(cd "$dir" && pwd)/redis.log" --pidfile "$(cd "$dir" && pwd)/redis.pid"
for _ in $(seq 50); do
	redis-cli -p "$port" ping >/dev/null 2>&1 && { echo "redis started on 127.0.0.1:$port (data in $dir)"; exit 0; }
	sleep 0.1
done
echo "redis did not start; see $dir/redis.log" >&2
exit 1
