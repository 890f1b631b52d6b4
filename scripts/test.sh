#!/usr/bin/env bash
# Set up (idempotent) and run the fast test suite. Slow tests: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
