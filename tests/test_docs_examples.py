"""The code on the documentation's pages runs, and gives the closed-form answer it promises."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pymc_amortize.examples.paper import linear_optimum

DOCS = Path(__file__).resolve().parents[1] / "docs"


def run_python_blocks(page: str) -> dict:
    """Execute a page's ```python blocks in order, in one namespace, and return it."""
    text = (DOCS / page).read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    assert blocks, f"{page} has no python code blocks"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"{page}:python-block", "exec"), namespace)
    return namespace


def _theta_mc(opt) -> float:
    """4.5 Monte Carlo SEs of encode()'s moments of the linear model's q(z_n) over its 4,000 draws
    of q(θ): the conditional mean is z_slope · (x_n − θ), so its average over θ's draws errs by
    z_slope · sd(θ) / √4000 (the sd of q(θ) taken as twice F-VI's, for the conditional family's
    wider q(θ)); the variance's is smaller still (Var(z_n | θ) does not depend on θ)."""
    return 4.5 * opt.z_slope * 2 * opt.theta_sd / np.sqrt(4_000)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_getting_started_page_runs_and_matches_closed_form():
    ns = run_python_blocks("getting_started.md")
    x, opt = ns["x"], linear_optimum(ns["x"])
    assert ns["idata"].posterior["z"].sizes["unit"] == x.size
    # q(z_n) for fitted and for new units is the closed-form optimum (the default conditional
    # family's marginal over q(θ) has the same mean; encode() averages the exact conditional
    # moments over 4,000 draws of q(θ), hence the Monte Carlo term of θ's draws).
    mc = _theta_mc(opt)
    np.testing.assert_allclose(ns["q"].mean, opt.z_mean(x), atol=0.03 + mc)
    np.testing.assert_allclose(ns["q"].sd, opt.z_sd, atol=0.03 + mc)
    np.testing.assert_allclose(ns["q_new"].mean, opt.z_mean(np.array([0.3, 4.0])), atol=0.03)
    assert ns["new"].posterior["z"].shape == (1, 500, 2)
    # Predictions for new units: mean and sd of the replicated x against the closed form under q.
    x_rep = ns["x_rep"]
    assert x_rep.shape == (4_000, 3)
    se = ns["closed_sd"] / np.sqrt(4_000)
    assert np.all(np.abs(x_rep.mean(0) - ns["closed_mean"]) < 4 * se)
    np.testing.assert_allclose(x_rep.std(0), ns["closed_sd"], rtol=4 / np.sqrt(2 * 4_000))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_index_page_example_runs_and_matches_closed_form():
    ns = run_python_blocks("index.md")
    x, opt = ns["x"], linear_optimum(ns["x"])
    q = ns["approx"].encode()["z"]
    mc = _theta_mc(opt)  # encode()'s draws of q(θ), as above
    np.testing.assert_allclose(q.mean, opt.z_mean(x), atol=0.03 + mc)
    np.testing.assert_allclose(q.sd, opt.z_sd, atol=0.03 + mc)
    theta = ns["idata"].posterior["theta"]
    assert abs(float(theta.mean()) - opt.theta_mean) < 4 * opt.theta_sd
