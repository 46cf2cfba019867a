#!/usr/bin/env bash
# The test command: makes .venv (once) with the WebUI v1.10.1 pins and runs the test suite.
# Set SDFIX_E2E_URL (and SDFIX_E2E_URL_FP16) to also run tests/e2e against running WebUIs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.sdfix-deps-ok ] || [ pyproject.toml -nt .venv/.sdfix-deps-ok ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch==2.13.0 is the CPU wheel; SDFix never installs torch for users, only for its tests.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[test,webui-pins,bench]"
  touch .venv/.sdfix-deps-ok
fi
exec .venv/bin/python -m pytest -q "$@"
