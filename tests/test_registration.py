"""pm.fit(method="amortized") is added; every other pm.fit call is untouched."""

import numpy as np
import pymc as pm
import pymc.variational.inference as pm_inference
import pytest

import pymc_amortize
from pymc_amortize import registration


def small_model():
    x = np.random.default_rng(0).normal(size=50)
    with pm.Model(coords={"unit": range(50)}) as model:
        theta = pm.Normal("theta", 0, 10)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("x", theta + z, 1, observed=x, dims="unit")
    return model


def test_wrapper_bound_everywhere_and_idempotent():
    registration.install()
    registration.install()
    assert pm.fit is pm.variational.fit is pm_inference.fit is registration.fit
    assert registration.original_fit.__module__ == "pymc.variational.inference"
    assert registration.fit.__wrapped_by_pymc_amortize__ is registration.original_fit


@pytest.mark.parametrize("method", ["advi", "fullrank_advi"])
def test_other_methods_give_identical_results(method):
    with small_model():
        before = registration.original_fit(300, method=method, random_seed=7, progressbar=False)
    with small_model():
        after = pm.fit(300, method=method, random_seed=7, progressbar=False)
    assert type(after) is type(before)
    np.testing.assert_array_equal(after.hist, before.hist)
    np.testing.assert_array_equal(after.mean.eval(), before.mean.eval())


def test_unknown_method_error_is_pymcs():
    with small_model(), pytest.raises(KeyError, match="method should be one of"):
        pm.fit(10, method="nope")


def test_amortized_string_is_case_insensitive_and_returns_approximation():
    with small_model():
        approx = pm.fit(50, method="Amortized", encoder_widths=(4,), progressbar=False)
    assert isinstance(approx, pymc_amortize.AmortizedApproximation)
    assert approx.hist.shape == (50,)


def test_unknown_option_is_rejected_by_name():
    with small_model(), pytest.raises(TypeError, match="encoder_width"):
        pm.fit(10, family="encoder", method="amortized", encoder_width=(4,))


def test_fit_amortized_returns_datatree_with_loss():
    with small_model():
        idata = pymc_amortize.fit_amortized(
            family="encoder", n=200, draws=100, encoder_widths=(), random_seed=0, progressbar=False
        )
    assert idata.posterior["z"].dims == ("chain", "draw", "unit")
    assert idata["amortized_fit"]["loss"].shape == (200,)
    assert "x" in idata.observed_data


def test_pymc_callbacks_and_progressbar_work():
    from pymc.variational.callbacks import CheckParametersConvergence, Tracker

    calls = []

    def stop_at_40(approx, losses, i):
        calls.append((i, losses.size))
        if i == 40:
            raise StopIteration("enough")

    with small_model():
        tracker = Tracker(theta_mu=lambda: 0.0)
        approx = pm.fit(
            100,
            family="encoder",
            method="amortized",
            encoder_widths=(4,),
            callbacks=[tracker, CheckParametersConvergence(every=10), stop_at_40],
            progressbar=True,
        )
    assert calls[0] == (1, 1) and calls[-1][0] == 40
    assert len(tracker["theta_mu"]) == 40
    assert approx.hist.size == 39  # PyMC's loop drops the step that raised StopIteration
