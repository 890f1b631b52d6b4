#!/usr/bin/env bash
# Set up, then train and evaluate DiffMM and LightGCN on the built-in synthetic dataset (no download),
# print the metrics table and write figures to figures/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m diffmm quickstart "$@"
