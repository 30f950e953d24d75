"""The fit's own joint q(θ, z) against exact Gaussian answers: its ELBO, PSIS, the gap and compare().

On a Gaussian-linear model every number has a closed form (:func:`gaussian_logjoint` reads the
quadratic log joint): log p(x), the posterior, the ELBO of any Gaussian q. The conditional family
q(θ) ∏ q(z_n | θ, x_n) holds the exact conditional p(z | θ, x) for such a model whatever q(θ) is
(its Newton step is exact, trained or not), so its ELBO is log p(x) − KL(q(θ) ‖ p(θ | x)) and
its importance weights depend on θ alone. A full-rank q(θ) with the encoder family is a Gaussian
q(θ, z) whose ELBO is exact from its mean and covariance. The product of either fit's marginals
is another q with another ELBO (lower where q's correlations are the posterior's): the number the
diagnostics would report if they scored the marginals.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

import pymc_amortize
from pymc_amortize import IWAE, AmortizationError, AmortizedVI
from pymc_amortize.diagnostics import MeanFieldELBO, meanfield_of
from pymc_amortize.examples.paper import gaussian_logjoint, linear_data, linear_model
from pymc_amortize.posterior.chunks import seed_sequence

SIGMA, TAU, PRIOR_SD = 1.0, 0.7, 10.0


def _grouped(rows, *, slope=False, seed=0):
    """y = θ (+ β x) + z[unit] + ε: a Gaussian-linear model with units of ``rows`` rows."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(rows)
    unit = np.repeat(np.arange(rows.size), rows)
    x = rng.normal(3.0, 1.0, size=unit.size)  # off-centre: intercept and slope correlate
    y = 0.5 + 0.3 * x + rng.normal(0, TAU, rows.size)[unit] + rng.normal(0, SIGMA, unit.size)
    with pm.Model(coords={"unit": np.arange(rows.size), "obs": np.arange(y.size)}) as model:
        idx = pm.Data("unit_idx", unit, dims="obs")
        mu = pm.Normal("theta", 0, PRIOR_SD)
        if slope:
            xd = pm.Data("x", x, dims="obs")
            mu = mu + pm.Normal("beta", 0, PRIOR_SD) * xd
        z = pm.Normal("z", 0, TAU, dims="unit")
        pm.Normal("y", mu + z[idx], SIGMA, observed=y, dims="obs")
    return model


class Truth:
    """The closed form of a model whose log joint is quadratic in its values."""

    def __init__(self, model):
        self.g = g = gaussian_logjoint(model)
        self.cov = np.linalg.inv(g.precision)
        self.mean = self.cov @ g.shift
        dim = g.shift.size
        self.log_evidence = float(
            g.constant
            + 0.5 * g.shift @ self.mean
            + 0.5 * dim * np.log(2 * np.pi)
            - 0.5 * np.linalg.slogdet(g.precision)[1]
        )
        self.fvi_optimum = g.elbo(*g.optimum())

    def index(self, names):
        return np.concatenate([np.arange(self.g.shift.size)[self.g.slices[n]] for n in names])

    def kl_to_posterior(self, names, mean, cov):
        """KL(N(mean, cov) ‖ p(names | x)), the exact marginal posterior of ``names``."""
        i = self.index(names)
        post_mean, post_cov = self.mean[i], self.cov[np.ix_(i, i)]
        solve = np.linalg.solve(post_cov, cov)
        diff = np.asarray(mean) - post_mean
        return 0.5 * float(
            np.trace(solve)
            + diff @ np.linalg.solve(post_cov, diff)
            - i.size
            + np.linalg.slogdet(post_cov)[1]
            - np.linalg.slogdet(cov)[1]
        )

    def gaussian_elbo(self, mean, cov):
        """The exact ELBO of q = N(mean, cov) over every value (this log joint's order)."""
        p = self.g.precision
        expected = self.g.constant + self.g.shift @ mean - 0.5 * (mean @ p @ mean + np.sum(p * cov))
        return float(expected + 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1])


def _set_meanfield_q_theta(approx, mean, sd):
    params = approx.globals.named_params
    params["mu"].set_value(np.atleast_1d(np.asarray(mean, float)))
    params["rho"].set_value(np.atleast_1d(np.log(np.expm1(np.asarray(sd, float)))))


def _posterior_of_theta(truth):
    i = truth.index(["theta"])
    return float(truth.mean[i][0]), float(np.sqrt(truth.cov[i, i][0]))


@pytest.fixture(scope="module")
def conditional_linear():
    """The paper's linear model (N = 50) with the conditional family, untrained: its q(z | θ) is
    exact already; q(θ) is set by each test."""
    model = linear_model(linear_data(50, random_seed=0))
    inference = AmortizedVI(model=model, family="conditional", random_seed=1)
    return inference, inference.approx, Truth(model)


def test_conditional_elbo_is_log_evidence_minus_kl_of_q_theta(conditional_linear):
    _, approx, truth = conditional_linear
    post_mean, post_sd = _posterior_of_theta(truth)
    # q(θ) off the posterior by 0.7 sd and 1.6 times too wide: KL(q(θ) ‖ p(θ | x)) ≈ 0.56 nats.
    mean, sd = post_mean + 0.7 * post_sd, 1.6 * post_sd
    _set_meanfield_q_theta(approx, mean, sd)
    kl = truth.kl_to_posterior(["theta"], [mean], np.array([[sd**2]]))
    assert kl > 0.4
    joint = approx.joint_density()
    assert approx.joint_density() is joint  # compiled once, kept
    sample = joint.sample(4000, np.random.default_rng(0))
    elbo, se = sample.elbo
    assert abs(elbo - (truth.log_evidence - kl)) < 4 * se + 1e-6
    # log q integrates to one: importance weights p / q average to p(x).
    big = joint.sample(20_000, np.random.default_rng(1))
    assert big.importance_bound == pytest.approx(truth.log_evidence, abs=0.02)
    # The decomposition: log q = log q(θ) + Σ_n log q(z_n | θ).
    np.testing.assert_allclose(
        sample.log_q, sample.log_q_globals + sample.log_q_units["unit"].sum(axis=1), rtol=1e-12
    )
    assert sample.values["z"].shape == (4000, 50) and sample.values["theta"].shape == (4000,)


@pytest.mark.slow
def test_conditional_elbo_agrees_with_the_training_objective(conditional_linear):
    inference, approx, truth = conditional_linear
    post_mean, post_sd = _posterior_of_theta(truth)
    _set_meanfield_q_theta(approx, post_mean + 0.7 * post_sd, 1.6 * post_sd)
    elbo, se = approx.joint_density().elbo(4000, random_seed=0)
    # The training objective's estimates agree: log p − log q per draw (IWAE(1)), and
    # log p + the exact entropy (the ELBO's own, of larger variance). Each compiles the step's
    # Newton graph (about 30 s each).
    for objective, draws in ((IWAE(1), 1000), (None, 2000)):
        estimate, estimate_se = inference.objective.estimate_elbo(
            draws, random_seed=3, objective=objective
        )
        assert abs(estimate - elbo) < 4 * np.hypot(se, estimate_se), objective


def test_psis_of_the_conditional_family(conditional_linear):
    _, approx, truth = conditional_linear
    post_mean, post_sd = _posterior_of_theta(truth)
    # q(θ) = p(θ | x): q is the exact posterior, every weight is p(x).
    _set_meanfield_q_theta(approx, post_mean, post_sd)
    exact = pymc_amortize.psis_diagnostic(approx, draws=500, random_seed=0)
    assert exact.khat < 0.5 and exact.verdict == "good"
    np.testing.assert_allclose(exact.log_weights.values, truth.log_evidence, atol=1e-6)
    assert exact.ess == pytest.approx(500, rel=1e-6)
    assert exact.khat_per_unit.shape == (50,) and np.all(exact.khat_per_unit.values < 0.5)
    # The overall weights are the joint's, log p − log q of the same draws.
    sample = approx.joint_density().sample(500, np.random.default_rng(seed_sequence(0)))
    np.testing.assert_allclose(exact.log_weights.values, sample.log_weights, rtol=1e-10)
    # A q(θ) three times too narrow: the weights' tail is heavy.
    _set_meanfield_q_theta(approx, post_mean, 0.3 * post_sd)
    poor = pymc_amortize.psis_diagnostic(approx, draws=2000, random_seed=0)
    assert poor.khat > 0.7 and poor.verdict == "unreliable"
    assert poor.resample(100, random_seed=0).posterior["z"].shape == (1, 100, 50)
    with pytest.raises(AmortizationError, match="chunk_size=None"):
        pymc_amortize.psis_diagnostic(approx, draws=100, chunk_size=10)


def _fullrank_q(approx, truth):
    """Mean (D,) and covariance of the encoder family's Gaussian q(θ, z) with its full-rank
    q(θ), in the order of ``truth``; and the same with q(θ)'s correlations dropped."""
    mean = np.zeros(truth.g.shift.size)
    cov = np.zeros((mean.size, mean.size))
    q_mean, chol = approx.globals.mean_and_scale()
    flat = np.concatenate(
        [np.arange(truth.g.shift.size)[truth.g.slices[n]] for n in approx.globals.layout]
    )
    order = np.concatenate(
        [np.arange(q_mean.size)[slc] for slc, _ in approx.globals.layout.values()]
    )
    mean[flat] = q_mean[order]
    cov[np.ix_(flat, flat)] = (chol @ chol.T)[np.ix_(order, order)]
    z_mean, z_sd = approx.fitted_encoder_outputs()["z"]
    i = truth.index(["z"])
    mean[i], cov[i, i] = z_mean.ravel(), z_sd.ravel() ** 2
    return mean, cov, np.diag(np.diag(cov))


@pytest.fixture(scope="module")
def fullrank_fit():
    model = _grouped([30, 1, 2, 5, 1, 8, 12], slope=True, seed=2)
    inference = AmortizedVI(family="encoder", model=model, global_family="fullrank", random_seed=1)
    approx = inference.approx
    # q(θ) near the exact marginal posterior of (θ, β), whose correlation is strong (x is off
    # centre): the product of its marginals drops it.
    truth = Truth(model)
    i = truth.index(["theta", "beta"])
    post = truth.mean[i]
    chol = np.linalg.cholesky(truth.cov[np.ix_(i, i)])
    l_tril = chol[np.tril_indices(2)].copy()
    diagonal = np.cumsum([0, 2])  # the packed diagonal's entries: (0, 0) and (1, 1)
    l_tril[diagonal] = np.log(np.expm1(l_tril[diagonal]))
    approx.globals.named_params["L_tril"].set_value(l_tril)
    approx.globals.named_params["mu"].set_value(post + np.array([0.05, -0.02]))
    return inference, approx, truth


def test_fullrank_joint_elbo_is_exact_and_the_product_of_marginals_is_not(fullrank_fit):
    inference, approx, truth = fullrank_fit
    mean, cov, product = _fullrank_q(approx, truth)
    exact, exact_product = truth.gaussian_elbo(mean, cov), truth.gaussian_elbo(mean, product)
    assert exact - exact_product > 0.3
    elbo, se = approx.joint_density().elbo(4000, random_seed=0)
    assert abs(elbo - exact) < 4 * se + 1e-6
    estimate, estimate_se = inference.objective.estimate_elbo(2000, random_seed=3)
    assert abs(estimate - exact) < 4 * estimate_se + 1e-6
    # The mean-field score of the same fit is that of the product: lower, a wrong number here.
    product_elbo, product_se = MeanFieldELBO(approx.model, n_draws=2000, random_seed=0).estimate(
        meanfield_of(approx)
    )
    assert abs(product_elbo - exact_product) < 4 * product_se + 1e-6
    # PSIS scores the fit's own log q(θ): its mean log weight is the joint ELBO.
    psis = pymc_amortize.psis_diagnostic(approx, draws=2000, random_seed=0)
    weights = psis.log_weights.values
    assert abs(weights.mean() - exact) < 4 * weights.std() / np.sqrt(weights.size)


def test_amortization_gap_of_a_full_rank_fit_scores_its_own_q(fullrank_fit):
    _, approx, truth = fullrank_fit
    mean, cov, _ = _fullrank_q(approx, truth)
    exact = truth.gaussian_elbo(mean, cov)
    gap = pymc_amortize.amortization_gap(approx, n=1500, n_draws=1000, random_seed=0)
    assert not gap.paired and "fullrank q(θ)" in gap.family
    assert abs(gap.elbo_amortized - exact) < 4 * gap.elbo_amortized_se + 1e-6
    refined = meanfield_of(gap.refined)
    refined_exact = truth.g.elbo(
        truth.g.stack({k: f.mean for k, f in refined.items()}),
        truth.g.stack({k: f.sd for k, f in refined.items()}),
    )
    assert abs(gap.elbo_refined - refined_exact) < 4 * gap.elbo_refined_se + 1e-6
    # F-VI reached its optimum, which beats this (untrained) fit's encoder.
    assert refined_exact == pytest.approx(truth.fvi_optimum, abs=0.1)
    assert gap.gain == pytest.approx(gap.elbo_refined - gap.elbo_amortized)
    assert gap.better == "F-VI" and "F-VI's optimum beats the fit" in gap.verdict
    plate = gap.per_plate["unit"]
    total = float(plate["plate_gain"]) + gap.rest_gain
    assert total == pytest.approx(gap.gain, abs=1e-6)
    assert float(plate["gain"].sum()) == pytest.approx(float(plate["plate_gain"]), abs=1e-6)
    assert "separate draws" in repr(gap)


@pytest.fixture(scope="module")
def conditional_grouped():
    model = _grouped([50] * 6, seed=1)
    inference = AmortizedVI(model=model, family="conditional", random_seed=1)
    return inference.approx, Truth(model)


def test_amortization_gap_of_the_conditional_family_can_be_negative(conditional_grouped):
    approx, truth = conditional_grouped
    # q(θ) = p(θ | x): the fit is the exact posterior, log p(x); F-VI's optimum is KL(q_F-VI ‖ p)
    # ≈ 1.6 nats below it (θ and the z_n are strongly correlated: 50 rows pin only θ + z_n).
    _set_meanfield_q_theta(approx, *_posterior_of_theta(truth))
    assert truth.log_evidence - truth.fvi_optimum > 1.0
    with pytest.raises(AmortizationError, match="not a refinement"):
        pymc_amortize.semi_amortize(approx, 10)
    gap = pymc_amortize.amortization_gap(approx, n=1500, n_draws=1000, random_seed=0)
    assert not gap.paired and "conditional family" in gap.family
    assert abs(gap.elbo_amortized - truth.log_evidence) < 4 * gap.elbo_amortized_se + 1e-6
    refined = meanfield_of(gap.refined)
    refined_exact = truth.g.elbo(
        truth.g.stack({k: f.mean for k, f in refined.items()}),
        truth.g.stack({k: f.sd for k, f in refined.items()}),
    )
    assert refined_exact <= truth.fvi_optimum + 1e-9
    assert refined_exact == pytest.approx(truth.fvi_optimum, abs=0.1)
    assert abs(gap.elbo_refined - refined_exact) < 4 * gap.elbo_refined_se + 1e-6
    assert gap.gain < -3 * gap.standard_error
    assert gap.better == "amortized" and gap.closed
    assert "not a subset of F-VI's" in gap.verdict
    plate = gap.per_plate["unit"]
    assert float(plate["plate_gain"]) + gap.rest_gain == pytest.approx(gap.gain, abs=1e-6)
    assert float(plate["gain"].sum()) == pytest.approx(float(plate["plate_gain"]), abs=1e-6)


@pytest.mark.slow
def test_compare_reports_the_conditional_family_beside_advi():
    from pytensor_ml.optim import adam, cosine_schedule

    model = _grouped([50] * 6, seed=1)
    truth = Truth(model)
    result = pymc_amortize.compare(
        model,
        n={"amortized": 800, "advi": 3000},
        options={
            "amortized": {
                "family": "conditional",
                "obj_optimizer": adam(learning_rate=cosine_schedule(2e-2, total_steps=800)),
                "convergence": False,
                "gap_check": False,
            },
            "advi": {"obj_optimizer": pm.adam(learning_rate=1e-2)},
        },
        n_draws=1000,
        draws=20,
        random_seed=0,
    )
    rows = {row["method"]: row for row in result.rows}
    assert rows["amortized"]["scored"] == "own joint draws"
    assert rows["advi"]["scored"] == "shared draws"
    approx = result.approximations["amortized"]
    mean, sd = (v.ravel() for v in approx.global_factors()["theta"])
    exact = truth.log_evidence - truth.kl_to_posterior(["theta"], mean, np.diag(sd**2))
    assert abs(rows["amortized"]["elbo"] - exact) < 4 * rows["amortized"]["elbo_se"] + 1e-6
    advi = meanfield_of(result.approximations["advi"])
    advi_exact = truth.g.elbo(
        truth.g.stack({k: f.mean for k, f in advi.items()}),
        truth.g.stack({k: f.sd for k, f in advi.items()}),
    )
    assert abs(rows["advi"]["elbo"] - advi_exact) < 4 * rows["advi"]["elbo_se"] + 1e-6
    difference = result.difference
    assert difference["methods"] == ("amortized", "advi")
    assert difference["elbo"] == pytest.approx(rows["amortized"]["elbo"] - rows["advi"]["elbo"])
    # Its ELBO exceeds ADVI's optimum, which the encoder family's never can.
    assert exact > truth.fvi_optimum + 1.0
    assert difference["better"] == "amortized" and "not a subset" in difference["note"]
    assert "amortized better" in repr(result)


@pytest.mark.slow
def test_crossed_conditional_fit_psis_weights_and_elbo_are_the_joint_ones():
    from gaussian_plate_models import crossed_gaussian

    inference = AmortizedVI(model=crossed_gaussian(), family="conditional", random_seed=1)
    approx = inference.approx
    assert approx.conditional_plates == {"actor", "block"}
    # The block's q(z | θ, z_actor) reads the actor draws: PSIS's per-plate decomposition of the
    # weights must still add up to the joint log p − log q of the same draws.
    psis = pymc_amortize.psis_diagnostic(approx, draws=300, random_seed=0)
    sample = approx.joint_density().sample(300, np.random.default_rng(seed_sequence(0)))
    np.testing.assert_allclose(psis.log_weights.values, sample.log_weights, rtol=1e-10)
    assert set(psis.khat_per_plate) == {"actor", "block"}
    elbo, se = sample.elbo
    estimate, estimate_se = inference.objective.estimate_elbo(300, random_seed=2, objective=IWAE(1))
    assert abs(estimate - elbo) < 4 * np.hypot(se, estimate_se)
