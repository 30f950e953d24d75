"""The paper's models for the performance benchmarks, as ordinary PyMC models, with F-VI optima.

The models themselves are :mod:`pymc_amortize.examples.paper`'s; this module draws the benchmark data
sets, picks each model's encoder and provides the F-VI optima.

* linear: x_n ~ N(θ + τ z_n, σ²), z_n ~ N(0, 1), flat θ (from :mod:`pymc_amortize.examples.paper`).
* nonlinear: θ ~ N(0, 1), z_n ~ N(0, 1), x_n ~ N(θ + z_n(1 + sin z_n), cos² z_n + ε). The paper's
  variance cos² z_n makes the ELBO −∞ for any Gaussian q; we floor it with ε = ``NONLINEAR_FLOOR``
  and use the same model for every method.
* saw (i = 2): θ ~ N(0, 1), x_0 = 0, z_n ~ N(x_{n−1}, 1), x_n ~ N(α(θ + z_n), 1), α = 0.75; the
  encoder sees (x_{n−1}, x_n).

The F-VI (mean-field Gaussian) optimum is exact for the two Gaussian models (mean = posterior mean,
variance = 1 / diagonal of the posterior precision). The nonlinear model has none, so its reference
is a deterministic optimisation: the ELBO by Gauss–Hermite quadrature (θ and each z_n are scalars),
each unit's mean started at the best of a grid, then L-BFGS on all 2N + 2 parameters (JAX).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pymc as pm

from pymc_amortize.examples.paper import (
    NONLINEAR_VARIANCE_FLOOR,
    SAW_ALPHA,
    linear_data,
    linear_elbo,
    linear_model,
    linear_optimum,
    nonlinear_model,
    saw_logjoint,
    saw_model,
)

__all__ = ["BenchModel", "build", "fvi_optimum"]

NONLINEAR_FLOOR = NONLINEAR_VARIANCE_FLOOR
_CACHE = Path(__file__).parent / "results" / "optima.json"


@dataclass(frozen=True)
class BenchModel:
    """A model, what A-VI needs to fit it, and the data it was built from."""

    name: str
    model: pm.Model
    local: dict
    encoder_widths: tuple[int, ...]
    data: dict


def nonlinear_data(n_units: int, *, random_seed: int = 0) -> dict:
    rng = np.random.default_rng(random_seed)
    theta = rng.standard_normal()
    z = rng.standard_normal(n_units)
    sd = np.sqrt(np.cos(z) ** 2 + NONLINEAR_FLOOR)
    x = theta + z * (1 + np.sin(z)) + sd * rng.standard_normal(n_units)
    return {"x": x, "theta": theta, "z": z}


def saw_data(n_units: int, *, random_seed: int = 0) -> dict:
    rng = np.random.default_rng(random_seed)
    theta = rng.standard_normal()
    x_prev, xs, zs = 0.0, [], []
    for _ in range(n_units):
        z = x_prev + rng.standard_normal()
        x_prev = SAW_ALPHA * (theta + z) + rng.standard_normal()
        zs.append(z)
        xs.append(x_prev)
    x = np.asarray(xs)
    return {"x": x, "x_prev": np.concatenate([[0.0], x[:-1]]), "theta": theta, "z": np.array(zs)}


def build(name: str, n_units: int | None = None, *, random_seed: int = 0) -> BenchModel:
    """One of "linear", "nonlinear", "saw" at the paper's N unless ``n_units`` is given."""
    if name == "linear":
        x = linear_data(n_units or 10_000, random_seed=random_seed)
        return BenchModel(name, linear_model(x), {"z": "x"}, (), {"x": x})
    if name == "nonlinear":
        data = nonlinear_data(n_units or 10_000, random_seed=random_seed)
        model = nonlinear_model(data["x"], variance_floor=NONLINEAR_FLOOR)
        return BenchModel(name, model, {"z": "x"}, (16, 16), data)
    if name == "saw":
        data = saw_data(n_units or 1_000, random_seed=random_seed)
        return BenchModel(
            name, saw_model(data["x"], alpha=SAW_ALPHA), {"z": ["x_prev", "x"]}, (4, 4), data
        )
    raise ValueError(f"unknown model {name!r}; use linear, nonlinear or saw")


# -- F-VI optima ------------------------------------------------------------------------------
def _saw_optimum(data: dict) -> float:
    joint = saw_logjoint(data["x"], alpha=SAW_ALPHA)
    return joint.elbo(*joint.optimum())


def _nonlinear_optimum(data: dict) -> float:
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize

    jax.config.update("jax_enable_x64", True)
    x = jnp.asarray(data["x"])
    uz, wz = np.polynomial.hermite_e.hermegauss(40)
    ut, wt = np.polynomial.hermite_e.hermegauss(7)
    wz, wt = jnp.asarray(wz / wz.sum()), jnp.asarray(wt / wt.sum())
    uz, ut = jnp.asarray(uz), jnp.asarray(ut)

    def unit_terms(theta_nodes, m, log_s):
        z = m[:, None] + jnp.exp(log_s)[:, None] * uz  # (N, Q)
        var = jnp.cos(z) ** 2 + NONLINEAR_FLOOR
        mu = theta_nodes[:, None, None] + z * (1 + jnp.sin(z))  # (T, N, Q)
        loglik = -0.5 * (jnp.log(2 * jnp.pi * var) + (x[:, None] - mu) ** 2 / var)
        logprior = -0.5 * (jnp.log(2 * jnp.pi) + z**2)
        per_unit = (loglik + logprior) @ wz  # (T, N)
        return (wt @ per_unit) + log_s + 0.5 * jnp.log(2 * jnp.pi * jnp.e)  # (N,)

    def elbo(params):
        mt, lst, m, log_s = params[0], params[1], params[2 : 2 + x.size], params[2 + x.size :]
        theta_nodes = mt + jnp.exp(lst) * ut
        prior_t = -0.5 * (jnp.log(2 * jnp.pi) + mt**2 + jnp.exp(2 * lst))
        return (
            unit_terms(theta_nodes, m, log_s).sum()
            + prior_t
            + lst
            + 0.5 * jnp.log(2 * jnp.pi * jnp.e)
        )

    # Each unit's mean starts at the best of a grid (z(1 + sin z) is not monotone, so q(z_n) has
    # several local optima), with θ at its simulated value and a small sd.
    theta0, log_s0 = float(data["theta"]), np.log(0.2)
    grid = jnp.linspace(-4.0, 4.0, 161)
    scores = jax.vmap(
        lambda g: unit_terms(theta0 + 0 * ut, jnp.full(x.size, g), jnp.full(x.size, log_s0))
    )(grid)
    m0 = grid[jnp.argmax(scores, axis=0)]
    start = jnp.concatenate([jnp.array([theta0, np.log(0.01)]), m0, jnp.full(x.size, log_s0)])
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p: -elbo(p)))

    def scipy_fn(p):
        value, grad = loss_and_grad(jnp.asarray(p))
        return float(value), np.asarray(grad)

    result = minimize(
        scipy_fn,
        np.asarray(start),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20_000, "maxcor": 50, "ftol": 1e-14, "gtol": 1e-8},
    )
    return float(-result.fun)


def fvi_optimum(name: str, bench: BenchModel) -> float:
    """The F-VI optimum ELBO of ``bench`` (exact, or the cached quadrature reference)."""
    data = bench.data
    if name == "linear":
        x = data["x"]
        opt = linear_optimum(x)
        return linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)
    if name == "saw":
        return _saw_optimum(data)
    key = f"nonlinear-{data['x'].size}-{float(data['x'][0]):.12g}"
    cache = json.loads(_CACHE.read_text()) if _CACHE.exists() else {}
    if key not in cache:
        cache[key] = _nonlinear_optimum(data)
        _CACHE.parent.mkdir(exist_ok=True)
        _CACHE.write_text(json.dumps(cache, indent=1))
    return cache[key]
