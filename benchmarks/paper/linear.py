"""Experiment 1: the linear model, A-VI (d = 1, 2 polynomial encoders) vs F-VI vs Const.

x_n ~ N(θ + τ z_n, σ²), z_n ~ N(0, 1), flat θ; τ = 1.155, σ = 2.43 (the authors' code), N = 10,000.
Every final solution is scored by its exact ELBO and compared with the closed-form F-VI optimum.

    python -m benchmarks.paper.linear [--quick]
"""

from __future__ import annotations

import numpy as np

from benchmarks.paper import common
from pymc_amortize.examples.paper import linear_data, linear_elbo, linear_model, linear_optimum

# F-VI gets more steps than A-VI (the paper gave both 5,000, where some F-VI seeds had not
# converged); the 1 % target is then F-VI's converged loss.
FULL = {
    "n_units": 10_000,
    "steps": 5_000,
    "fvi_steps": 20_000,
    "seeds": list(range(10)),
    "learning_rate": 1e-2,
}
QUICK = FULL | {"steps": 3_000, "fvi_steps": 10_000, "seeds": [0, 1]}
# Medians over the authors' 10 seeds (their loss drops constants, so compare gaps).
PAPER = {
    "F-VI": {"loss": 6094, "steps_to_1pct": 2135},
    "Const": {"loss": 7232, "steps_to_1pct": "never"},
    "A-VI d=1": {"loss": 6088, "steps_to_1pct": 365},
    "A-VI d=2": {"loss": 6088, "steps_to_1pct": 700},
}
NOTES = [
    "Loss = −ELBO, exact (closed form at each final solution), constants kept.",
    "Both A-VI and F-VI use Adam with the same learning rate (the authors' code gave F-VI 1e-3 "
    "and A-VI 1e-2, which they later found explains much of A-VI's speed-up).",
    "Data drawn with θ = 0 as in the authors' code; one data set (seed 0), fit seeds vary.",
    "With the paper's constant learning rate (`--constant-lr`, 1e-2) F-VI's last iterate stays "
    "≈ 50 nats above the closed-form optimum (10,000 or 20,000 steps alike): each of its 2N "
    "per-unit parameters jitters under Adam's constant step and the jitter adds up over units, "
    "while A-VI's few encoder weights average over all units. The default cosine decay of the "
    "rate removes most of it for every method.",
]


def methods(x: np.ndarray, fvi_steps: int) -> list[common.Method]:
    return [
        common.fvi(steps=fvi_steps),
        common.const_method(x.size),
        common.amortized("A-VI d=1", local={"z": x[:, None]}, encoder_widths=()),
        common.amortized("A-VI d=2", local={"z": np.column_stack([x, x**2])}, encoder_widths=()),
    ]


def main(argv=None) -> dict:
    settings, out = common.parse_args(__doc__, argv, full=FULL, quick=QUICK)
    x = linear_data(settings["n_units"], random_seed=0)
    model = linear_model(x)
    opt = linear_optimum(x)
    optimum_loss = -linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)

    def score(params):
        (theta_mean, theta_sd), (z_mean, z_sd) = params["theta"], params["z"]
        loss = -linear_elbo(x, float(theta_mean), float(theta_sd), z_mean, z_sd)
        return {"loss": loss, "gap_to_optimum": loss - optimum_loss}

    print(f"Linear model, N = {x.size}; closed-form optimum loss {optimum_loss:,.2f}")
    runs = common.run_experiment(
        model,
        methods(x, settings["fvi_steps"]),
        seeds=settings["seeds"],
        steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        lr_schedule=settings["lr_schedule"],
        score=score,
    )
    return common.finish(
        "linear",
        runs,
        settings=settings,
        out=out,
        paper=PAPER,
        notes=NOTES,
        extra_metrics=("gap_to_optimum",),
        extra={"optimum_loss": optimum_loss},
        title=f"Linear model, N = {x.size}",
    )


if __name__ == "__main__":
    main()
