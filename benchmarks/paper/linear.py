"""Experiment 1: the linear model, A-VI (d = 1, 2 polynomial encoders) vs F-VI vs Const.

x_n ~ N(θ + τ z_n, σ²), z_n ~ N(0, 1), flat θ; τ = 1.155, σ = 2.43 (the authors' code), N = 10,000.
Every final solution is scored by its exact ELBO and compared with the closed-form F-VI optimum.

    python -m benchmarks.paper.linear [--quick]
"""

from __future__ import annotations

import numpy as np

from benchmarks.paper import common
from pymc_amortize.examples.paper import (
    LINEAR_SIGMA,
    LINEAR_TAU,
    linear_data,
    linear_elbo,
    linear_model,
    linear_optimum,
)

# F-VI gets more steps than A-VI (the paper gave both 5,000, where some F-VI seeds had not
# converged); the 1 % target is then F-VI's converged loss.
FULL = {
    "n_units": 10_000,
    "steps": 5_000,
    "fvi_steps": 20_000,
    "seeds": list(range(10)),
    "learning_rate": 1e-2,
    "conditional": True,
}
QUICK = FULL | {"steps": 3_000, "fvi_steps": 10_000, "seeds": [0, 1], "conditional": False}
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
    '`A-VI conditional`: the structured family q(θ) ∏ q(z_n | θ, x_n) (`family="conditional"`, '
    "affine encoder start, 3 Newton steps). Its family holds the exact posterior (a Gaussian "
    "q(θ) times the exact conditionals), so its optimum is log p(x), 0.10 nats beyond F-VI's "
    "mean-field optimum. `loss`: the exact −ELBO of q(θ) p(z | θ, x) in closed form; "
    "`gap_to_evidence` = loss + log p(x) (0 if exact); `theta_sd_ratio`: q(θ)'s sd over the "
    "exact posterior's (mean-field F-VI has 0.90); `cond_*`: its own z draws (200 draws of θ ~ "
    "q(θ), `approx.conditional_sampler`) standardised by the exact conditional N(τ(x_n − θ)/"
    "(σ² + τ²), σ²/(σ² + τ²)): mean 0, variance 1 and unit RMS ≈ 1 if exact; "
    "`train_loss_tail`: the mean training loss of the last 1,000 steps (Monte Carlo, sd ≈ "
    "√(N/2) per step).",
]


def log_evidence(x: np.ndarray, tau: float = LINEAR_TAU, sigma: float = LINEAR_SIGMA) -> float:
    """log p(x) with z integrated out and the flat θ: x_n ~ N(θ, τ² + σ²) given θ."""
    v, n = tau**2 + sigma**2, x.size
    spread = ((x - x.mean()) ** 2).sum()
    return float(
        -0.5 * n * np.log(2 * np.pi * v) - spread / (2 * v) + 0.5 * np.log(2 * np.pi * v / n)
    )


def collapsed_elbo(x, theta_mean, theta_sd, tau: float = LINEAR_TAU, sigma: float = LINEAR_SIGMA):
    """ELBO of q(θ) p(z | θ, x): E_q log p(θ, x) + H[q(θ)], in closed form (max: log p(x))."""
    v, n = tau**2 + sigma**2, x.size
    spread = ((x - x.mean()) ** 2).sum() + n * (theta_mean - x.mean()) ** 2 + n * theta_sd**2
    return float(
        -0.5 * n * np.log(2 * np.pi * v)
        - spread / (2 * v)
        + 0.5 * np.log(2 * np.pi * np.e * theta_sd**2)
    )


def conditional_check(approx, x, draws: int, seed: int = 0) -> dict[str, float]:
    """Draws of z given draws of θ from the fitted q(z | θ, x) against the exact conditional
    N(τ(x_n − θ)/(σ² + τ²), σ²/(σ² + τ²)): standardised residuals r, their mean and variance
    over every unit and draw (0 and 1 if exact) and the RMS over units of √draws · (unit mean of
    r) (≈ 1 if exact: Monte Carlo error only)."""
    rng = np.random.default_rng(seed)
    m, s = (float(np.ravel(a)[0]) for a in approx.global_factors()["theta"])
    theta = m + s * rng.standard_normal(draws)
    z = approx.conditional_sampler({"theta": theta}, rng)["z"]
    v = LINEAR_TAU**2 + LINEAR_SIGMA**2
    r = (z - LINEAR_TAU * (x[None, :] - theta[:, None]) / v) / (LINEAR_SIGMA / np.sqrt(v))
    return {
        "cond_resid_mean": float(r.mean()),
        "cond_resid_var": float(r.var()),
        "cond_unit_rms": float(np.sqrt(draws) * np.sqrt((r.mean(axis=0) ** 2).mean())),
    }


def conditional_scorer(x: np.ndarray, optimum_loss: float, evidence: float):
    exact_sd = float(np.sqrt((LINEAR_TAU**2 + LINEAR_SIGMA**2) / x.size))

    def score(approx) -> dict:
        mean, sd = (float(np.ravel(a)[0]) for a in approx.global_factors()["theta"])
        loss = -collapsed_elbo(x, mean, sd)
        tail = np.asarray(approx.hist[-1000:], float)
        return {
            "loss": loss,
            "gap_to_optimum": loss - optimum_loss,
            "gap_to_evidence": loss + evidence,
            "theta_mean_err": mean - float(x.mean()),
            "theta_sd_ratio": sd / exact_sd,
            "train_loss_tail": float(tail.mean()),
            **conditional_check(approx, x, draws=200),
        }

    return score


def methods(x: np.ndarray, fvi_steps: int, conditional_score=None) -> list[common.Method]:
    out = [
        common.fvi(steps=fvi_steps),
        common.const_method(x.size),
        common.amortized("A-VI d=1", local={"z": x[:, None]}, encoder_widths=()),
        common.amortized("A-VI d=2", local={"z": np.column_stack([x, x**2])}, encoder_widths=()),
    ]
    if conditional_score is not None:
        out.append(
            common.conditional(
                "A-VI conditional", conditional_score, local={"z": x[:, None]}, encoder_widths=()
            )
        )
    return out


#: Columns of the conditional family's exactness checks (empty for the mean-field methods).
EXTRA = ("gap_to_optimum", *common.CONDITIONAL_METRICS)


def main(argv=None) -> dict:
    settings, out = common.parse_args(__doc__, argv, full=FULL, quick=QUICK)
    cache = common.run_cache("linear", settings)
    x = linear_data(settings["n_units"], random_seed=0)
    model = linear_model(x)
    opt = linear_optimum(x)
    optimum_loss = -linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)

    def score(params):
        (theta_mean, theta_sd), (z_mean, z_sd) = params["theta"], params["z"]
        loss = -linear_elbo(x, float(theta_mean), float(theta_sd), z_mean, z_sd)
        return {"loss": loss, "gap_to_optimum": loss - optimum_loss}

    evidence = log_evidence(x)
    print(
        f"Linear model, N = {x.size}; closed-form F-VI optimum loss {optimum_loss:,.2f}; "
        f"−log p(x) {-evidence:,.2f}"
    )
    cond = conditional_scorer(x, optimum_loss, evidence) if settings["conditional"] else None
    runs = common.run_experiment(
        model,
        methods(x, settings["fvi_steps"], cond),
        seeds=settings["seeds"],
        steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        lr_schedule=settings["lr_schedule"],
        score=score,
        cache=cache,
    )
    return common.finish(
        "linear",
        runs,
        settings=settings,
        out=out,
        paper=PAPER,
        notes=NOTES,
        extra_metrics=EXTRA if settings["conditional"] else ("gap_to_optimum",),
        extra={
            "optimum_loss": optimum_loss,
            "log_evidence": evidence,
            "exact_theta_sd": float(np.sqrt((LINEAR_TAU**2 + LINEAR_SIGMA**2) / x.size)),
            "fvi_theta_sd": opt.theta_sd,
        },
        title=f"Linear model, N = {x.size}",
    )


if __name__ == "__main__":
    main()
