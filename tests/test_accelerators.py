"""The step on PyTensor's JAX backend against NUMBA, and split across two forced host devices."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

pytest.importorskip("jax")  # in the `test` extra, so CI runs these tests

from pymc_amortize import AmortizedVI
from pymc_amortize.errors import AmortizationError
from pymc_amortize.examples.paper import linear_data, linear_elbo, linear_model, linear_optimum
from pymc_amortize.examples.simulated_radon import radon_data, radon_model
from pymc_amortize.fitting.host_noise import HostNoiseStep, compile_noise_loss


def linear_inference(*, batch_size=100, **options):
    options.setdefault("family", "encoder")
    with linear_model(linear_data(1_000, random_seed=0)):
        return AmortizedVI(batch_size=batch_size, random_seed=1, **options)


def radon_inference():
    """Indexed plate, pooled (DeepSets) encoder over each county's houses, full batch."""
    with radon_model(radon_data(random_seed=0)):
        return AmortizedVI(family="encoder", random_seed=1)


def streamed_inference():
    """Units read from an xarray Dataset (unit_data=): the step reads fixed-size host buffers."""
    import xarray as xr

    x = linear_data(1_000, random_seed=0)
    unit_data = xr.Dataset({"x": ("unit", x)}).chunk({"unit": 300})
    with linear_model(x[:50]):
        inference = AmortizedVI(
            family="encoder", batch_size=100, random_seed=1, unit_data=unit_data
        )
    inference.objective.step_function()  # its sampler fills the buffers
    inference.objective.guard.feed()
    return inference


def radon_minibatch_inference():
    """Indexed plate minibatched: B = 5 counties with all their houses (padded under JAX)."""
    with radon_model(radon_data(random_seed=0)):
        return AmortizedVI(family="encoder", batch_size=5, random_seed=1)


def conditional_minibatch_inference():
    """The conditional family q(z_n | θ, x_n): its Newton and quadrature steps (batched Cholesky
    factors and triangular solves) under JAX, on a padded minibatch of counties."""
    with radon_model(radon_data(random_seed=0)):
        return AmortizedVI(batch_size=5, random_seed=1, family="conditional")


def unit_observation_inference():
    """Indexed plate minibatched, its encoder also reading a county-level observation: JAX once
    failed on the split of the encoder's concatenated inputs (their width was not static)."""
    data = radon_data(30, 300, random_seed=0)
    w = np.random.default_rng(1).normal(size=30)
    with radon_model(data):
        pm.Normal("w", pm.modelcontext(None)["a"], 0.5, observed=w, dims="county")
        return AmortizedVI(family="encoder", batch_size=5, random_seed=1)


@pytest.mark.parametrize(
    "build",
    [
        linear_inference,
        radon_inference,
        radon_minibatch_inference,
        unit_observation_inference,
        streamed_inference,
        pytest.param(conditional_minibatch_inference, marks=pytest.mark.slow),
    ],
    ids=["rows", "indexed", "indexed-minibatch", "unit-observation", "unit_data", "conditional"],
)
def test_loss_and_gradient_match_numba_for_the_same_draws(build):
    inference = build()
    numba_fn, noise = compile_noise_loss(inference, mode="NUMBA")
    jax_fn, _ = compile_noise_loss(inference, mode="JAX")
    rng = np.random.default_rng(0)
    for _ in range(3):
        draws = noise.draw(rng)
        numba_out, jax_out = numba_fn(*draws), jax_fn(*draws)
        for expected, got in zip(numba_out, jax_out, strict=True):
            got = np.asarray(got)
            assert np.all(np.isfinite(got))
            # float64: measured max relative difference ~1e-15 (rows) and ~1e-15 (indexed)
            np.testing.assert_allclose(
                got, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max()
            )


def test_host_noise_trajectory_is_the_same_under_numba_and_jax():
    """With host-drawn noise from the same seed, 200 Adam steps give the same losses."""
    losses = {}
    for mode in ["NUMBA", "JAX"]:
        step = HostNoiseStep(
            linear_inference(),
            mode=mode,
            obj_optimizer=pm.adam(learning_rate=1e-2),
            noise_seed=3,
        )
        losses[mode] = np.array([step() for _ in range(200)])
        step.to_host()
    np.testing.assert_allclose(losses["JAX"], losses["NUMBA"], rtol=1e-9)
    assert losses["NUMBA"][-20:].mean() < losses["NUMBA"][:20].mean()  # it trained


def test_host_noise_step_updates_the_approximation_used_by_sample():
    inference = linear_inference()
    step = HostNoiseStep(inference, mode="JAX", obj_optimizer=pm.adam(learning_rate=1e-2))
    before = inference.approx.params[0].get_value().copy()
    step()
    step.to_host()
    after = inference.approx.params[0].get_value()
    assert isinstance(after, np.ndarray) and not np.array_equal(before, after)
    assert inference.approx.sample(10, random_seed=0).posterior["theta"].shape == (1, 10)


def fit_linear_optimum(mode):
    """pm.fit under ``mode``, B = 100 of 1,000, Adam at 1e-2, 1e-3 then 2e-4: the last phase damps
    Adam's last-iterate jitter (at 1e-3 the encoder's slope still wanders by about 3%)."""
    x = linear_data(1_000, random_seed=0)
    with linear_model(x):
        inference = AmortizedVI(family="encoder", encoder_widths=(), batch_size=100, random_seed=1)
    options = {"progressbar": False, "compile_kwargs": {"mode": mode}}
    inference.fit(3000, obj_optimizer=pm.adam(learning_rate=1e-2), **options)
    inference.fit(3000, obj_optimizer=pm.adam(learning_rate=1e-3), **options)
    approx = inference.fit(2000, obj_optimizer=pm.adam(learning_rate=2e-4), **options)
    q = approx.encode()["z"]
    theta = float(approx.globals.mean_and_scale()[0][0])
    theta_sd = float(approx.globals.mean_and_scale()[1][0])
    slope = np.polyfit(x, q.mean, 1)[0]
    return x, theta, theta_sd, slope, q


@pytest.mark.slow
def test_pm_fit_under_jax_reaches_the_linear_optimum_as_numba_does():
    """JAX draws its own noise (other draws than NUMBA for the same seed): both fits must land
    on the closed-form optimum within Monte Carlo error."""
    results = {mode: fit_linear_optimum(mode) for mode in ["NUMBA", "JAX"]}
    for x, theta, theta_sd, slope, q in results.values():
        opt = linear_optimum(x)
        assert abs(theta - opt.theta_mean) < 0.3 * opt.theta_sd
        assert slope == pytest.approx(opt.z_slope, rel=0.03)
        np.testing.assert_allclose(q.sd, opt.z_sd, rtol=0.04)
        best = linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)
        assert 0 <= best - linear_elbo(x, theta, theta_sd, q.mean, q.sd) < 2.0  # nats
    assert results["JAX"][1] != results["NUMBA"][1]  # different draws, as documented


def test_padded_rows_give_the_unpadded_loss_and_gradient_for_the_same_draws():
    """An indexed plate's batch padded to a fixed row count (what JAX needs) is the same batch:
    same units, same noise, same loss and gradient under NUMBA; the padding is weighted out."""
    inference = radon_minibatch_inference()
    ragged, noise = compile_noise_loss(inference, mode="NUMBA", static_shapes=False)
    padded, _ = compile_noise_loss(inference, mode="NUMBA", static_shapes=True)
    rng = np.random.default_rng(0)
    for _ in range(5):
        draws = noise.draw(rng)
        for expected, got in zip(ragged(*draws), padded(*draws), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_pm_fit_minibatches_an_indexed_plate_under_jax():
    with radon_model(radon_data(random_seed=0)):
        approx = pm.fit(
            300,
            family="encoder",
            method="amortized",
            batch_size=5,
            progressbar=False,
            random_seed=0,
            compile_kwargs={"mode": "JAX"},
        )
    assert np.isfinite(approx.hist).all() and approx.hist[-50:].mean() < approx.hist[:50].mean()


def test_mesh_needs_jax_mode():
    from jax.sharding import Mesh

    mesh = Mesh(np.array(__import__("jax").devices()[:1]), ("batch",))
    with pytest.raises(AmortizationError, match="needs mode='JAX'"):
        HostNoiseStep(linear_inference(), mode="NUMBA", mesh=mesh)


@pytest.mark.slow
def test_two_host_devices_give_the_one_device_trajectory():
    """benchmarks/jax_two_devices.py in a subprocess (XLA_FLAGS must precede importing JAX)."""
    from benchmarks.jax_agreement import two_devices_output

    out = two_devices_output()
    assert out["devices"] == 2
    # The unit ids and the local noise are split over both devices; the parameters (outputs of
    # the step) live replicated on both.
    assert sum("batch" in spec for spec in out["noise_specs_two"]) == 2  # unit ids, local noise
    assert out["param_devices_two"] == 2
    assert out["all_reduces_one"] == 0 < out["all_reduces_two"]
    one, two = np.array(out["one"]), np.array(out["two"])
    np.testing.assert_allclose(two, one, rtol=1e-9)
    assert out["param_diff"] < 1e-8
