#!/usr/bin/env bash
# Installs what examlab needs from Debian's packages, if missing:
# redis-server (queue and index), chromium (browser tests), libjs-xterm
# and node-xterm (the terminal in the browser pages), debootstrap (the lab
# image), busybox-static (the grader's tools in every node), docker-compose (the container deployment in deploy/compose).
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
[ -f /usr/share/javascript/xterm/xterm.css ] || need+=(libjs-xterm)
[ -f /usr/share/nodejs/xterm/lib/public/Terminal.js ] || need+=(node-xterm)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "installing: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
