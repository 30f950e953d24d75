"""The README's picture: exact ELBO against wall time, A-VI vs ADVI on the paper's linear model.

Both methods fit the same PyMC model with the same optimizer (Adam, learning rate 1e-2). Every
``--every`` steps a callback computes the exact ELBO of the current q (the model is
linear-Gaussian, so no Monte Carlo error) and the time spent since ``pm.fit`` was called,
compilation included and the callback's own time excluded.

    python -m benchmarks.readme_figure [--n-units 10000] [--out docs/_static/elbo_vs_time.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pymc as pm

import pymc_amortize  # noqa: F401  (registers method="amortized")
from benchmarks.linear_avi_vs_advi import meanfield_params
from pymc_amortize.examples.paper import linear_data, linear_elbo, linear_model, linear_optimum


class ExactELBOTrace:
    """PyMC callback: (seconds of optimisation, exact ELBO) every ``every`` steps."""

    def __init__(self, x: np.ndarray, elbo_of, *, every: int):
        self.x, self.elbo_of, self.every = x, elbo_of, every
        self.start = time.perf_counter()
        self.excluded = 0.0
        self.seconds: list[float] = []
        self.elbos: list[float] = []

    def __call__(self, approx, losses, i):
        if i % self.every:
            return
        entered = time.perf_counter()
        self.seconds.append(entered - self.start - self.excluded)
        self.elbos.append(self.elbo_of(approx))
        self.excluded += time.perf_counter() - entered


def avi_elbo(x: np.ndarray):
    def elbo(approx) -> float:
        q = approx.encode()["z"]
        theta_mean = float(approx.global_group.mean.get_value()[0])
        theta_sd = float(np.logaddexp(0.0, approx.global_group.rho.get_value()[0]))
        return linear_elbo(x, theta_mean, theta_sd, q.mean, q.sd)

    return elbo


def advi_elbo(x: np.ndarray):
    def elbo(approx) -> float:
        theta_mean, theta_sd = meanfield_params(approx, "theta")
        z_mean, z_sd = meanfield_params(approx, "z")
        return linear_elbo(x, float(theta_mean), float(theta_sd), z_mean, z_sd)

    return elbo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-units", type=int, default=10_000)
    parser.add_argument("--avi-steps", type=int, default=5_000)
    parser.add_argument("--advi-steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/_static/elbo_vs_time.png"))
    args = parser.parse_args(argv)

    x = linear_data(args.n_units, random_seed=args.seed)
    model = linear_model(x)
    opt = linear_optimum(x)
    optimum = linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)

    traces = {}
    with model:
        for label, method, steps, elbo_of, options in [
            ("A-VI, affine encoder", "amortized", args.avi_steps, avi_elbo, {"encoder_widths": ()}),
            ("ADVI, a mean and sd per unit", "advi", args.advi_steps, advi_elbo, {}),
        ]:
            trace = ExactELBOTrace(x, elbo_of(x), every=args.every)
            approx = pm.fit(
                steps,
                method=method,
                obj_optimizer=pm.adam(learning_rate=1e-2),
                random_seed=args.seed,
                progressbar=False,
                callbacks=[trace],
                **options,
            )
            trace.seconds.append(time.perf_counter() - trace.start - trace.excluded)
            trace.elbos.append(elbo_of(x)(approx))
            traces[label] = trace

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    for (label, trace), color in zip(traces.items(), ["C0", "C1"], strict=True):
        gap = optimum - np.asarray(trace.elbos)
        ax.plot(trace.seconds, np.maximum(gap, 1e-2), color=color, label=label)
        print(
            f"{label}: {len(trace.elbos) - 1} checkpoints, final ELBO {trace.elbos[-1]:,.2f} "
            f"(optimum {optimum:,.2f}, gap {gap[-1]:.2f}) after {trace.seconds[-1]:.1f} s"
        )
    ax.set_yscale("log")
    ax.set_xlabel("wall time since pm.fit was called (s), compilation included")
    ax.set_ylabel("optimal ELBO − ELBO (nats)")
    ax.set_title(
        f"Linear model, N = {args.n_units:,} units: distance to the best ELBO over time",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(frameon=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
