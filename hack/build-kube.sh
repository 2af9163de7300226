#!/usr/bin/env bash
# Build a real kube-apiserver, kube-controller-manager and etcd from the pinned
# Go modules in hack/tools, once, into a cache outside the repository.
#
# Usage:
#   hack/build-kube.sh              build what is missing, print the bin dir on stdout
#   hack/build-kube.sh --print-dir  print the bin dir (built or not) and exit
#   hack/build-kube.sh --check      exit 0 if the cached binaries are complete, 1 if not
#
# Environment:
#   RBD_MIRROR_RECONCILER_KUBE_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/rbd-mirror-reconciler/kube)
#   KUBE_BUILD_JOBS                   parallel compile jobs (default: number of cores)
#   GO                                go command (default: go on PATH, else /usr/local/go/bin/go)
#
# Progress goes to stderr; stdout carries only the bin dir so callers can
# capture it. A cold build takes many minutes on 2 cores; warm runs return at once.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir="$repo_root/hack/tools"
binaries=(etcd kube-apiserver kube-controller-manager)

log() { printf '[build-kube %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

module_version() {
	# The require line of the tools module is the single source of truth.
	awk -v mod="$1" '$1 == "require" { $1 = ""; $0 = $0 } $1 == mod && $2 ~ /^v/ {print $2; exit}' "$tools_dir/go.mod"
}

kube_version=$(module_version k8s.io/kubernetes)
etcd_version=$(module_version go.etcd.io/etcd/server/v3)
if [[ -z $kube_version || -z $etcd_version ]]; then
	log "cannot read k8s.io/kubernetes or go.etcd.io/etcd/server/v3 version from $tools_dir/go.mod"
	exit 2
fi

cache_root=${RBD_MIRROR_RECONCILER_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rbd-mirror-reconciler/kube}
bin_dir="$cache_root/$kube_version"
# Stamp the release into the binaries as upstream's hack/lib/version.sh does; otherwise
# /version reports v0.0.0-master and clients warn about version skew.
kube_minor=$(echo "$kube_version" | cut -d. -f2)
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	version_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
	version_ldflags+=" -X $pkg.gitTreeState=clean"
done
ldflags="-s -w$version_ldflags"
# go.mod, go.sum and the link flags fully determine the output; a change to any rebuilds.
source_stamp=$(cat "$tools_dir/go.mod" "$tools_dir/go.sum" "$tools_dir/cmd/etcd/main.go" <(echo "$ldflags") |
	sha256sum | cut -d' ' -f1)
stamp_file="$bin_dir/.source-sha256"

is_complete() {
	[[ -f $stamp_file && $(cat "$stamp_file") == "$source_stamp" ]] || return 1
	local name
	for name in "${binaries[@]}"; do
		[[ -x "$bin_dir/$name" ]] || return 1
	done
}

case "${1:-}" in
--print-dir)
	echo "$bin_dir"
	exit 0
	;;
--check)
	is_complete
	exit $?
	;;
"") ;;
*)
	log "unknown argument: $1"
	exit 2
	;;
esac

if is_complete; then
	log "cached: kube $kube_version, etcd $etcd_version in $bin_dir"
	echo "$bin_dir"
	exit 0
fi

go_cmd=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if [[ ! -x $go_cmd ]] && ! command -v "$go_cmd" >/dev/null; then
	log "no Go toolchain found (looked for go on PATH and /usr/local/go/bin/go); set GO=/path/to/go"
	exit 2
fi

mkdir -p "$bin_dir"
# Several developers share one machine: serialise builds of the same version
# instead of compiling it twice in parallel.
exec 9>"$bin_dir/.lock"
if ! flock -n 9; then
	log "another build of $kube_version is running; waiting for it"
	flock 9
fi
if is_complete; then
	log "built meanwhile by another process: $bin_dir"
	echo "$bin_dir"
	exit 0
fi

jobs=${KUBE_BUILD_JOBS:-$(nproc)}
build_log="$bin_dir/build.log"
staging_dir=$(mktemp -d "$bin_dir/.staging.XXXXXX")
trap 'rm -rf "$staging_dir"' EXIT

log "building kube-apiserver, kube-controller-manager $kube_version and etcd $etcd_version"
log "into $bin_dir with $jobs jobs (cold: many minutes; full log: $build_log)"
started=$SECONDS

# -v names each package as it is compiled; count them instead of flooding the
# terminal, and report at least every 30 s so a slow link step looks alive.
set +e
(
	cd "$tools_dir"
	export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly"
	exec nice -n 10 "$go_cmd" build -v -p "$jobs" -ldflags="$ldflags" -o "$staging_dir/" \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		./cmd/etcd
) 2>&1 | tee "$build_log" | {
	count=0
	last_report=$SECONDS
	line=
	while true; do
		# read -t wakes us up even while one big package or the linker is busy.
		if IFS= read -r -t 30 line; then
			count=$((count + 1))
		elif (($? <= 128)); then
			break # end of output: go build has exited
		fi
		if ((SECONDS - last_report >= 30 || (count % 200 == 0 && count > 0))); then
			log "$count packages compiled, $((SECONDS - started)) s elapsed (last: ${line:-none yet})"
			last_report=$SECONDS
		fi
	done
	log "$count packages compiled; linking done"
}
status=${PIPESTATUS[0]}
set -e

if ((status != 0)); then
	log "go build failed with exit status $status after $((SECONDS - started)) s; last lines of $build_log:"
	tail -n 40 "$build_log" >&2
	exit "$status"
fi

for name in "${binaries[@]}"; do
	mv -f "$staging_dir/$name" "$bin_dir/$name"
done
echo "$source_stamp" >"$stamp_file"
log "done in $((SECONDS - started)) s: $(cd "$bin_dir" && du -ch "${binaries[@]}" | tail -n1 | cut -f1) in $bin_dir"
echo "$bin_dir"
