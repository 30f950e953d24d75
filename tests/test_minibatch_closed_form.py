"""Minibatched A-VI on an indexed plate with per-unit data, against the exact posterior."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

import pymc_amortize  # noqa: F401


@pytest.mark.slow
def test_indexed_rows_and_unit_observation_minibatched_match_the_closed_form():
    """a_j ~ N(0, 1), y_i ~ N(a[idx_i], 1) (rows), u_j ~ N(a_j, 0.5) (one per unit).

    The exact posterior is N((Σ_rows y + 4 u_j) / (1 + n_j + 4), 1 / (1 + n_j + 4)). An encoder
    blind to u_j misses by about 1 sd; dropping the N/B scaling of the unit terms shrinks the sds.
    """
    rng = np.random.default_rng(0)
    J, R = 40, 400
    idx = rng.integers(0, J, R)
    a_true = rng.normal(size=J)
    y = a_true[idx] + rng.normal(size=R)
    u = a_true + 0.5 * rng.normal(size=J)
    with pm.Model(coords={"group": range(J), "obs": range(R)}):
        index = pm.Data("idx", idx, dims="obs")
        a = pm.Normal("a", 0, 1, dims="group")
        pm.Normal("y", a[index], 1, observed=y, dims="obs")
        pm.Normal("u", a, 0.5, observed=u, dims="group")
        approx = pm.fit(
            4000,
            family="encoder",
            method="amortized",
            batch_size=10,
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=0,
            progressbar=False,
        )
    precision = 1 + np.bincount(idx, minlength=J) + 4
    mean = (np.bincount(idx, weights=y, minlength=J) + 4 * u) / precision
    q = approx.encode()["a"]
    z = (q.mean - mean) * np.sqrt(precision)
    assert np.sqrt(np.mean(z**2)) < 0.5  # measured 0.27
    assert 0.8 < np.mean(q.sd * np.sqrt(precision)) < 1.2  # measured 0.94


@pytest.mark.slow
def test_plain_array_unit_covariate_minibatched_matches_advi():
    """A unit covariate given as a plain array (a constant PyMC folds into the factor) is sliced
    with the batch: minibatched A-VI fits and its beta agrees with a long ADVI run."""
    rng = np.random.default_rng(6)
    N = 400
    c = rng.normal(size=N)
    Y = (1.0 + 0.5 * c + 0.8 * rng.normal(size=N))[:, None] + 0.6 * rng.normal(size=(N, 5))
    with pm.Model(coords={"unit": range(N), "rep": range(5)}):
        mu, beta = pm.Normal("mu", 0, 5), pm.Normal("beta", 0, 1)
        tau, sigma = pm.HalfNormal("tau", 1), pm.HalfNormal("sigma", 1)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("y", (mu + beta * c + tau * z)[:, None], sigma, observed=Y, dims=("unit", "rep"))
        options = {"obj_optimizer": pm.adam(learning_rate=1e-2), "progressbar": False}
        avi = pm.fit(
            3000, method="amortized", family="encoder", batch_size=50, random_seed=1, **options
        )
        advi = pm.fit(10_000, method="advi", random_seed=1, **options)
    beta_avi = float(avi.sample(1000, random_seed=0).posterior["beta"].mean())
    beta_advi = float(advi.sample(1000, random_seed=0).posterior["beta"].mean())
    assert abs(beta_avi - beta_advi) < 0.1  # c left out of the encoder gives ~0.1 vs ~0.5
