"""A simulated radon-style data set and PyMC's varying-intercept radon model, for tests and demos.

Gelman & Hill's Minnesota radon data have 919 houses in 85 counties, 1 to 116 houses per county
(half the counties have 5 or fewer). :func:`radon_data` draws data of that shape, with skewed
county sizes, from the model itself; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm

__all__ = ["RadonData", "radon_data", "radon_model"]


@dataclass(frozen=True)
class RadonData:
    """Houses (rows) in counties (units), and the parameters that generated them."""

    log_radon: np.ndarray
    floor: np.ndarray
    county_idx: np.ndarray
    n_counties: int
    a: np.ndarray
    mu_a: float
    sigma_a: float
    b: float
    sigma: float

    @property
    def county_sizes(self) -> np.ndarray:
        return np.bincount(self.county_idx, minlength=self.n_counties)


def radon_data(
    n_counties: int = 85,
    n_houses: int = 919,
    *,
    size_skew: float = 1.3,
    mu_a: float = 1.5,
    sigma_a: float = 0.5,
    b: float = -0.65,
    sigma: float = 0.75,
    random_seed: int | None = None,
) -> RadonData:
    """Simulate houses in counties with skewed county sizes (every county has at least one house).

    County sizes are 1 + a multinomial split of the remaining houses with log-normal(0,
    ``size_skew``) weights; with the defaults the largest county has about 100 houses and the
    median about 6, as in the real data.

    Examples
    --------
    .. code-block:: python

        from pymc_amortize.examples.simulated_radon import radon_data, radon_model

        data = radon_data(random_seed=0)
        model = radon_model(data)
    """
    if n_houses < n_counties:
        raise ValueError(f"n_houses ({n_houses}) must be at least n_counties ({n_counties}).")
    rng = np.random.default_rng(random_seed)
    weights = rng.lognormal(0.0, size_skew, n_counties)
    sizes = 1 + rng.multinomial(n_houses - n_counties, weights / weights.sum())
    county_idx = rng.permutation(np.repeat(np.arange(n_counties), sizes))
    floor = (rng.random(n_houses) < 0.2).astype(float)
    a = rng.normal(mu_a, sigma_a, n_counties)
    log_radon = rng.normal(a[county_idx] + b * floor, sigma)
    return RadonData(log_radon, floor, county_idx, n_counties, a, mu_a, sigma_a, b, sigma)


def radon_model(data: RadonData, *, coords: bool = True) -> pm.Model:
    """PyMC's varying-intercept radon model: ``y_i ~ N(a[county_idx[i]] + b·floor_i, σ)``.

    The index and the covariate are ``pm.Data`` containers along the ``obs_id`` dim; the county
    intercepts ``a`` are along ``county``. ``coords=False`` leaves out the (possibly huge) coordinate
    labels and gives the dims by length only.
    """
    n_rows = data.county_idx.size
    with pm.Model() as model:
        if coords:
            model.add_coord("county", np.arange(data.n_counties))
            model.add_coord("obs_id", np.arange(n_rows))
        else:
            model.add_coord("county", length=data.n_counties)
            model.add_coord("obs_id", length=n_rows)
        floor = pm.Data("floor", data.floor, dims="obs_id")
        county_idx = pm.Data("county_idx", data.county_idx, dims="obs_id")
        mu_a = pm.Normal("mu_a", 0.0, 5.0)
        sigma_a = pm.HalfNormal("sigma_a", 1.0)
        a = pm.Normal("a", mu_a, sigma_a, dims="county")
        b = pm.Normal("b", 0.0, 1.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal(
            "log_radon", a[county_idx] + b * floor, sigma, observed=data.log_radon, dims="obs_id"
        )
    return model
