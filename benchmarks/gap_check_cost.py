"""Cost and findings of the check after every fit (``pm.fit(method="amortized", gap_check=...)``).

For each model: one default fit (``pm.fit(method="amortized")``: 10,000 Adam steps at 1e-3, or
``--steps``) timed with the check off, then the check alone (``pymc_amortize.gap_check``, default
options) timed on the fitted approximation, its gain and whether it flags the fit. Fit seconds
include compilation (PyTensor's on-disk cache may hold kernels from earlier runs), as a user's
first fit in a session does; the check's seconds include its own compilation.

Models: the real radon model (85 counties, pooled encoder on 919 houses); the paper's linear model
(1,000 units, the conjugate Gaussian case A-VI fits exactly); and two models A-VI fits badly when
their latent is forced local: an AR(1) path over 400 days with Poisson counts (shared case c10) and
stochastic volatility (a Gaussian random walk under Student-t returns, 300 days).

    python -m benchmarks.gap_check_cost [--steps 10000] [--models radon linear ar sv]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pymc as pm

import pymc_amortize
from pymc_amortize.examples.paper import linear_data, linear_model


def radon():
    from pymc_amortize.examples.radon import load_radon, radon_model

    data, coords = load_radon()
    return radon_model(data, coords=coords), None


def linear():
    return linear_model(linear_data(1_000, random_seed=0)), None


def ar_path(T: int = 400):
    rng = np.random.default_rng(10)
    x = np.zeros(T)
    for t in range(1, T):
        x[t] = 0.9 * x[t - 1] + rng.normal(0, 0.3)
    counts = rng.poisson(np.exp(1.0 + x))
    with pm.Model(coords={"day": np.arange(T)}) as model:
        rho = pm.Uniform("rho", -1, 1)
        sd = pm.HalfNormal("sd", 1)
        path = pm.AR("path", rho=[rho], sigma=sd, init_dist=pm.Normal.dist(0, 1), dims="day")
        pm.Poisson("counts", pm.math.exp(1.0 + path), observed=counts, dims="day")
    return model, {"path": "counts"}


def stochastic_volatility(T: int = 300):
    rng = np.random.default_rng(3)
    log_vol = np.cumsum(rng.normal(0, 0.1, T)) - 4
    returns = rng.standard_t(5, T) * np.exp(log_vol)
    with pm.Model(coords={"time": np.arange(T)}) as model:
        step = pm.Exponential("step_size", 10)
        vol = pm.GaussianRandomWalk(
            "volatility", sigma=step, init_dist=pm.Normal.dist(0, 10), dims="time"
        )
        nu = pm.Exponential("nu", 0.1)
        pm.StudentT("returns", nu=nu, lam=np.exp(-2 * vol), observed=returns, dims="time")
    return model, {"volatility": "returns"}


MODELS = {"radon": radon, "linear": linear, "ar": ar_path, "sv": stochastic_volatility}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        "| model | fit s (compile incl.) | steps s | check s | check ÷ fit | evaluation | units "
        "checked | gain nats ± SE | per unit | extrapolated nats | flagged |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, local = MODELS[name]()
        started = time.perf_counter()
        approx = pm.fit(
            args.steps,
            family="encoder",
            method="amortized",
            model=model,
            local=local,
            random_seed=args.seed,
            progressbar=False,
            gap_check=False,
        )
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        check = pymc_amortize.gap_check(approx, random_seed=args.seed)
        check_s = time.perf_counter() - started
        for c in check.plates.values():
            print(
                f"| {name} | {fit_s:.3g} | {np.nansum(approx.step_seconds):.3g} | {check_s:.2g} | "
                f"{check_s / fit_s:.1%} | {c.evaluation} | {c.n_checked} of {c.n_units} | "
                f"{c.gain:.3g} ± {c.standard_error:.2g} | {c.gain_per_unit:.3g} | "
                f"{c.extrapolated:.3g} ± {c.extrapolated_se:.2g} | {check.is_flagged(c)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
