#!/usr/bin/env bash
# Make .venv and install echochamber into it (editable, with test tools).
# TORCH_SPEC picks the PyTorch build: the default CPU wheel installs in seconds; GPU users set it to
# the CUDA build they want (or install torch into .venv first) and the project's range accepts it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
touch .venv/.installed
