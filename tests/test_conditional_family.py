"""The conditional local family q(θ) ∏ q(z_n | θ, x_n) against exact Gaussian posteriors.

On a Gaussian-linear hierarchical model with known noise and prior scales the joint posterior of
(θ, z) is Gaussian with z | θ, y Gaussian and linear in θ, so the family contains it: a converged
fit must match the closed form, for units of one row as for a unit of 5,000 rows. The encoder
family (q(θ) ∏ q(z_n; f(x_n)), mean-field between θ and z) cannot: a big unit's z_n is pinned only
through θ + z_n, so its marginal sd is mostly θ's, which that family drops.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

import pymc_amortize
from pymc_amortize import AmortizationError
from pymc_amortize.guide.conditional import ConditionalGaussian

SIGMA, TAU, PRIOR_SD = 1.0, 0.7, 10.0


def _design(rows_per_unit, k=1, seed=0):
    rng = np.random.default_rng(seed)
    unit = np.repeat(np.arange(rows_per_unit.size), rows_per_unit)
    x = rng.normal(size=unit.size)
    z = rng.normal(0, TAU, (rows_per_unit.size, k))
    mu = 0.5 + z[unit, 0] + (z[unit, 1] * x if k == 2 else 0.0)
    return unit, x, mu + rng.normal(0, SIGMA, unit.size)


def _exact(unit, x, y, n_units, k):
    """Mean and covariance of (θ, z_1..z_J) (z_j of k components, unit-major)."""
    dim = 1 + n_units * k
    design = np.zeros((unit.size, dim))
    design[:, 0] = 1.0
    design[np.arange(unit.size), 1 + unit * k] = 1.0
    if k == 2:
        design[np.arange(unit.size), 2 + unit * k] = x
    prior = np.full(dim, 1 / TAU**2)
    prior[0] = 1 / PRIOR_SD**2
    precision = np.diag(prior) + design.T @ design / SIGMA**2
    cov = np.linalg.inv(precision)
    return cov @ (design.T @ y) / SIGMA**2, cov


def _model(unit, x, y, n_units, k):
    coords = {"unit": np.arange(n_units), "obs": np.arange(y.size)}
    with pm.Model(coords=coords) as model:
        idx = pm.Data("unit_idx", unit, dims="obs")
        theta = pm.Normal("theta", 0, PRIOR_SD)
        if k == 1:
            z = pm.Normal("z", 0, TAU, dims="unit")
            mu = theta + z[idx]
        else:
            xd = pm.Data("x", x, dims="obs")
            a = pm.Normal("a", 0, TAU, dims="unit")
            b = pm.Normal("b", 0, TAU, dims="unit")
            mu = theta + a[idx] + b[idx] * xd
        pm.Normal("y", mu, SIGMA, observed=y, dims="obs")
    return model


def _fit(model, n, **options):
    from pytensor_ml.optim import adam, cosine_schedule

    with model:
        return pm.fit(
            n,
            method="amortized",
            family="conditional",
            # Decayed to zero, so that the last iterate sits at the optimum (Adam's jitters).
            obj_optimizer=adam(learning_rate=cosine_schedule(2e-2, total_steps=n)),
            convergence=False,  # the schedule runs its n steps down to 0
            random_seed=1,
            progressbar=False,
            **options,
        )


def _draws(approx, names):
    post = approx.sample(4000, random_seed=2)["posterior"].to_dataset()
    post = post.stack(sample=("chain", "draw"))
    return {name: post[name].values for name in names}


def test_units_of_one_and_5000_rows_match_the_closed_form():
    rows = np.array([5000, 1, 1, 2, 3, 1, 4, 1, 2, 1, 6, 1])
    unit, x, y = _design(rows)
    mean, cov = _exact(unit, x, y, rows.size, 1)
    approx = _fit(_model(unit, x, y, rows.size, 1), 3000)
    draws = _draws(approx, ["theta", "z"])
    sd = np.sqrt(np.diag(cov))
    theta_z = (draws["theta"].mean() - mean[0]) / sd[0]
    z_err = (draws["z"].mean(axis=1) - mean[1:]) / sd[1:]
    sd_ratio = draws["z"].std(axis=1) / sd[1:]
    assert abs(theta_z) < 0.15
    assert abs(draws["theta"].std() / sd[0] - 1) < 0.1
    assert np.abs(z_err).max() < 0.15, z_err
    # The 5,000-row unit's sd is nearly all θ's: a family without θ-z dependence gets ~0.15.
    assert np.all(np.abs(sd_ratio - 1) < 0.1), sd_ratio
    # The joint: z_0 and θ are almost perfectly anticorrelated in the exact posterior.
    exact_corr = cov[0, 1] / (sd[0] * sd[1])
    corr = np.corrcoef(draws["theta"], draws["z"][0])[0, 1]
    assert exact_corr < -0.9
    assert abs(corr - exact_corr) < 0.05


def test_vector_locals_get_their_per_unit_correlation():
    rows = np.array([40, 3, 8, 2, 15, 5, 1, 30])
    unit, x, y = _design(rows, k=2, seed=3)
    x = x + 1.5  # a covariate away from 0 correlates each unit's intercept and slope
    unit, _, y = unit, x, 0.5 + y
    mean, cov = _exact(unit, x, y, rows.size, 2)
    approx = _fit(_model(unit, x, y, rows.size, 2), 3000)
    draws = _draws(approx, ["a", "b"])
    sd = np.sqrt(np.diag(cov))
    a_sd, b_sd = sd[1::2], sd[2::2]
    assert np.abs((draws["a"].mean(axis=1) - mean[1::2]) / a_sd).max() < 0.15
    assert np.abs((draws["b"].mean(axis=1) - mean[2::2]) / b_sd).max() < 0.15
    exact_corr = cov[1::2, 2::2].diagonal() / (a_sd * b_sd)
    corr = np.array([np.corrcoef(draws["a"][j], draws["b"][j])[0, 1] for j in range(rows.size)])
    assert np.abs(exact_corr).max() > 0.3
    np.testing.assert_allclose(corr, exact_corr, atol=0.06)


@pytest.mark.slow
def test_minibatched_conditional_fit_matches_the_closed_form():
    rows = np.random.default_rng(4).integers(1, 8, 200)
    rows[0] = 2000
    unit, x, y = _design(rows, seed=4)
    mean, cov = _exact(unit, x, y, rows.size, 1)
    approx = _fit(_model(unit, x, y, rows.size, 1), 4000, batch_size=20)
    draws = _draws(approx, ["theta", "z"])
    sd = np.sqrt(np.diag(cov))
    z_err = (draws["z"].mean(axis=1) - mean[1:]) / sd[1:]
    assert np.sqrt(np.mean(z_err**2)) < 0.15
    assert abs(draws["theta"].mean() - mean[0]) / sd[0] < 0.3
    assert np.all(np.abs(draws["z"].std(axis=1) / sd[1:] - 1) < 0.15)


def test_bad_family_is_named():
    rows = np.array([2, 3])
    unit, x, y = _design(rows)
    with _model(unit, x, y, 2, 1), pytest.raises(AmortizationError, match="family="):
        pm.fit(10, method="amortized", family="laplace", progressbar=False)
    with pytest.raises(AmortizationError, match="newton_steps"):
        ConditionalGaussian(newton_steps=0)


def test_encode_save_load_and_what_is_not_yet_available(tmp_path):
    rows = np.array([30, 1, 2, 5, 1, 8])
    unit, x, y = _design(rows, seed=5)
    mean, cov = _exact(unit, x, y, rows.size, 1)
    model = _model(unit, x, y, rows.size, 1)
    approx = _fit(model, 1500)
    q = approx.encode(prior_draws=4000)["z"]
    sd = np.sqrt(np.diag(cov))[1:]
    # The marginal q(z_n), not the encoder's linearisation point.
    assert np.abs((q.mean - mean[1:]) / sd).max() < 0.15
    assert np.all(np.abs(q.sd / sd - 1) < 0.1)
    path = tmp_path / "fit"
    pymc_amortize.save_approximation(approx, path)
    loaded = pymc_amortize.load_approximation(path, model=model)
    assert loaded.conditional_plates == approx.conditional_plates
    np.testing.assert_allclose(
        loaded.encode(prior_draws=500)["z"].mean, approx.encode(prior_draws=500)["z"].mean
    )
    with pytest.raises(AmortizationError, match="conditional family"):
        pymc_amortize.semi_amortize(approx, 10)
    # A diverged fit's draws are refused, not handed back as a posterior of NaN.
    approx.globals.named_params["mu"].set_value(np.full(1, np.nan))
    with pytest.raises(AmortizationError, match=r"draws of 'z' are NaN or infinite for 6 of 6"):
        approx.sample(10, random_seed=0)
