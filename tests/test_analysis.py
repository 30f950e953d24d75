"""The model analysis on the idioms PyMC users write: plates, local latents, encoder inputs.

Pure: no fit. Each model is small; what is checked is the structure the analysis reads from the
graph (the plate kind, its size and dim, which data feed which encoder, what stays mean-field).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pymc as pm
import pytest

import pymc_amortize as pa
from pymc_amortize import AmortizationError, analyze_model

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(0)
J, R = 12, 60
IDX = np.repeat(np.arange(J), R // J)
X = rng.normal(size=R)
Y = rng.normal(size=R)


def inputs(analysis, name):
    latent = next(lat for lat in analysis.latents if lat.name == name)
    return {d.key for d in latent.unit_inputs}, {d.key for d in latent.row_inputs}


def radon_like(expression: str, *, dims: bool = True, data: bool = True):
    """``y ~ N(<expression>, 1)`` over rows, with a group index ``idx`` and a row covariate ``x``."""
    coords = {"group": range(J), "obs": range(R)} if dims else {}
    with pm.Model(coords=coords) as model:
        row = {"dims": "obs"} if dims else {}
        group = {"dims": "group"} if dims else {"shape": J}
        idx = pm.Data("idx", IDX, **row) if data else IDX
        x = pm.Data("x", X, **row) if data else X
        mu = pm.Normal("mu")
        s = pm.HalfNormal("s")
        a_raw = pm.Normal("a_raw", 0, 1, **group)
        b = pm.Normal("b", 0, 1, **group)
        a = pm.Deterministic("a", mu + s * a_raw, **({"dims": "group"} if dims else {}))
        mean = eval(expression, {"a": a, "a_raw": a_raw, "b": b, "idx": idx, "x": x, "s": s})
        pm.Normal("y", mean, 1, observed=Y, **row)
    return model


@pytest.mark.parametrize(
    "expression, local",
    [
        ("a[idx]", {"a_raw"}),  # non-centred through a Deterministic
        ("(mu + s * a_raw)[idx]", {"a_raw"}),  # inline arithmetic
        ("a_raw[idx] * s", {"a_raw"}),  # indexed, then scaled
        ("a[idx] + b[idx] * x", {"a_raw", "b"}),  # varying slopes on a row covariate
    ],
)
@pytest.mark.parametrize("dims", [True, False], ids=["dims", "no-dims"])
@pytest.mark.parametrize("data", [True, False], ids=["pm.Data", "arrays"])
def test_indexed_idioms_give_one_indexed_plate(expression, local, dims, data):
    analysis = analyze_model(radon_like(expression.replace("mu + ", ""), dims=dims, data=data))
    (plate,) = analysis.plates
    assert set(plate.latent_names) == local
    assert plate.size == J and plate.n_rows == R and plate.index is not None
    np.testing.assert_array_equal(plate.unit_of_row, IDX)
    assert plate.dim == ("group" if dims else None)
    # y always feeds the encoders as pooled rows; x only where it meets the latent.
    for name in local:
        unit_inputs, row_inputs = inputs(analysis, name)
        assert unit_inputs == set()
        assert "y" in row_inputs
        assert ("x" in row_inputs) == ("* x" in expression and data)
    mean_field = {mf.name for mf in analysis.mean_field}
    assert mean_field == {"s", "mu", "a_raw", "b"} - local


def test_vector_latent_indexed_then_sliced_by_column():
    """``ab[idx, 0] + ab[idx, 1] * x``: intercept and slope in one (group, 2) latent."""
    with pm.Model(coords={"group": range(J), "obs": range(R), "coef": range(2)}) as model:
        idx = pm.Data("idx", IDX, dims="obs")
        x = pm.Data("x", X, dims="obs")
        ab = pm.Normal("ab", 0, 1, dims=("group", "coef"))
        pm.Normal("y", ab[idx, 0] + ab[idx, 1] * x, 1, observed=Y, dims="obs")
    (plate,) = analyze_model(model).plates
    assert plate.latent_names == ("ab",) and plate.latents[0].event_shape == (2,)
    assert {d.key for d in plate.latents[0].row_inputs} == {"x", "y"}


def test_index_arrays_are_not_numeric_encoder_features():
    """Nested: a class-level index into schools is a label, not an encoder input of the classes."""
    C, S = 10, 3
    school_of_class = np.arange(C) % S
    class_idx = np.repeat(np.arange(C), R // C)
    with pm.Model(coords={"school": range(S), "class": range(C), "obs": range(R)}) as model:
        soc = pm.Data("school_of_class", school_of_class, dims="class")
        ci = pm.Data("class_idx", class_idx, dims="obs")
        b = pm.Normal("b", 0, 1, dims="school")
        a = pm.Normal("a", b[soc], 1, dims="class")
        pm.Normal("y", a[ci], 1, observed=Y, dims="obs")
    analysis = analyze_model(model)
    (plate,) = analysis.plates
    assert plate.latent_names == ("a",)
    assert "school_of_class" not in analysis.latents[0].input_names
    # ... but it is sliced with a minibatch of classes, as the prior of a needs it.
    assert "school_of_class" in {d.key for d in plate.batched_units}


def test_unit_covariate_and_known_sd_feed_the_encoder():
    """Eight schools: a known per-unit sd (a constant array) and a pm.Data covariate."""
    sd = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
    with pm.Model(coords={"school": range(8)}) as model:
        c = pm.Data("c", rng.normal(size=8), dims="school")
        mu, tau = pm.Normal("mu", 0, 5), pm.HalfNormal("tau", 5)
        beta = pm.Normal("beta")
        z = pm.Normal("z", 0, 1, dims="school")
        pm.Normal("y", mu + beta * c + tau * z, sd, observed=rng.normal(size=8), dims="school")
    analysis = analyze_model(model)
    (plate,) = analysis.plates
    assert plate.index is None and plate.size == 8
    unit_inputs, row_inputs = inputs(analysis, "z")
    assert unit_inputs == {"c", "y", "y_input0"} and row_inputs == set()
    assert (
        "y_input0 [an unnamed array: the 'sigma' array of pm.Normal 'y'; pm.Data would name it]"
        in analysis.summary()
    )
    known_sd = next(d for d in plate.latents[0].unit_inputs if d.key == "y_input0")
    np.testing.assert_array_equal(known_sd.value, sd)


def test_crossed_groupings_give_two_plates():
    A, B = 7, 4
    actor, block = rng.integers(0, A, R), rng.integers(0, B, R)
    with pm.Model(coords={"actor": range(A), "block": range(B), "obs": range(R)}) as model:
        ai = pm.Data("actor_idx", actor, dims="obs")
        bi = pm.Data("block_idx", block, dims="obs")
        z_actor = pm.Normal("z_actor", 0, 1, dims="actor")
        z_block = pm.Normal("z_block", 0, 1, dims="block")
        pm.Normal("y", z_actor[ai] + z_block[bi], pm.HalfNormal("sigma"), observed=Y, dims="obs")
    analysis = analyze_model(model)
    plates = {p.name: p for p in analysis.plates}
    assert set(plates) == {"actor", "block"}
    assert plates["actor"].latent_names == ("z_actor",)
    assert plates["block"].size == B
    # The other grouping's index is sliced with a minibatch but never fed to an encoder.
    assert "block_idx" in {d.key for d in plates["actor"].batched_rows}
    assert inputs(analysis, "z_actor") == (set(), {"y"})


def test_unit_level_observation_beside_indexed_rows_joins_the_plate():
    """A measurement per group besides the rows: per-unit data of the same indexed plate."""
    with pm.Model(coords={"group": range(J), "obs": range(R)}) as model:
        idx = pm.Data("idx", IDX, dims="obs")
        a = pm.Normal("a", 0, 1, dims="group")
        pm.Normal("y", a[idx], 1, observed=Y, dims="obs")
        pm.Normal("u", a, 0.5, observed=rng.normal(size=J), dims="group")
    analysis = analyze_model(model)
    (plate,) = analysis.plates
    assert plate.index is not None and plate.latent_names == ("a",)
    assert inputs(analysis, "a") == ({"u"}, {"y"})
    assert {d.key for d in plate.batched_units} == {"u"}


def test_array_prior_parameter_is_sliced_with_the_units():
    D, K, V = 10, 3, 6
    with pm.Model(coords={"doc": range(D), "topic": range(K), "word": range(V)}) as model:
        phi = pm.Dirichlet("phi", a=np.ones(V), dims=("topic", "word"))
        theta = pm.Dirichlet("theta", a=0.5 * np.ones((D, K)), dims=("doc", "topic"))
        W = rng.multinomial(20, np.ones(V) / V, size=D)
        pm.Multinomial("W", n=20, p=theta @ phi, observed=W, dims=("doc", "word"))
    analysis = analyze_model(model)
    (plate,) = analysis.plates
    assert plate.latent_names == ("theta",)
    # The (docs, topics) concentration is aligned with the docs (batched) but constant, so it
    # tells the encoder nothing and is not one of its inputs.
    batched = {d.key for d in plate.batched_units}
    assert "W" in batched and len(batched) == 2
    assert inputs(analysis, "theta") == ({"W"}, set())
    assert [mf.name for mf in analysis.mean_field] == ["phi"]


def test_latent_without_unit_data_stays_mean_field_with_a_reason():
    """A random walk prior couples the states (cannot close); a latent no likelihood meets is a
    global. Both stay mean-field, with the reason."""
    with pm.Model(coords={"t": range(20)}) as model:
        z = pm.GaussianRandomWalk("z", sigma=1, init_dist=pm.Normal.dist(), dims="t")
        pm.Normal("w", 0, 1, shape=3)
        pm.Normal("x", z, 1, observed=rng.normal(size=20), dims="t")
    analysis = analyze_model(model)
    assert analysis.latent_names == ()
    found = {mf.name: (mf.verdict, mf.reason) for mf in analysis.mean_field}
    assert found["z"][0] == "cannot close" and "RandomWalk" in found["z"][1]
    assert found["w"][0] == "global"
    assert "no observed variable has its leading axis" in found["w"][1]


def test_no_local_latent_is_all_mean_field_not_an_error():
    with pm.Model() as model:
        mu = pm.Normal("mu")
        pm.Normal("y", mu, 1, observed=rng.normal(size=5))
    analysis = analyze_model(model)
    assert analysis.plates == ()
    assert "no plate" in analysis.summary()


def test_local_names_the_amortized_latents_the_rest_stay_mean_field():
    model = radon_like("a[idx] + b[idx] * x")
    analysis = analyze_model(model, local={"a_raw": pa.IndexedLocal("idx", inputs=["y"])})
    assert analysis.latent_names == ("a_raw",)
    assert inputs(analysis, "a_raw") == (set(), {"y"})
    assert {mf.name: mf.reason for mf in analysis.mean_field}["b"] == "not named in local="


def test_pm_minibatch_model_gets_the_batch_size_rewrite():
    with pm.Model():
        y = pm.Minibatch(Y, batch_size=10)
        pm.Normal("y", pm.Normal("mu"), 1, observed=y, total_size=R)
        with pytest.raises(AmortizationError, match=r"pm\.Minibatch.*batch_size="):
            analyze_model()


def _text_blocks(page: Path) -> tuple[list[str], list[str]]:
    text = page.read_text()
    python = re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    plain = re.findall(r"^```text\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return python, plain


@pytest.mark.parametrize("page", ["README.md", "docs/getting_started.md"])
def test_documented_radon_summary_is_what_analyze_model_prints(page):
    python, plain = _text_blocks(ROOT / page)
    block = next(b for b in python if "load_radon" in b)
    namespace: dict = {"pm": pm}
    exec(compile(block.replace("print(", "str("), page, "exec"), namespace)
    assert str(analyze_model(namespace["radon"])) == plain[0].strip()
