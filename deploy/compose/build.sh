#!/usr/bin/env bash
# Builds the images deploy/compose/docker-compose.yml runs, without a
# registry:
#
#   examlab/examlab:local  the examlab binary (built here, static) on scratch
#   examlab/redis:local    Debian's redis-server on the lab image's userland
#
# and makes sure the lab image examlab/node:bookworm is there (labs need it;
# deploy/image/build.sh, skipped when present). Each image carries a label
# with a hash of what it was built from and is rebuilt only when that
# changes, so running this again is cheap.
#
# Usage: deploy/compose/build.sh [--force]
#   --force   rebuild both images even if they are current
# Environment:
#   EXAMLAB_IMAGE    platform image (default examlab/examlab:local)
#   REDIS_IMAGE      Redis image (default examlab/redis:local)
#   NODE_IMAGE       lab image, the Redis image's base (default examlab/node:bookworm)
#   SECURITY_MIRROR  Debian security archive (default http://deb.debian.org/debian-security)
#   GO               go command (default go)
set -euo pipefail

EXAMLAB_IMAGE=${EXAMLAB_IMAGE:-examlab/examlab:local}
REDIS_IMAGE=${REDIS_IMAGE:-examlab/redis:local}
NODE_IMAGE=${NODE_IMAGE:-examlab/node:bookworm}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
GO=${GO:-go}
FORCE=0
LABEL=examlab.build

for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-h | --help)
		sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "build.sh: unknown argument $arg" >&2
		exit 2
		;;
	esac
done

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

log() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }

work=$(mktemp -d /var/tmp/examlab-compose.XXXXXX)
trap 'rm -rf "$work"' EXIT

# image_label prints the build label of an image, or nothing if it is absent.
image_label() {
	docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true
}

# build_image tag hash dockerfile context [docker build args...] builds tag
# unless it already carries hash, then removes the image it replaced if
# nothing uses it.
build_image() {
	local tag=$1 hash=$2 dockerfile=$3 context=$4
	shift 4
	if [[ $FORCE -eq 0 && $(image_label "$tag") == "$hash" ]]; then
		log "$tag is current"
		return
	fi
	local old
	old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
	log "building $tag"
	if ! docker build --label "$LABEL=$hash" -t "$tag" -f "$dockerfile" "$@" "$context" >"$work/build.log" 2>&1; then
		tail -n 40 "$work/build.log" >&2
		echo "build.sh: building $tag failed" >&2
		exit 1
	fi
	local id
	id=$(docker image inspect -f '{{.Id}}' "$tag")
	if [[ -n $old && $old != "$id" ]]; then
		docker image rm "$old" >/dev/null 2>&1 || true
	fi
	log "built $tag ($(($(docker image inspect -f '{{.Size}}' "$tag") / 1024 / 1024)) MiB)"
}

# The lab image: every lab's nodes, and the Redis image's base.
IMAGE=$NODE_IMAGE ./deploy/image/build.sh

# The binary embeds the browser terminal; an image without it would give
# candidates no terminal.
if [[ ! -f api/web/vendor/xterm/xterm.js ]]; then
	echo "build.sh: api/web/vendor/xterm is missing: run 'make web' first" >&2
	exit 1
fi

ctx=$work/examlab
mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/var/lib/examlab" "$ctx/rootfs/etc/ssl/certs"
chmod 1777 "$ctx/rootfs/tmp"
chmod 0750 "$ctx/rootfs/var/lib/examlab"
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
	cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
else
	log "no /etc/ssl/certs/ca-certificates.crt (Debian's ca-certificates): the image will trust no TLS server"
fi
# The grader's tools: the static busybox every lab node gets read-only,
# which the worker reads from its own filesystem (EXAMLAB_GRADER_BUSYBOX).
if [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; then
	mkdir -p "$ctx/rootfs/bin"
	cp -L /bin/busybox "$ctx/rootfs/bin/busybox"
else
	log "no static /bin/busybox (Debian's busybox-static): labs started by this image cannot be graded"
fi
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
log "building examlab $version"
CGO_ENABLED=0 $GO build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=$version" \
	-o "$ctx/examlab" ./cmd/examlab
cp "$here/examlab.Dockerfile" "$ctx/Dockerfile"
# Go builds are reproducible, so the same source gives the same hash.
hash=$(cd "$ctx" && find . -print0 | LC_ALL=C sort -z |
	xargs -0 stat -c '%n %a' | cat - <(find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
	sha256sum | cut -c1-32)
build_image "$EXAMLAB_IMAGE" "$hash" "$ctx/Dockerfile" "$ctx"

node_id=$(docker image inspect -f '{{.Id}}' "$NODE_IMAGE")
hash=$(cat <(echo "$node_id $SECURITY_MIRROR") "$here/redis.Dockerfile" | sha256sum | cut -c1-32)
mkdir -p "$work/redis"
# apt inside the build uses the host's network, as apt on the host does.
build_image "$REDIS_IMAGE" "$hash" "$here/redis.Dockerfile" "$work/redis" \
	--network host --build-arg "BASE=$NODE_IMAGE" --build-arg "SECURITY_MIRROR=$SECURITY_MIRROR"
