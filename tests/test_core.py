"""A-VI on the paper's linear model against its closed-form F-VI optimum."""

import numpy as np
import pymc as pm
import pytest

from pymc_amortize import AmortizedVI
from pymc_amortize.examples.paper import linear_elbo, linear_optimum


def fit_linear(model, *, batch_size=None, seed=1, steps=(3000, 3000)):
    """Adam at 1e-2 then 1e-3, all steps of both (no convergence stop): the second phase damps
    Adam's last-iterate jitter."""
    inference = AmortizedVI(
        family="encoder", model=model, encoder_widths=(), batch_size=batch_size, random_seed=seed
    )
    fast, slow = steps
    for steps, rate in ((fast, 1e-2), (slow, 1e-3)):
        approx = inference.fit(
            steps,
            obj_optimizer=pm.adam(learning_rate=rate),
            convergence=False,
            progressbar=False,
        )
    return inference, approx


def summary(approx):
    q = approx.encode()["z"]
    mu = approx.globals.mean_and_scale()[0][0]
    sd = approx.globals.mean_and_scale()[1][0]
    return mu, sd, q


@pytest.fixture(scope="module")
def full_batch_fit():
    from pymc_amortize.examples.paper import linear_data, linear_model

    x = linear_data(1_000, random_seed=0)
    model = linear_model(x)
    inference, approx = fit_linear(model)
    return x, model, inference, approx


@pytest.mark.parametrize("batch_size", [None, 100])
def test_affine_encoder_reaches_closed_form_optimum(linear_x, linear, batch_size, full_batch_fit):
    x = linear_x
    if batch_size is None:
        _, _, _, approx = full_batch_fit
    else:
        _, approx = fit_linear(linear, batch_size=batch_size)
    opt = linear_optimum(x)
    mu, sd, q = summary(approx)
    # q(θ) = N(x̄, σ²/N). Forgetting the N/B scale under batch_size=100 would give sd ≈ σ/√B,
    # 3.2 times too large, and a slope shrunk towards the prior.
    assert abs(mu - opt.theta_mean) < 0.3 * opt.theta_sd
    assert sd == pytest.approx(opt.theta_sd, rel=0.12)
    slope, intercept = np.polyfit(x, q.mean, 1)
    assert slope == pytest.approx(opt.z_slope, rel=0.03)
    assert intercept == pytest.approx(-opt.z_slope * opt.x_mean, abs=0.02)
    np.testing.assert_allclose(q.sd, opt.z_sd, rtol=0.04)
    gap = linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd) - linear_elbo(
        x, mu, sd, q.mean, q.sd
    )
    assert 0 <= gap < 2.0  # nats, on N = 1000 units


def test_elbo_estimate_matches_exact_elbo_and_stays_below_fvi_optimum(linear_x, full_batch_fit):
    x, _, inference, approx = full_batch_fit
    mu, sd, q = summary(approx)
    exact = linear_elbo(x, mu, sd, q.mean, q.sd)
    estimate, se = inference.objective.estimate_elbo(500, repeats=4, random_seed=3)
    # Our Monte Carlo objective is the ELBO: a wrong entropy or scaling would be off by many SEs.
    assert abs(estimate - exact) < 4 * se + 1e-6
    opt = linear_optimum(x)
    best = linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)
    assert estimate <= best + 4 * se  # the amortization gap is >= 0


def test_hist_is_minus_elbo_per_step(full_batch_fit):
    x, _, _, approx = full_batch_fit
    assert approx.hist.shape == (6000,)
    opt = linear_optimum(x)
    best = linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)
    assert np.isfinite(approx.hist).all()
    assert approx.hist[-500:].mean() == pytest.approx(-best, abs=3.0)


def test_encode_new_units_matches_closed_form(full_batch_fit):
    x, _, _, approx = full_batch_fit
    opt = linear_optimum(x)
    new_x = np.array([-6.0, -1.0, 0.0, 2.5, 7.0])
    q = approx.encode({"x": new_x})["z"]
    np.testing.assert_allclose(q.mean, opt.z_mean(new_x), atol=0.04)
    np.testing.assert_allclose(q.sd, opt.z_sd, rtol=0.05)
    same = approx.encode(new_x[:, None])["z"]
    np.testing.assert_array_equal(same.mean, q.mean)


def test_sample_new_units_draws_match_encoder(full_batch_fit):
    x, _, _, approx = full_batch_fit
    opt = linear_optimum(x)
    new_x = np.array([-3.0, 4.0])
    idata = approx.sample_new_units({"x": new_x}, draws=4000, random_seed=0)
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "new_unit")
    np.testing.assert_allclose(z.mean(("chain", "draw")), opt.z_mean(new_x), atol=0.06)
    np.testing.assert_allclose(z.std(("chain", "draw")), opt.z_sd, rtol=0.06)


def test_sample_returns_arviz_data_under_model_dims(full_batch_fit):
    x, _, _, approx = full_batch_fit
    idata = approx.sample(500, random_seed=0)
    post = idata.posterior
    assert post["z"].dims == ("chain", "draw", "unit")
    assert post.sizes["unit"] == x.size
    assert "x" in idata.observed_data
    opt = linear_optimum(x)
    assert float(post["theta"].mean()) == pytest.approx(
        opt.theta_mean, abs=0.35 * opt.theta_sd + 0.02
    )
    zbar = post["z"].mean(("chain", "draw")).values
    assert np.corrcoef(zbar, opt.z_mean(x))[0, 1] > 0.99


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 7])
def test_default_encoder_does_not_collapse_on_factor_analysis(seed):
    """x_n ~ N(z_n W, s), z_n of size 2; the data's noise sd is 0.3.

    The former default, two hidden layers of 32 with Xavier's start, collapsed one latent
    dimension in every seed (s 0.70-1.02): the encoder ignored its input and s took the slack.
    """
    rng = np.random.default_rng(5)
    W = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7]])
    X = rng.normal(size=(300, 2)) @ W + 0.3 * rng.normal(size=(300, 3))
    with pm.Model(coords={"unit": range(300), "k": range(2), "d": range(3)}):
        w = pm.Normal("w", 0, 1, dims=("k", "d"))
        s = pm.HalfNormal("s", 1)
        z = pm.Normal("z", 0, 1, dims=("unit", "k"))
        pm.Normal("x", z @ w, s, observed=X, dims=("unit", "d"))
        approx = pm.fit(
            5000,
            family="encoder",
            method="amortized",
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=seed,
            progressbar=False,
        )
    assert 0.25 < float(approx.sample(300, random_seed=0).posterior["s"].mean()) < 0.4
