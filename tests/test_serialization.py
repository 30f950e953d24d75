"""Save a fitted amortized approximation, load it into a fresh model, encode new units.

Every plate kind round-trips: units with one row each (scalar, vector and transformed latents),
units tied to rows by an index (radon's ``a[county_idx]``, also non-centred through a
Deterministic) and two crossed groupings.
"""

import numpy as np
import pymc as pm
import pytest

from pymc_amortize import AmortizationError, load_approximation, save_approximation
from pymc_amortize.examples.paper import linear_data, linear_model
from pymc_amortize.examples.simulated_radon import radon_data, radon_model


def test_save_load_encodes_new_units_identically(tmp_path):
    x = linear_data(200, random_seed=5)
    model = linear_model(x)
    approx = pm.fit(
        300,
        family="encoder",
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
        loaded.globals.mean_and_scale()[0], approx.globals.mean_and_scale()[0]
    )
    np.testing.assert_array_equal(
        loaded.globals.mean_and_scale()[1], approx.globals.mean_and_scale()[1]
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
        50,
        family="encoder",
        method="amortized",
        model=linear_model(x),
        encoder_widths=(),
        progressbar=False,
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


# -- every plate kind ----------------------------------------------------------------------------
def _radon(n_counties=10, n_houses=90, seed=0):
    return radon_model(radon_data(n_counties, n_houses, random_seed=seed))


def _noncentred(seed=0):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([np.arange(8), rng.integers(0, 8, 52)])
    with pm.Model(coords={"group": range(8), "obs": range(60)}) as model:
        g = pm.Data("idx", idx, dims="obs")
        mu, s = pm.Normal("mu"), pm.HalfNormal("s")
        a_raw = pm.Normal("a_raw", 0, 1, dims="group")
        a = pm.Deterministic("a", mu + s * a_raw, dims="group")
        pm.Normal("y", a[g], 1, observed=rng.normal(size=60), dims="obs")
    return model


def _crossed(seed=0):
    rng = np.random.default_rng(seed)
    actor = np.concatenate([np.arange(12), rng.integers(0, 12, 108)])
    block = np.concatenate([np.arange(5), rng.integers(0, 5, 115)])
    y = rng.normal(0, 1, 12)[actor] + rng.normal(0, 0.5, 5)[block] + rng.normal(0, 0.5, 120)
    with pm.Model(coords={"actor": range(12), "block": range(5), "obs_id": range(120)}) as model:
        ai = pm.Data("actor_idx", actor, dims="obs_id")
        bi = pm.Data("block_idx", block, dims="obs_id")
        za = pm.Normal("z_actor", 0, 1, dims="actor")
        zb = pm.Normal("z_block", 0, 1, dims="block")
        pm.Normal("y", za[ai] + zb[bi], pm.HalfNormal("sigma", 1), observed=y, dims="obs_id")
    return model


def _vector(seed=0):
    x = np.random.default_rng(seed).normal(size=(40, 2))
    with pm.Model(coords={"unit": range(40), "k": range(2)}) as model:
        theta = pm.Normal("theta", 0, 1, dims="k")
        z = pm.Normal("z", 0, 1, dims=("unit", "k"))
        pm.Normal("x", theta + z, 1, observed=x, dims=("unit", "k"))
    return model


def _transformed(seed=0):
    x = np.random.default_rng(seed).normal(size=40) * 2
    with pm.Model(coords={"unit": range(40)}) as model:
        scale = pm.HalfNormal("scale", 1, dims="unit")
        pm.Normal("x", 0, scale, observed=x, dims="unit")
    return model


KINDS = {
    "indexed": (_radon, {"a": "county"}),
    "noncentred": (_noncentred, {"a_raw": "group"}),
    "crossed": (_crossed, {"z_actor": "actor", "z_block": "block"}),
    "vector": (_vector, {"z": "unit"}),
    "transformed": (_transformed, {"scale": "unit"}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_encodes_identically_on_every_plate_kind(kind, tmp_path):
    build, plates = KINDS[kind]
    model = build()
    approx = pm.fit(
        60,
        family="encoder",
        method="amortized",
        model=model,
        encoder_widths=(4,),
        random_seed=1,
        progressbar=False,
    )
    assert {p.latents[0].name: p.name for p in approx.analysis.plates} == plates
    save_approximation(approx, tmp_path / kind)
    loaded = load_approximation(tmp_path / kind, model=build())  # a new session's model
    before, after = approx.encode(), loaded.encode()
    assert set(after) == set(plates)
    for name, q in before.items():
        np.testing.assert_allclose(after[name].mean, q.mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(after[name].sd, q.sd, rtol=0, atol=1e-12)
        assert np.ptp(q.mean) > 0  # the encoder reads its units' data
    assert (loaded.globals is None) == (approx.globals is None)
    for key, param in approx.globals.named_params.items() if approx.globals is not None else ():
        np.testing.assert_array_equal(
            loaded.globals.named_params[key].get_value(), param.get_value()
        )
    idata = loaded.sample(5, random_seed=0)
    for name in plates:
        assert idata.posterior[name].shape == approx.sample(5).posterior[name].shape


def test_indexed_fit_loaded_on_new_counties_keeps_its_scalings(tmp_path):
    model = _radon()
    approx = pm.fit(
        80,
        family="encoder",
        method="amortized",
        model=model,
        encoder_widths=(4,),
        random_seed=0,
        progressbar=False,
    )
    assert type(approx.encoders["a"]).__name__ == "PooledEncoder"
    save_approximation(approx, tmp_path / "radon")
    # Other counties with other row counts: the row scaling and the pooled encoder's row-count
    # scaling must be the saved ones, not refitted on the new data.
    other = radon_data(4, 40, random_seed=9)
    loaded = load_approximation(tmp_path / "radon", model=radon_model(other))
    assert loaded.analysis.plates[0].size == 4
    new = {
        "log_radon": np.array([0.1, 2.0, 1.5, -0.3, 0.8]),
        "floor": np.array([0.0, 1.0, 0.0, 0.0, 1.0]),
        "county_idx": np.array([0, 0, 1, 2, 2]),
    }
    for q_after, q_before in zip(
        loaded.encode(new).values(), approx.encode(new).values(), strict=True
    ):
        np.testing.assert_allclose(q_after.mean, q_before.mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(q_after.sd, q_before.sd, rtol=0, atol=1e-12)
    own = {"log_radon": other.log_radon, "floor": other.floor, "county_idx": other.county_idx}
    np.testing.assert_allclose(
        loaded.encode()["a"].mean, approx.encode(own)["a"].mean, rtol=0, atol=1e-12
    )


def test_indexed_save_refuses_other_structures(tmp_path):
    approx = pm.fit(
        20,
        family="encoder",
        method="amortized",
        model=_radon(),
        encoder_widths=(),
        progressbar=False,
    )
    save_approximation(approx, tmp_path / "radon")
    with pytest.raises(AmortizationError, match=r"no variable\(s\) \['a'\]"):
        load_approximation(tmp_path / "radon", model=linear_model(linear_data(30, random_seed=0)))
    # The same names, but 'a' has one row per county (a row plate): refused, not misloaded.
    with pm.Model(coords={"county": range(10)}) as rows:
        mu_a, sigma_a = pm.Normal("mu_a", 0, 5), pm.HalfNormal("sigma_a", 1)
        a = pm.Normal("a", mu_a, sigma_a, dims="county")
        pm.Normal("b", 0, 1)
        pm.Normal("log_radon", a, pm.HalfNormal("sigma", 1), observed=np.zeros(10), dims="county")
    with pytest.raises(AmortizationError, match=r"a\[index\]|differ"):
        load_approximation(tmp_path / "radon", model=rows)
