"""New units and datasets of the conditional family against the exact conditional given q(θ).

On a Gaussian-linear hierarchical model with a known noise sd, a unit's conditional p(z_n | θ, y_n)
is Gaussian in closed form for every θ, and the conditional family's Newton step is exact. So the
marginal q(z_new) = ∫ p(z_new | θ, y_new) q(θ) dθ of a new county is known for the fit's own q(θ):
the closed form per draw of θ from q(θ), mixed. ``encode`` of new units must give its moments,
``sample_new_units`` draws of (θ, z_new) jointly and predictions of the new rows that follow them,
``encode_dataset`` / ``sample_dataset`` the same numbers chunk by chunk. None of this depends on how
well q(θ) fits, so the fits are short.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

from pymc_amortize import AmortizationError, IndexedLocal

SIGMA = 1.0
#: Houses of the fitted counties (a county of none: its prior given θ), and of the new ones.
FITTED = np.array([3, 1, 7, 22, 2, 12, 5, 1, 0, 9, 16, 4, 2, 6, 20, 1, 8, 3, 11, 2])
NEW = np.array([1, 2, 5, 20])
#: Draws of q(θ) behind the closed form (the Monte Carlo error of its moments, ≈ 0.005 sd).
EXACT_DRAWS = 40_000


def _data(rows, seed):
    rng = np.random.default_rng(seed)
    unit = np.repeat(np.arange(rows.size), rows)
    a = rng.normal(0.5, 0.7, rows.size)
    return unit, a[unit] + rng.normal(0, SIGMA, unit.size)


def _model(unit, y, n_units, centred=True, sigma=None):
    """Centred a ~ N(μ, τ), or a = μ + τ a_raw; y ~ N(a[county], σ) with σ = SIGMA, or the
    rows' own sds ``sigma`` given as data."""
    coords = {"county": np.arange(n_units), "obs": np.arange(y.size)}
    with pm.Model(coords=coords) as model:
        idx = pm.Data("county_idx", unit, dims="obs")
        noise = SIGMA if sigma is None else pm.Data("sigma_obs", sigma, dims="obs")
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfNormal("tau", 1)
        if centred:
            a = pm.Normal("a", mu, tau, dims="county")
        else:
            a_raw = pm.Normal("a_raw", 0, 1, dims="county")
            a = pm.Deterministic("a", mu + tau * a_raw, dims="county")
        pm.Normal("y", a[idx], noise, observed=y, dims="obs")
    return model


def _fit(model, n=300, **options):
    with model:
        return pm.fit(
            n,
            method="amortized",
            family="conditional",
            convergence=False,
            gap_check=False,
            random_seed=1,
            progressbar=False,
            **options,
        )


def _exact(approx, unit, y, n_units, centred=True, sigma=SIGMA, seed=11):
    """Per draw of q(θ): the closed-form conditional of each county's a (or a_raw), and those
    draws of θ. Returns (conditional means (S, J), variances (S, J), θ draws)."""
    theta = approx.draw_globals(EXACT_DRAWS, np.random.default_rng(seed))
    mu, tau = theta["mu"][:, None], np.exp(theta["tau_log__"])[:, None]
    weight = np.broadcast_to(1 / np.asarray(sigma, dtype=float) ** 2, y.shape)
    counts = np.bincount(unit, weight, minlength=n_units)  # Σ 1/σ_i² per county
    sums = np.bincount(unit, y * weight, minlength=n_units)  # Σ y_i/σ_i²
    if centred:
        precision = 1 / tau**2 + counts
        mean = (mu / tau**2 + sums) / precision
    else:
        precision = 1 + counts * tau**2
        mean = tau * (sums - counts * mu) / precision
    return mean, 1 / precision, theta


def _mixed(mean, variance):
    """Mean and sd of the mixture over the draws of θ (axis 0)."""
    return mean.mean(axis=0), np.sqrt(variance.mean(axis=0) + mean.var(axis=0))


@pytest.fixture(scope="module")
def centred():
    unit, y = _data(FITTED, seed=0)
    model = _model(unit, y, FITTED.size)
    return model, _fit(model), unit, y


@pytest.fixture(scope="module")
def new_counties():
    return _data(NEW, seed=5)


def test_new_counties_encode_to_the_exact_conditional_mixed_over_q_theta(centred, new_counties):
    _, approx, _, _ = centred
    unit, y = new_counties
    q = approx.encode({"y": y, "county_idx": unit})["a"]
    mean, sd = _mixed(*_exact(approx, unit, y, NEW.size)[:2])
    # The Monte Carlo error of both sides is under 0.02 sd (4,000 and 40,000 draws of q(θ)).
    np.testing.assert_array_less(np.abs((q.mean - mean) / sd), 0.05)
    np.testing.assert_allclose(q.sd / sd, 1.0, atol=0.03)
    # The 20-house county's sd is a third of the 1-house one's: not the encoder's guess.
    assert q.sd[3] < 0.6 * q.sd[0]


def test_new_units_draws_are_joint_with_theta_and_predictions_follow(centred, new_counties):
    _, approx, _, _ = centred
    unit, y = new_counties
    idata = approx.sample_new_units(
        {"y": y, "county_idx": unit}, 4000, random_seed=2, predictions=True
    )
    cond_mean, cond_var, theta = _exact(approx, unit, y, NEW.size)
    mean, sd = _mixed(cond_mean, cond_var)
    a = idata.posterior["a"].values[0]
    mu = idata.posterior["mu"].values[0]
    np.testing.assert_array_less(np.abs((a.mean(axis=0) - mean) / sd), 0.1)
    np.testing.assert_allclose(a.std(axis=0) / sd, 1.0, atol=0.05)
    # (θ, z_new) jointly: a 1-house county's a moves with μ; draws of q(z) apart from θ do not.
    exact_corr = np.cov(theta["mu"], cond_mean[:, 0])[0, 1] / (theta["mu"].std() * sd[0])
    assert exact_corr > 0.2
    assert abs(np.corrcoef(mu, a[:, 0])[0, 1] - exact_corr) < 0.06
    # Each row's predictive: the county's marginal plus the noise.
    pred = idata.predictions["y"].values[0]
    pred_sd = np.sqrt(sd[unit] ** 2 + SIGMA**2)
    np.testing.assert_array_less(np.abs((pred.mean(axis=0) - mean[unit]) / pred_sd), 0.1)
    np.testing.assert_allclose(pred.std(axis=0) / pred_sd, 1.0, atol=0.06)


def test_a_new_county_without_houses_gets_its_prior_given_q_theta(centred, new_counties):
    _, approx, _, _ = centred
    unit, y = new_counties
    # Five new counties; the last has no rows.
    q = approx.encode({"y": y, "county_idx": unit}, units=5)["a"]
    assert q.prior_only.tolist() == [False] * 4 + [True]
    mean, sd = _mixed(*_exact(approx, unit, y, 5)[:2])
    np.testing.assert_array_less(np.abs((q.mean - mean) / sd), 0.07)
    np.testing.assert_allclose(q.sd / sd, 1.0, atol=0.04)
    draws = approx.sample_new_units({"y": y, "county_idx": unit}, 500, units=5, random_seed=0)
    assert np.isfinite(draws.posterior["a"].values).all()


def test_encode_and_sample_dataset_chunk_by_chunk(centred):
    _, approx, unit, y = centred
    chunked = approx.encode_dataset(chunk_size=7, progressbar=False)
    whole = approx.encode_dataset(progressbar=False)
    np.testing.assert_array_equal(chunked["a_mean"].values, whole["a_mean"].values)
    np.testing.assert_array_equal(chunked["a_sd"].values, whole["a_sd"].values)
    # The fitted counties given as new units: the same numbers, the same draws of q(θ).
    as_new = approx.encode({"y": y, "county_idx": unit}, units=FITTED.size)["a"]
    rows = FITTED > 0
    np.testing.assert_allclose(whole["a_mean"].values[rows], as_new.mean[rows], rtol=1e-9)
    np.testing.assert_allclose(whole["a_sd"].values[rows], as_new.sd[rows], rtol=1e-9)
    # ... and the exact conditional mixed over q(θ), the county of no rows included.
    mean, sd = _mixed(*_exact(approx, unit, y, FITTED.size)[:2])
    np.testing.assert_array_less(np.abs((whole["a_mean"].values - mean) / sd), 0.05)
    np.testing.assert_allclose(whole["a_sd"].values / sd, 1.0, atol=0.03)
    draws = approx.sample_dataset(1000, chunk_size=7, random_seed=3, progressbar=False)
    again = approx.sample_dataset(1000, random_seed=3, progressbar=False)
    np.testing.assert_allclose(draws["a"].values, again["a"].values, rtol=1e-12)
    a = draws["a"].values[0]
    np.testing.assert_array_less(np.abs((a.mean(axis=0) - mean) / sd), 0.2)
    np.testing.assert_allclose(a.std(axis=0) / sd, 1.0, atol=0.1)


def test_encode_of_the_fitted_units_is_the_exact_mixture_over_q_theta(centred):
    """encode() of the fitted units: the conditional moments exact per draw of q(θ), mixed over
    its 4,000 draws. Moments of 4,000 joint draws of z (the old way) put the sds 2-4 % off the
    exact mixture's (1/√8000 per unit, 19 units); here only θ's draws err, under 1 %."""
    _, approx, unit, y = centred
    q = approx.encode()["a"]
    rows = FITTED > 0
    assert q.prior_only.tolist() == (~rows).tolist()
    mean, sd = _mixed(*_exact(approx, unit, y, FITTED.size)[:2])
    np.testing.assert_array_less(np.abs((q.mean - mean) / sd)[rows], 0.05)
    np.testing.assert_allclose(q.sd[rows] / sd[rows], 1.0, atol=0.015)
    # encode_dataset takes the same moments over other draws of q(θ): within θ's error.
    whole = approx.encode_dataset(progressbar=False)
    np.testing.assert_array_less(np.abs((whole["a_mean"].values - q.mean) / sd)[rows], 0.05)
    np.testing.assert_allclose(whole["a_sd"].values[rows] / q.sd[rows], 1.0, atol=0.015)


@pytest.mark.slow
def test_non_centred_new_counties_with_given_noise_match_the_exact_conditional(new_counties):
    fitted_unit, fitted_y = _data(FITTED, seed=0)
    rng = np.random.default_rng(7)
    model = _model(
        fitted_unit,
        fitted_y,
        FITTED.size,
        centred=False,
        sigma=rng.uniform(0.5, 1.5, fitted_y.size),
    )
    # The encoder reads y alone; the log density also reads each row's σ.
    approx = _fit(model, local={"a_raw": IndexedLocal("county_idx", inputs=["y"])})
    unit, y = new_counties
    sigma = rng.uniform(0.5, 1.5, y.size)
    new = {"y": y, "county_idx": unit, "sigma_obs": sigma}
    q = approx.encode(new)["a_raw"]
    cond_mean, cond_var, theta = _exact(approx, unit, y, NEW.size, centred=False, sigma=sigma)
    mean, sd = _mixed(cond_mean, cond_var)
    np.testing.assert_array_less(np.abs((q.mean - mean) / sd), 0.05)
    np.testing.assert_allclose(q.sd / sd, 1.0, atol=0.03)
    # The predictive of the rows, through a = μ + τ a_raw.
    idata = approx.sample_new_units(new, 4000, random_seed=2, predictions=True)
    mu, tau = theta["mu"][:, None], np.exp(theta["tau_log__"])[:, None]
    a_mean, a_sd = _mixed(mu + tau * cond_mean, tau**2 * cond_var)
    pred = idata.predictions["y"].values[0]
    pred_sd = np.sqrt(a_sd[unit] ** 2 + sigma**2)
    np.testing.assert_array_less(np.abs((pred.mean(axis=0) - a_mean[unit]) / pred_sd), 0.1)
    np.testing.assert_allclose(pred.std(axis=0) / pred_sd, 1.0, atol=0.06)
    # Without the rows' σ the log density of the new units cannot be evaluated: said, by name.
    with pytest.raises(AmortizationError, match="'sigma_obs'"):
        approx.encode({"y": y, "county_idx": unit})


@pytest.mark.slow
def test_intercept_and_slope_of_new_units_match_the_exact_conditional():
    tau, prior_sd = 0.7, 10.0
    rng = np.random.default_rng(3)
    rows = np.array([40, 3, 8, 2, 15, 5, 1, 30])
    unit = np.repeat(np.arange(rows.size), rows)
    x = rng.normal(size=unit.size) + 1.5  # away from 0: each unit's a and b correlate
    ab = rng.normal(0, tau, (rows.size, 2))
    y = 0.5 + ab[unit, 0] + ab[unit, 1] * x + rng.normal(0, SIGMA, unit.size)
    with pm.Model(coords={"unit": np.arange(rows.size), "obs": np.arange(y.size)}) as model:
        idx = pm.Data("unit_idx", unit, dims="obs")
        xd = pm.Data("x", x, dims="obs")
        theta = pm.Normal("theta", 0, prior_sd)
        a = pm.Normal("a", 0, tau, dims="unit")
        b = pm.Normal("b", 0, tau, dims="unit")
        pm.Normal("y", theta + a[idx] + b[idx] * xd, SIGMA, observed=y, dims="obs")
    approx = _fit(model)
    new_rows = np.array([1, 2, 5, 20])
    new_unit = np.repeat(np.arange(new_rows.size), new_rows)
    new_x = rng.normal(size=new_unit.size) + 1.5
    new_y = 0.5 + rng.normal(0, 1, new_unit.size) + 0.3 * new_x
    q = approx.encode({"y": new_y, "x": new_x, "unit_idx": new_unit})
    # Per draw of θ: N(Λ⁻¹ Xᵀ(y − θ)/σ², Λ⁻¹) with Λ = I/τ² + XᵀX/σ², per unit.
    thetas = approx.draw_globals(EXACT_DRAWS, np.random.default_rng(1))["theta"]
    for j in range(new_rows.size):
        design = np.column_stack([np.ones(new_rows[j]), new_x[new_unit == j]])
        cov = np.linalg.inv(np.eye(2) / tau**2 + design.T @ design / SIGMA**2)
        means = (new_y[new_unit == j][None] - thetas[:, None]) @ design @ cov / SIGMA**2
        mean = means.mean(axis=0)
        sd = np.sqrt(np.diag(cov) + means.var(axis=0))
        got_mean = np.array([q["a"].mean[j], q["b"].mean[j]])
        got_sd = np.array([q["a"].sd[j], q["b"].sd[j]])
        np.testing.assert_array_less(np.abs((got_mean - mean) / sd), 0.05)
        np.testing.assert_allclose(got_sd / sd, 1.0, atol=0.03)
