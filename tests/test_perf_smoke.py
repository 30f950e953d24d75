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
    # The step's pytensor-ml layers are inlined: no opaque OpFromGraph node is left.
    assert profiled["graph"]["now"][2] == 0


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
        # Encoder weights are one flat vector: a handful of arguments, whatever the encoder. The
        # rest are data the step reads as shared variables so that its compiled code does not
        # depend on them (N, the gathered observed rows, the inputs' standardisation): 24 on
        # radon against ADVI's 13, 47-63 before the flat weights.
        assert row["avi_arguments"] <= row["advi_arguments"] + 12


def test_user_models_ratios_and_columns():
    import pytensor

    from benchmarks.perf import user_models

    with pytensor.config.change_flags(mode=MODE):  # the ELBO evaluator's logp too
        out = user_models.run(
            case_names=["eight schools"],
            max_steps=600,
            n_draws=5,
            every=50,
            step_sizes=(200,),
            step_settings={"steps": 20, "rounds": 1, "repeats": 1, "calls": 2},
            mode=MODE,
            write=False,
        )
    res = out["models"]["eight schools"]
    assert math.isfinite(res["target_elbo"])
    assert 0 < res["ratios"]["first_fit_wall"] < math.inf
    for kind_key in ("to_target_wall", "to_target_steps"):
        ratio, kind = res["ratios"][kind_key]
        assert kind in "=<>" and 0 < ratio < math.inf
    # ADVI's own trace defines the target: its last window always reaches it.
    assert res["runs"]["ADVI"]["to_target"]["kind"] == "="
    for run in res["runs"].values():
        assert run["compile_s"] > 0 and run["run_s"] > 0 and run["steps"] > 1
        assert len(run["trace"]["elbo"]) == run["steps"] // 50
    for column in ("setup + compile s", "first fit s", "s to ADVI's ELBO (compile incl.)"):
        assert column in out["table"]
    step = out["per_step"]["200"]
    assert 0 < step["ratio_in_fit"] < math.inf and 0 < step["ratio_compiled"] < math.inf


def test_user_models_reach_needs_a_whole_window():
    from benchmarks.perf import user_models

    w = user_models.WINDOW
    # One lucky evaluation above the target is not reaching it; a window whose mean is, is.
    elbo = [-10.0] * w + [0.0] + [-10.0] * w + [-1.0] * w
    run = {
        "trace": {"step": list(range(len(elbo))), "seconds": list(range(len(elbo))), "elbo": elbo},
        "run_s": 99.0,
    }
    assert user_models.time_to(run, target=-1.0) == ("=", len(elbo) - 1, len(elbo) - 1)
    assert user_models.time_to(run, target=0.0) == (">", 99.0, None)


def test_competitors_reference_is_the_conjugate_posterior():
    import numpy as np

    from benchmarks.perf import competitors

    data, _ = competitors.data_and_model(2_000)
    ref = competitors.Reference(data)
    # The marginal posterior mode of the globals finds the simulation's values.
    mu_a, sigma_a, b, sigma = ref.theta[0], np.exp(ref.theta[1]), ref.theta[2], np.exp(ref.theta[3])
    assert abs(mu_a - data.mu_a) < 0.1 and abs(b - data.b) < 0.1
    assert abs(sigma_a - data.sigma_a) < 0.1 and abs(sigma - data.sigma) < 0.05
    # One county's conditional posterior against brute force on a grid.
    j = int(np.argmax(data.county_sizes))
    rows = data.county_idx == j
    grid = np.linspace(-3, 6, 20_001)
    resid = data.log_radon[rows] - b * data.floor[rows]
    log_post = -0.5 * ((grid - mu_a) / sigma_a) ** 2
    log_post -= 0.5 * (((resid[:, None] - grid) / sigma) ** 2).sum(0)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    mean, sd = ref.conditional(ref.theta)
    assert mean[j] == pytest.approx((w * grid).sum(), abs=1e-4)
    assert sd[j] == pytest.approx(np.sqrt((w * (grid - mean[j]) ** 2).sum()), rel=1e-3)
    # The reference's errors: itself is exact, a shift of 0.2 sd everywhere is not within 0.1.
    assert ref.errors(ref.mean)["reached"] and ref.errors(ref.mean)["max"] == 0
    shifted = ref.errors(ref.mean + 0.2 * ref.sd)
    assert not shifted["reached"] and shifted["within"] == 0


def test_competitors_advi_agrees_with_the_reference_on_a_tiny_model():
    from benchmarks.perf import competitors

    data, model = competitors.data_and_model(100)
    ref = competitors.Reference(data)
    out = competitors.run_vi(
        model, ref, "ADVI", lr=3e-2, batch=None, max_steps=2_000, every=200, mode=MODE
    )
    assert {"within", "median", "max", "reached"} <= set(out["errors"])
    # ADVI's means of a conjugate Gaussian model land near the exact ones (loose: few steps).
    assert out["errors"]["median"] < 0.5
    assert out["wall_s"] >= out["compile_s"] > 0


@pytest.mark.slow
def test_competitors_pymc_extras_contenders_run():
    pytest.importorskip("pymc_extras")
    from benchmarks.perf import competitors

    data, model = competitors.data_and_model(50)
    ref = competitors.Reference(data)
    for method in ("pathfinder", "dadvi"):
        out = competitors.run_pymc_extras(model, ref, method)
        assert out["wall_s"] > 0 and 0 <= out["errors"]["within"] <= 1


def test_compile_time_measures_every_phase_of_both_methods():
    from benchmarks.perf import compile_time

    avi = compile_time._measure("poisson", 150, "A-VI")
    advi = compile_time._measure("poisson", 150, "ADVI")
    for phases in (avi, advi):
        assert set(phases) == {"setup_s", "graph_and_rewrites_s", "first_call_s", "nodes"}
        assert all(math.isfinite(v) and v > 0 for v in phases.values())
    # The encoder, the pooled gathers and their gradients: A-VI's step is the larger graph.
    assert avi["nodes"] > advi["nodes"]


def test_encoder_sizing_steps_to_target_and_final_loss():
    import numpy as np

    from benchmarks.perf import encoder_sizing

    hist = np.concatenate([np.full(300, 50.0), np.full(700, 10.0)])
    assert encoder_sizing._final(hist) == 10.0
    # The 100-step running mean first reaches 12 when at most 5 of its steps are at 50: the window
    # of steps 295-394, so the target is met at step 395.
    assert encoder_sizing._steps_to(hist, 12.0) == 395
    assert encoder_sizing._steps_to(hist, 5.0) is None
