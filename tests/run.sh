#!/usr/bin/env bash
# The whole test suite on a fresh machine (README's test command; .ci/run calls exactly this).
# 1. installs Python deps into .venv, 2. brings up the real single-node Kubernetes
# (tests/cluster/up: builds it on first use, cached afterwards), 3. runs pytest, 4. takes the
# cluster down again unless KUBEMAGIC_KEEP_CLUSTER=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
if [ "${KUBEMAGIC_KEEP_CLUSTER:-0}" != 1 ]; then
  trap 'bash tests/hub/down || true; bash tests/cluster/down || true' EXIT
fi
bash tests/cluster/up
bash tests/hub/up >/dev/null  # JupyterHub on the cluster (tests/hub); hub.env has its URL and token
python -m pytest "$@"
