"""PyMC's forward machinery on models resized to new units.

The forward draws for new units go through PyMC, never through likelihoods written here: a clone
of the model (``pymc.model.fgraph.clone_model``) whose unit dim (and row dim) are resized with
``Model.set_dim`` and whose data are set with ``pm.set_data``; draws given the globals (a zero-row
unit's prior, the observed variables of new rows) come from ``pm.sample_posterior_predictive``,
and Deterministics from PyMC's own trace. Every use of PyMC internals for new units is here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr
from pymc.backends.arviz import coords_and_dims_for_inferencedata
from pymc.backends.base import MultiTrace
from pymc.backends.ndarray import NDArray
from pymc.model.fgraph import clone_model
from pytensor.compile.sharedvalue import SharedVariable

from pymc_amortize.errors import AmortizationError

__all__ = [
    "forward_draws",
    "posterior_dataset",
    "resized_model",
    "trace_from_values",
]


# -- PyMC's forward machinery on a model resized to the new units --------------------------------
def _check_mutable(model: pm.Model, dim: str | None, what: str) -> None:
    if dim is None or dim not in model.dim_lengths:
        raise AmortizationError(
            f"{what} has no model dim, so the model cannot be resized to new units; give the "
            "variable dims=... with coords in pm.Model(coords=...)."
        )
    if not isinstance(model.dim_lengths[dim], SharedVariable):
        raise AmortizationError(
            f"The dim '{dim}' of {what} has a fixed length, so the model cannot be resized to new "
            "units; declare it through pm.Model(coords=...)."
        )


def resized_model(
    model: pm.Model,
    *,
    dim: str,
    coords: Sequence,
    data: Mapping[str, np.ndarray],
    row_dim: str | None = None,
    n_rows: int | None = None,
    what: str = "the plate",
) -> pm.Model:
    """A clone of ``model`` with ``dim`` holding the new units (``coords``), ``row_dim`` holding
    ``n_rows`` rows, and ``data`` set with ``pm.set_data``; ``model`` itself is not changed."""
    _check_mutable(model, dim, what)
    clone = clone_model(model)
    clone.set_dim(dim, len(coords), coord_values=list(coords))
    if row_dim is not None and row_dim != dim:
        _check_mutable(clone, row_dim, f"the rows of {what}")
        clone.set_dim(row_dim, int(n_rows), coord_values=list(range(int(n_rows))))
    if data:
        try:
            pm.set_data(dict(data), model=clone)
        except Exception as error:  # PyMC's shape and dtype checks, reported with the names
            raise AmortizationError(
                f"Setting the new units' data {sorted(data)} on a copy of the model failed: "
                f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
            ) from error
    return clone


def trace_from_values(model: pm.Model, values: Mapping[str, np.ndarray]) -> MultiTrace:
    """A one-chain trace of value-space draws ``{value name: (draws, *shape)}``.

    PyMC's own trace turns value-space points into constrained values and Deterministics.
    """
    draws = len(next(iter(values.values())))
    # PyMC's trace passes a point's values to its function by position: model order.
    values = {var.name: values[var.name] for var in model.value_vars}
    trace = NDArray(model=model, test_point={k: np.asarray(v[0]) for k, v in values.items()})
    trace.setup(draws=draws, chain=0)
    try:
        for i in range(draws):
            trace.record({k: np.asarray(v[i]) for k, v in values.items()}, in_warmup=False)
    finally:
        trace.close()
    return MultiTrace([trace])


def posterior_dataset(
    model: pm.Model, values: Mapping[str, np.ndarray], var_names: Sequence[str] | None = None
) -> xr.DataTree:
    """``posterior`` (free variables on their constrained scale and Deterministics, or only
    ``var_names``) and ``constant_data`` of ``model`` under its dims and coords, from value-space
    draws. The constant data let ``pm.sample_posterior_predictive`` see that nothing changed."""
    trace = trace_from_values(model, values)
    names = var_names or [rv.name for rv in model.free_RVs] + [d.name for d in model.deterministics]
    coords, dims = coords_and_dims_for_inferencedata(model)
    posterior = {name: trace.get_values(name)[None] for name in names}
    constant = {var.name: np.asarray(var.get_value()) for var in model.data_vars}
    return az.from_dict(
        {"posterior": posterior, "constant_data": constant},
        coords=coords,
        dims={k: v for k, v in dims.items() if k in posterior or k in constant},
    )


def forward_draws(
    model: pm.Model,
    idata: xr.DataTree,
    var_names: Sequence[str],
    *,
    random_seed: int | np.random.Generator | None,
    predictions: bool,
) -> xr.DataTree:
    """Draws of ``var_names`` given the posterior draws of ``idata``, by PyMC's
    ``sample_posterior_predictive`` (``predictions=True``: the ``predictions`` group, with the
    new coords)."""
    return pm.sample_posterior_predictive(
        idata,
        model=model,
        var_names=list(var_names),
        predictions=predictions,
        random_seed=random_seed,
        progressbar=False,
    )
