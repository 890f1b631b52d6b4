#!/usr/bin/env bash
# Create .venv and install diffmm with its test and notebook extras.
# torch is pinned first: on this project's CPU machines `pip install torch==2.13.0` takes a local
# CPU build; a plain `torch` requirement would pull a multi-GB CUDA build. On a GPU machine, install
# the CUDA build you want first (https://pytorch.org/get-started/locally/), then run this script
# with DIFFMM_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if [ "${DIFFMM_TORCH:-}" != "skip" ]; then
  .venv/bin/pip install -q "torch==${DIFFMM_TORCH:-2.13.0}"
fi
.venv/bin/pip install -q -e ".[dev,notebooks]"
