#!/usr/bin/env bash
# The project's own Docker daemon (Debian's docker.io), started by hand and stopped by its PID.
#
# Usage:
#   hack/dockerd.sh start   start it unless it already runs; prints one line on stdout:
#                           `DOCKER_HOST=unix://... PID=1234 STARTED=1` (STARTED=0: it was running,
#                           so whoever started it stops it)
#   hack/dockerd.sh stop [PID]  stop it: SIGTERM to the PID of its pidfile (or PID, which must be
#                           that one) if that process is a dockerd, SIGKILL after 30 s
#   hack/dockerd.sh host    print its DOCKER_HOST value
#
# Environment:
#   RBD_MIRROR_RECONCILER_DOCKER_ROOT  images and build cache, kept between runs
#                                      (default: ${XDG_CACHE_HOME:-~/.cache}/rbd-mirror-reconciler/docker)
#   RBD_MIRROR_RECONCILER_DOCKER_RUN   socket, pidfile, exec root and log (default: /run/rbd-mirror-reconciler/docker)
#
# The daemon has its own socket, so it never meets a system Docker on /var/run/docker.sock. It
# creates no bridge and touches no iptables rules (dockerd would set the FORWARD policy to DROP
# for the whole machine): builds and containers use the host's network (`--network host`),
# which is also how the e2e test reaches the loopback API server and Ceph.
set -euo pipefail

log() { printf '[dockerd %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

data_root=${RBD_MIRROR_RECONCILER_DOCKER_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/rbd-mirror-reconciler/docker}
run_dir=${RBD_MIRROR_RECONCILER_DOCKER_RUN:-/run/rbd-mirror-reconciler/docker}
socket="$run_dir/docker.sock"
pidfile="$run_dir/dockerd.pid"
log_file="$run_dir/dockerd.log"
docker_host="unix://$socket"
docker_cli=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}
READY_SECONDS=30
STOP_SECONDS=30

# The PID in the pidfile, if that process is still a dockerd (PIDs get reused).
running_pid() {
	local pid exe
	[[ -f $pidfile ]] || return 1
	pid=$(cat "$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	[[ $(basename "$exe") == dockerd ]] || return 1
	echo "$pid"
}

answers() {
	DOCKER_HOST=$docker_host "$docker_cli" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

start() {
	local pid waited
	if ! command -v dockerd >/dev/null; then
		log "dockerd not found: apt-get install docker.io (in the Makefile's APT_PACKAGES)"
		exit 2
	fi
	mkdir -p "$run_dir" "$data_root"
	exec 9>"$run_dir/.lock"
	flock 9
	if pid=$(running_pid); then
		for ((waited = 0; waited < READY_SECONDS; waited++)); do
			answers && break
			sleep 1
		done
		echo "DOCKER_HOST=$docker_host PID=$pid STARTED=0"
		return
	fi
	rm -f "$pidfile"
	# Its own session, so a Ctrl-C in the caller's terminal does not reach it; its containerd
	# (supervised, under the exec root) goes when it goes.
	setsid dockerd \
		--data-root "$data_root" \
		--exec-root "$run_dir/exec" \
		--pidfile "$pidfile" \
		--host "$docker_host" \
		--bridge none --iptables=false --ip6tables=false --ip-masq=false \
		--storage-driver overlay2 \
		--log-level warn \
		</dev/null >>"$log_file" 2>&1 9>&- &
	pid=$!
	for ((waited = 0; waited < READY_SECONDS * 5; waited++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "dockerd exited during start; last lines of $log_file:"
			tail -n 20 "$log_file" >&2
			exit 1
		fi
		if answers; then
			echo "DOCKER_HOST=$docker_host PID=$pid STARTED=1"
			log "started dockerd (PID $pid) on $docker_host, data in $data_root"
			return
		fi
		sleep 0.2
	done
	log "dockerd (PID $pid) not answering after $READY_SECONDS s; stopping it. Log: $log_file"
	kill -TERM "$pid" 2>/dev/null || true
	exit 1
}

stop() {
	local pid waited
	if ! pid=$(running_pid); then
		log "no dockerd of ours is running (pidfile $pidfile)"
		return
	fi
	if [[ -n ${1:-} && $1 != "$pid" ]]; then
		log "PID $1 is not our dockerd (that is $pid); not stopping anything"
		exit 1
	fi
	kill -TERM "$pid"
	for ((waited = 0; waited < STOP_SECONDS * 5; waited++)); do
		kill -0 "$pid" 2>/dev/null || {
			log "stopped dockerd (PID $pid)"
			return
		}
		sleep 0.2
	done
	log "dockerd (PID $pid) still running after $STOP_SECONDS s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
host) echo "$docker_host" ;;
*)
	log "usage: $0 start|stop [PID]|host"
	exit 2
	;;
esac
