"""The default local family: conditional where it applies, the encoder family elsewhere, said so.

``pm.fit(method="amortized")`` with no ``family=`` gives plates the analysis amortizes the
conditional family q(z_n | θ, x_n); a plate it cannot take, a streamed fit, and a model on which
its Newton steps diverge get the encoder family, with the reason in the summary or a warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytest
import xarray as xr
from gaussian_plate_models import crossed_gaussian

import pymc_amortize
from pymc_amortize import AmortizedVI, DivergenceWarning
from pymc_amortize.examples.paper import linear_data, linear_model, nonlinear_data, nonlinear_model

QUIET = {"progressbar": False, "gap_check": False, "convergence": False, "random_seed": 1}


def test_the_default_is_the_conditional_family_and_the_summary_says_so():
    with linear_model(linear_data(50, random_seed=0)):
        inference = AmortizedVI(random_seed=1)
    assert inference.approx.conditional_plates == {"unit"}
    analysis = inference.approx.settings["analysis"]
    assert "local family, plate 'unit': conditional q(z_n | θ, x_n)" in analysis
    with linear_model(linear_data(50, random_seed=0)):
        encoder = AmortizedVI(random_seed=1, family="encoder")
    assert not encoder.approx.conditional_plates and encoder.approx.local_family is None


def test_a_streamed_fit_gets_the_encoder_family_with_the_reason():
    x = linear_data(200, random_seed=0)
    units = xr.Dataset({"x": ("unit", x)}).chunk({"unit": 50})
    with linear_model(x[:20]):
        inference = AmortizedVI(batch_size=20, random_seed=1, unit_data=units)
    assert not inference.approx.conditional_plates and inference.approx.local_family is None
    assert "the units stream from unit_data" in inference.approx.settings["analysis"]


@pytest.mark.slow
def test_where_the_default_diverges_the_encoder_family_is_fitted_with_a_warning():
    """The paper's nonlinear model: a log density far from concave in z_n (its curvature is near
    zero or negative for some units), on which the Newton steps diverge at the first step."""
    x = nonlinear_data(300, random_seed=0)
    with nonlinear_model(x):
        with pytest.warns(DivergenceWarning, match="Fitted the encoder family") as caught:
            approx = pm.fit(300, method="amortized", **QUIET)
        assert not approx.conditional_plates and approx.divergence is None
        assert np.isfinite(approx.hist).all() and approx.hist.size == 300
        # Named, the conditional family is kept: its divergence is reported, not replaced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergenceWarning)
            kept = pm.fit(300, method="amortized", family="conditional", **QUIET)
    assert kept.conditional_plates == {"unit"} and kept.divergence is not None
    # One warning for the attempt (the fallback's), not the diverged fit's own as well.
    assert sum(issubclass(w.category, DivergenceWarning) for w in caught) == 1


def test_the_default_on_crossed_plates_warns_with_what_was_measured():
    # Crossed plates (actors x blocks: one observed variable reads both plates' latents) are each
    # conditioned on the other's draws, which was measured 3-4x further from NUTS than ADVI: the
    # analysis lines and a CouplingWarning say so under the default; a named family keeps quiet.
    model = crossed_gaussian()
    with pytest.warns(pymc_amortize.CouplingWarning, match="actor, block.*ADVI 0.08"):
        inference = AmortizedVI(model=model, random_seed=1)
    assert inference.approx.conditional_plates == {"actor", "block"}
    lines = inference.approx.settings["analysis"].splitlines()
    for plate, other in (("actor", "block"), ("block", "actor")):
        (line,) = [line for line in lines if f"local family, plate '{plate}'" in line]
        assert f"crossed plates '{plate}', '{other}', drawn given each other" in line, line
    with warnings.catch_warnings():
        warnings.simplefilter("error", pymc_amortize.CouplingWarning)
        named = AmortizedVI(model=model, random_seed=1, family="conditional")
        # One conditional plate: nothing crossed to say.
        with linear_model(linear_data(50, random_seed=0)):
            single = AmortizedVI(random_seed=1)
    assert named.approx.conditional_plates == {"actor", "block"}
    assert "drawn given each other" not in single.approx.settings["analysis"]
