#!/usr/bin/env bash
# Runs examlab on this host with the defaults: every role in one process,
# Docker runtime, Redis on 127.0.0.1:6379, state in ./var, and the practice
# sitting open so that a newcomer can sign in with an email at once.
set -euo pipefail
cd "$(dirname "$0")/.."
export EXAMLAB_STATE_DIR=${EXAMLAB_STATE_DIR:-./var}
export EXAMLAB_PRACTICE=${EXAMLAB_PRACTICE:-true}
listen=${EXAMLAB_LISTEN:-127.0.0.1:8080}
echo
echo "examlab: candidate page  http://${listen}/"
if [ "$EXAMLAB_PRACTICE" = "true" ]; then
	echo "examlab:                 the practice sitting is open: sign in with any email address"
	echo "examlab:                 (EXAMLAB_PRACTICE=false make run turns it off; real sittings admit access codes only)"
fi
echo "examlab: admin panel     http://${listen}/admin"
echo "examlab: admin token in  ${EXAMLAB_STATE_DIR}/admin-token (created on first run)"
echo
exec ./bin/examlab serve
