"""The conditional local family against NUTS, beside the encoder family and ADVI (issue 23).

Each model is fitted by A-VI with ``family="conditional"`` (q(θ) ∏ q(z_n | θ, x_n), see
:mod:`pymc_amortize.guide.conditional`), by A-VI with the encoder family (q(θ) ∏ q(z_n; f(x_n))) and by
mean-field ADVI, all with Adam 3e-3 and :class:`~pymc_amortize.ELBOConvergence` (cap 30,000
steps), and compared with NUTS (4 x 1,000 after 1,000 tuning steps, ``target_accept=0.95``) in
NUTS sds: ``z_j = (mean_j − NUTS mean_j) / NUTS sd_j`` per unit, RMS and max |z|, and the mean
ratio of the sds. Wall seconds include compilation.

Models:

- ``radon``: the real Minnesota radon model of the main job (85 counties, 919 houses);
- ``unbalanced_normal`` / ``unbalanced_poisson``: 200 groups, most with 1–6 rows and five with
  300–3,000, a non-centred varying intercept and a row covariate;
- ``crossed``: persons x items (150 x 40, 30 % of the pairs observed), Gaussian;
- ``irt``: long-format 2PL IRT, persons x items (200 x 30, half the pairs observed), Bernoulli;
- ``nested``: schools in authorities, the authority effect in the schools' prior;
- ``lkj``: varying intercept and slope per group (an ``MvNormal`` with an LKJ Cholesky prior),
  with the per-group posterior correlation of intercept and slope against NUTS's.

    python -m benchmarks.conditional_family [--models radon,nested] [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pymc as pm

from benchmarks.harness import agreement, posterior_summary, sample_nuts
from pymc_amortize import ELBOConvergence
from pymc_amortize.examples.radon import load_radon, radon_model

#: A-VI's local family, and q(θ)'s family after a "+" (default mean-field); PyMC's ADVI.
METHODS = ("conditional+fullrank", "conditional", "encoder", "advi")


def unbalanced(likelihood: str) -> tuple[pm.Model, list[str]]:
    rng = np.random.default_rng(7)
    rows = rng.integers(1, 7, 200)
    rows[:5] = [300, 800, 1500, 2200, 3000]
    unit = np.repeat(np.arange(rows.size), rows)
    x = rng.normal(size=unit.size)
    eta = 0.3 + rng.normal(0, 0.5, rows.size)[unit] + 0.4 * x
    y = rng.normal(eta, 1.0) if likelihood == "normal" else rng.poisson(np.exp(eta))
    with pm.Model(coords={"g": np.arange(rows.size), "obs": np.arange(unit.size)}) as model:
        idx = pm.Data("idx", unit, dims="obs")
        xd = pm.Data("x", x, dims="obs")
        mu, beta, sd = pm.Normal("mu", 0, 5), pm.Normal("beta", 0, 5), pm.HalfNormal("sd", 1)
        a_raw = pm.Normal("a_raw", 0, 1, dims="g")
        a = pm.Deterministic("a", mu + sd * a_raw, dims="g")
        if likelihood == "normal":
            sigma = pm.HalfNormal("sigma", 1)
            pm.Normal("y", a[idx] + beta * xd, sigma, observed=y, dims="obs")
        else:
            pm.Poisson("y", pm.math.exp(a[idx] + beta * xd), observed=y, dims="obs")
    return model, ["a"]


def crossed() -> tuple[pm.Model, list[str]]:
    rng = np.random.default_rng(3)
    person, item = np.meshgrid(np.arange(150), np.arange(40), indexing="ij")
    keep = rng.random(person.size) < 0.3
    person, item = person.ravel()[keep.ravel()], item.ravel()[keep.ravel()]
    y = rng.normal(rng.normal(0, 1, 150)[person] + rng.normal(0, 0.7, 40)[item], 0.8)
    coords = {"person": np.arange(150), "item": np.arange(40), "obs": np.arange(y.size)}
    with pm.Model(coords=coords) as model:
        p = pm.Data("p", person, dims="obs")
        i = pm.Data("i", item, dims="obs")
        theta = pm.Normal("theta", 0, pm.HalfNormal("s_p", 1), dims="person")
        beta = pm.Normal("beta", pm.Normal("mu", 0, 2), pm.HalfNormal("s_i", 1), dims="item")
        pm.Normal("y", theta[p] + beta[i], pm.HalfNormal("sigma", 1), observed=y, dims="obs")
    return model, ["theta", "beta"]


def irt() -> tuple[pm.Model, list[str]]:
    """Long-format 2PL IRT: logit P(correct) = exp(log_a_i) θ_p + b_i, 200 persons x 30 items,
    half of the pairs observed; crossed plates, the items' with two latents each."""
    rng = np.random.default_rng(5)
    person, item = np.meshgrid(np.arange(200), np.arange(30), indexing="ij")
    keep = (rng.random(person.size) < 0.5).reshape(person.shape)
    person, item = person[keep], item[keep]
    log_a, b = rng.normal(0, 0.4, 30), rng.normal(-0.3, 1.0, 30)
    eta = np.exp(log_a)[item] * rng.normal(0, 1, 200)[person] + b[item]
    y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    coords = {"person": np.arange(200), "item": np.arange(30), "obs": np.arange(y.size)}
    with pm.Model(coords=coords) as model:
        p = pm.Data("p", person, dims="obs")
        i = pm.Data("i", item, dims="obs")
        theta = pm.Normal("theta", 0, 1, dims="person")
        log_a = pm.Normal("log_a", 0, pm.HalfNormal("s_a", 0.5), dims="item")
        b = pm.Normal("b", pm.Normal("mu_b", 0, 2), pm.HalfNormal("s_b", 1), dims="item")
        pm.Bernoulli("y", logit_p=pm.math.exp(log_a)[i] * theta[p] + b[i], observed=y, dims="obs")
    return model, ["theta", "log_a", "b"]


def nested() -> tuple[pm.Model, list[str]]:
    rng = np.random.default_rng(3)
    authority = rng.integers(0, 8, 60)
    school = rng.integers(0, 60, 1200)
    effect = rng.normal(0, 0.33, 8)[authority] + rng.normal(0, 0.5, 60)
    y = rng.normal(effect[school], 1.0)
    coords = {"auth": np.arange(8), "school": np.arange(60), "obs": np.arange(y.size)}
    with pm.Model(coords=coords) as model:
        idx = pm.Data("school_idx", school, dims="obs")
        auth = pm.Data("auth_of_school", authority, dims="school")
        a = pm.Normal("a", 0, pm.HalfNormal("sd_a", 1), dims="auth")
        s = pm.Normal("s", a[auth], pm.HalfNormal("sd_s", 1), dims="school")
        pm.Normal("y", s[idx], pm.HalfNormal("sigma", 1), observed=y, dims="obs")
    return model, ["s"]


def lkj() -> tuple[pm.Model, list[str]]:
    rng = np.random.default_rng(3)
    rows = rng.integers(2, 15, 60)
    unit = np.repeat(np.arange(60), rows)
    x = rng.normal(1.0, 1.0, unit.size)
    ab = rng.normal(size=(60, 2)) @ np.linalg.cholesky([[0.5, 0.3], [0.3, 0.4]]).T
    y = rng.normal(1 + ab[unit, 0] + (0.5 + ab[unit, 1]) * x, 0.7)
    coords = {"g": np.arange(60), "k": ["a", "b"], "obs": np.arange(y.size)}
    with pm.Model(coords=coords) as model:
        u = pm.Data("u", unit, dims="obs")
        xd = pm.Data("x", x, dims="obs")
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=2, sd_dist=pm.Exponential.dist(1, shape=2))
        z = pm.MvNormal("ab", 0, chol=chol, dims=("g", "k"))
        mu = pm.Normal("m0", 0, 5) + z[u, 0] + (pm.Normal("m1", 0, 5) + z[u, 1]) * xd
        pm.Normal("y", mu, pm.HalfNormal("sigma", 1), observed=y, dims="obs")
    return model, ["ab"]


def radon() -> tuple[pm.Model, list[str]]:
    data, coords = load_radon()
    return radon_model(data, coords=coords), ["a"]


MODELS = {
    "radon": radon,
    "unbalanced_normal": lambda: unbalanced("normal"),
    "unbalanced_poisson": lambda: unbalanced("poisson"),
    "crossed": crossed,
    "irt": irt,
    "nested": nested,
    "lkj": lkj,
}


def _fit(model: pm.Model, method: str, steps: int, seed: int):
    options = dict(
        obj_optimizer=pm.adam(learning_rate=3e-3),
        callbacks=[ELBOConvergence()],
        random_seed=seed,
        progressbar=False,
    )
    with model:
        if method == "advi":
            return pm.fit(steps, method="advi", **options).sample(
                4000, random_seed=seed + 1, return_inferencedata=True
            )
        family, _, global_family = method.partition("+")
        approx = pm.fit(
            steps,
            method="amortized",
            family=family,
            global_family=global_family or "meanfield",
            gap_check=False,
            **options,
        )
        return approx.sample(4000, random_seed=seed + 1)


def correlation(idata, name: str) -> np.ndarray:
    """Per-unit posterior correlation of the two event entries of ``name`` (units, 2)."""
    draws = idata["posterior"][name].stack(sample=("chain", "draw")).to_numpy()
    a, b = draws[:, 0] - draws[:, 0].mean(-1, keepdims=True), draws[:, 1]
    b = b - b.mean(-1, keepdims=True)
    return (a * b).mean(-1) / (a.std(-1) * b.std(-1))


def run(names, *, steps: int, nuts_draws: int, seed: int) -> list[dict]:
    rows = []
    for name in names:
        model, effects = MODELS[name]()
        nuts, _ = sample_nuts(
            model,
            draws=nuts_draws,
            tune=nuts_draws,
            chains=4,
            seed=1,
            sampler="pymc",
            cores=1,
            target_accept=0.95,
        )
        ref = posterior_summary(nuts, (), effects)
        for method in METHODS:
            started = time.perf_counter()
            idata = _fit(model, method, steps, seed)
            seconds = time.perf_counter() - started
            fit = posterior_summary(idata, (), effects)
            row = {"model": name, "method": method, "seconds": seconds}
            for effect in effects:
                # Vector effects (the LKJ's (g, k)) are compared entry by entry.
                flat = {k: np.ravel(v) for k, v in fit.items()}
                flat_ref = {k: np.ravel(v) for k, v in ref.items()}
                row |= {f"{effect}_{k}": v for k, v in agreement(flat, flat_ref, effect).items()}
                if fit[f"{effect}_mean"].ndim == 2:
                    diff = np.abs(correlation(idata, effect) - correlation(nuts, effect))
                    row[f"{effect}_corr_max_diff"] = float(diff.max())
            rows.append(row)
            print(
                "  ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                ),
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--quick", action="store_true", help="1,000 steps, 200 NUTS draws")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = set(names) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; known: {', '.join(MODELS)}")
    run(
        names,
        steps=1_000 if args.quick else 30_000,
        nuts_draws=200 if args.quick else 1_000,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
