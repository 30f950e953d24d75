"""One model analysis: the unit plates of a PyMC model, their local latents and encoder inputs.

Everything here is pure: it reads the model's log-density graph and the user's ``local=`` mapping
and returns frozen descriptions. Nothing is compiled and nothing in the model is changed.

How a latent is found local
---------------------------
The log density of every observed variable is read as a graph whose leaves are value variables
and data. A free variable z with a leading axis is *local to a plate* when

* its value reaches the likelihood through an integer index array, ``z[idx]``, possibly inside
  Deterministics and arithmetic (``(mu + s * z)[idx]``, ``z[idx] * s``, ``b[idx] * x``): the units
  are z's leading axis and the rows are the index's entries (an *indexed* plate); or
* its leading axis is the observed variable's leading axis (by dims where both have them, else by
  length): each unit is one row (a *row* plate).

Several plates may coexist (crossed and nested groupings). Every other free variable, and every
latent that cannot be amortized (the reason is recorded), is fitted mean-field like ADVI's.

The verdict
-----------
A latent found local is amortized only if what the graph computes allows it (Margossian & Blei,
UAI 2024): :func:`unit_flow` follows its units through every factor that reads it (its prior,
observed variables, potentials, other latents' priors). *amortize*: its prior is one term per unit
and each reading term reads it unit by unit or through one index array; *expand*: a unit's terms
read a neighbour's latent or data; *cannot close*: the prior couples the units (random walk, AR,
MvNormal, ZeroSum) or a term reads them all together (cumsum, a product over the units);
*undecided*: an operation the dataflow does not follow. All but *amortize* (and *expand* whose
neighbours' data the encoder already reads) are fitted mean-field with the reason, unless
``local=`` names the latent (then a :class:`~pymc_amortize.CouplingWarning`).

Encoder inputs come from the latent's Markov blanket: every data array (observed values,
``pm.Data``, constant arrays) in a log-density factor that contains the latent and is aligned with
the plate's units, or with its rows (then pooled per unit by the encoder).
"""

from __future__ import annotations

import inspect
import reprlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pymc as pm
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import ancestors, applys_between, graph_inputs, io_toposort
from pytensor.raise_op import CheckAndRaise
from pytensor.scalar.basic import Second
from pytensor.scan.op import Scan
from pytensor.tensor.basic import (
    Alloc,
    Join,
    ScalarFromTensor,
    Split,
    TensorFromScalar,
)
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from pytensor.tensor.extra_ops import CumOp
from pytensor.tensor.math import Dot
from pytensor.tensor.random.type import RandomType
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape
from pytensor.tensor.subtensor import (
    AdvancedIncSubtensor,
    AdvancedSubtensor,
    IncSubtensor,
    Subtensor,
    indices_from_subtensor,
)

from pymc_amortize.errors import AmortizationError, CouplingWarning

__all__ = [
    "DataInput",
    "IndexedLocal",
    "LocalLatent",
    "MeanFieldLatent",
    "ModelAnalysis",
    "Plate",
    "analyze_model",
]


@dataclass(frozen=True)
class IndexedLocal:
    """Encoder inputs of a latent whose units own many rows through an index array.

    Use it as a value of ``local=``: ``local={"a": IndexedLocal("county_idx")}``. Every field is
    optional; what is omitted is read from the model.

    Parameters
    ----------
    index : str, optional
        Name of the ``pm.Data`` container holding the unit of each row.
    inputs : sequence of str, optional
        Row data pooled per unit by the encoder (one row per observation).
    unit_covariates : sequence of str or ndarray, optional
        Per-unit encoder inputs: names of data with one row per unit, or an (n_units, c) array;
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


#: What ``local=`` accepts for one latent: a data name, several names (an expanded domain), an
#: explicit (n_units, k) input matrix, or an :class:`IndexedLocal`.
EncoderInputSpec = str | Sequence[str] | np.ndarray | IndexedLocal


@dataclass(frozen=True)
class DataInput:
    """One data array an encoder reads, or a minibatch slices.

    Attributes
    ----------
    key : str
        Its name: the ``pm.Data`` or observed variable's name, or ``"<variable>_input<k>"`` for an
        unnamed constant array in the factor of ``<variable>`` (e.g. eight schools' known sds).
        New units' data are passed to ``encode`` under this key.
    node : Variable
        The leaf of the model's graph that holds it.
    """

    key: str
    node: Variable = field(repr=False, compare=False)
    #: False for an unnamed constant array, whose key is positional.
    named: bool = True
    #: Where an unnamed array comes from, e.g. "the 'upper' array of pm.Censored 'time'".
    source: str = field(default="", compare=False)

    @property
    def value(self) -> np.ndarray:
        return leaf_value(self.node)


@dataclass(frozen=True)
class LocalLatent:
    """One local latent z with a leading unit axis.

    Attributes
    ----------
    name, value_name : str
        The free variable and its value variable (the unconstrained one when transformed).
    event_shape : tuple of int
        Shape of one unit's z_n (``()`` for a scalar latent).
    unit_inputs : tuple of DataInput
        Encoder inputs with one row per unit.
    row_inputs : tuple of DataInput
        Encoder inputs with one row per row of the plate, pooled per unit (indexed plates only).
    input_matrix : ndarray or None
        An explicit (n_units, k) encoder input given by the user (replaces ``unit_inputs``).
    verdict, verdict_reason : str
        The analysis's class of the latent (see :data:`VERDICTS`; ``"amortize"`` unless
        ``local=`` amortizes a latent the analysis would not) and why.
    """

    name: str
    value_name: str
    event_shape: tuple[int, ...]
    unit_inputs: tuple[DataInput, ...] = ()
    row_inputs: tuple[DataInput, ...] = ()
    input_matrix: np.ndarray | None = field(default=None, repr=False, compare=False)
    verdict: str = "amortize"
    verdict_reason: str = ""

    @property
    def event_size(self) -> int:
        return int(np.prod(self.event_shape, dtype=int))

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.unit_inputs + self.row_inputs)


@dataclass(frozen=True)
class Plate:
    """Units n = 1..N and their local latents (NumPyro's ``plate``).

    A row plate has one row per unit (``index is None``); an indexed plate ties rows i to units
    through ``index[i]``, with any number of rows per unit (none included).

    Attributes
    ----------
    name : str
        The unit dim, or a label when the model names none.
    dim, row_dim : str or None
        Model dims of the units and (indexed plates) of the rows.
    size : int
        Number of units N.
    latents : tuple of LocalLatent
        Its local latents, in ``model.free_RVs`` order.
    index : DataInput or None
        The integer array giving each row's unit; None for a row plate.
    batched : tuple of DataInput
        Every data array in the plate's factors aligned with its units (``unit``) or rows
        (``row``): what a minibatch slices.
    """

    name: str
    dim: str | None
    row_dim: str | None
    size: int
    latents: tuple[LocalLatent, ...]
    index: DataInput | None = None
    batched_units: tuple[DataInput, ...] = ()
    batched_rows: tuple[DataInput, ...] = ()

    @property
    def latent_names(self) -> tuple[str, ...]:
        return tuple(latent.name for latent in self.latents)

    @property
    def unit_of_row(self) -> np.ndarray:
        """Unit of each row, int64 (n_rows,); ``arange(N)`` for a row plate."""
        if self.index is None:
            return np.arange(self.size, dtype=np.int64)
        return self.index.value.astype(np.int64, copy=False)

    @property
    def n_rows(self) -> int:
        return self.size if self.index is None else int(self.index.value.size)

    @property
    def row_counts(self) -> np.ndarray:
        """Rows per unit, int64 (N,)."""
        return np.bincount(self.unit_of_row, minlength=self.size).astype(np.int64)

    @property
    def index_key(self) -> str:
        """The key under which new units' data carry each row's unit."""
        return self.index.key if self.index is not None else "index"


#: Why a scalar free variable is global.
SCALAR_REASON = "a scalar (no unit axis)"


@dataclass(frozen=True)
class MeanFieldLatent:
    """A free variable fitted with the global mean-field Gaussian, why, and the analysis's
    verdict on it (see :data:`VERDICTS`: ``"global"`` for a latent with no unit axis)."""

    name: str
    reason: str
    verdict: str = "global"


@dataclass(frozen=True)
class ModelAnalysis:
    """What amortized VI will do with a model: its plates, local latents and mean-field rest.

    ``str(analysis)`` (or :meth:`summary`) is a readable report; it is also stored in the
    results' ``amortized_fit`` attributes.
    """

    plates: tuple[Plate, ...]
    mean_field: tuple[MeanFieldLatent, ...]
    #: The model's log-density factor of every variable, by name: the graphs the analysis read.
    #: Log-density graphs are rebuilt (and their constants re-folded) by every ``model.logp``
    #: call, so the data leaves named here are those of these graphs; build on them.
    factors: Mapping[str, Variable] = field(default_factory=dict, repr=False, compare=False)

    @property
    def latents(self) -> tuple[LocalLatent, ...]:
        return tuple(lat for plate in self.plates for lat in plate.latents)

    @property
    def latent_names(self) -> tuple[str, ...]:
        return tuple(lat.name for lat in self.latents)

    def plate_of(self, name: str) -> Plate:
        """The plate of local latent ``name``."""
        for plate in self.plates:
            if name in plate.latent_names:
                return plate
        raise AmortizationError(
            f"'{name}' is not a local latent; local latents: {', '.join(self.latent_names)}."
        )

    def summary(self) -> str:
        lines = []
        for plate in self.plates:
            kind = (
                "one row per unit"
                if plate.index is None
                else f"{plate.n_rows} rows tied to units by '{plate.index.key}'"
            )
            lines.append(f"plate '{plate.name}': {plate.size} units, {kind}")
            for lat in plate.latents:
                shape = f" (event shape {lat.event_shape})" if lat.event_shape else ""
                if lat.input_matrix is not None:
                    inputs = f"a given ({plate.size}, {lat.input_matrix.shape[1]}) matrix"
                else:
                    parts = [d.key + _unnamed(d) for d in lat.unit_inputs]
                    parts += [f"{d.key}{_unnamed(d)} (rows, pooled)" for d in lat.row_inputs]
                    inputs = ", ".join(parts) or "none"
                lines.append(f"  local {lat.name}{shape} <- encoder inputs: {inputs}")
                if lat.verdict_reason:
                    lines.append(f"    verdict {lat.verdict}: {lat.verdict_reason}")
        if not self.plates:
            lines.append("no plate: every latent is fitted mean-field (as ADVI)")
        scalars = [mf.name for mf in self.mean_field if mf.reason == SCALAR_REASON]
        if scalars:
            lines.append(f"globals, mean-field (as ADVI): {', '.join(scalars)}")
        for mf in self.mean_field:
            if mf.reason != SCALAR_REASON:
                lines.append(f"kept mean-field {mf.name} [{mf.verdict}]: {mf.reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _unnamed(data: DataInput) -> str:
    if data.named:
        return ""
    source = f": {data.source}" if data.source else ""
    return f" [an unnamed array{source}; pm.Data would name it]"


# -- reading values and shapes -------------------------------------------------------------------
def leaf_value(var: Variable) -> np.ndarray:
    """The array held by a data leaf (a shared variable or a constant)."""
    if isinstance(var, SharedVariable):
        return np.asarray(var.get_value(borrow=True))
    if isinstance(var, Constant):
        return np.asarray(var.data)
    raise AmortizationError(f"'{var}' holds no data.")


def data_value(model: pm.Model, name: str) -> np.ndarray:
    """The numeric array behind an observed variable or a ``pm.Data`` container."""
    var = model[name]
    if var in model.observed_RVs:
        var = model.rvs_to_values[var]
    if isinstance(var, SharedVariable | Constant):
        return leaf_value(var)
    raise AmortizationError(
        f"'{name}' is neither an observed variable nor a pm.Data container, so it cannot feed an "
        "encoder. Name an observed variable, a pm.Data container, or pass an (n_units, k) array."
    )


def _is_data_leaf(var: Variable) -> bool:
    if var.owner is not None or isinstance(var.type, RandomType):
        return False
    return isinstance(var, SharedVariable | Constant) and getattr(var.type, "ndim", 0) > 0


def _leading(var: Variable) -> int | None:
    value = leaf_value(var)
    return int(value.shape[0]) if value.ndim else None


def _dims(model: pm.Model, name: str | None) -> tuple[str, ...]:
    return tuple(model.named_vars_to_dims.get(name) or ()) if name else ()


def _is_index(var: Variable) -> bool:
    return _is_data_leaf(var) and var.type.ndim == 1 and var.type.dtype.startswith(("int", "uint"))


# -- checks on the model as a whole --------------------------------------------------------------
def _check_no_imputation(model: pm.Model) -> None:
    """Refuse observed data with missing values, which PyMC has rewritten into latents."""
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


def _check_no_pm_minibatch(model: pm.Model) -> None:
    """Refuse ``pm.Minibatch`` data: our minibatches are drawn over units, not over rows."""
    # PyMC wraps such variables in a MinibatchRandomVariable and their data in a Minibatch op.
    scaled = [
        rv.name
        for rv in model.observed_RVs
        if type(rv.owner.op).__name__ == "MinibatchRandomVariable"
        or any(
            var.owner is not None and type(var.owner.op).__name__ == "Minibatch"
            for var in ancestors([model.rvs_to_values[rv]])
        )
    ]
    if not scaled:
        return
    raise AmortizationError(
        f"The observed variable(s) {', '.join(scaled)} use pm.Minibatch / total_size. Amortized "
        "VI draws its own minibatches of units (all rows of each drawn unit) and scales them "
        "itself, so pm.Minibatch is not needed: build the model on the full data (drop "
        "pm.Minibatch and total_size=) and pass batch_size= to the fit, e.g. "
        "pm.fit(n, method='amortized', batch_size=100) for 100 units per step."
    )


# -- the graph analysis --------------------------------------------------------------------------
@dataclass
class _Use:
    """How one latent meets one observed variable's factor."""

    latent: str
    kind: str  # "row" or "indexed"
    index: Variable | None
    observed: str


def _index_uses(
    term: Variable, value_to_name: Mapping[Variable, str]
) -> list[tuple[str, Variable]]:
    """(latent, index leaf) for each ``expr[idx]`` in ``term`` whose source holds a latent's value
    along its leading axis (idx: an integer data vector selecting along axis 0)."""
    uses = []
    for node in applys_between(graph_inputs([term]), [term]):
        if not isinstance(node.op, AdvancedSubtensor):
            continue
        source, index, *rest = node.inputs
        # Later axes may take scalars or slices (``ab[idx, 0]``), not further index arrays.
        if not _is_index(index) or any(getattr(r.type, "ndim", 0) or 0 for r in rest):
            continue
        for var in ancestors([source]):
            name = value_to_name.get(var)
            if name is not None and var.type.ndim >= 1:
                uses.append((name, index))
    return uses


def _row_aligned(model: pm.Model, latent: str, length: int, obs: str, n_rows: int) -> bool:
    lat_dims, obs_dims = _dims(model, latent), _dims(model, obs)
    if lat_dims and obs_dims and lat_dims[0] is not None and obs_dims[0] is not None:
        return lat_dims[0] == obs_dims[0]
    return length == n_rows and n_rows > 1


def _find_uses(
    model: pm.Model, lengths: Mapping[str, int], terms: Mapping[str, Variable]
) -> list[_Use]:
    value_to_name = {
        model.rvs_to_values[rv]: rv.name for rv in model.free_RVs if rv.name in lengths
    }
    uses = []
    for obs in model.observed_RVs:
        term = terms[obs.name]
        n_rows = _leading(model.rvs_to_values[obs])
        indexed = _index_uses(term, value_to_name)
        for name, index in indexed:
            if _leading(index) != n_rows:
                continue  # an index over something other than the rows (e.g. a slice of units)
            uses.append(_Use(name, "indexed", index, obs.name))
        indexed_names = {name for name, _ in indexed}
        for var in ancestors([term]):
            name = value_to_name.get(var)
            if name is None or name in indexed_names or n_rows is None:
                continue
            if _row_aligned(model, name, lengths[name], obs.name, n_rows):
                uses.append(_Use(name, "row", None, obs.name))
    return uses


def _plate_key(use: _Use, model: pm.Model, lengths: Mapping[str, int]) -> tuple:
    if use.kind == "indexed":
        return ("indexed", use.index)
    dim = _dims(model, use.latent)[:1]
    return ("row", dim[0] if dim else lengths[use.latent])


# -- the verdict: what the graph computes along a latent's unit axis -----------------------------
#
# A small dataflow runs from one source (a latent's value variable, or a data array aligned with
# its units) through a log-density factor. Every variable gets one state:
#   None                       independent of the source;
#   ("unit", axis)             element i along ``axis`` depends on unit i only;
#   ("row", axis, index)       element i along ``axis`` depends on unit ``index[i]`` only;
#   ("coupled", kind, reason)  elements mix units: ``kind`` is "mix" (every unit reads all of
#                              them: a sum, cumsum, matrix product, solve over the unit axis),
#                              "neighbour" (an element reads a few other units: a shift, two
#                              indexes meeting) or "unknown" (an operation the analysis does not
#                              follow); ``reason`` names the operation.

#: The paper's classes (Margossian & Blei, UAI 2024) and "undecided" (the graph cannot say).
VERDICTS = ("amortize", "expand", "cannot close", "undecided", "global")


def _coupled(kind: str, reason: str) -> tuple:
    return ("coupled", kind, reason)


def _const(var) -> object:
    return getattr(var, "data", var)


def _full_slice(entry: slice) -> bool:
    start, stop, step = (_const(v) for v in (entry.start, entry.stop, entry.step))
    return start in (None, 0) and stop is None and step in (None, 1)


def _with_axis(state: tuple, axis: int) -> tuple:
    return (state[0], axis, *state[2:])


def _describe(state: tuple) -> str:
    if state[0] == "unit":
        return "its units"
    return f"rows through {_leaf_label(state[2])}"


def _leaf_label(leaf: Variable) -> str:
    if leaf.name:
        return f"'{leaf.name}'"
    value = leaf_value(leaf) if isinstance(leaf, Constant | SharedVariable) else None
    return "an unnamed array" + (f" of length {value.shape[0]}" if value is not None else "")


def _op_label(op) -> str:
    if isinstance(op, Blockwise):
        return type(op.core_op).__name__
    text = str(op)
    return text if len(text) <= 40 else type(op).__name__


def _merge(states: list[tuple], op) -> tuple | None:
    """The state of an element computed from elements in ``states`` (same positions)."""
    states = [s for s in states if s is not None]
    if not states:
        return None
    for state in states:
        if state[0] == "coupled":
            return state
    first = states[0]
    for state in states[1:]:
        if state != first:
            return _coupled(
                "neighbour",
                f"{_describe(first)} and {_describe(state)} meet in one element ({_op_label(op)})"
                if first[1] == state[1]
                else f"two different axes of the latent meet in one element ({_op_label(op)})",
            )
    return first


def _subtensor_state(node, state: tuple, entries: Sequence) -> tuple:
    """The state after basic or advanced indexing ``x[entries]`` of an x in ``state``."""
    op, x = node.op, node.inputs[0]
    axis = state[1]
    entries = list(entries) + [slice(None)] * (x.type.ndim - len(entries))
    advanced = [p for p, e in enumerate(entries) if not isinstance(e, slice)]
    basic = isinstance(op, Subtensor)
    entry = entries[axis]
    if isinstance(entry, slice):
        if not _full_slice(entry):
            return _coupled("neighbour", f"a slice or shift along the unit axis ({_op_label(op)})")
        before = sum(1 for p in advanced if p < axis)
        if basic:  # scalar entries drop their axes
            return _with_axis(state, axis - before)
        width = max((getattr(entries[p], "ndim", 0) for p in advanced), default=0)
        contiguous = advanced == list(range(advanced[0], advanced[-1] + 1)) if advanced else True
        if not advanced:
            return state
        slices_before = sum(1 for p in range(axis) if isinstance(entries[p], slice))
        if contiguous and axis < advanced[0]:
            return _with_axis(state, axis)
        if contiguous:
            return _with_axis(state, slices_before + width)
        return _with_axis(state, width + slices_before)
    if state[0] == "row":
        return _coupled("unknown", f"an index applied to already indexed rows ({_op_label(op)})")
    if basic or getattr(entry, "ndim", 0) == 0:
        return _coupled("unknown", f"single units picked by a constant index ({_op_label(op)})")
    width = max(getattr(entries[p], "ndim", 0) for p in advanced)
    if not _is_index(entry) or width != 1:
        return _coupled(
            "unknown",
            f"an index that is not an integer data vector ({_op_label(op)} with {entry})",
        )
    contiguous = advanced == list(range(advanced[0], advanced[-1] + 1))
    out_axis = sum(1 for p in range(advanced[0]) if isinstance(entries[p], slice))
    return ("row", out_axis if contiguous else 0, entry)


def _transfer(node, states: list) -> tuple | None:
    """The state of ``node``'s outputs from those of its inputs (see the section's comment)."""
    op = node.op
    if isinstance(op, Shape | Shape_i):
        return None
    if isinstance(op, SpecifyShape | CheckAndRaise | ScalarFromTensor | TensorFromScalar):
        return states[0]
    if isinstance(op, Alloc):
        if states[0] is None or states[0][0] == "coupled":
            return states[0]
        return _with_axis(states[0], states[0][1] + node.outputs[0].ndim - node.inputs[0].ndim)
    if isinstance(op, Elemwise) and isinstance(op.scalar_op, Second):
        return states[1]
    for state in states:
        if state is not None and state[0] == "coupled":
            return state
    label = _op_label(op)
    if isinstance(op, Elemwise):
        out = node.outputs[0]
        for var, state in zip(node.inputs, states, strict=True):
            if (
                state is not None
                and var.type.broadcastable[state[1]]
                and not (out.type.broadcastable[state[1]])
            ):
                return _coupled("mix", f"one unit broadcast over many ({label})")
        return _merge(states, op)
    if isinstance(op, DimShuffle):
        state = states[0]
        if state[1] not in op.new_order:
            return _coupled("unknown", f"the unit axis dropped ({label})")
        return _with_axis(state, op.new_order.index(state[1]))
    if isinstance(op, CAReduce) or type(op).__name__ == "LogSumExp":
        state, ndim = states[0], node.inputs[0].ndim
        axes = op.axis if op.axis is not None else tuple(range(ndim))
        axes = {a % ndim for a in np.atleast_1d(axes)}
        if state[1] in axes:
            return _coupled("mix", f"a reduction over the unit axis ({label})")
        return _with_axis(state, state[1] - sum(1 for a in axes if a < state[1]))
    if isinstance(op, Subtensor | AdvancedSubtensor):
        if any(s is not None for s in states[1:]):
            return _coupled("unknown", f"an index computed from the latent ({label})")
        entries = indices_from_subtensor(node.inputs[1:], op.idx_list)
        return _subtensor_state(node, states[0], entries)
    if isinstance(op, Join | Split):
        # The axis is an attribute; Split's other inputs are the lengths of its pieces.
        data = states if isinstance(op, Join) else states[:1]
        if any(s is not None for s in states[len(data) :]):
            return _coupled("unknown", f"pieces' lengths computed from the latent ({label})")
        ndim = node.outputs[0].ndim
        if any(s is not None and s[1] == op.axis % ndim for s in data):
            return _coupled("unknown", f"a concatenation or split along the unit axis ({label})")
        return _merge(data, op)
    if isinstance(op, CumOp):
        state = states[0]
        if op.axis is None or op.axis % node.inputs[0].ndim == state[1]:
            return _coupled("mix", f"a cumulative sum or product along the unit axis ({label})")
        return state
    if isinstance(op, Dot | Blockwise):
        core, batch = (op.core_op if isinstance(op, Blockwise) else op), 0
        if isinstance(op, Blockwise):
            batch = node.outputs[0].ndim - len(op.outputs_sig[0])
            if all(s[1] < batch for s in states if s is not None):
                return _merge(states, op)
        if isinstance(core, Dot) and len(node.inputs) == 2:
            (a, b), (sa, sb) = node.inputs, states
            lead = batch if isinstance(op, Blockwise) else 0
            if sb is None and a.ndim - lead == 2 and sa[1] == lead:
                return sa
            if sa is None and b.ndim - lead == 2 and sb[1] == lead + 1:
                return _with_axis(sb, node.outputs[0].ndim - 1)
        return _coupled("mix", f"a matrix operation over the unit axis ({label})")
    if isinstance(op, Scan):
        return _coupled("mix", f"a scan over the latent ({label})")
    if isinstance(op, IncSubtensor | AdvancedIncSubtensor):
        return _coupled("unknown", f"set_subtensor / inc_subtensor ({label})")
    if isinstance(op, Reshape):
        return _coupled("unknown", f"a reshape ({label})")
    return _coupled("unknown", f"an operation the analysis does not follow ({label})")


def _used_inputs(node) -> range | tuple[int, ...]:
    """The inputs whose values reach ``node``'s outputs (not those that set shapes or checks)."""
    op = node.op
    if isinstance(op, Shape | Shape_i):
        return ()
    if isinstance(op, SpecifyShape | CheckAndRaise | ScalarFromTensor | TensorFromScalar | Alloc):
        return (0,)
    if isinstance(op, Elemwise) and isinstance(op.scalar_op, Second):
        return (1,)
    return range(len(node.inputs))


def unit_flow(
    term: Variable, source: Variable, prefer: Sequence[str] = ("mix", "neighbour", "unknown")
) -> tuple | None:
    """The state of ``term`` with ``source``'s leading axis as the units (see above).

    A coupled term names, of the couplings on its way, the first of the kind first in ``prefer``
    (by default the most severe: a unit reading all units before one reading a few).
    """
    if source not in graph_inputs([term]):
        return None
    states: dict[Variable, tuple] = {source: ("unit", 0)}
    met: dict[Variable, tuple] = {}  # the couplings on the way to each variable, in order
    for node in io_toposort(graph_inputs([term]), [term]):
        ins = [states.get(var) for var in node.inputs]
        if not any(s is not None for s in ins):
            continue
        out = _transfer(node, ins)
        way = tuple(c for i in _used_inputs(node) for c in met.get(node.inputs[i], ()))
        if out is not None and out[0] == "coupled" and out not in way:
            way += (out,)
        for var in node.outputs:
            states[var] = out
            met[var] = tuple(dict.fromkeys(way))
    state = states.get(term)
    if state is not None and state[0] == "coupled" and met.get(term):
        return min(met[term], key=lambda c: prefer.index(c[1]))
    return state


@dataclass(frozen=True)
class _Verdict:
    """A latent's verdict, why, and how its reading terms reach its units."""

    verdict: str
    reason: str
    #: Index leaf -> names of the terms that read the latent through it (row by row).
    indexes: Mapping[Variable, tuple[str, ...]] = field(default_factory=dict)
    #: Terms that read the latent unit by unit along their leading axis.
    unit_terms: tuple[str, ...] = ()
    #: For "expand": the neighbours' data are already arrays of the latent's Markov blanket
    #: (the saw series' ``x_prev``), so the encoder found from it reads the expanded domain.
    expanded: bool = False


def _shifted_copy(model: pm.Model, terms: Sequence[Variable], size: int) -> tuple[str, str] | None:
    """Two data arrays along the units, one the other shifted by one unit (``x_prev[n] =
    x[n - 1]``), in these factors: (the shifted one's label, the other's), or None. The graph
    cannot tell that a ``pm.Data`` array holds a neighbour's data; their values can."""
    arrays = {}
    for term in terms:
        for leaf in _value_leaves(term):
            if _is_data_leaf(leaf) and not _is_index(leaf) and leaf not in arrays:
                value = leaf_value(leaf)
                if value.dtype.kind == "f" and value.shape[:1] == (size,) and size > 2:
                    arrays[leaf] = value
    for prev, prev_value in arrays.items():
        for leaf, value in arrays.items():
            if (
                leaf is not prev
                and prev_value.shape == value.shape
                and np.array_equal(prev_value[1:], value[:-1])
                and np.ptp(value) > 0
            ):
                labels = [
                    next(
                        (f"'{o.name}'" for o in model.observed_RVs if model.rvs_to_values[o] is v),
                        _leaf_label(v),
                    )
                    for v in (prev, leaf)
                ]
                return labels[0], labels[1]
    return None


def _strip_sums(term: Variable) -> Variable:
    """A potential's per-row term: its trailing full sums removed (``pm.Potential(logp.sum())``)."""
    while (
        term.owner is not None
        and isinstance(term.owner.op, CAReduce)
        and type(term.owner.op).__name__ == "Sum"
        and (term.owner.op.axis is None or len(term.owner.op.axis) == term.owner.inputs[0].ndim)
    ):
        term = term.owner.inputs[0]
    return term


def _dist_label(rv: Variable) -> str:
    op = rv.owner.op
    name = getattr(op, "_print_name", None)
    return name[0] if name else type(op).__name__


def _latent_verdict(
    model: pm.Model, name: str, terms: Mapping[str, Variable], size: int
) -> _Verdict:
    """The paper's class of latent ``name`` from what its factors compute along its units."""
    rv = model[name]
    value = model.rvs_to_values[rv]
    potentials = {pot.name for pot in model.potentials}
    found: dict[str, list[str]] = {}
    own = unit_flow(terms[name], value, prefer=("neighbour", "mix", "unknown"))
    if own is not None and own != ("unit", 0):
        term = terms[name]
        per_unit = term.type.ndim >= 1 and term.type.shape[0] in (None, size)
        if own[0] == "coupled" and (not per_unit or own[1] != "unknown"):
            found.setdefault("cannot close", []).append(
                f"its prior ({_dist_label(rv)}) couples its units: its log density is not one "
                f"term per unit ({own[2]})"
            )
        else:
            detail = own[2] if own[0] == "coupled" else f"its units along axis {own[1]}"
            found.setdefault("undecided", []).append(
                f"the analysis cannot tell whether its prior ({_dist_label(rv)}) is one term per "
                f"unit: {detail}"
            )
    indexes: dict[Variable, list[str]] = {}
    unit_terms: list[str] = []
    reading = [name]
    for other, term in terms.items():
        if other == name:
            continue
        if other in potentials:
            term = _strip_sums(term)
        state = unit_flow(term, value)
        if state is None:
            continue
        reading.append(other)
        if state == ("unit", 0):
            unit_terms.append(other)
        elif state[0] == "row" and state[1] == 0:
            indexes.setdefault(state[2], []).append(other)
        elif state[0] == "coupled" and state[1] == "mix":
            found.setdefault("cannot close", []).append(
                f"'{other}' reads it through {state[2]}, so each of its terms reads many units"
            )
        elif state[0] == "coupled" and state[1] == "neighbour":
            found.setdefault("expand", []).append(
                f"'{other}' reads other units' values: {state[2]}"
            )
        else:
            detail = state[2] if state[0] == "coupled" else f"its units along axis {state[1]}"
            found.setdefault("undecided", []).append(
                f"the analysis cannot follow how '{other}' reads it: {detail}"
            )
    if not found:
        # The saw series written with its shift in the graph: a unit's factors read a data array
        # at neighbouring units, so the encoder needs the neighbours' data.
        for other in reading:
            term = terms[other]
            for leaf in _value_leaves(term):
                if (
                    not _is_data_leaf(leaf)
                    or _is_index(leaf)
                    or _leading(leaf) != size
                    or leaf in indexes
                ):
                    continue
                state = unit_flow(term, leaf)
                if state is not None and state[0] == "coupled" and state[1] == "neighbour":
                    label = next(
                        (
                            f"'{o.name}'"
                            for o in model.observed_RVs
                            if model.rvs_to_values[o] is leaf
                        ),
                        _leaf_label(leaf),
                    )
                    found.setdefault("expand", []).append(
                        f"'{other}' reads the data {label} of neighbouring units: {state[2]}"
                    )
    for verdict in ("cannot close", "expand", "undecided"):
        if verdict in found:
            reasons = list(dict.fromkeys(found[verdict]))
            return _Verdict(verdict, "; ".join(reasons))
    shifted = _shifted_copy(model, [terms[t] for t in reading], size)
    if shifted is not None:
        return _Verdict(
            "expand",
            f"{shifted[0]} holds {shifted[1]} of the previous unit, so a unit's factors read its "
            "neighbour's data; both are in its Markov blanket, so its encoder reads both (the "
            "expanded domain)",
            expanded=True,
        )
    reads = [f"'{t}' unit by unit" for t in unit_terms]
    reads += [
        f"'{t}' through {_leaf_label(leaf)}" for leaf, names in indexes.items() for t in names
    ]
    reason = "its prior is one term per unit" + ("; read by " + ", ".join(reads) if reads else "")
    return _Verdict(
        "amortize",
        reason,
        {leaf: tuple(names) for leaf, names in indexes.items()},
        tuple(unit_terms),
    )


def factorized_terms(model: pm.Model) -> dict[str, Variable]:
    """The log-density factor of every free and observed variable and potential, by name."""
    varlist = model.free_RVs + model.observed_RVs + model.potentials
    terms = model.logp(vars=varlist, sum=False)
    return {var.name: term for var, term in zip(varlist, terms, strict=True)}


def _data_input(model: pm.Model, leaf: Variable, owner: str, counter: dict) -> DataInput:
    """A data leaf under a user-facing name: its own, its observed variable's, or a positional
    one, ``<owner>_input<k>``, for an unnamed array in the factor of ``owner``."""
    for rv in model.observed_RVs:
        if model.rvs_to_values[rv] is leaf:
            return DataInput(rv.name, leaf)
    if leaf.name and leaf.name in model.named_vars:
        return DataInput(leaf.name, leaf)
    counter[owner] = counter.get(owner, -1) + 1
    return DataInput(
        f"{owner}_input{counter[owner]}",
        leaf,
        named=False,
        source=_unnamed_source(model, leaf, owner),
    )


def _unnamed_source(model: pm.Model, leaf: Variable, owner: str) -> str:
    """Which argument of which distribution an unnamed constant array is, e.g. "the 'upper'
    array of pm.Censored 'time'"; else the factor it is found in."""
    fallback = f"an array in the log density of '{owner}'"
    rv = model.named_vars.get(owner)
    if rv is None or rv.owner is None or rv in model.potentials:
        return fallback
    dist = _dist_label(rv)
    cls = getattr(pm, dist, None)
    try:
        names = [
            p.name
            for p in inspect.signature(cls.dist).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        params = list(rv.owner.op.dist_params(rv.owner))
    except Exception:
        return fallback
    value = leaf_value(leaf)
    for name, param in zip(names, params, strict=False):
        while param.owner is not None and isinstance(param.owner.op, DimShuffle | SpecifyShape):
            param = param.owner.inputs[0]
        if isinstance(param, Constant | SharedVariable):
            candidate = leaf_value(param)
            if candidate.shape == value.shape and np.array_equal(candidate, value, equal_nan=True):
                return f"the '{name}' array of pm.{dist} '{owner}'"
    return f"{fallback} (pm.{dist})"


def _aligned_leaves(
    model: pm.Model,
    terms: Mapping[str, Variable],
    value_vars: set[Variable],
    *,
    size: int,
    n_rows: int | None,
    dim: str | None,
    row_dim: str | None,
    exclude: set[Variable],
) -> tuple[list[tuple[Variable, str]], list[tuple[Variable, str]]]:
    """Data leaves aligned with the units and with the rows in the factors holding ``value_vars``.

    Returns ``(unit leaves, row leaves)``, each a list of (leaf, owning factor's name).
    """
    units, rows, seen = [], [], set()
    for owner, term in terms.items():
        leaves = _value_leaves(term)
        if not value_vars & set(leaves):
            continue
        for leaf in leaves:
            if leaf in seen or leaf in exclude or not _is_data_leaf(leaf):
                continue
            length = _leading(leaf)
            name = next(
                (rv.name for rv in model.observed_RVs if model.rvs_to_values[rv] is leaf),
                leaf.name,
            )
            leaf_dims = _dims(model, name) if name in model.named_vars else ()
            if leaf_dims and leaf_dims[0] is not None and (dim or row_dim):
                if leaf_dims[0] == dim and length == size:
                    units.append((leaf, owner))
                elif n_rows is not None and leaf_dims[0] == row_dim and length == n_rows:
                    rows.append((leaf, owner))
                else:
                    continue
            elif n_rows is not None and length == n_rows:
                rows.append((leaf, owner))
            elif length == size:
                units.append((leaf, owner))
            else:
                continue
            seen.add(leaf)
    return units, rows


def _value_leaves(term: Variable) -> list[Variable]:
    """The leaves whose values enter ``term``, skipping those that only set shapes (the literal
    size vector PyMC broadcasts a factor to, a reshape's target shape, ``x.shape``)."""
    shape_only_inputs = {
        Alloc: slice(1, None),
        Reshape: slice(1, None),
        SpecifyShape: slice(1, None),
    }
    leaves, seen, stack = [], set(), [term]
    while stack:
        var = stack.pop()
        if var in seen:
            continue
        seen.add(var)
        if var.owner is None:
            leaves.append(var)
            continue
        op = var.owner.op
        if isinstance(op, Shape | Shape_i):
            continue
        inputs = list(var.owner.inputs)
        for op_type, skip in shape_only_inputs.items():
            if isinstance(op, op_type):
                del inputs[skip]
        stack.extend(inputs)
    return leaves


def _informative(leaf: Variable) -> bool:
    """Whether a data array varies across its leading axis (constant rows tell units nothing)."""
    value = leaf_value(leaf)
    if value.dtype.kind not in "biuf" or value.shape[0] < 2:
        return False
    return bool(np.any(value != value[:1]))


def _resolve_names(
    model: pm.Model, latent: str, names: Sequence[str], known: Mapping[str, DataInput]
) -> tuple[DataInput, ...]:
    out = []
    for data_name in names:
        if data_name in known:
            out.append(known[data_name])
            continue
        if data_name not in model.named_vars:
            raise AmortizationError(
                f"local['{latent}'] names '{data_name}', which is not an observed variable or "
                f"pm.Data container of the model. Known data: "
                f"{', '.join(_data_names(model)) or 'none'}."
            )
        var = model[data_name]
        node = model.rvs_to_values[var] if var in model.observed_RVs else var
        if not _is_data_leaf(node):
            raise AmortizationError(
                f"local['{latent}'] names '{data_name}', which holds no data (an observed "
                "variable or pm.Data container is needed)."
            )
        out.append(DataInput(data_name, node))
    return tuple(out)


def _data_names(model: pm.Model) -> list[str]:
    observed = [rv.name for rv in model.observed_RVs]
    return observed + [var.name for var in model.data_vars if var.name not in observed]


def _as_names(spec, what: str) -> tuple[str, ...]:
    names = (spec,) if isinstance(spec, str) else tuple(spec)
    if not names or not all(isinstance(n, str) for n in names):
        raise AmortizationError(
            f"{what} must be a data name, a list of data names or an (n_units, k) array; got "
            f"{reprlib.repr(spec)}."
        )
    return names


def _input_matrix(name: str, spec: np.ndarray, size: int) -> np.ndarray:
    matrix = np.asarray(spec)
    if matrix.dtype.kind not in "biuf":
        raise AmortizationError(
            f"The encoder input given for '{name}' has dtype {matrix.dtype}; it must be numeric."
        )
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.shape[0] != size:
        raise AmortizationError(
            f"The encoder input given for '{name}' has {matrix.shape[0]} rows but '{name}' has "
            f"{size} units; row n must describe unit n."
        )
    # A private copy: the user's array is never written to, nor aliased by our graphs.
    return np.array(matrix.reshape(size, -1), dtype=float)


def _check_local_names(model: pm.Model, local: Mapping) -> None:
    for name, spec in local.items():
        if name not in model.named_vars:
            free = ", ".join(rv.name for rv in model.free_RVs) or "none"
            raise AmortizationError(
                f"local={{'{name}': ...}} names no variable of the model. Its free variables: "
                f"{free}."
            )
        rv = model[name]
        if rv in model.observed_RVs:
            raise AmortizationError(
                f"'{name}' is observed; only free latent variables can be local."
            )
        if rv in model.deterministics:
            raise AmortizationError(
                f"'{name}' is a Deterministic; name the free variable it is computed from instead."
            )
        if rv not in model.free_RVs:
            raise AmortizationError(f"'{name}' is not a free random variable of the model.")
        if rv.type.dtype.startswith(("int", "uint", "bool")):
            raise AmortizationError(
                f"'{name}' is discrete ({rv.type.dtype}); amortized VI needs continuous local "
                "latents."
            )
        if rv.type.ndim == 0:
            raise AmortizationError(
                f"'{name}' is a scalar; a local latent needs one row per unit (a leading unit "
                "axis)."
            )
        if not isinstance(spec, IndexedLocal | str | np.ndarray | Sequence):
            raise AmortizationError(
                f"local['{name}'] must be a data name, a list of data names, an (n_units, k) "
                f"array or an IndexedLocal; got {reprlib.repr(spec)}."
            )


def analyze_model(
    model: pm.Model | None = None, local: Mapping[str, object] | None = None
) -> ModelAnalysis:
    """Find the plates, local latents, encoder inputs and mean-field latents of a model.

    Parameters
    ----------
    model : pm.Model, optional
        The model to read (from the context when omitted). It is not changed.
    local : mapping, optional
        ``{latent: inputs}`` to choose the amortized latents and their encoder inputs: a data name,
        a list of names, an (n_units, k) array, or an :class:`IndexedLocal`. Latents it does not
        name are fitted mean-field. When omitted, every latent found local (see the module's
        docstring) is amortized, its encoder fed from its Markov blanket.

    Returns
    -------
    ModelAnalysis
        Print it for a summary.

    Examples
    --------
    .. code-block:: python

        import pymc_amortize as pa

        print(pa.analyze_model(radon))
    """
    model = pm.modelcontext(model)
    _check_no_imputation(model)
    _check_no_pm_minibatch(model)
    if local is not None:
        if not isinstance(local, Mapping) or not local:
            raise AmortizationError(
                "local= must be a non-empty mapping {latent name: encoder inputs}; got "
                f"{reprlib.repr(local)}."
            )
        _check_local_names(model, local)
    initial_point = model.initial_point()
    lengths, event_shapes, mean_field = {}, {}, {}
    for rv in model.free_RVs:
        value = initial_point[model.rvs_to_values[rv].name]
        if rv.type.dtype.startswith(("int", "uint", "bool")):
            mean_field[rv.name] = "discrete"
        elif value.ndim == 0:
            mean_field[rv.name] = SCALAR_REASON
        else:
            lengths[rv.name] = int(value.shape[0])
            event_shapes[rv.name] = tuple(int(s) for s in value.shape[1:])

    terms = factorized_terms(model)
    uses = _find_uses(model, lengths, terms)
    keys: dict[str, set] = {}
    for use in uses:
        keys.setdefault(use.latent, set()).add(_plate_key(use, model, lengths))
    for name, found in list(keys.items()):
        indexed = {k for k in found if k[0] == "indexed"}
        if len(indexed) == 1:
            # Observations along the latent's own axis (e.g. one measurement per county beside
            # the houses' rows) are per-unit data of the indexed plate.
            found = keys[name] = indexed
        if len(found) > 1:
            mean_field[name] = "it meets the data through several unit axes or index arrays"
            del keys[name]

    verdicts = _apply_verdicts(model, terms, lengths, uses, keys, mean_field, local)
    if local is not None:
        for name in lengths:
            if name not in local:
                mean_field.setdefault(name, "not named in local=")
                keys.pop(name, None)
        for name, spec in local.items():
            mean_field.pop(name, None)
            key = keys.get(name)
            if isinstance(spec, IndexedLocal):
                key = {k for k in (key or set()) if k[0] == "indexed"}
                if spec.index is not None:
                    if spec.index not in model.named_vars:
                        raise AmortizationError(
                            f"IndexedLocal(index='{spec.index}') for '{name}': the model has no "
                            f"variable '{spec.index}'."
                        )
                    key = {k for k in key if k[1] is model[spec.index]}
                if not key:
                    raise AmortizationError(
                        f"'{name}' is never used as '{name}[index]' in an observation"
                        + (f" with index '{spec.index}'" if spec.index else "")
                        + ", with the index an integer pm.Data container or array; write the "
                        f"likelihood as e.g. pm.Normal('y', {name}[county_idx], ...)."
                    )
            elif key is None or next(iter(key))[0] != "row":
                dims = _dims(model, name)[:1]
                key = {("row", dims[0] if dims else lengths[name])}
            keys[name] = key
    for name in lengths:
        if name not in keys:
            mean_field.setdefault(
                name,
                "no observed variable has its leading axis as a unit axis, directly or "
                "through an index array",
            )

    # Integer arrays that index something are labels, not numeric features: never encoder inputs
    # (they are still sliced with a minibatch where they are aligned with its rows).
    index_leaves = {
        node.inputs[1]
        for term in terms.values()
        for node in applys_between(graph_inputs([term]), [term])
        if isinstance(node.op, AdvancedSubtensor) and _is_index(node.inputs[1])
    }
    groups: dict[tuple, list[str]] = {}
    for rv in model.free_RVs:  # model order, so that sampling matches values by position
        if rv.name in keys:
            groups.setdefault(next(iter(keys[rv.name])), []).append(rv.name)

    plates = []
    for key, names in groups.items():
        plate, dropped = _build_plate(
            model, key, names, lengths, event_shapes, terms, index_leaves, local
        )
        mean_field.update(dropped)
        if plate is not None:
            latents = tuple(
                replace(lat, verdict=verdicts[lat.name][0], verdict_reason=verdicts[lat.name][1])
                for lat in plate.latents
            )
            plates.append(replace(plate, latents=latents))
    ordered = [
        MeanFieldLatent(rv.name, mean_field[rv.name], verdicts.get(rv.name, ("global",))[0])
        for rv in model.free_RVs
        if rv.name in mean_field
    ]
    return ModelAnalysis(plates=tuple(plates), mean_field=tuple(ordered), factors=terms)


def _expanded(spec: object) -> bool:
    """Whether a ``local=`` spec gives the encoder more than one named input (an expanded
    domain) or an explicit matrix."""
    if isinstance(spec, np.ndarray):
        return True
    if isinstance(spec, IndexedLocal):
        return spec.unit_covariates is not None
    return not isinstance(spec, str) and len(spec) > 1


def _apply_verdicts(
    model: pm.Model,
    terms: Mapping[str, Variable],
    lengths: Mapping[str, int],
    uses: Sequence[_Use],
    keys: dict[str, set],
    mean_field: dict[str, str],
    local: Mapping[str, object] | None,
) -> dict[str, tuple[str, str]]:
    """Each latent's verdict and reason; latents that cannot be amortized leave ``keys`` for
    ``mean_field`` (with the reason), unless ``local=`` names them (then a CouplingWarning)."""
    verdicts: dict[str, tuple[str, str]] = {}
    candidates = {use.latent for use in uses}
    for name, size in lengths.items():
        found = _latent_verdict(model, name, terms, size)
        if name not in candidates and not found.indexes:
            # No term reads it unit by unit: a global, whatever its length.
            if local is not None and name in local:
                verdicts[name] = (
                    "global",
                    "no term reads it unit by unit; amortized as local= asks",
                )
            continue
        reason = None
        if found.expanded:
            pass  # "expand", and the encoder's inputs already hold the neighbours' data
        elif found.verdict != "amortize":
            reason = (
                found.reason
                + {
                    "cannot close": "; fitted mean-field, as ADVI does",
                    "expand": (
                        "; fitted mean-field, unless local= gives the encoder the neighbours' data "
                        f"(local={{'{name}': [...inputs]}})"
                    ),
                    "undecided": "; fitted mean-field",
                }[found.verdict]
            )
        else:
            plate_indexes = {k[1] for k in keys.get(name, ()) if k[0] == "indexed"}
            reads = ", ".join(
                f"'{t}' through {_leaf_label(leaf)}"
                for leaf, names in found.indexes.items()
                for t in names
            )
            if len(found.indexes) > 1:
                reason = (
                    f"its terms read it through different index arrays ({reads}); a plate ties "
                    "its rows to units through one index array, so it is fitted mean-field"
                )
            elif found.indexes and not set(found.indexes) <= plate_indexes:
                reason = (
                    f"{reads}, but no observed variable reads it through that index alone, which "
                    "a plate needs; fitted mean-field"
                )
        verdicts[name] = (found.verdict, reason or found.reason)
        if reason is None:
            continue
        if local is not None and name in local:
            verdicts[name] = (found.verdict, f"{found.reason}; amortized as local= asks")
            if not (found.verdict == "expand" and _expanded(local[name])):
                warnings.warn(
                    f"local= amortizes '{name}', but the analysis finds '{found.verdict}': "
                    f"{found.reason if found.verdict != 'amortize' else reason}. An encoder "
                    "cannot reach what per-unit parameters reach here; compare with "
                    "pm.fit(method='advi') or run pymc_amortize.amortization_gap on the fit.",
                    CouplingWarning,
                    stacklevel=4,
                )
            continue
        mean_field[name] = reason
        keys.pop(name, None)
    return verdicts


def _build_plate(
    model: pm.Model,
    key: tuple,
    names: list[str],
    lengths: Mapping[str, int],
    event_shapes: Mapping[str, tuple[int, ...]],
    terms: Mapping[str, Variable],
    index_leaves: set[Variable],
    local: Mapping[str, object] | None,
) -> tuple[Plate | None, dict[str, str]]:
    """One plate from the latents sharing a plate key; latents that cannot join it go mean-field."""
    dropped = {}
    sizes = {lengths[n] for n in names}
    if len(sizes) > 1:
        # Vectors of different lengths read through one index or unit axis (e.g. two coefficient
        # vectors over a factor's levels) are not one set of units: no plate, whatever they are.
        return None, {
            n: (
                "read through the same index or unit axis as "
                f"{', '.join(repr(m) for m in names if m != n)}, but the lengths differ "
                f"({', '.join(f'{m}: {lengths[m]}' for m in names)}): these vectors share no set "
                "of units to amortize over"
            )
            for n in names
        }
    size = sizes.pop()
    dims = {(_dims(model, n) or (None,))[0] for n in names}
    dim = dims.pop() if len(dims) == 1 else None
    index = None
    row_dim = None
    n_rows = None
    if key[0] == "indexed":
        index_leaf = key[1]
        index_value = leaf_value(index_leaf)
        label = index_leaf.name if index_leaf.name in model.named_vars else "the index array"
        if index_value.size and (index_value.min() < 0 or index_value.max() >= size):
            raise AmortizationError(
                f"{label} has values in [{index_value.min()}, {index_value.max()}], but "
                f"'{names[0]}' has {size} units; the index must lie in [0, {size - 1}]."
            )
        index_key = index_leaf.name if index_leaf.name in model.named_vars else "index"
        index = DataInput(index_key, index_leaf)
        n_rows = int(index_value.size)
        row_dim = (_dims(model, index_key) or (None,))[0] if index_key != "index" else None
        if row_dim is None:
            for rv in model.observed_RVs:
                if _leading(model.rvs_to_values[rv]) == n_rows and _dims(model, rv.name):
                    row_dim = _dims(model, rv.name)[0]
                    break
        if n_rows == size and not (dim and row_dim and dim != row_dim):
            reason = (
                f"its units and the rows of {label} have the same length {size}, so per-unit "
                "and per-row data cannot be told apart; give both dims"
            )
            return None, dict.fromkeys(names, reason)
    plate_name = dim or (f"{names[0]}_unit" if index is None else f"{index.key}_unit")
    value_vars = {model.rvs_to_values[model[n]] for n in names}
    unit_leaves, row_leaves = _aligned_leaves(
        model,
        terms,
        value_vars,
        size=size,
        n_rows=n_rows,
        dim=dim,
        row_dim=row_dim,
        exclude={index.node} if index is not None else set(),
    )
    counter: dict[str, int] = {}
    unit_data = [_data_input(model, leaf, owner, counter) for leaf, owner in unit_leaves]
    row_data = [_data_input(model, leaf, owner, counter) for leaf, owner in row_leaves]

    latents = []
    for name in names:
        value_var = model.rvs_to_values[model[name]]
        own_units, own_rows = _aligned_leaves(
            model,
            terms,
            {value_var},
            size=size,
            n_rows=n_rows,
            dim=dim,
            row_dim=row_dim,
            exclude=index_leaves | ({index.node} if index is not None else set()),
        )
        own = {leaf for leaf, _ in own_units + own_rows}
        unit_inputs = tuple(d for d in unit_data if d.node in own and _informative(d.node))
        row_inputs = tuple(d for d in row_data if d.node in own and _informative(d.node))
        matrix = None
        spec = local.get(name) if local is not None else None
        known = {d.key: d for d in unit_data + row_data}
        if isinstance(spec, np.ndarray):
            matrix, unit_inputs, row_inputs = _input_matrix(name, spec, size), (), ()
        elif isinstance(spec, IndexedLocal):
            if spec.inputs is not None:
                row_inputs = _resolve_names(
                    model, name, _as_names(spec.inputs, f"IndexedLocal(inputs=) of '{name}'"), known
                )
            if isinstance(spec.unit_covariates, np.ndarray):
                matrix = _input_matrix(name, spec.unit_covariates, size)
                unit_inputs = ()
            elif spec.unit_covariates is not None:
                unit_inputs = (
                    _resolve_names(
                        model, name, _as_names(spec.unit_covariates, "unit_covariates"), known
                    )
                    if len(spec.unit_covariates)
                    else ()
                )
        elif spec is not None:
            names_given = _as_names(spec, f"local['{name}']")
            given = _resolve_names(model, name, names_given, known)
            unit_inputs = tuple(d for d in given if _leading(d.node) == size and d not in row_data)
            row_inputs = tuple(d for d in given if d not in unit_inputs)
        if index is None:  # a row plate's rows are its units
            unit_inputs, row_inputs = unit_inputs + row_inputs, ()
        for data in unit_inputs:
            _check_length(name, data, size, "unit")
        for data in row_inputs:
            _check_length(name, data, n_rows, "row")
        if matrix is None and not unit_inputs and not row_inputs:
            dropped[name] = "no data in its Markov blanket is aligned with its units or rows"
            continue
        latents.append(
            LocalLatent(
                name=name,
                value_name=value_var.name,
                event_shape=event_shapes[name],
                unit_inputs=unit_inputs,
                row_inputs=row_inputs,
                input_matrix=matrix,
            )
        )
    if not latents:
        return None, dropped
    plate = Plate(
        name=plate_name,
        dim=dim,
        row_dim=row_dim,
        size=size,
        latents=tuple(latents),
        index=index,
        batched_units=tuple(unit_data),
        batched_rows=tuple(row_data),
    )
    return plate, dropped


def _check_length(latent: str, data: DataInput, expected: int, what: str) -> None:
    length = _leading(data.node)
    if length != expected:
        raise AmortizationError(
            f"'{data.key}' feeds the encoder of '{latent}' but has leading length "
            f"{length if length is not None else 'none (a scalar)'}, while '{latent}' has "
            f"{expected} {what}s; row n of the data must describe {what} n."
        )
    if leaf_value(data.node).dtype.kind not in "biuf":
        raise AmortizationError(
            f"'{data.key}' has dtype {leaf_value(data.node).dtype}; encoder inputs are numeric."
        )
