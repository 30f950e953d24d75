"""Small Gaussian models with quadratic log joints on indexed and crossed plates, shared by the
tests of the diagnostics and of compare (their exact mean-field ELBO is known)."""

import numpy as np
import pymc as pm


def indexed_gaussian(seed=0):
    """Radon-style ``a[county_idx]`` with a known noise sd (county labels are strings)."""
    rng = np.random.default_rng(seed)
    county = np.concatenate([np.arange(10), rng.integers(0, 10, 70)])
    y = 1.0 + rng.normal(0, 1, 10)[county] + rng.normal(0, 0.7, 80)
    with pm.Model(coords={"county": [f"c{j}" for j in range(10)], "obs_id": range(80)}) as model:
        idx = pm.Data("county_idx", county, dims="obs_id")
        theta = pm.Normal("theta", 0, 3)
        a = pm.Normal("a", 0, 1, dims="county")
        pm.Normal("y", theta + a[idx], 0.7, observed=y, dims="obs_id")
    return model


def crossed_gaussian(seed=0):
    """Two crossed groupings, ``za[actor_idx] + zb[block_idx]``, known noise sd."""
    rng = np.random.default_rng(seed)
    actor = np.concatenate([np.arange(12), rng.integers(0, 12, 108)])
    block = np.concatenate([np.arange(5), rng.integers(0, 5, 115)])
    y = rng.normal(0, 1, 12)[actor] + rng.normal(0, 0.5, 5)[block] + rng.normal(0, 0.5, 120)
    with pm.Model(coords={"actor": range(12), "block": range(5), "obs_id": range(120)}) as model:
        ai = pm.Data("actor_idx", actor, dims="obs_id")
        bi = pm.Data("block_idx", block, dims="obs_id")
        za = pm.Normal("z_actor", 0, 1, dims="actor")
        zb = pm.Normal("z_block", 0, 0.5, dims="block")
        pm.Normal("y", za[ai] + zb[bi], 0.5, observed=y, dims="obs_id")
    return model
