"""Issue 24 item 2: ``pm.fit(method="amortized")`` with no settings, before and after its defaults
converged, against PyMC's NUTS (2 chains × 1,000 draws, ``random_seed=0``).

    source scripts/env.sh && PYTHONPATH=. python -m benchmarks.default_convergence [--old] [model ...]

``--old`` reproduces the former defaults (10,000 steps, Adam 1e-3, no stop:
``n=10_000, obj_optimizer=pm.adam(learning_rate=1e-3), convergence=False``). Each line is one fit
(``random_seed=1``; ``batch_size=100`` at 1,000 groups): steps run, wall seconds of the ``pm.fit``
call (compile included, partly cached by PyTensor from earlier runs), and the local latent's
posterior means against NUTS in NUTS sds (RMS and max |z|; mean sd ratio), the globals' largest
|z|, and ``approx.settings["converged"]``. The models are those of
:mod:`benchmarks.perf.user_models` plus a row plate (``x_n ~ N(θ + z_n, 1)``, 1,000 units).
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import pymc as pm

import pymc_amortize  # noqa: F401  (registers method="amortized")
from benchmarks.perf import user_models as um


def row_plate() -> pm.Model:
    x = np.random.default_rng(3).normal(1.0, np.sqrt(2.0), size=1000)
    with pm.Model(coords={"unit": range(x.size)}) as model:
        theta = pm.Normal("theta", 0, 10)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("x", theta + z, 1.0, observed=x, dims="unit")
    return model


#: name: (builder, the local latent compared, fit options)
MODELS = {
    "radon": (um.radon, "a", {}),
    "poisson_glmm_300": (lambda: um.poisson_glmm(300), "a", {}),
    "logistic_300": (lambda: um.logistic(300), "z", {}),
    "eight_schools": (um.eight_schools, "theta", {}),
    "row_plate_1000": (row_plate, "z", {}),
    "poisson_glmm_1000": (lambda: um.poisson_glmm(1000), "a", {"batch_size": 100}),
}
OLD_DEFAULTS = {"n": 10_000, "learning_rate": 1e-3, "convergence": False}


def nuts(model, names) -> dict:
    with model:
        idata = pm.sample(
            1000,
            tune=1000,
            chains=2,
            random_seed=0,
            progressbar=False,
            compute_convergence_checks=False,
        )
    post = idata.posterior
    return {
        n: (post[n].mean(("chain", "draw")).values, post[n].std(("chain", "draw")).values)
        for n in names
    }


def run(name: str, *, old: bool) -> dict:
    build, local, options = MODELS[name]
    model = build()
    globals_ = [rv.name for rv in model.free_RVs if rv.ndim == 0]
    ref = nuts(model, [local, *globals_])
    options = dict(options)
    if old:
        options |= {k: v for k, v in OLD_DEFAULTS.items() if k != "learning_rate"}
        options["obj_optimizer"] = pm.adam(learning_rate=OLD_DEFAULTS["learning_rate"])
    started = time.perf_counter()
    with model, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        approx = pm.fit(method="amortized", progressbar=False, random_seed=1, **options)
    wall = time.perf_counter() - started
    post = approx.sample(2000, random_seed=2).posterior

    def z(n):
        mean, sd = ref[n]
        return (post[n].mean(("chain", "draw")).values - mean) / sd

    local_z = z(local)
    return {
        "model": name,
        "defaults": "old" if old else "new",
        "steps": int(np.size(approx.hist)),
        "wall_s": round(wall, 1),
        "rms_z": round(float(np.sqrt(np.mean(local_z**2))), 3),
        "max_abs_z": round(float(np.abs(local_z).max()), 3),
        "sd_ratio": round(
            float(np.mean(post[local].std(("chain", "draw")).values / ref[local][1])), 3
        ),
        "globals_max_abs_z": {n: round(float(np.abs(z(n)).max()), 2) for n in globals_},
        "converged": approx.settings.get("converged"),
        "warnings": sorted(
            {type(w.message).__name__ for w in caught if issubclass(w.category, UserWarning)}
        ),
    }


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    old = "--old" in argv
    names = [a for a in argv if a != "--old"] or list(MODELS)
    for name in names:
        print(json.dumps(run(name, old=old)), flush=True)


if __name__ == "__main__":
    main()
