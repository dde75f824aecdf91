#!/usr/bin/env bash
# Runs examlab on this host with the defaults: every role in one process,
# Docker runtime, Redis on 127.0.0.1:6379, state in ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
export EXAMLAB_STATE_DIR=${EXAMLAB_STATE_DIR:-./var}
listen=${EXAMLAB_LISTEN:-127.0.0.1:8080}
echo
echo "examlab: candidate page  http://${listen}/"
echo "examlab: admin panel     http://${listen}/admin"
echo "examlab: admin token in  ${EXAMLAB_STATE_DIR}/admin-token (created on first run)"
echo
exec ./bin/examlab serve
