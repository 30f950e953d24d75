"""All encoder weights live in one flat shared vector; the step's arguments do not grow with layers."""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from bad_input_cases import unit_model
from pytensor_ml.layers import Linear

from pymc_amortize import AmortizedVI
from pymc_amortize.errors import AmortizationError


def _step_arguments(inference):
    guard = inference.objective.step_function(
        obj_optimizer=pm.adam(learning_rate=1e-2), compile_kwargs={"mode": "FAST_COMPILE"}
    )
    return len(guard.fn.maker.inputs)


def test_step_arguments_do_not_grow_with_encoder_depth():
    model = unit_model()
    shallow = AmortizedVI(family="encoder", model=model, encoder_widths=(), random_seed=0)
    deep = AmortizedVI(family="encoder", model=model, encoder_widths=(8, 8, 8), random_seed=0)
    for inference in (shallow, deep):
        approx = inference.approx
        assert [p.name for p in approx.params] == ["mu", "rho", "encoder_weights"]
        assert approx.encoder_weights.get_value().size == sum(p.size for p in approx.encoder_params)
    # Per-layer weights: 4 (affine) vs 16 (three hidden layers per net), one flat vector each.
    assert len(shallow.approx.encoder_params) == 4 and len(deep.approx.encoder_params) == 16
    assert _step_arguments(shallow) == _step_arguments(deep)


def test_encoder_params_read_and_write_slices_of_the_flat_vector():
    inference = AmortizedVI(
        family="encoder", model=unit_model(), encoder_widths=(4,), random_seed=0
    )
    approx = inference.approx
    names = [p.name for p in approx.encoder_params]
    assert len(set(names)) == len(names) and "z_encoder_mean_out_b" in names
    bias = next(p for p in approx.encoder_params if p.name == "z_encoder_mean_out_b")
    before = approx.encode()["z"].mean
    value = bias.get_value()
    value += 1.0  # a copy: the stored weight is unchanged until set_value
    np.testing.assert_array_equal(approx.encode()["z"].mean, before)
    bias.set_value(value)
    np.testing.assert_allclose(approx.encode()["z"].mean, before + 1.0)
    flat = approx.encoder_weights.get_value()
    np.testing.assert_array_equal(flat[bias.offset : bias.offset + bias.size], value)
    with pytest.raises(AmortizationError, match="shape"):
        bias.set_value(np.zeros(3))


def test_user_encoder_keeps_its_weights_and_trains_its_slice():
    head = Linear("head", n_in=1, n_out=2)
    head.W.set_value(np.random.default_rng(0).normal(size=(1, 2)))

    def encoder(X):
        out = head(X)
        return out[:, :1], out[:, 1:] - 2.0

    model = unit_model()
    initial = [p.get_value().copy() for p in (head.W, head.b)]
    inference = AmortizedVI(
        {"z": "x"}, family="encoder", model=model, encoder=encoder, random_seed=0
    )
    approx = inference.approx
    # Before training, the flat vector holds the encoder's weights and encodes as the encoder does.
    x = approx.inputs["z"].units.get_value()
    mean, _ = encoder(pt.as_tensor(x))
    np.testing.assert_allclose(approx.encode()["z"].mean, mean.eval()[:, 0])
    inference.fit(100, obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
    for param, value in zip((head.W, head.b), initial, strict=True):
        np.testing.assert_array_equal(param.get_value(), value)
    trained = {p.name: p.get_value() for p in approx.encoder_params}
    assert trained.keys() == {"head_W", "head_b"}
    assert not np.array_equal(trained["head_W"], initial[0])
