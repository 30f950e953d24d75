"""Exact mean-field scoring of the paper's linear-Gaussian models (saw, HMM), in the shape the
gap and refinement tests use: ``{value name: GaussianFactor}``.

The models and their closed forms live in :mod:`pymc_amortize.examples.paper`; this adapts them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pymc as pm

from pymc_amortize.diagnostics import GaussianFactor
from pymc_amortize.examples import paper


def saw_model(n_units: int, *, random_seed: int = 0) -> pm.Model:
    """The paper's saw series (θ ~ N(0, 1), z_n ~ N(x_{n−1}, 1), x_n ~ N(α(θ + z_n), 1))."""
    return paper.saw_model(paper.saw_data(n_units, random_seed=random_seed))


def hmm_model(n_units: int, *, random_seed: int = 0) -> pm.Model:
    """The paper's Gaussian HMM on a random-walk sequence (no global variable)."""
    rng = np.random.default_rng(random_seed)
    x = np.cumsum(rng.standard_normal(n_units)) + rng.standard_normal(n_units)
    return paper.hmm_model(x)


class ExactMeanField:
    """Exact ELBO and F-VI optimum of a model whose log joint is quadratic in its value variables."""

    def __init__(self, model: pm.Model):
        self.joint = paper.gaussian_logjoint(model)
        shapes = {name: value.shape for name, value in model.initial_point().items()}
        mean, sd = self.joint.optimum()
        self.optimum = {
            name: GaussianFactor(mean[slc].reshape(shapes[name]), sd[slc].reshape(shapes[name]))
            for name, slc in self.joint.slices.items()
        }

    def elbo(self, q: Mapping[str, GaussianFactor]) -> float:
        return self.joint.elbo(
            self.joint.stack({name: f.mean for name, f in q.items()}),
            self.joint.stack({name: f.sd for name, f in q.items()}),
        )

    @property
    def optimum_elbo(self) -> float:
        return self.elbo(self.optimum)
