"""ELBOConvergence stops A-VI and ADVI when the windowed loss is flat, not before."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

from pymc_amortize import AmortizationError, ELBOConvergence


def _run(callback, losses):
    """Feed a loss trace step by step, as PyMC's loop does; the step it stopped at, or None."""
    for i in range(1, losses.size + 1):
        try:
            callback(None, losses[:i], i)
        except StopIteration:
            return i
    return None


def test_stops_on_the_first_flat_windows_and_not_while_improving():
    rng = np.random.default_rng(0)
    steps = np.arange(6000)
    # Improves by ~1% per 100-step window until step 3000, then flat at 1000 with noise sd 5.
    trend = 1000 + 1000 * np.exp(-np.minimum(steps, 3000) / 1000.0) * (steps < 3000)
    losses = trend + rng.normal(0, 5, steps.size)
    stop = _run(ELBOConvergence(window=100, tolerance=1e-3, patience=2), losses)
    assert stop is not None and 3000 < stop <= 3500
    # A steadily improving trace is never stopped.
    assert (
        _run(ELBOConvergence(window=100, tolerance=1e-4), 1000 + np.linspace(1000, 0, 6000)) is None
    )


def test_rejects_bad_settings():
    with pytest.raises(AmortizationError, match="window"):
        ELBOConvergence(window=1)
    with pytest.raises(AmortizationError, match="patience"):
        ELBOConvergence(patience=0)


@pytest.mark.parametrize("method", ["amortized", "advi"])
def test_stops_a_fit_near_its_converged_loss(method):
    x = np.random.default_rng(1).normal(size=500)
    with pm.Model(coords={"unit": range(x.size)}):
        theta = pm.Normal("theta", 0, 10)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("x", theta + z, 1.0, observed=x, dims="unit")
        stop = ELBOConvergence(window=200, tolerance=1e-3)
        approx = pm.fit(
            20_000,
            method=method,
            callbacks=[stop],
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=0,
            progressbar=False,
        )
    hist = np.asarray(approx.hist)
    assert stop.stopped_at is not None and stop.stopped_at < 20_000
    assert stop.stopped_at - 1 <= hist.size <= stop.stopped_at  # PyMC keeps the losses before i
    # Converged: the last window's mean is within 0.5% of the best window's mean.
    windows = hist[: hist.size // 200 * 200].reshape(-1, 200).mean(axis=1)
    assert windows[-1] - windows.min() < 5e-3 * abs(windows.min())
