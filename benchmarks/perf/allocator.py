"""Benchmark 6: the full-batch step's page faults — glibc handing the step's temporaries back to the
OS — before and after JAX has run in the process, and with malloc's thresholds pinned.

    python -m benchmarks.perf.allocator [--quick]

One process, nonlinear model, N = 10,000, NUMBA, float64. Three phases in turn, each timing the
full-batch and the B = 1,000 A-VI step and counting the minor page faults per step
(``getrusage``): (1) fresh; (2) after a few NumPyro (JAX) steps have run in the process, as in the
step-time benchmark; (3) after ``mallopt`` pins glibc's mmap threshold at 32 MiB and its trim
threshold at 512 MiB, so that freed temporaries stay in the heap. The phases cannot be interleaved
(``mallopt`` changes the process for good), so each is the median of several rounds.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from benchmarks.perf import common, models


def _phase(steps: dict, *, repeats: int, calls: int) -> dict:
    out = {}
    for name, step in steps.items():
        for _ in range(3):
            step()
        seconds, faults = [], []
        for _ in range(repeats):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            seconds.append((time.perf_counter() - t0) / calls)
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / calls)
        out[name] = common.summary(np.asarray(seconds)) | {"faults": float(np.median(faults))}
    return out


def run(
    *,
    quick: bool = False,
    n_units: int = 10_000,
    numpyro: bool = True,
    mode: str = "NUMBA",
    repeats: int | None = None,
    calls: int | None = None,
    write: bool = True,
):
    repeats = repeats or (5 if quick else 11)
    calls = calls or (20 if quick else 50)
    bench = models.build("nonlinear", n_units)
    steps = {
        "A-VI full batch": common.avi_step(bench, mode=mode),
        "A-VI B=1,000": common.avi_step(bench, batch_size=min(1_000, n_units), mode=mode),
    }
    phases = {"fresh process": _phase(steps, repeats=repeats, calls=calls)}
    if numpyro:
        from benchmarks.perf.numpyro_models import nonlinear_svi

        jax_step = nonlinear_svi(bench.data["x"])[0]
        for _ in range(3):
            jax_step()
        phases["after 3 NumPyro steps"] = _phase(steps, repeats=repeats, calls=calls)
    common.pin_malloc_thresholds()
    phases["malloc thresholds pinned"] = _phase(steps, repeats=repeats, calls=calls)
    rows = [
        [phase, name, r["median_ms"], r["min_ms"], r["faults"]]
        for phase, result in phases.items()
        for name, r in result.items()
    ]
    table = (
        f"Nonlinear model, N = {n_units:,}, {mode}, float64; phases in turn, each {repeats} rounds "
        f"of {calls} steps.\n\n"
        + common.markdown_table(
            ["phase", "step", "median ms/step", "min ms/step", "minor page faults/step"], rows
        )
    )
    payload = {"phases": phases}
    if write:
        common.write_results("allocator", payload, table, quick=quick)
    return payload


def main(argv=None):
    common.run_quick_cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
