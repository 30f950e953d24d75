"""Small models of every plate kind, for ``tests/test_plate_matrix.py``.

Each builder returns a :class:`Kind`: the model, the plates the analysis must find (plate name ->
local latents), and, per plate, the data of its first ``k`` units as ``encode`` takes them. Tens of
units, a few hundred rows at most, fixed seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pymc as pm


@dataclass
class Kind:
    """One model kind of the matrix.

    Attributes
    ----------
    model : pm.Model
    plates : dict of str to list of str
        Plate name (the units' dim) -> its local latents, as ``analyze_model`` must find them.
    new_units : callable
        ``new_units(k)`` -> ``{plate name: new_data}``: for each plate, the data of its first
        ``k`` fitted units written as a user would pass new units to ``encode`` (for an indexed
        plate, their rows and each row's unit 0..k-1 under the index's name).
    fit_options : dict
        Extra ``pm.fit`` options (e.g. ``local=``).
    data : dict
        The raw arrays, for the correctness anchors.
    """

    model: pm.Model
    plates: dict[str, list[str]]
    new_units: Callable[[int], dict[str, dict[str, np.ndarray]]]
    fit_options: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def _rows_of_first_units(unit_of_row: np.ndarray, k: int, **rows: np.ndarray) -> dict:
    """Rows of units 0..k-1, in their original order, with the unit of each row."""
    keep = unit_of_row < k
    return {name: np.asarray(v)[keep] for name, v in rows.items()}, unit_of_row[keep].astype(
        np.int64
    )


# -- row units: one row per unit -----------------------------------------------------------------
ROW_N, ROW_SIGMA = 40, 1.0


def row_units() -> Kind:
    """x_n ~ N(theta + z_n, 1), z_n ~ N(0, 1): conjugate given theta."""
    rng = np.random.default_rng(11)
    x = 1.5 + rng.normal(size=ROW_N) + ROW_SIGMA * rng.normal(size=ROW_N)
    with pm.Model(coords={"unit": [f"u{i}" for i in range(ROW_N)]}) as model:
        theta = pm.Normal("theta", 0, 10)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("x", theta + z, ROW_SIGMA, observed=x, dims="unit")
    return Kind(model, {"unit": ["z"]}, lambda k: {"unit": {"x": x[:k]}}, data={"x": x})


# -- vector latent: z_n in R^2 -------------------------------------------------------------------
VEC_N, VEC_K = 30, 2


def vector_latent() -> Kind:
    """y[n, j] ~ N(mu_j + z[n, j], 0.7), z[n, j] ~ N(0, 1): an event shape (2,) per unit."""
    rng = np.random.default_rng(12)
    y = (
        np.array([0.5, -1.0])
        + rng.normal(size=(VEC_N, VEC_K))
        + 0.7 * rng.normal(size=(VEC_N, VEC_K))
    )
    with pm.Model(coords={"unit": range(VEC_N), "coord": ["a", "b"]}) as model:
        mu = pm.Normal("mu", 0, 5, dims="coord")
        z = pm.Normal("z", 0, 1, dims=("unit", "coord"))
        pm.Normal("y", mu + z, 0.7, observed=y, dims=("unit", "coord"))
    return Kind(model, {"unit": ["z"]}, lambda k: {"unit": {"y": y[:k]}}, data={"y": y})


# -- transformed latent: a positive rate per unit (log transform) --------------------------------
TR_N, TR_REPS = 30, 4


def transformed_latent() -> Kind:
    """counts[n, r] ~ Poisson(lam_n), lam_n ~ Gamma(alpha, alpha / m): lam lives on log space."""
    rng = np.random.default_rng(13)
    lam = rng.gamma(4.0, 1.0, TR_N)
    counts = rng.poisson(lam[:, None], size=(TR_N, TR_REPS))
    with pm.Model(coords={"unit": range(TR_N), "rep": range(TR_REPS)}) as model:
        m = pm.LogNormal("m", 1.0, 1.0)
        lam_rv = pm.Gamma("lam", alpha=2.0, beta=2.0 / m, dims="unit")
        pm.Poisson("counts", lam_rv[:, None], observed=counts, dims=("unit", "rep"))
    return Kind(
        model,
        {"unit": ["lam"]},
        lambda k: {"unit": {"counts": counts[:k]}},
        data={"counts": counts},
    )


# -- indexed: a[group_idx] with known sigma ------------------------------------------------------
IDX_J, IDX_N, IDX_SIGMA = 25, 200, 0.8


def _index(rng, n_units: int, n_rows: int) -> np.ndarray:
    """Every unit at least once, the rest at random (so no unit is empty)."""
    return np.concatenate([np.arange(n_units), rng.integers(0, n_units, n_rows - n_units)])


def indexed() -> Kind:
    """y_i ~ N(a[g_i], 0.8), a_j ~ N(mu, 1): conjugate given mu."""
    rng = np.random.default_rng(14)
    g = _index(rng, IDX_J, IDX_N)
    y = (0.7 + rng.normal(size=IDX_J))[g] + IDX_SIGMA * rng.normal(size=IDX_N)
    with pm.Model(coords={"group": range(IDX_J), "obs": range(IDX_N)}) as model:
        gi = pm.Data("group_idx", g, dims="obs")
        mu = pm.Normal("mu", 0, 5)
        a = pm.Normal("a", mu, 1.0, dims="group")
        pm.Normal("y", a[gi], IDX_SIGMA, observed=y, dims="obs")

    def new_units(k):
        rows, unit = _rows_of_first_units(g, k, y=y)
        return {"group": rows | {"group_idx": unit}}

    return Kind(model, {"group": ["a"]}, new_units, data={"g": g, "y": y})


# -- non-centred indexed: a = mu + s * a_raw -----------------------------------------------------
NC_J, NC_N = 25, 200


def noncentred_indexed() -> Kind:
    rng = np.random.default_rng(15)
    g = _index(rng, NC_J, NC_N)
    y = (0.3 + 0.8 * rng.normal(size=NC_J))[g] + 0.6 * rng.normal(size=NC_N)
    with pm.Model(coords={"group": range(NC_J), "obs": range(NC_N)}) as model:
        gi = pm.Data("group_idx", g, dims="obs")
        mu = pm.Normal("mu", 0, 2)
        s = pm.HalfNormal("s", 1)
        a_raw = pm.Normal("a_raw", 0, 1, dims="group")
        a = pm.Deterministic("a", mu + s * a_raw, dims="group")
        pm.Normal("y", a[gi], pm.HalfNormal("sigma", 1), observed=y, dims="obs")

    def new_units(k):
        rows, unit = _rows_of_first_units(g, k, y=y)
        return {"group": rows | {"group_idx": unit}}

    return Kind(model, {"group": ["a_raw"]}, new_units, data={"g": g, "y": y})


# -- crossed: actor x block ----------------------------------------------------------------------
CR_A, CR_B, CR_N = 20, 6, 240


def crossed() -> Kind:
    rng = np.random.default_rng(16)
    actor = _index(rng, CR_A, CR_N)
    block = rng.permutation(_index(rng, CR_B, CR_N))
    y = (
        rng.normal(0, 1, CR_A)[actor]
        + rng.normal(0, 0.5, CR_B)[block]
        + 0.5 * rng.normal(size=CR_N)
    )
    coords = {"actor": [f"a{i}" for i in range(CR_A)], "block": range(CR_B), "obs": range(CR_N)}
    with pm.Model(coords=coords) as model:
        ai = pm.Data("actor_idx", actor, dims="obs")
        bi = pm.Data("block_idx", block, dims="obs")
        z_actor = pm.Normal("z_actor", 0, 1, dims="actor")
        z_block = pm.Normal("z_block", 0, 1, dims="block")
        pm.Normal("y", z_actor[ai] + z_block[bi], pm.HalfNormal("sigma", 1), observed=y, dims="obs")

    def new_units(k):
        rows_a, unit_a = _rows_of_first_units(actor, k, y=y)
        rows_b, unit_b = _rows_of_first_units(block, k, y=y)
        return {
            "actor": rows_a | {"actor_idx": unit_a},
            "block": rows_b | {"block_idx": unit_b},
        }

    return Kind(model, {"actor": ["z_actor"], "block": ["z_block"]}, new_units, data={"y": y})


# -- nested: houses in counties in states --------------------------------------------------------
NE_S, NE_C, NE_N = 5, 20, 240


def nested() -> Kind:
    """y_i ~ N(a_county[county_i] + b_state[state_i], sigma); each county lies in one state."""
    rng = np.random.default_rng(17)
    state_of_county = np.arange(NE_C) % NE_S
    county = _index(rng, NE_C, NE_N)
    state = state_of_county[county]
    y = (
        rng.normal(0, 0.7, NE_C)[county]
        + rng.normal(0, 1.0, NE_S)[state]
        + 0.5 * rng.normal(size=NE_N)
    )
    coords = {
        "county": range(NE_C),
        "state": ["s" + str(i) for i in range(NE_S)],
        "house": range(NE_N),
    }
    with pm.Model(coords=coords) as model:
        ci = pm.Data("county_idx", county, dims="house")
        si = pm.Data("state_idx", state, dims="house")
        a_county = pm.Normal("a_county", 0, pm.HalfNormal("sd_county", 1), dims="county")
        b_state = pm.Normal("b_state", 0, 1, dims="state")
        pm.Normal(
            "y", a_county[ci] + b_state[si], pm.HalfNormal("sigma", 1), observed=y, dims="house"
        )

    def new_units(k):
        rows_c, unit_c = _rows_of_first_units(county, k, y=y)
        rows_s, unit_s = _rows_of_first_units(state, k, y=y)
        return {
            "county": rows_c | {"county_idx": unit_c},
            "state": rows_s | {"state_idx": unit_s},
        }

    return Kind(model, {"county": ["a_county"], "state": ["b_state"]}, new_units, data={"y": y})


# -- covariates: a unit-level pm.Data covariate in the mean --------------------------------------
CO_N, CO_REPS = 40, 4


def covariates() -> Kind:
    """y[n, r] ~ N(mu + beta c_n + tau z_n, sigma), c a pm.Data under the unit dim."""
    rng = np.random.default_rng(18)
    c_values = rng.normal(size=CO_N)
    y = (1.0 + 0.8 * c_values + 0.7 * rng.normal(size=CO_N))[:, None] + 0.5 * rng.normal(
        size=(CO_N, CO_REPS)
    )
    with pm.Model(coords={"unit": range(CO_N), "rep": range(CO_REPS)}) as model:
        c = pm.Data("c", c_values, dims="unit")
        mu = pm.Normal("mu", 0, 5)
        beta = pm.Normal("beta", 0, 1)
        tau = pm.HalfNormal("tau", 1)
        sigma = pm.HalfNormal("sigma", 1)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("y", (mu + beta * c + tau * z)[:, None], sigma, observed=y, dims=("unit", "rep"))
    return Kind(
        model,
        {"unit": ["z"]},
        lambda k: {"unit": {"y": y[:k], "c": c_values[:k]}},
        data={"y": y, "c": c_values},
    )


# -- Dirichlet local: per-document topic proportions ---------------------------------------------
DI_D, DI_K, DI_V, DI_LEN = 30, 3, 8, 25


def dirichlet_local() -> Kind:
    rng = np.random.default_rng(19)
    phi_true = rng.dirichlet(np.full(DI_V, 0.5), size=DI_K)
    theta_true = rng.dirichlet(np.full(DI_K, 0.5), size=DI_D)
    W = np.stack([rng.multinomial(DI_LEN, p) for p in theta_true @ phi_true])
    coords = {"doc": range(DI_D), "topic": range(DI_K), "word": range(DI_V)}
    with pm.Model(coords=coords) as model:
        phi = pm.Dirichlet("phi", a=np.ones(DI_V), dims=("topic", "word"))
        theta = pm.Dirichlet("theta", a=0.5 * np.ones((DI_D, DI_K)), dims=("doc", "topic"))
        pm.Multinomial("W", n=DI_LEN, p=theta @ phi, observed=W, dims=("doc", "word"))
    return Kind(model, {"doc": ["theta"]}, lambda k: {"doc": {"W": W[:k]}}, data={"W": W})


KINDS: dict[str, Callable[[], Kind]] = {
    "row": row_units,
    "vector": vector_latent,
    "transformed": transformed_latent,
    "indexed": indexed,
    "noncentred": noncentred_indexed,
    "crossed": crossed,
    "nested": nested,
    "covariates": covariates,
    "dirichlet": dirichlet_local,
}
