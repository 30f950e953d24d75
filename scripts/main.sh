#!/usr/bin/env bash
# Set up (if needed) and run the main job: A-VI vs PyMC's ADVI on the paper's linear model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/python -m benchmarks.linear_avi_vs_advi "$@"
