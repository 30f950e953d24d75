"""Encoder inputs that are not plain measurements (issue 21, items 4 and 7), and the guard on the
encoder's outputs for new units.

* NaN / ±inf in an input (a censoring bound of ``np.inf``): a finite value and an indicator
  column, the same in the step, ``encode(new_data)`` and save/load; never a refusal.
* Inputs constant over the fitted units (a balanced design's row count): standardised safely,
  and new units with another row count checked against the exact conditional posterior.
* A new unit's non-finite or absurd q(z) is an error naming the latent and the unit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytensor
import pytest

from pymc_amortize import (
    AmortizationError,
    OutOfTrainingRangeWarning,
    load_approximation,
    save_approximation,
)
from pymc_amortize.data.scaling import standardization_scale
from pymc_amortize.guide.inputs import EncoderInput, InputScaling, fit_scaling


# -- the scalings, without a fit ------------------------------------------------------------------
def test_a_constant_column_is_not_blown_up_by_its_rounding_level_sd():
    log_counts = np.log1p(np.full(60, 6))
    assert 0 < log_counts.std() < 1e-15  # the balanced design's count: sd 4e-16, not 0
    assert standardization_scale(log_counts.std(), log_counts.mean()) == 1.0
    # A genuinely small spread is kept.
    assert standardization_scale(1e-3, 1.0) == 1e-3
    scaling = InputScaling.fit(np.column_stack([np.full(5, 3.0), np.arange(5.0)]), True)
    assert scaling.constant == (0,) and scaling.center[0] == 3.0 and scaling.scale[0] == 1.0
    np.testing.assert_array_equal(scaling.apply(np.array([[3.0, 2.0]]))[:, 0], [0.0])


def test_non_finite_entries_get_a_value_and_an_indicator_in_numpy_and_in_the_graph():
    bound = np.array([2.0, np.inf, 4.0, np.inf, 6.0])
    other = np.arange(5.0)[:, None]
    scaling = fit_scaling([bound[:, None], other], True)
    assert scaling.flagged == (0,) and scaling.raw_width == 2 and len(scaling.center) == 3
    assert scaling.labels(("upper", "x")) == ("upper", "x", "upper is finite")
    # The finite values' mean and sd; the indicator's mean 3/5.
    np.testing.assert_allclose(scaling.center, [4.0, 2.0, 0.6])
    np.testing.assert_allclose(scaling.scale[[0, 2]], [np.std([2, 4, 6]), np.sqrt(0.24)])
    encoded = scaling.apply(np.column_stack([bound, other]))
    assert np.isfinite(encoded).all()
    np.testing.assert_allclose(encoded[[1, 3], 0], 0.0)  # inf reads as the centre
    np.testing.assert_allclose(encoded[:, 2] * np.sqrt(0.24) + 0.6, np.isfinite(bound))
    # The step's graph computes the same columns from the raw shared arrays.
    data = EncoderInput("probe", [bound[:, None], other], scaling)
    assert data.width == 3
    graph = pytensor.function([], data.symbolic(lambda column: column), mode="FAST_COMPILE")()
    np.testing.assert_allclose(graph, encoded, rtol=1e-6)
    np.testing.assert_allclose(data.chunk(), encoded, rtol=1e-6)
    # The indicator distinguishes -inf / NaN the same way; a saved fit's flags can be imposed.
    forced = fit_scaling([np.arange(4.0)[:, None]], True, flagged=(0,))
    assert forced.flagged == (0,) and 1 in forced.constant  # its indicator is always 1


# -- a balanced design: y_ij ~ N(theta + z_j, SIGMA), z_j ~ N(0, tau), six rows per unit -----------
J, ROWS, SIGMA = 60, 6, 1.0


def balanced_model(seed: int = 1) -> tuple[pm.Model, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), ROWS)
    y = 0.5 + rng.normal(0, 0.8, J)[g] + rng.normal(0, SIGMA, J * ROWS)
    with pm.Model(coords={"unit": range(J), "obs": range(J * ROWS)}) as model:
        idx = pm.Data("g", g, dims="obs")
        theta = pm.Normal("theta", 0, 5)
        tau = pm.HalfNormal("tau", 2)
        z = pm.Normal("z", 0, tau, dims="unit")
        pm.Normal("y", theta + z[idx], SIGMA, observed=y, dims="obs")
    return model, g, y


@pytest.fixture(scope="module")
def balanced():
    model, g, y = balanced_model()
    approx = pm.fit(
        3000,
        family="encoder",
        method="amortized",
        model=model,
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=0,
        progressbar=False,
    )
    return approx, g, y


def _exact(approx, rows: np.ndarray) -> tuple[float, float]:
    """The conditional posterior of z given the rows, at q(θ)'s mean of theta and of log tau."""
    factors = approx.global_factors()
    theta = float(factors["theta"][0])
    tau = float(np.exp(factors["tau_log__"][0]))
    precision = rows.size / SIGMA**2 + 1 / tau**2
    return (rows - theta).sum() / SIGMA**2 / precision, 1 / np.sqrt(precision)


@pytest.mark.slow
def test_balanced_design_new_units_with_other_row_counts_match_the_closed_form(balanced, tmp_path):
    """Before: every fitted unit has 6 rows, so the row count's sd was 4e-16 and a new unit with
    2 or 12 rows was encoded with a mean of -2e14 and an sd of 0 or inf. Reading such a unit as
    one of 6 rows (finite, but the encoder cannot see the count) puts its sd 27% low for 2 rows
    and 38% high for 12; the rows' message scaled by n/6 gives the posterior of n rows."""
    approx, g, y = balanced
    # The fitted units are near the closed form (the encoder's own accuracy).
    q = approx.encode()["z"]
    for j in range(0, J, 7):
        mean, sd = _exact(approx, y[g == j])
        assert abs(q.mean[j] - mean) < 0.4 * sd and abs(q.sd[j] / sd - 1) < 0.1
    rng = np.random.default_rng(5)
    for n in (2, 12):
        rows = 1.2 + rng.normal(0, SIGMA, n)
        with pytest.warns(OutOfTrainingRangeWarning, match=rf"{n} rows, outside .*\[6, 6\]"):
            q = approx.encode({"y": rows, "g": np.zeros(n, dtype=np.int64)})["z"]
        mean, sd = _exact(approx, rows)
        assert np.isfinite(q.mean).all() and np.isfinite(q.sd).all()
        assert abs(q.mean[0] - mean) < 0.5 * sd, (n, q.mean[0], mean, sd)
        assert abs(q.sd[0] / sd - 1) < 0.15, (n, q.sd[0], sd)
    # Several new units at once, one of them with 6 rows (the encoder's own output, untouched).
    rows = 1.2 + rng.normal(0, SIGMA, 14)
    index = np.repeat([0, 1, 2], [2, 6, 6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfTrainingRangeWarning)
        q = approx.encode({"y": rows, "g": index})["z"]
        alone = approx.encode({"y": rows[2:8], "g": np.zeros(6, dtype=np.int64)})["z"]
    np.testing.assert_allclose([q.mean[1], q.sd[1]], [alone.mean[0], alone.sd[0]], rtol=1e-6)
    for j in range(3):
        mean, sd = _exact(approx, rows[index == j])
        assert abs(q.mean[j] - mean) < 0.5 * sd and abs(q.sd[j] / sd - 1) < 0.15
    # Saved and loaded (onto a model of other balanced data): the same q for the 2-row unit.
    save_approximation(approx, tmp_path / "balanced")
    loaded = load_approximation(tmp_path / "balanced", model=balanced_model(seed=2)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfTrainingRangeWarning)
        again = loaded.encode({"y": rows, "g": index})["z"]
    np.testing.assert_allclose(again.mean, q.mean, rtol=1e-5)
    np.testing.assert_allclose(again.sd, q.sd, rtol=1e-5)


# -- censoring bounds with inf (c13, smaller) ----------------------------------------------------
def censored_model(
    clinic: np.ndarray, time: np.ndarray, upper: np.ndarray, n_clinics: int
) -> pm.Model:
    with pm.Model(coords={"clinic": np.arange(n_clinics), "obs": np.arange(time.size)}) as model:
        ci = pm.Data("clinic_idx", clinic, dims="obs")
        f = pm.Normal("f", 0, pm.HalfNormal("sd_f", 1), dims="clinic")
        scale = pm.math.exp(pm.Normal("b0", 0, 2) + f[ci])
        pm.Censored(
            "time",
            pm.Weibull.dist(alpha=pm.HalfNormal("shape", 2), beta=scale),
            lower=None,
            upper=upper,
            observed=time,
            dims="obs",
        )
    return model


def censored_data(seed: int = 13, n_clinics: int = 40, n: int = 400):
    """c13's data: right-censored Weibull times, a frailty per clinic."""
    rng = np.random.default_rng(seed)
    clinic = rng.integers(0, n_clinics, n)
    frailty = rng.normal(0, 0.5, n_clinics)
    t = rng.weibull(1.5, n) * np.exp(1.0 + frailty[clinic])
    cap = rng.uniform(1.0, 6.0, n)
    return clinic, np.minimum(t, cap), np.where(t > cap, cap, np.inf)


@pytest.mark.slow
def test_censoring_bound_with_inf_is_encoded_and_fits(tmp_path):
    """c13 (fewer steps): the bound np.where(censored, c, inf) feeds the encoder; it was refused.
    The encoded bound and its indicator match what the likelihood reads: censored rows carry
    less information, and the encoder sees which rows they are."""
    clinic, time, upper = censored_data()
    model = censored_model(clinic, time, upper, 40)
    approx = pm.fit(
        4000,
        family="encoder",
        method="amortized",
        model=model,
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=0,
        progressbar=False,
    )
    name = next(d.key for d in approx.analysis.latents[0].row_inputs if d.key != "time")
    rows = approx.inputs["f"].rows
    assert rows.flagged == (1,) and rows.width == 3
    assert approx.envelopes["f"].rows.labels[-1] == f"{name} is finite"
    post = approx.sample(1000, random_seed=1).posterior
    assert np.isfinite(post["f"].values).all()
    assert 0.2 < float(post["sd_f"].mean()) < 1.2
    # New clinics: rows censored or not, and a clinic with censored rows only.
    new = {"time": time[:6], name: upper[:6], "clinic_idx": np.array([0, 0, 0, 1, 1, 1])}
    q = approx.encode(new, check_range=False)["f"]
    assert np.isfinite(q.mean).all() and np.isfinite(q.sd).all()
    draws = approx.sample_new_units(new, 50, random_seed=0, check_range=False)
    assert np.isfinite(draws.posterior["f"].values).all()
    # An inf in a column that was finite in training has no encoding: an error naming it.
    bad = dict(new, time=np.r_[np.inf, time[1:6]])
    with pytest.raises(AmortizationError, match="time was finite for every fitted unit"):
        approx.encode(bad)
    # Saved, and loaded onto a model whose rows are all censored (its bound has no inf): the
    # saved flags fix the encoder's width, and q is the same.
    save_approximation(approx, tmp_path / "censored")
    all_censored = censored_model(clinic[:80], time[:80], time[:80] + 1.0, 40)
    loaded = load_approximation(tmp_path / "censored", model=all_censored)
    again = loaded.encode(new, check_range=False)["f"]
    np.testing.assert_allclose(again.mean, q.mean, rtol=1e-5)
    np.testing.assert_allclose(again.sd, q.sd, rtol=1e-5)


# -- the guard on new units' outputs ------------------------------------------------------------
@pytest.mark.slow
def test_absurd_new_unit_outputs_raise_naming_the_latent_and_units():
    rng = np.random.default_rng(2)
    counts = rng.poisson(rng.gamma(2.0, 2.0, size=100)[:, None], size=(100, 4))
    with pm.Model(coords={"user": range(100), "visit": range(4)}) as model:
        lam = pm.Gamma("lam", pm.HalfNormal("alpha", 5), pm.HalfNormal("beta", 5), dims="user")
        pm.Poisson("counts", lam[:, None], observed=counts, dims=("user", "visit"))
    approx = pm.fit(
        800,
        family="encoder",
        method="amortized",
        model=model,
        encoder_widths=(8,),
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=0,
        progressbar=False,
    )
    # Far outside the training range, but an answer (c09's case): a warning, finite numbers.
    with pytest.warns(OutOfTrainingRangeWarning):
        q = approx.encode({"counts": np.full((1, 4), 120)})["lam"]
    assert np.isfinite(q.mean).all()
    # Counts of 1e9 per visit: the ReLU encoder's output is its linear extrapolation, a log rate
    # of thousands (or more), which is no posterior. An error names the latent and the unit.
    far = np.vstack([counts[:2], np.full((1, 4), 10**9)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfTrainingRangeWarning)
        with pytest.raises(AmortizationError, match=r"'lam' gave 1 new unit\(s\) \(2\)"):
            approx.encode({"counts": far})
        with pytest.raises(AmortizationError, match=r"'lam' gave 1 new unit"):
            approx.sample_new_units({"counts": far}, 10, random_seed=0)
