#!/usr/bin/env bash
# Set up (if needed) and run the main job: the real Minnesota radon model (county uranium) by
# A-VI, ADVI and NUTS side by side. The paper's linear model stays runnable as
# `python -m benchmarks.linear_avi_vs_advi`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/python -m benchmarks.radon_real "$@"
