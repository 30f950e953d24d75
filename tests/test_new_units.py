"""New units (issue 15): zero-row units, the training envelope, predictions, constrained summaries.

Every number is checked against a closed form given q(θ): a zero-row unit's posterior is its prior
p(z | θ) mixed over q(θ); a new row's predictive given a draw of (θ, z) is the likelihood itself.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pymc as pm
import pytest
from gaussian_plate_models import crossed_gaussian
from user_model_cases import varying_intercept_model

from pymc_amortize import (
    AmortizationError,
    OutOfTrainingRangeWarning,
    load_approximation,
    save_approximation,
)

# -- a radon-style Gaussian model: a_j ~ N(mu_a, sd_a), y_i ~ N(a[county_i] + b floor_i, sigma) --
J, N = 40, 600


def radon_model(seed: int = 8) -> pm.Model:
    rng = np.random.default_rng(seed)
    county = np.concatenate([np.arange(J), rng.integers(0, J, N - J)])
    floor = rng.binomial(1, 0.3, N).astype(float)
    y = rng.normal(1.0, 0.5, J)[county] - 0.6 * floor + rng.normal(0, 0.7, N)
    return varying_intercept_model(county, floor, y, J, upstairs=True)


@pytest.fixture(scope="module")
def radon():
    model = radon_model()
    approx = pm.fit(
        2500,
        family="encoder",
        method="amortized",
        model=model,
        encoder_widths=(16,),
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=0,
        progressbar=False,
    )
    return model, approx


def _q_global(approx, value_name):
    """Mean and sd of q(θ) of one scalar global, on its value space."""
    mean, sd = approx.global_factors()[value_name]
    return float(mean), float(sd)


def _prior_closed_form(approx):
    """E and sd of a_new = mu_a + sd_a ε under q(θ): mu_a ~ N(m1, s1²), log sd_a ~ N(m2, s2²)."""
    m1, s1 = _q_global(approx, "mu_a")
    m2, s2 = _q_global(approx, "sd_a_log__")
    return m1, np.sqrt(np.exp(2 * m2 + 2 * s2**2) + s1**2)


NEW_ROWS = {
    "log_radon": np.array([1.2, 0.8, 1.0, 0.4, 1.1, 0.9, 1.3, 0.7, 1.0, 0.6]),
    "floor": np.array([0, 0, 1, 1, 0, 0, 1, 0, 0, 1.0]),
    "county_idx": np.ones(10, dtype=np.int64),
}


def test_zero_row_unit_is_its_prior_given_q_theta(radon):
    _, approx = radon
    mean, sd = _prior_closed_form(approx)
    draws = 20_000
    q = approx.encode(NEW_ROWS, units=["no rows", "ten rows"], prior_draws=draws)["a"]
    np.testing.assert_array_equal(q.prior_only, [True, False])
    # Monte Carlo error of the mean and sd of `draws` draws: sd/sqrt(S) and sd/sqrt(2S).
    assert abs(q.mean[0] - mean) < 4 * sd / np.sqrt(draws)
    assert abs(q.sd[0] - sd) < 4 * sd / np.sqrt(2 * draws)
    # The pooled encoder's extrapolation for a unit without rows (c06: 0.74 ± 0.21) is far off.
    assert sd > 0.4 and abs(0.21 - sd) > 50 * sd / np.sqrt(2 * draws)
    # A unit with rows still comes from the encoder, tighter than its prior.
    assert np.isfinite(q.mean[1]) and q.sd[1] < 0.5 * sd
    # Unconstrained and constrained summaries agree for an untransformed latent; the quantiles
    # of a zero-row unit are its prior draws' quantiles (about mean ± 1.645 sd, a near-Gaussian).
    np.testing.assert_allclose(q.constrained_mean, q.mean)
    np.testing.assert_allclose(q.quantiles[1, 1], q.mean[1])
    np.testing.assert_allclose(
        q.quantiles[[0, 2], 0], mean + np.array([-1, 1]) * 1.645 * sd, atol=0.05
    )


def test_fitted_unit_without_rows_is_its_prior_given_q_theta():
    """A county of the fitted data with no rows (a newcomer's case: the pooled encoder's
    extrapolation, 1.200 ± 0.532, against its prior given q(θ), 1.121 ± 0.481)."""
    rng = np.random.default_rng(5)
    n_units, n_rows, empty = 25, 300, 7
    county = rng.integers(0, n_units, n_rows)
    county[county == empty] = empty + 1
    floor = rng.binomial(1, 0.3, n_rows).astype(float)
    y = rng.normal(1.0, 0.5, n_units)[county] - 0.6 * floor + rng.normal(0, 0.7, n_rows)
    with varying_intercept_model(county, floor, y, n_units):
        approx = pm.fit(
            2000,
            family="encoder",
            method="amortized",
            encoder_widths=(16,),
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=0,
            progressbar=False,
        )
    mean, sd = _prior_closed_form(approx)
    q = approx.encode(prior_draws=20_000)["a"]
    assert q.prior_only[empty] and q.prior_only.sum() == 1
    # Monte Carlo error of 20,000 draws: sd / sqrt(S) for the mean, sd / sqrt(2S) for the sd.
    assert abs(q.mean[empty] - mean) < 4 * sd / np.sqrt(20_000)
    assert abs(q.sd[empty] - sd) < 4 * sd / np.sqrt(40_000)
    # sample() draws it from its prior given the same draws of the globals: a ~ N(mu_a, sd_a).
    post = approx.sample(20_000, random_seed=1).posterior
    a_empty = post["a"].isel(county=empty).values.ravel()
    assert abs(a_empty.mean() - mean) < 4 * sd / np.sqrt(20_000)
    assert abs(a_empty.std() - sd) < 4 * sd / np.sqrt(40_000)
    z = (a_empty - post["mu_a"].values.ravel()) / post["sd_a"].values.ravel()
    assert abs(z.std() - 1) < 0.03 and abs(np.corrcoef(z, post["mu_a"].values.ravel())[0, 1]) < 0.03


def test_zero_row_units_without_any_data(radon):
    _, approx = radon
    mean, sd = _prior_closed_form(approx)
    q = approx.encode(units=3, prior_draws=8000)["a"]
    assert q.prior_only.tolist() == [True, True, True]
    assert np.all(np.abs(q.mean - mean) < 4 * sd / np.sqrt(8000))
    # sample_new_units draws the prior given each draw of q(θ).
    idata = approx.sample_new_units(units=2, draws=8000, random_seed=3)
    a = idata.posterior["a"].values[0]
    assert a.shape == (8000, 2)
    assert np.all(np.abs(a.mean(0) - mean) < 4 * sd / np.sqrt(8000))
    assert np.all(np.abs(a.std(0) - sd) < 4 * sd / np.sqrt(2 * 8000))


def test_unit_ids_with_gaps_or_outside_the_units_are_errors(radon):
    _, approx = radon
    gaps = dict(NEW_ROWS, county_idx=np.array([0, 0, 2, 2, 2, 0, 0, 2, 2, 0]))
    with pytest.raises(AmortizationError, match=r"new_data\['county_idx'\] names no rows for unit"):
        approx.encode(gaps)
    with pytest.raises(AmortizationError, match=r"new_data\['county_idx'\] has unit ids \[2\]"):
        approx.encode(gaps, units=2)
    # Declared, the gap is a zero-row unit.
    assert approx.encode(gaps, units=3)["a"].prior_only.tolist() == [False, True, False]
    with pytest.raises(AmortizationError, match="give each row's unit"):
        approx.encode({k: v for k, v in NEW_ROWS.items() if k != "county_idx"}, units=2)


def test_predictions_of_new_rows_match_the_likelihood_given_the_draws(radon):
    model, approx = radon
    before = model["county_idx"].get_value().copy()
    rows = {"floor": np.array([0.0, 1.0, 0.0, 1.0]), "county_idx": np.array([0, 0, 1, 1])}
    draws = 4000
    idata = approx.sample_new_units(
        NEW_ROWS,
        draws,
        units=["no rows", "ten rows"],
        predictions=True,
        prediction_data=rows,
        random_seed=5,
        check_range=False,
    )
    post, pred = idata.posterior, idata.predictions
    assert post["a"].dims == ("chain", "draw", "county")
    assert post["county"].values.tolist() == ["no rows", "ten rows"]
    assert pred["log_radon"].shape == (1, draws, 4)
    np.testing.assert_array_equal(idata.predictions_constant_data["floor"], rows["floor"])
    # The model's Deterministics, for the new units.
    np.testing.assert_allclose(post["a_upstairs"], post["a"] + post["b"])
    # Given each draw, y = a[county] + b floor + sigma ε: standardised residuals are N(0, 1).
    a, b, sigma = post["a"].values[0], post["b"].values[0], post["sigma"].values[0]
    mu = a[:, rows["county_idx"]] + b[:, None] * rows["floor"]
    eps = (pred["log_radon"].values[0] - mu) / sigma[:, None]
    assert np.all(np.abs(eps.mean(0)) < 4 / np.sqrt(draws))
    assert np.all(np.abs(eps.std(0) - 1) < 4 / np.sqrt(2 * draws))
    # The zero-row county's predictive: mean E_q[mu_a] + E_q[b] floor, sd from its prior.
    mean, sd = _prior_closed_form(approx)
    m_b, s_b = _q_global(approx, "b")
    y0 = pred["log_radon"].values[0][:, 0]  # floor 0, no rows
    s_sigma = np.sqrt(np.mean(sigma**2))
    predictive_sd = np.sqrt(sd**2 + s_sigma**2)
    assert abs(y0.mean() - mean) < 4 * predictive_sd / np.sqrt(draws)
    assert abs(y0.std() - predictive_sd) < 4 * predictive_sd / np.sqrt(2 * draws)
    y1 = pred["log_radon"].values[0][:, 1]  # floor 1
    assert abs(y1.mean() - (mean + m_b)) < 4 * np.sqrt(predictive_sd**2 + s_b**2) / np.sqrt(draws)
    # The user's model is not changed.
    np.testing.assert_array_equal(model["county_idx"].get_value(), before)
    assert len(model.coords["county"]) == J


def test_predictions_default_to_the_rows_of_new_data(radon):
    _, approx = radon
    one_county = dict(NEW_ROWS, county_idx=np.zeros(10, dtype=np.int64))
    idata = approx.sample_new_units(
        one_county, 200, predictions=True, random_seed=0, check_range=False
    )
    assert idata.posterior["a"].shape == (1, 200, 1)
    assert idata.predictions["log_radon"].shape == (1, 200, 10)
    np.testing.assert_array_equal(idata.predictions_constant_data["floor"], NEW_ROWS["floor"])


def test_predictions_need_the_rows_covariates(radon):
    _, approx = radon
    with pytest.raises(AmortizationError, match="needs the new rows' floor"):
        approx.sample_new_units(
            NEW_ROWS,
            10,
            units=2,
            predictions=True,
            prediction_data={"county_idx": np.array([0])},
            check_range=False,
        )


# -- a Poisson row-unit model (c09): lam_n ~ Gamma(alpha, beta), counts[n, v] ~ Poisson(lam_n) ---
U, VISITS = 200, 6


def poisson_data(seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(2.0, 2.0, size=U)[:, None], size=(U, VISITS))


def poisson_model(counts: np.ndarray) -> pm.Model:
    with pm.Model(coords={"user": range(counts.shape[0]), "visit": range(VISITS)}) as model:
        alpha = pm.HalfNormal("alpha", 5)
        beta = pm.HalfNormal("beta", 5)
        lam = pm.Gamma("lam", alpha, beta, dims="user")
        pm.Poisson("counts", lam[:, None], observed=counts, dims=("user", "visit"))
    return model


@pytest.fixture(scope="module")
def poisson():
    counts = poisson_data()
    approx = pm.fit(
        2500,
        family="encoder",
        method="amortized",
        model=poisson_model(counts),
        encoder_widths=(16,),
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=0,
        progressbar=False,
    )
    return counts, approx


def _no_range_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfTrainingRangeWarning)
        return fn()


def test_out_of_range_units_are_named_and_inside_ones_are_not(poisson, tmp_path):
    counts, approx = poisson
    inside = counts[:5]
    _no_range_warning(lambda: approx.encode({"counts": inside}))
    far = np.vstack([inside[:2], np.full((1, VISITS), 120)])
    with pytest.warns(OutOfTrainingRangeWarning, match=r"unit 2: counts\[\d\] = 120 outside") as w:
        approx.encode({"counts": far})
    message = str(w[0].message)
    assert "unit 0" not in message and "unit 1" not in message and "training sd" in message
    with pytest.warns(OutOfTrainingRangeWarning, match="unit 2"):
        approx.sample_new_units({"counts": far}, 10, random_seed=0)
    _no_range_warning(lambda: approx.encode({"counts": far}, check_range=False))
    # Several inputs: a unit inside every column's range but unlike any training unit (a
    # visit pattern never seen) is caught by the Mahalanobis distance.
    odd = np.array([[0, 0, 0, counts.max(), counts.max(), counts.max()]])
    with pytest.warns(OutOfTrainingRangeWarning, match="Mahalanobis"):
        approx.encode({"counts": odd})

    # The envelope is saved: a model rebuilt on 20 users with small counts keeps the fit's range.
    save_approximation(approx, tmp_path / "poisson")
    small = np.minimum(counts[:20], 3)
    loaded = load_approximation(tmp_path / "poisson", model=poisson_model(small))
    _no_range_warning(lambda: loaded.encode({"counts": inside}))
    with pytest.warns(OutOfTrainingRangeWarning, match="unit 2"):
        loaded.encode({"counts": far})
    # A file written before envelopes were saved still loads (and cannot warn).
    path = tmp_path / "poisson.json"
    structure = json.loads(path.read_text())
    for saved in structure["latents"].values():
        del saved["envelope"]
    path.write_text(json.dumps(structure))
    old = load_approximation(tmp_path / "poisson", model=poisson_model(counts))
    _no_range_warning(lambda: old.encode({"counts": far}))


def test_constrained_summary_of_a_log_transformed_latent(poisson):
    counts, approx = poisson
    q = approx.encode({"counts": counts[:4]})["lam"]
    # On its own scale lam is lognormal under q: exact mean and quantiles.
    np.testing.assert_allclose(q.constrained_mean, np.exp(q.mean + q.sd**2 / 2))
    np.testing.assert_allclose(q.quantiles[1], np.exp(q.mean))
    draws = approx.sample_new_units({"counts": counts[:4]}, 8000, random_seed=1)
    lam = draws.posterior["lam"].values[0]
    np.testing.assert_allclose(
        lam.mean(0), q.constrained_mean, rtol=4 * q.sd.max() / np.sqrt(8000) * 1.5
    )
    np.testing.assert_allclose(np.quantile(lam, 0.95, axis=0), q.quantiles[2], rtol=0.03)
    # The posterior mean rate is near the unit's mean count, not the log-rate.
    assert np.all(np.abs(q.constrained_mean - counts[:4].mean(1)) < 1.5)


@pytest.mark.slow
def test_poisson_predictions_agree_with_advi_and_sample_posterior_predictive(poisson):
    counts, approx = poisson
    rng = np.random.default_rng(7)
    new = rng.poisson(np.array([1.0, 5.0, 12.0])[:, None], size=(3, VISITS))
    ours = approx.sample_new_units(
        {"counts": new}, 4000, predictions=True, random_seed=2, check_range=False
    ).predictions["counts"]
    assert ours.dims == ("chain", "draw", "user", "visit")
    # ADVI on the same model with the new users among its units, then PyMC's own predictive.
    with poisson_model(np.vstack([counts, new])) as model:
        advi = pm.fit(
            15_000,
            method="advi",
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=0,
            progressbar=False,
        )
        trace = advi.sample(4000, random_seed=3)
        theirs = (
            pm.sample_posterior_predictive(
                trace, model=model, var_names=["counts"], random_seed=4, progressbar=False
            )
            .posterior_predictive["counts"]
            .values[0][:, U:]
        )
    ours = ours.values[0]
    # Predictive mean and sd per new user (pooled over visits): both are N(E lam, E lam + Var lam).
    np.testing.assert_allclose(ours.mean((0, 2)), theirs.mean((0, 2)), rtol=0.08)
    np.testing.assert_allclose(ours.std((0, 2)), theirs.std((0, 2)), rtol=0.1)


def test_units_mapping_leaves_the_other_plates_fitted_units_alone():
    """Crossed actor x block: a new actor's rows feed the block encoder too, but units={"actor": 2}
    asks only for new actors; the blocks keep their fitted posteriors (a newcomer's case: a new
    block was made up from the new actor's rows, z_block 2.06 +- 0.11)."""
    approx = pm.fit(
        300,
        family="encoder",
        method="amortized",
        model=crossed_gaussian(),
        encoder_widths=(8,),
        random_seed=0,
        progressbar=False,
    )
    rows = {"y": np.array([2.0, 2.5, 1.8]), "actor_idx": np.array([1, 1, 1])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the envelope's row-count warning is beside the point
        q = approx.encode(rows, units={"actor": 2})
        q_known_blocks = approx.encode(
            rows | {"block_idx": np.array([0, 3, 4])}, units={"actor": 2}
        )
    assert set(q) == set(q_known_blocks) == {"z_actor"}
    np.testing.assert_array_equal(q["z_actor"].prior_only, [True, False])
    np.testing.assert_allclose(q_known_blocks["z_actor"].mean, q["z_actor"].mean)


def test_non_integer_counts_of_a_discrete_likelihood_are_an_error(poisson):
    """A newcomer's case: counts of 2.5 were encoded (rate 2.51) without complaint."""
    _, approx = poisson
    with pytest.raises(AmortizationError, match=r"new_data\['counts'\] holds values that are not"):
        approx.encode({"counts": np.full((1, 6), 2.5)})
    q = approx.encode({"counts": np.full((1, 6), 2.0)}, check_range=False)["lam"]
    assert np.isfinite(q.mean).all()


def test_fitted_group_without_rows_non_centred_bernoulli_without_row_dims():
    """Non-centred z ~ N(0, 1) behind (mu + s z)[g], a Bernoulli likelihood, plain arrays and no
    row dim: a group with no rows has exactly its N(0, 1) prior, whatever q(θ)."""
    rng = np.random.default_rng(3)
    n_groups, n_rows, empty = 30, 600, 3
    g = rng.integers(0, n_groups, n_rows)
    g[g == empty] = empty + 1
    x = rng.normal(size=n_rows)
    y = rng.binomial(1, 1 / (1 + np.exp(-(rng.normal(0, 1, n_groups)[g] + 0.5 * x))))
    with pm.Model(coords={"group": range(n_groups)}):
        mu, s = pm.Normal("mu", 0, 2), pm.HalfNormal("s", 1)
        z = pm.Normal("z", 0, 1, dims="group")
        b = pm.Normal("b", 0, 1)
        pm.Bernoulli("y", logit_p=(mu + s * z)[g] + b * x, observed=y)
        approx = pm.fit(
            1500, family="encoder", method="amortized", obj_optimizer=pm.adam(learning_rate=1e-2), random_seed=0,
            progressbar=False,
        )  # fmt: skip
    q = approx.encode(prior_draws=20_000)["z"]
    np.testing.assert_array_equal(np.flatnonzero(q.prior_only), [empty])
    assert abs(q.mean[empty]) < 4 / np.sqrt(20_000) and abs(q.sd[empty] - 1) < 4 / np.sqrt(40_000)
    drawn = approx.sample(20_000, random_seed=1).posterior["z"].sel(group=empty).values.ravel()
    assert abs(drawn.mean()) < 4 / np.sqrt(20_000) and abs(drawn.std() - 1) < 4 / np.sqrt(40_000)


def _plate_and_chain(follows_rows: bool):
    rng = np.random.default_rng(0)
    unit = np.repeat(np.arange(12), 4)
    y = rng.normal(1.0 + rng.normal(0, 0.5, 12)[unit], 0.7)
    # No dims on the rows; the observed length follows the index's when asked to.
    with pm.Model(coords={"county": np.arange(12)}) as model:
        idx = pm.Data("county_idx", unit)
        a = pm.Normal("a", pm.Normal("mu_a", 0, 5), pm.HalfNormal("sigma_a", 1), dims="county")
        sigma = pm.HalfNormal("sigma", 1)
        shape = {"shape": idx.shape} if follows_rows else {}
        pm.Normal("y", a[idx], sigma, observed=y, **shape)
        walk = pm.GaussianRandomWalk("walk", sigma=0.5, init_dist=pm.Normal.dist(0, 1), shape=20)
        pm.Normal("obs_walk", walk, 0.3, observed=rng.normal(size=20).cumsum())
        approx = pm.fit(
            300,
            family="encoder",
            method="amortized",
            random_seed=1,
            progressbar=False,
            convergence=False,
            gap_check=False,
        )
    return model, approx


NEW_ROWS_WITH_CHAIN = {"county_idx": np.array([0, 0, 1]), "y": np.array([0.5, 0.2, 1.4])}


def test_predictions_leave_out_observed_variables_off_the_plate():
    """A model without dims whose second observed variable is a chain's, not the plate's rows:
    only the plate's observed variable is predicted (it was both, and failed), and given each
    draw its new rows follow the likelihood."""
    _, approx = _plate_and_chain(follows_rows=True)
    draws = 4000
    idata = approx.sample_new_units(
        NEW_ROWS_WITH_CHAIN, draws, units=2, random_seed=3, predictions=True, check_range=False
    )
    assert list(idata.predictions.data_vars) == ["y"]
    pred = idata.predictions["y"].values[0]
    assert pred.shape == (draws, 3)
    a_new, s = idata.posterior["a"].values[0], idata.posterior["sigma"].values[0]
    eps = (pred - a_new[:, NEW_ROWS_WITH_CHAIN["county_idx"]]) / s[:, None]
    assert np.all(np.abs(eps.mean(0)) < 4 / np.sqrt(draws))
    assert np.all(np.abs(eps.std(0) - 1) < 4 / np.sqrt(2 * draws))


def test_predictions_of_an_observed_array_without_dims_raise_clearly():
    _, approx = _plate_and_chain(follows_rows=False)
    # The new units themselves are drawn; predicting rows needs a dim to resize 'y' by.
    idata = approx.sample_new_units(NEW_ROWS_WITH_CHAIN, 10, units=2, check_range=False)
    assert idata.posterior["a"].shape == (1, 10, 2)
    with pytest.raises(AmortizationError, match="cannot draw 'y' for 3 new rows: its length"):
        approx.sample_new_units(
            NEW_ROWS_WITH_CHAIN, 10, units=2, predictions=True, check_range=False
        )
