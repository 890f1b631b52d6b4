#!/usr/bin/env bash
# Create .venv and install diffmm with its test and notebook extras.
# torch is installed first, pinned, so that the project's `torch>=2.4` then installs nothing more. On
# Linux, PyPI's torch wheel is the multi-GB CUDA build; where pip already finds a CPU wheel of the pin
# (a local wheel cache), that one is taken. DIFFMM_TORCH_INDEX picks PyTorch's wheel index instead:
#   DIFFMM_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh     # CPU build
#   DIFFMM_TORCH_INDEX=https://download.pytorch.org/whl/cu128 bash scripts/setup.sh   # CUDA 12.8 build
# DIFFMM_TORCH=<version> changes the pin; DIFFMM_TORCH=skip keeps the torch already in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if [ "${DIFFMM_TORCH:-}" != "skip" ]; then
  .venv/bin/pip install -q ${DIFFMM_TORCH_INDEX:+--index-url "$DIFFMM_TORCH_INDEX"} "torch==${DIFFMM_TORCH:-2.13.0}"
fi
.venv/bin/pip install -q -e ".[dev,notebooks]"
