"""The unit-locality dataflow: what a log-density factor computes along one source's unit axis.

A small dataflow runs from one source (a latent's value variable, or a data array aligned with
its units) through a log-density factor. Every variable gets one state:

``None``
    independent of the source;
``("unit", axis)``
    element i along ``axis`` depends on unit i only;
``("row", axis, index)``
    element i along ``axis`` depends on unit ``index[i]`` only;
``("coupled", kind, reason)``
    elements mix units: ``kind`` is "mix" (every unit reads all of them: a sum, cumsum, matrix
    product, solve over the unit axis), "neighbour" (an element reads a few other units: a
    shift, two indexes meeting) or "unknown" (an operation the analysis does not follow);
    ``reason`` names the operation.

:func:`unit_flow` runs it; :mod:`pymc_amortize.model.analysis` turns the states of a latent's
factors into its verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import graph_inputs, io_toposort
from pytensor.raise_op import CheckAndRaise
from pytensor.scalar.basic import Second
from pytensor.scan.op import Scan
from pytensor.tensor.basic import Alloc, Join, ScalarFromTensor, Split, TensorFromScalar
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

from pymc_amortize.model.types import leaf_value

__all__ = ["is_data_leaf", "is_index", "leaf_label", "unit_flow"]


# -- data leaves ---------------------------------------------------------------------------------
def is_data_leaf(var: Variable) -> bool:
    """Whether ``var`` is an array of data: a shared variable or constant with an axis."""
    if var.owner is not None or isinstance(var.type, RandomType):
        return False
    return isinstance(var, SharedVariable | Constant) and getattr(var.type, "ndim", 0) > 0


def is_index(var: Variable) -> bool:
    """Whether ``var`` is an integer data vector (an index array of rows into units)."""
    return is_data_leaf(var) and var.type.ndim == 1 and var.type.dtype.startswith(("int", "uint"))


# -- the dataflow --------------------------------------------------------------------------------
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
    return f"rows through {leaf_label(state[2])}"


def leaf_label(leaf: Variable) -> str:
    """A data leaf as a message names it: its name, else "an unnamed array of length n"."""
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
    if not is_index(entry) or width != 1:
        return _coupled(
            "unknown",
            f"an index that is not an integer data vector ({_op_label(op)} with {entry})",
        )
    contiguous = advanced == list(range(advanced[0], advanced[-1] + 1))
    out_axis = sum(1 for p in range(advanced[0]) if isinstance(entries[p], slice))
    return ("row", out_axis if contiguous else 0, entry)


def _transfer(node, states: list) -> tuple | None:
    """The state of ``node``'s outputs from those of its inputs (see the module docstring)."""
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
