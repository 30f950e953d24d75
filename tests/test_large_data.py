"""Large data: every data array held once, and every unit's posterior encoded chunk by chunk.

Small sizes only; the memory and time targets are measured by ``benchmarks/perf/scale_memory.py``.
"""

import numpy as np
import plate_models
import pymc as pm
import pytest
import xarray as xr

import pymc_amortize
from pymc_amortize.examples.paper import nonlinear_model
from pymc_amortize.examples.simulated_radon import radon_data, radon_model
from pymc_amortize.fitting.vi import AmortizedVI
from pymc_amortize.psis import psis_diagnostic

N_UNITS = 53  # a prime: no chunk size below divides it


@pytest.fixture(scope="module")
def row_fit():
    x = np.random.default_rng(0).normal(size=N_UNITS)
    model = nonlinear_model(x)
    approx = pm.fit(
        30,
        family="encoder",
        method="amortized",
        model=model,
        local={"z": "x"},
        encoder_widths=(8,),
        batch_size=10,
        random_seed=0,
        progressbar=False,
    )
    return model, approx


@pytest.fixture(scope="module")
def indexed_fit():
    model = radon_model(radon_data(23, 120, random_seed=1))
    approx = pm.fit(
        30,
        family="encoder",
        method="amortized",
        model=model,
        encoder_widths=(4,),
        batch_size=5,
        progressbar=False,
    )
    return model, approx


@pytest.mark.parametrize("chunk_size", [1, 7, 10, N_UNITS, 1000])
def test_chunked_encode_equals_one_pass(row_fit, chunk_size):
    _, approx = row_fit
    whole = approx.encode(chunk_size=10**6)["z"]
    chunked = approx.encode(chunk_size=chunk_size)["z"]
    np.testing.assert_allclose(chunked.mean, whole.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked.sd, whole.sd, rtol=0, atol=1e-12)
    ds = approx.encode_dataset(chunk_size=chunk_size, progressbar=False)
    assert ds["z_mean"].dims == ("unit",) and ds.sizes["unit"] == N_UNITS
    np.testing.assert_allclose(ds["z_mean"].values, whole.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds["z_sd"].values, whole.sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds["z"].values, whole.constrained_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds["z_quantiles"].values, whole.quantiles, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ds["unit"].values, np.arange(N_UNITS))


@pytest.mark.parametrize("chunk_size", [1, 4, 9, 100])
def test_chunked_encode_of_an_indexed_plate_takes_each_units_rows(indexed_fit, chunk_size):
    _, approx = indexed_fit
    whole = approx.encode(chunk_size=10**6)["a"]
    ds = approx.encode_dataset(chunk_size=chunk_size, progressbar=False, summary=False)
    np.testing.assert_allclose(ds["a_mean"].values, whole.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds["a_sd"].values, whole.sd, rtol=0, atol=1e-12)
    assert set(ds.data_vars) == {"a_mean", "a_sd"}


def test_encode_dataset_round_trips_through_zarr(row_fit, tmp_path):
    pytest.importorskip("zarr")
    _, approx = row_fit
    in_memory = approx.encode_dataset(chunk_size=10, progressbar=False)
    stored = approx.encode_dataset(chunk_size=10, progressbar=False, store=tmp_path / "q.zarr")
    xr.testing.assert_allclose(stored.load(), in_memory, rtol=0, atol=1e-12)
    reopened = xr.open_zarr(tmp_path / "q.zarr", chunks=None, consolidated=False)
    xr.testing.assert_allclose(reopened.load(), in_memory, rtol=0, atol=1e-12)


def test_encode_dataset_refuses_a_bad_chunk_size(row_fit):
    _, approx = row_fit
    with pytest.raises(pymc_amortize.AmortizationError, match="chunk_size"):
        approx.encode_dataset(chunk_size=0, progressbar=False)


# -- every unit's draws, in chunks --------------------------------------------------------------
@pytest.fixture(scope="module")
def empty_county_fit():
    """Counties in a radon-style model, county 4 with no rows: its posterior is its prior given
    the globals, a ~ N(mu_a, sd_a)."""
    rng = np.random.default_rng(5)
    n_units, n_rows = 19, 150
    county = rng.integers(0, n_units, n_rows)
    county[county == EMPTY] = EMPTY + 1
    floor = rng.binomial(1, 0.3, n_rows).astype(float)
    y = rng.normal(1.0, 0.5, n_units)[county] - 0.6 * floor + rng.normal(0, 0.7, n_rows)
    with pm.Model(coords={"county": [f"c{i}" for i in range(n_units)]}) as model:
        idx = pm.Data("county_idx", county)
        mu_a = pm.Normal("mu_a", 0, 5)
        sd_a = pm.HalfNormal("sd_a", 2)
        a = pm.Normal("a", mu_a, sd_a, dims="county")
        b = pm.Normal("b", 0, 2)
        pm.Normal("y", a[idx] + b * floor, pm.HalfNormal("sigma", 2), observed=y)
    approx = pm.fit(
        200,
        family="encoder",
        method="amortized",
        model=model,
        encoder_widths=(4,),
        random_seed=0,
        progressbar=False,
    )
    return model, approx


EMPTY = 4


@pytest.mark.parametrize("chunk_size", [1, 7, N_UNITS])
def test_sample_dataset_draws_do_not_depend_on_the_chunk_size(row_fit, chunk_size):
    _, approx = row_fit
    whole = approx.sample_dataset(50, chunk_size=10**6, random_seed=3, progressbar=False)
    chunked = approx.sample_dataset(50, chunk_size=chunk_size, random_seed=3, progressbar=False)
    assert whole["z"].dims == ("chain", "draw", "unit") and whole["z"].shape == (1, 50, N_UNITS)
    assert whole["theta"].dims == ("chain", "draw")
    xr.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12)
    # The globals are sample()'s for the same seed; another seed gives other draws.
    sample = approx.sample(50, random_seed=3).posterior
    np.testing.assert_allclose(whole["theta"].values, sample["theta"].values, rtol=0, atol=1e-12)
    other = approx.sample_dataset(50, chunk_size=chunk_size, random_seed=4, progressbar=False)
    assert not np.allclose(other["z"].values, whole["z"].values)


def test_sample_dataset_draws_each_units_encoder_posterior(row_fit):
    _, approx = row_fit
    draws = 4000
    q = approx.encode()["z"]
    z = approx.sample_dataset(draws, chunk_size=10, random_seed=1, progressbar=False)["z"]
    z = z.values[0]
    # Within Monte Carlo error (4.5 standard errors over 53 units): sd/sqrt(S), sd/sqrt(2S).
    np.testing.assert_array_less(np.abs(z.mean(axis=0) - q.mean), 4.5 * q.sd / np.sqrt(draws))
    np.testing.assert_array_less(np.abs(z.std(axis=0) - q.sd), 4.5 * q.sd / np.sqrt(2 * draws))
    # Units are independent given θ: the draws of neighbouring units are uncorrelated.
    r = np.corrcoef((z[:, :-1] - q.mean[:-1]).ravel(), (z[:, 1:] - q.mean[1:]).ravel())[0, 1]
    assert abs(r) < 4.5 / np.sqrt(draws * (N_UNITS - 1))


@pytest.mark.parametrize("chunk_size", [3, 100])
def test_sample_dataset_pairs_a_unit_without_rows_with_the_same_global_draws(
    empty_county_fit, chunk_size
):
    model, approx = empty_county_fit
    draws = 4000
    ds = approx.sample_dataset(draws, chunk_size=chunk_size, random_seed=2, progressbar=False)
    assert ds["a"].dims == ("chain", "draw", "county")
    assert ds["county"].values.tolist() == list(model.coords["county"])
    assert (ds["sd_a"] > 0).all()  # the global's own (constrained) scale
    a = ds["a"].sel(county=f"c{EMPTY}").values.ravel()
    # a ~ N(mu_a, sd_a) with the same draws of mu_a and sd_a: standardised, exactly N(0, 1).
    std = (a - ds["mu_a"].values.ravel()) / ds["sd_a"].values.ravel()
    assert abs(std.mean()) < 4.5 / np.sqrt(draws)
    assert abs(std.std() - 1) < 4.5 / np.sqrt(2 * draws)
    # Drawn with other global draws, the spread would be wider: the test can tell.
    shuffled = (a - np.roll(ds["mu_a"].values.ravel(), 1)) / ds["sd_a"].values.ravel()
    assert shuffled.std() > 1 + 10 / np.sqrt(2 * draws)
    # A unit with rows keeps its encoder's q.
    q = approx.encode()["a"]
    other = ds["a"].isel(county=EMPTY + 1).values.ravel()
    assert abs(other.mean() - q.mean[EMPTY + 1]) < 4.5 * q.sd[EMPTY + 1] / np.sqrt(draws)
    whole = approx.sample_dataset(draws, chunk_size=10**6, random_seed=2, progressbar=False)
    xr.testing.assert_allclose(ds, whole, rtol=0, atol=1e-12)


def test_sample_dataset_round_trips_through_zarr(empty_county_fit, tmp_path):
    pytest.importorskip("zarr")
    _, approx = empty_county_fit
    in_memory = approx.sample_dataset(30, chunk_size=5, random_seed=0, progressbar=False)
    store = tmp_path / "draws.zarr"
    stored = approx.sample_dataset(30, chunk_size=5, random_seed=0, progressbar=False, store=store)
    assert stored["a"].chunks is not None  # dask-backed: read lazily from the store
    assert stored["a"].chunks[2] == (5, 5, 5, 4)
    xr.testing.assert_allclose(stored.load(), in_memory, rtol=0, atol=1e-12)
    reopened = xr.open_zarr(store, chunks=None, consolidated=False)
    xr.testing.assert_allclose(reopened.load(), in_memory, rtol=0, atol=1e-12)
    # String unit labels of growing length ("c4" ... "c10") append chunk after chunk.
    encoded = approx.encode_dataset(chunk_size=5, progressbar=False, store=tmp_path / "q.zarr")
    assert encoded["county"].values.tolist() == in_memory["county"].values.tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"draws": 0}, "draws"),
    ],
)
def test_sample_dataset_refuses_bad_arguments(row_fit, kwargs, match):
    _, approx = row_fit
    with pytest.raises(pymc_amortize.AmortizationError, match=match):
        approx.sample_dataset(**{"draws": 10, **kwargs}, progressbar=False)


def test_sample_dataset_of_a_fit_on_unit_data_reads_every_unit_from_the_dataset():
    """A fit on units streamed from a (dask-backed) dataset: the draws equal those of the same
    parameters with every unit in the model."""
    pytest.importorskip("dask")
    rng = np.random.default_rng(3)
    x = rng.normal(size=90)
    units = xr.Dataset({"x": ("unit", x)}).chunk({"unit": 40})
    options = {"batch_size": 10, "encoder_widths": (4,), "random_seed": 1, "family": "encoder"}
    streamed = AmortizedVI(model=nonlinear_model(x[:20]), unit_data=units, **options).approx
    whole = AmortizedVI(model=nonlinear_model(x), **options).approx
    for mine, theirs in zip(streamed.params, whole.params, strict=True):
        theirs.set_value(mine.get_value())
    drawn = streamed.sample_dataset(20, chunk_size=37, random_seed=0, progressbar=False)
    assert drawn["z"].shape == (1, 20, 90)
    expected = whole.sample_dataset(20, chunk_size=10**6, random_seed=0, progressbar=False)
    # The dataset has no unit coords, so neither have the draws (as in encode_dataset).
    xr.testing.assert_allclose(drawn, expected.drop_vars("unit"), rtol=0, atol=1e-10)


# -- PSIS k̂ per unit, in chunks -----------------------------------------------------------------
@pytest.fixture(scope="module")
def kind_fits():
    """An (unfitted) approximation of every plate kind of the plate matrix (row, vector,
    transformed, indexed, non-centred, crossed, nested, covariates, Dirichlet): what is compared
    here does not depend on the weights, and fits' compilation would cost a minute."""
    return {
        name: AmortizedVI(
            family="encoder", model=build().model, encoder_widths=(4,), random_seed=0
        ).approx
        for name, build in plate_models.KINDS.items()
    }


@pytest.mark.parametrize("kind", list(plate_models.KINDS))
def test_chunked_psis_equals_the_whole_batch_one(kind_fits, kind):
    """The chunked path (each plate's batch log joint, compiled once) against the whole-batch one
    (``compile_log_terms``), with a chunk size that divides no plate's units."""
    approx = kind_fits[kind]
    whole = psis_diagnostic(approx, draws=60, random_seed=1)
    chunked = psis_diagnostic(approx, draws=60, random_seed=1, chunk_size=7)
    np.testing.assert_allclose(chunked.log_weights, whole.log_weights, rtol=1e-12, atol=1e-9)
    assert chunked.khat == pytest.approx(whole.khat, abs=1e-9)
    plates = {p.name for p in approx.analysis.plates}
    assert set(chunked.khat_per_plate) == set(whole.khat_per_plate) == plates
    for name, khat in whole.khat_per_plate.items():
        assert np.isfinite(khat.values).all()
        xr.testing.assert_allclose(chunked.khat_per_plate[name], khat, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", list(plate_models.KINDS))
def test_sample_dataset_of_every_plate_kind_is_chunk_size_invariant(kind_fits, kind):
    approx = kind_fits[kind]
    whole = approx.sample_dataset(20, chunk_size=10**6, random_seed=1, progressbar=False)
    chunked = approx.sample_dataset(20, chunk_size=7, random_seed=1, progressbar=False)
    xr.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12)
    sample = approx.sample(20, random_seed=1).posterior
    for plate in approx.analysis.plates:
        for name in plate.latent_names:
            # On the latent's own scale, under sample()'s dims (e.g. a simplex's K entries).
            assert whole[name].dims == sample[name].dims and whole[name].shape == sample[name].shape
    for name in set(whole.data_vars) - set(approx.analysis.latent_names):
        np.testing.assert_allclose(whole[name].values, sample[name].values, rtol=0, atol=1e-12)


def test_chunked_psis_with_a_unit_without_rows_and_a_store(empty_county_fit, tmp_path):
    pytest.importorskip("zarr")
    _, approx = empty_county_fit
    whole = psis_diagnostic(approx, draws=100, random_seed=0)
    store = tmp_path / "khat.zarr"
    stored = psis_diagnostic(approx, draws=100, random_seed=0, chunk_size=4, store=store)
    khat = stored.khat_per_unit
    assert khat.chunks == ((4, 4, 4, 4, 3),)  # dask-backed, read from the store
    xr.testing.assert_allclose(khat.load(), whole.khat_per_unit, rtol=0, atol=1e-9)
    np.testing.assert_allclose(stored.log_weights, whole.log_weights, rtol=1e-12, atol=1e-9)
    on_disk = xr.open_zarr(store, consolidated=False)["pareto_k_county"]
    np.testing.assert_allclose(on_disk.values, whole.khat_per_unit.values, rtol=0, atol=1e-9)
    assert "PSIS diagnostic" in stored.summary()
    with pytest.raises(pymc_amortize.AmortizationError, match="chunk_size"):
        stored.resample(10)
    assert whole.resample(10, random_seed=0)["posterior"]["a"].shape == (1, 10, 19)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"chunk_size": 1.5}, "chunk_size must be a positive integer"),
        ({"store": "khat.zarr"}, "give chunk_size"),
    ],
)
def test_chunked_psis_refuses_bad_arguments(row_fit, kwargs, match):
    _, approx = row_fit
    with pytest.raises(pymc_amortize.AmortizationError, match=match):
        psis_diagnostic(approx, draws=20, **kwargs)


def _large_arrays(approx, n):
    """Every array of at least n entries that the fitted approximation or its step holds."""
    arrays = []
    for data in approx.inputs.values():
        for part in (data.units, data.rows):
            if part is not None:
                arrays += [c.get_value(borrow=True) for c in part.columns]
    for layout in approx.layouts.values():
        for var in (layout.unit_of_row, layout.offsets, layout.row_order):
            if var is not None:
                arrays.append(var.get_value(borrow=True))
    return [a for a in arrays if isinstance(a, np.ndarray) and a.size >= n]


def test_a_row_plate_fit_holds_its_data_once(row_fit):
    model, approx = row_fit
    x = model.rvs_to_values[model["x"]].data
    held = _large_arrays(approx, N_UNITS)
    assert held, "the encoder reads x"
    # Each large array is the model's own x (a view of it), not a copy.
    assert all(np.shares_memory(a, x) for a in held)
    (layout,) = approx.layouts.values()
    assert layout.offsets is None and layout.row_order is None and layout.unit_of_row is None


def test_the_compiled_step_reads_the_models_arrays(row_fit):
    model, _ = row_fit
    with model:
        inference = AmortizedVI(
            {"z": "x"}, family="encoder", encoder_widths=(8,), batch_size=10, random_seed=0
        )
    guard = inference.objective.step_function(obj_optimizer=pm.adam(learning_rate=1e-2))
    x = model.rvs_to_values[model["x"]].data
    shared = [i.variable.get_value(borrow=True) for i in guard.fn.maker.inputs if i.shared]
    large = [a for a in shared if isinstance(a, np.ndarray) and a.size >= N_UNITS]
    assert len(large) >= 2  # the observed x and the encoder's input
    assert all(np.shares_memory(a, x) for a in large)


def test_an_indexed_plate_borrows_its_index_and_row_inputs(indexed_fit):
    model, approx = indexed_fit
    (layout,) = approx.layouts.values()
    index = model["county_idx"].get_value(borrow=True)
    assert np.shares_memory(layout.unit_of_row.get_value(borrow=True), index)
    rows = approx.inputs["a"].rows
    model_arrays = [model["floor"].get_value(borrow=True)]
    model_arrays.append(model.rvs_to_values[model["log_radon"]].data)
    for column in rows.columns:
        assert any(np.shares_memory(column.get_value(borrow=True), a) for a in model_arrays)


def test_scale_memory_benchmark_runs_on_a_tiny_problem():
    from benchmarks.perf import scale_memory

    row = scale_memory.one_size(2_000, 40)
    assert row["n_units"] == 2_000 and row["steps"] == 40
    assert np.isfinite(row["step_ms"]) and row["encode_s_per_1e6"] > 0
    assert row["sample_s_per_1e6"] > 0 and row["psis_s_per_1e6"] > 0


def test_encode_dataset_keeps_the_event_dims_labels():
    """A latent with an event dim (dims=("unit", "k")) keeps the model's labels of k (they were
    dropped, a newcomer's find); a simplex's value space, one shorter than k, gets none."""
    Y = np.random.default_rng(0).normal(size=(40, 3))
    with pm.Model(coords={"unit": range(40), "k": ["a", "b", "c"]}) as model:
        z = pm.Normal("z", 0, 1, dims=("unit", "k"))
        pm.Normal("Y", z, 1, observed=Y, dims=("unit", "k"))
    approx = pm.fit(20, family="encoder", method="amortized", model=model, progressbar=False)
    ds = approx.encode_dataset(chunk_size=15, progressbar=False)
    assert ds["z_mean"].dims == ("unit", "k")
    assert ds["k"].values.tolist() == ["a", "b", "c"]
