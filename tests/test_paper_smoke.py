"""Smoke tests of the paper's experiments: small N, few steps, each checking the claim it studies.

The full runs live in benchmarks/paper/; these fit through the same ``pm.fit`` routes and score
with the same exact ELBOs.
"""

import json

import numpy as np
import pymc as pm
import pytest

from benchmarks.paper import common
from pymc_amortize.examples.paper import (
    digits_data,
    digits_decode,
    digits_model,
    gaussian_logjoint,
    hmm_affine_window_gap,
    hmm_data,
    hmm_model,
    hmm_optimum,
    identical_units_gap_bound,
    linear_data,
    linear_elbo,
    linear_model,
    linear_optimum,
    nonlinear_data,
    nonlinear_model,
    saw_data,
    saw_logjoint,
    saw_model,
    window_inputs,
)


def _fit(model, method, score, steps=1500, lr=1e-2, **kw):
    return common.fit_one(model, method, steps=steps, learning_rate=lr, seed=0, score=score, **kw)


def test_linear_polynomial_encoders_reach_closed_form_and_const_does_not():
    x = linear_data(500, random_seed=0)
    opt = linear_optimum(x)
    best = -linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)

    def score(params):
        (tm, ts), (zm, zs) = params["theta"], params["z"]
        return {"loss": -linear_elbo(x, float(tm), float(ts), zm, zs)}

    model = linear_model(x)
    d2 = common.amortized("d=2", local={"z": np.column_stack([x, x**2])}, encoder_widths=())
    const = common.const_method(x.size)
    assert _fit(model, d2, score).loss - best < 1.5
    # One shared Gaussian gives every unit the same mean, losing ½(1 + τ²/σ²)·Σ_n E[z_n]² nats
    # against the optimum (E[z_n] = slope·(x_n − x̄)); a quarter of Σ_n E[z_n]² is a safe bound.
    assert _fit(model, const, score).loss - best > 0.5 * x.size * opt.z_slope**2 * x.var() / 2


def test_nonlinear_const_is_clearly_worse_than_fvi():
    x = nonlinear_data(300, random_seed=0)
    model = nonlinear_model(x)
    mc = common.mc_negative_elbo(model, n_draws=30)
    score = lambda params: {"loss": mc(params)}  # noqa: E731
    fvi = _fit(model, common.fvi(), score, steps=3000)
    const = _fit(model, common.const_method(x.size), score)
    assert np.isfinite(fvi.loss) and not fvi.diverged
    assert const.loss - fvi.loss > 0.1 * x.size


def test_saw_gap_is_large_on_x_alone_and_closes_on_previous_and_current():
    x = saw_data(300, random_seed=0)
    logjoint = saw_logjoint(x)
    best = -logjoint.elbo(*logjoint.optimum())

    def score(params):
        mean = logjoint.stack({k: m for k, (m, _) in params.items()})
        sd = logjoint.stack({k: s for k, (_, s) in params.items()})
        return {"loss": -logjoint.elbo(mean, sd)}

    model = saw_model(x)
    # The ideal encoder of this Gaussian model is affine in (x_{n-1}, x_n).
    i1 = common.amortized("i=1", local={"z": "x"}, encoder_widths=())
    i2 = common.amortized("i=2", local={"z": ["x_prev", "x"]}, encoder_widths=())
    gap_i1 = _fit(model, i1, score, steps=2000).loss - best
    gap_i2 = _fit(model, i2, score, steps=2000).loss - best
    assert gap_i1 > 0.1 * x.size
    assert gap_i2 < 3.0


def test_saw_closed_form_matches_the_pymc_model():
    x = saw_data(25, random_seed=3)
    exact, numeric = saw_logjoint(x), gaussian_logjoint(saw_model(x))
    np.testing.assert_allclose(exact.precision, numeric.precision, atol=1e-12)
    np.testing.assert_allclose(exact.shift, numeric.shift, atol=1e-12)
    assert exact.constant == pytest.approx(numeric.constant)


def test_hmm_gap_stays_positive_and_matches_the_exact_bound():
    x = hmm_data(60, planted=(20, 40), random_seed=1)
    model = hmm_model(x)
    logjoint = gaussian_logjoint(model)
    mean, sd = hmm_optimum(x)
    np.testing.assert_allclose(mean, logjoint.optimum()[0], atol=1e-10)
    np.testing.assert_allclose(sd, logjoint.optimum()[1], atol=1e-12)
    assert abs(mean[20] - mean[40]) > 1.0  # identical x_n, different exact means
    best = -logjoint.elbo(mean, sd)
    score = lambda params: {"loss": -logjoint.elbo(*params["z"])}  # noqa: E731
    window = common.amortized("w=1", local={"z": window_inputs(x, 1)}, encoder_widths=())
    gap = _fit(model, window, score, steps=3000, obj_n_mc=5).loss - best
    bound = hmm_affine_window_gap(x, 1)
    assert bound > 1.0
    assert bound - 1e-6 <= gap < bound + 1.5  # never below the exact bound, and reaches it
    assert identical_units_gap_bound(x, (20, 40)) > 0.5
    assert hmm_affine_window_gap(x, 29) < 1e-12  # one weight per unit: A-VI = F-VI


def test_digits_decoder_matches_the_model_and_fits_with_minibatches():
    x = digits_data(120)
    model = digits_model(x, latent_dim=2, hidden=8)
    point = {
        k: np.random.default_rng(0).normal(size=v.shape) for k, v in model.initial_point().items()
    }
    expected = digits_decode(point, point["z"])
    x_rv = model["x"]
    residual_logp = model.compile_logp(vars=[x_rv])(point)
    direct = -0.5 * ((x - expected) ** 2).sum() - 0.5 * x.size * np.log(2 * np.pi)
    assert residual_logp == pytest.approx(direct)
    approx = pm.fit(
        200,
        family="encoder",
        method="amortized",
        model=model,
        local={"z": "x"},
        encoder_widths=(8, 8),
        activation="leaky_relu",
        batch_size=30,
        random_seed=0,
        progressbar=False,
    )
    assert np.isfinite(approx.hist).all()
    assert approx.encode()["z"].mean.shape == (120, 2)


def test_scaling_and_report_write_a_page(tmp_path):
    from benchmarks.paper import report, scaling

    payload = scaling.main(
        [
            "--quick",
            "--sizes", "50", "200",
            "--widths", "2",
            "--steps", "300",
            "--fvi-steps", "600",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert [p["n_units"] for p in payload["per_size"]] == [50, 200]
    for p in payload["per_size"]:
        assert p["gap_per_unit"]["F-VI from A-VI"] == 0.0
        assert p["gap_per_unit"]["F-VI"] > -0.5
        assert np.isfinite(p["gap_per_unit"]["A-VI k=2"])
    page = report.main(["--results", str(tmp_path), "--out", str(tmp_path / "page.md")])
    text = page.read_text()
    assert "| 200 |" in text and "quick settings" in text
    assert json.loads((tmp_path / "scaling_quick.json").read_text())["settings"]["quick"]


def test_steps_to_within_finds_the_first_smoothed_crossing():
    hist = np.concatenate([np.full(100, 200.0), np.full(100, 100.5)])
    assert common.steps_to_within(hist, 100.0, window=10) == 110
    assert common.steps_to_within(np.full(100, 200.0), 100.0) is None
