#!/usr/bin/env bash
# Copies xterm.js from Debian's libjs-xterm into api/web/vendor/xterm so the
# binary embeds it (no npm here). Run by `make web`, `make build`, `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
src=/usr/share/javascript/xterm
dst=api/web/vendor/xterm
if [ ! -f "$src/xterm.js" ]; then
	echo "xterm.js not found in $src: run 'make deps' (Debian's libjs-xterm)" >&2
	exit 1
fi
mkdir -p "$dst"
cp -rL "$src/xterm.js" "$src/xterm.css" "$dst/"
if [ -d "$src/addons" ]; then
	mkdir -p "$dst/addons"
	cp -rL "$src/addons/." "$dst/addons/"
fi
