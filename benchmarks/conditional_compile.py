"""Where the conditional family's first fit spends its CPU seconds, beside the encoder family.

Each measurement runs in a fresh process with an empty PyTensor compile directory and an empty
NUMBA cache (``PYTENSOR_FLAGS=base_compiledir=<tmp>``, ``NUMBA_CACHE_DIR=<tmp>``): a user's first
fit on a new machine (``--state empty``), or after a tiny fit of another model with the same
family filled them in an earlier process (``--state new-model``). CPU seconds of that process (``time.process_time``, the machine is shared),
per phase:

* ``setup``: ``AmortizedVI(...)`` (model analysis, encoders);
* ``graph``: building the symbolic step (loss, its gradient, the optimizer's updates);
* ``rewrite``: PyTensor's graph rewrites;
* ``link``: the linker (for NUMBA: converting the graph to Python source);
* ``first call``: the first step (NUMBA type inference and LLVM code generation);
* ``sample``: the first ``approx.sample(1000)`` after the fit (its own compilation), and the
  fastest of two more (what a user waits for on every later call).

The step compiles with the backend ``pm.fit`` picks when the user names none (the C backend for
the conditional family, ``CONDITIONAL_STEP_MODE``; PyMC's default for the encoder family), or
with ``--mode``.

Then ``nodes`` before and after the rewrites, the per-step milliseconds (CPU, the minimum over
repeats of 100 steps), and the ratios conditional ÷ encoder.

    python -m benchmarks.conditional_compile [--model radon|poisson] [--state empty|new-model]
        [--mode NUMBA|FAST_RUN|JAX] [--draws 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types


def _model(name: str):
    if name == "radon":
        from pymc_amortize.examples.radon import load_radon, radon_model

        data, coords = load_radon()
        return radon_model(data, coords=coords)
    from benchmarks.conditional_family import unbalanced

    return unbalanced("poisson")[0]


def _warm_up(family: str) -> None:
    """A tiny fit of an unrelated model, so that the cache holds PyTensor's generic kernels."""
    import numpy as np
    import pymc as pm

    import pymc_amortize  # noqa: F401  (registers pm.fit(method="amortized"))

    rng = np.random.default_rng(0)
    unit = np.repeat(np.arange(6), [1, 2, 3, 1, 4, 2])
    with pm.Model(coords={"u": np.arange(6)}):
        idx = pm.Data("idx", unit)
        z = pm.Normal("z", 0, pm.HalfNormal("tau", 1), dims="u")
        pm.Normal("y", pm.Normal("m", 0, 5) + z[idx], 1.0, observed=rng.normal(size=unit.size))
        approx = pm.fit(5, method="amortized", family=family, progressbar=False, gap_check=False)
    approx.sample(5)


def _measure(model_name: str, family: str, mode: str | None = None, draws: int = 1000) -> dict:
    """In the child process: CPU seconds of each phase of a first fit."""
    import numpy as np
    import pymc as pm
    from pytensor.compile import maker
    from pytensor.compile.debug import profiling
    from pytensor.graph.traversal import applys_between, graph_inputs

    from pymc_amortize.fitting import vi
    from pymc_amortize.fitting.vi import AmortizedVI

    # PyTensor's own compile accounting, in CPU seconds rather than wall seconds.
    maker.time = types.SimpleNamespace(perf_counter=time.process_time)
    cpu = time.process_time
    out: dict = {"model": model_name, "family": family}
    model = _model(model_name)
    with model:
        started = cpu()
        inference = AmortizedVI(family=family, random_seed=0)
        out["setup_s"] = cpu() - started
        started = cpu()
        loss, updates = inference.objective.step_graph(obj_optimizer=pm.adam(learning_rate=3e-3))
        out["graph_s"] = cpu() - started
        outputs = [loss, *updates.values()]
        out["nodes_before"] = sum(1 for _ in applys_between(list(graph_inputs(outputs)), outputs))
        rewrite0, link0 = profiling.total_graph_rewrite_time, profiling.total_time_linker
        started = cpu()
        if mode is None and family != "encoder":
            mode = vi.CONDITIONAL_STEP_MODE
        out["mode"] = mode or "default"
        step = inference.objective.step_function(
            obj_optimizer=pm.adam(learning_rate=3e-3),
            compile_kwargs={"mode": mode} if mode else {},
        )
        compile_s = cpu() - started
        out["rewrite_s"] = profiling.total_graph_rewrite_time - rewrite0
        out["link_s"] = profiling.total_time_linker - link0
        # step_function builds the graph again: its graph seconds are not the compiler's.
        out["rebuild_graph_s"] = compile_s - out["rewrite_s"] - out["link_s"]
        fn = getattr(step, "fn", step)
        out["nodes_after"] = len(fn.maker.fgraph.apply_nodes)
        started = cpu()
        step()
        out["first_call_s"] = cpu() - started
        times = []
        for _ in range(5):
            started = cpu()
            for _ in range(100):
                step()
            times.append((cpu() - started) / 100 * 1e3)
        out["step_ms"] = min(times)
        approx = inference.approx
        started = cpu()
        approx.sample(draws, random_seed=1)
        out["sample_first_s"] = cpu() - started
        again = []
        for seed in (2, 3):
            started = cpu()
            approx.sample(draws, random_seed=seed)
            again.append(cpu() - started)
        out["sample_again_s"] = min(again)
        assert np.isfinite(float(step()))
    out["compile_s"] = out["rewrite_s"] + out["link_s"] + out["first_call_s"]
    return out


def _child(code: str, cache: str, numba_cache: str) -> str:
    env = os.environ | {
        "PYTENSOR_FLAGS": f"base_compiledir={cache}",
        "NUMBA_CACHE_DIR": numba_cache,
    }
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr[-4000:])
    return run.stdout


def measure_cold(
    model_name: str, family: str, state: str = "empty", mode: str | None = None, draws: int = 1000
) -> dict:
    """:func:`_measure` in a fresh process with empty compile caches (``state="empty"``), or
    with caches that a tiny fit of another model with the same family filled in an earlier
    process (``state="new-model"``: PyTensor's generic kernels cached, not this model's step)."""
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as numba_cache:
        if state == "new-model":
            code = f"from benchmarks.conditional_compile import _warm_up; _warm_up({family!r})"
            _child(code, cache, numba_cache)
        code = (
            "import json; from benchmarks.conditional_compile import _measure; "
            f"print('RESULT', json.dumps(_measure({model_name!r}, {family!r}, {mode!r}, {draws!r})))"
        )
        out = _child(code, cache, numba_cache)
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        return json.loads(line[7:])


KEYS = ("setup_s", "graph_s", "nodes_before", "rewrite_s", "link_s", "nodes_after",
        "first_call_s", "compile_s", "step_ms", "sample_first_s", "sample_again_s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="radon", choices=("radon", "poisson"))
    parser.add_argument("--families", default="encoder,conditional")
    parser.add_argument("--state", default="empty", choices=("empty", "new-model"))
    parser.add_argument("--mode", default=None, help="the step's backend (default: pm.fit's)")
    parser.add_argument("--draws", type=int, default=1000, help="draws per approx.sample()")
    args = parser.parse_args()
    results = {}
    for family in args.families.split(","):
        results[family] = r = measure_cold(args.model, family, args.state, args.mode, args.draws)
        print(args.state, family, r["mode"], "  ".join(f"{k} {r[k]:.4g}" for k in KEYS), flush=True)
    if {"encoder", "conditional"} <= results.keys():
        enc, cond = results["encoder"], results["conditional"]
        print(
            "ratio conditional/encoder: "
            f"graph+compile {(cond['graph_s'] + cond['compile_s']) / (enc['graph_s'] + enc['compile_s']):.2f}  "
            f"step {cond['step_ms'] / enc['step_ms']:.2f}  "
            f"sample first {cond['sample_first_s'] / enc['sample_first_s']:.2f}"
        )


if __name__ == "__main__":
    main()
