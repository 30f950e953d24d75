#!/usr/bin/env bash
# Run the paper's six experiments and write docs/paper_results.md. Arguments go to every script,
# e.g. `bash scripts/paper.sh --quick` (a few minutes each) or no argument for the full settings.
# With PAPER_RUN_CACHE=/some/dir every finished fit is kept there, so a long run can be done a few
# seeds at a time (`--seeds 0 1`, then `--seeds 0 1 2 3`: only the new seeds are fitted).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
for experiment in linear nonlinear dgm saw hmm scaling; do
    .venv/bin/python -m benchmarks.paper.$experiment "$@"
done
.venv/bin/python -m benchmarks.paper.report
