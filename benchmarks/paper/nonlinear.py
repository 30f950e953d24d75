"""Experiment 2: the nonlinear model, A-VI with MLP encoders of width k vs F-VI vs Const.

θ ~ N(0, 1), z_n ~ N(0, 1), x_n ~ N(θ + z_n(1 + sin z_n), cos² z_n + ε), ε = 0.1, N = 10,000.
Encoders: separate 1→k→k→1 ReLU MLPs for the mean and log-sd.

    python -m benchmarks.paper.nonlinear [--quick]
"""

from __future__ import annotations

from benchmarks.paper import common
from pymc_amortize.examples.paper import NONLINEAR_VARIANCE_FLOOR, nonlinear_data, nonlinear_model

FULL = {
    "n_units": 10_000,
    "steps": 20_000,
    "fvi_steps": 40_000,
    "seeds": list(range(10)),
    "widths": [1, 2, 4, 8, 16, 24, 32],
    "learning_rate": 1e-2,
}
QUICK = {
    "n_units": 1_000,
    "steps": 3_000,
    "fvi_steps": 12_000,
    "seeds": [0, 1],
    "widths": [1, 4, 16, 32],
    "learning_rate": 1e-2,
}
# Medians over the authors' 10 seeds at N = 10,000 (their loss drops constants: compare gaps).
PAPER = {
    "F-VI": {"loss": 32_399, "steps_to_1pct": 1_280},
    "Const": {"loss": 36_701},
    "A-VI k=1": {"loss": 36_490},
    "A-VI k=2": {"loss": 33_445},
    "A-VI k=4": {"loss": 32_494, "within_1pct": "7/10", "steps_to_1pct": 1_045},
    "A-VI k=8": {"within_1pct": "9/10"},
    "A-VI k=16": {"loss": 32_387, "within_1pct": "9/10", "steps_to_1pct": 555},
    "A-VI k=24": {"within_1pct": "8/10", "diverged": "2/10"},
    "A-VI k=32": {"loss": 32_386, "within_1pct": "4/10", "steps_to_1pct": 250, "diverged": "6/10"},
}
NOTES = [
    f"Variance cos² z + ε with ε = {NONLINEAR_VARIANCE_FLOOR} for every method: with ε = 0 (the "
    "paper as written) the ELBO is −∞. The authors' code used an exp(cos z) scale instead.",
    "θ ~ N(0, 1) and z simulated with sd 1, as the paper writes (the code: flat θ, z sd 5).",
    "Loss = −ELBO from 100 Monte Carlo draws of the model's logp at the final parameters "
    "(same draws for every method), constants kept. Quick settings use N = 1,000, where gaps are "
    "about a tenth of the paper's N = 10,000 gaps.",
    "F-VI runs 2× (full) or 4× (quick) the A-VI steps, so that the 1 % target is its converged "
    "loss; ADVI steps are cheap.",
    "Where A-VI's loss is below F-VI's, F-VI (ADVI started at z_n = 0) has stopped short of its "
    "optimum: the A-VI family is a subset of F-VI's, so F-VI's optimum is at least as good. "
    "z(1 + sin z) is not monotone, so single units can have bimodal posteriors and ADVI may settle "
    "in the worse mode. `F-VI from A-VI` (the paper's diagnostic: ADVI started at the widest "
    "encoder's means and sds, half the steps at a tenth of the rate) checks this: its loss is "
    "the best F-VI solution found, and A-VI's distance to it is the amortization gap.",
    "A diverged A-VI fit is stopped by the core's guard and scored at the best parameters it had.",
    'Structured family (`family="conditional"`, q(θ) ∏ q(z_n | θ, x_n)): no rows here. '
    "`python -m benchmarks.paper.conditional_probe` (N = 1,000, 8-8 encoder, Adam 1e-2 cosine, "
    "3,000 steps, seed 0) got the verdict *amortize* and the conditional family (3 Newton steps "
    "on the model's log density), then diverged at step 1 (DivergenceWarning: the loss and the "
    "parameters NaN) after about 500 s of compilation on the loaded 2-core machine; F-VI on the "
    "same data fitted (loss 1,959). The log density is not concave in z_n, so a Newton step from "
    "the encoder's start can overflow, the same failure the family's user guide lists for a "
    "location and log-scale local per unit.",
]


def methods(n_units: int, widths, fvi_steps: int) -> list[common.Method]:
    return [
        common.fvi(steps=fvi_steps),
        common.const_method(n_units),
        *(
            common.amortized(f"A-VI k={k}", width=k, local={"z": "x"}, encoder_widths=(k, k))
            for k in widths
        ),
    ]


def main(argv=None) -> dict:
    settings, out = common.parse_args(__doc__, argv, full=FULL, quick=QUICK)
    cache = common.run_cache("nonlinear", settings)
    x = nonlinear_data(settings["n_units"], random_seed=0)
    model = nonlinear_model(x)
    mc = common.mc_negative_elbo(model)
    print(f"Nonlinear model, N = {x.size}")
    runs = common.run_experiment(
        model,
        methods(x.size, settings["widths"], settings["fvi_steps"]),
        seeds=settings["seeds"],
        steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        lr_schedule=settings["lr_schedule"],
        score=lambda params: {"loss": mc(params)},
        cache=cache,
    )
    widest = [run for run in runs if run.method.width == max(settings["widths"])]
    runs += common.refine_with_fvi(
        model,
        widest,
        label="F-VI from A-VI",
        steps=settings["steps"] // 2,
        learning_rate=settings["learning_rate"] / 10,
        score=lambda params: {"loss": mc(params)},
        lr_schedule=settings["lr_schedule"],
        cache=cache,
    )
    return common.finish(
        "nonlinear",
        runs,
        settings=settings,
        out=out,
        paper=PAPER,
        notes=NOTES,
        title=f"Nonlinear model, N = {x.size}",
        sweep={},
    )


if __name__ == "__main__":
    main()
