#!/usr/bin/env bash
# Set up (if needed) and run ruff, the test suite, the notebooks and the docs build.
# Extra arguments go to pytest and then only the tests run (e.g. `bash scripts/test.sh -k linear`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/ruff check pymc_amortize tests benchmarks docs
.venv/bin/python -m pytest "$@"
if [ "$#" -eq 0 ]; then
    # Every notebook runs top to bottom on its small settings; they are committed without outputs.
    .venv/bin/python -m pytest --nbmake --nbmake-timeout=900 notebooks/
    # The docs render notebooks without executing them; warnings are errors.
    .venv/bin/python -m sphinx -E -W --keep-going -q -b html docs docs/_build/html
fi
