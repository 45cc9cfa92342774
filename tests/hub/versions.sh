# shellcheck shell=bash
# Pinned versions of the test JupyterHub (tests/hub/up, build-singleuser.sh). Sourced, never run.
JUPYTERHUB_VERSION=6.1.1          # PyPI jupyterhub: the hub, and jupyterhub-singleuser in the image
KUBESPAWNER_VERSION=7.1.0         # PyPI jupyterhub-kubespawner
CHP_VERSION=5.3.0                 # npm configurable-http-proxy
JUPYTERLAB_VERSION=4.6.6          # PyPI jupyterlab in the singleuser image (as tests/browser's .venv)
SINGLEUSER_IMAGE=kubemagic-singleuser:dev
SINGLEUSER_REF=docker.io/library/kubemagic-singleuser:dev
