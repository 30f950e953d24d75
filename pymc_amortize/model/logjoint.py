"""The model's log joint on a batch of one plate's units, for several posterior draws at once.

One builder for every plate kind and any number of plates. The model's per-variable log densities
(``model.logp(sum=False)``) are split into the *batch plate's* factors (those that contain its
local latents or its index) and the rest. Under minibatching the batch plate's factors are cloned
with the local values, the index, and every data array aligned with its units or rows replaced by
batch-sized placeholders (the dims' lengths follow), and scaled by N / B; PyMC refuses
``total_size`` on unobserved variables, so this scaling is ours. Other plates' latents enter whole:
their encoders see all their rows, so the estimate stays unbiased for crossed groupings. Draws are
substituted last, with ``vectorize_graph``, giving one log joint per Monte Carlo draw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.replace import clone_replace, graph_replace, vectorize_graph
from pytensor.graph.traversal import ancestors, applys_between, graph_inputs
from pytensor.tensor.basic import Alloc
from pytensor.tensor.shape import SpecifyShape
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.errors import AmortizationError
from pymc_amortize.model.analysis import factorized_terms, strip_sums
from pymc_amortize.model.plates import UnitBatch
from pymc_amortize.model.types import DataInput, ModelAnalysis, Plate

__all__ = ["LogJoint", "build_logjoint", "compile_log_terms", "plate_factors"]


def _term_sum(term: TensorVariable, has_draw_axis: bool) -> TensorVariable:
    """Sum everything but the leading draw axis; a term no draw enters has no such axis."""
    return term.sum(axis=tuple(range(1, term.ndim))) if has_draw_axis else term.sum()


@dataclass(frozen=True)
class LogJoint:
    """Log joint of one draw, as graphs with placeholders for the batch.

    Attributes
    ----------
    batch_plate : Plate or None
        The plate whose units are minibatched; None at full batch.
    batch_terms, other_terms : list of (str, TensorVariable)
        Factors (by variable name) of the batch plate (scaled by N / B) and the rest.
    global_values : dict
        Value variable of every free variable that is not a local latent, by name.
    local_values : dict
        Value variable (or, for the batch plate, a (B, ...) placeholder) of each local latent.
    unit_data, row_data : dict
        Placeholder -> data leaf of the batch plate's unit- and row-aligned arrays.
    slot : TensorVariable or None
        Placeholder of the batch slot of each batch row (the index remapped to the batch).
    row_terms : tuple of bool
        Per batch factor, whether it is one term per row (it reads ``slot``): the factors a padded
        batch weights (:attr:`~pymc_amortize.model.plates.UnitBatch.row_weight`).
    """

    batch_plate: Plate | None
    batch_terms: list[tuple[str, TensorVariable]]
    other_terms: list[tuple[str, TensorVariable]]
    global_values: dict[str, TensorVariable]
    local_values: dict[str, TensorVariable]
    unit_data: dict[TensorVariable, Variable]
    row_data: dict[TensorVariable, Variable]
    slot: TensorVariable | None
    row_terms: tuple[bool, ...] = ()

    def terms_per_draw(
        self,
        global_draws: Mapping[str, TensorVariable],
        local_draws: Mapping[str, TensorVariable],
        batch: UnitBatch | None,
    ) -> tuple[list[TensorVariable], list[TensorVariable], list[bool], list[bool]]:
        """The batch and other factors with the batch's data and the draws substituted, and
        whether each has a leading draw axis."""
        replace = {self.global_values[k]: v for k, v in global_draws.items()}
        replace |= {self.local_values[k]: v for k, v in local_draws.items()}
        batch_terms = [t for _, t in self.batch_terms]
        other_terms = [t for _, t in self.other_terms]
        if self.batch_plate is not None and batch is not None:
            data = {p: batch.take_units(leaf) for p, leaf in self.unit_data.items()}
            data |= {p: batch.take_rows(leaf) for p, leaf in self.row_data.items()}
            if self.slot is not None:
                data[self.slot] = batch.unit_of_row
            # Data first, draws second: clone_replace clones every ancestor of its outputs, so run
            # after the draws were in, it would copy the encoder graph and its backward pass.
            batch_terms = clone_replace(batch_terms, data, rebuild_strict=False)
        terms = batch_terms + other_terms
        drawn = [bool(set(replace) & set(ancestors([t]))) for t in terms]
        terms = vectorize_graph(terms, replace) if replace else terms
        n = len(batch_terms)
        return terms[:n], terms[n:], drawn[:n], drawn[n:]

    def per_draw(
        self,
        global_draws: Mapping[str, TensorVariable],
        local_draws: Mapping[str, TensorVariable],
        batch: UnitBatch | None,
    ) -> TensorVariable:
        """log p(x, θ, z) for each of S draws, the batch plate's factors scaled by N / B.

        ``global_draws`` have shape ``(S, *shape)``; local draws ``(S, B or N, *event_shape)``.
        """
        batch_terms, other_terms, batch_drawn, other_drawn = self.terms_per_draw(
            global_draws, local_draws, batch
        )
        scale = batch.scale if batch is not None else 1.0
        weight = batch.row_weight if batch is not None else None
        row_terms = self.row_terms or (False,) * len(batch_terms)
        total = pt.zeros(())
        for term, has_draw_axis, per_row in zip(batch_terms, batch_drawn, row_terms, strict=True):
            if weight is not None and per_row:
                term = term * _along_rows(weight, term, has_draw_axis)
            total = total + scale * _term_sum(term, has_draw_axis)
        for term, has_draw_axis in zip(other_terms, other_drawn, strict=True):
            total = total + _term_sum(term, has_draw_axis)
        return total

    def per_unit(
        self,
        model: pm.Model,
        plate: Plate,
        global_draws: Mapping[str, TensorVariable],
        local_draws: Mapping[str, TensorVariable],
    ) -> tuple[TensorVariable, TensorVariable]:
        """Full batch: the factors outside ``plate`` per draw (S,), and those of each of its units
        per draw (S, N): its latents' priors and the likelihood of its rows (summed per unit).

        Only for a log joint built without a batch plate.
        """
        if self.batch_plate is not None:
            raise AmortizationError("per_unit needs the full-batch log joint.")
        _, terms, _, drawn = self.terms_per_draw(global_draws, local_draws, None)
        names = plate_factors(dict(self.other_terms), model, plate)
        n_draws = next(iter({**global_draws, **local_draws}.values())).shape[0]
        rest = pt.zeros((n_draws,))
        factors = []
        for (name, _), term, has_draw_axis in zip(self.other_terms, terms, drawn, strict=True):
            if name in names:
                factors.append((name, term, has_draw_axis))
            else:
                rest = rest + _term_sum(term, has_draw_axis)
        units = self.sum_per_unit(
            model,
            plate,
            factors,
            pt.zeros((n_draws, plate.size)),
            pt.as_tensor(plate.unit_of_row),
        )
        return rest, units

    @staticmethod
    def sum_per_unit(
        model: pm.Model,
        plate: Plate,
        factors: Sequence[tuple[str, TensorVariable, bool]],
        units: TensorVariable,
        unit_of_row: TensorVariable,
        *,
        skip_undrawn: bool = False,
    ) -> TensorVariable:
        """Add each of ``plate``'s factors, summed per unit, to ``units`` (S, B).

        A factor of an observed variable with one entry per row of an indexed plate is summed
        into each row's unit; any other (a latent's prior, a row plate's likelihood) has one entry
        per unit already.

        Parameters
        ----------
        model : pm.Model
            The model the factors come from.
        plate : Plate
            The plate whose units the factors are summed over.
        factors : sequence of (str, TensorVariable, bool)
            Each factor's variable name, its graph with a leading draw axis, and whether a draw
            enters it (it then has that axis).
        units : TensorVariable
            (S, B) sums to add to: zeros for the plate's N units, or for a batch of B of them.
        unit_of_row : TensorVariable
            int64 (R,) position in ``units`` of each row the factors hold.
        skip_undrawn : bool, default False
            Leave out a factor no draw enters (a constant) rather than refuse it.

        Returns
        -------
        TensorVariable
            ``units`` plus every factor's per-unit sums.
        """
        for name, term, has_draw_axis in factors:
            if not has_draw_axis and skip_undrawn:
                continue
            if not has_draw_axis or term.ndim < 2:
                raise AmortizationError(
                    f"The log density of '{name}' couples the units of plate '{plate.name}', so "
                    "it has no per-unit terms."
                )
            per_row = term.sum(axis=tuple(range(2, term.ndim)))
            var = model[name]
            length = model.rvs_to_values[var].type.shape[0] if var in model.observed_RVs else None
            rows = plate.index is not None and var in model.observed_RVs
            if rows and length not in (None, plate.n_rows):
                rows = False
            if rows:
                units = pt.inc_subtensor(units[:, unit_of_row], per_row)
            else:
                units = units + per_row
        return units


def _along_rows(
    weight: TensorVariable, term: TensorVariable, has_draw_axis: bool
) -> TensorVariable:
    """``weight`` (R,) shaped to broadcast along ``term``'s row axis (after its draw axis)."""
    lead = 1 if has_draw_axis else 0
    return pt.shape_padright(pt.shape_padleft(weight, lead), term.ndim - lead - 1)


def plate_factors(terms: Mapping[str, TensorVariable], model: pm.Model, plate: Plate) -> set[str]:
    """The names of the factors among ``terms`` that read ``plate``: its latents or its index.

    Parameters
    ----------
    terms : mapping of str to TensorVariable
        Log-density factors by variable name.
    model : pm.Model
        The model the factors come from.
    plate : Plate
        The plate whose factors are wanted.

    Returns
    -------
    set of str
    """
    roots = {model.rvs_to_values[model[name]] for name in plate.latent_names}
    if plate.index is not None:
        roots.add(plate.index.node)
    return {name for name, term in terms.items() if roots & set(graph_inputs([term]))}


def _free_leading_lengths(terms: list[TensorVariable]) -> list[TensorVariable]:
    """Let the leading length of each factor follow its inputs.

    PyMC broadcasts a factor to its variable's size, which is a literal when the variable has no
    dims (``Alloc(logp, 1500)``, ``SpecifyShape``). On a batch, that length is the batch's.
    """
    replace = {}
    for node in applys_between(graph_inputs(terms), terms):
        if isinstance(node.op, SpecifyShape):
            replace[node.outputs[0]] = node.inputs[0]
        elif isinstance(node.op, Alloc):
            value, *shape = node.inputs
            if value.ndim == len(shape) and shape and not value.type.broadcastable[0]:
                replace[node.outputs[0]] = pt.alloc(value, value.shape[0], *shape[1:])
    return graph_replace(terms, replace, strict=False) if replace else terms


def _gathered_leaf(leaf: Variable) -> Variable:
    """A data leaf that a minibatch gathers from, as a shared variable holding the same array.

    PyMC gives observed values as constants, and PyTensor's NUMBA backend compiles constants into
    the step's machine code, so every new data set missed PyTensor's compile cache and recompiled
    the step (with ``PlateLayout.size`` and the pooled encoder's count standardisation, the other
    data-dependent literals: a Poisson GLMM refitted on 20,000 groups after 3,000 recompiled in
    5.8 s, and now finds the cache, 0.4 s). Rows drawn at random are never constant-folded, so
    nothing is lost, and ``borrow=True`` shares the array rather than copying it.
    """
    if isinstance(leaf, Constant):
        # The static shape of the trailing axes is kept: a length-1 axis must stay broadcastable.
        shape = (None, *leaf.type.shape[1:])
        return pytensor.shared(leaf.data, name=leaf.name, shape=shape, borrow=True)
    return leaf


def _batch_leaf(data: DataInput, batch_buffers: Mapping[str, np.ndarray] | None) -> Variable:
    """What a minibatch reads ``data`` from: the model's array (see :func:`_gathered_leaf`), or
    the host's batch buffer of a fit on ``unit_data``, borrowed."""
    if batch_buffers is None:
        return _gathered_leaf(data.node)
    shape = (None, *data.node.type.shape[1:])
    return pytensor.shared(batch_buffers[data.key], name=data.key, shape=shape, borrow=True)


def build_logjoint(
    model: pm.Model,
    analysis: ModelAnalysis,
    *,
    batch_plate: Plate | None = None,
    batch_buffers: Mapping[str, np.ndarray] | None = None,
) -> LogJoint:
    """The model's log joint with the ``batch_plate``'s factors ready for a minibatch of its units.

    With ``batch_buffers`` (``{data key: (B, ...) array}``, a fit on ``unit_data``) the batch
    plate's unit-aligned data are read whole from those arrays, which the host fills before each
    step, instead of being gathered from the model's arrays.

    Raises :class:`AmortizationError` when a factor of the batch plate couples its units (it has
    no per-unit axis, e.g. a random walk over units), which a minibatch cannot estimate.
    """
    # The analysis's own factors: its data leaves are these graphs' (see ModelAnalysis.factors).
    terms = dict(analysis.factors) or factorized_terms(model)
    local_names = set(analysis.latent_names)
    global_values = {
        model.rvs_to_values[rv].name: model.rvs_to_values[rv]
        for rv in model.free_RVs
        if rv.name not in local_names
    }
    local_values = {
        model.rvs_to_values[model[n]].name: model.rvs_to_values[model[n]] for n in local_names
    }
    if batch_plate is None:
        return LogJoint(
            batch_plate=None,
            batch_terms=[],
            other_terms=list(terms.items()),
            global_values=global_values,
            local_values=local_values,
            unit_data={},
            row_data={},
            slot=None,
        )

    replace: dict[Variable, Variable] = {}
    # Placeholders are made by TensorType(...)(name=...): pt.tensor first parses its name as a
    # dtype and raises on names such as Bambi's "1|g_offset".
    for latent in batch_plate.latents:
        value_var = model.rvs_to_values[model[latent.name]]
        placeholder = pt.TensorType(value_var.dtype, shape=(None, *latent.event_shape))(
            name=f"{latent.value_name}_batch"
        )
        replace[value_var] = placeholder
        local_values[latent.value_name] = placeholder
    unit_data, row_data = {}, {}
    for data in batch_plate.batched_units:
        placeholder = pt.TensorType(data.node.dtype, shape=(None, *data.node.type.shape[1:]))(
            name=f"{data.key}_units"
        )
        replace[data.node], unit_data[placeholder] = placeholder, _batch_leaf(data, batch_buffers)
    for data in batch_plate.batched_rows:
        placeholder = pt.TensorType(data.node.dtype, shape=(None, *data.node.type.shape[1:]))(
            name=f"{data.key}_rows"
        )
        replace[data.node], row_data[placeholder] = placeholder, _batch_leaf(data, batch_buffers)
    slot = None
    if batch_plate.index is not None:
        slot = pt.TensorType("int64", shape=(None,))(name=f"{batch_plate.index.key}_slot")
        replace[batch_plate.index.node] = slot.astype(batch_plate.index.node.dtype)
    # The dims' lengths follow the batch: the units' from the first local placeholder.
    n_units = local_values[batch_plate.latents[0].value_name].shape[0]
    if batch_plate.dim is not None:
        replace[model.dim_lengths[batch_plate.dim]] = n_units
    if batch_plate.row_dim is not None and slot is not None:
        replace[model.dim_lengths[batch_plate.row_dim]] = slot.shape[0]

    names = plate_factors(terms, model, batch_plate)
    batch_names = [n for n in terms if n in names]
    # A potential written as a sum over rows (pm.Potential(logp(...).sum())) is its per-row
    # terms summed: sliced with the batch's rows like an observed variable's factor.
    potentials = {pot.name for pot in model.potentials}
    relaxed = _free_leading_lengths(
        [strip_sums(terms[n]) if n in potentials else terms[n] for n in batch_names]
    )
    cloned = clone_replace(relaxed, replace, rebuild_strict=False)
    for name, term in zip(batch_names, cloned, strict=True):
        if term.ndim == 0:
            raise AmortizationError(
                f"The log density of '{name}' couples the units of plate '{batch_plate.name}' "
                "(it is not one term per unit), so it cannot be estimated from a minibatch of "
                "units. Fit with batch_size=None."
            )
        if term.type.shape[0] is not None and term.type.shape[0] != 1:
            raise AmortizationError(
                f"The log density of '{name}' has a fixed length of {term.type.shape[0]} in the "
                f"model, so it cannot be evaluated on a minibatch of plate '{batch_plate.name}'. "
                "Give the unit axis a dim (pm.Model(coords={'unit': range(N)}) and dims='unit'), "
                "or fit with batch_size=None."
            )
    return LogJoint(
        batch_plate=batch_plate,
        batch_terms=list(zip(batch_names, cloned, strict=True)),
        other_terms=[(n, t) for n, t in terms.items() if n not in names],
        global_values=global_values,
        local_values=local_values,
        unit_data=unit_data,
        row_data=row_data,
        slot=slot,
        row_terms=tuple(slot is not None and slot in graph_inputs([t]) for t in cloned),
    )


def compile_log_terms(
    model: pm.Model, analysis: ModelAnalysis, plate: Plate | None
) -> tuple[Callable, list[str]]:
    """A compiled function of value-space draws ``(S, *shape)`` of every free variable, in the
    returned order, to (log p of all but the plate's factors (S,), those factors per unit (S, N));
    with ``plate=None``, to (log p (S,),). Used by the PSIS and gap diagnostics.
    """
    logjoint = build_logjoint(model, analysis)
    draws = {
        name: pt.TensorType(var.dtype, shape=(None, *var.type.shape))(name=f"{name}_draws")
        for name, var in (logjoint.global_values | logjoint.local_values).items()
    }
    global_draws = {k: v for k, v in draws.items() if k in logjoint.global_values}
    local_draws = {k: v for k, v in draws.items() if k in logjoint.local_values}
    if plate is None:
        outputs = [logjoint.per_draw(global_draws, local_draws, None)]
    else:
        outputs = list(logjoint.per_unit(model, plate, global_draws, local_draws))
    return compile_pymc(list(draws.values()), outputs), list(draws)
