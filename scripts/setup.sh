#!/usr/bin/env bash
# Create .venv and install bertrt with its test extras. PyTorch is pinned to the CPU build first:
# a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
fi
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
