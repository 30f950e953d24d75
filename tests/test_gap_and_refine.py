"""Amortization gap and semi-amortized refinement, checked against exact linear-Gaussian ELBOs."""

import numpy as np
import pymc as pm
import pytest
from gaussian_plate_models import crossed_gaussian, indexed_gaussian

import pymc_amortize
from benchmarks.gaussian_models import ExactMeanField, hmm_model, saw_model
from pymc_amortize import AmortizationError, MeanFieldELBO, SemiAmortizedApproximation
from pymc_amortize.diagnostics import meanfield_of, semi_amortize
from pymc_amortize.diagnostics.semi_amortized import _advi_start
from pymc_amortize.examples.paper import linear_data, linear_elbo, linear_model


def fit_avi(model, widths, steps=1500, seed=0, local=None):
    return pm.fit(
        steps,
        family="encoder",
        method="amortized",
        model=model,
        local=local,
        encoder_widths=widths,
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=seed,
        progressbar=False,
    )


@pytest.fixture(scope="module")
def linear_fit():
    x = linear_data(300, random_seed=2)
    model = linear_model(x)
    return x, model, fit_avi(model, (), steps=2000)


def test_evaluator_matches_exact_elbo(linear_fit):
    x, model, approx = linear_fit
    q = meanfield_of(approx)
    exact = linear_elbo(x, q["theta"].mean, q["theta"].sd, q["z"].mean, q["z"].sd)
    elbo, se = MeanFieldELBO(model, n_draws=400, random_seed=0).estimate(q)
    assert abs(elbo - exact) < 4 * se
    assert ExactMeanField(model).elbo(q) == pytest.approx(exact, abs=1e-8)


def test_refinement_starts_at_the_amortized_solution(linear_fit):
    _, model, approx = linear_fit
    start, start_sigma = _advi_start(approx)
    advi = pm.ADVI(model=model, start=start, start_sigma=start_sigma)
    q = meanfield_of(approx)
    group = advi.approx.groups[0]
    started = {
        name: (group.mean.eval()[slc].reshape(shape), group.std.eval()[slc].reshape(shape))
        for name, slc, shape, _ in group.ordering.values()
    }
    for name, factor in q.items():
        np.testing.assert_allclose(started[name][0], factor.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(started[name][1], factor.sd, rtol=1e-8)


def test_gap_is_closed_on_linear_model_with_affine_encoder(linear_fit):
    _, model, approx = linear_fit
    gap = pymc_amortize.amortization_gap(approx, n=1000, random_seed=0)
    exact = ExactMeanField(model)
    exact_gain = exact.elbo(meanfield_of(gap.refined)) - exact.elbo(meanfield_of(approx))
    assert gap.closed and "gap closed" in repr(gap)
    assert abs(gap.gain) < 0.005 * gap.n_units  # ≈ 0: well under a hundredth of a nat per unit
    assert abs(gap.gain - exact_gain) < 4 * gap.standard_error + 0.05
    # The encoder already sits at the F-VI optimum: no unit moves far.
    assert gap.unit_kl.max() < 0.05


@pytest.mark.parametrize(
    "name, build, widths",
    [("saw", lambda: saw_model(200, random_seed=1), (8,)), ("hmm", lambda: hmm_model(100), (8,))],
)
def test_gap_is_open_on_saw_with_one_input_and_hmm(name, build, widths):
    model = build()
    # The saw's Markov blanket holds x_prev too, which closes the gap; give it x alone.
    approx = fit_avi(model, widths, local={"z": "x"})
    gap = pymc_amortize.amortization_gap(approx, n=1000, random_seed=0)
    exact = ExactMeanField(model)
    before, after = exact.elbo(meanfield_of(approx)), exact.elbo(meanfield_of(gap.refined))
    assert not gap.closed and "encoder too weak" in repr(gap)
    assert gap.gain > 20 and gap.gain > 10 * gap.standard_error
    assert abs(gap.gain - (after - before)) < 4 * gap.standard_error + 0.1
    assert after == pytest.approx(exact.optimum_elbo, abs=1.5)  # F-VI reached its optimum
    # The units that moved most are those where the encoder's q(z_n) is furthest from F-VI's.
    top = gap.top_units(3)
    assert gap.unit_kl[top[0]] == gap.unit_kl.max() > 10 * np.median(gap.unit_kl)
    # The HMM's random-walk prior couples the units: no per-unit ELBO terms, KL still per unit.
    gains = gap.per_plate["unit"]["gain"].values
    assert np.isnan(gains).all() if name == "hmm" else np.isfinite(gains).all()


def test_pm_fit_refine_returns_semi_amortized_approximation():
    model = hmm_model(60, random_seed=3)
    # The analysis's verdict on the HMM is "cannot close" (it would fit z mean-field); local=
    # amortizes it anyway, with a warning naming the coupling, and the refinement closes the gap.
    with pytest.warns(pymc_amortize.CouplingWarning, match="RandomWalk"):
        semi = pm.fit(
            800,
            family="encoder",
            method="amortized",
            model=model,
            local={"z": "x"},
            encoder_widths=(8,),
            obj_optimizer=pm.adam(learning_rate=1e-2),
            semi_amortize=600,
            random_seed=0,
            progressbar=False,
        )
    assert isinstance(semi, SemiAmortizedApproximation)
    assert (semi.amortized_steps, semi.refine_steps, semi.total_steps) == (800, 600, 1400)
    assert semi.hist.shape == (1400,)
    exact = ExactMeanField(model)
    assert exact.elbo(meanfield_of(semi)) > exact.elbo(meanfield_of(semi.amortized)) + 10
    assert exact.elbo(meanfield_of(semi)) == pytest.approx(exact.optimum_elbo, abs=1.0)
    idata = semi.sample(100, random_seed=0)
    assert idata.posterior["z"].shape == (1, 100, 60)
    assert semi.encode(np.array([[0.0], [1.0]]))["z"].mean.shape == (2,)


def test_semi_amortize_rejects_bad_input(linear_fit):
    _, _, approx = linear_fit
    with pytest.raises(AmortizationError, match="positive integer"):
        semi_amortize(approx, 0)
    with pytest.raises(AmortizationError, match="AmortizedApproximation"):
        semi_amortize("not an approximation", 10)
    with pytest.raises(AmortizationError, match="tolerance"):
        pymc_amortize.amortization_gap(approx, 10, tolerance=-1.0)
    # One name per concept: refine is PyMC's "more steps of the same fit", not exported by us.
    assert not hasattr(pymc_amortize, "refine")


# -- indexed and crossed plates ------------------------------------------------------------------
@pytest.mark.parametrize(
    "build, plates",
    [(indexed_gaussian, {"county": 10}), (crossed_gaussian, {"actor": 12, "block": 5})],
    ids=["indexed", "crossed"],
)
def test_gap_per_plate_on_indexed_and_crossed_models(build, plates):
    model = build()
    approx = fit_avi(model, (8,), steps=400)
    assert {p.name: p.size for p in approx.analysis.plates} == plates
    gap = pymc_amortize.amortization_gap(approx, n=800, n_draws=300, random_seed=0)
    exact = ExactMeanField(model)
    before, after = exact.elbo(meanfield_of(approx)), exact.elbo(meanfield_of(gap.refined))
    # Per-unit F-VI from the encoder's solution cannot lose ELBO: the gap is >= 0 within MC
    # error, and equals the exact rise.
    assert gap.gain > -3 * gap.standard_error
    assert abs(gap.gain - (after - before)) < 4 * gap.standard_error + 0.1
    assert after > before - 0.05
    # One result per unit, per plate, under the plate's model dim and coords.
    assert gap.n_units == sum(plates.values())
    assert set(gap.per_plate) == set(plates)
    for name, ds in gap.per_plate.items():
        assert ds["kl"].dims == ds["gain"].dims == (name,)
        np.testing.assert_array_equal(ds[name].values, np.asarray(model.coords[name]))
        assert (ds["kl"].values >= 0).all() and np.isfinite(ds["gain"].values).all()
        assert (ds["gain_se"].values > 0).all()
        assert f"plate {name}" in repr(gap)
    assert gap.unit_kl.size == max(plates.values())


def test_semi_amortize_on_an_indexed_model_starts_at_the_encoder():
    model = indexed_gaussian(seed=1)
    approx = fit_avi(model, (8,), steps=300)
    semi = semi_amortize(approx, 300, random_seed=0, progressbar=False)
    assert "county: 10" in repr(semi)
    q, refined = meanfield_of(approx), meanfield_of(semi)
    assert refined["a"].mean.shape == q["a"].mean.shape == (10,)
    exact = ExactMeanField(model)
    assert exact.elbo(refined) > exact.elbo(q) - 0.05
    assert semi.sample(20, random_seed=0).posterior["a"].shape == (1, 20, 10)
    start, start_sigma = _advi_start(approx)
    np.testing.assert_allclose(start["a"], q["a"].mean, rtol=1e-12)
    np.testing.assert_allclose(start_sigma["a"], q["a"].sd, rtol=1e-12)
