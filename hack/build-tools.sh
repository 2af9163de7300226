#!/usr/bin/env bash
# Build the packaging tools that are not Debian packages (helm, actionlint) from their Go modules,
# once per version, into a cache outside the repository: `go install MODULE/cmd/TOOL@VERSION`.
#
# Usage:
#   hack/build-tools.sh              build what is missing, print the bin dir on stdout
#   hack/build-tools.sh --print-dir  print the bin dir (built or not) and exit
#   hack/build-tools.sh --check      exit 0 if every tool is cached at its pinned version, 1 if not
#
# Environment:
#   RBD_MIRROR_RECONCILER_TOOLS_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/rbd-mirror-reconciler/tools)
#   TOOLS_BUILD_JOBS                   parallel compile jobs (default: number of cores)
#   GO                                 go command (default: go on PATH, else /usr/local/go/bin/go)
#
# Each tool lands in <cache>/<tool>-<version>/<tool>; the bin dir printed holds a symlink per tool
# to the pinned version, so a version bump here rebuilds only that tool. Progress goes to stderr.
# Cold: helm about 2-4 minutes on 2 cores, actionlint under a minute; warm: instant.
set -euo pipefail

# The versions: .github/workflows/e2e.yaml installs the same helm release on hosted runners.
tools=(
	"helm helm.sh/helm/v3/cmd/helm v3.19.0"
	"actionlint github.com/rhysd/actionlint/cmd/actionlint v1.7.7"
)

# Link flags as each project's own release build sets them: helm reports its version and, for
# `helm template`/`lint` without a cluster, the Kubernetes release of the client-go it was
# built with (v3.19.0: client-go v0.34), not a default of 1.20.
ldflags_for() { # name version
	local flags="-s -w"
	case $1 in
	helm)
		flags+=" -X helm.sh/helm/v3/internal/version.version=$2"
		local pkg
		for pkg in pkg/chartutil pkg/lint/rules; do
			flags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=34"
		done
		;;
	esac
	echo "$flags"
}

log() { printf '[build-tools %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

cache_root=${RBD_MIRROR_RECONCILER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rbd-mirror-reconciler/tools}
bin_dir="$cache_root/bin"

tool_ok() { # name version
	local out="$cache_root/$1-$2"
	[[ -x $out/$1 && -f $out/.ldflags && $(cat "$out/.ldflags") == "$(ldflags_for "$1" "$2")" &&
		"$(readlink "$bin_dir/$1" 2>/dev/null)" == "$out/$1" ]]
}

all_ok() {
	local entry name package version
	for entry in "${tools[@]}"; do
		read -r name package version <<<"$entry"
		tool_ok "$name" "$version" || return 1
	done
}

case "${1:-}" in
--print-dir)
	echo "$bin_dir"
	exit 0
	;;
--check)
	all_ok
	exit $?
	;;
"") ;;
*)
	log "unknown argument: $1"
	exit 2
	;;
esac

if all_ok; then
	summary=()
	for entry in "${tools[@]}"; do
		read -r name package version <<<"$entry"
		summary+=("$name $version")
	done
	log "cached in $bin_dir: $(IFS=,; echo "${summary[*]}")"
	echo "$bin_dir"
	exit 0
fi

go_cmd=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if [[ ! -x $go_cmd ]] && ! command -v "$go_cmd" >/dev/null; then
	log "no Go toolchain found (looked for go on PATH and /usr/local/go/bin/go); set GO=/path/to/go"
	exit 2
fi

mkdir -p "$bin_dir"
# Several developers share one machine: one build at a time, the second one then finds it done.
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
	log "another build of the tools is running; waiting for it"
	flock 9
fi

jobs=${TOOLS_BUILD_JOBS:-$(nproc)}
for entry in "${tools[@]}"; do
	read -r name package version <<<"$entry"
	if tool_ok "$name" "$version"; then
		continue
	fi
	out="$cache_root/$name-$version"
	build_log="$cache_root/$name-$version.log"
	ldflags=$(ldflags_for "$name" "$version")
	if [[ ! -x $out/$name || ! -f $out/.ldflags || $(cat "$out/.ldflags") != "$ldflags" ]]; then
		staging=$(mktemp -d "$cache_root/.staging.XXXXXX")
		log "building $name $version ($package) with $jobs jobs; log: $build_log"
		started=$SECONDS
		if ! (
			# go install MODULE@VERSION builds exactly the module's own go.mod and go.sum,
			# independent of any module here; GOTOOLCHAIN=local never downloads a toolchain.
			export GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$staging" GOFLAGS="-trimpath"
			exec nice -n 10 "$go_cmd" install -p "$jobs" -ldflags="$ldflags" "$package@$version"
		) >"$build_log" 2>&1; then
			log "building $name $version failed after $((SECONDS - started)) s; last lines of $build_log:"
			tail -n 30 "$build_log" >&2
			rm -rf "$staging"
			exit 1
		fi
		echo "$ldflags" >"$staging/.ldflags"
		rm -rf "$out"
		mv "$staging" "$out"
		log "$name $version built in $((SECONDS - started)) s: $(du -h "$out/$name" | cut -f1)"
	fi
	ln -sfn "$out/$name" "$bin_dir/$name"
done
echo "$bin_dir"
