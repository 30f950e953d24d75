"""Every public feature on every plate kind: one parametrized matrix, model kinds x features.

Kinds (``tests/plate_models.py``): row units, vector latent, transformed latent, indexed,
non-centred indexed, crossed (actor x block), nested (county + state from houses), a unit-level
pm.Data covariate, Dirichlet local (per-document topic proportions, Multinomial likelihood).

Features: encode, sample, sample_new_units, save/load, amortization_gap, semi_amortize (per-unit
F-VI), psis_diagnostic, compare, plots. Each kind is fitted once per module (short fits, fixed
seeds) and every cell checks numbers a broken feature would fail: shapes and dims/coords under the
plate's dim, agreement between encode and draws within Monte Carlo error, identity of round trips.
The slow anchors compare the encoder with the exact conditional posterior of conjugate kinds.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import plate_models
import pymc as pm
import pytensor.tensor as pt
import pytest
from matplotlib.figure import Figure
from plate_models import KINDS

import pymc_amortize
from pymc_amortize import (
    AmortizationError,
    SemiAmortizedApproximation,
    amortization_gap,
    load_approximation,
    psis_diagnostic,
    save_approximation,
    semi_amortize,
)
from pymc_amortize.diagnostics import MeanFieldELBO, meanfield_of
from pymc_amortize.plots import plot_encoder, plot_khat, plot_loss, plot_posterior_comparison

KIND_NAMES = list(KINDS)
FIT_STEPS = 500
GAP_STEPS = 300
WIDTHS = (16,)
DRAWS = 1000
NEW_UNITS = 3

# Known bugs of pymc_amortize, one strict xfail per failing cell: when a bug is fixed its cells
# XPASS, which fails the suite until the entry here is removed.
XFAIL: dict[tuple[str, str], str] = {}


def cells(feature):
    """The kinds of one feature's column, known bugs marked as strict xfails."""
    return [
        pytest.param(
            name,
            marks=pytest.mark.xfail(strict=True, raises=ValueError, reason=XFAIL[feature, name]),
        )
        if (feature, name) in XFAIL
        else name
        for name in KIND_NAMES
    ]


def _fit(model, steps=FIT_STEPS, widths=WIDTHS, seed=0, **options):
    options.setdefault("family", "encoder")
    return pm.fit(
        steps,
        method="amortized",
        model=model,
        encoder_widths=widths,
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=seed,
        progressbar=False,
        **options,
    )


class _Cache:
    """Module-wide cache: each kind is built and fitted once, each costly result computed once."""

    def __init__(self):
        self.store = {}

    def get(self, key, make):
        if key not in self.store:
            self.store[key] = make()
        return self.store[key]

    def kind(self, name):
        return self.get(("kind", name), KINDS[name])

    def approx(self, name):
        kind = self.kind(name)
        return self.get(("fit", name), lambda: _fit(kind.model, **kind.fit_options))

    def conditional(self, name):
        """The conditional family's fit of kind ``name``, on a model of its own (the encoder
        rows' fit stays as it is)."""
        kind = self.get(("kind", name, "conditional"), KINDS[name])
        return self.get(
            ("fit", name, "conditional"),
            lambda: _fit(kind.model, family="conditional", **kind.fit_options),
        )

    def sample(self, name):
        return self.get(("sample", name), lambda: self.approx(name).sample(DRAWS, random_seed=1))

    def gap(self, name):
        return self.get(
            ("gap", name),
            lambda: amortization_gap(self.approx(name), n=GAP_STEPS, n_draws=200, random_seed=2),
        )

    def psis(self, name):
        return self.get(
            ("psis", name), lambda: psis_diagnostic(self.approx(name), draws=400, random_seed=3)
        )


@pytest.fixture(scope="module")
def cache():
    return _Cache()


# -- helpers ---------------------------------------------------------------------------------------
def _units(model, plate):
    """The coords of a plate's units: the model's coords of its dim, else positions."""
    coords = model.coords.get(plate.name)
    return np.asarray(coords) if coords is not None else np.arange(plate.size)


def _to_value_space(model, name, draws):
    """Constrained draws (..., *shape) of ``name`` mapped to its value (unconstrained) space."""
    rv = model[name]
    transform = model.rvs_to_transforms.get(rv)
    if transform is None:
        return np.asarray(draws)
    return transform.forward(pt.as_tensor(np.asarray(draws)), *rv.owner.inputs).eval()


def _check_plates(approx, kind):
    found = {p.name: list(p.latent_names) for p in approx.analysis.plates}
    assert found == kind.plates, approx.analysis.summary()


def _mc_z(sample_mean, q_mean, q_sd, draws):
    """|sample mean − q mean| in Monte Carlo standard errors."""
    return np.abs(sample_mean - q_mean) / (q_sd / np.sqrt(draws))


def _mixture_z(a_mean, b_mean, sd, draws_a, draws_b):
    """|a − b| in standard errors of the difference of two Monte Carlo means of sd ``sd``
    (``draws_b`` infinite: ``b`` is exact, and this is :func:`_mc_z`)."""
    return np.abs(a_mean - b_mean) / (sd * np.sqrt(1 / draws_a + 1 / draws_b))


# -- checks shared by the encoder family's rows and the conditional family's ----------------------
def _check_fit(approx, kind):
    """The fit found the kind's plates, ran every step with a finite loss, and the loss fell."""
    _check_plates(approx, kind)
    assert np.isfinite(approx.hist).all() and approx.hist.shape == (FIT_STEPS,)
    assert approx.hist[-50:].mean() < approx.hist[:50].mean()


def _check_encoded(approx, encoded):
    """encode() of the fitted units: every latent, shaped (units, *event_shape), finite, sd > 0,
    and input-dependent (units differ)."""
    assert set(encoded) == set(approx.analysis.latent_names)
    for plate in approx.analysis.plates:
        for latent in plate.latents:
            q = encoded[latent.name]
            shape = (plate.size, *latent.event_shape)
            assert q.mean.shape == q.sd.shape == shape
            assert np.isfinite(q.mean).all() and (q.sd > 0).all() and np.isfinite(q.sd).all()
            assert np.ptp(q.mean.reshape(plate.size, -1), axis=0).max() > 1e-3


def _check_sample(approx, idata, encoded, q_draws=np.inf):
    """``sample()``'s draws against ``encoded`` (encode() of the fitted units, its moments from
    ``q_draws`` Monte Carlo draws; infinite: exact): encoder_outputs equal to it under the plate's
    dim and coords, the latents' draws under that dim with value-space moments within Monte
    Carlo error, and the globals' draws against variational_params."""
    model = approx.model
    outputs = idata["encoder_outputs"]
    for plate in approx.analysis.plates:
        units = _units(model, plate)
        for latent in plate.latents:
            q = encoded[latent.name]
            out = outputs[latent.value_name]
            assert out.dims[:2] == ("param", plate.name)
            np.testing.assert_array_equal(out[plate.name].values, units)
            np.testing.assert_allclose(out.sel(param="mean").values, q.mean, rtol=1e-12)
            np.testing.assert_allclose(out.sel(param="sd").values, q.sd, rtol=1e-12)
            post = idata.posterior[latent.name]
            assert post.dims[:3] == ("chain", "draw", plate.name)
            np.testing.assert_array_equal(post[plate.name].values, units)
            values = _to_value_space(model, latent.name, post.values[0])
            assert values.shape == (DRAWS, *q.mean.shape)
            assert _mixture_z(values.mean(0), q.mean, q.sd, DRAWS, q_draws).max() < 4.5
            np.testing.assert_allclose(values.std(0), q.sd, rtol=0.15)
    params = idata["variational_params"]
    for value_name in params.data_vars:
        mean = params[value_name].sel(param="mean").values
        sd = params[value_name].sel(param="sd").values
        rv_name = params[value_name].attrs["variable"]
        values = _to_value_space(model, rv_name, idata.posterior[rv_name].values[0])
        assert _mc_z(values.mean(0), mean, sd, DRAWS).max() < 4.5


def _check_new_unit_draws(approx, idata, plate, mean, sd, q_draws=np.inf):
    """``sample_new_units()``'s draws of ``plate``'s NEW_UNITS new units under ``new_unit``, in
    the latents' support, with value-space moments those of q (``mean``, ``sd`` by latent name,
    from ``q_draws`` Monte Carlo draws; infinite: exact) within Monte Carlo error."""
    model = approx.model
    for latent in plate.latents:
        draws = idata.posterior[latent.name]
        assert draws.dims[:3] == ("chain", "draw", "new_unit")
        assert draws.sizes["new_unit"] == NEW_UNITS
        values = _to_value_space(model, latent.name, draws.values[0])
        value_shape = tuple(model.initial_point()[latent.value_name].shape[1:])
        assert values.shape == (DRAWS, NEW_UNITS, *value_shape)
        # In the support: the value-space map back is finite (a negative rate or a proportion
        # off the simplex would give NaN).
        assert np.isfinite(values).all()
        m, s = mean[latent.name], sd[latent.name]
        assert _mixture_z(values.mean(0), m, s, DRAWS, q_draws).max() < 4.5
        np.testing.assert_allclose(values.std(0), s, rtol=0.15)


def _check_same_encode(before, after, names):
    """Two encode() results agree to 1e-10 (a save/load round trip)."""
    for name in names:
        np.testing.assert_allclose(after[name].mean, before[name].mean, rtol=0, atol=1e-10)
        np.testing.assert_allclose(after[name].sd, before[name].sd, rtol=0, atol=1e-10)


def _check_gap_plates(approx, gap):
    """The gap's per-plate and per-unit results under each plate's dim and coords."""
    assert set(gap.per_plate) == {p.name for p in approx.analysis.plates}
    for plate in approx.analysis.plates:
        ds = gap.per_plate[plate.name]
        for var in ("kl", "gain", "gain_se"):
            assert ds[var].dims == (plate.name,)
            assert np.isfinite(ds[var].values).all(), var
        np.testing.assert_array_equal(ds[plate.name].values, _units(approx.model, plate))
        assert (ds["kl"].values >= 0).all()
        assert (ds["gain_se"].values >= 0).all()
    assert gap.n_units == sum(p.size for p in approx.analysis.plates)


def _check_psis(approx, diagnostic):
    """PSIS over 400 draws: finite k-hats per plate and unit under each plate's dim, normalised
    smoothed weights, resampled draws under each plate's dim."""
    assert np.isfinite(diagnostic.khat)
    assert diagnostic.log_weights.dims == ("draw",) and diagnostic.log_weights.size == 400
    assert np.isfinite(diagnostic.log_weights.values).all()
    np.testing.assert_allclose(np.exp(diagnostic.smoothed_log_weights.values).sum(), 1.0)
    assert set(diagnostic.khat_per_plate) == {p.name for p in approx.analysis.plates}
    for plate in approx.analysis.plates:
        khat = diagnostic.khat_per_plate[plate.name]
        assert khat.dims == (plate.name,) and khat.size == plate.size
        np.testing.assert_array_equal(khat[plate.name].values, _units(approx.model, plate))
        assert np.isfinite(khat.values).all()
    resampled = diagnostic.resample(50, random_seed=0)
    for plate in approx.analysis.plates:
        for latent in plate.latent_names:
            post = resampled.posterior[latent]
            assert post.sizes["draw"] == 50 and post.dims[2] == plate.name
            np.testing.assert_array_equal(post[plate.name].values, _units(approx.model, plate))


def _check_compare(result, plates):
    """compare()'s rows (amortized, then advi: finite, FIT_STEPS steps), both methods' draws under
    each plate's dim with the same coords, and its plot."""
    assert [row["method"] for row in result.rows] == ["amortized", "advi"]
    for row in result.rows:
        assert np.isfinite([row["elbo"], row["elbo_se"], row["wall_s"]]).all()
        assert row["steps"] == FIT_STEPS and row["n_params"] > 0
    for plate in plates:
        for latent in plate.latent_names:
            post = result.idata["advi"].posterior[latent]
            assert post.dims[2] == plate.name
            np.testing.assert_array_equal(
                result.idata["amortized"].posterior[latent][plate.name].values,
                post[plate.name].values,
            )
    ax = result.plot()
    assert len(ax.lines) >= 2
    plt.close(ax.figure)


def _axes_with_data(fig):
    return [ax for ax in fig.axes if ax.lines or ax.collections or ax.patches]


def _check_plots(idata, diagnostic, plates):
    """plot_loss (FIT_STEPS losses), plot_khat (an axes per plate, a point per unit) and
    plot_posterior_comparison of the first latent."""
    fig = plot_loss({"A-VI": idata})
    assert isinstance(fig, Figure) and _axes_with_data(fig)
    assert fig.axes[0].lines[0].get_ydata().size == FIT_STEPS
    plt.close(fig)
    fig = plot_khat(diagnostic)
    assert isinstance(fig, Figure) and len(fig.axes) == len(plates)
    for ax, plate in zip(fig.axes, plates, strict=True):
        assert len(ax.collections[0].get_offsets()) == plate.size
    plt.close(fig)
    latent = plates[0].latents[0].name
    fig = plot_posterior_comparison({"A-VI": idata}, var_names=[latent], kind="forest")
    assert isinstance(fig, Figure) and _axes_with_data(fig)
    plt.close(fig)


# -- the matrix -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", cells("encode"))
def test_encode(cache, name):
    kind, approx = cache.kind(name), cache.approx(name)
    _check_fit(approx, kind)
    encoded = approx.encode()
    _check_encoded(approx, encoded)
    for plate in approx.analysis.plates:
        for latent in plate.latents:
            # Shape of the value variable of the model.
            value_shape = approx.model.initial_point()[latent.value_name].shape
            assert encoded[latent.name].mean.shape == value_shape


@pytest.mark.parametrize("name", cells("sample"))
def test_sample(cache, name):
    approx = cache.approx(name)
    model = approx.model
    idata = cache.sample(name)
    # encoder_outputs is encode() (exact moments); draws within Monte Carlo error of it.
    _check_sample(approx, idata, approx.encode())
    for plate in approx.analysis.plates:
        for latent in plate.latents:
            assert idata["encoder_outputs"][latent.value_name].attrs["plate"] == plate.name
            post = idata.posterior[latent.name]
            assert post.dims[2:] == tuple(model.named_vars_to_dims[latent.name])
    # Deterministics (e.g. the non-centred a = mu + s a_raw) come along under their dims.
    for det in model.deterministics:
        assert idata.posterior[det.name].dims[2:] == tuple(model.named_vars_to_dims[det.name])
        assert np.isfinite(idata.posterior[det.name].values).all()


@pytest.mark.parametrize("name", cells("sample_new_units"))
def test_sample_new_units(cache, name):
    kind, approx = cache.kind(name), cache.approx(name)
    fitted = approx.encode()
    new = kind.new_units(NEW_UNITS)
    assert set(new) == set(kind.plates)
    for plate in approx.analysis.plates:
        new_data = new[plate.name]
        # The first k units' data, given as new units, are encoded as when fitted.
        encoded = approx.encode(new_data)
        for latent in plate.latents:
            np.testing.assert_allclose(
                encoded[latent.name].mean,
                fitted[latent.name].mean[:NEW_UNITS],
                rtol=1e-8,
                atol=1e-10,
            )
            np.testing.assert_allclose(
                encoded[latent.name].sd, fitted[latent.name].sd[:NEW_UNITS], rtol=1e-8
            )
        idata = approx.sample_new_units(new_data, draws=DRAWS, random_seed=4)
        mean = {lat.name: fitted[lat.name].mean[:NEW_UNITS] for lat in plate.latents}
        sd = {lat.name: fitted[lat.name].sd[:NEW_UNITS] for lat in plate.latents}
        _check_new_unit_draws(approx, idata, plate, mean, sd)


@pytest.mark.parametrize("name", cells("save_load"))
def test_save_load(cache, name, tmp_path):
    kind, approx = cache.kind(name), cache.approx(name)
    save_approximation(approx, tmp_path / name)
    fresh = KINDS[name]()  # the same model rebuilt, as in a new session
    loaded = load_approximation(tmp_path / name, model=fresh.model)
    _check_plates(loaded, kind)
    _check_same_encode(approx.encode(), loaded.encode(), approx.analysis.latent_names)
    for plate in approx.analysis.plates:
        new_data = kind.new_units(NEW_UNITS)[plate.name]
        _check_same_encode(approx.encode(new_data), loaded.encode(new_data), plate.latent_names)
    if approx.globals is not None:
        np.testing.assert_array_equal(
            loaded.globals.mean_and_scale()[0], approx.globals.mean_and_scale()[0]
        )
        np.testing.assert_array_equal(
            loaded.globals.mean_and_scale()[1], approx.globals.mean_and_scale()[1]
        )
    idata = loaded.sample(20, random_seed=0)
    for plate in loaded.analysis.plates:
        for latent in plate.latent_names:
            assert idata.posterior[latent].dims[2] == plate.name


@pytest.mark.parametrize("name", cells("amortization_gap"))
def test_amortization_gap(cache, name):
    approx = cache.approx(name)
    gap = cache.gap(name)
    assert np.isfinite([gap.gain, gap.standard_error, gap.elbo_amortized, gap.elbo_refined]).all()
    assert gap.standard_error > 0
    # Per-unit F-VI started at the encoder does not lower the ELBO.
    assert gap.gain >= -3 * gap.standard_error, repr(gap)
    assert gap.elbo_refined - gap.elbo_amortized == pytest.approx(gap.gain, rel=1e-6, abs=1e-6)
    _check_gap_plates(approx, gap)
    assert isinstance(gap.closed, bool) and gap.verdict in repr(gap)


@pytest.mark.parametrize("name", cells("semi_amortize"))
def test_semi_amortize(cache, name):
    approx, gap = cache.approx(name), cache.gap(name)
    model = approx.model
    semi = gap.refined
    assert isinstance(semi, SemiAmortizedApproximation)
    assert semi.amortized is approx
    assert (semi.amortized_steps, semi.refine_steps) == (FIT_STEPS, GAP_STEPS)
    assert semi.hist.shape == (FIT_STEPS + GAP_STEPS,) and np.isfinite(semi.hist).all()
    before, after = meanfield_of(approx), meanfield_of(semi)
    assert set(after) == set(before) == {v.name for v in model.value_vars}
    for plate in approx.analysis.plates:
        for latent in plate.latents:
            a = after[latent.value_name]
            assert a.mean.shape == (plate.size, *latent.event_shape)
            assert np.isfinite(a.mean).all() and (a.sd > 0).all()
    # The refined q scores at least as well as the encoder's, on other shared draws than the gap's.
    evaluator = MeanFieldELBO(model, n_draws=200, random_seed=5)
    gain, se = evaluator.difference(after, before)
    assert gain >= -3 * se
    # Its draws keep the model's dims.
    idata = semi.sample(50, random_seed=0)
    for plate in approx.analysis.plates:
        for latent in plate.latent_names:
            post = idata.posterior[latent]
            assert post.dims[2] == plate.name
            np.testing.assert_array_equal(post[plate.name].values, _units(model, plate))
    # Every unit starts at its own encoder output and every global at q(theta): one step at a
    # vanishing rate leaves q where A-VI put it (a misaligned or shuffled start would not).
    start = semi_amortize(approx, 1, learning_rate=1e-12, average_last=0.0, progressbar=False)
    assert start.refine_steps == 1
    started = meanfield_of(start)
    for value_name, factor in before.items():
        np.testing.assert_allclose(started[value_name].mean, factor.mean, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(started[value_name].sd, factor.sd, rtol=1e-6)


@pytest.mark.parametrize("name", cells("psis_diagnostic"))
def test_psis_diagnostic(cache, name):
    approx = cache.approx(name)
    diagnostic = cache.psis(name)
    _check_psis(approx, diagnostic)
    biggest = max(approx.analysis.plates, key=lambda p: p.size)
    assert diagnostic.khat_per_unit.dims == (biggest.name,)
    assert "overall" in diagnostic.summary()
    assert diagnostic.to_dataset()["pareto_k"].dims == (biggest.name,)


@pytest.mark.parametrize("name", cells("compare"))
def test_compare(cache, name):
    kind = cache.kind(name)
    model = kind.model
    adam = {"obj_optimizer": pm.adam(learning_rate=1e-2)}
    result = pymc_amortize.compare(
        model,
        n=FIT_STEPS,
        options={
            "amortized": {
                "family": "encoder",
                "encoder_widths": WIDTHS,
                **adam,
                **kind.fit_options,
            },
            "advi": adam,
        },
        n_draws=100,
        draws=200,
        random_seed=0,
    )
    _check_compare(result, result.approximations["amortized"].analysis.plates)
    table = result.to_dataset()
    assert list(table["method"].values) == ["amortized", "advi"]
    # Each row scores the approximation returned beside it, on the shared draws.
    evaluator = MeanFieldELBO(model, n_draws=100, random_seed=0)
    for row in result.rows:
        elbo, se = evaluator.estimate(meanfield_of(result.approximations[row["method"]]))
        assert (row["elbo"], row["elbo_se"]) == pytest.approx((elbo, se), rel=1e-9)
    # Per-unit errors of the amortized posterior means against ADVI's, under each plate's dim.
    amortized = meanfield_of(result.approximations["amortized"])
    advi = meanfield_of(result.approximations["advi"])
    analysis = result.approximations["amortized"].analysis
    for plate in analysis.plates:
        for latent in plate.latents:
            a, b = amortized[latent.value_name], advi[latent.value_name]
            assert a.mean.shape == b.mean.shape
            error = np.abs(a.mean - b.mean).reshape(plate.size, -1)
            assert np.isfinite(error).all()


@pytest.mark.parametrize("name", cells("plots"))
def test_plots(cache, name):
    approx = cache.approx(name)
    idata = cache.sample(name)
    diagnostic = cache.psis(name)
    plates = approx.analysis.plates
    try:
        _check_plots(idata, diagnostic, plates)
        for plate in plates:
            for lat in plate.latents:
                data = approx.inputs[lat.name]
                columns = [m.get_value().shape[1] for m in (data.units, data.rows) if m is not None]
                if lat.event_size == 1 and columns == [1]:
                    fig = plot_encoder(approx, latent=lat.name)
                    assert isinstance(fig, Figure) and len(_axes_with_data(fig)) == 2
                    mean_line = fig.axes[0].lines[0].get_ydata()
                    if data.rows is not None:  # pooled: the fitted units' encoder means
                        np.testing.assert_allclose(
                            mean_line, approx.encode()[lat.name].mean.ravel()
                        )
                    plt.close(fig)
                else:
                    with pytest.raises(AmortizationError):
                        plot_encoder(approx, latent=lat.name)
    finally:
        plt.close("all")


# -- the conditional family's rows ------------------------------------------------------------------
# The conditional family q(z_n | θ, x_n) of ``family="conditional"`` takes every plate of every
# kind (``approx.conditional_plates``); its rows cover the smallest kind of each plate shape: a
# unit-input plate (row), an indexed plate pooling rows (indexed), two plates crossed and nested.
# Its q(z_n) is the mixture ∫ q(z_n | θ, x_n) q(θ) dθ, whose moments encode() gives from
# ``prior_draws`` (4,000) draws of q(θ), seed 0 by default. Each row fits once more (Newton steps
# compiled with third derivatives), so all but the row kind's are slow.
CONDITIONAL_KINDS = ["row", "indexed", "crossed", "nested"]
CONDITIONAL_FAST = {"row"}
ENCODE_DRAWS = 4000


def conditional_cells(feature):
    """The kinds of one feature's column of the conditional family, known bugs as strict xfails."""
    params = []
    for name in CONDITIONAL_KINDS:
        marks = [] if name in CONDITIONAL_FAST else [pytest.mark.slow]
        if (feature, name) in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[feature, name]))
        params.append(pytest.param(name, marks=marks))
    return params


def _conditional_new_units(kind, approx, plate, k):
    """``encode`` arguments for the first ``k`` units of ``plate`` as new units of the
    conditional family: its Newton steps read the plate's log density, so with several plates
    the rows also carry the other plates' indices (naming their fitted units), and ``units=``
    says which plate's units are new."""
    new_data = dict(kind.new_units(k)[plate.name])
    if len(approx.analysis.plates) == 1:
        return new_data, {}
    model = approx.model
    index = next(name for name in new_data if name in model.named_vars and "idx" in name)
    keep = np.asarray(model[index].get_value()) < k
    for var in model.data_vars:
        values = np.asarray(var.get_value())
        if var.name not in new_data and values.shape[:1] == keep.shape:
            new_data[var.name] = values[keep]
    return new_data, {"units": {plate.name: k}}


@pytest.mark.parametrize("name", conditional_cells("conditional_encode"))
def test_conditional_encode(cache, name):
    approx = cache.conditional(name)
    kind = cache.kind(name)
    _check_fit(approx, kind)
    assert approx.conditional_plates == {p.name for p in approx.analysis.plates}
    assert not approx.is_mean_field
    encoded = approx.encode()
    outputs = approx.fitted_encoder_outputs()
    again = approx.encode(random_seed=1)
    _check_encoded(approx, encoded)
    for plate in approx.analysis.plates:
        for latent in plate.latents:
            q = encoded[latent.name]
            # The mixture over q(θ), not the encoder's output (the Newton steps' start): its sd
            # holds Var_θ m_n(θ) besides E_θ Var(z_n | θ).
            _, sd = outputs[latent.name]
            assert not np.allclose(q.sd, sd, rtol=1e-3)
            # Deterministic at a fixed seed; another seed's draws agree within MC error.
            again_default = approx.encode()[latent.name]
            np.testing.assert_array_equal(again_default.mean, q.mean)
            np.testing.assert_array_equal(again_default.sd, q.sd)
            other = again[latent.name]
            assert not np.array_equal(other.mean, q.mean)
            assert _mixture_z(other.mean, q.mean, q.sd, ENCODE_DRAWS, ENCODE_DRAWS).max() < 5
            np.testing.assert_allclose(other.sd, q.sd, rtol=0.08)


@pytest.mark.parametrize("name", conditional_cells("conditional_sample"))
def test_conditional_sample(cache, name):
    approx = cache.conditional(name)
    idata = cache.get(("sample", name, "conditional"), lambda: approx.sample(DRAWS, random_seed=1))
    # encoder_outputs holds encode()'s mixture moments (its default seed and draws), not the
    # encoder's raw output; draws of the joint q agree with them within both MC errors.
    _check_sample(approx, idata, approx.encode(), ENCODE_DRAWS)


@pytest.mark.parametrize("name", conditional_cells("conditional_sample_new_units"))
def test_conditional_sample_new_units(cache, name):
    approx = cache.conditional(name)
    kind = cache.kind(name)
    fitted = approx.encode()
    for plate in approx.analysis.plates:
        new_data, units = _conditional_new_units(kind, approx, plate, NEW_UNITS)
        # The first k units' data as new units: the Newton steps on their own data give their
        # mixture moments, within the MC error of both (each over 4,000 draws of q(θ)).
        encoded = approx.encode(new_data, **units)
        for latent in plate.latents:
            q_new, q_fit = encoded[latent.name], fitted[latent.name]
            mean, sd = q_fit.mean[:NEW_UNITS], q_fit.sd[:NEW_UNITS]
            assert q_new.mean.shape == mean.shape
            assert _mixture_z(q_new.mean, mean, sd, ENCODE_DRAWS, ENCODE_DRAWS).max() < 5
            np.testing.assert_allclose(q_new.sd, sd, rtol=0.08)
        idata = approx.sample_new_units(new_data, draws=DRAWS, random_seed=4, **units)
        mean = {lat.name: encoded[lat.name].mean for lat in plate.latents}
        sd = {lat.name: encoded[lat.name].sd for lat in plate.latents}
        _check_new_unit_draws(approx, idata, plate, mean, sd, ENCODE_DRAWS)


@pytest.mark.parametrize("name", conditional_cells("conditional_save_load"))
def test_conditional_save_load(cache, name, tmp_path):
    kind, approx = cache.kind(name), cache.conditional(name)
    save_approximation(approx, tmp_path / name)
    loaded = load_approximation(tmp_path / name, model=KINDS[name]().model)
    _check_plates(loaded, kind)
    assert loaded.conditional_plates == approx.conditional_plates
    # encode() draws q(θ) from its random_seed (0 by default): the same seed, the same moments.
    for seed in (0, 7):
        before, after = approx.encode(random_seed=seed), loaded.encode(random_seed=seed)
        _check_same_encode(before, after, approx.analysis.latent_names)
    for plate in approx.analysis.plates:
        new_data, units = _conditional_new_units(kind, approx, plate, NEW_UNITS)
        b, a = approx.encode(new_data, **units), loaded.encode(new_data, **units)
        _check_same_encode(b, a, plate.latent_names)
    # The joint draws too: the same seed, the same (θ, z) draws.
    b, a = approx.sample(20, random_seed=0), loaded.sample(20, random_seed=0)
    for plate in approx.analysis.plates:
        for latent in plate.latent_names:
            assert a.posterior[latent].dims[2] == plate.name
            np.testing.assert_allclose(
                a.posterior[latent].values, b.posterior[latent].values, rtol=0, atol=1e-10
            )


def _conditional_gap(cache, name):
    return cache.get(
        ("gap", name, "conditional"),
        lambda: amortization_gap(cache.conditional(name), n=GAP_STEPS, n_draws=200, random_seed=2),
    )


def _check_signed(value, se, better, ahead, behind):
    """``better`` names the side ahead by 3 SE of the signed ``value`` (ahead − behind)."""
    expected = ahead if value > 3 * se else behind if value < -3 * se else "neither"
    assert better == expected


@pytest.mark.parametrize("name", conditional_cells("conditional_amortization_gap"))
def test_conditional_amortization_gap(cache, name):
    approx = cache.conditional(name)
    gap = _conditional_gap(cache, name)
    fields = [gap.gain, gap.standard_error, gap.elbo_amortized, gap.elbo_refined]
    fields += [gap.elbo_amortized_se, gap.elbo_refined_se, gap.rest_gain, gap.rest_standard_error]
    assert np.isfinite(fields).all(), repr(gap)
    # Scored on the fit's own joint draws beside F-VI's: unpaired, signed, SEs added.
    assert not gap.paired and gap.family
    assert gap.elbo_refined - gap.elbo_amortized == pytest.approx(gap.gain, rel=1e-9, abs=1e-9)
    assert gap.standard_error == pytest.approx(
        np.hypot(gap.elbo_amortized_se, gap.elbo_refined_se), rel=1e-9
    )
    assert gap.standard_error > 0
    # F-VI's gain is ELBO(F-VI) − ELBO(fit): "F-VI" ahead when it is positive.
    _check_signed(gap.gain, gap.standard_error, gap.better, "F-VI", "amortized")
    assert gap.verdict in repr(gap)
    # The fit's own ELBO is its joint q's on its own draws: JointDensity with the same seed.
    seed = int(np.random.SeedSequence(2).generate_state(2)[1])
    sample = approx.joint_density().sample(200, np.random.default_rng(seed))
    assert gap.elbo_amortized == pytest.approx(float(sample.log_weights.mean()), rel=1e-9)
    _check_gap_plates(approx, gap)
    for plate in approx.analysis.plates:
        ds = gap.per_plate[plate.name]
        assert (ds["gain_se"].values > 0).all()
        assert np.isfinite([ds["plate_gain"].item(), ds["plate_gain_se"].item()]).all()
    # F-VI started at the fit's marginals: its refinement is a SemiAmortizedApproximation.
    assert isinstance(gap.refined, SemiAmortizedApproximation)
    assert gap.refined.hist.shape == (FIT_STEPS + GAP_STEPS,)


@pytest.mark.parametrize("name", conditional_cells("conditional_semi_amortize"))
def test_conditional_semi_amortize_refuses(cache, name):
    """Per-unit F-VI cannot hold q(z_n | θ, x_n)'s dependence on θ: refused, naming the plates."""
    approx = cache.conditional(name)
    with pytest.raises(AmortizationError, match="conditional") as error:
        semi_amortize(approx, 1, progressbar=False)
    for plate in approx.conditional_plates:
        assert plate in str(error.value)


def _conditional_psis(cache, name):
    return cache.get(
        ("psis", name, "conditional"),
        lambda: psis_diagnostic(cache.conditional(name), draws=400, random_seed=3),
    )


@pytest.mark.parametrize("name", conditional_cells("conditional_psis_diagnostic"))
def test_conditional_psis_diagnostic(cache, name):
    approx = cache.conditional(name)
    diagnostic = _conditional_psis(cache, name)
    _check_psis(approx, diagnostic)
    # Its log weights are log p − log q of the joint q's draws: their mean is the joint ELBO,
    # which the gap's own-draws estimate agrees with within their MC errors.
    gap = _conditional_gap(cache, name)
    weights = diagnostic.log_weights.values
    se = np.hypot(weights.std(ddof=1) / np.sqrt(weights.size), gap.elbo_amortized_se)
    assert abs(weights.mean() - gap.elbo_amortized) < 5 * se
    # The conditional family draws every unit of a plate at once: no chunked PSIS.
    with pytest.raises(AmortizationError, match="conditional"):
        psis_diagnostic(approx, draws=10, random_seed=3, chunk_size=5)


@pytest.mark.parametrize("name", conditional_cells("conditional_compare"))
def test_conditional_compare(cache, name):
    kind = cache.get(("kind", name, "compare"), KINDS[name])
    adam = {"obj_optimizer": pm.adam(learning_rate=1e-2)}
    amortized = {"encoder_widths": WIDTHS, "family": "conditional", **adam, **kind.fit_options}
    result = pymc_amortize.compare(
        kind.model,
        n=FIT_STEPS,
        options={"amortized": amortized, "advi": adam},
        n_draws=100,
        draws=200,
        random_seed=0,
    )
    approx = result.approximations["amortized"]
    assert approx.conditional_plates == {p.name for p in approx.analysis.plates}
    _check_compare(result, approx.analysis.plates)
    rows = {row["method"]: row for row in result.rows}
    assert (rows["amortized"]["scored"], rows["advi"]["scored"]) == (
        "own joint draws",
        "shared draws",
    )
    # Each row scores the approximation beside it: the conditional fit on its joint draws.
    sample = approx.joint_density().sample(100, np.random.default_rng(0))
    assert rows["amortized"]["elbo"] == pytest.approx(float(sample.log_weights.mean()), rel=1e-9)
    evaluator = MeanFieldELBO(kind.model, n_draws=100, random_seed=0)
    elbo, se = evaluator.estimate(meanfield_of(result.approximations["advi"]))
    assert (rows["advi"]["elbo"], rows["advi"]["elbo_se"]) == pytest.approx((elbo, se), rel=1e-9)
    # The signed difference, unpaired, and which side is ahead.
    diff = result.difference
    assert diff["methods"] == ("amortized", "advi")
    assert diff["elbo"] == pytest.approx(rows["amortized"]["elbo"] - rows["advi"]["elbo"])
    assert diff["se"] == pytest.approx(
        np.hypot(rows["amortized"]["elbo_se"], rows["advi"]["elbo_se"])
    )
    _check_signed(diff["elbo"], diff["se"], diff["better"], "amortized", "advi")
    assert "not a subset" in diff["note"]


@pytest.mark.parametrize("name", conditional_cells("conditional_plots"))
def test_conditional_plots(cache, name):
    approx = cache.conditional(name)
    idata = cache.get(("sample", name, "conditional"), lambda: approx.sample(DRAWS, random_seed=1))
    diagnostic = _conditional_psis(cache, name)
    plates = approx.analysis.plates
    try:
        _check_plots(idata, diagnostic, plates)
        # plot_encoder shows q(z_n) as encode() gives it: for the conditional family the
        # mixture's moments (at the fitted units, or at new units on a grid).
        for plate in plates:
            for lat in plate.latents:
                data = approx.inputs[lat.name]
                if data.rows is not None:
                    fig = plot_encoder(approx, latent=lat.name)
                    np.testing.assert_allclose(
                        fig.axes[0].lines[0].get_ydata(), approx.encode()[lat.name].mean.ravel()
                    )
                else:
                    grid = np.linspace(-2.0, 4.0, 7)
                    fig = plot_encoder(approx, latent=lat.name, grid=grid)
                    new = (
                        {lat.name: grid[:, None]}
                        if lat.input_matrix is not None
                        else {lat.input_names[0]: grid}
                    )
                    q = approx.encode(new)[lat.name]
                    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), q.mean.ravel())
                    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), q.sd.ravel())
                plt.close(fig)
    finally:
        plt.close("all")


# -- correctness anchors ----------------------------------------------------------------------------
def _long_fit(model, widths):
    """A full-batch fit run to its optimum: Adam at 1e-2, then 1e-3 to quiet its jitter (at 1e-2
    alone the encoder means of the indexed kind wander by up to 0.6 posterior sd)."""
    inference = pymc_amortize.AmortizedVI(
        family="encoder", model=model, encoder_widths=widths, random_seed=0
    )
    inference.fit(3000, obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
    return inference.fit(3000, obj_optimizer=pm.adam(learning_rate=1e-3), progressbar=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["row", "vector"])
def test_row_plate_encoder_is_the_exact_conditional_posterior(name):
    """x_n ~ N(theta + z_n, s) with s known, z_n ~ N(0, 1) (a scalar, or each of the vector's
    coordinates): the optimal q(z_n) given q(theta) is the exact conditional posterior at theta's
    q-mean (the linear-Gaussian coordinate update), affine in x_n."""
    kind = KINDS[name]()
    approx = _long_fit(kind.model, widths=())
    theta = approx.globals.mean_and_scale()[0]
    x, s = (kind.data["x"], plate_models.ROW_SIGMA) if name == "row" else (kind.data["y"], 0.7)
    precision = 1.0 + 1.0 / s**2
    exact_sd = 1.0 / np.sqrt(precision)
    exact_mean = (x - theta) / s**2 / precision
    q = approx.encode()["z"]
    assert q.mean.shape == exact_mean.shape
    assert (np.abs(q.mean - exact_mean) / exact_sd).max() < 0.2
    np.testing.assert_allclose(q.sd, exact_sd, rtol=0.2)


@pytest.mark.slow
def test_indexed_encoder_is_the_exact_conditional_posterior():
    """y_i ~ N(a[g_i], s) with s known, a_j ~ N(mu, 1): q(a_j) given q(mu) is the exact conditional
    posterior at mu's q-mean, whatever the number of rows of group j."""
    kind = plate_models.indexed()
    approx = _long_fit(kind.model, widths=(32, 32))
    mu = float(approx.globals.mean_and_scale()[0][0])
    g, y = kind.data["g"], kind.data["y"]
    s2 = plate_models.IDX_SIGMA**2
    counts = np.bincount(g, minlength=plate_models.IDX_J)
    sums = np.bincount(g, weights=y, minlength=plate_models.IDX_J)
    precision = 1.0 + counts / s2
    exact_mean = (mu + sums / s2) / precision
    exact_sd = 1.0 / np.sqrt(precision)
    q = approx.encode()["a"]
    assert (np.abs(q.mean - exact_mean) / exact_sd).max() < 0.2
    np.testing.assert_allclose(q.sd, exact_sd, rtol=0.2)
