"""Benchmark 7: a step's fixed cost against its number of arguments, A-VI beside ADVI.

    python -m benchmarks.perf.step_args [--quick]

PyTensor's numba cache wraps a compiled graph in ``def f(*args)``, and numba types that tuple in
Python on every call (≈ 5 µs per argument, NOTES.md). This times, interleaved in one process
(NUMBA, float64, Adam as ``pm.fit`` compiles it), the A-VI step and ADVI's step on small models
where that fixed cost dominates: saw (N = 1,000, encoder 2→4→4→1), nonlinear (N = 10,000,
1→16→16→1, B = 1,000 for A-VI) and an indexed radon-style model (85 counties, 919 houses, the
default pooled encoder), and counts each compiled step's arguments (parameters, optimiser state,
random generators, data).
"""

from __future__ import annotations

import numpy as np

from benchmarks.perf import common, models
from pymc_amortize.examples.simulated_radon import radon_data, radon_model


def radon_bench() -> models.BenchModel:
    data = radon_data(random_seed=0)
    return models.BenchModel("radon", radon_model(data), None, (32, 32), {})


def n_arguments(step) -> int:
    return len(step.compiled.maker.inputs)


def run(*, quick: bool = False, write: bool = True, repeats=None, calls=None, mode="NUMBA"):
    repeats = repeats or (7 if quick else 21)
    calls = calls or (50 if quick else 200)
    common.pin_malloc_thresholds()
    cases = {
        "saw (N=1,000)": (models.build("saw"), None),
        "nonlinear (N=10,000)": (models.build("nonlinear"), 1_000),
        "radon (85 counties)": (radon_bench(), None),
    }
    contenders = {}
    for label, (bench, batch) in cases.items():
        contenders[f"{label} A-VI"] = common.avi_step(bench, batch_size=batch, mode=mode)
        contenders[f"{label} ADVI"] = common.advi_step(bench, mode=mode)
    times = common.interleaved(contenders, repeats=repeats, calls=calls)
    rows, payload = [], {}
    for label, (_, batch) in cases.items():
        avi, advi = times[f"{label} A-VI"], times[f"{label} ADVI"]
        entry = {
            "avi_ms": float(np.median(avi) * 1e3),
            "advi_ms": float(np.median(advi) * 1e3),
            "avi_over_advi": common.paired_ratio(avi, advi),
            "avi_arguments": n_arguments(contenders[f"{label} A-VI"]),
            "advi_arguments": n_arguments(contenders[f"{label} ADVI"]),
        }
        payload[label] = entry
        rows.append(
            [
                label + ("" if batch is None else f", A-VI B={batch:,}"),
                entry["avi_ms"],
                entry["avi_arguments"],
                entry["advi_ms"],
                entry["advi_arguments"],
                entry["avi_over_advi"],
            ]
        )
    table = (
        f"{mode}, float64, Adam; {repeats} interleaved rounds of {calls} calls; medians.\n\n"
        + common.markdown_table(
            [
                "model",
                "A-VI ms/step",
                "A-VI step arguments",
                "ADVI ms/step",
                "ADVI step arguments",
                "A-VI ÷ ADVI",
            ],
            rows,
        )
    )
    if write:
        common.write_results("step_args", {"models": payload}, table, quick=quick)
    return payload


def main(argv=None):
    common.run_quick_cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
