"""q(θ)'s families against the exact posterior of a conjugate model with correlated globals.

y_i = θ + b·x_i + z[unit_i] + ε_i with known noise and prior scales and x not centred: the posterior
of (θ, b, z) is Gaussian and θ and b are strongly correlated in it. With the conditional local
family q(z_n | θ, x_n) (exact for Gaussian-linear units) and a full-rank q(θ), the family contains
the exact posterior, so a converged fit must give the exact means, sds and correlation of (θ, b);
a mean-field q(θ) cannot hold the correlation (and, by the ELBO's mode-seeking, shrinks the sds to
the conditional ones).
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

import pymc_amortize
from pymc_amortize import AmortizationError

SIGMA, TAU, PRIOR_SD = 1.0, 0.7, 10.0


def _data(seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 8, 40)
    unit = np.repeat(np.arange(sizes.size), sizes)
    x = rng.normal(2.0, 1.0, unit.size)  # not centred: θ and b correlate
    y = 0.5 + 0.8 * x + rng.normal(0, TAU, sizes.size)[unit] + rng.normal(0, SIGMA, unit.size)
    return unit, x, y, sizes.size


def _exact(unit, x, y, n_units):
    """Mean and covariance of (θ, b) under the exact posterior."""
    design = np.zeros((unit.size, 2 + n_units))
    design[:, 0], design[:, 1] = 1.0, x
    design[np.arange(unit.size), 2 + unit] = 1.0
    prior = np.r_[1 / PRIOR_SD**2, 1 / PRIOR_SD**2, np.full(n_units, 1 / TAU**2)]
    cov = np.linalg.inv(np.diag(prior) + design.T @ design / SIGMA**2)
    mean = cov @ design.T @ y / SIGMA**2
    return mean[:2], cov[:2, :2]


def _model(unit, x, y, n_units):
    with pm.Model(coords={"unit": np.arange(n_units)}) as model:
        idx = pm.Data("unit_idx", unit)
        xd = pm.Data("x", x)
        theta = pm.Normal("theta", 0, PRIOR_SD)
        b = pm.Normal("b", 0, PRIOR_SD)
        z = pm.Normal("z", 0, TAU, dims="unit")
        pm.Normal("y", theta + b * xd + z[idx], SIGMA, observed=y)
    return model


@pytest.fixture(scope="module")
def data():
    return _data()


def _q_theta_b(approx, draws=20_000):
    post = approx.sample(draws, random_seed=1).posterior
    values = np.stack([post["theta"].values.ravel(), post["b"].values.ravel()])
    return values.mean(axis=1), np.cov(values)


@pytest.mark.parametrize(
    "global_family", ["fullrank", pytest.param("meanfield", marks=pytest.mark.slow)]
)
def test_full_rank_globals_give_the_exact_correlated_posterior(data, global_family):
    unit, x, y, n_units = data
    mean, cov = _exact(unit, x, y, n_units)
    exact_corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert exact_corr < -0.7  # the case is one where the family matters
    with _model(unit, x, y, n_units):
        approx = pm.fit(
            method="amortized",
            family="conditional",
            global_family=global_family,
            random_seed=0,
            progressbar=False,
            gap_check=False,
        )
    assert approx.globals.kind == global_family
    q_mean, q_cov = _q_theta_b(approx)
    sd, q_sd = np.sqrt(np.diag(cov)), np.sqrt(np.diag(q_cov))
    corr = q_cov[0, 1] / np.sqrt(q_cov[0, 0] * q_cov[1, 1])
    # Means within a tenth of a posterior sd (Monte Carlo error of the fit's noise included).
    assert np.all(np.abs(q_mean - mean) < 0.1 * sd)
    if global_family == "fullrank":
        np.testing.assert_allclose(q_sd, sd, rtol=0.08)
        assert abs(corr - exact_corr) < 0.05
    else:
        # Mean-field: no correlation, and the sds shrink towards the conditional ones.
        assert abs(corr) < 0.03
        assert np.all(q_sd < 0.8 * sd)


def test_full_rank_globals_round_trip_and_log_density(data, tmp_path):
    unit, x, y, n_units = data
    with _model(unit, x, y, n_units):
        approx = pm.fit(
            300,
            family="encoder",
            method="amortized",
            global_family="fullrank",
            random_seed=0,
            progressbar=False,
            convergence=False,
            gap_check=False,
        )
    family = approx.globals
    # log q of draws agrees with the Gaussian density of the flat (unconstrained) draws.
    values = family.sample(50, np.random.default_rng(0))
    flat = np.concatenate([values[name].reshape(50, -1) for name in family.layout], axis=1)
    mean, chol = family.mean_and_scale()
    cov = chol @ chol.T
    diff = flat - mean
    expected = (
        -0.5 * np.einsum("si,ij,sj->s", diff, np.linalg.inv(cov), diff)
        - 0.5 * (np.linalg.slogdet(2 * np.pi * cov)[1])
    )
    np.testing.assert_allclose(family.log_density(values), expected, rtol=1e-10)
    path = tmp_path / "fit"
    pymc_amortize.save_approximation(approx, path)
    loaded = pymc_amortize.load_approximation(path, model=_model(unit, x, y, n_units))
    assert loaded.globals.kind == "fullrank"
    np.testing.assert_array_equal(loaded.globals.mean_and_scale()[1], chol)
    with pytest.raises(AmortizationError, match="global_family must be one of"):
        with _model(unit, x, y, n_units):
            pm.fit(10, family="encoder", method="amortized", global_family="full")
