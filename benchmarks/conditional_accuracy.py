"""The conditional family's Laplace and variational (quadrature) steps against NUTS.

The models and settings of :mod:`benchmarks.conditional_family` (Adam 3e-3, ``ELBOConvergence``
with a cap of 30,000 steps; NUTS 4 x 1,000 after 1,000 tuning steps, ``target_accept=0.95``, seed
1), for the conditional family only, one row per variant of :class:`ConditionalGaussian`:

* ``laplace``: ``quadrature=1``, q(z_n | θ) at the conditional mode and curvature;
* ``variational``: the default, the Gaussian-VI optimum of p(z_n | θ, x_n) by quadrature.

z per unit in NUTS sds, RMS / max |z|, mean sd ratio. The NUTS reference of each model is kept in
``--cache`` (a directory) between runs, as it does not change.

    python -m benchmarks.conditional_accuracy [--models unbalanced_poisson] [--variants ...]
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import pymc as pm

from benchmarks.conditional_family import MODELS
from benchmarks.harness import agreement, posterior_summary, sample_nuts
from pymc_amortize import ELBOConvergence
from pymc_amortize.guide.conditional import ConditionalGaussian

VARIANTS = {
    "laplace": ConditionalGaussian(quadrature=1),
    "variational": ConditionalGaussian(),
}


def reference(name: str, model: pm.Model, effects: list[str], cache: Path, draws: int) -> dict:
    path = cache / f"nuts_{name}_{draws}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    nuts, _ = sample_nuts(
        model, draws=draws, tune=draws, chains=4, seed=1, sampler="pymc", cores=1,
        target_accept=0.95,
    )  # fmt: skip
    ref = posterior_summary(nuts, (), effects)
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
            started = time.process_time()
            with model:
                approx = pm.fit(
                    args.steps,
                    method="amortized",
                    family=VARIANTS[variant],
                    gap_check=False,
                    obj_optimizer=pm.adam(learning_rate=3e-3),
                    callbacks=[ELBOConvergence()],
                    random_seed=args.seed,
                    progressbar=False,
                )
            idata = approx.sample(4000, random_seed=args.seed + 1)
            seconds = time.process_time() - started
            fit = posterior_summary(idata, (), effects)
            for effect in effects:
                a = agreement(fit, ref, effect)
                z = (fit[f"{effect}_mean"] - ref[f"{effect}_mean"]) / ref[f"{effect}_sd"]
                print(
                    f"{name} {variant} {effect}: rms_z {a['rms_z']:.3f}  max_abs_z "
                    f"{a['max_abs_z']:.3f}  sd_ratio {a['sd_ratio']:.3f}  steps {len(approx.hist)}"
                    f"  cpu_s {seconds:.0f}  worst units {np.argsort(-np.abs(z))[:5].tolist()}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
