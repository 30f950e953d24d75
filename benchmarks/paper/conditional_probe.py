"""What ``family="conditional"`` does on the paper's nonlinear model (issue 25, item 2).

The structured family q(θ) ∏ q(z_n | θ, x_n) takes each unit's Gaussian from Newton steps on the
model's log density given a draw of θ. The nonlinear model's log density is not concave in z_n
(x_n ~ N(θ + z_n(1 + sin z_n), cos² z_n + ε)), so the Newton steps are not guaranteed to stay
finite. This fits it once, with the experiment's encoder and optimiser, and prints the analysis,
whether it diverged, the compile and fit seconds and the mean training loss of the last steps,
beside ADVI (F-VI) on the same data.

    python -m benchmarks.paper.conditional_probe [--n-units 1000] [--steps 3000] [--width 8]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pymc as pm

import pymc_amortize  # noqa: F401  (registers method="amortized")
from benchmarks.paper import common
from pymc_amortize.examples.paper import nonlinear_data, nonlinear_model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-units", type=int, default=1_000)
    parser.add_argument("--steps", type=int, default=3_000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x = nonlinear_data(args.n_units, random_seed=0)
    model = nonlinear_model(x)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, model:
        warnings.simplefilter("always")
        approx = pm.fit(
            args.steps,
            method="amortized",
            family="conditional",
            local={"z": "x"},
            encoder_widths=(args.width, args.width),
            convergence=False,
            gap_check=False,
            obj_optimizer=common.optimizer(args.learning_rate, args.steps, "cosine"),
            random_seed=args.seed,
            progressbar=False,
        )
    seconds = time.perf_counter() - start
    hist = np.asarray(approx.hist, float)
    out = {
        "analysis": approx.settings.get("analysis"),
        "seconds_with_compilation": seconds,
        "steps_run": int(hist.size),
        "finite_losses": int(np.isfinite(hist).sum()),
        "train_loss_tail": float(np.nanmean(hist[-1000:])) if np.isfinite(hist).any() else None,
        "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught}),
    }
    mc = common.mc_negative_elbo(model)
    fvi = common.fit_one(
        model,
        common.fvi(),
        steps=4 * args.steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
        score=lambda params: {"loss": mc(params)},
    )
    out["fvi_loss"] = fvi.loss
    out["fvi_train_loss_tail"] = float(fvi.hist[-1000:].mean())
    for key, value in out.items():
        print(f"{key}: {value}")
    return out


if __name__ == "__main__":
    main()
