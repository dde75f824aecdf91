#!/usr/bin/env bash
# A Nomad cluster on one machine for trying labs on several clients: one
# server and three clients (client1..3), each a separate `nomad agent`
# process with its own data directory, ports, pid file and log. Run as root
# (the docker driver's CPU limits and raw_exec need it).
#
#   nomad/agent/cluster.sh start [NAME]   start what is not running (all, or server/clientN), wait until ready
#   nomad/agent/cluster.sh stop           stop the clients, then the server (SIGTERM)
#   nomad/agent/cluster.sh status         each agent's pid, and the clients as the server sees them
#   nomad/agent/cluster.sh kill NAME      SIGKILL one agent, as a machine that dies would
#   nomad/agent/cluster.sh pid NAME       print an agent's pid (nothing if it is not running)
#
# Settings (environment):
#   NOMAD                 the nomad binary (default: nomad on PATH)
#   NOMAD_CLUSTER_DIR     data, pid files and logs (default: ./var/nomad-cluster)
#   NOMAD_CLUSTER_PORT    the server's HTTP port (default 4656); the server
#                         uses PORT..PORT+2 (http, rpc, serf), clientN
#                         PORT+10N..PORT+10N+2
#   NOMAD_CLUSTER_CPU     MHz each client offers (default: a third of the machine's)
#   NOMAD_CLUSTER_MEMORY  MB each client offers (default: a third of the machine's)
#   The first start saves these in NOMAD_CLUSTER_DIR/settings; later starts
#   use the saved ones unless set again.
#
# The shared settings are nomad/agent/cluster/server.hcl and client.hcl;
# each agent's own (name, ports, data dir, its share of the machine) are
# written to NOMAD_CLUSTER_DIR/NAME/agent.hcl on every start.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NOMAD=${NOMAD:-nomad}
dir=${NOMAD_CLUSTER_DIR:-./var/nomad-cluster}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# A cluster keeps the settings it was first started with, so that
# `start client2` after a kill brings the client back as it was.
if [[ -f $dir/settings ]]; then
	# shellcheck source=/dev/null
	. "$dir/settings"
fi
port=${NOMAD_CLUSTER_PORT:-${saved_port:-4656}}
clients=(client1 client2 client3)
addr="http://127.0.0.1:$port"
ready_timeout=${NOMAD_CLUSTER_READY_TIMEOUT:-120}

die() { echo "cluster: $*" >&2; exit 1; }

# Three clients on one machine each fingerprint the whole machine; unless
# told otherwise each offers a third, so together they offer what is there.
machine_mhz() { awk -F: '/^cpu MHz/ {s += $2} END {printf "%d", s}' /proc/cpuinfo; }
machine_mb() { awk '/^MemTotal:/ {printf "%d", $2 / 1024}' /proc/meminfo; }
cpu=${NOMAD_CLUSTER_CPU:-${saved_cpu:-$(($(machine_mhz) / 3))}}
memory=${NOMAD_CLUSTER_MEMORY:-${saved_memory:-$(($(machine_mb) / 3))}}
save_settings() {
	printf 'saved_port=%d\nsaved_cpu=%d\nsaved_memory=%d\n' "$port" "$cpu" "$memory" >"$dir/settings"
}

agent_port() { # NAME -> its HTTP port
	case $1 in
	server) echo "$port" ;;
	client[1-3]) echo $((port + 10 * ${1#client})) ;;
	*) die "no agent $1: server, client1, client2 or client3" ;;
	esac
}

# pid_of NAME prints the agent's pid if its pid file names a live nomad agent.
pid_of() {
	local f="$dir/$1/nomad.pid" pid
	[[ -f $f ]] || return 0
	pid=$(<"$f")
	if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q " agent .*$dir/$1/agent.hcl"; then
		echo "$pid"
	fi
}

write_config() { # NAME
	local name=$1 p
	p=$(agent_port "$name")
	mkdir -p "$dir/$name/data"
	{
		echo "# Written by nomad/agent/cluster.sh on $(date -u +%FT%TZ); rewritten on every start."
		echo "name     = \"$name\""
		echo "data_dir = \"$dir/$name/data\""
		echo "ports {"
		echo "  http = $p"
		echo "  rpc  = $((p + 1))"
		echo "  serf = $((p + 2))"
		echo "}"
		if [[ $name != server ]]; then
			echo "client {"
			echo "  servers           = [\"127.0.0.1:$((port + 1))\"]"
			echo "  cpu_total_compute = $cpu"
			echo "  memory_total_mb   = $memory"
			echo "}"
		fi
	} >"$dir/$name/agent.hcl"
}

start_one() { # NAME
	local name=$1 shared pid
	if pid=$(pid_of "$name") && [[ -n $pid ]]; then
		echo "$name: running (pid $pid)"
		return
	fi
	shared=$here/cluster/client.hcl
	[[ $name == server ]] && shared=$here/cluster/server.hcl
	write_config "$name"
	# setsid: the agent outlives this shell and is not stopped by its
	# terminal's signals; stop it with `cluster.sh stop` (or kill). It
	# gets none of the caller's other descriptors: a long-lived agent
	# holding, say, the lock file `flock` took for a test run would keep
	# that lock long after the run.
	(
		for fd in /proc/self/fd/*; do
			fd=${fd##*/}
			((fd > 2)) && eval "exec $fd>&-"
		done
		exec setsid "$NOMAD" agent -config "$shared" -config "$dir/$name/agent.hcl" \
			>>"$dir/$name/nomad.log" 2>&1 </dev/null
	) &
	echo $! >"$dir/$name/nomad.pid"
	echo "$name: started (pid $!, http 127.0.0.1:$(agent_port "$name"), log $dir/$name/nomad.log)"
}

wait_ready() { # CLIENT...
	local want=("$@") deadline=$((SECONDS + ready_timeout)) up missing
	while :; do
		up=$("$NOMAD" node status -address="$addr" \
			-t '{{range .}}{{if eq .Status "ready"}}{{$d := index .Drivers "docker"}}{{if $d}}{{if $d.Healthy}}{{.Name}} {{end}}{{end}}{{end}}{{end}}' 2>/dev/null || true)
		missing=()
		for c in "${want[@]}"; do
			[[ " $up " == *" $c "* ]] || missing+=("$c")
		done
		((${#missing[@]} == 0)) && break
		if ((SECONDS >= deadline)); then
			die "not ready after ${ready_timeout}s: ${missing[*]} (see $dir/<name>/nomad.log)"
		fi
		sleep 1
	done
	echo "ready: ${want[*]}; export NOMAD_ADDR=$addr"
}

case ${1:-} in
start)
	command -v "$NOMAD" >/dev/null || die "no nomad binary: set NOMAD=/path/to/nomad"
	[[ $(id -u) == 0 ]] || die "run as root: the docker driver's CPU limits and raw_exec need it"
	if [[ -n ${2:-} ]]; then
		agent_port "$2" >/dev/null
		save_settings
		start_one "$2"
		[[ $2 == server ]] || wait_ready "$2"
		exit 0
	fi
	save_settings
	echo "each client offers ${cpu} MHz and ${memory} MB (NOMAD_CLUSTER_CPU, NOMAD_CLUSTER_MEMORY)"
	start_one server
	for c in "${clients[@]}"; do start_one "$c"; done
	wait_ready "${clients[@]}"
	;;
stop)
	pids=()
	for name in "${clients[@]}" server; do
		pid=$(pid_of "$name")
		[[ -n $pid ]] || continue
		if [[ $name == server ]]; then
			# The clients first, so the server sees them leave.
			for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.5; done; done
			jobs=$("$NOMAD" job status -address="$addr" -short 2>/dev/null | awk 'NR > 1 && $4 == "running" {print $1}' || true)
			[[ -z $jobs ]] || echo "still registered (their containers stay on the engine): $(echo $jobs)" >&2
		fi
		kill -TERM "$pid"
		pids+=("$pid")
		echo "$name: stopping (pid $pid)"
	done
	for p in "${pids[@]}"; do
		for _ in $(seq 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
		if kill -0 "$p" 2>/dev/null; then echo "pid $p still running after 30s" >&2; fi
	done
	;;
status)
	for name in server "${clients[@]}"; do
		pid=$(pid_of "$name")
		state=stopped
		[[ -z $pid ]] || state="running (pid $pid)"
		echo "$name: $state, http 127.0.0.1:$(agent_port "$name")"
	done
	"$NOMAD" node status -address="$addr" 2>/dev/null || echo "the server at $addr does not answer"
	;;
kill)
	[[ -n ${2:-} ]] || die "usage: cluster.sh kill NAME"
	agent_port "$2" >/dev/null
	pid=$(pid_of "$2")
	[[ -n $pid ]] || die "$2 is not running"
	kill -KILL "$pid"
	echo "$2: killed (pid $pid); its tasks keep running; \`cluster.sh start $2\` brings it back"
	;;
pid)
	[[ -n ${2:-} ]] || die "usage: cluster.sh pid NAME"
	agent_port "$2" >/dev/null
	pid_of "$2"
	;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
