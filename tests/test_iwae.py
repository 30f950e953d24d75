"""The importance-weighted bound against the linear model's exact ELBO and log evidence."""

import math

import numpy as np
import pymc as pm
import pytensor
import pytest
from pymc.pytensorf import compile as compile_pymc

from pymc_amortize import IWAE, AmortizationError, AmortizedVI
from pymc_amortize.examples.paper import (
    linear_data,
    linear_elbo,
    linear_model,
    linear_optimum,
)
from pymc_amortize.fitting.estimator import RandomDraws
from pymc_amortize.fitting.objectives import ELBO

N_UNITS = 400
# τ = 2, σ = 1 rather than the paper's values: the exact posterior then correlates θ with the z_n
# strongly, so the mean-field ELBO sits ½ log((σ² + τ²)/σ²) = 0.80 nats below log p(x), room for
# the bound to rise with K (0.10 nats with the paper's τ and σ).
TAU, SIGMA = 2.0, 1.0


def log_evidence(x, tau=TAU, sigma=SIGMA):
    """Exact log p(x) of the linear model: x_n ~ N(θ, σ² + τ²) with θ integrated under a flat prior."""
    v = sigma**2 + tau**2
    n = x.size
    return (
        -0.5 * n * math.log(2 * math.pi * v)
        - ((x - x.mean()) ** 2).sum() / (2 * v)
        + 0.5 * math.log(2 * math.pi * v / n)
    )


def fit(model, objective=None, seed=1):
    inference = AmortizedVI(
        family="encoder", model=model, encoder_widths=(), objective=objective, random_seed=seed
    )
    inference.fit(2500, obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
    approx = inference.fit(1500, obj_optimizer=pm.adam(learning_rate=1e-3), progressbar=False)
    return inference, approx


@pytest.fixture(scope="module")
def fitted():
    x = linear_data(N_UNITS, tau=TAU, sigma=SIGMA, random_seed=4)
    model = linear_model(x, tau=TAU, sigma=SIGMA)
    inference, approx = fit(model)
    return x, model, inference, approx


def test_one_particle_is_the_elbo(fitted):
    _, _, inference, approx = fitted
    random = RandomDraws()
    terms = inference.objective.mc_terms(2000, random, full_batch=True)
    elbo_loss, iwae_loss = ELBO().loss(*terms), IWAE(1).loss(*terms)
    params = approx.params
    outputs = [
        ELBO().per_estimate(*terms),
        IWAE(1).per_estimate(*terms),
        *pytensor.grad(elbo_loss, params),
        *pytensor.grad(iwae_loss, params),
    ]
    elbo, iwae, *grads = compile_pymc([], outputs, updates=random.updates, random_seed=0)()
    # Same draws: the same expectation (paired difference within Monte Carlo error) ...
    diff = iwae - elbo
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(diff.size)
    assert np.ptp(elbo) > 1.0  # real Monte Carlo draws, not a constant
    # ... and the same gradient, draw for draw.
    for g_elbo, g_iwae in zip(grads[: len(params)], grads[len(params) :], strict=True):
        np.testing.assert_allclose(g_iwae, g_elbo, rtol=1e-7, atol=1e-7)


def test_log_q_draws_average_to_minus_entropy(fitted):
    _, _, inference, _ = fitted
    random = RandomDraws()
    _, entropy, log_q = inference.objective.mc_terms(2000, random, full_batch=True)
    entropy, log_q = compile_pymc([], [entropy, log_q], updates=random.updates, random_seed=1)()
    # E_q[log q] = −H[q]; sd of log q is √(D/2) for D = N + 1 Gaussian coordinates.
    se = math.sqrt((N_UNITS + 1) / 2) / math.sqrt(log_q.size)
    assert abs(log_q.mean() + entropy) < 4 * se
    assert log_q.std() == pytest.approx(math.sqrt((N_UNITS + 1) / 2), rel=0.1)
    assert entropy > 0  # a real entropy, not a placeholder


def test_bound_rises_with_particles_towards_log_evidence(fitted):
    x, _, inference, approx = fitted
    mu = approx.globals.mean_and_scale()[0][0]
    sd = approx.globals.mean_and_scale()[1][0]
    q = approx.encode()["z"]
    exact_elbo = linear_elbo(x, mu, sd, q.mean, q.sd, tau=TAU, sigma=SIGMA)
    evidence = log_evidence(x)
    estimates = {}
    for k, n in ((1, 2000), (10, 400), (100, 150)):
        estimates[k] = inference.objective.estimate_elbo(
            n, objective=IWAE(k), random_seed=k, repeats=1
        )
    value1, se1 = estimates[1]
    assert abs(value1 - exact_elbo) < 4 * se1  # L_1 is the ELBO
    gap = evidence - exact_elbo
    assert gap == pytest.approx(
        0.5 * math.log(5.0), abs=0.1
    )  # the mean-field family misses θ–z correlation: room for IWAE to rise
    (value10, se10), (value100, se100) = estimates[10], estimates[100]
    assert value10 > value1 + 3 * se10
    assert value100 > value10 and value100 > value1 + 3 * se100
    assert max(value10, value100) < evidence + 3 * se100
    assert estimates[100][0] > exact_elbo + 0.3 * gap


def test_iwae_fit_matches_closed_form(fitted):
    x, model, _, _ = fitted
    _, approx = fit(model, objective=IWAE(8), seed=2)
    opt = linear_optimum(x, tau=TAU, sigma=SIGMA)
    mu = approx.globals.mean_and_scale()[0][0]
    sd = approx.globals.mean_and_scale()[1][0]
    q = approx.encode()["z"]
    exact_theta_sd = math.sqrt((SIGMA**2 + TAU**2) / x.size)
    assert abs(mu - opt.theta_mean) < 0.3 * opt.theta_sd
    # IWAE widens the factorised q(θ) from the mean-field value σ/√N towards the exact marginal.
    assert 0.93 * opt.theta_sd < sd < 1.07 * exact_theta_sd
    slope, intercept = np.polyfit(x, q.mean, 1)
    assert slope == pytest.approx(opt.z_slope, rel=0.05)
    assert intercept == pytest.approx(-opt.z_slope * opt.x_mean, abs=0.03)
    np.testing.assert_allclose(q.sd, opt.z_sd, rtol=0.06)


def test_iwae_refuses_minibatches_and_bad_particles(linear):
    with pytest.raises(AmortizationError, match="batch_size=None"):
        AmortizedVI(family="encoder", model=linear, objective=IWAE(5), batch_size=100)
    with pytest.raises(AmortizationError, match="positive integer"):
        IWAE(0)
    AmortizedVI(
        family="encoder", model=linear, objective=IWAE(1), batch_size=100, encoder_widths=()
    )  # K=1 is the ELBO
