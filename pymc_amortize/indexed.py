"""Units with many observations each: a local latent indexed by an integer array into the rows.

The radon model is the common case: houses i (rows) in counties j (units), a local intercept
``a[j]`` and ``y[i] ~ N(a[county_idx[i]] + b * floor[i], sigma)``. Units have any number of rows
(none included), and the index array, not row position, ties rows to units.

This module reads that structure from the model (an :class:`IndexedPlate`) and builds the model's
log joint on a batch of units and all their rows. Like :mod:`pymc_amortize.analysis` it is pure:
nothing is compiled and the model is not changed.

Minibatching over units, and why a CSR layout
---------------------------------------------
A step draws B unit ids with replacement and takes **all** rows of those units. Rows are sorted by
unit once (a CSR layout: ``row_order`` and ``offsets``), so a drawn unit's rows are one slice
``row_order[offsets[j]:offsets[j + 1]]``; the step gathers them with a ``repeat``/``arange``
expression, so its cost is O(B + rows of the drawn units), whatever the number of units. PyTensor
compiles graphs with dynamic shapes, so a batch's row count may vary from step to step: no padded
(N_units, max_rows) table (which at 10⁵ units with a few very large units would dwarf the data)
and no cap on rows with its bias. Every unit term (the local prior of the B drawn units and the
log-likelihood of their rows) is scaled by N_units / B, which is unbiased because each row belongs
to exactly one unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import ancestors
from pytensor.tensor.subtensor import AdvancedSubtensor
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.analysis import LocalLatent, data_value, find_local_latents
from pymc_amortize.errors import AmortizationError
from pymc_amortize.logjoint import BatchLogJoint, global_value_vars, split_terms

__all__ = [
    "IndexedLocal",
    "IndexedLogJoint",
    "IndexedPlate",
    "find_indexed_plate",
    "gather_unit_rows",
]

#: The key of the index array in new data when the model's index is a plain array (no name).
INDEX_KEY = "index"
#: The key of user-given unit covariates (an array, not model data) in new data.
UNIT_COVARIATES_KEY = "unit_covariates"


@dataclass(frozen=True)
class IndexedLocal:
    """Marks a local latent whose units own many rows through an index array.

    Use it as a value of ``local=``: ``local={"a": IndexedLocal("county_idx")}``.

    Parameters
    ----------
    index : str, optional
        Name of the ``pm.Data`` container holding the unit of each row. When omitted, the index
        is read from the model (the integer array in ``a[index]``), which also finds a plain
        NumPy index.
    inputs : sequence of str, optional
        Row data fed to the encoder's per-row feature map, each with one row per observation.
        Defaults to the observed variables that use the index plus the model's float ``pm.Data``
        containers along the rows.
    unit_covariates : sequence of str or ndarray, optional
        Per-unit encoder inputs: names of ``pm.Data`` containers with one row per unit, or an
        (n_units, c) array. Defaults to the model's float ``pm.Data`` containers along the units;
        ``()`` for none.

    Examples
    --------
    .. code-block:: python

        approx = pm.fit(
            5_000,
            method="amortized",
            model=radon,
            local={"a": IndexedLocal("county_idx", inputs=["log_radon", "floor"])},
        )
    """

    index: str | None = None
    inputs: Sequence[str] | None = None
    unit_covariates: Sequence[str] | np.ndarray | None = None


@dataclass(frozen=True)
class IndexedPlate:
    """Units j = 1..N that own the observed rows i through ``index[i] = j``.

    Has the fields of :class:`~pymc_amortize.UnitPlate` that the approximation reads (``dim``,
    ``size``, ``latents``), plus the rows and their layout.

    Attributes
    ----------
    dim, row_dim : str or None
        Model dims of the units and of the rows, when the model names them.
    size : int
        Number of units N.
    latents : tuple of LocalLatent
        The indexed local latents (``input_names`` are the row inputs of their encoders).
    index_name : str or None
        Name of the index's ``pm.Data`` container; None for a plain array in the graph.
    index : ndarray
        Unit of each row, int64, shape (n_rows,).
    observed : tuple of str
        Observed variables whose rows the index ties to units.
    row_inputs : tuple of str
        Row data feeding the encoders' per-row feature map.
    unit_covariate_names : tuple of str
        ``pm.Data`` containers giving per-unit encoder inputs.
    unit_covariates : ndarray or None
        User-given per-unit encoder inputs (n_units, c).
    """

    dim: str | None
    row_dim: str | None
    size: int
    latents: tuple[LocalLatent, ...]
    index_name: str | None
    index: np.ndarray = field(repr=False)
    observed: tuple[str, ...]
    row_inputs: tuple[str, ...]
    unit_covariate_names: tuple[str, ...] = ()
    unit_covariates: np.ndarray | None = field(default=None, repr=False)

    @property
    def latent_names(self) -> tuple[str, ...]:
        return tuple(latent.name for latent in self.latents)

    @property
    def n_rows(self) -> int:
        return int(self.index.size)

    @property
    def index_key(self) -> str:
        """The name under which new data carry the index."""
        return self.index_name or INDEX_KEY

    @property
    def row_counts(self) -> np.ndarray:
        """Rows per unit, int64 (n_units,)."""
        return np.bincount(self.index, minlength=self.size).astype(np.int64)

    @property
    def offsets(self) -> np.ndarray:
        """CSR offsets (n_units + 1,): unit j's rows are ``row_order[offsets[j]:offsets[j+1]]``."""
        return np.concatenate([[0], np.cumsum(self.row_counts)]).astype(np.int64)

    @property
    def row_order(self) -> np.ndarray:
        """Row numbers sorted by unit (stable), int64 (n_rows,)."""
        return np.argsort(self.index, kind="stable").astype(np.int64)


def gather_unit_rows(
    units: TensorVariable,
    counts: TensorVariable,
    offsets: TensorVariable,
    row_order: TensorVariable,
) -> tuple[TensorVariable, TensorVariable]:
    """All rows of the drawn ``units`` (B,) from a CSR layout, as (batch slot, row number) pairs.

    Unit u's rows are ``row_order[offsets[u] : offsets[u] + counts[u]]``; they are laid end to end
    in the order of ``units``. Returns the batch slot (0..B-1) of each gathered row, i.e. the
    index remapped to the batch, and the row numbers into the full data. O(B + rows gathered).
    """
    n_rows = counts[units]
    slot = pt.repeat(pt.arange(units.shape[0], dtype="int64"), n_rows)
    start_minus_position = offsets[units] - (pt.cumsum(n_rows) - n_rows)
    position = pt.arange(slot.shape[0], dtype="int64")
    return slot, row_order[pt.repeat(start_minus_position, n_rows) + position]


def _index_uses(model: pm.Model) -> list[tuple[str, Variable, str]]:
    """(latent name, index node, observed name) for each ``latent[index]`` behind an observation.

    An index counts when it is a leaf (a ``pm.Data`` container or a constant) integer vector
    selecting along the latent's leading axis.
    """
    free = {rv: rv.name for rv in model.free_RVs}
    uses = []
    for obs in model.observed_RVs:
        for var in ancestors([obs]):
            node = var.owner
            if node is None or not isinstance(node.op, AdvancedSubtensor):
                continue
            source, index, *rest = node.inputs
            if source not in free or not isinstance(index, SharedVariable | Constant):
                continue
            if index.type.ndim != 1 or not index.type.dtype.startswith(("int", "uint")):
                continue
            if any(getattr(r.type, "ndim", None) is not None for r in rest):
                continue  # indices on later axes too: not a unit lookup
            use = (free[source], index, obs.name)
            if use not in uses:
                uses.append(use)
    return uses


def _dims(model: pm.Model, name: str) -> tuple[str, ...]:
    return tuple(model.named_vars_to_dims.get(name) or ())


def _float_containers_along(
    model: pm.Model, dim: str | None, length: int, exclude: set[str]
) -> tuple[str, ...]:
    """Float ``pm.Data`` containers whose leading axis is ``dim`` (or, without dims, ``length``)."""
    observed = {rv.name for rv in model.observed_RVs}
    names = []
    for var in model.data_vars:
        if var.name in observed or var.name in exclude or not var.type.dtype.startswith("float"):
            continue
        dims = _dims(model, var.name)
        value = data_value(model, var.name)
        if value.ndim == 0:
            continue
        if (dims and dim is not None and dims[0] == dim) or (
            not (dims and dim is not None) and value.shape[0] == length
        ):
            names.append(var.name)
    return tuple(names)


def _check_rows(model: pm.Model, names: Sequence[str], n_rows: int, what: str) -> tuple[str, ...]:
    known = {rv.name for rv in model.observed_RVs} | {v.name for v in model.data_vars}
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if name not in known:
            raise AmortizationError(
                f"{what} names '{name}', which is not an observed variable or pm.Data container "
                f"of the model. Known data: {', '.join(sorted(known)) or 'none'}."
            )
        value = data_value(model, name)
        if value.ndim == 0 or value.shape[0] != n_rows:
            raise AmortizationError(
                f"{what} names '{name}' with leading length "
                f"{value.shape[0] if value.ndim else 'none (a scalar)'}; it must have one row per "
                f"observation ({n_rows})."
            )
        if value.dtype.kind not in "biuf":
            raise AmortizationError(
                f"'{name}' has dtype {value.dtype}; encoder inputs are numeric."
            )
    return names


def _has_row_units(model: pm.Model) -> bool:
    """Whether the model has latents with one row per unit, which auto-detection prefers."""
    try:
        find_local_latents(model)
    except AmortizationError:
        return False
    return True


def find_indexed_plate(
    model: pm.Model, local: Mapping[str, object] | None = None
) -> IndexedPlate | None:
    """Describe the indexed local latents of ``model``, or None when it has none to amortize.

    Parameters
    ----------
    model : pm.Model
        The model to read. It is not changed.
    local : mapping, optional
        ``local=`` as given to ``pm.fit(method="amortized")``. Values that are
        :class:`IndexedLocal` name indexed latents; when ``local`` is omitted, every free latent
        used as ``latent[index]`` in an observation is one, unless the model has latents with one
        row per unit (found from its dims), which keep the per-row path. Any other ``local``
        returns None.

    Returns
    -------
    IndexedPlate or None

    Examples
    --------
    .. code-block:: python

        plate = find_indexed_plate(radon)
        plate.latent_names, plate.size, plate.n_rows
    """
    uses = _index_uses(model)
    if local is None:
        if not uses or _has_row_units(model):
            return None
        specs = {name: IndexedLocal() for name, _, _ in uses}
    else:
        if not isinstance(local, Mapping):
            return None
        marked = [isinstance(v, IndexedLocal) for v in local.values()]
        if not any(marked):
            return None
        if not all(marked):
            raise AmortizationError(
                "local= mixes IndexedLocal entries with per-row inputs; amortizing latents with an "
                "index array and latents with one row per unit in one fit is not supported."
            )
        specs = dict(local)

    for name in specs:
        if name not in model.named_vars or model[name] not in model.free_RVs:
            free = ", ".join(rv.name for rv in model.free_RVs) or "none"
            raise AmortizationError(
                f"local={{'{name}': IndexedLocal(...)}} names no free variable of the model. Its "
                f"free variables: {free}."
            )
        if model[name].type.dtype.startswith(("int", "uint", "bool")):
            raise AmortizationError(
                f"'{name}' is discrete; amortized VI needs continuous local latents."
            )

    index_nodes = {}
    for name, spec in specs.items():
        found = [(idx, obs) for lat, idx, obs in uses if lat == name]
        if spec.index is not None:
            if spec.index not in model.named_vars:
                raise AmortizationError(
                    f"IndexedLocal(index='{spec.index}') for '{name}': the model has no variable "
                    f"'{spec.index}'."
                )
            found = [(idx, obs) for idx, obs in found if idx is model[spec.index]]
        if not found:
            raise AmortizationError(
                f"'{name}' is never used as '{name}[index]' in an observation"
                + (f" with index '{spec.index}'" if spec.index else "")
                + ", with the index an integer pm.Data container or array; write the likelihood "
                f"as e.g. pm.Normal('y', {name}[county_idx], ...)."
            )
        index_nodes[name] = found

    distinct = {idx for found in index_nodes.values() for idx, _ in found}
    if len(distinct) > 1:
        raise AmortizationError(
            "The indexed local latents use different index arrays "
            f"({', '.join(sorted(index_nodes))}); amortizing crossed or nested groupings in one "
            "fit is not supported. Give local= only the latents of one grouping."
        )
    index_node = distinct.pop()
    index = np.asarray(
        index_node.get_value() if isinstance(index_node, SharedVariable) else index_node.data
    )
    index_name = index_node.name if index_node.name in model.named_vars else None
    label = index_name or "the index array"
    observed = tuple(
        dict.fromkeys(obs for found in index_nodes.values() for _, obs in found)
    )  # ordered, unique

    initial_point = model.initial_point()
    sizes = {}
    latents = []
    for rv in model.free_RVs:  # model order, so that sampling matches values by position
        if rv.name not in specs:
            continue
        value_name = model.rvs_to_values[rv].name
        value = initial_point[value_name]
        if value.ndim == 0:
            raise AmortizationError(
                f"'{rv.name}' is a scalar; an indexed latent needs a unit axis."
            )
        sizes[rv.name] = value.shape[0]
        latents.append(
            LocalLatent(
                name=rv.name,
                value_name=value_name,
                event_shape=tuple(int(s) for s in value.shape[1:]),
                input_names=(),
            )
        )
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"'{n}': {c}" for n, c in sizes.items())
        raise AmortizationError(
            f"The indexed local latents have different numbers of units ({listed})."
        )
    n_units = next(iter(sizes.values()))

    if index.size == 0:
        raise AmortizationError(f"{label} is empty; the units own no observations.")
    if index.min() < 0 or index.max() >= n_units:
        raise AmortizationError(
            f"{label} has values in [{index.min()}, {index.max()}], but "
            f"'{latents[0].name}' has {n_units} units; the index must lie in [0, {n_units - 1}]."
        )
    n_rows = index.size
    for obs in observed:
        rows = data_value(model, obs).shape[:1]
        if rows != (n_rows,):
            raise AmortizationError(
                f"'{obs}' has leading length {rows[0] if rows else 'none'} but {label} has "
                f"{n_rows} rows; the index must give the unit of each row of '{obs}'."
            )

    unit_dims = {(_dims(model, lat.name) or (None,))[0] for lat in latents}
    unit_dim = unit_dims.pop() if len(unit_dims) == 1 else None
    row_dim = (_dims(model, observed[0]) or (None,))[0]
    if unit_dim is not None and unit_dim == row_dim:
        raise AmortizationError(
            f"The units and the rows share the dim '{unit_dim}'; with one row per unit, use "
            "local={latent: observed name} instead of IndexedLocal."
        )

    # One spec for the encoders' data; the first latent's spec wins where they differ.
    spec = next(iter(specs.values()))
    exclude = {index_name} if index_name else set()
    if spec.inputs is not None:
        row_inputs = _check_rows(
            model, spec.inputs, n_rows, f"IndexedLocal(inputs=) of '{latents[0].name}'"
        )
    else:
        row_inputs = observed + _float_containers_along(model, row_dim, n_rows, exclude)
    if not row_inputs:
        raise AmortizationError(f"The encoder of '{latents[0].name}' has no row inputs.")

    covariate_names: tuple[str, ...] = ()
    covariates = None
    if isinstance(spec.unit_covariates, np.ndarray):
        covariates = np.asarray(spec.unit_covariates)
        if covariates.ndim == 1:
            covariates = covariates[:, None]
        if covariates.shape[0] != n_units or covariates.dtype.kind not in "biuf":
            raise AmortizationError(
                f"unit_covariates must be a numeric (n_units, c) array with {n_units} rows; got "
                f"shape {covariates.shape} and dtype {covariates.dtype}."
            )
        covariates = np.array(covariates.reshape(n_units, -1), dtype=float)
    elif spec.unit_covariates is not None:
        names = (
            (spec.unit_covariates,)
            if isinstance(spec.unit_covariates, str)
            else tuple(spec.unit_covariates)
        )
        for cov in names:
            if cov not in {v.name for v in model.data_vars}:
                raise AmortizationError(
                    f"unit_covariates names '{cov}', which is not a pm.Data container of the model."
                )
            value = data_value(model, cov)
            if value.ndim == 0 or value.shape[0] != n_units:
                raise AmortizationError(
                    f"unit_covariates names '{cov}' with leading length "
                    f"{value.shape[0] if value.ndim else 'none'}; it needs one row per unit "
                    f"({n_units})."
                )
        covariate_names = names
    else:
        covariate_names = _float_containers_along(model, unit_dim, n_units, exclude)
        covariate_names = tuple(n for n in covariate_names if n not in row_inputs)

    latents = [
        LocalLatent(lat.name, lat.value_name, lat.event_shape, input_names=row_inputs)
        for lat in latents
    ]
    return IndexedPlate(
        dim=unit_dim,
        row_dim=row_dim,
        size=int(n_units),
        latents=tuple(latents),
        index_name=index_name,
        index=index.astype(np.int64),
        observed=observed,
        row_inputs=row_inputs,
        unit_covariate_names=covariate_names,
        unit_covariates=covariates,
    )


@dataclass(frozen=True)
class IndexedLogJoint:
    """The model's log joint on a batch of units and their rows.

    Attributes
    ----------
    joint : BatchLogJoint
        Terms and placeholders; its ``unit_data`` holds every array replaced per batch, by key.
    row_keys, unit_keys : tuple of str
        Keys of ``joint.unit_data`` for arrays along the rows and along the units.
    index_key : str
        Key of the index placeholder (the batch slot, 0..B-1, of each batch row).
    """

    joint: BatchLogJoint
    row_keys: tuple[str, ...]
    unit_keys: tuple[str, ...]
    index_key: str = "index"


def _leaf_length(var: Variable) -> int | None:
    if isinstance(var, SharedVariable):
        value = var.get_value(borrow=True)
    elif isinstance(var, Constant):
        value = var.data
    else:
        return None
    value = np.asarray(value)
    return int(value.shape[0]) if value.ndim > 0 else None


def build_indexed_logjoint(
    model: pm.Model, plate: IndexedPlate, *, minibatch: bool
) -> IndexedLogJoint:
    """Clone the model's log density with batch placeholders for every per-unit and per-row array.

    The local values become (B, ...), the index becomes the batch slot of each row, every other
    data leaf of the per-unit terms whose leading length is the number of rows (observations,
    covariates) or of units (unit-level data) becomes a row or unit placeholder, and the dims'
    lengths follow.
    """
    local_rvs = [model[name] for name in plate.latent_names]
    replace: dict[Variable, Variable] = {}
    local_values = {}
    for latent, rv in zip(plate.latents, local_rvs, strict=True):
        value_var = model.rvs_to_values[rv]
        placeholder = pt.tensor(
            f"{latent.value_name}_batch", dtype=value_var.dtype, shape=(None, *latent.event_shape)
        )
        replace[value_var] = placeholder
        local_values[latent.value_name] = placeholder

    varlist = model.free_RVs + model.observed_RVs + model.potentials
    terms = model.logp(vars=varlist, sum=False)
    index_nodes = {idx for _, idx, _ in _index_uses(model) if _leaf_length(idx) == plate.n_rows}
    index_placeholder = pt.tensor("unit_of_row_batch", dtype="int64", shape=(None,))
    batch_size = pt.scalar("n_units_in_batch", dtype="int64")

    # Only terms that touch a local value or the index are per unit; their data leaves follow.
    roots = set(replace) | index_nodes
    unit_data = {"index": (index_placeholder, None)}
    row_keys, unit_keys = [], []
    seen = {}
    for term in terms:
        leaves = [v for v in ancestors([term]) if v.owner is None]
        if not roots & set(leaves):
            continue
        for leaf in leaves:
            if leaf in roots or leaf in seen:
                continue
            length = _leaf_length(leaf)
            if length is None or length not in (plate.n_rows, plate.size):
                continue
            if plate.n_rows == plate.size:
                raise AmortizationError(
                    f"The model has as many rows as units ({plate.size}), so its per-row and "
                    "per-unit arrays cannot be told apart; with one row per unit, use "
                    "local={latent: observed name} instead of IndexedLocal."
                )
            kind = "row" if length == plate.n_rows else "unit"
            key = f"{kind}{len(seen)}:{leaf.name or 'constant'}"
            placeholder = pt.tensor(
                f"{leaf.name or 'constant'}_{kind}_batch",
                dtype=leaf.type.dtype,
                shape=(None, *leaf.type.shape[1:]),
            )
            seen[leaf] = key
            replace[leaf] = placeholder
            unit_data[key] = (placeholder, leaf)
            (row_keys if kind == "row" else unit_keys).append(key)
    for node in index_nodes:
        replace[node] = index_placeholder.astype(node.dtype)
    if plate.dim is not None:
        replace[model.dim_lengths[plate.dim]] = batch_size
    if plate.row_dim is not None:
        replace[model.dim_lengths[plate.row_dim]] = index_placeholder.shape[0]

    # rebuild_strict=False re-derives every node's static type, so (N,)-shaped types become (B,).
    cloned = clone_replace(terms, replace, rebuild_strict=False)
    per_batch = set(replace.values()) | {index_placeholder}
    global_terms, unit_terms = split_terms(
        varlist, cloned, per_batch, minibatch=minibatch, check_fixed_length=False
    )
    global_values = global_value_vars(model, local_rvs)
    joint = BatchLogJoint(
        global_terms=global_terms,
        unit_terms=unit_terms,
        global_values=global_values,
        local_values=local_values,
        unit_data=unit_data,
        batch_size=batch_size,
    )
    return IndexedLogJoint(joint=joint, row_keys=tuple(row_keys), unit_keys=tuple(unit_keys))
