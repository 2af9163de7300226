#!/usr/bin/env bash
# A Debian bookworm base image without any registry: mmdebstrap (minbase, merged /usr) from the
# machine's Debian mirror, then `docker import`. Built once; the image stays in the project's
# dockerd data root (hack/dockerd.sh) until --refresh rebuilds it (Debian's point releases and
# security updates arrive that way).
#
# Usage (with DOCKER_HOST pointing at a running dockerd, e.g. from `hack/dockerd.sh start`):
#   hack/base-image.sh [--refresh]    prints the image's name on stdout
#
# Environment:
#   BASE_IMAGE    name to give it (default: rbd-mirror-reconciler-base:bookworm); it never
#                 replaces Docker Hub's debian:bookworm-slim, which the Dockerfile uses elsewhere
#   DEBIAN_SOURCES  the mirror: a deb822 .sources file or a mirror URL
#                 (default: /etc/apt/sources.list.d/debian.sources if present, else deb.debian.org)
#
# Cold: about 20-60 s and 75 MB; warm: instant.
set -euo pipefail

log() { printf '[base-image %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

image=${BASE_IMAGE:-rbd-mirror-reconciler-base:bookworm}
suite=bookworm
docker_cli=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}

if [[ ${1:-} != --refresh ]] && "$docker_cli" image inspect "$image" >/dev/null 2>&1; then
	log "cached: $image ($("$docker_cli" image inspect --format '{{index .Config.Labels "org.opencontainers.image.created"}}' "$image"))"
	echo "$image"
	exit 0
fi
if ! command -v mmdebstrap >/dev/null; then
	log "mmdebstrap not found: apt-get install mmdebstrap (in the Makefile's APT_PACKAGES)"
	exit 2
fi

if [[ -n ${DEBIAN_SOURCES:-} ]]; then
	mirrors=("$DEBIAN_SOURCES")
elif [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
	mirrors=(/etc/apt/sources.list.d/debian.sources)
else
	mirrors=(
		"deb http://deb.debian.org/debian $suite main"
		"deb http://deb.debian.org/debian $suite-updates main"
		"deb http://deb.debian.org/debian-security $suite-security main"
	)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS
log "bootstrapping Debian $suite (minbase) from ${mirrors[*]}"
# The merged-/usr hook keeps usrmerge (and the perl it pulls in) out. The dpkg path filters
# are written into the image (/etc/dpkg/dpkg.cfg.d/), so packages installed on top of it later
# leave out their manuals, docs and translations too, as Docker Hub's -slim images do.
if ! mmdebstrap --variant=minbase --format=tar --quiet \
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--aptopt='Acquire::Languages "none"' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	"$suite" "$work/rootfs.tar" "${mirrors[@]}" 2>"$work/mmdebstrap.log"; then
	log "mmdebstrap failed; its log:"
	cat "$work/mmdebstrap.log" >&2
	exit 1
fi
"$docker_cli" import \
	--change 'CMD ["bash"]' \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change "LABEL org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
	--change "LABEL org.opencontainers.image.base.name=debian:$suite-minbase-mmdebstrap" \
	"$work/rootfs.tar" "$image" >/dev/null
log "$image imported in $((SECONDS - started)) s: $("$docker_cli" image inspect --format '{{.Size}}' "$image" |
	awk '{printf "%.0f MB", $1 / 1e6}')"
echo "$image"
