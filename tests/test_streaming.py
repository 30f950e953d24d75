"""Fits on units read from an xarray Dataset chunk by chunk (``unit_data=``): data larger than
memory. The scheme's unbiasedness is tested on unit frequencies and on gradients; the fit against
a closed-form posterior; the reads through zarr and dask against the in-memory answer."""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytest
import xarray as xr

import pymc_amortize
from pymc_amortize import AmortizationError
from pymc_amortize.data.sampler import ChunkedUnitSampler, StepBuffers
from pymc_amortize.data.streaming import UnitSource
from pymc_amortize.examples.paper import nonlinear_model
from pymc_amortize.examples.simulated_radon import radon_data, radon_model
from pymc_amortize.fitting.host_noise import compile_noise_loss
from pymc_amortize.fitting.vi import AmortizedVI
from pymc_amortize.model.analysis import analyze_model


def repeated_measures_model(Y: np.ndarray) -> pm.Model:
    """z_n ~ N(mu, 1), Y[n, j] ~ N(z_n, 1), j < 5; mu ~ N(0, 10): conjugate."""
    with pm.Model(coords={"unit": range(len(Y)), "rep": range(Y.shape[1])}) as model:
        mu = pm.Normal("mu", 0, 10)
        z = pm.Normal("z", mu, 1, dims="unit")
        pm.Normal("Y", z[:, None], 1, observed=Y, dims=("unit", "rep"))
    return model


def repeated_measures_posterior(Y: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Exact posterior: mu's mean and sd, and each z_n's marginal mean and sd."""
    n, k = Y.shape
    ybar = Y.mean(axis=1)
    mu_precision = n / (1 + 1 / k) + 1 / 100
    mu_mean = ybar.sum() / (1 + 1 / k) / mu_precision
    z_mean = (mu_mean + Y.sum(axis=1)) / (1 + k)
    z_sd = np.sqrt(1 / (1 + k) + 1 / mu_precision / (1 + k) ** 2)
    return mu_mean, 1 / np.sqrt(mu_precision), z_mean, np.full(n, z_sd)


def _dataset(x: np.ndarray, chunks) -> xr.Dataset:
    return xr.Dataset({"x": ("unit", x)}).chunk({"unit": chunks})


@pytest.mark.filterwarnings("ignore::pymc_amortize.ChunkOrderWarning")
def test_every_unit_is_drawn_with_probability_one_over_n_whatever_the_chunk_lengths():
    """Chunks of 100, 100 and 30 units: drawing a chunk uniformly (not by its length) would give
    the 30 units of the last one a third of the draws instead of 30/230."""
    n = 230
    ds = _dataset(np.arange(n, dtype=float), (100, 100, 30))
    analysis = analyze_model(nonlinear_model(np.random.default_rng(0).normal(size=20)), None)
    source = UnitSource(ds, analysis, 7)
    buffers = StepBuffers.for_source(source)
    sampler = ChunkedUnitSampler(source, buffers, slots=2, random_seed=0)
    counts = np.zeros(n)
    steps = 20_000
    for _ in range(steps):
        sampler.fill()
        # The buffers hold the drawn units' data: here each unit's x is its id.
        np.testing.assert_array_equal(buffers.units["x"], sampler.units)
        counts += np.bincount(sampler.units, minlength=n)
    sampler.close()
    expected = steps * 7 / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 229 degrees of freedom: mean 229, sd 21.4. Draws that overlap in time (a chunk serves
    # several steps) inflate it a little; a biased scheme gives thousands.
    assert chi2 < 229 + 6 * 21.4, chi2
    assert abs(counts[200:].sum() / counts.sum() - 30 / 230) < 0.01
    assert sampler.chunks_read > steps // sampler.refresh_every


@pytest.fixture(scope="module")
def streamed_and_in_memory():
    """The same model read from unit_data (chunks of 60, 60, 60 and 20) and held whole, both at
    the streamed one's initial parameters (where the gradients are far from zero)."""
    rng = np.random.default_rng(3)
    n = 200
    z = rng.normal(size=n)
    # Sorted, so that chunks differ: a scheme that mis-weights the short chunk is then biased.
    x = np.sort(0.5 + z * (1 + np.sin(z)) + rng.normal(size=n))
    ds = _dataset(x, (60, 60, 60, 20))
    streamed = AmortizedVI(
        family="encoder",
        model=nonlinear_model(x[:30]),
        unit_data=ds,
        batch_size=10,
        encoder_widths=(8,),
        random_seed=1,
        unit_data_pool_mib=2 * 60 * 8 / 2**20,  # a pool of 2 chunks, not the whole dataset
    )
    whole = AmortizedVI(
        family="encoder",
        model=nonlinear_model(x),
        batch_size=10,
        encoder_widths=(8,),
        random_seed=1,
    )
    for mine, theirs in zip(streamed.approx.params, whole.approx.params, strict=True):
        theirs.set_value(mine.get_value())
    return streamed, whole, x


def _gradient_means(streamed, whole) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean of 4,000 streamed minibatch gradients (from a pool of 2 chunks), the mean of 200
    full-batch gradients (20 draws each) at the same parameters, and the standard error of their
    difference. Neighbouring batches share chunks, so the streamed part of the standard error
    comes from means of blocks of 100 steps, much longer than the pool's turnover."""
    pool = ChunkedUnitSampler(
        streamed.approx.unit_source,
        streamed.approx.step_buffers,
        pool_mib=streamed.objective.pool_mib,
    )
    assert (pool.whole, pool.slots) == (False, 2)
    pool.close()
    stream_grad = streamed.objective.gradient_function(random_seed=0)
    full_grad = whole.objective.gradient_function(full_batch=True, obj_n_mc=20, random_seed=0)

    def flat(fn, n):
        return np.array([np.concatenate([g.ravel() for g in fn()[1]]) for _ in range(n)])

    batches, full = flat(stream_grad, 4_000), flat(full_grad, 200)
    blocks = batches.reshape(40, 100, -1).mean(axis=1)
    se = np.sqrt(blocks.var(axis=0, ddof=1) / 40 + full.var(axis=0, ddof=1) / 200)
    return batches.mean(axis=0), full.mean(axis=0), se


@pytest.mark.filterwarnings("ignore::pymc_amortize.ChunkOrderWarning")
def test_the_streamed_minibatch_gradient_averages_to_the_full_batch_gradient(
    streamed_and_in_memory,
):
    streamed, whole, _ = streamed_and_in_memory
    batch_mean, full_mean, se = _gradient_means(streamed, whole)
    z = (batch_mean - full_mean) / se
    assert np.abs(z).max() < 4.5, np.abs(z).max()
    # The check has the power to see a bias of 10 %, as a wrong N / B scale would give.
    z_biased = (0.9 * batch_mean - full_mean) / se
    assert np.abs(z_biased).max() > 4.5


@pytest.mark.filterwarnings("ignore::pymc_amortize.ChunkOrderWarning")
def test_encoding_reads_every_unit_from_the_dataset_as_the_model_would_hold_them(
    streamed_and_in_memory,
):
    streamed, whole, x = streamed_and_in_memory
    mine, theirs = streamed.approx.encode()["z"], whole.approx.encode()["z"]
    assert mine.mean.shape == (x.size,)
    np.testing.assert_allclose(mine.mean, theirs.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(mine.sd, theirs.sd, rtol=0, atol=1e-10)
    ds = streamed.approx.encode_dataset(chunk_size=37, progressbar=False)
    np.testing.assert_allclose(ds["z_mean"].values, theirs.mean, rtol=0, atol=1e-10)
    # The scaling and the training range are the whole dataset's, read chunk by chunk.
    np.testing.assert_allclose(
        streamed.approx.inputs["z"].unit_scaling.center, [x.mean()], rtol=1e-12
    )
    np.testing.assert_allclose(streamed.approx.inputs["z"].unit_scaling.scale, [x.std()], rtol=1e-9)
    envelope = streamed.approx.envelopes["z"].units
    np.testing.assert_allclose(envelope.high, [(x.max() - x.mean()) / x.std()], rtol=1e-9)


@pytest.mark.filterwarnings("ignore::pymc_amortize.ChunkOrderWarning")
def test_sample_of_a_streamed_fit_gives_the_globals_only(streamed_and_in_memory):
    streamed, _, _ = streamed_and_in_memory
    idata = streamed.approx.sample(50, random_seed=0)
    assert set(idata.posterior.data_vars) == {"theta"}
    assert idata.posterior["theta"].shape == (1, 50)
    assert "observed_data" not in idata.children and "encoder_outputs" not in idata.children
    assert idata.amortized_fit.attrs["plates"] == "unit: 200 units"
    with pytest.raises(AmortizationError, match="unit_data"):
        pymc_amortize.psis_diagnostic(streamed.approx)


@pytest.mark.slow
def test_a_fit_from_a_zarr_store_matches_the_closed_form(tmp_path):
    """Repeated measures with a trailing axis, read lazily from zarr through dask."""
    pytest.importorskip("dask")
    rng = np.random.default_rng(11)
    n = 3_000
    z = 1.5 + rng.normal(size=n)
    Y = z[:, None] + rng.normal(size=(n, 5))
    xr.Dataset({"Y": (("unit", "rep"), Y)}).chunk({"unit": 400}).to_zarr(
        tmp_path / "units.zarr", consolidated=False
    )
    stored = xr.open_zarr(tmp_path / "units.zarr", consolidated=False)
    assert stored["Y"].chunks is not None  # lazy
    approx = pm.fit(
        4_000,
        family="encoder",
        method="amortized",
        model=repeated_measures_model(Y[:50]),
        unit_data=stored,
        batch_size=100,
        encoder_widths=(),
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=2,
        progressbar=False,
    )
    mu_mean, mu_sd, z_mean, z_sd = repeated_measures_posterior(Y)
    mu = approx.sample(2_000, random_seed=0).posterior["mu"]
    assert abs(float(mu.mean()) - mu_mean) < 5 * mu_sd + 0.02
    posterior = approx.encode_dataset(chunk_size=1_000, progressbar=False)
    err = (posterior["z_mean"].values - z_mean) / z_sd
    assert np.sqrt(np.mean(err**2)) < 0.3, np.sqrt(np.mean(err**2))
    assert 0.85 < np.mean(posterior["z_sd"].values / z_sd) < 1.15


@pytest.mark.parametrize(("pool_mib", "held"), [(128, 5_000), (0.02, 10 * 250)])
def test_a_fit_on_unit_data_holds_the_pool_it_is_given(pool_mib, held):
    """The whole dataset when it fits in the pool, else as many chunks as fit (0.02 MiB holds
    10 chunks of 250 float64)."""
    ds = _dataset(np.random.default_rng(0).normal(size=5_000), 250)
    inference = AmortizedVI(
        family="encoder",
        model=nonlinear_model(ds["x"].values[:40]),
        unit_data=ds,
        batch_size=20,
        random_seed=0,
        unit_data_pool_mib=pool_mib,
    )
    inference.fit(30, progressbar=False)
    sampler = inference.objective.sampler
    assert sampler.whole == (held == 5_000)
    assert sum(a.size for a in sampler.pool.values()) == held
    assert sampler.buffers.units["x"].shape == (20,)
    # One buffers object per fit: the sampler fills the arrays the step was built on.
    assert sampler.buffers is inference.approx.step_buffers


def _sorted_radon(n_counties=60, n_rows=900, seed=3):
    """Simulated radon as a store: houses sorted by county in chunks of 250 (the counties, with
    no variable of their own, are read in chunks of about as many houses)."""
    data = radon_data(n_counties, n_rows, random_seed=seed)
    order = np.argsort(data.county_idx, kind="stable")
    rows = {k: ("obs_id", getattr(data, k)[order]) for k in ("floor", "county_idx", "log_radon")}
    ds = xr.Dataset(rows, coords={"county": np.arange(data.n_counties)})
    return data, ds.chunk({"obs_id": 250})


@pytest.fixture(scope="module")
def indexed_streamed_and_in_memory():
    """Counties with their houses read from unit_data through a pool of 2 of 4 chunks, and the
    same data in memory, at the streamed fit's initial parameters."""
    data, ds = _sorted_radon()
    template = radon_model(radon_data(20, 300, random_seed=4))
    options = {"batch_size": 5, "random_seed": 1, "encoder_widths": (8,), "family": "encoder"}
    streamed = AmortizedVI(model=template, unit_data=ds, unit_data_pool_mib=0.001, **options)
    whole = AmortizedVI(model=radon_model(data), **options)
    for mine, theirs in zip(streamed.approx.params, whole.approx.params, strict=True):
        theirs.set_value(mine.get_value())
    return streamed, whole, data


def test_an_indexed_plate_streams_unbiased_minibatches(indexed_streamed_and_in_memory):
    """Counties drawn from a pool of chunks with all their houses, padded buffers read up to the
    batch's rows: the gradient averages to the full-batch one, as for a row plate."""
    streamed, whole, _ = indexed_streamed_and_in_memory
    batch_mean, full_mean, se = _gradient_means(streamed, whole)
    varies = se > 0  # weights of dead ReLUs have a zero gradient throughout
    z = (batch_mean - full_mean)[varies] / se[varies]
    assert np.abs(z).max() < 4.5, np.abs(z).max()


def test_an_indexed_plate_from_unit_data_encodes_every_county_as_in_memory(
    indexed_streamed_and_in_memory,
):
    streamed, whole, data = indexed_streamed_and_in_memory
    mine, theirs = streamed.approx.encode()["a"], whole.approx.encode()["a"]
    assert mine.mean.shape == (data.n_counties,)
    np.testing.assert_allclose(mine.mean, theirs.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(mine.sd, theirs.sd, rtol=0, atol=1e-10)
    ds = streamed.approx.encode_dataset(chunk_size=7, progressbar=False, summary=False)
    np.testing.assert_allclose(ds["a_mean"].values, theirs.mean, rtol=0, atol=1e-10)
    source = streamed.approx.unit_source
    counts = np.bincount(data.county_idx)
    assert source.row_count_range == (counts.min(), counts.max())
    assert streamed.approx.step_buffers.capacity == 5 * counts.max()


def test_padded_and_trimmed_row_buffers_give_the_same_loss(indexed_streamed_and_in_memory):
    """Under NUMBA the step reads the buffers up to the batch's rows; with static shapes (JAX) it
    reads them whole, padding weighted out: the same loss and gradient for the same batch."""
    streamed, _, _ = indexed_streamed_and_in_memory
    buffers = streamed.approx.step_buffers
    sampler = ChunkedUnitSampler(streamed.approx.unit_source, buffers, random_seed=0)
    trimmed, noise = compile_noise_loss(streamed, mode="NUMBA", static_shapes=False)
    padded, _ = compile_noise_loss(streamed, mode="NUMBA", static_shapes=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        sampler.fill()
        assert buffers.row_count < buffers.capacity
        draws = noise.draw(rng)
        for expected, got in zip(trimmed(*draws), padded(*draws), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda ds: ds.isel(obs_id=slice(None, None, -1)), "must be sorted by unit"),
        (lambda ds: ds.isel(obs_id=np.flatnonzero(ds["county_idx"].values != 2)), "have no rows"),
        (lambda ds: ds.drop_vars("county_idx"), "no variable 'county_idx'"),
    ],
    ids=["unsorted", "units-without-rows", "no-index"],
)
def test_an_indexed_store_that_cannot_be_streamed_is_named(change, match):
    _, ds = _sorted_radon()
    template = radon_model(radon_data(20, 300, random_seed=4))
    with pytest.raises(AmortizationError, match=match):
        AmortizedVI(family="encoder", model=template, unit_data=change(ds), batch_size=5)


@pytest.mark.slow
def test_indexed_rows_and_a_unit_observation_from_zarr_match_the_closed_form(tmp_path):
    """a_j ~ N(0, 1), y_i ~ N(a[idx_i], 1) (rows, sorted by unit), u_j ~ N(a_j, 0.5): exact
    posterior N((Σ y + 4 u_j) / (5 + n_j), 1 / (5 + n_j)), read from zarr through a pool."""
    pytest.importorskip("zarr")
    rng = np.random.default_rng(0)
    J, R = 400, 4_000
    idx = np.sort(rng.integers(0, J, R))
    a_true = rng.normal(size=J)
    y, u = a_true[idx] + rng.normal(size=R), a_true + 0.5 * rng.normal(size=J)
    ds = xr.Dataset({"idx": ("obs", idx), "y": ("obs", y), "u": ("group", u)})
    ds.chunk({"obs": 500, "group": 50}).to_zarr(tmp_path / "rows.zarr", consolidated=False)
    stored = xr.open_zarr(tmp_path / "rows.zarr", consolidated=False)
    with pm.Model(coords={"group": range(20), "obs": range(60)}) as template:
        index = pm.Data("idx", np.repeat(np.arange(20), 3), dims="obs")
        a = pm.Normal("a", 0, 1, dims="group")
        pm.Normal("y", a[index], 1, observed=y[:60], dims="obs")
        pm.Normal("u", a, 0.5, observed=u[:20], dims="group")
    approx = pm.fit(
        4_000,
        family="encoder",
        method="amortized",
        model=template,
        unit_data=stored,
        unit_data_pool_mib=0.02,
        batch_size=20,
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=0,
        progressbar=False,
    )
    precision = 5 + np.bincount(idx, minlength=J)
    mean = (np.bincount(idx, weights=y, minlength=J) + 4 * u) / precision
    q = approx.encode()["a"]
    z = (q.mean - mean) * np.sqrt(precision)
    assert np.sqrt(np.mean(z**2)) < 0.5, np.sqrt(np.mean(z**2))
    assert 0.8 < np.mean(q.sd * np.sqrt(precision)) < 1.2


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda ds: ds.rename({"x": "y"}), "no variable 'x'"),
        (lambda ds: ds.rename({"unit": "row"}), "unit"),
        (lambda ds: ds.expand_dims(rep=2, axis=1), "shape"),
        (lambda ds: ds["x"].values, "xarray.Dataset"),
    ],
)
def test_unit_data_that_does_not_match_the_model_is_named(change, match):
    ds = _dataset(np.zeros(100), 50)
    with pytest.raises(AmortizationError, match=match):
        AmortizedVI(
            family="encoder",
            model=nonlinear_model(np.random.default_rng(0).normal(size=20)),
            unit_data=change(ds),
            batch_size=10,
        )


def test_unit_data_needs_a_batch_size():
    ds = _dataset(np.zeros(100), 50)
    with pytest.raises(AmortizationError, match="batch_size"):
        AmortizedVI(
            family="encoder",
            model=nonlinear_model(np.random.default_rng(0).normal(size=20)),
            unit_data=ds,
        )


def test_counts_stored_as_floats_are_refused_for_an_integer_observed_variable():
    counts = np.random.default_rng(0).poisson(3.0, size=60)
    with pm.Model(coords={"unit": range(20)}) as model:
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Poisson("counts", pm.math.exp(z), observed=counts[:20], dims="unit")
    ds = xr.Dataset({"counts": ("unit", counts.astype(float))})
    with pytest.raises(AmortizationError, match="integer"):
        AmortizedVI(family="encoder", model=model, unit_data=ds, batch_size=10)
    # As integers they stream.
    ds["counts"] = ds["counts"].astype(np.int64)
    AmortizedVI(family="encoder", model=model, unit_data=ds, batch_size=10).fit(
        5, progressbar=False
    )


def test_scale_disk_benchmark_runs_on_a_tiny_store(tmp_path):
    pytest.importorskip("zarr")
    from benchmarks.perf import scale_disk

    row = scale_disk.one_size(3_000, 20, tmp_path, small_pool=True)
    assert row["n_units"] == 3_000 and row["steps"] == 20
    assert np.isfinite(row["step_ms"]) and row["fit_peak_mib"] >= 0


def _sensor_model(Y: np.ndarray, n_template: int = 30) -> pm.Model:
    """z_n ~ N(0, 1), Y[n, s, t] ~ N(z_n + offset_s, 1): trailing dims with names and labels."""
    coords = {"unit": range(n_template), "sensor": ["a", "b", "c"], "time": [0, 1]}
    with pm.Model(coords=coords) as model:
        offset = pm.Normal("offset", 0, 5, dims="sensor")
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal(
            "Y",
            z[:, None, None] + offset[None, :, None],
            1,
            observed=Y[:n_template],
            dims=("unit", "sensor", "time"),
        )
    return model


def _sensor_data(n=400):
    rng = np.random.default_rng(5)
    offset = np.array([-2.0, 0.0, 2.0])
    Y = rng.normal(size=n)[:, None, None] + offset[None, :, None] + rng.normal(size=(n, 3, 2))
    ds = xr.Dataset(
        {"Y": (("unit", "sensor", "time"), Y)}, coords={"sensor": ["a", "b", "c"], "time": [0, 1]}
    )
    return Y, ds


@pytest.mark.parametrize(
    "layout",
    [
        lambda ds: ds.transpose("unit", "time", "sensor"),  # same dims, another order
        lambda ds: ds.isel(sensor=[2, 0, 1]),  # same labels, another order
    ],
    ids=["dims-transposed", "labels-permuted"],
)
def test_trailing_dims_and_labels_are_read_by_name_not_by_position(layout):
    """A store whose trailing dims or labels are in another order than the model's is read in the
    model's order (it was read by position: a newcomer's fit found offsets near 0, not ±2)."""
    Y, ds = _sensor_data()
    inference = AmortizedVI(
        family="encoder", model=_sensor_model(Y), unit_data=layout(ds), batch_size=20
    )
    np.testing.assert_array_equal(inference.approx.unit_source.read(10, 20)["Y"], Y[10:20])


def test_trailing_dims_or_labels_the_model_lacks_are_named():
    Y, ds = _sensor_data()
    with pytest.raises(AmortizationError, match=r"unit_data\['Y'\] has the dims"):
        AmortizedVI(
            family="encoder",
            model=_sensor_model(Y),
            unit_data=ds.rename({"sensor": "channel"}),
            batch_size=20,
        )
    relabelled = ds.assign_coords(sensor=["a", "b", "d"])
    with pytest.raises(AmortizationError, match=r"labels \['a', 'b', 'd'\] along 'sensor'"):
        AmortizedVI(family="encoder", model=_sensor_model(Y), unit_data=relabelled, batch_size=20)


def test_nan_in_any_variable_read_is_named_before_the_fit():
    """Not only encoder inputs: NaN in an observed variable the encoder does not read made the
    fit diverge at step 39 with advice about the learning rate."""
    rng = np.random.default_rng(0)
    c, y = rng.normal(size=500), rng.normal(size=500)
    y[321] = np.nan
    with pm.Model(coords={"unit": range(20)}) as model:
        cov = pm.Data("c", c[:20], dims="unit")
        z = pm.Normal("z", cov, 1, dims="unit")
        pm.Normal("y", z, 1, observed=y[:20], dims="unit")
    ds = xr.Dataset({"c": ("unit", c), "y": ("unit", y)})
    with pytest.raises(AmortizationError, match=r"unit_data\['y'\] has NaN or inf at unit 321"):
        AmortizedVI(family="encoder", model=model, local={"z": ["c"]}, unit_data=ds, batch_size=10)


def test_variables_chunked_differently_are_read_together(tmp_path):
    pytest.importorskip("zarr")
    rng = np.random.default_rng(0)
    c, y = rng.normal(size=2_000), rng.normal(size=2_000)
    with pm.Model(coords={"unit": range(20)}) as model:
        cov = pm.Data("c", c[:20], dims="unit")
        z = pm.Normal("z", cov, 1, dims="unit")
        pm.Normal("y", z, 1, observed=y[:20], dims="unit")
    ds = xr.Dataset({"c": ("unit", c), "y": ("unit", y)})
    encoding = {"c": {"chunks": (700,)}, "y": {"chunks": (1_000,)}}
    ds.to_zarr(tmp_path / "mixed.zarr", encoding=encoding, consolidated=False)
    stored = xr.open_zarr(tmp_path / "mixed.zarr", consolidated=False)
    inference = AmortizedVI(family="encoder", model=model, unit_data=stored, batch_size=10)
    piece = inference.approx.unit_source.read(650, 1_050)
    np.testing.assert_array_equal(piece["c"], c[650:1_050])
    np.testing.assert_array_equal(piece["y"], y[650:1_050])


def test_an_ordered_store_read_through_a_small_pool_warns():
    """Sorted units with a pool of a few chunks: neighbouring batches alike (a newcomer's global
    was 26 posterior sds off). Shuffled, or with the whole store in the pool, nothing to say."""
    x = np.sort(np.random.default_rng(1).normal(size=4_000))
    small = {"batch_size": 20, "unit_data_pool_mib": 2 * 500 * 8 / 2**20, "family": "encoder"}
    template = nonlinear_model(np.random.default_rng(2).normal(size=40))
    with pytest.warns(pymc_amortize.ChunkOrderWarning, match="Store the units shuffled"):
        AmortizedVI(model=template, unit_data=_dataset(x, 500), **small).fit(5, progressbar=False)
    shuffled = np.random.default_rng(3).permutation(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pymc_amortize.ChunkOrderWarning)
        AmortizedVI(model=template, unit_data=_dataset(shuffled, 500), **small).fit(
            5, progressbar=False
        )
        AmortizedVI(
            family="encoder", model=template, unit_data=_dataset(x, 500), batch_size=20
        ).fit(5, progressbar=False)


def test_a_saved_fit_loads_onto_its_unit_data(tmp_path):
    x = np.random.default_rng(4).normal(size=600)
    ds = _dataset(x, 250)
    approx = pm.fit(
        50,
        family="encoder",
        method="amortized",
        model=nonlinear_model(x[:40]),
        unit_data=ds,
        batch_size=20,
        progressbar=False,
    )
    pymc_amortize.save_approximation(approx, tmp_path / "fit")
    loaded = pymc_amortize.load_approximation(
        tmp_path / "fit", model=nonlinear_model(x[:40]), unit_data=ds
    )
    mine, theirs = approx.encode()["z"], loaded.encode()["z"]
    assert theirs.mean.shape == (600,)
    np.testing.assert_allclose(theirs.mean, mine.mean, rtol=0, atol=1e-12)
    # The globals' posterior carries no leftover coords of the template's units.
    assert "unit" not in approx.sample(10).posterior.coords


def test_a_one_unit_template_is_refused_and_a_constant_covariate_still_read():
    """On a template of one county its covariate was read as no data: left out of the encoder
    and the log joint kept the template's value for every county (a newcomer's g: 0.478 against
    NUTS's 0.717). A covariate constant on a template of several counties is still read per
    county from the store."""
    data, ds = _sorted_radon()
    uranium = np.random.default_rng(0).normal(size=data.n_counties)
    store = ds.assign(log_uranium=("county", uranium))

    def template(n_counties, covariate):
        rows = data.county_idx < n_counties
        with pm.Model(coords={"county": range(n_counties), "obs_id": range(rows.sum())}) as m:
            u = pm.Data("log_uranium", covariate, dims="county")
            idx = pm.Data("county_idx", data.county_idx[rows], dims="obs_id")
            g = pm.Normal("g", 0, 1)
            a = pm.Normal("a", g * u, 1, dims="county")
            pm.Normal("log_radon", a[idx], 1, observed=data.log_radon[rows], dims="obs_id")
        return m

    with pytest.raises(AmortizationError, match="at least two units"):
        AmortizedVI(family="encoder", model=template(1, uranium[:1]), unit_data=store, batch_size=5)
    for covariate in (np.full(4, 0.3), uranium[:4]):
        inference = AmortizedVI(
            family="encoder", model=template(4, covariate), unit_data=store, batch_size=5
        )
        source = inference.approx.unit_source
        assert "log_uranium" in source.unit_keys
        np.testing.assert_array_equal(source.read(10, 20)["log_uranium"], uranium[10:20])
