"""Bad input, divergence, determinism and isolation: a user's mistake gets a named error, a NaN
never loses a fit, a seed reproduces a fit, and a fit changes nothing the user owns."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from bad_input_cases import CASES, two_plates_model, unit_model
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from pymc_amortize import (
    AmortizationError,
    AmortizedVI,
    DivergenceWarning,
    MLPEncoder,
    fit_amortized,
)
from pymc_amortize.fitting.estimator import RandomDraws

ROOT = Path(__file__).resolve().parent.parent


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_a_clear_error_naming_the_culprit(case):
    with pytest.raises(case.exception, match=case.match) as info:
        case.call()
    # Raised by our own checks (in the package or a subpackage), not from deep inside PyTensor
    # or PyMC.
    assert ROOT / "pymc_amortize" in Path(info.traceback[-1].path).resolve().parents


def test_error_table_is_up_to_date():
    spec = importlib.util.spec_from_file_location(
        "generate_error_table", ROOT / "docs" / "generate_error_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "docs" / "errors.md").read_text()
    assert committed == module.render_table(), (
        "docs/errors.md is stale: run `python docs/generate_error_table.py`"
    )


# -- divergence -------------------------------------------------------------------------------
def _param_values(approx):
    return [p.get_value().copy() for p in approx.params]


def _elbo(inference):
    return inference.objective.estimate_elbo(2000, random_seed=3)[0]


def test_huge_learning_rate_stops_keeps_start_and_resumes():
    model = unit_model()
    inference = AmortizedVI(family="encoder", model=model, encoder_widths=(4,), random_seed=0)
    start = _param_values(inference.approx)
    with pytest.warns(DivergenceWarning, match=r"diverged at step \d+.*mean of theta") as record:
        approx = inference.fit(200, obj_optimizer=pm.adam(learning_rate=1e6), progressbar=False)
    assert len(record) == 1
    info = approx.divergence
    assert 1 <= info.step < 200 and info.restored_step == 0
    assert "mean of theta" in info.nonfinite_params
    assert any(name.startswith("z_encoder") for name in info.nonfinite_params)
    # The loss history holds only the finite steps before the divergence.
    assert approx.hist.size == info.step - 1 and np.isfinite(approx.hist).all()
    for value, before in zip(_param_values(approx), start, strict=True):
        np.testing.assert_array_equal(value, before)
    elbo_restored = _elbo(inference)
    # Resume from the restored parameters with a sane learning rate.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        approx = inference.fit(500, obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
    assert approx.divergence is None
    assert np.isfinite(approx.hist).all()
    assert _elbo(inference) > elbo_restored + 5.0


def test_divergence_mid_fit_restores_best_snapshot_and_refine_resumes():
    model = unit_model(50)
    inference = AmortizedVI(family="encoder", model=model, encoder_widths=(4,), random_seed=0)
    learning_rate = pytensor.shared(1e-2)
    seen = {0: _param_values(inference.approx)}

    def record_and_explode(approx, losses, step):
        seen[step] = _param_values(approx)
        if step == 250:
            learning_rate.set_value(1e6)

    with pytest.warns(DivergenceWarning, match=r"diverged at step 25\d"):
        approx = inference.fit(
            1000,
            obj_optimizer=pm.adam(learning_rate=learning_rate),
            callbacks=[record_and_explode],
            progressbar=False,
        )
    info = approx.divergence
    assert 250 < info.step < 1000
    assert info.restored_step in (100, 200)  # the best 100-step window before the divergence
    for value, snapshot in zip(_param_values(approx), seen[info.restored_step], strict=True):
        assert np.isfinite(value).all()
        np.testing.assert_array_equal(value, snapshot)
    elbo_restored = _elbo(inference)
    learning_rate.set_value(1e-2)
    inference.refine(300, progressbar=False)  # same step function and optimizer state
    assert inference.approx.divergence is None
    assert inference.hist.size == info.step - 1 + 300
    assert np.isfinite(inference.hist).all()
    assert _elbo(inference) > elbo_restored


def test_divergence_in_a_short_fit_warns_instead_of_pymcs_index_error():
    # PyMC 6.4's loop raises IndexError when a run of fewer than 10 steps stops early.
    inference = AmortizedVI(family="encoder", model=unit_model(), encoder_widths=(), random_seed=0)
    with pytest.warns(DivergenceWarning, match=r"diverged at step"):
        approx = inference.fit(5, obj_optimizer=pm.adam(learning_rate=1e6), progressbar=False)
    diverged_at = approx.divergence.step
    assert approx.hist.size == diverged_at - 1
    assert all(np.isfinite(v).all() for v in _param_values(approx))
    # A short fit that does not diverge leaves PyMC's state on our guarded step, for refine.
    inference.fit(3, obj_optimizer=pm.adam(learning_rate=1e-3), progressbar=False)
    assert inference.state.step is inference.objective.guard
    inference.refine(4, progressbar=False)
    assert inference.approx.divergence is None
    assert inference.hist.size == diverged_at - 1 + 3 + 4


def test_non_finite_parameters_after_the_last_update_are_restored():
    # The last step's loss is that of the parameters before its update; an infinite step size
    # makes every parameter non-finite in that update while the reported loss stays finite.
    inference = AmortizedVI(family="encoder", model=unit_model(), encoder_widths=(), random_seed=0)
    start = _param_values(inference.approx)
    with pytest.warns(DivergenceWarning, match=r"diverged at step 1\b.*mean of theta"):
        approx = inference.fit(1, obj_optimizer=pm.sgd(learning_rate=np.inf), progressbar=False)
    assert np.isfinite(approx.hist).all() and approx.hist.size == 1
    for value, before in zip(_param_values(approx), start, strict=True):
        np.testing.assert_array_equal(value, before)


# -- determinism ------------------------------------------------------------------------------
def test_fit_amortized_same_seed_same_result_different_seed_different():
    def run(seed):
        return fit_amortized(
            unit_model(40),
            family="encoder",
            n=150,
            draws=30,
            encoder_widths=(3,),
            batch_size=10,
            obj_n_mc=2,
            random_seed=seed,
            progressbar=False,
        )

    first, again, other = run(11), run(11), run(12)
    for name in ("theta", "z"):
        np.testing.assert_array_equal(first.posterior[name], again.posterior[name])
        assert not np.array_equal(first.posterior[name], other.posterior[name])
    np.testing.assert_array_equal(first["amortized_fit"]["loss"], again["amortized_fit"]["loss"])
    assert not np.array_equal(first["amortized_fit"]["loss"], other["amortized_fit"]["loss"])


def test_new_unit_draws_and_elbo_estimate_follow_the_seed():
    approx = pm.fit(
        50,
        family="encoder",
        method="amortized",
        model=unit_model(),
        encoder_widths=(),
        random_seed=0,
        progressbar=False,
    )
    new = {"x": np.array([-1.0, 0.0, 2.0])}
    draws = [
        approx.sample_new_units(new, 20, random_seed=s).posterior["z"].values for s in (1, 1, 2)
    ]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


# -- isolation --------------------------------------------------------------------------------
def _model_state(model):
    point = model.initial_point()
    return {
        "vars": list(model.named_vars),
        "free": [rv.name for rv in model.free_RVs],
        "observed": [rv.name for rv in model.observed_RVs],
        "initial_point": {k: v.copy() for k, v in point.items()},
        "data": {v.name: np.array(v.get_value()) for v in model.data_vars},
        "observed_data": {
            rv.name: np.array(model.rvs_to_values[rv].data) for rv in model.observed_RVs
        },
        "dim_lengths": {k: int(v.get_value()) for k, v in model.dim_lengths.items()},
        "coords": {k: tuple(v) for k, v in model.coords.items()},
        "logp": float(model.compile_logp()(point)),
    }


def _assert_same_state(before, after):
    assert before.keys() == after.keys()
    for key in before:
        if isinstance(before[key], dict):
            assert before[key].keys() == after[key].keys(), key
            for name in before[key]:
                np.testing.assert_array_equal(before[key][name], after[key][name], err_msg=name)
        else:
            assert before[key] == after[key], key


def test_fit_changes_no_model_data_matrix_or_encoder_and_can_be_repeated():
    rng = np.random.default_rng(4)
    n = 30
    x, covariate = rng.normal(size=n), rng.normal(size=n)
    x_user, covariate_user = x.copy(), covariate.copy()
    with pm.Model(coords={"unit": range(n)}) as model:
        pm.Data("covariate", covariate, dims="unit")
        theta = pm.Normal("theta", 0, 1, initval=0.3)
        z = pm.Normal("z", model["covariate"], 1, dims="unit")
        w = pm.HalfNormal("w", 1, dims="unit")
        pm.Normal("x", theta + z, w, observed=x, dims="unit")
    matrix = rng.normal(size=(n, 2))
    matrix_user = matrix.copy()
    encoder = MLPEncoder(n_inputs=2, event_size=1, widths=(3,), random_seed=0)
    weights = {p.name: p.get_value().copy() for p in _encoder_weights(encoder)}
    local = {"z": ["covariate", "x"], "w": matrix}
    before = _model_state(model)

    def advi_hist():
        return pm.fit(30, method="advi", model=model, random_seed=5, progressbar=False).hist

    advi_before = advi_hist()
    for _ in range(2):
        approx = pm.fit(
            200,
            family="encoder",
            method="amortized",
            model=model,
            local=local,
            encoder={"w": encoder},
            batch_size=10,
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=1,
            progressbar=False,
        )
        assert np.isfinite(approx.hist).all() and approx.hist.size == 200
    _assert_same_state(before, _model_state(model))
    np.testing.assert_array_equal(x, x_user)
    np.testing.assert_array_equal(covariate, covariate_user)
    np.testing.assert_array_equal(matrix, matrix_user)
    assert local["z"] == ["covariate", "x"] and local["w"] is matrix
    for param in _encoder_weights(encoder):
        np.testing.assert_array_equal(param.get_value(), weights[param.name])
    # The fit trained copies of the user's encoder weights.
    trained = {p.name: p.get_value() for p in approx.encoder_params if p.name in weights}
    assert trained.keys() == weights.keys()
    assert any(not np.array_equal(trained[k], weights[k]) for k in weights)
    # Other methods are unaffected by an amortized fit in the same model.
    np.testing.assert_array_equal(advi_hist(), advi_before)


def _encoder_weights(encoder):
    from pymc_amortize.guide.encoders import encoder_params

    return encoder_params(encoder(pytensor.tensor.matrix("probe", shape=(None, 2))), exclude=())


# -- what used to be refused ------------------------------------------------------------------
def _two_stage_fit(inference, steps=(2000, 1000)):
    inference.fit(steps[0], obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
    return inference.fit(steps[1], obj_optimizer=pm.adam(learning_rate=1e-3), progressbar=False)


def test_a_model_without_local_latent_fits_mean_field_like_advi():
    # theta ~ N(0, 1), w ~ N(0, I_3), x_n ~ N(theta + Σw, 1): no latent has a unit axis the data
    # share. Posterior precision I + n 11ᵀ: the exact means are S / (1 + 4n) (S = Σx), and the
    # optimal mean-field sds are 1 / √(1 + n), for ADVI and the amortized fit alike.
    n = 20
    x = np.random.default_rng(3).normal(1.0, 1.0, size=n)
    with pm.Model() as model:
        theta = pm.Normal("theta", 0, 1)
        w = pm.Normal("w", 0, 1, shape=3)
        pm.Normal("x", theta + w.sum(), 1, observed=x)
    analysis = AmortizedVI(family="encoder", model=model).approx.analysis
    assert analysis.plates == ()
    reasons = dict((mf.name, mf.reason) for mf in analysis.mean_field)
    assert (
        reasons.keys() == {"theta", "w"}
        and "no observed variable has its leading axis" in reasons["w"]
    )
    assert "no plate: every latent is fitted mean-field" in analysis.summary()
    expected_mean, expected_sd = x.sum() / (1 + 4 * n), 1 / np.sqrt(1 + n)
    fitted = {}
    for method, inference in (
        ("amortized", AmortizedVI(family="encoder", model=model, random_seed=0)),
        ("advi", pm.ADVI(model=model, random_seed=0)),
    ):
        approx = _two_stage_fit(inference)
        assert np.isfinite(approx.hist).all()
        group = approx.groups[0]
        mean, sd = group.mean.get_value(), np.logaddexp(0.0, group.rho.get_value())
        np.testing.assert_allclose(mean, expected_mean, atol=0.03)
        np.testing.assert_allclose(sd, expected_sd, rtol=0.1)
        fitted[method] = mean, sd
    np.testing.assert_allclose(fitted["amortized"][0], fitted["advi"][0], atol=0.04)
    np.testing.assert_allclose(fitted["amortized"][1], fitted["advi"][1], rtol=0.1)
    assert set(approx.sample(10, random_seed=0).posterior.data_vars) == {"theta", "w"}


@pytest.mark.parametrize("local", [None, {"z": "x", "w": "y"}], ids=["found", "named"])
def test_latents_with_different_unit_counts_get_a_plate_each_and_the_closed_form(local):
    # z_n | x_n ~ N(x_n / 2, 1 / 2) for 20 units and w_g | y_g ~ N(y_g / 2, 1 / 2) for 5 groups:
    # an affine encoder is exact for each.
    model = two_plates_model()
    inference = AmortizedVI(local, family="encoder", model=model, encoder_widths=(), random_seed=0)
    plates = {p.name: (p.size, p.latent_names) for p in inference.approx.analysis.plates}
    assert plates == {"unit": (20, ("z",)), "group": (5, ("w",))}
    approx = _two_stage_fit(inference, steps=(3000, 2000))
    q = approx.encode()
    for latent, data in (("z", "x"), ("w", "y")):
        observed = model.rvs_to_values[model[data]].data
        np.testing.assert_allclose(q[latent].mean, observed / 2, atol=0.05)
        np.testing.assert_allclose(q[latent].sd, np.sqrt(0.5), rtol=0.05)


@pytest.mark.parametrize("which", ["literal shapes", "two plates"])
def test_minibatch_elbo_is_unbiased(which):
    # At fixed parameters the B = 5 estimate averages to the full-batch ELBO: for a model without
    # dims (literal shapes), and for two plates where only the larger one is minibatched.
    model = unit_model(dims=False) if which == "literal shapes" else two_plates_model()
    inference = AmortizedVI(
        family="encoder", model=model, encoder_widths=(3,), batch_size=5, random_seed=0
    )
    assert inference.objective.batch_plate.size == 20
    inference.fit(300, obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
    full, full_se = inference.objective.estimate_elbo(500, repeats=4, random_seed=0)
    random = RandomDraws()
    log_joint, entropy, _ = inference.objective.mc_terms(1, random)
    fn = pm.compile([], log_joint.mean() + entropy, updates=random.updates, random_seed=1)
    values = np.array([fn() for _ in range(2000)])
    se = np.hypot(values.std() / np.sqrt(values.size), full_se)
    # Forgetting the N / B scaling would be off by tens of nats.
    assert se < 0.5 and abs(values.mean() - full) < 4 * se


# -- property-based ---------------------------------------------------------------------------
def test_a_shape_constant_is_not_an_encoder_input():
    # Found by the property test below: 3 units, a 3-d observed value, no dims.
    y = np.random.default_rng(0).normal(size=(3, 2, 1))
    with pm.Model() as model:
        e = pm.Normal("e", 0, 1, shape=(3, 2))
        pm.Normal("y", e[..., None], 1, observed=y)
    assert AmortizedVI(family="encoder", model=model).approx.analysis.latents[0].input_names == (
        "y",
    )
    approx = pm.fit(
        3, family="encoder", method="amortized", model=model, batch_size=2, progressbar=False
    )
    assert np.isfinite(approx.hist).all()


@st.composite
def random_models(draw):
    n_units = draw(st.integers(2, 6))
    return {
        "n_units": n_units,
        "event": draw(st.sampled_from([(), (2,)])),
        "n_obs": draw(st.integers(1, 3)),
        "dims": draw(st.booleans()),
        "data": draw(st.sampled_from(["array", "pm.Data"])),
        "units": draw(st.sampled_from(["row", "indexed"])),
        "centred": draw(st.booleans()),
        "positive": draw(st.booleans()),  # a log-transformed local latent
        "discrete": draw(st.sampled_from([False, False, True])),  # which VI cannot fit
        "batch_size": draw(st.one_of(st.none(), st.integers(1, n_units))),
    }


def _random_model(setup):
    """mu ~ N(0, 1), sigma ~ HalfNormal; z_n = mu + sigma·e_n (or ~ directly), exp'd when positive;
    y ~ N(z, 1), by rows of each unit (``z[..., None]``) or by an index (``z[idx]``)."""
    n, event, n_obs = setup["n_units"], setup["event"], setup["n_obs"]
    rng = np.random.default_rng(n * 10 + n_obs)
    event_dims = ("k",) if event else ()
    unit_dims = ("unit", *event_dims)
    if setup["units"] == "row":
        y = rng.normal(size=(n, *event, n_obs))
        index, y_dims = None, (*unit_dims, "obs")
    else:
        index = rng.permutation(np.repeat(np.arange(n), n_obs))
        y = rng.normal(size=(index.size, *event))
        y_dims = ("row", *event_dims)
    coords = {"unit": range(n), "obs": range(n_obs), "row": range(n * n_obs)}
    coords |= {"k": [0, 1]} if event else {}
    with pm.Model(coords=coords if setup["dims"] else None) as model:

        def shaped(dims, shape):
            return {"dims": dims} if setup["dims"] else {"shape": shape}

        if setup["data"] == "pm.Data":
            y = pm.Data("y_data", y, **shaped(y_dims, y.shape))
            if index is not None:
                index = pm.Data("idx", index, **shaped(("row",), index.shape))
        mu = pm.Normal("mu", 0, 1, **shaped(event_dims, event))
        sigma = pm.HalfNormal("sigma", 1)
        units = shaped(unit_dims, (n, *event))
        if setup["centred"]:
            dist = pm.LogNormal if setup["positive"] else pm.Normal
            z = dist("z", mu, sigma, **units)
        else:
            e = pm.Normal("e", 0, 1, **units)
            value = mu + sigma * e
            z = pm.Deterministic(
                "z", pt.exp(value) if setup["positive"] else value, dims=units.get("dims")
            )
        loc = z[..., None] if index is None else z[index]
        pm.Normal("y", loc, 1, observed=y, **shaped(y_dims, y.shape))
        if setup["discrete"]:
            pm.Bernoulli("coin", 0.5)
    return model


def _fit_or_error(method, model, **options):
    try:
        return pm.fit(
            3, method=method, model=model, random_seed=0, progressbar=False, **options
        ), None
    except Exception as error:  # the oracle compares the errors themselves
        return None, error


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    # No shrinking: each example fits twice, so shrinking a failure would take minutes; the
    # failing setup is printed as drawn.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(random_models())
def test_amortized_fits_every_random_model_advi_fits(setup):
    # The oracle is ADVI, not the analysis's own rules: whatever pm.fit(method="advi") fits,
    # method="amortized" fits (latents it cannot amortize are fitted mean-field, as ADVI's); what
    # ADVI refuses, it refuses with an AmortizationError or the same error.
    model = _random_model(setup)
    _, advi_error = _fit_or_error("advi", model)
    batch_size = setup["batch_size"]
    # The encoder family: the default conditional family compiles third derivatives of each
    # random model's log joint (20 s to minutes per model on 2 cores); its fallbacks (plates it
    # does not take, divergence) are tested in test_default_family.py.
    approx, error = _fit_or_error(
        "amortized", model, family="encoder", encoder_widths=(2,), batch_size=batch_size
    )
    if error is not None:
        event(f"amortized raised {type(error).__name__}")
        if advi_error is not None:
            assert isinstance(error, AmortizationError) or (
                type(error) is type(advi_error) and str(error) == str(advi_error)
            ), f"ADVI: {advi_error!r}; amortized: {error!r}"
        else:
            # ADVI fits, so only the amortized-only option may be refused, by name.
            assert isinstance(error, AmortizationError) and batch_size is not None, repr(error)
            assert "batch_size" in str(error), str(error)
        return
    assert advi_error is None, f"ADVI raised {advi_error!r}, amortized fitted"
    event(f"fitted, {len(approx.analysis.plates)} plate(s)")
    assert approx.hist.size == 3 and np.isfinite(approx.hist).all()
    posterior = approx.sample(5, random_seed=0).posterior
    assert {rv.name for rv in model.free_RVs + model.deterministics} <= set(posterior.data_vars)
    assert all(np.isfinite(posterior[v]).all() for v in posterior.data_vars)
    encoded = approx.encode()
    for latent in approx.analysis.latents:
        size = approx.analysis.plate_of(latent.name).size
        assert encoded[latent.name].mean.shape == (size, *latent.event_shape)
