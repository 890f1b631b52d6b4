#!/usr/bin/env bash
# Set up; train and evaluate popularity, MF-BPR, LightGCN and DiffMM on the synthetic dataset (no download),
# print the metrics table and write figures to figures/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m diffmm quickstart "$@"
