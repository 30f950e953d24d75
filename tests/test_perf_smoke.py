"""The performance harness runs end to end on a tiny problem and its ratios are finite.

Timings are not checked (they belong to benchmarks/perf, measured side by side); this only guards
the harness: step builders, interleaved timing, memory accounting, ratio and table code. Steps are
compiled in FAST_COMPILE mode (the harness does not care which backend runs them) so that this
takes seconds; the benchmarks themselves use NUMBA, C and JAX.
"""

import math

import pytest

from benchmarks.perf import allocator, profile_step, scaling, step_time, time_to_elbo

MODE = "FAST_COMPILE"


def test_step_time_and_profile_ratios_are_finite():
    steps = step_time.run(
        n_units=200,
        batch=50,
        repeats=2,
        calls=2,
        backends=(MODE,),
        precisions=("float64",),
        numpyro=False,
        advi=False,
        write=False,
    )
    assert set(steps["ratios"]) == {f"A-VI full float64 {MODE}", f"A-VI B=50 float64 {MODE}"}
    assert all(math.isfinite(v) for v in steps["targets"].values())
    assert math.isfinite(steps["ratios"][f"A-VI full float64 {MODE}"]["vs_floor"])

    profiled = profile_step.run(n_units=200, repeats=2, calls=2, mode=MODE, write=False)
    assert all(math.isfinite(v) for v in profiled["overhead"].values())
    # The step's layers are inlined now; before the perf branch they were opaque OpFromGraph nodes.
    assert profiled["graph"]["now"][2] == 0 < profiled["graph"]["before"][2]


def test_scaling_memory_is_flat_for_avi_and_grows_for_advi():
    scaled = scaling.run(sizes=(100, 2_000), batch=50, repeats=2, mode=MODE, write=False)
    assert math.isfinite(scaled["avi_step_ratio_max_min_n"])
    small, big = scaled["rows"]
    # The encoder's parameters and Adam moments do not depend on N; ADVI's are 3 · 2(N + 1) floats.
    assert small["A-VI"]["n_params"] == big["A-VI"]["n_params"]
    assert small["A-VI"]["state_mib"] == big["A-VI"]["state_mib"]
    assert big["ADVI"]["state_mib"] * 2**20 == pytest.approx(3 * 2 * 2_001 * 8, rel=1e-3)
    # Both hold the data: 2,000 observations as float64 (A-VI twice: encoder input, observed).
    assert big["ADVI"]["data_mib"] * 2**20 >= 2_000 * 8
    assert big["A-VI"]["data_mib"] * 2**20 >= 2 * 2_000 * 8
    # A step's peak is measured (finite) and, on a few thousand floats, far under a GiB.
    peaks = [row[m]["step_peak_mib"] for row in scaled["rows"] for m in ("A-VI", "ADVI")]
    assert all(math.isfinite(p) and 0 <= p < 1024 for p in peaks)


def test_allocator_phases_count_page_faults():
    out = allocator.run(n_units=200, numpyro=False, mode=MODE, repeats=2, calls=2, write=False)
    assert list(out["phases"]) == ["fresh process", "malloc thresholds pinned"]
    for phase in out["phases"].values():
        assert phase, "a phase measured no step"
        for r in phase.values():
            # Page faults are counted (an int from getrusage), and a step takes time.
            assert isinstance(r["faults"], int | float) and r["faults"] == int(r["faults"]) >= 0
            assert 0 < r["median_ms"] < 10_000


def test_time_to_elbo_ratio_is_a_bound_when_a_method_never_gets_there():
    assert time_to_elbo._ratio(("=", 1.0), ("=", 4.0)) == (0.25, "=")
    assert time_to_elbo._ratio(("=", 1.0), (">", 4.0)) == (0.25, "<")
    assert time_to_elbo._ratio((">", 8.0), ("=", 4.0)) == (2.0, ">")
    ratio, kind = time_to_elbo._ratio((">", 1.0), (">", 4.0))
    assert kind == "?" and math.isnan(ratio)
    assert time_to_elbo._shown(0.25, "<") == "< 0.25"


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
    assert out["models"]["saw"]["ratio_is"] == "="
    assert math.isfinite(out["models"]["saw"]["avi_over_advi_wall"])
    step_ms = out["models"]["saw"]["step_ms"]
    assert step_ms["A-VI"] > 0 and step_ms["ADVI"] > 0
    assert step_ms["nodes"]["A-VI"] > step_ms["nodes"]["ADVI"] > 0


def test_step_args_counts_arguments_and_ratios():
    from benchmarks.perf import step_args

    rows = step_args.run(repeats=1, calls=1, mode=MODE, write=False)
    assert set(rows) == {"saw (N=1,000)", "nonlinear (N=10,000)", "radon (85 counties)"}
    for row in rows.values():
        assert 0 < row["avi_over_advi"] < math.inf
        # Encoder weights are one flat vector: a handful of arguments, whatever the encoder.
        assert row["avi_arguments"] <= row["advi_arguments"] + 8
