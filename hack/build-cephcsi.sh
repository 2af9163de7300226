#!/usr/bin/env bash
# Build the real, unmodified ceph-csi (cephcsi binary) from its source tarball, and Python gRPC
# stubs for the CSI spec it implements, once, into a cache outside the repository.
#
# Usage:
#   hack/build-cephcsi.sh               build what is missing, print the binary's path on stdout
#   hack/build-cephcsi.sh --print-path  print the binary's path (built or not) and exit
#   hack/build-cephcsi.sh --check       exit 0 if binary and stubs are cached and current, 1 if not
#
# Environment:
#   CEPHCSI_SOURCE_TARBALL             ceph-csi source, `git archive` of the tag with vendor/
#                                      (default: the first shared/cephcsi/ceph-csi-v3.12.2.tar.xz
#                                      beside the repo or one of its parents, else in /work/shared)
#   RBD_MIRROR_RECONCILER_CEPHCSI_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/rbd-mirror-reconciler/cephcsi)
#   CEPHCSI_BUILD_JOBS                 parallel compile jobs (default: number of cores)
#   GO                                 go command (default: go on PATH, else /usr/local/go/bin/go)
#   PYTHON                             python with grpcio-tools (default: .venv/bin/python of the repo)
#
# The stubs (csi_pb2.py, csi_pb2_grpc.py) land in <cache>/<tag>/csi-spec-<version>/. Progress goes
# to stderr; stdout carries only the binary's path. A cold build takes 2-5 minutes on 2 cores and
# needs librados-dev, librbd-dev and libcephfs-dev (`make setup`); warm runs return at once.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The tag and its commit: the tarball must be exactly this (git archive records the commit).
cephcsi_tag=v3.12.2
cephcsi_commit=dcf14882dd4d2e7064fee259b9c81424a3bfc04f
# The CSI spec module ceph-csi $cephcsi_tag vendors (its go.mod); the stubs come from its csi.proto.
csi_spec_module=github.com/container-storage-interface/spec
csi_spec_version=v1.10.0
# The same build tags as ceph-csi's own Makefile; they link fine against Pacific's libraries.
build_tags=squid,ceph_preview

log() { printf '[build-cephcsi %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The tarball is not a Go module (its v3 tags lack a /v3 path) and GitHub is out of reach here, so
# it comes from the workplace's shared folder: beside the checkout (a clone elsewhere, e.g. CI's,
# looks up its parents) or at the workplace's own path.
find_tarball() {
	local name="shared/cephcsi/ceph-csi-$cephcsi_tag.tar.xz" dir=$repo_root
	while [[ $dir != / ]]; do
		dir=$(dirname "$dir")
		[[ -f $dir/$name ]] && { echo "$dir/$name"; return; }
	done
	echo "/work/$name"
}
tarball=${CEPHCSI_SOURCE_TARBALL:-$(find_tarball)}
cache_root=${RBD_MIRROR_RECONCILER_CEPHCSI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rbd-mirror-reconciler/cephcsi}
out_dir="$cache_root/$cephcsi_tag"
binary="$out_dir/cephcsi"
stubs_dir="$out_dir/csi-spec-$csi_spec_version"
python=${PYTHON:-$repo_root/.venv/bin/python}
ldflags="-X github.com/ceph/ceph-csi/internal/util.DriverVersion=$cephcsi_tag"
ldflags+=" -X github.com/ceph/ceph-csi/internal/util.GitCommit=$cephcsi_commit"

if [[ ${1:-} == --print-path ]]; then
	echo "$binary"
	exit 0
fi

if [[ ! -f $tarball ]]; then
	log "ceph-csi source tarball not found: $tarball (set CEPHCSI_SOURCE_TARBALL)"
	exit 2
fi
# The tarball, the link flags and the tags fully determine the binary; a change to any rebuilds.
binary_stamp=$({
	sha256sum <"$tarball"
	echo "$ldflags $build_tags"
} | sha256sum | cut -d' ' -f1)
binary_stamp_file="$out_dir/.cephcsi-source-sha256"
# Generated code needs a protobuf runtime at least as new as the generator: key the stubs by it.
stubs_stamp_file="$stubs_dir/.generator"

stubs_generator() {
	"$python" -c 'import grpc_tools, google.protobuf as p; from importlib.metadata import version as v
print("grpcio-tools", v("grpcio-tools"), "protobuf", p.__version__)' 2>/dev/null
}

binary_ok() {
	[[ -x $binary && -f $binary_stamp_file && $(cat "$binary_stamp_file") == "$binary_stamp" ]]
}

stubs_ok() {
	[[ -f $stubs_dir/csi_pb2.py && -f $stubs_dir/csi_pb2_grpc.py && -f $stubs_stamp_file ]] || return 1
	local generator
	generator=$(stubs_generator) || return 1
	[[ $(cat "$stubs_stamp_file") == "$csi_spec_module@$csi_spec_version $generator" ]]
}

case "${1:-}" in
--check)
	binary_ok && stubs_ok
	exit $?
	;;
"") ;;
*)
	log "unknown argument: $1"
	exit 2
	;;
esac

if binary_ok && stubs_ok; then
	log "cached: ceph-csi $cephcsi_tag and CSI $csi_spec_version stubs in $out_dir"
	echo "$binary"
	exit 0
fi

go_cmd=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if [[ ! -x $go_cmd ]] && ! command -v "$go_cmd" >/dev/null; then
	log "no Go toolchain found (looked for go on PATH and /usr/local/go/bin/go); set GO=/path/to/go"
	exit 2
fi

mkdir -p "$out_dir"
# Several developers share one machine: serialise builds instead of compiling twice in parallel.
exec 9>"$out_dir/.lock"
if ! flock -n 9; then
	log "another build of ceph-csi $cephcsi_tag is running; waiting for it"
	flock 9
fi

staging_dir=$(mktemp -d "$out_dir/.staging.XXXXXX")
trap 'rm -rf "$staging_dir"' EXIT

build_binary() {
	local header missing=()
	for header in rados/librados.h rbd/librbd.h cephfs/libcephfs.h; do
		[[ -f /usr/include/$header ]] || missing+=("lib$(basename "$header" .h)-dev")
	done
	if ((${#missing[@]})); then
		log "missing C headers for cgo: apt-get install ${missing[*]} (in the Makefile's APT_PACKAGES)"
		exit 2
	fi
	local commit
	commit=$(xz -dc "$tarball" | git get-tar-commit-id 2>/dev/null || true)
	if [[ $commit != "$cephcsi_commit" ]]; then
		log "$tarball is not ceph-csi $cephcsi_tag (commit ${commit:-unknown}, expected $cephcsi_commit)"
		exit 2
	fi
	local src="$out_dir/src" build_log="$out_dir/build.log" jobs=${CEPHCSI_BUILD_JOBS:-$(nproc)}
	log "unpacking $tarball into $src"
	rm -rf "$src"
	mkdir -p "$staging_dir/src"
	tar -xJf "$tarball" -C "$staging_dir/src" --strip-components=1
	mv "$staging_dir/src" "$src"
	log "building cephcsi $cephcsi_tag (tags $build_tags) with $jobs jobs (cold: 2-5 min; log: $build_log)"
	local started=$SECONDS status
	set +e
	(
		cd "$src"
		export GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=
		exec nice -n 10 "$go_cmd" build -v -p "$jobs" -trimpath -mod=vendor -tags="$build_tags" \
			-ldflags="$ldflags" -o "$staging_dir/cephcsi" ./cmd/
	) >"$build_log" 2>&1 &
	local pid=$! last_report=$SECONDS
	# go build -v names each package as it compiles it: count them every 30 s so a long
	# cgo or link step still looks alive.
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if ((SECONDS - last_report >= 30)); then
			log "$(wc -l <"$build_log") packages compiled, $((SECONDS - started)) s elapsed"
			last_report=$SECONDS
		fi
	done
	wait "$pid"
	status=$?
	set -e
	if ((status != 0)); then
		log "go build failed with exit status $status after $((SECONDS - started)) s; last lines of $build_log:"
		tail -n 40 "$build_log" >&2
		exit "$status"
	fi
	mv -f "$staging_dir/cephcsi" "$binary"
	echo "$binary_stamp" >"$binary_stamp_file"
	log "cephcsi built in $((SECONDS - started)) s: $(du -h "$binary" | cut -f1), $("$binary" --version | head -n1)"
}

build_stubs() {
	local generator module_dir proto_include
	if ! generator=$(stubs_generator); then
		log "$python cannot import grpc_tools: run \`make setup\` (or set PYTHON)"
		exit 2
	fi
	module_dir=$(cd "$staging_dir" && GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go_cmd" mod download -json \
		"$csi_spec_module@$csi_spec_version" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
	proto_include=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
	log "generating CSI $csi_spec_version stubs from $module_dir/csi.proto ($generator)"
	mkdir -p "$staging_dir/stubs"
	"$python" -m grpc_tools.protoc -I "$module_dir" -I "$proto_include" \
		--python_out="$staging_dir/stubs" --grpc_python_out="$staging_dir/stubs" "$module_dir/csi.proto"
	echo "$csi_spec_module@$csi_spec_version $generator" >"$staging_dir/stubs/.generator"
	rm -rf "$stubs_dir"
	mv "$staging_dir/stubs" "$stubs_dir"
}

binary_ok || build_binary
stubs_ok || build_stubs
log "ready: $binary and $stubs_dir"
echo "$binary"
