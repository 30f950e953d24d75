"""Which verdicts take the conditional family: the saw's *expand* does, chains do not.

The saw's units read their neighbours' data, not their latents, so given θ they are independent
and the Newton step's Hessian is block diagonal: the fit is checked against the saw's exact
Gaussian posterior (``saw_logjoint``). A latent read by another unit's term (an HMM, a
neighbour's row) keeps the encoder family.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

import pymc_amortize
from pymc_amortize.examples.paper import hmm_data, hmm_model, saw_data, saw_logjoint, saw_model


def _fit(model, n, family="conditional", **options):
    from pytensor_ml.optim import adam, cosine_schedule

    with model:
        return pm.fit(
            n,
            method="amortized",
            family=family,
            obj_optimizer=adam(learning_rate=cosine_schedule(2e-2, total_steps=n)),
            convergence=False,
            gap_check=False,
            random_seed=1,
            progressbar=False,
            **options,
        )


def _draws(approx, names):
    post = approx.sample(4000, random_seed=2)["posterior"].to_dataset()
    post = post.stack(sample=("chain", "draw"))
    return {name: post[name].values for name in names}


def test_saw_units_get_the_conditional_family_and_its_exact_posterior():
    # The saw's verdict is expand (z_n's prior reads x_{n−1}), yet given θ no term reads two
    # units' z: its Newton step is block diagonal, and the family holds the exact posterior.
    x = saw_data(60, random_seed=3)
    approx = _fit(saw_model(x), 2000)
    assert approx.conditional_plates == {"unit"}
    assert "verdict expand on z" in approx.settings["analysis"]
    mean, _ = saw_logjoint(x).optimum()
    cov = np.linalg.inv(saw_logjoint(x).precision)
    sd = np.sqrt(np.diag(cov))
    draws = _draws(approx, ["theta", "z"])
    assert abs(draws["theta"].mean() - mean[0]) / sd[0] < 0.1
    # θ's marginal sd: a family mean-field between θ and z gets 1/√Λ_θθ, 0.7 of it here.
    assert abs(draws["theta"].std() / sd[0] - 1) < 0.08
    z_err = (draws["z"].mean(axis=1) - mean[1:]) / sd[1:]
    assert np.abs(z_err).max() < 0.12, z_err
    np.testing.assert_allclose(draws["z"].std(axis=1) / sd[1:], 1, atol=0.08)


def _neighbour_model(n=30):
    # z_n iid, but x_n reads z_n and z_{n−1}: a unit's terms read a neighbour's latent.
    x = np.random.default_rng(0).normal(size=n)
    with pm.Model(coords={"unit": np.arange(n)}) as model:
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("x", z + 0.5 * pm.math.concatenate([[0.0], z[:-1]]), 1, observed=x, dims="unit")
    return model


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda: hmm_model(hmm_data(100, random_seed=0)), "is not amortize"),
        (_neighbour_model, "reads other units' values of z"),
    ],
    ids=["hmm", "neighbour"],
)
def test_chains_keep_the_encoder(build, why):
    # local= amortizes the chain's latent against the verdict; the conditional family's Newton
    # step would need a block-diagonal Hessian, so the plate keeps the encoder, and says why.
    with pytest.warns(pymc_amortize.CouplingWarning):
        approx = _fit(build(), 2, local={"z": "x"})
    assert approx.conditional_plates == frozenset()
    lines = approx.settings["analysis"]
    assert "encoder q(z_n; f(x_n))" in lines and why in lines, lines
