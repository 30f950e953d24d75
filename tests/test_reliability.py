"""Bad input, divergence, determinism and isolation: a user's mistake gets a named error, a NaN
never loses a fit, a seed reproduces a fit, and a fit changes nothing the user owns."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor
import pytest
from bad_input_cases import CASES, unit_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pymc_amortize import (
    AmortizationError,
    AmortizedVI,
    DivergenceWarning,
    MLPEncoder,
    fit_amortized,
)

ROOT = Path(__file__).resolve().parent.parent


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_a_clear_error_naming_the_culprit(case):
    with pytest.raises(case.exception, match=case.match) as info:
        case.call()
    # Raised by our own checks, not from deep inside PyTensor or PyMC.
    assert Path(info.traceback[-1].path).parent.name == "pymc_amortize"


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
    inference = AmortizedVI(model=model, encoder_widths=(4,), random_seed=0)
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
    inference = AmortizedVI(model=model, encoder_widths=(4,), random_seed=0)
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
    inference = AmortizedVI(model=unit_model(), encoder_widths=(), random_seed=0)
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
    inference = AmortizedVI(model=unit_model(), encoder_widths=(), random_seed=0)
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
    from pymc_amortize.encoders import encoder_params

    return encoder_params(encoder(pytensor.tensor.matrix("probe", shape=(None, 2))), exclude=())


# -- property-based ---------------------------------------------------------------------------
@st.composite
def hierarchical_setups(draw):
    n_units = draw(st.integers(2, 12))
    return {
        "n_units": n_units,
        "event": draw(st.sampled_from([(), (2,)])),
        "n_obs": draw(st.integers(1, 3)),
        "dims": draw(st.booleans()),
        "name_local": draw(st.booleans()),
        "batch_size": draw(st.one_of(st.none(), st.integers(-1, n_units + 2))),
    }


def _hierarchical_model(n_units, event, n_obs, dims):
    """mu ~ N(0, 1); z_n ~ N(mu, 1) of shape event; y_nj ~ N(z_n, 1), j < n_obs."""
    y = np.random.default_rng(n_units).normal(size=(n_units, *event, n_obs))
    event_dims = ("k",) if event else ()
    coords = {"unit": range(n_units), "obs": range(n_obs)} | ({"k": [0, 1]} if event else {})
    with pm.Model(coords=coords if dims else None) as model:
        if dims:
            mu = pm.Normal("mu", 0, 1, dims=event_dims)
            z = pm.Normal("z", mu, 1, dims=("unit", *event_dims))
            pm.Normal("y", z[..., None], 1, observed=y, dims=("unit", *event_dims, "obs"))
        else:
            mu = pm.Normal("mu", 0, 1, shape=event)
            z = pm.Normal("z", mu, 1, shape=(n_units, *event))
            pm.Normal("y", z[..., None], 1, observed=y)
    return model


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(hierarchical_setups())
def test_random_shapes_fit_or_raise_a_documented_error(setup):
    model = _hierarchical_model(setup["n_units"], setup["event"], setup["n_obs"], setup["dims"])
    batch_size, n_units = setup["batch_size"], setup["n_units"]
    bad_batch = batch_size is not None and not 0 < batch_size <= n_units
    minibatched = batch_size is not None and 0 < batch_size < n_units
    expect_error = (
        bad_batch
        or (not setup["dims"] and not setup["name_local"])  # no local latent can be found
        or (not setup["dims"] and minibatched)  # literal shapes cannot be minibatched
    )
    try:
        approx = pm.fit(
            3,
            method="amortized",
            model=model,
            local={"z": "y"} if setup["name_local"] else None,
            encoder_widths=(2,),
            batch_size=batch_size,
            random_seed=0,
            progressbar=False,
        )
    except AmortizationError:
        event("raised AmortizationError")
        assert expect_error
        return
    event("fitted")
    assert not expect_error
    assert approx.hist.size == 3 and np.isfinite(approx.hist).all()
    q = approx.encode()["z"]
    assert q.mean.shape == (n_units, *setup["event"])
