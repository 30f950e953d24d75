"""The performance harness runs end to end on a tiny problem and its ratios are finite.

Timings are not checked (they belong to benchmarks/perf, measured side by side); this only guards
the harness: step builders, interleaved timing, ratio and table code.
"""

import math

import pytest

from benchmarks.perf import profile_step, scaling, step_time, time_to_elbo


def test_perf_harness_runs_and_ratios_are_finite():
    steps = step_time.run(
        n_units=200, batch=50, repeats=2, calls=2, backends=("NUMBA",), numpyro=False, write=False
    )
    assert steps["targets"]
    assert all(math.isfinite(v) for v in steps["targets"].values())
    assert all(math.isfinite(r["vs_floor"]) for n, r in steps["ratios"].items() if "full" in n)

    scaled = scaling.run(sizes=(100, 400), batch=50, repeats=2, memory=False, write=False)
    assert math.isfinite(scaled["avi_step_ratio_max_min_n"])
    # The encoder's parameter count does not depend on N; ADVI's does.
    avi_params = {row["A-VI"]["n_params"] for row in scaled["rows"]}
    assert len(avi_params) == 1
    assert scaled["rows"][0]["ADVI"]["n_params"] < scaled["rows"][1]["ADVI"]["n_params"]

    profiled = profile_step.run(n_units=200, repeats=2, calls=2, write=False)
    assert all(math.isfinite(v) for v in profiled["overhead"].values())
    # The step's layers are inlined now; before this branch they were opaque OpFromGraph nodes.
    assert profiled["graph"]["now"][2] == 0 < profiled["graph"]["before"][2]


@pytest.mark.slow
def test_time_to_elbo_harness_reaches_a_loose_target():
    out = time_to_elbo.run(
        model_names=("saw",),
        lrs=(3e-2,),
        seeds=1,
        max_steps={"saw": 3_000},
        n_units={"saw": 200},
        numpyro=False,
        write=False,
    )
    assert math.isfinite(out["models"]["saw"]["avi_over_advi_wall"])
