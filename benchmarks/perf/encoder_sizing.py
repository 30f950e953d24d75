"""Encoder size and depth against the F-VI optimum on user-style models: what chose the default.

python -m benchmarks.perf.encoder_sizing --quick

For each model, ADVI (full batch, long run) gives the F-VI reference loss; A-VI is fitted with each
candidate ``encoder_widths`` (Adam, learning rate 1e-2, full batch) and reports its final loss
minus ADVI's (the amortization gap plus what is left of the optimisation, in nats; ≤ 0 within
noise means it reached F-VI), the steps until its 100-step running loss first comes within
max(1 nat, 1 %) of ADVI's final loss, and the encoder's parameter count. Final losses are means
of the last 500 steps' −ELBO estimates (one draw each), the same estimator for both methods.
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm

import pymc_amortize  # noqa: F401  (registers method="amortized")
from benchmarks.perf.common import markdown_table, run_quick_cli, write_results
from benchmarks.perf.models import build

CANDIDATES = [(), (8,), (16,), (32,), (64,), (16, 16), (32, 32)]
DESCRIPTION = (
    "ADVI (full batch, 4 × {n_steps} steps, Adam 1e-2) gives each model's F-VI reference loss; "
    "A-VI is fitted with each candidate `encoder_widths` ({n_steps} steps, Adam 1e-2, full "
    "batch). Gap = A-VI's final loss − ADVI's (means of the last 500 one-draw −ELBO estimates; "
    "≤ 0 within noise: F-VI reached); steps to 1 % = first step where A-VI's 100-step running "
    "loss is within max(1 nat, 1 %) of ADVI's final loss. The default rule "
    "(`pymc_amortize.guide.encoders.default_encoder_widths`) was chosen from this table and the seed "
    "sweeps in NOTES.md.\n\n"
)


def eight_schools() -> pm.Model:
    y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
    sigma = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
    with pm.Model(coords={"school": range(8)}) as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        theta_raw = pm.Normal("theta_raw", 0, 1, dims="school")
        pm.Normal("y", mu + tau * theta_raw, sigma, observed=y, dims="school")
    return model


def factor_analysis(n_units: int = 300) -> pm.Model:
    rng = np.random.default_rng(5)
    W = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7]])
    X = rng.normal(size=(n_units, 2)) @ W + 0.3 * rng.normal(size=(n_units, 3))
    with pm.Model(coords={"unit": range(n_units), "k": range(2), "d": range(3)}) as model:
        w = pm.Normal("w", 0, 1, dims=("k", "d"))
        s = pm.HalfNormal("s", 1)
        z = pm.Normal("z", 0, 1, dims=("unit", "k"))
        pm.Normal("x", z @ w, s, observed=X, dims=("unit", "d"))
    return model


def grouped(likelihood: str, n_groups: int, rows_per_group: int = 10, seed: int = 0) -> pm.Model:
    """A GLMM as users write it: index array and covariate behind pm.Data, centred intercepts."""
    rng = np.random.default_rng(seed)
    n_rows = n_groups * rows_per_group
    group = rng.integers(0, n_groups, n_rows)
    x = rng.normal(size=n_rows)
    a = rng.normal(0.5, 0.7, n_groups)
    eta = a[group] + 0.4 * x
    y = (
        rng.binomial(1, 1 / (1 + np.exp(-eta)))
        if likelihood == "bernoulli"
        else rng.poisson(np.exp(eta))
    )
    with pm.Model(coords={"group": range(n_groups), "obs": range(n_rows)}) as model:
        g = pm.Data("group_idx", group, dims="obs")
        xd = pm.Data("x", x, dims="obs")
        mu = pm.Normal("mu", 0, 2)
        sd = pm.HalfNormal("sd", 1)
        a = pm.Normal("a", mu, sd, dims="group")
        b = pm.Normal("b", 0, 1)
        eta = a[g] + b * xd
        if likelihood == "bernoulli":
            pm.Bernoulli("y", logit_p=eta, observed=y, dims="obs")
        else:
            pm.Poisson("y", pm.math.exp(eta), observed=y, dims="obs")
    return model


def models(quick: bool) -> dict[str, pm.Model]:
    return {
        "eight schools (N=8)": eight_schools(),
        "factor analysis (N=300)": factor_analysis(),
        "logistic GLMM (J=300)": grouped("bernoulli", 300),
        "Poisson GLMM (J=100)": grouped("poisson", 100),
        "nonlinear (N=1000)": build("nonlinear", 1000).model,
        "saw i=2 (N=1000)": build("saw", 1000).model,
    }


def _final(hist: np.ndarray) -> float:
    return float(np.mean(hist[-500:]))


def _steps_to(hist: np.ndarray, target: float) -> int | None:
    running = np.convolve(hist, np.ones(100) / 100, mode="valid")
    hit = np.flatnonzero(running <= target)
    return int(hit[0] + 100) if hit.size else None


def run(quick: bool) -> None:
    n_steps = 3000 if quick else 10_000
    seeds = range(2 if quick else 5)
    rows, records = [], []
    for label, model in models(quick).items():
        with model:
            advi = pm.fit(
                4 * n_steps,
                method="advi",
                obj_optimizer=pm.adam(learning_rate=1e-2),
                random_seed=0,
                progressbar=False,
            )
        reference = _final(advi.hist)
        target = reference + max(1.0, 0.01 * abs(reference))
        for widths in CANDIDATES:
            gaps, steps, seconds = [], [], []
            for seed in seeds:
                with model:
                    started = time.perf_counter()
                    approx = pm.fit(
                        n_steps, family="encoder",
                        method="amortized",
                        encoder_widths=widths,
                        obj_optimizer=pm.adam(learning_rate=1e-2),
                        random_seed=seed,
                        progressbar=False,
                    )
                    seconds.append(time.perf_counter() - started)
                gaps.append(_final(approx.hist) - reference)
                steps.append(_steps_to(approx.hist, target))
            n_weights = int(sum(w.get_value().size for w in approx.encoder_params))
            reached = [s for s in steps if s is not None]
            record = {
                "model": label,
                "widths": list(widths),
                "n_encoder_params": n_weights,
                "gap": gaps,
                "steps_to_fvi": steps,
                "fit_seconds": seconds,
                "advi_final_loss": reference,
            }
            records.append(record)
            rows.append(
                [
                    label,
                    str(widths),
                    n_weights,
                    f"{np.median(gaps):.1f}",
                    f"{max(gaps):.1f}",
                    f"{len(reached)}/{len(steps)}",
                    f"{int(np.median(reached))}" if reached else f"> {n_steps}",
                    f"{np.median(seconds):.1f}",
                ]
            )
    header = [
        "model",
        "widths",
        "encoder params",
        "median gap (nats)",
        "worst gap (nats)",
        "seeds within 1 %",
        "median steps to 1 %",
        "median fit s",
    ]
    table = DESCRIPTION.format(n_steps=n_steps) + markdown_table(header, rows)
    write_results("encoder_sizing", {"records": records, "n_steps": n_steps}, table, quick=quick)


if __name__ == "__main__":
    run_quick_cli(run, __doc__)
