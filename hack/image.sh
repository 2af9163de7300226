#!/usr/bin/env bash
# `make image`: build the controller image here, without any registry.
#
#   hack/dockerd.sh start      the project's own dockerd (stopped again at the end if started here)
#   hack/base-image.sh         Debian bookworm via mmdebstrap + docker import (cached)
#   docker build .             the Dockerfile, with BASE_IMAGE set to that base, BuildKit, host
#                              network, and the host's extra CA certificates as a build secret
#
# Usage: hack/image.sh [TAG]   (default: rbd-mirror-reconciler:dev); prints the tag on stdout,
# its size and layers on stderr.
#
# The CA certificates in /usr/local/share/ca-certificates/ (a TLS-intercepting proxy in front of
# PyPI) reach the build stage's pip as a BuildKit secret: never a layer, never the final image.
set -euo pipefail

log() { printf '[image %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${1:-rbd-mirror-reconciler:dev}
docker_cli=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}
export DOCKER

work=$(mktemp -d)
started_pid=
cleanup() {
	rm -rf "$work"
	if [[ -n $started_pid ]]; then
		"$repo_root/hack/dockerd.sh" stop "$started_pid"
	fi
}
trap cleanup EXIT

daemon=$("$repo_root/hack/dockerd.sh" start)
read -r host_line pid_line started_line <<<"$daemon"
export DOCKER_HOST=${host_line#DOCKER_HOST=}
if [[ ${started_line#STARTED=} == 1 ]]; then
	started_pid=${pid_line#PID=}
fi

started=$SECONDS
base=$("$repo_root/hack/base-image.sh")
base_seconds=$((SECONDS - started))

# Every extra CA of the host in one PEM file (empty on a machine without any).
touch "$work/extra-ca.pem"
chmod 600 "$work/extra-ca.pem"
for cert in /usr/local/share/ca-certificates/*.crt; do
	[[ -f $cert ]] && cat "$cert" >>"$work/extra-ca.pem"
done

log "building $tag from $base"
build_started=$SECONDS
if ! DOCKER_BUILDKIT=1 "$docker_cli" build \
	--network host \
	--secret "id=extra-ca,src=$work/extra-ca.pem" \
	--build-arg "BASE_IMAGE=$base" \
	--tag "$tag" \
	--progress plain \
	"$repo_root" >"$work/build.log" 2>&1; then
	log "docker build failed; last lines of its output:"
	tail -n 40 "$work/build.log" >&2
	exit 1
fi
build_seconds=$((SECONDS - build_started))
# The data root is a cache kept between runs: drop what earlier builds of this image left behind
# (untagged images, build cache beyond 1 GB), nothing else.
"$docker_cli" image prune --force --filter "label=org.opencontainers.image.title=rbd-mirror-reconciler" >/dev/null
"$docker_cli" builder prune --force --keep-storage 1gb >/dev/null

size=$("$docker_cli" image inspect --format '{{.Size}}' "$tag")
layers=$("$docker_cli" image inspect --format '{{len .RootFS.Layers}}' "$tag")
log "$tag: $((size / 1000000)) MB in $layers layers (base ${base_seconds} s, build ${build_seconds} s)"
"$docker_cli" history --format '{{.Size}}\t{{.CreatedBy}}' "$tag" | awk -F'\t' '$1 != "0B" {print "  " substr($0, 1, 100)}' >&2
echo "$tag"
