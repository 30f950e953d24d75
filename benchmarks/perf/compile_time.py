"""Benchmark 10: where a first fit's seconds go before its first step, A-VI beside ADVI.

    python -m benchmarks.perf.compile_time [--quick]

Each measurement runs in a fresh process with its own PyTensor cache directory
(``PYTENSOR_FLAGS=base_compiledir=...``), in four states of that cache:

* **empty**: a machine's first PyTensor fit ever; PyTensor's generic NUMBA kernels are compiled too;
* **new model**: the generic kernels are cached (a tiny unrelated fit ran in an earlier process),
  the model's own step is not: a user's first fit of a new model;
* **cached**: the same model and data fitted before in an earlier process;
* **new data**: the same model structure with other data (twice the groups) fitted before it.

Per state and method: the set-up (``AmortizedVI`` / ``pm.ADVI``: model analysis, encoders,
initial point), the graph building and PyTensor's rewrites (``step_function`` until the compiled
function exists), and the first call (NUMBA's type inference and LLVM code generation, or a cache
load), then the step count of the compiled graph. A-VI uses the default encoder and
``batch_size=100``; both use Adam.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.perf import common

MODELS = {
    "logistic": "benchmarks.perf.user_models:logistic",
    "poisson": "benchmarks.perf.user_models:poisson_glmm",
}
STATES = ("empty", "new model", "cached", "new data")
DESCRIPTION = (
    "Each row is a fresh process with its own PyTensor cache directory: *empty* (a machine's first "
    "PyTensor fit), *new model* (PyTensor's generic kernels cached by a tiny fit of another model, "
    "not this model's step), *cached* (this model and data fitted before), *new data* (the same "
    "model with twice the groups, after the cached fit). {n_groups} groups, 8 rows each; A-VI: "
    "default encoder, `batch_size=100`; both Adam. Set-up = `AmortizedVI(...)` / `pm.ADVI()`; "
    "graph + rewrites = `step_function` (PyTensor's rewrites and the NUMBA linker's conversion); "
    "first call = NUMBA's type inference and LLVM code generation, or loading them from the "
    "cache.\n\n"
)


def _measure(model: str, n_groups: int, method: str) -> dict:
    """Run in the child process: the phases of one fit's set-up and compilation."""
    import importlib

    import pymc as pm

    from pymc_amortize.fitting.vi import AmortizedVI

    module, name = MODELS[model].split(":")
    builder = getattr(importlib.import_module(module), name)
    with builder(n_groups):
        started = time.perf_counter()
        inference = AmortizedVI(family="encoder", batch_size=100, random_seed=0) if method == "A-VI" else pm.ADVI()
        setup = time.perf_counter() - started
        started = time.perf_counter()
        step = inference.objective.step_function(
            score=True, obj_optimizer=pm.adam(learning_rate=1e-2)
        )
        rewrite = time.perf_counter() - started
    fn = getattr(step, "fn", step)
    started = time.perf_counter()
    step()
    first_call = time.perf_counter() - started
    return {
        "setup_s": setup,
        "graph_and_rewrites_s": rewrite,
        "first_call_s": first_call,
        "nodes": len(fn.maker.fgraph.apply_nodes),
    }


def _child(cache: str, model: str, n_groups: int, method: str) -> dict:
    code = (
        "import json, sys; from benchmarks.perf.compile_time import _measure; "
        f"print('RESULT', json.dumps(_measure({model!r}, {n_groups}, {method!r})))"
    )
    env = os.environ | {"PYTENSOR_FLAGS": f"base_compiledir={cache}"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])


def run(quick: bool) -> None:
    n_groups = 300 if quick else 1_000
    rows, records = [], []
    for model in MODELS:
        for method in ("A-VI", "ADVI"):
            with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as warm:
                results = {"empty": _child(empty, model, n_groups, method)}
                # Generic kernels only: a fit of the other model with the other method.
                other = next(m for m in MODELS if m != model)
                _child(warm, other, 200, "ADVI" if method == "A-VI" else "A-VI")
                results["new model"] = _child(warm, model, n_groups, method)
                results["cached"] = _child(warm, model, n_groups, method)
                results["new data"] = _child(warm, model, 2 * n_groups, method)
            for state in STATES:
                r = results[state]
                total = r["setup_s"] + r["graph_and_rewrites_s"] + r["first_call_s"]
                records.append({"model": model, "method": method, "state": state, **r})
                rows.append([model, method, state, r["setup_s"], r["graph_and_rewrites_s"],
                             r["first_call_s"], total, r["nodes"]])  # fmt: skip
    header = ["model", "method", "cache", "set-up s", "graph + rewrites s",
              "first call (NUMBA) s", "to first step s", "compiled nodes"]  # fmt: skip
    table = DESCRIPTION.format(n_groups=n_groups) + common.markdown_table(header, rows)
    common.write_results(
        "compile_time", {"n_groups": n_groups, "records": records}, table, quick=quick
    )


if __name__ == "__main__":
    common.run_quick_cli(run, __doc__)
