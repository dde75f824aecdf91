#!/usr/bin/env bash
# Builds the browser terminal into api/web/vendor/xterm so the binary embeds
# it (no npm here). Debian ships xterm.js 3.x only as CommonJS modules
# (node-xterm, plus the addons and stylesheet in libjs-xterm), so
# deploy/xtermbundle bundles them into one script. The result is committed,
# so `go build ./cmd/examlab` alone serves working terminals; run `make web`
# (or `go generate ./api`) after Debian updates the packages and commit
# what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
lib=/usr/share/nodejs/xterm/lib
assets=/usr/share/javascript/xterm
dst=api/web/vendor/xterm
if [ ! -f "$lib/public/Terminal.js" ] || [ ! -f "$assets/xterm.css" ]; then
	echo "xterm.js sources not found: run 'make deps' (Debian's node-xterm and libjs-xterm)" >&2
	exit 1
fi
mkdir -p "$dst"
${GO:-go} run ./deploy/xtermbundle -lib "$lib" -addons "$assets/addons" -o "$dst/xterm.js"
cp -L "$assets/xterm.css" "$dst/xterm.css"
# The bundle is committed: its copyright notice goes with it.
cp -L /usr/share/doc/node-xterm/copyright "$dst/LICENSE"
