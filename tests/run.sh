#!/usr/bin/env bash
# The test command: makes .venv (once) with the WebUI v1.10.1 pins and runs the test suite.
# Set SDFIX_E2E_URL (and SDFIX_E2E_URL_FP16) to also run tests/e2e against running WebUIs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.sdfix-deps-ok ] || [ pyproject.toml -nt .venv/.sdfix-deps-ok ] || [ tests/run.sh -nt .venv/.sdfix-deps-ok ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch==2.13.0 is the CPU wheel; SDFix never installs torch for users, only for its tests.
  .venv/bin/python -m pip install -q torch==2.13.0
  # torch is named again so the resolver picks the torchvision (spandrel needs it) built for it
  # instead of upgrading torch.
  .venv/bin/python -m pip install -q -e ".[test,lint,webui-pins,bench,diffusers]" torch==2.13.0
  # PyPI's torchvision (a spandrel dependency) is built for the CUDA torch and cannot load beside the
  # CPU wheel; an unloadable torchvision breaks transformers' imports. SDFix loads spandrel without it.
  .venv/bin/python -c "import torchvision" 2>/dev/null || .venv/bin/python -m pip uninstall -q -y torchvision
  touch .venv/.sdfix-deps-ok
fi
# The style and the layers (pyproject.toml: [tool.ruff], [tool.importlinter]) are part of the test command:
# a violation fails it before any test runs.
.venv/bin/ruff check --quiet .
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q "$@"
