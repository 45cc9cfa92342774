#!/usr/bin/env bash
# Builds the singleuser image docker.io/library/kubemagic-singleuser:dev as an OCI archive:
# the engine image the cluster runs (tests/cluster/build-images.sh, its archive as recorded in
# $STATE/engine.imported) + one layer with JupyterHub's singleuser server and JupyterLab.
# The layer is cached by the engine image's package set and the versions below (see
# singleuser_image.py); a change to kubemagic/** costs a new archive, not a pip run.
# Prints SINGLEUSER_TAR=... and SINGLEUSER_KEY=... on stdout (tests/hub/up imports it with ctr).
set -euo pipefail
HUB_DIR=$(cd "$(dirname "$0")" && pwd)
. "$HUB_DIR/../cluster/lib.sh"
. "$HUB_DIR/versions.sh"

ENGINE_TAR=${ENGINE_TAR:-$(cat "$STATE/engine.imported" 2>/dev/null || true)}
[ -n "$ENGINE_TAR" ] && [ -s "$ENGINE_TAR" ] || die "no engine image archive ($STATE/engine.imported): run tests/cluster/up first"
export ENGINE_TAR PY_PREFIX
export PY=$PY_PREFIX/bin/python3
export SINGLEUSER_CACHE=$CACHE/images/singleuser
export SINGLEUSER_REF
export SINGLEUSER_PACKAGES="jupyterhub==$JUPYTERHUB_VERSION jupyterlab==$JUPYTERLAB_VERSION"
exec "$PY" "$HUB_DIR/singleuser_image.py"
