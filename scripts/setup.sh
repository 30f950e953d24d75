#!/usr/bin/env bash
# Create .venv with a Python >= 3.12 and install pymc_amortize with its test and docs extras.
# PyMC 6 needs Python 3.12+; on machines whose default python3 is older we look in pyenv too.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local candidates=()
    [ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
    candidates+=(python3.14 python3.13 python3.12 python3)
    if command -v pyenv >/dev/null 2>&1; then
        local root
        root=$(pyenv root)
        for dir in "$root"/versions/3.1[2-9]*; do
            [ -x "$dir/bin/python" ] && candidates+=("$dir/bin/python")
        done
    fi
    for dir in "$HOME"/.pyenv/versions/3.1[2-9]*; do
        [ -x "$dir/bin/python" ] && candidates+=("$dir/bin/python")
    done
    for py in "${candidates[@]}"; do
        if command -v "$py" >/dev/null 2>&1 \
            && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    if ! PY=$(find_python); then
        echo "error: pymc_amortize needs Python >= 3.12 (PyMC 6 requires it) and none was found." >&2
        echo "Install one (e.g. 'pyenv install 3.12') or point PYTHON=/path/to/python3.12 at it." >&2
        exit 1
    fi
    echo "Using $PY ($("$PY" --version))"
    rm -rf .venv
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,docs]"
