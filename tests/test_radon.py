"""Units with many rows tied by an index array (the radon model): A-VI against NUTS and ADVI."""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest

from pymc_amortize import AmortizationError, AmortizedVI, IndexedLocal, analyze_model
from pymc_amortize.examples.simulated_radon import radon_data, radon_model
from pymc_amortize.fitting.estimator import RandomDraws, batch_plate_of
from pymc_amortize.model.logjoint import build_logjoint
from pymc_amortize.model.plates import PlateLayout, gather_unit_rows

# A-VI's county means against NUTS's, in units of log radon: NUTS's own Monte Carlo error on a
# mean is ≈ 0.3/√ESS ≈ 0.02, A-VI sits at ≈ 0.01 from NUTS, ADVI at ≈ 0.03, and an encoder that
# ignores each county's rows at ≈ 0.3 (measured; see test_an_encoder_that_ignores_the_rows_fails).
MEAN_MAE_TOL = 0.05
SD_RATIO_MEDIAN = (0.9, 1.1)
SD_RATIO_RANGE = (0.7, 1.4)


@pytest.fixture(scope="module")
def radon():
    data = radon_data(random_seed=0)
    return data, radon_model(data)


@pytest.fixture(scope="module")
def nuts(radon):
    _, model = radon
    with model:
        idata = pm.sample(
            800,
            tune=600,
            chains=1,
            random_seed=0,
            progressbar=False,
            compute_convergence_checks=False,
        )
    a = idata.posterior["a"]
    globals_ = {k: float(idata.posterior[k].mean()) for k in ("mu_a", "sigma_a", "b", "sigma")}
    return a.mean(("chain", "draw")).values, a.std(("chain", "draw")).values, globals_


def fit_avi(model, *, steps=(4000, 2000), **options):
    """Adam at 1e-2, then 1e-3 to damp the last-iterate jitter."""
    options.setdefault("family", "encoder")
    inference = AmortizedVI(model=model, random_seed=1, **options)
    inference.fit(steps[0], obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
    return inference, inference.fit(
        steps[1], obj_optimizer=pm.adam(learning_rate=1e-3), progressbar=False
    )


@pytest.fixture(scope="module")
def avi(radon):
    return fit_avi(radon[1])


def errors(mean, sd, reference):
    print(
        f"county intercepts: MAE of means {np.abs(mean - reference[0]).mean():.4f}, "
        f"sd ratio median {np.median(sd / reference[1]):.3f} [{(sd / reference[1]).min():.2f}, {(sd / reference[1]).max():.2f}]"
    )
    ref_mean, ref_sd, _ = reference
    ratio = sd / ref_sd
    return np.abs(mean - ref_mean).mean(), np.median(ratio), ratio.min(), ratio.max()


def assert_close_to(mean, sd, reference):
    mae, median, low, high = errors(mean, sd, reference)
    assert mae < MEAN_MAE_TOL
    assert SD_RATIO_MEDIAN[0] < median < SD_RATIO_MEDIAN[1]
    assert SD_RATIO_RANGE[0] < low and high < SD_RATIO_RANGE[1]


def test_plate_is_found_from_the_index(radon):
    data, model = radon
    analysis = analyze_model(model)
    (plate,) = analysis.plates
    assert plate.latent_names == ("a",)
    assert (plate.dim, plate.row_dim, plate.index.key) == ("county", "obs_id", "county_idx")
    assert plate.size == 85 and plate.n_rows == 919
    (latent,) = plate.latents
    assert latent.unit_inputs == () and latent.input_matrix is None
    assert {d.key for d in latent.row_inputs} == {"log_radon", "floor"}
    assert [mf.name for mf in analysis.mean_field] == ["mu_a", "sigma_a", "b", "sigma"]
    summary = analysis.summary()
    assert "plate 'county': 85 units, 919 rows tied to units by 'county_idx'" in summary
    np.testing.assert_array_equal(plate.row_counts, data.county_sizes)
    assert data.county_sizes.max() > 8 * np.median(data.county_sizes)  # skewed like the real data


def test_county_intercepts_match_nuts_and_advi(radon, nuts, avi):
    _, model = radon
    _, approx = avi
    q = approx.encode()["a"]
    assert q.mean.shape == (85,)
    assert_close_to(q.mean, q.sd, nuts)
    with model:
        advi = pm.fit(
            15_000,
            method="advi",
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=0,
            progressbar=False,
        )
    draws = advi.sample(2000, random_seed=0).posterior["a"]
    advi_mean, advi_sd = draws.mean(("chain", "draw")).values, draws.std(("chain", "draw")).values
    assert_close_to(advi_mean, advi_sd, nuts)  # the reference ADVI itself is sane
    assert_close_to(q.mean, q.sd, (advi_mean, advi_sd, None))


def test_an_encoder_that_ignores_the_rows_fails(radon, nuts):
    # One trainable q(a_j) for every county: what an encoder blind to a unit's rows can do.
    mean0 = pytensor.shared(np.zeros(1), name="mean0")
    log_sd0 = pytensor.shared(np.full(1, np.log(0.1)), name="log_sd0")

    def blind(rows, unit_of_row, n_units, unit_covariates):
        return pt.zeros((n_units, 1)) + mean0, pt.zeros((n_units, 1)) + log_sd0

    _, approx = fit_avi(radon[1], encoder=blind, steps=(2000, 500))
    q = approx.encode()["a"]
    mae, *_ = errors(q.mean, q.sd, nuts)
    assert mae > 4 * MEAN_MAE_TOL
    with pytest.raises(AssertionError):
        assert_close_to(q.mean, q.sd, nuts)


def test_minibatch_over_counties_matches_nuts(radon, nuts):
    _, model = radon
    _, approx = fit_avi(model, batch_size=20)
    q = approx.encode()["a"]
    mae, median, low, high = errors(q.mean, q.sd, nuts)
    assert mae < 1.5 * MEAN_MAE_TOL
    assert SD_RATIO_MEDIAN[0] < median < SD_RATIO_MEDIAN[1]
    assert SD_RATIO_RANGE[0] < low and high < SD_RATIO_RANGE[1]


def test_gather_takes_all_rows_of_the_drawn_units(radon):
    (plate,) = analyze_model(radon[1]).plates
    layout = PlateLayout(plate)
    units = np.array([3, 0, 3, 84, 17], dtype=np.int64)
    slot, rows = gather_unit_rows(pt.as_tensor(units), layout.offsets, layout.row_order)
    slot, rows = slot.eval(), rows.eval()
    index = plate.unit_of_row
    expected = np.concatenate([np.flatnonzero(index == u) for u in units])
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(units[slot], index[rows])
    # The batch the step draws is the same gather.
    batch = layout.draw(pt.as_tensor(units), units.size)
    np.testing.assert_array_equal(batch.rows.eval(), expected)
    np.testing.assert_array_equal(batch.unit_of_row.eval(), slot)
    assert float(batch.scale.eval()) == 85 / 5


def _uranium_model(data):
    # County-level covariate in the local prior: a_j ~ N(g0 + g1 u_j, sigma_a).
    uranium = np.random.default_rng(5).normal(size=data.n_counties)
    with pm.Model(coords={"county": range(data.n_counties)}) as model:
        u = pm.Data("uranium", uranium, dims="county")
        g = pm.Normal("g", 0, 1, shape=2)
        sigma_a = pm.HalfNormal("sigma_a", 1)
        a = pm.Normal("a", g[0] + g[1] * u, sigma_a, dims="county")
        b = pm.Normal("b", 0, 1)
        # A plain NumPy index and covariate (no pm.Data, no row dim): found from the graph.
        pm.Normal("y", a[data.county_idx] + b * data.floor, 0.7, observed=data.log_radon)
    return model


@pytest.mark.parametrize("which", ["radon", "uranium"])
def test_batch_log_joint_of_all_units_equals_model_logp(radon, which):
    data, model = radon
    if which == "uranium":
        model = _uranium_model(data)
    analysis = analyze_model(model)
    (plate,) = analysis.plates
    if which == "uranium":
        # A NumPy index (no name, no row dim) and a per-county pm.Data covariate.
        assert plate.index.key == "index" and plate.row_dim is None
        assert [d.key for d in plate.latents[0].unit_inputs] == ["uranium"]
    joint = build_logjoint(model, analysis, batch_plate=plate)
    point = model.initial_point()
    rng = np.random.default_rng(0)
    point = {k: v + rng.normal(0, 0.3, v.shape) for k, v in point.items()}
    expected = model.compile_logp()(point)
    # Every unit once, in a shuffled order, through the CSR gather: the same log joint.
    units = rng.permutation(plate.size)
    batch = PlateLayout(plate).draw(pt.as_tensor(units), plate.size)
    assert float(batch.scale.eval()) == 1.0
    globals_ = {k: pt.as_tensor(point[k][None]) for k in joint.global_values}
    locals_ = {k: pt.as_tensor(point[k][units][None]) for k in joint.local_values}
    total = joint.per_draw(globals_, locals_, batch)
    np.testing.assert_allclose(total.eval(), [expected], rtol=1e-10)


def test_minibatch_elbo_is_unbiased(avi):
    # At fixed parameters the B = 20 estimate averages to the full-batch ELBO; forgetting to scale
    # the rows' likelihood by N/B would be off by ~800 nats.
    inference, _ = avi
    objective = inference.objective
    full, full_se = objective.estimate_elbo(200, repeats=5, random_seed=0)
    # The batch plate is chosen when the objective is built; set both to minibatch this one.
    objective.batch_size = 20
    objective.batch_plate = batch_plate_of(inference.approx.analysis)
    try:
        random = RandomDraws()
        log_joint, entropy, _ = objective.mc_terms(1, random)
        fn = pm.compile([], log_joint.mean() + entropy, updates=random.updates, random_seed=1)
        values = np.array([fn() for _ in range(1500)])
    finally:
        objective.batch_size = objective.batch_plate = None
    # Minibatched indeed: 20 of 85 counties per draw spread the estimates far wider than the
    # full batch's Monte Carlo noise alone.
    assert values.std() > 10 * full_se * np.sqrt(5)
    se = np.hypot(values.std() / np.sqrt(values.size), full_se)
    assert abs(values.mean() - full) < 4 * se
    assert se < 10.0


def test_new_county_is_encoded_from_its_rows(radon, nuts, avi):
    data, _ = radon
    _, approx = avi
    fitted = approx.encode()["a"]
    # A fitted county's rows, shuffled, give that county's posterior: the pooling is exact and
    # invariant to the order of the rows.
    j = int(np.argmax(data.county_sizes))
    rows = np.random.default_rng(0).permutation(np.flatnonzero(data.county_idx == j))
    q = approx.encode({"log_radon": data.log_radon[rows], "floor": data.floor[rows]})["a"]
    np.testing.assert_allclose(q.mean, fitted.mean[j : j + 1], rtol=1e-9)
    np.testing.assert_allclose(q.sd, fitted.sd[j : j + 1], rtol=1e-9)

    # New counties with 1, 5 and 30 houses, in one pass, against the conditional posterior given
    # NUTS's posterior means of the globals.
    rng = np.random.default_rng(7)
    sizes = np.array([1, 5, 30])
    index = np.repeat(np.arange(3), sizes)
    floor = (rng.random(index.size) < 0.2).astype(float)
    a_new = np.array([0.5, 2.5, 1.0])
    y = rng.normal(a_new[index] - 0.65 * floor, 0.75)
    q = approx.encode({"log_radon": y, "floor": floor, "county_idx": index})["a"]
    g = nuts[2]
    precision = sizes / g["sigma"] ** 2 + 1 / g["sigma_a"] ** 2
    resid_sum = np.bincount(index, y - g["b"] * floor)
    cond_mean = (resid_sum / g["sigma"] ** 2 + g["mu_a"] / g["sigma_a"] ** 2) / precision
    # An encoder trained on 85 counties generalises to new ones within half a posterior sd (a
    # 1-house county measured 0.38 sd off); one blind to the rows is 1.2 to 2.6 sds off here.
    np.testing.assert_array_less(np.abs(q.mean - cond_mean), 0.5 * precision**-0.5)
    np.testing.assert_allclose(q.sd, precision**-0.5, rtol=0.15)
    new = approx.sample_new_units(
        {"log_radon": y, "floor": floor, "county_idx": index}, draws=500, random_seed=0
    )
    assert new.posterior["a"].dims == ("chain", "draw", "new_unit")


def test_pm_fit_and_sample_give_arviz_data_under_model_dims(radon):
    _, model = radon
    approx = pm.fit(
        200,
        family="encoder",
        method="amortized",
        model=model,
        batch_size=10,
        random_seed=0,
        progressbar=False,
    )
    assert np.isfinite(approx.hist).all()
    post = approx.sample(100, random_seed=0).posterior
    assert post["a"].dims == ("chain", "draw", "county")
    assert {"mu_a", "sigma_a", "b", "sigma"} <= set(post.data_vars)


def test_unit_covariates_feed_the_encoder(radon):
    data, _ = radon
    model = _uranium_model(data)
    approx = pm.fit(
        300, family="encoder", method="amortized", model=model, random_seed=0, progressbar=False
    )
    assert approx.encode()["a"].mean.shape == (85,)
    # The NumPy floor array in y's factor is a row input too, named after its factor.
    assert set(approx.analysis.latents[0].input_names) == {"uranium", "y", "y_input0"}
    rows = {"y": np.array([1.0, 2.0, 0.5]), "y_input0": np.zeros(3), "index": np.array([0, 1, 1])}
    with pytest.raises(AmortizationError, match=r"encoder of 'a' needs 'uranium' \(unit inputs\)"):
        approx.encode(rows)
    q = approx.encode(rows | {"uranium": np.array([-1.0, 0.0, 2.0])})["a"]
    assert q.mean.shape == (3,) and np.isfinite(q.sd).all()  # the third county has no rows
    # An explicit covariate array instead of model data: new units pass theirs under 'a'.
    explicit = {"a": IndexedLocal(inputs=["y"], unit_covariates=np.ones((85, 2)))}
    approx = pm.fit(
        50, family="encoder", method="amortized", model=model, local=explicit, progressbar=False
    )
    assert approx.analysis.latents[0].input_matrix.shape == (85, 2)
    q = approx.encode({"y": np.array([1.0]), "a": np.ones((1, 2))})["a"]
    assert q.mean.shape == (1,)


def test_a_group_effect_by_index_and_a_per_row_local_are_two_plates():
    # A group effect looked up by index next to a per-row local: both are amortized, each in
    # its own plate (crossed groupings); local= keeps only what it names.
    rng = np.random.default_rng(0)
    group = rng.integers(0, 3, 50)
    with pm.Model(coords={"unit": range(50), "group": range(3)}) as model:
        beta = pm.Normal("beta", 0, 1, dims="group")
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("x", beta[group] + z, 1, observed=rng.normal(size=50), dims="unit")
    plates = {p.name: p for p in AmortizedVI(family="encoder", model=model).approx.analysis.plates}
    assert set(plates) == {"group", "unit"}
    assert plates["group"].latent_names == ("beta",) and plates["group"].size == 3
    assert plates["group"].n_rows == 50 and plates["group"].index is not None
    assert plates["unit"].latent_names == ("z",) and plates["unit"].index is None
    analysis = analyze_model(model, {"beta": IndexedLocal()})
    (plate,) = analysis.plates
    assert plate.latent_names == ("beta",) and plate.size == 3
    assert [(mf.name, mf.reason) for mf in analysis.mean_field] == [("z", "not named in local=")]


def test_bad_indexed_specs_are_named(radon):
    data, model = radon
    with pytest.raises(AmortizationError, match="no variable 'cnty'"):
        analyze_model(model, {"a": IndexedLocal("cnty")})
    with pytest.raises(AmortizationError, match="'b' is a scalar"):
        analyze_model(model, {"b": IndexedLocal()})
    with pytest.raises(AmortizationError, match="'nope', which is not an observed variable"):
        analyze_model(model, {"a": IndexedLocal(inputs=["log_radon", "nope"])})
    with pm.Model(coords={"county": range(85)}):
        a = pm.Normal("a", 0, 1, dims="county")
        pm.Normal("c", a, 1, dims="county")  # a per-county latent no row looks up
        pm.Normal("y", a[data.county_idx], 1, observed=data.log_radon)
        with pytest.raises(AmortizationError, match=r"'c' is never used as 'c\[index\]'"):
            analyze_model(local={"c": IndexedLocal()})
    bad = data.county_idx.copy()
    bad[0] = 85
    with pm.Model(coords={"county": range(85)}):
        a = pm.Normal("a", 0, 1, dims="county")
        pm.Normal("y", a[bad], 1, observed=data.log_radon)
        with pytest.raises(AmortizationError, match=r"values in \[0, 85\].*\[0, 84\]"):
            AmortizedVI(family="encoder")
