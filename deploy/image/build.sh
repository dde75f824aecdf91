#!/usr/bin/env bash
# Builds the lab node image examlab/node:bookworm from Debian's own packages.
#
# No image registry is reachable where examlab runs, so the image is made
# from a debootstrap'ed bookworm root filesystem and imported into the local
# Docker engine. The Debian mirror is the one this host's apt already uses.
#
# Usage: deploy/image/build.sh [--force]
#   --force   rebuild even if the image already exists
# Environment:
#   IMAGE     image reference to build (default examlab/node:bookworm)
#   MIRROR    Debian mirror URL (default: read from /etc/apt/sources.list*)
set -euo pipefail

IMAGE=${IMAGE:-examlab/node:bookworm}
SUITE=bookworm
FORCE=0

for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-h | --help)
		sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "build.sh: unknown argument $arg" >&2
		exit 2
		;;
	esac
done

log() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }

if [[ $FORCE -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
	log "$IMAGE already exists; pass --force to rebuild"
	exit 0
fi

if [[ $EUID -ne 0 ]]; then
	echo "build.sh: debootstrap needs root; run with sudo" >&2
	exit 1
fi

# find_mirror prints the first plain Debian archive URI (not the security
# archive) configured for apt on this host, in either the one-line or the
# deb822 format.
find_mirror() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -r $f ]] || continue
		awk '$1 == "deb" {
			for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; break }
		}' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -r $f ]] || continue
		awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
	done
} 2>/dev/null

if [[ -z ${MIRROR:-} ]]; then
	MIRROR=$(find_mirror | grep -E '^https?://[^ ]+/debian/?$' | head -n1 || true)
fi
if [[ -z ${MIRROR:-} ]]; then
	echo "build.sh: no Debian mirror found in /etc/apt/sources.list*; set MIRROR" >&2
	exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
	log "installing debootstrap"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

wanted=(
	bash iproute2 iputils-ping iputils-tracepath traceroute dnsutils
	netcat-openbsd curl tcpdump iptables procps less nano vim-tiny net-tools
	tini ca-certificates
)
# Drop packages the archive does not carry rather than fail the whole build.
# The host's apt index is the best cheap answer when the host runs bookworm
# too; elsewhere every package is kept and debootstrap has the last word.
packages=("${wanted[@]}")
host_suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [[ $host_suite == "$SUITE" ]]; then
	available=$(apt-cache show --no-all-versions "${wanted[@]}" 2>/dev/null | awk '$1 == "Package:" { print $2 }')
	packages=()
	for p in "${wanted[@]}"; do
		if grep -qx -- "$p" <<<"$available"; then
			packages+=("$p")
		else
			log "skipping $p: not in the archive"
		fi
	done
fi
include=$(
	IFS=,
	echo "${packages[*]}"
)

work=$(mktemp -d /var/tmp/examlab-node.XXXXXX)
rootfs=$work/rootfs
cleanup() {
	# debootstrap mounts proc and sys in the chroot; never rm -rf through a
	# live mount.
	local m
	for m in $(awk -v r="$rootfs" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
		umount -l "$m" || true
	done
	rm -rf "$work"
}
trap cleanup EXIT

log "debootstrap $SUITE from $MIRROR into $rootfs"
debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$MIRROR" \
	>"$work/debootstrap.log" 2>&1 || {
	tail -n 30 "$work/debootstrap.log" >&2
	exit 1
}
log "debootstrap done"

# Keep later package installs inside a lab as small as this build.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/examlab-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
cat >"$rootfs/etc/apt/apt.conf.d/examlab-nocache" <<'EOF'
APT::Install-Recommends "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF

# A prompt that says which lab node the candidate is on.
cat >"$rootfs/etc/profile.d/examlab.sh" <<'EOF'
export PS1='\u@\h:\w\$ '
EOF
cat >>"$rootfs/etc/bash.bashrc" <<'EOF'

# examlab: name the node in the prompt, in colour when the terminal has it.
if [ -n "$PS1" ]; then
	case "$TERM" in
	xterm* | screen* | tmux* | *color*) PS1='\[\e[1;32m\]\u@\h\[\e[0m\]:\[\e[1;34m\]\w\[\e[0m\]\$ ' ;;
	*) PS1='\u@\h:\w\$ ' ;;
	esac
fi
alias ll='ls -l'
EOF
if [[ $(awk -F: '$1 == "root" { print $7 }' "$rootfs/etc/passwd") != /bin/bash ]]; then
	chroot "$rootfs" usermod -s /bin/bash root
fi

# PID 1 is tini; it reaps whatever candidates start and forwards signals.
# The first log line lets the platform (and a person) see the node came up.
cat >"$rootfs/usr/local/sbin/examlab-node" <<'EOF'
#!/bin/sh
echo "examlab node $(hostname) ready"
exec sleep infinity
EOF
chmod 0755 "$rootfs/usr/local/sbin/examlab-node"

log "trimming caches and docs"
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
	"$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old \
	"$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/* \
	"$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
	"$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
# Docker supplies these per container; the build host's copies must not leak.
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n' >"$rootfs/etc/hosts"
: >"$rootfs/etc/machine-id"

log "importing $IMAGE"
tar --numeric-owner --xattrs -C "$rootfs" -c . | docker import \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'ENV SHELL=/bin/bash' \
	--change 'WORKDIR /root' \
	--change 'ENTRYPOINT ["/usr/bin/tini", "--"]' \
	--change 'CMD ["/usr/local/sbin/examlab-node"]' \
	--change 'LABEL org.opencontainers.image.title="examlab lab node" org.opencontainers.image.base.name="debian:bookworm"' \
	- "$IMAGE" >/dev/null

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE ($((size / 1024 / 1024)) MiB) in ${SECONDS}s"
