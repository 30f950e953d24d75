"""Small linear-Gaussian models of the paper (saw, HMM) and their exact mean-field optimum.

The log joint of these models is exactly quadratic in the latents, so the ELBO of any factorised
Gaussian q has a closed form, E_q log p(w) = log p(μ) − ½ Σ_i Λ_ii s_i², and the F-VI optimum is
the posterior mode with s_i² = 1/Λ_ii (Λ the posterior precision). Built here, not in paper.py, to
keep this branch's files separate from the paper builders; the tests import them from here.
"""

from __future__ import annotations

import math

import numpy as np
import pymc as pm
from pymc.blocking import DictToArrayBijection, RaveledVars

from pymc_amortize.diagnostics import GaussianFactor

SAW_ALPHA = 0.75


def saw_model(n_units: int, *, random_seed: int = 0, theta: float = 1.0) -> pm.Model:
    """θ ~ N(0,1), x_0 = 0, z_n ~ N(x_{n-1}, 1), x_n ~ N(α(θ + z_n), 1), α = 0.75."""
    rng = np.random.default_rng(random_seed)
    x = np.zeros(n_units)
    previous = 0.0
    for n in range(n_units):
        z = previous + rng.standard_normal()
        x[n] = SAW_ALPHA * (theta + z) + rng.standard_normal()
        previous = x[n]
    x_prev = np.concatenate([[0.0], x[:-1]])
    with pm.Model(coords={"unit": range(n_units)}) as model:
        pm.Data("x_prev", x_prev, dims="unit")
        th = pm.Normal("theta", 0.0, 1.0)
        zz = pm.Normal("z", model["x_prev"], 1.0, dims="unit")
        pm.Normal("x", SAW_ALPHA * (th + zz), 1.0, observed=x, dims="unit")
    return model


def hmm_model(n_units: int, *, random_seed: int = 0) -> pm.Model:
    """z_n | z_{n-1} ~ N(z_{n-1}, 1), z_1 ~ N(0, 1), x_n | z_n ~ N(z_n, 1): no global."""
    rng = np.random.default_rng(random_seed)
    z = np.cumsum(rng.standard_normal(n_units))
    x = z + rng.standard_normal(n_units)
    with pm.Model(coords={"unit": range(n_units)}) as model:
        zz = pm.GaussianRandomWalk("z", sigma=1.0, init_dist=pm.Normal.dist(0.0, 1.0), dims="unit")
        pm.Normal("x", zz, 1.0, observed=x, dims="unit")
    return model


class ExactMeanField:
    """Exact ELBO and F-VI optimum of a model whose log joint is quadratic in its value variables."""

    def __init__(self, model: pm.Model):
        self.model = model
        point = model.initial_point()
        self.ordering = DictToArrayBijection.map({v.name: point[v.name] for v in model.value_vars})
        self._logp = model.compile_logp()
        precision = -model.compile_d2logp(negate_output=False)(point)
        gradient = model.compile_dlogp()(point)
        self.precision = np.asarray(precision)
        mode_flat = self.ordering.data + np.linalg.solve(self.precision, gradient)
        sd_flat = 1.0 / np.sqrt(np.diag(self.precision))
        self.optimum = {
            name: GaussianFactor(self._unflatten(mode_flat)[name], self._unflatten(sd_flat)[name])
            for name in self._unflatten(mode_flat)
        }

    def _unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return DictToArrayBijection.rmap(
            RaveledVars(flat, self.ordering.point_map_info), start_point=None
        )

    def _flatten(self, values: dict[str, np.ndarray]) -> np.ndarray:
        return DictToArrayBijection.map(
            {name: values[name] for name, *_ in self.ordering.point_map_info}
        ).data

    def elbo(self, q: dict[str, GaussianFactor]) -> float:
        mean = {name: q[name].mean for name, *_ in self.ordering.point_map_info}
        sd = self._flatten({name: q[name].sd for name, *_ in self.ordering.point_map_info})
        expected = self._logp(mean) - 0.5 * np.sum(np.diag(self.precision) * sd**2)
        entropy = np.log(sd).sum() + sd.size * 0.5 * (1 + math.log(2 * math.pi))
        return float(expected + entropy)

    @property
    def optimum_elbo(self) -> float:
        return self.elbo(self.optimum)
