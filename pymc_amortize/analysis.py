"""Find the unit structure of a PyMC model: which latents are local and what feeds their encoder.

Everything here is pure: it reads the model and the user's ``local=`` mapping and returns frozen
descriptions. Nothing is compiled and nothing in the model is changed.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pymc as pm
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable

from pymc_amortize.errors import AmortizationError

__all__ = ["LocalLatent", "UnitPlate", "find_local_latents"]

#: What ``local=`` accepts for one latent: the name of an observed variable or ``pm.Data``
#: container, several such names (an expanded domain), or an explicit (n_units, k) input matrix.
EncoderInputSpec = str | Sequence[str] | np.ndarray


@dataclass(frozen=True)
class LocalLatent:
    """One local latent z with a row per unit.

    Attributes
    ----------
    name : str
        Name of the free random variable.
    value_name : str
        Name of its value variable (the unconstrained one when the latent has a transform).
    event_shape : tuple of int
        Shape of one unit's z_n (``()`` for a scalar latent).
    input_names : tuple of str
        Data that feed its encoder, in order; empty when ``input_matrix`` is given.
    input_matrix : ndarray or None
        An explicit (n_units, k) encoder input given by the user.
    """

    name: str
    value_name: str
    event_shape: tuple[int, ...]
    input_names: tuple[str, ...]
    input_matrix: np.ndarray | None = None

    @property
    def event_size(self) -> int:
        return int(np.prod(self.event_shape, dtype=int))


@dataclass(frozen=True)
class UnitPlate:
    """The units n = 1..N shared by every local latent (NumPyro's "plate").

    Attributes
    ----------
    dim : str or None
        The model dim that indexes units, when the model names one.
    size : int
        Number of units N.
    latents : tuple of LocalLatent
        The local latents, in ``model.free_RVs`` order.
    unit_data : tuple of str
        Observed variables and ``pm.Data`` containers whose leading axis is the unit axis; these are
        the arrays a minibatch selects rows of.
    """

    dim: str | None
    size: int
    latents: tuple[LocalLatent, ...]
    unit_data: tuple[str, ...]

    @property
    def latent_names(self) -> tuple[str, ...]:
        return tuple(latent.name for latent in self.latents)


def data_value(model: pm.Model, name: str) -> np.ndarray:
    """The numeric array behind an observed variable or a ``pm.Data`` container."""
    var = model[name]
    if var in model.observed_RVs:
        var = model.rvs_to_values[var]
    if isinstance(var, SharedVariable):
        return np.asarray(var.get_value())
    if isinstance(var, Constant):
        return np.asarray(var.data)
    raise AmortizationError(
        f"'{name}' is neither an observed variable nor a pm.Data container, so it cannot feed an "
        "encoder. Name an observed variable, a pm.Data container, or pass an (n_units, k) array."
    )


def _leading_dim(model: pm.Model, name: str) -> str | None:
    dims = model.named_vars_to_dims.get(name)
    return dims[0] if dims else None


def _data_names(model: pm.Model) -> list[str]:
    observed = [rv.name for rv in model.observed_RVs]
    containers = [var.name for var in model.data_vars if var.name not in observed]
    return observed + containers


def _check_local_candidate(model: pm.Model, name: str) -> Variable:
    if name not in model.named_vars:
        free = ", ".join(rv.name for rv in model.free_RVs) or "none"
        raise AmortizationError(
            f"local={{'{name}': ...}} names no variable of the model. Its free variables: {free}."
        )
    rv = model[name]
    if rv in model.observed_RVs:
        raise AmortizationError(f"'{name}' is observed; only free latent variables can be local.")
    if rv in model.deterministics:
        raise AmortizationError(
            f"'{name}' is a Deterministic; name the free variable it is computed from instead."
        )
    if rv not in model.free_RVs:
        raise AmortizationError(f"'{name}' is not a free random variable of the model.")
    if rv.type.dtype.startswith(("int", "uint", "bool")):
        raise AmortizationError(
            f"'{name}' is discrete ({rv.type.dtype}); amortized VI needs continuous local latents."
        )
    if rv.type.ndim == 0:
        raise AmortizationError(
            f"'{name}' is a scalar; a local latent needs one row per unit (a leading unit axis)."
        )
    return rv


def _unit_count(model: pm.Model, rv: Variable, initial_point: dict) -> int:
    value = initial_point[model.rvs_to_values[rv].name]
    return int(value.shape[0])


def _auto_inputs(model: pm.Model, name: str) -> tuple[str, ...]:
    dim = _leading_dim(model, name)
    if dim is None:
        return ()
    return tuple(rv.name for rv in model.observed_RVs if _leading_dim(model, rv.name) == dim)


def _resolve_inputs(
    model: pm.Model, name: str, spec: EncoderInputSpec, n_units: int
) -> tuple[tuple[str, ...], np.ndarray | None]:
    if isinstance(spec, np.ndarray):
        matrix = spec
        if matrix.dtype.kind not in "biuf":
            raise AmortizationError(
                f"The encoder input given for '{name}' has dtype {matrix.dtype}; it must be numeric."
            )
        if matrix.ndim == 1:
            matrix = matrix[:, None]
        if matrix.shape[0] != n_units:
            raise AmortizationError(
                f"The encoder input given for '{name}' has {matrix.shape[0]} rows but '{name}' has "
                f"{n_units} units; row n must describe unit n."
            )
        # A private copy: the user's array is never written to, nor aliased by our graphs.
        return (), np.array(matrix.reshape(n_units, -1), dtype=float)
    names = (spec,) if isinstance(spec, str) else tuple(spec)
    if not names or not all(isinstance(n, str) for n in names):
        raise AmortizationError(
            f"local['{name}'] must be a data name, a list of data names or an (n_units, k) array; "
            f"got {reprlib.repr(spec)}."
        )
    known = _data_names(model)
    for data_name in names:
        if data_name not in known:
            raise AmortizationError(
                f"local['{name}'] names '{data_name}', which is not an observed variable or "
                f"pm.Data container of the model. Known data: {', '.join(known) or 'none'}."
            )
    return names, None


def _check_no_imputation(model: pm.Model) -> None:
    """Refuse observed data with missing values, which PyMC has rewritten into latents.

    PyMC imputes NaN entries of ``observed=``: the variable becomes a Deterministic stitched from
    ``<name>_observed`` (observed) and ``<name>_unobserved`` (a new free variable), so its units
    are no longer one observed row each.
    """
    observed = {rv.name for rv in model.observed_RVs}
    free = {rv.name for rv in model.free_RVs}
    for det in model.deterministics:
        name = det.name
        if f"{name}_observed" in observed and f"{name}_unobserved" in free:
            missing = model[f"{name}_unobserved"]
            n_missing = int(np.prod(model.initial_point()[model.rvs_to_values[missing].name].shape))
            raise AmortizationError(
                f"The observed data of '{name}' has {n_missing} missing (NaN) value(s), which "
                f"PyMC imputes as the free variable '{name}_unobserved'. Amortized VI needs "
                f"complete unit data: drop or fill the missing entries of '{name}' before "
                "building the model."
            )


def find_local_latents(
    model: pm.Model, local: Mapping[str, EncoderInputSpec] | None = None
) -> UnitPlate:
    """Describe the local latents of ``model`` and the data that feed their encoders.

    Parameters
    ----------
    model : pm.Model
        The model to read. It is not changed.
    local : mapping, optional
        ``{latent: inputs}``; ``inputs`` is the name of an observed variable or ``pm.Data``
        container, a list of such names, or an explicit (n_units, k) array, row n = unit n.
        When omitted, a free continuous variable is local when its leading model dim is also the
        leading dim of an observed variable; that observed variable feeds its encoder.

    Returns
    -------
    UnitPlate
        The units, their local latents and the data arrays a minibatch selects rows of.
    """
    _check_no_imputation(model)
    if local is None:
        local = {}
        for rv in model.free_RVs:
            if rv.type.dtype.startswith(("int", "uint", "bool")) or rv.type.ndim == 0:
                continue
            inputs = _auto_inputs(model, rv.name)
            if inputs:
                local[rv.name] = inputs
        if not local:
            raise AmortizationError(
                "Found no local latent: no free continuous variable shares its leading dim with an "
                "observed variable. Name them with local={'z': 'x'}, or use pm.fit(method='advi') "
                "for a model without per-unit latents."
            )
    elif not isinstance(local, Mapping) or not local:
        raise AmortizationError(
            f"local= must be a non-empty mapping {{latent name: encoder inputs}}; got {reprlib.repr(local)}."
        )

    rvs = {name: _check_local_candidate(model, name) for name in local}
    initial_point = model.initial_point()
    counts = {name: _unit_count(model, rv, initial_point) for name, rv in rvs.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{n}': {c}" for n, c in counts.items())
        raise AmortizationError(
            f"The local latents have different numbers of units ({listed}); all local latents "
            "must share one unit axis."
        )
    n_units = next(iter(counts.values()))
    dims = {_leading_dim(model, name) for name in rvs}
    unit_dim = dims.pop() if len(dims) == 1 else None

    latents = []
    for rv in model.free_RVs:  # model order, so that sampling matches values by position
        if rv.name not in local:
            continue
        names, matrix = _resolve_inputs(model, rv.name, local[rv.name], n_units)
        for data_name in names:
            rows = data_value(model, data_name).shape[:1]
            if rows != (n_units,):
                raise AmortizationError(
                    f"'{data_name}' feeds the encoder of '{rv.name}' but has leading length "
                    f"{rows[0] if rows else 'none (a scalar)'}, while '{rv.name}' has {n_units} "
                    "units; row n of the data must describe unit n."
                )
        value = initial_point[model.rvs_to_values[rv].name]
        latents.append(
            LocalLatent(
                name=rv.name,
                value_name=model.rvs_to_values[rv].name,
                event_shape=tuple(int(s) for s in value.shape[1:]),
                input_names=names,
                input_matrix=matrix,
            )
        )

    unit_data = tuple(
        name for name in _data_names(model) if _is_unit_data(model, name, unit_dim, n_units)
    )
    return UnitPlate(dim=unit_dim, size=n_units, latents=tuple(latents), unit_data=unit_data)


def _is_unit_data(model: pm.Model, name: str, unit_dim: str | None, n_units: int) -> bool:
    """Whether a data array's leading axis is the unit axis (by dims, else by its length)."""
    dim = _leading_dim(model, name)
    if unit_dim is not None and dim is not None:
        return dim == unit_dim
    value = data_value(model, name)
    return value.ndim > 0 and value.shape[0] == n_units
