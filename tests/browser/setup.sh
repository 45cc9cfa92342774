#!/usr/bin/env bash
# What the browser test needs, installed idempotently (quick when already there):
#   * Debian's chromium (apt-get) — Playwright drives it via executable_path; browser
#     downloads are impossible here, so `playwright install` is never run
#   * JupyterLab and the Python playwright package (its driver ships inside the wheel),
#     from PyPI into .venv
# Called by the browser test's session fixture, so `bash tests/run.sh` covers it.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "tests/browser/setup.sh: run tests/setup.sh first (.venv missing)" >&2; exit 1; }

if ! command -v chromium >/dev/null 2>&1; then
  echo "tests/browser/setup.sh: installing Debian's chromium" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
chromium --version >/dev/null 2>&1 || /usr/bin/chromium --version

if ! "$PY" -c 'import jupyterlab, playwright, jupyterlab_widgets' >/dev/null 2>&1; then
  echo "tests/browser/setup.sh: installing jupyterlab and playwright into .venv" >&2
  "$PY" -m pip install -q 'jupyterlab>=4' 'playwright>=1.45' jupyterlab_widgets
fi
# the notebook kernel JupyterLab starts: this .venv's python
"$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "tests/browser/setup.sh: ok ($(chromium --version 2>/dev/null | head -1))"
