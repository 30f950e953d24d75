"""Models of Margossian & Blei (UAI 2024) as ordinary PyMC models, with their closed forms.

Used by the tests, the benchmarks and the notebooks, so that all of them fit the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm

__all__ = ["LinearOptimum", "linear_data", "linear_elbo", "linear_model", "linear_optimum"]

#: τ and σ of the authors' code (the paper says only "fixed").
LINEAR_TAU = 1.155
LINEAR_SIGMA = 2.43


def linear_data(
    n_units: int,
    *,
    tau: float = LINEAR_TAU,
    sigma: float = LINEAR_SIGMA,
    theta: float = 0.0,
    random_seed: int | None = None,
) -> np.ndarray:
    """Draw x_n = θ + τ z_n + σ ε_n with z_n, ε_n ~ N(0, 1)."""
    rng = np.random.default_rng(random_seed)
    return theta + tau * rng.standard_normal(n_units) + sigma * rng.standard_normal(n_units)


def linear_model(
    x: np.ndarray, *, tau: float = LINEAR_TAU, sigma: float = LINEAR_SIGMA
) -> pm.Model:
    """x_n ~ N(θ + τ z_n, σ²), z_n ~ N(0, 1), flat prior on θ (the paper's linear model)."""
    with pm.Model(coords={"unit": np.arange(len(x))}) as model:
        theta = pm.Flat("theta")
        z = pm.Normal("z", 0.0, 1.0, dims="unit")
        pm.Normal("x", theta + tau * z, sigma, observed=x, dims="unit")
    return model


@dataclass(frozen=True)
class LinearOptimum:
    """The F-VI (mean-field) optimum of the linear model, which is also its exact posterior's
    means and conditional sds."""

    theta_mean: float
    theta_sd: float
    z_slope: float  # E[z_n] = z_slope · (x_n − x̄)
    z_sd: float
    x_mean: float

    def z_mean(self, x: np.ndarray) -> np.ndarray:
        return self.z_slope * (np.asarray(x) - self.x_mean)


def linear_optimum(
    x: np.ndarray, *, tau: float = LINEAR_TAU, sigma: float = LINEAR_SIGMA
) -> LinearOptimum:
    """Closed-form F-VI optimum: q(θ) = N(x̄, σ²/N), q(z_n) = N(τ(x_n − x̄)/(σ²+τ²), σ²/(σ²+τ²))."""
    x = np.asarray(x)
    v = sigma**2 + tau**2
    return LinearOptimum(
        theta_mean=float(x.mean()),
        theta_sd=float(sigma / np.sqrt(x.size)),
        z_slope=tau / v,
        z_sd=float(sigma / np.sqrt(v)),
        x_mean=float(x.mean()),
    )


def linear_elbo(
    x: np.ndarray,
    theta_mean: float,
    theta_sd: float,
    z_mean: np.ndarray,
    z_sd: np.ndarray,
    *,
    tau: float = LINEAR_TAU,
    sigma: float = LINEAR_SIGMA,
) -> float:
    """The exact ELBO of a mean-field Gaussian q on the linear model (flat prior: log p(θ) = 0).

    No Monte Carlo error, so two solutions can be compared to any precision.
    """
    x, z_mean = np.asarray(x), np.asarray(z_mean)
    z_var = np.broadcast_to(np.asarray(z_sd) ** 2, x.shape)
    residual = (x - theta_mean - tau * z_mean) ** 2 + theta_sd**2 + tau**2 * z_var
    log_lik = -0.5 * np.log(2 * np.pi * sigma**2) * x.size - residual.sum() / (2 * sigma**2)
    log_prior_z = -0.5 * np.log(2 * np.pi) * x.size - 0.5 * (z_mean**2 + z_var).sum()
    entropy = (
        0.5 * np.log(2 * np.pi * np.e * theta_sd**2) + 0.5 * np.log(2 * np.pi * np.e * z_var).sum()
    )
    return float(log_lik + log_prior_z + entropy)
