"""Benchmark 8: first fits and time to ADVI's final ELBO on user-style models; steps at N = 10³, 10⁵.

    python -m benchmarks.perf.user_models [--quick]

The models are written as a PyMC user writes them (:func:`eight_schools`, :func:`logistic`,
:func:`poisson_glmm`, the real radon data): eight schools (non-centred, known sigma), a
hierarchical logistic regression with a covariate and the group index behind ``pm.Data`` (300
groups, and 1,000 and 10,000 for the "1,000 units and above" target), a centred Poisson GLMM (the
same sizes) and Minnesota radon (85 counties). On each, in turn, ``pm.fit(method="amortized")``
(default encoder; ``batch_size=100`` where there are 1,000 units or more) and
``pm.fit(method="advi")``, both with Adam and stopped by ``ELBOConvergence()``:

* **first fit**: wall time of the ``pm.fit`` call, split into setup + compile (to the first step)
  and the steps;
* **time to ADVI's final ELBO**: every ``every`` steps both fits' full-data ELBO is estimated by
  one :class:`~pymc_amortize.diagnostics.MeanFieldELBO` (the same standard-normal draws for every
  evaluation, so the estimate moves only with the parameters), off the clock. ADVI's final ELBO is
  the mean of its last ``WINDOW`` evaluations; a method's time is the clock at the end of its first
  ``WINDOW`` consecutive evaluations whose mean reaches it, with and without compile.

Then, on the simulated radon model at 10³ and 10⁵ counties (10 houses each on average), the time per
step inside ``pm.fit`` (wall ÷ steps after the first, compile excluded) of A-VI at B = 100 and ADVI
on the full batch, fits in turn, and the bare compiled steps timed interleaved
(:func:`benchmarks.perf.common.interleaved`).
"""

from __future__ import annotations

import numpy as np
import pymc as pm

from benchmarks.perf import common, models
from benchmarks.perf.time_to_elbo import _ratio, _shown
from pymc_amortize.diagnostics import MeanFieldELBO, meanfield_of
from pymc_amortize.examples import simulated_radon

WINDOW = 5  # evaluations averaged into ADVI's final ELBO
BATCH = 100  # A-VI's units per step where a model has 1,000 units or more
MIN_UNITS_TO_MINIBATCH = 1_000


# -- the models, as a user writes them ----------------------------------------------------------
def eight_schools() -> pm.Model:
    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    with pm.Model(coords={"school": list("ABCDEFGH")}) as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        theta_raw = pm.Normal("theta_raw", 0, 1, dims="school")
        theta = pm.Deterministic("theta", mu + tau * theta_raw, dims="school")
        pm.Normal("y", theta, sigma, observed=y, dims="school")
    return model


def _grouped_rows(n_groups: int, rows_per_group: int, rng) -> tuple[np.ndarray, np.ndarray]:
    group = np.repeat(np.arange(n_groups), rows_per_group)
    return group, rng.normal(size=group.size)


def logistic(n_groups: int = 300, rows_per_group: int = 10, *, random_seed: int = 0) -> pm.Model:
    """Varying intercepts, non-centred, one covariate; ``y ~ Bernoulli(logit_p)``."""
    rng = np.random.default_rng(random_seed)
    group, x = _grouped_rows(n_groups, rows_per_group, rng)
    alpha = -0.5 + 0.8 * rng.normal(size=n_groups)
    y = rng.binomial(1, 1 / (1 + np.exp(-(alpha[group] + 0.7 * x))))
    coords = {"group": np.arange(n_groups), "obs": np.arange(group.size)}
    with pm.Model(coords=coords) as model:
        x_data = pm.Data("x", x, dims="obs")
        group_idx = pm.Data("group_idx", group, dims="obs")
        mu = pm.Normal("mu", 0, 2)
        sigma = pm.HalfNormal("sigma", 1)
        beta = pm.Normal("beta", 0, 2)
        z = pm.Normal("z", 0, 1, dims="group")
        alpha = mu + sigma * z
        pm.Bernoulli("y", logit_p=alpha[group_idx] + beta * x_data, observed=y, dims="obs")
    return model


def poisson_glmm(n_groups: int = 300, rows_per_group: int = 8, *, random_seed: int = 0) -> pm.Model:
    """Varying intercepts, centred, one covariate; ``y ~ Poisson(exp(a[group] + beta x))``."""
    rng = np.random.default_rng(random_seed)
    group, x = _grouped_rows(n_groups, rows_per_group, rng)
    a = rng.normal(0.5, 0.6, size=n_groups)
    y = rng.poisson(np.exp(a[group] + 0.3 * x))
    coords = {"group": np.arange(n_groups), "obs": np.arange(group.size)}
    with pm.Model(coords=coords) as model:
        x_data = pm.Data("x", x, dims="obs")
        group_idx = pm.Data("group_idx", group, dims="obs")
        mu = pm.Normal("mu", 0, 2)
        sigma = pm.HalfNormal("sigma", 1)
        beta = pm.Normal("beta", 0, 1)
        a = pm.Normal("a", mu, sigma, dims="group")
        pm.Poisson("y", pm.math.exp(a[group_idx] + beta * x_data), observed=y, dims="obs")
    return model


def radon() -> pm.Model:
    from pymc_amortize.examples.radon import load_radon, radon_model

    data, coords = load_radon()
    return radon_model(data, coords=coords)


def cases(quick: bool) -> dict[str, tuple]:
    """``{label: (builder, units)}``; quick leaves out the 10,000-group models."""
    sizes = (300, 1_000) if quick else (300, 1_000, 10_000)
    out = {"eight schools": (eight_schools, 8)}
    for n in sizes:
        out[f"logistic, {n:,} groups"] = (lambda n=n: logistic(n), n)
    for n in sizes:
        out[f"Poisson GLMM, {n:,} groups"] = (lambda n=n: poisson_glmm(n), n)
    out["radon (real, 85 counties)"] = (radon, 85)
    return out


# -- one fit, with its ELBO trace -----------------------------------------------------------------
def fit(model, method, *, units, lr, max_steps, evaluator, every, seed=0, mode=None) -> dict:
    if method == "A-VI":
        batch = BATCH if units >= MIN_UNITS_TO_MINIBATCH else None
        kwargs = {"method": "amortized", "batch_size": batch}
    else:
        kwargs = {"method": "advi"}
    clock = common.FitClock(lambda approx: evaluator.estimate(meanfield_of(approx))[0], every=every)
    common.converged_fit(model, clock, max_steps=max_steps, lr=lr, mode=mode, seed=seed, **kwargs)
    steps, seconds, elbo = (np.array(c, dtype=float) for c in zip(*clock.points, strict=True))
    return {
        "compile_s": clock.compile_s,
        "run_s": clock.run_s,
        "wall_s": clock.compile_s + clock.run_s,
        "steps": clock.steps,
        "ms_per_step": clock.ms_per_step,
        "trace": {"step": steps.tolist(), "seconds": seconds.tolist(), "elbo": elbo.tolist()},
    }


def time_to(run: dict, target: float) -> tuple[str, float, float | None]:
    """("=", seconds on the clock, step) at the end of the first ``WINDOW`` evaluations whose mean
    is ≥ ``target`` (the rule that defines ADVI's final ELBO, so a minibatched fit's jitter does not
    count as reaching it); else (">", all the seconds run, None)."""
    trace = run["trace"]
    elbo = np.asarray(trace["elbo"])
    w = min(WINDOW, elbo.size)
    hits = np.flatnonzero(np.convolve(elbo, np.ones(w) / w, mode="valid") >= target) + w - 1
    if hits.size:
        return "=", trace["seconds"][hits[0]], trace["step"][hits[0]]
    return ">", run["run_s"], None


def compare_fits(model, units, *, lr, max_steps, n_draws, every, avi_first=True, mode=None) -> dict:
    evaluator = MeanFieldELBO(model, n_draws=n_draws, random_seed=0)
    order = ("A-VI", "ADVI") if avi_first else ("ADVI", "A-VI")
    runs = {
        method: fit(
            model,
            method,
            units=units,
            lr=lr,
            max_steps=max_steps,
            evaluator=evaluator,
            every=every,
            mode=mode,
        )
        for method in order
    }
    target = float(np.mean(runs["ADVI"]["trace"]["elbo"][-WINDOW:]))
    out = {"target_elbo": target, "runs": runs}
    for run in runs.values():
        kind, seconds, step = time_to(run, target)
        run["to_target"] = {"kind": kind, "steps_s": seconds, "step": step}
        run["to_target"]["wall_s"] = run["compile_s"] + seconds
        run["final_elbo"] = float(np.mean(run["trace"]["elbo"][-WINDOW:]))
    avi, advi = runs["A-VI"], runs["ADVI"]
    out["ratios"] = {
        "first_fit_wall": avi["wall_s"] / advi["wall_s"],
        "to_target_wall": _ratio(*(_timed(r, "wall_s") for r in (avi, advi))),
        "to_target_steps": _ratio(*(_timed(r, "steps_s") for r in (avi, advi))),
    }
    return out


def _timed(run: dict, key: str) -> tuple[str, float]:
    return run["to_target"]["kind"], run["to_target"][key]


# -- per step inside pm.fit at N = 10³ and 10⁵ ----------------------------------------------------
def radon_bench(n_counties: int) -> models.BenchModel:
    data = simulated_radon.radon_data(n_counties, 10 * n_counties, random_seed=0)
    model = simulated_radon.radon_model(data, coords=False)
    return models.BenchModel(f"radon {n_counties:,}", model, None, (32, 32), {})


def step_costs(sizes, *, steps, rounds, repeats, calls, mode=None) -> dict:
    common.pin_malloc_thresholds()
    benches = {n: radon_bench(n) for n in sizes}
    compile_kwargs = {"compile_kwargs": {"mode": mode}} if mode else {}
    options = {
        "A-VI": {"method": "amortized", "batch_size": BATCH},
        "ADVI": {"method": "advi"},
    }
    in_fit = {(m, n): [] for n in sizes for m in options}
    for _ in range(rounds):
        for n, bench in benches.items():
            for method, kwargs in options.items():
                clock = common.FitClock()
                pm.fit(
                    steps,
                    model=bench.model,
                    obj_optimizer=pm.adam(learning_rate=1e-2),
                    callbacks=[clock],
                    progressbar=False,
                    **kwargs,
                    **compile_kwargs,
                )
                in_fit[(method, n)].append(clock.ms_per_step)
    compiled = {}
    for n, bench in benches.items():
        compiled[("A-VI", n)] = common.avi_step(bench, batch_size=BATCH, mode=mode)
        compiled[("ADVI", n)] = common.advi_step(bench, mode=mode)
    seconds = common.interleaved(compiled, repeats=repeats, calls=calls)
    out = {}
    for n in sizes:
        avi, advi = np.asarray(in_fit[("A-VI", n)]), np.asarray(in_fit[("ADVI", n)])
        out[n] = {
            "avi_ms_in_fit": float(np.median(avi)),
            "advi_ms_in_fit": float(np.median(advi)),
            "ratio_in_fit": common.paired_ratio(avi, advi),
            "avi_ms_compiled": float(np.median(seconds[("A-VI", n)]) * 1e3),
            "advi_ms_compiled": float(np.median(seconds[("ADVI", n)]) * 1e3),
            "ratio_compiled": common.paired_ratio(seconds[("A-VI", n)], seconds[("ADVI", n)]),
        }
    return out


# -- the run and its tables ------------------------------------------------------------------------
STEP_TARGETS = {1_000: 1.0, 100_000: 0.2}


def run(
    *,
    quick: bool = False,
    case_names=None,
    lr: float = 1e-2,
    max_steps: int | None = None,
    n_draws: int | None = None,
    every: int | None = None,
    step_sizes=(1_000, 100_000),
    step_settings: dict | None = None,
    mode: str | None = None,
    write: bool = True,
) -> dict:
    max_steps = max_steps or (10_000 if quick else 30_000)
    n_draws = n_draws or (30 if quick else 100)
    every = every or 100
    all_cases = cases(quick)
    chosen = {k: all_cases[k] for k in (case_names or all_cases)}
    results, rows = {}, []
    common.warm_up_fits(mode)
    for k, (label, (build, units)) in enumerate(chosen.items()):
        print(f"[user_models] {label}", flush=True)
        # Which method fits a model first alternates: the first may pay for kernels both use.
        res = compare_fits(
            build(),
            units,
            lr=lr,
            max_steps=max_steps,
            n_draws=n_draws,
            every=every,
            avi_first=k % 2 == 0,
            mode=mode,
        )
        res["units"], res["first"] = units, "A-VI" if k % 2 == 0 else "ADVI"
        results[label] = res
        for method in ("A-VI", "ADVI"):
            r = res["runs"][method]
            t = r["to_target"]
            reached = f"{t['wall_s']:.3g}" if t["kind"] == "=" else f"> {t['wall_s']:.3g}"
            rows.append(
                [
                    label,
                    method + (" (fitted first)" if method == res["first"] else ""),
                    r["compile_s"],
                    r["run_s"],
                    r["wall_s"],
                    r["steps"],
                    r["ms_per_step"],
                    r["final_elbo"] - res["target_elbo"],
                    "—" if t["step"] is None else int(t["step"]),
                    reached,
                ]
            )
        ratio = res["ratios"]
        rows.append(
            [
                label,
                "**A-VI ÷ ADVI**",
                "",
                "",
                f"**{ratio['first_fit_wall']:.2f}**",
                "",
                "",
                "",
                f"steps only: {_shown(*ratio['to_target_steps'])}",
                f"**{_shown(*ratio['to_target_wall'])}**",
            ]
        )
    steps = step_settings or (
        {"steps": 300, "rounds": 2, "repeats": 5, "calls": 20}
        if quick
        else {"steps": 1_000, "rounds": 3, "repeats": 9, "calls": 30}
    )
    per_step = step_costs(step_sizes, **steps, mode=mode) if step_sizes else {}
    header = [
        "model",
        "method",
        "setup + compile s",
        "steps s",
        "first fit s",
        "steps",
        "ms/step",
        "final ELBO − ADVI's",
        "step at ADVI's ELBO",
        "s to ADVI's ELBO (compile incl.)",
    ]
    table = (
        f"Adam lr {lr:g} for both; both stop on `ELBOConvergence()` (at most {max_steps:,} steps); "
        f"A-VI uses the default encoder and `batch_size={BATCH}` at ≥ {MIN_UNITS_TO_MINIBATCH:,} "
        f"units (full batch below). Full-data ELBO every {every} steps by one `MeanFieldELBO` "
        f"({n_draws} common draws), off the clock; ADVI's final ELBO = mean of its last {WINDOW} "
        f"evaluations; a method's time to it is the end of its first {WINDOW} evaluations whose mean "
        "reaches it. Each fit is the first of its method on its model in the process, after a "
        "5-step warm-up fit of each method on a tiny model (`common.warm_up_fits`), so compile is "
        "included (PyTensor's on-disk cache may hold kernels from earlier runs); the method "
        "fitted first alternates between models. A ratio with > or < is a "
        "bound: that method never reached ADVI's final ELBO.\n\n"
        + common.markdown_table(header, rows)
    )
    if per_step:
        step_rows = [
            [
                f"{n:,}",
                r["avi_ms_in_fit"],
                r["advi_ms_in_fit"],
                f"**{r['ratio_in_fit']:.2f}** (≤ {STEP_TARGETS.get(n, float('nan')):g})",
                r["avi_ms_compiled"],
                r["advi_ms_compiled"],
                r["ratio_compiled"],
            ]
            for n, r in per_step.items()
        ]
        table += (
            f"\nPer step, simulated radon model (10 houses per county on average), A-VI default "
            f"encoder at B = {BATCH} vs ADVI full batch, Adam: *in fit* = wall ÷ steps inside "
            f"`pm.fit` ({steps['steps']} steps, compile excluded; median of {steps['rounds']} "
            f"fits of each, in turn); *compiled* = the bare step, {steps['repeats']} interleaved "
            f"rounds of {steps['calls']} calls.\n\n"
            + common.markdown_table(
                [
                    "counties",
                    "A-VI ms/step in fit",
                    "ADVI ms/step in fit",
                    "A-VI ÷ ADVI in fit (target)",
                    "A-VI ms compiled",
                    "ADVI ms compiled",
                    "A-VI ÷ ADVI compiled",
                ],
                step_rows,
            )
        )
    payload = {"models": results, "per_step": {str(n): r for n, r in per_step.items()}}
    payload |= {"lr": lr, "max_steps": max_steps, "n_draws": n_draws, "every": every}
    payload["table"] = table
    if write:
        common.write_results("user_models", payload, table, quick=quick)
    return payload


def main(argv=None):
    common.run_quick_cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
