"""The conditional family's Laplace and variational (quadrature) steps against NUTS.

The models and settings of :mod:`benchmarks.conditional_family` (Adam 3e-3, ``ELBOConvergence``
with a cap of 30,000 steps; NUTS 4 x 1,000 after 1,000 tuning steps, ``target_accept=0.95``, seed
1), for the conditional family only, one row per variant of :class:`ConditionalGaussian`:

* ``laplace``: ``quadrature=1``, q(z_n | θ) at the conditional mode and curvature;
* ``variational``: the default, the Gaussian-VI optimum of p(z_n | θ, x_n) by quadrature;
* ``encoder`` and ``advi``: A-VI's encoder family and PyMC's mean-field ADVI, for comparison.

For a local with two entries per unit (the LKJ model's ``ab``) the row also gives the largest
difference over units of the posterior correlation of the two entries from NUTS's.

z per unit in NUTS sds, RMS / max |z|, mean sd ratio; steps; CPU seconds of the fit and 4,000
draws, of which ``first_step_cpu_s`` is the graph, compile and first step; wall seconds. The
NUTS reference of each model is kept in ``--cache`` (a directory) between runs, as it does not
change.

    python -m benchmarks.conditional_accuracy [--models unbalanced_poisson] [--variants ...]
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import pymc as pm

from benchmarks.conditional_family import MODELS, correlation
from benchmarks.harness import agreement, posterior_summary, sample_nuts
from pymc_amortize import ELBOConvergence
from pymc_amortize.guide.conditional import ConditionalGaussian

VARIANTS = {
    "laplace": ConditionalGaussian(quadrature=1),
    "variational": ConditionalGaussian(),
    "encoder": "encoder",
    "advi": "advi",
}


def reference(name: str, model: pm.Model, effects: list[str], cache: Path, draws: int) -> dict:
    path = cache / f"nuts_{name}_{draws}_v2.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    nuts, _ = sample_nuts(
        model, draws=draws, tune=draws, chains=4, seed=1, sampler="pymc", cores=1,
        target_accept=0.95,
    )  # fmt: skip
    ref = posterior_summary(nuts, (), effects)
    for effect in effects:
        if ref[f"{effect}_mean"].ndim == 2:
            ref[f"{effect}_corr"] = correlation(nuts, effect)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(ref))
    return ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unbalanced_poisson,radon,unbalanced_normal")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--nuts-draws", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(".benchmark_cache"))
    args = parser.parse_args()
    for name in args.models.split(","):
        model, effects = MODELS[name]()
        ref = reference(name, model, effects, args.cache, args.nuts_draws)
        for variant in args.variants.split(","):
            started, wall = time.process_time(), time.perf_counter()
            first: list[float] = []

            def first_step(approx, losses, i, first=first, started=started):
                # Graph building + compiling + the first step, in CPU seconds.
                if not first:
                    first.append(time.process_time() - started)

            options = dict(
                obj_optimizer=pm.adam(learning_rate=3e-3),
                callbacks=[first_step, ELBOConvergence()],
                random_seed=args.seed,
                progressbar=False,
            )
            with model:
                if VARIANTS[variant] == "advi":
                    approx = pm.fit(args.steps, method="advi", **options)
                else:
                    approx = pm.fit(
                        args.steps,
                        method="amortized",
                        family=VARIANTS[variant],
                        gap_check=False,
                        **options,
                    )
            idata = approx.sample(4000, random_seed=args.seed + 1, return_inferencedata=True)
            seconds = time.process_time() - started
            wall_s = time.perf_counter() - wall
            fit = posterior_summary(idata, (), effects)
            for effect in effects:
                flat = {k: np.ravel(v) for k, v in fit.items()}
                a = agreement(flat, {k: np.ravel(v) for k, v in ref.items()}, effect)
                z = np.ravel(fit[f"{effect}_mean"] - ref[f"{effect}_mean"]) / np.ravel(
                    ref[f"{effect}_sd"]
                )
                corr = ""
                if f"{effect}_corr" in ref:
                    diff = np.abs(correlation(idata, effect) - ref[f"{effect}_corr"])
                    corr = f"  corr_max_diff {diff.max():.3f}  corr_mean_diff {diff.mean():.3f}"
                print(
                    f"{name} {variant} {effect}: rms_z {a['rms_z']:.3f}  max_abs_z "
                    f"{a['max_abs_z']:.3f}  sd_ratio {a['sd_ratio']:.3f}  steps {len(approx.hist)}"
                    f"  cpu_s {seconds:.0f}  first_step_cpu_s {first[0]:.0f}  wall_s {wall_s:.0f}"
                    f"  worst units {np.argsort(-np.abs(z))[:5].tolist()}{corr}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
