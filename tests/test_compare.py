"""compare(): one call fits A-VI and ADVI on the linear model; its numbers against the closed form."""

import matplotlib.pyplot as plt
import numpy as np
import pymc as pm
import pytest
from gaussian_plate_models import crossed_gaussian, indexed_gaussian

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
            "amortized": {
                "family": "encoder",
                "encoder_widths": (),
                "obj_optimizer": pm.adam(learning_rate=1e-2),
            },
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


@pytest.mark.parametrize(
    "build, locals_",
    [(indexed_gaussian, {"a": 10}), (crossed_gaussian, {"z_actor": 12, "z_block": 5})],
    ids=["indexed", "crossed"],
)
def test_compare_on_indexed_and_crossed_models(build, locals_):
    from benchmarks.gaussian_models import ExactMeanField

    model = build()
    result = pymc_amortize.compare(
        model,
        n=400,
        options={
            "amortized": {
                "family": "encoder",
                "encoder_widths": (8,),
                "obj_optimizer": pm.adam(learning_rate=1e-2),
            },
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
