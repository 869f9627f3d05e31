#!/usr/bin/env bash
# One-shot set-up: a virtual environment in .venv with fcnseg and everything its
# tests and extras need. Safe to run again (it only installs what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch is pinned to the CPU build first: an unpinned torch would pull several GB
# of CUDA packages. On a GPU machine, install the CUDA build of torch yourself first.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v -i "warning" || true
.venv/bin/python -W ignore -c "import torch" || { echo "setup: torch failed to install" >&2; exit 1; }
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all]" 2>&1 | grep -v -i "warning" || true
.venv/bin/python -c "import fcnseg, onnxruntime, pytest, importlib.util as u; assert u.find_spec('gradio') and u.find_spec('playwright')" || { echo "setup: fcnseg failed to install" >&2; exit 1; }
echo "setup: ok ($(.venv/bin/python -c 'import torch,fcnseg; print("fcnseg", fcnseg.__version__, "torch", torch.__version__)'))"
