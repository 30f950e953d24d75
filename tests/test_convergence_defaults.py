"""Defaults that converge: pm.fit(method="amortized") with no settings stops on convergence, decays
its learning rate on plateaus, records whether it converged, and warns when the cap cuts it."""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytensor
import pytest

from pymc_amortize import AmortizationError, AmortizedVI, ConvergenceWarning, ELBOConvergence


def _run(callback, losses):
    """Feed a loss trace step by step, as PyMC's loop does; the step it stopped at, or None."""
    for i in range(1, losses.size + 1):
        try:
            callback(None, losses[:i], i)
        except StopIteration:
            return i
    return None


def _conjugate(n_units=200, seed=3):
    """x_n ~ N(θ + z_n, 1), z_n ~ N(0, 1), θ ~ N(0, 10): Gaussian, so the mean-field optimum is
    known: exact posterior means; q(z_n)'s sd is 1/sqrt(2), one over the diagonal of the precision
    (θ's is given here as its exact posterior sd, the yardstick for its mean)."""
    x = np.random.default_rng(seed).normal(1.0, np.sqrt(2.0), size=n_units)
    with pm.Model(coords={"unit": range(n_units)}) as model:
        theta = pm.Normal("theta", 0, 10)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("x", theta + z, 1.0, observed=x, dims="unit")
    v_theta = 1.0 / (1.0 / 100.0 + n_units / 2.0)  # x_n ~ N(θ, 2) once z_n is integrated out
    m_theta = v_theta * x.sum() / 2.0
    exact = {
        "theta": (m_theta, np.sqrt(v_theta)),
        "z": ((x - m_theta) / 2.0, np.full(n_units, np.sqrt(0.5))),
    }
    return model, exact


def test_decays_the_rate_on_each_plateau_then_stops():
    rate = pytensor.shared(np.asarray(1e-2))
    stop = ELBOConvergence(window=100, tolerance=1e-2, learning_rate=rate)
    losses = 1000 + np.random.default_rng(0).normal(0, 1, 3000)  # flat from the start
    stopped = _run(stop, losses)
    assert stop.decayed_at == [300, 600]  # two flat windows after the first, per rate
    assert np.isclose(rate.get_value(), 1e-4)
    assert stopped == 900 and stop.stopped_at == 900 and stop.converged
    # stop=False decays as well but never stops; it still says when it would have.
    quiet = ELBOConvergence(
        window=100, tolerance=1e-2, learning_rate=pytensor.shared(1e-2), stop=False
    )
    assert _run(quiet, losses) is None and quiet.converged and len(quiet.decayed_at) == 2


def test_a_window_within_its_noise_is_flat_and_a_steady_fall_is_not():
    rng = np.random.default_rng(1)
    # Falls by 1 nat per 100 steps under noise sd 50: within one standard error of two window
    # means (50 * sqrt(2 / 100) = 7 nats), so flat although far above the relative tolerance.
    noisy = 1000 - np.arange(2000) / 100 + rng.normal(0, 50, 2000)
    assert _run(ELBOConvergence(window=100, tolerance=1e-6), noisy) is not None
    # The same fall without noise is never flat.
    steady = 1000 - np.arange(2000) / 100
    assert _run(ELBOConvergence(window=100, tolerance=1e-6), steady) is None


def test_rejects_bad_convergence_options():
    with pytest.raises(AmortizationError, match="decay"):
        ELBOConvergence(decay=1.5)
    model, _ = _conjugate(20)
    with model, pytest.raises(AmortizationError, match="convergence must be"):
        pm.fit(10, family="encoder", method="amortized", convergence="yes", progressbar=False)


def test_the_cap_warns_with_the_numbers_and_records_no_convergence():
    model, _ = _conjugate(50)
    with model, pytest.warns(ConvergenceWarning) as record:
        approx = pm.fit(
            1_500,
            family="encoder",
            method="amortized",
            random_seed=0,
            progressbar=False,
            gap_check=False,
        )
    message = str(record[0].message)
    assert "cap of 1,500 steps" in message
    assert "relative change of the mean loss over its last windows of 500 steps was" in message
    assert "learning rate is 1.0e-02" in message
    assert "refine(" in message and "pm.fit(n=20,000" in message
    assert approx.settings["converged"] is False and approx.settings["steps"] == 1_500
    attrs = approx.sample(10, random_seed=0).amortized_fit.attrs
    assert attrs["converged"] == "False" and attrs["steps"] == 1_500


def test_convergence_off_runs_all_n_steps_without_a_warning():
    model, _ = _conjugate(50)
    with model, warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        approx = pm.fit(
            1_500,
            family="encoder",
            method="amortized",
            convergence=False,
            random_seed=0,
            progressbar=False,
            gap_check=False,
        )
    assert np.size(approx.hist) == 1_500 and approx.step_seconds.size == 1_500
    assert approx.settings["convergence"] == "off (all n steps)"


def test_a_given_stop_is_used_and_a_users_optimizer_is_not_decayed():
    model, _ = _conjugate(50)
    stop = ELBOConvergence(window=50, tolerance=1e-2)
    with model:
        approx = pm.fit(
            5_000,
            family="encoder",
            method="amortized",
            callbacks=[stop],
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=0,
            progressbar=False,
            gap_check=False,
        )
    assert stop.stopped_at is not None and stop.decayed_at == []
    assert approx.settings["converged"] is True and approx.settings["final_learning_rate"] is None
    assert np.size(approx.hist) < 5_000


@pytest.mark.slow
def test_a_default_fit_converges_to_the_closed_form_and_refine_resumes():
    model, exact = _conjugate(200)
    inference = AmortizedVI(family="encoder", model=model, random_seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        approx = inference.fit(progressbar=False, gap_check=False)
    settings = approx.settings
    assert settings["converged"] is True and settings["steps"] < 50_000
    assert np.isclose(settings["final_learning_rate"], 1e-4)
    post = approx.sample(4_000, random_seed=1).posterior
    theta_mean, theta_sd = exact["theta"]
    assert abs(float(post["theta"].mean()) - theta_mean) < 0.15 * theta_sd
    z_mean, z_sd = exact["z"]
    z = (post["z"].mean(("chain", "draw")).values - z_mean) / z_sd
    assert np.sqrt(np.mean(z**2)) < 0.1
    assert np.allclose(post["z"].std(("chain", "draw")).values / z_sd, 1.0, atol=0.1)
    # refine continues at the final rate, with the stop's windows started afresh.
    steps = np.size(approx.hist)
    inference.refine(2_000, progressbar=False)
    assert np.size(inference.hist) > steps and approx.settings["converged"] is True
