"""ArviZ results groups, PSIS k̂ (overall and per unit), corrected draws and plots."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pymc as pm
import pytest
import xarray as xr
from scipy.stats import spearmanr

from pymc_amortize import AmortizationError, AmortizedVI, fit_amortized
from pymc_amortize.examples.paper import (
    LINEAR_SIGMA,
    LINEAR_TAU,
    SAW_ALPHA,
    linear_data,
    linear_model,
    saw_data,
    saw_model,
)
from pymc_amortize.plots import plot_encoder, plot_khat, plot_loss, plot_posterior_comparison
from pymc_amortize.posterior.idata import fit_trace
from pymc_amortize.psis import khat_verdict, pareto_khat, psis_diagnostic


@pytest.fixture(scope="module")
def linear_fit():
    x = linear_data(1_000, random_seed=0)
    model = linear_model(x)
    inference = AmortizedVI(family="encoder", model=model, encoder_widths=(), random_seed=1)
    for steps, rate in ((3000, 1e-2), (1000, 1e-3)):  # all 4,000 steps: no convergence stop
        approx = inference.fit(
            steps,
            obj_optimizer=pm.adam(learning_rate=rate),
            convergence=False,
            progressbar=False,
        )
    return x, model, approx


@pytest.fixture(scope="module")
def saw_fits():
    x = saw_data(200, random_seed=0)
    x_prev = np.concatenate([[0.0], x[:-1]])
    model = saw_model(x)
    fits = {}
    for label, inputs in (("x only", "x"), ("x_prev and x", ["x_prev", "x"])):
        inference = AmortizedVI(
            {"z": inputs}, family="encoder", model=model, encoder_widths=(), random_seed=1
        )
        fits[label] = inference.fit(
            1500, obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False
        )
    return x_prev, x, fits


# -- k̂ itself ----------------------------------------------------------------------------------
def test_pareto_khat_recovers_known_right_tails():
    rng = np.random.default_rng(0)
    shapes = np.array([0.3, 0.8, 1.2])
    # Pareto weights with tail index 1/k have shape k; log of them are the log weights.
    log_w = np.log(rng.pareto(1.0 / shapes[:, None], size=(3, 4000)) + 1.0)
    smoothed, khat = pareto_khat(xr.DataArray(log_w, dims=("case", "draw")))
    # A function fitting the left tail (log w not negated for arviz-stats) gives k̂ ≈ −1.
    np.testing.assert_allclose(khat.values, shapes, atol=0.15)
    assert khat.dims == ("case",)
    np.testing.assert_allclose(np.exp(smoothed).sum("draw"), 1.0)
    _, exact = pareto_khat(xr.DataArray(np.full(500, 3.0), dims="draw"))
    assert float(exact) == -np.inf  # weights of an exact q are constant: no tail
    assert [khat_verdict(k) for k in (0.2, 0.6, 0.9, np.nan)] == [
        "good",
        "usable",
        "unreliable",
        "unreliable",
    ]


# -- PSIS on fitted models ---------------------------------------------------------------------
def test_linear_model_khat_small_overall_and_per_unit(linear_fit):
    _, _, approx = linear_fit
    diagnostic = psis_diagnostic(approx, draws=1000, random_seed=0)
    assert diagnostic.khat < 0.5
    per_unit = diagnostic.khat_per_unit
    assert per_unit.dims == ("unit",)
    np.testing.assert_array_equal(per_unit["unit"], approx.model.coords["unit"])
    assert float(per_unit.max()) < 0.7
    assert float(per_unit.median()) < 0.3
    assert diagnostic.flagged_units().size == 0
    assert "good" in diagnostic.summary()


def test_resampled_draws_correct_mean_field_variance_of_theta(linear_fit):
    x, _, approx = linear_fit
    # Flat prior: marginally x_n ~ N(θ, σ² + τ²), so θ | x ~ N(x̄, (σ² + τ²)/N); mean-field
    # q(θ) has sd σ/√N, 10% too small. Importance resampling recovers the exact sd.
    exact_sd = np.sqrt(LINEAR_SIGMA**2 + LINEAR_TAU**2) / np.sqrt(x.size)
    diagnostic = psis_diagnostic(approx, draws=4000, random_seed=2)
    q_sd = float(approx.globals.mean_and_scale()[1][0])
    corrected = diagnostic.resample(12_000, random_seed=3)
    theta = corrected.posterior["theta"]
    assert theta.sizes["draw"] == 12_000
    assert corrected.posterior["z"].dims == ("chain", "draw", "unit")
    # Measured over seeds: the corrected sd removes 40-100% of q's bias (Pareto smoothing trims
    # the largest weights, so some remains); uniform weights would remove none.
    assert abs(float(theta.std()) - exact_sd) < 0.75 * abs(q_sd - exact_sd)
    assert float(theta.mean()) == pytest.approx(x.mean(), abs=0.3 * exact_sd)


def test_saw_khat_flags_units_the_exact_fvi_optimum_says_are_poor(saw_fits):
    x_prev, x, fits = saw_fits
    approx = fits["x only"]
    diagnostic = psis_diagnostic(approx, draws=1000, random_seed=0)
    # Exact per-unit F-VI optimum given q(θ) (CAVI): a Gaussian with precision 1 + α² and mean
    # (x_{n-1} + α(x_n − α E[θ])) / (1 + α²). An encoder on x_n alone cannot see x_{n-1}.
    theta_mean = approx.globals.mean_and_scale()[0][0]
    precision = 1.0 + SAW_ALPHA**2
    opt_mean = (x_prev + SAW_ALPHA * (x - SAW_ALPHA * theta_mean)) / precision
    opt_sd = 1.0 / np.sqrt(precision)
    q = approx.encode()["z"]
    kl = np.log(opt_sd / q.sd) + (q.sd**2 + (q.mean - opt_mean) ** 2) / (2 * opt_sd**2) - 0.5
    khat = diagnostic.khat_per_unit.values
    # Random k̂ would give a rank correlation near 0 and a top-10% overlap near 10%.
    assert spearmanr(khat, kl).statistic > 0.6
    top = x.size // 10
    overlap = np.intersect1d(np.argsort(-khat)[:top], np.argsort(-kl)[:top]).size / top
    assert overlap >= 0.4
    assert diagnostic.khat > 0.7
    assert diagnostic.flagged_units().size > 0

    # The expanded-domain encoder (x_{n-1}, x_n) is ideal here: nothing is flagged.
    ideal = psis_diagnostic(fits["x_prev and x"], draws=1000, random_seed=0)
    assert ideal.khat < 0.7
    assert float(ideal.khat_per_unit.max()) < 0.7


def test_psis_rejects_a_pymc_approximation():
    with linear_model(linear_data(20, random_seed=0)):
        advi = pm.fit(10, method="advi", progressbar=False)
    with pytest.raises(AmortizationError, match="AmortizedApproximation"):
        psis_diagnostic(advi)


# -- the DataTree ------------------------------------------------------------------------------
def test_datatree_groups_have_model_dims_and_values(linear_fit):
    _, model, approx = linear_fit
    idata = approx.sample(100, random_seed=0)
    assert {"posterior", "observed_data", "amortized_fit", "variational_params"} <= set(
        idata.children
    )
    fit = idata["amortized_fit"]
    np.testing.assert_array_equal(fit["loss"].values, approx.hist)
    assert fit["step"].values[0] == 1 and fit.sizes["step"] == 4000
    seconds = fit["step_seconds"].values
    assert np.isfinite(seconds).all() and (seconds > 0).all()
    assert fit.attrs["method"] == "amortized_vi"
    assert "MLPEncoder" in fit.attrs["encoder"] and "affine" in fit.attrs["encoder"]
    assert fit.attrs["obj_optimizer"].startswith("adam(learning_rate=0.001")
    outputs = idata["encoder_outputs"]["z"]
    assert outputs.dims == ("param", "unit")
    np.testing.assert_array_equal(outputs["unit"], model.coords["unit"])
    q = approx.encode()["z"]
    np.testing.assert_allclose(outputs.sel(param="mean"), q.mean)
    np.testing.assert_allclose(outputs.sel(param="sd"), q.sd)
    theta = idata["variational_params"]["theta"]
    assert theta.dims == ("param",)
    assert float(theta.sel(param="mean")) == approx.globals.mean_and_scale()[0][0]
    # The public accessors the groups are built from.
    mean, sd = approx.global_factors()["theta"]
    assert (float(mean), float(sd)) == tuple(float(v) for v in theta.values)
    assert list(approx.encoders) == ["z"] and approx.encoders is not approx.encoders


@pytest.fixture(scope="module")
def transformed_fit():
    """Globals with a transform and with model dims; two fit runs and a refine."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(3), 20)
    x = rng.normal(np.array([-1.0, 0.0, 2.0])[groups], 1.5)
    coords = {"unit": [f"u{i}" for i in range(60)], "group": ["a", "b", "c"]}
    with pm.Model(coords=coords) as model:
        group_mean = pm.Normal("group_mean", 0.0, 3.0, dims="group")
        noise = pm.HalfNormal("noise", 2.0)
        z = pm.Normal("z", group_mean[groups], 1.0, dims="unit")
        pm.Normal("x", z, noise, observed=x, dims="unit")
        inference = AmortizedVI(
            family="encoder", local={"z": "x"}, encoder_widths=(4,), random_seed=0
        )
    inference.fit(150, progressbar=False)
    inference.fit(100, progressbar=False)
    inference.refine(50, progressbar=False)
    return model, inference.approx


def test_step_seconds_align_with_loss_over_fits_and_refine(transformed_fit):
    _, approx = transformed_fit
    assert approx.hist.shape == approx.step_seconds.shape == (300,)
    assert np.isfinite(approx.step_seconds).all() and (approx.step_seconds > 0).all()


@pytest.mark.parametrize("store", ["netcdf", "zarr"])
def test_datatree_round_trips(transformed_fit, tmp_path, store):
    _, approx = transformed_fit
    idata = approx.sample(50, random_seed=0)
    params = idata["variational_params"]
    assert params["group_mean"].dims == ("param", "group")
    np.testing.assert_array_equal(params["group_mean"]["group"], ["a", "b", "c"])
    assert params["noise_log__"].attrs["variable"] == "noise"
    assert idata["encoder_outputs"]["z"]["unit"].values[0] == "u0"
    if store == "netcdf":
        idata.to_netcdf(tmp_path / "fit.nc", engine="h5netcdf")
        back = xr.open_datatree(tmp_path / "fit.nc", engine="h5netcdf")
    else:
        idata.to_zarr(tmp_path / "fit.zarr", consolidated=False)
        back = xr.open_datatree(tmp_path / "fit.zarr", engine="zarr", consolidated=False)
    for group in ("posterior", "amortized_fit", "variational_params", "encoder_outputs"):
        xr.testing.assert_identical(back[group].to_dataset(), idata[group].to_dataset())
    assert back["amortized_fit"].attrs == idata["amortized_fit"].attrs


def test_fit_amortized_carries_the_method_groups():
    x = linear_data(50, random_seed=1)
    idata = fit_amortized(
        linear_model(x),
        family="encoder",
        n=100,
        draws=20,
        encoder_widths=(),
        random_seed=0,
        progressbar=False,
    )
    assert idata["amortized_fit"].sizes["step"] == 100
    assert idata["encoder_outputs"]["z"].sizes["unit"] == 50
    assert idata["amortized_fit"].attrs["batch_size"] == 50


# -- plots -------------------------------------------------------------------------------------
def test_plot_loss_draws_each_fit_by_step_and_time(linear_fit, saw_fits):
    _, _, approx = linear_fit
    _, _, fits = saw_fits
    untimed = fit_trace(approx.hist[:500])
    fig = plot_loss(
        {
            "linear": approx.sample(10),
            "saw": fits["x only"].sample(10),
            "untimed": untimed,
        },
        window=20,
    )
    by_step, by_time = fig.axes
    assert len(by_step.lines) == 3 and len(by_time.lines) == 2
    assert by_step.get_xlabel() == "step" and by_time.get_xlabel() == "wall time (s)"
    assert by_step.get_ylabel().startswith("loss")
    plt.close(fig)


def test_plot_posterior_comparison_overlays_fits(saw_fits):
    _, _, fits = saw_fits
    posteriors = {label: approx.sample(200, random_seed=0) for label, approx in fits.items()}
    fig = plot_posterior_comparison(posteriors, var_names=["theta"], kind="dist")
    (ax,) = fig.axes
    assert len(ax.lines) >= 2  # one density per fit
    assert ax.get_ylabel() == "density" and ax.get_xlabel()
    plt.close(fig)
    fig = plot_posterior_comparison(
        posteriors, var_names=["theta", "z"], kind="forest", coords={"unit": [0, 1, 2]}
    )
    assert len(fig.axes) == 2
    assert any(ax.get_xlabel() == "posterior value" for ax in fig.axes)
    plt.close(fig)


def test_plot_khat_and_encoder(saw_fits):
    x_prev, x, fits = saw_fits
    approx = fits["x only"]
    diagnostic = psis_diagnostic(approx, draws=200, random_seed=0)
    fig = plot_khat(diagnostic)
    (ax,) = fig.axes
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == x.size
    assert len(ax.lines) == 2  # the 0.5 and 0.7 thresholds
    assert ax.get_xlabel() == "x" and "k̂" in ax.get_ylabel()
    plt.close(fig)

    precision = 1.0 + SAW_ALPHA**2
    fig = plot_encoder(approx, reference={"mean": (x_prev + SAW_ALPHA * x) / precision})
    mean_ax, sd_ax = fig.axes
    assert len(mean_ax.lines) == 1 and len(mean_ax.collections) == 1
    assert len(sd_ax.lines) == 1 and len(sd_ax.collections) == 0
    assert mean_ax.get_xlabel() == "x" and "mean" in mean_ax.get_ylabel()
    plt.close(fig)
    with pytest.raises(AmortizationError, match="input columns"):
        plot_encoder(fits["x_prev and x"])


# -- indexed and crossed plates ------------------------------------------------------------------
def _crossed_model(seed=0):
    rng = np.random.default_rng(seed)
    actor = np.concatenate([np.arange(12), rng.integers(0, 12, 108)])
    block = np.concatenate([np.arange(5), rng.integers(0, 5, 115)])
    y = rng.normal(0, 1, 12)[actor] + rng.normal(0, 0.5, 5)[block] + rng.normal(0, 0.5, 120)
    coords = {"actor": [f"a{i}" for i in range(12)], "block": range(5), "obs_id": range(120)}
    with pm.Model(coords=coords) as model:
        ai = pm.Data("actor_idx", actor, dims="obs_id")
        bi = pm.Data("block_idx", block, dims="obs_id")
        za = pm.Normal("z_actor", 0, 1, dims="actor")
        zb = pm.Normal("z_block", 0, 1, dims="block")
        pm.Normal("y", za[ai] + zb[bi], pm.HalfNormal("sigma", 1), observed=y, dims="obs_id")
    return model


def _dimless_indexed_model(seed=0):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([np.arange(6), rng.integers(0, 6, 44)])
    with pm.Model() as model:
        g = pm.Data("g", idx)
        a = pm.Normal("a", 0, 1, shape=6)
        pm.Normal("y", a[g], 0.5, observed=rng.normal(size=50))
    return model


@pytest.fixture(scope="module")
def grouped_fits():
    from pymc_amortize.examples.simulated_radon import radon_data, radon_model

    models = {
        "indexed": radon_model(radon_data(10, 90, random_seed=0)),
        "crossed": _crossed_model(),
        "dimless": _dimless_indexed_model(),
    }
    return {
        kind: pm.fit(
            300,
            family="encoder",
            method="amortized",
            model=model,
            encoder_widths=(8,),
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=0,
            progressbar=False,
        )
        for kind, model in models.items()
    }


PLATES = {
    "indexed": {"county": ["a"]},
    "crossed": {"actor": ["z_actor"], "block": ["z_block"]},
    "dimless": {"g_unit": ["a"]},
}


@pytest.mark.parametrize("kind", list(PLATES))
def test_groups_and_psis_under_each_plates_dim(grouped_fits, kind):
    approx = grouped_fits[kind]
    model = approx.model
    assert {p.name: list(p.latent_names) for p in approx.analysis.plates} == PLATES[kind]
    idata = approx.sample(30, random_seed=0)
    outputs = idata["encoder_outputs"]
    encoded = approx.encode()
    diagnostic = psis_diagnostic(approx, draws=200, random_seed=0)
    assert set(diagnostic.khat_per_plate) == set(PLATES[kind])
    for plate in approx.analysis.plates:
        dim = plate.name
        units = np.asarray(model.coords[dim]) if dim in model.coords else np.arange(plate.size)
        for latent in plate.latents:
            out = outputs[latent.value_name]
            assert out.dims == ("param", dim) and out.attrs["plate"] == plate.name
            np.testing.assert_array_equal(out[dim].values, units)
            np.testing.assert_allclose(out.sel(param="mean"), encoded[latent.name].mean)
            np.testing.assert_allclose(out.sel(param="sd"), encoded[latent.name].sd)
        khat = diagnostic.khat_per_plate[plate.name]
        assert khat.dims == (dim,) and khat.size == plate.size
        assert np.isfinite(khat.values).all()
        np.testing.assert_array_equal(khat[dim].values, units)
    assert np.isfinite(diagnostic.khat)
    attrs = idata["amortized_fit"].attrs
    assert attrs["analysis"] == approx.analysis.summary()
    assert "PooledEncoder(row_inputs=" in attrs["encoder"]
    for plate in approx.analysis.plates:
        assert f"{plate.name}: {plate.size} units, {plate.n_rows} rows by" in attrs["plates"]


def test_crossed_tree_round_trips_netcdf(grouped_fits, tmp_path):
    idata = grouped_fits["crossed"].sample(20, random_seed=0)
    idata.to_netcdf(tmp_path / "fit.nc", engine="h5netcdf")
    back = xr.open_datatree(tmp_path / "fit.nc", engine="h5netcdf")
    for group in ("posterior", "amortized_fit", "encoder_outputs"):
        xr.testing.assert_identical(back[group].to_dataset(), idata[group].to_dataset())


def test_plots_on_indexed_and_crossed_fits(grouped_fits):
    crossed, radon = grouped_fits["crossed"], grouped_fits["indexed"]
    diagnostic = psis_diagnostic(crossed, draws=100, random_seed=0)
    fig = plot_khat(diagnostic)
    assert len(fig.axes) == 2  # one axis per plate
    for ax, (size, title) in zip(fig.axes, ((12, "plate actor"), (5, "plate block")), strict=True):
        assert len(ax.collections[0].get_offsets()) == size and ax.get_title().startswith(title)
        assert ax.get_xlabel() == "mean of y over the unit's rows"
    plt.close(fig)
    fig = plot_khat(diagnostic, plate="block", inputs=np.arange(5.0), input_label="block no.")
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "block no."
    plt.close(fig)
    with pytest.raises(AmortizationError, match="plate="):
        plot_khat(diagnostic, inputs=np.arange(12.0))
    # Radon's encoder pools two row columns (log_radon, floor): k̂ against the rows per county.
    fig = plot_khat(psis_diagnostic(radon, draws=100, random_seed=0))
    assert fig.axes[0].get_xlabel() == "rows of the unit (county_idx)"
    np.testing.assert_array_equal(
        fig.axes[0].collections[0].get_offsets()[:, 0], radon.analysis.plates[0].row_counts
    )
    plt.close(fig)

    fig = plot_encoder(crossed, latent="z_block", reference={"mean": np.zeros(5)})
    mean_ax, sd_ax = fig.axes
    assert len(mean_ax.lines) == 1 and len(mean_ax.lines[0].get_xdata()) == 5
    assert len(mean_ax.collections) == 1 and len(sd_ax.collections) == 0
    np.testing.assert_allclose(mean_ax.lines[0].get_ydata(), crossed.encode()["z_block"].mean)
    plt.close(fig)
    with pytest.raises(AmortizationError, match="grid"):
        plot_encoder(crossed, latent="z_actor", grid=np.linspace(-1, 1, 5))
    with pytest.raises(AmortizationError, match="input columns"):
        plot_encoder(radon)

    posteriors = {"crossed": crossed.sample(50, random_seed=0)}
    fig = plot_posterior_comparison(
        posteriors, var_names=["z_actor"], kind="forest", coords={"actor": ["a0", "a1"]}
    )
    assert any(ax.get_xlabel() == "posterior value" for ax in fig.axes)
    plt.close(fig)
