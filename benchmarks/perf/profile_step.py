"""Benchmark 5: where a step's time goes — per-call overhead vs arithmetic, and what we removed.

    python -m benchmarks.perf.profile_step [--quick]

Timed in turn in one process, nonlinear model, NUMBA, float64:

* a trivial compiled function (one scalar update): PyTensor's fixed cost per call;
* the compiled A-VI step at B = 10, B = 1,000 and full batch, and the B = 1,000 step through the
  divergence guard that ``pm.fit`` calls (the guard's Python cost per step);
* the B = 1,000 step, and the saw model's full step beside ADVI's, compiled with (default) and
  without PyTensor's numba cache (whose ``*args`` wrapper makes numba type each argument in Python);

Graph sizes (apply nodes, matrix products, opaque layer ops) of the compiled full-batch step are
printed too. (Until the redesign this script also rebuilt the step as it was before the perf
branch, by monkeypatching three core internals; that comparison is retired and its last result is
kept in README.md's findings.)
(PyTensor's own profiler cannot split a NUMBA step, which compiles to one function, by node.)
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor
from pytensor_ml.base import LayerOp

from benchmarks.perf import common, models


def without_numba_cache():
    """Compile without PyTensor's numba cache, whose ``def f(*args)`` wrapper makes numba type
    every argument in Python on each call (cheaper calls, much slower compilation: NOTES)."""
    return pytensor.config.change_flags(numba__cache=False)


def graph_size(fn) -> tuple[int, int, int]:
    """Apply nodes, matrix products and opaque pytensor-ml layer ops of a compiled function."""
    nodes = fn.maker.fgraph.toposort()
    dots = sum(1 for n in nodes if "Dot" in type(n.op).__name__ or "Gemm" in str(n.op))
    opaque = sum(1 for n in nodes if isinstance(n.op, LayerOp) or "LOp" in str(n.op))
    return len(nodes), dots, opaque


def _guarded(bench, batch, mode):
    inference = common.avi_inference(bench, batch_size=batch)
    return inference.objective.step_function(
        obj_optimizer=pm.adam(learning_rate=1e-2), compile_kwargs={"mode": mode}
    )


def run(
    *,
    quick: bool = False,
    n_units: int = 10_000,
    mode: str = "NUMBA",
    pin_malloc: bool = True,
    write: bool = True,
    repeats=None,
    calls=None,
):
    repeats = repeats or (7 if quick else 21)
    calls = calls or (20 if quick else 50)
    if pin_malloc:
        common.pin_malloc_thresholds()
    bench = models.build("nonlinear", n_units)
    counter = pytensor.shared(np.float64(0.0))
    trivial = pytensor.function([], counter, updates={counter: counter + 1.0}, mode=mode)
    guard = _guarded(bench, min(1_000, n_units), mode)
    full = _guarded(bench, None, mode)
    saw = models.build("saw")
    saw_step = _guarded(saw, None, mode)
    with without_numba_cache():
        uncached = _guarded(bench, min(1_000, n_units), mode)
        saw_uncached = _guarded(saw, None, mode)
    contenders = {
        "trivial compiled call": trivial,
        "A-VI step B=10": common.avi_step(bench, batch_size=10, mode=mode),
        "A-VI step B=1,000": guard.fn,
        "A-VI step B=1,000 through the guard": guard,
        "A-VI step full batch": full.fn,
        "A-VI step B=1,000, numba cache off": uncached.fn,
        "saw A-VI step (N=1,000)": saw_step.fn,
        "saw A-VI step, numba cache off": saw_uncached.fn,
        "saw ADVI step (pm.fit's compilation)": common.advi_step(saw, mode=mode),
    }
    faults = {}
    times = common.interleaved(contenders, repeats=repeats, calls=calls, faults=faults)
    ref = times["A-VI step full batch"]
    rows = []
    for name, seconds in times.items():
        s = common.summary(seconds)
        ratio = common.paired_ratio(seconds, ref)
        rows.append([name, s["median_ms"], s["min_ms"], ratio, faults[name]])
    new_size = graph_size(full.fn)
    overhead = {
        "fixed_call_ms": float(np.median(times["trivial compiled call"]) * 1e3),
        "guard_ms": float(
            np.median(times["A-VI step B=1,000 through the guard"] - times["A-VI step B=1,000"])
            * 1e3
        ),
        "cached_over_uncached_b1000": common.paired_ratio(
            times["A-VI step B=1,000"], times["A-VI step B=1,000, numba cache off"]
        ),
        "cached_over_uncached_saw": common.paired_ratio(
            times["saw A-VI step (N=1,000)"], times["saw A-VI step, numba cache off"]
        ),
        "saw_avi_over_advi": common.paired_ratio(
            times["saw A-VI step (N=1,000)"], times["saw ADVI step (pm.fit's compilation)"]
        ),
    }
    arguments = {
        "nonlinear B=1,000": len(guard.fn.maker.inputs),
        "saw": len(saw_step.fn.maker.inputs),
    }
    table = (
        f"Nonlinear model, N = {n_units:,}, {mode}, float64; {repeats} interleaved rounds of "
        f"{calls} calls; glibc's malloc thresholds "
        + ("pinned (section 6).\n\n" if pin_malloc else "at their defaults (section 6).\n\n")
        + common.markdown_table(
            ["call", "median ms", "min ms", "÷ full-batch step", "page faults/call"], rows
        )
        + f"\nCompiled full-batch step: {new_size[0]} apply nodes, {new_size[1]} matrix products "
        f"and {new_size[2]} opaque layer ops. "
        f"Fixed cost per compiled call ≈ {overhead['fixed_call_ms'] * 1e3:.0f} µs; the guard adds "
        f"≈ {overhead['guard_ms'] * 1e3:.0f} µs per step. "
        f"Compiled with PyTensor's numba cache, whose `def f(*args)` wrapper has numba type the "
        f"step's {arguments['nonlinear B=1,000']} arguments (parameters, Adam "
        f"moments, RNGs) in Python on every call, the B = 1,000 step takes "
        f"{overhead['cached_over_uncached_b1000']:.2f}× and saw's full step "
        f"({arguments['saw']} arguments) "
        f"{overhead['cached_over_uncached_saw']:.2f}× the step compiled without the cache; "
        f"saw's A-VI step is "
        f"{overhead['saw_avi_over_advi']:.2f}× ADVI's as `pm.fit` compiles it.\n"
    )
    payload = {
        "times_ms": {k: common.summary(v) for k, v in times.items()},
        "graph": {"now": new_size},
        "overhead": overhead,
        "step_arguments": arguments,
    }
    if write:
        common.write_results("profile_step", payload, table, quick=quick)
    return payload


def main(argv=None):
    common.run_quick_cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
