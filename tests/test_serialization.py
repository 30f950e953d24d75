"""Save a fitted amortized approximation, load it into a fresh model, encode new units."""

import numpy as np
import pymc as pm
import pytest

from pymc_amortize import AmortizationError, load_approximation, save_approximation
from pymc_amortize.paper import linear_data, linear_model


def test_save_load_encodes_new_units_identically(tmp_path):
    x = linear_data(200, random_seed=5)
    model = linear_model(x)
    approx = pm.fit(
        300,
        method="amortized",
        model=model,
        encoder_widths=(6,),
        activation="tanh",
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=0,
        progressbar=False,
    )
    json_path, weights_path = save_approximation(approx, tmp_path / "linear")
    assert json_path.exists() and weights_path.exists()

    # A fresh model of the same structure on other data, e.g. in a new session.
    fresh = linear_model(linear_data(50, random_seed=6))
    loaded = load_approximation(tmp_path / "linear", model=fresh)
    new_x = np.array([-3.0, 0.0, 0.5, 7.0])
    before, after = approx.encode({"x": new_x})["z"], loaded.encode({"x": new_x})["z"]
    np.testing.assert_array_equal(after.mean, before.mean)
    np.testing.assert_array_equal(after.sd, before.sd)
    assert np.ptp(before.mean) > 0.5  # a trained, input-dependent encoder, not the initial one
    np.testing.assert_array_equal(
        loaded.global_group.mean.get_value(), approx.global_group.mean.get_value()
    )
    np.testing.assert_array_equal(
        loaded.global_group.rho.get_value(), approx.global_group.rho.get_value()
    )
    # The fresh model's own units are encoded with the saved weights and input scaling.
    q_fresh = loaded.encode()["z"]
    fresh_x = fresh.rvs_to_values[fresh["x"]].data
    np.testing.assert_allclose(q_fresh.mean, approx.encode({"x": fresh_x})["z"].mean, atol=1e-12)
    idata = loaded.sample(20, random_seed=0)
    assert idata.posterior["z"].shape == (1, 20, 50)


def test_load_refuses_a_different_model(tmp_path):
    x = linear_data(100, random_seed=5)
    approx = pm.fit(
        50, method="amortized", model=linear_model(x), encoder_widths=(), progressbar=False
    )
    save_approximation(approx, tmp_path / "fit")
    with pm.Model(coords={"unit": range(100)}) as other:
        theta = pm.Flat("theta", shape=2)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("x", theta[0] + z, 1, observed=x, dims="unit")
    with pytest.raises(AmortizationError, match="globals"):
        load_approximation(tmp_path / "fit", model=other)
    with pytest.raises(AmortizationError, match="No saved approximation"):
        load_approximation(tmp_path / "missing", model=other)
