"""compare(): one call fits A-VI and ADVI on the linear model; its numbers against the closed form."""

import matplotlib.pyplot as plt
import numpy as np
import pymc as pm
import pytest

import pymc_amortize
from pymc_amortize import AmortizationError
from pymc_amortize.examples.paper import linear_data, linear_elbo, linear_model, linear_optimum


def test_compare_table_idata_and_plot():
    x = linear_data(300, random_seed=7)
    model = linear_model(x)
    result = pymc_amortize.compare(
        model,
        n={"amortized": 1500, "advi": 3000},
        options={
            "amortized": {"encoder_widths": (), "obj_optimizer": pm.adam(learning_rate=1e-2)},
            "advi": {"obj_optimizer": pm.adam(learning_rate=1e-2)},
        },
        n_draws=300,
        draws=50,
        random_seed=0,
    )
    rows = {row["method"]: row for row in result.rows}
    opt = linear_optimum(x)
    best = linear_elbo(x, opt.theta_mean, opt.theta_sd, opt.z_mean(x), opt.z_sd)
    for method, row in rows.items():
        # Each reported ELBO is a real estimate at that method's solution: below the optimum and
        # close to the exact ELBO of the fitted q.
        q = pymc_amortize.diagnostics.meanfield_of(result.approximations[method])
        exact = linear_elbo(x, q["theta"].mean, q["theta"].sd, q["z"].mean, q["z"].sd)
        assert abs(row["elbo"] - exact) < 4 * row["elbo_se"], method
        assert exact <= best + 1e-9
        assert row["steps_to_1pct"] is not None and row["steps_to_1pct"] <= row["steps"]
        assert row["wall_s"] > 0
        assert result.traces[method]["elbo"].size == row["steps"]
        assert np.all(np.diff(result.traces[method]["wall_s"].values) >= 0)
        assert result.idata[method].posterior["z"].shape == (1, 50, 300)
    assert rows["amortized"]["n_params"] == 2 + 4  # q(θ) mean, rho; affine mean and log-sd heads
    assert rows["advi"]["n_params"] == 2 * 301
    assert rows["amortized"]["steps"] == 1500 and rows["advi"]["steps"] == 3000
    table = repr(result)
    assert "amortized" in table and "advi" in table and "to 1%" in table
    ds = result.to_dataset()
    assert list(ds["method"].values) == ["amortized", "advi"]
    ax = result.plot()
    assert len(ax.get_lines()) == 3
    plt.close(ax.figure)


def test_compare_rejects_unknown_methods(linear):
    with pytest.raises(AmortizationError, match="distinct methods"):
        pymc_amortize.compare(linear, methods=("amortized", "svgd"))
    with pytest.raises(AmortizationError, match="not compared"):
        pymc_amortize.compare(linear, methods=("advi",), options={"amortized": {}})


def _indexed_gaussian(seed=0):
    rng = np.random.default_rng(seed)
    county = np.concatenate([np.arange(10), rng.integers(0, 10, 70)])
    y = 1.0 + rng.normal(0, 1, 10)[county] + rng.normal(0, 0.7, 80)
    with pm.Model(coords={"county": range(10), "obs_id": range(80)}) as model:
        idx = pm.Data("county_idx", county, dims="obs_id")
        theta = pm.Normal("theta", 0, 3)
        a = pm.Normal("a", 0, 1, dims="county")
        pm.Normal("y", theta + a[idx], 0.7, observed=y, dims="obs_id")
    return model


def _crossed_gaussian(seed=0):
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


@pytest.mark.parametrize(
    "build, locals_",
    [(_indexed_gaussian, {"a": 10}), (_crossed_gaussian, {"z_actor": 12, "z_block": 5})],
    ids=["indexed", "crossed"],
)
def test_compare_on_indexed_and_crossed_models(build, locals_):
    from benchmarks.gaussian_models import ExactMeanField

    model = build()
    result = pymc_amortize.compare(
        model,
        n=400,
        options={
            "amortized": {"encoder_widths": (8,), "obj_optimizer": pm.adam(learning_rate=1e-2)},
            "advi": {"obj_optimizer": pm.adam(learning_rate=5e-2)},
        },
        n_draws=200,
        draws=20,
        random_seed=0,
    )
    exact = ExactMeanField(model)
    rows = {row["method"]: row for row in result.rows}
    for method, row in rows.items():
        q = pymc_amortize.diagnostics.meanfield_of(result.approximations[method])
        assert abs(row["elbo"] - exact.elbo(q)) < 4 * row["elbo_se"] + 1e-6, method
        assert exact.elbo(q) <= exact.optimum_elbo + 1e-9
        for name, size in locals_.items():
            assert result.idata[method].posterior[name].shape == (1, 20, size)
    n_global = 1 if "theta" in model.named_vars else 0
    assert rows["advi"]["n_params"] == 2 * (n_global + sum(locals_.values()))
    approx = result.approximations["amortized"]
    assert rows["amortized"]["n_params"] == 2 * n_global + sum(
        p.get_value().size for p in approx.encoder_params
    )
