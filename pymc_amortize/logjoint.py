"""The model's log joint on a minibatch of units, for several posterior draws at once.

PyMC refuses ``total_size`` on unobserved variables, so the N/B scaling of the local prior terms is
ours: the model's per-term log densities are cloned with the local value variables, the unit data
and the unit dim length replaced by batch-sized tensors, then vectorised over Monte Carlo draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import pymc as pm
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.replace import clone_replace, vectorize_graph
from pytensor.graph.traversal import ancestors
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.analysis import UnitPlate
from pymc_amortize.errors import AmortizationError

__all__ = ["BatchLogJoint", "build_batch_logjoint"]


@dataclass(frozen=True)
class BatchLogJoint:
    """Log joint of one draw on one batch, as a graph with placeholder inputs.

    Attributes
    ----------
    global_terms, unit_terms : list of TensorVariable
        Per-variable log densities; unit terms have one leading entry per batch unit.
    global_values : dict
        Value variable of each global latent (by value name), as in the model.
    local_values : dict
        Batch placeholder (B, *event_shape) of each local latent (by value name).
    unit_data : dict
        Batch placeholder of each unit data array (by name) and the model's full-data node.
    batch_size : TensorVariable
        Placeholder of the number of units in the batch.
    """

    global_terms: list[TensorVariable]
    unit_terms: list[TensorVariable]
    global_values: dict[str, TensorVariable]
    local_values: dict[str, TensorVariable]
    unit_data: dict[str, tuple[TensorVariable, Variable]]
    batch_size: TensorVariable

    def _terms_per_draw(
        self,
        global_draws: dict[str, TensorVariable],
        local_draws: dict[str, TensorVariable],
        unit_data: dict[str, TensorVariable],
        batch_size: TensorVariable,
    ) -> tuple[list[TensorVariable], list[bool]]:
        """Every term with the draws and the batch's data substituted, and whether it has a
        leading draw axis (a term no draw enters has none)."""
        replace = {self.global_values[k]: v for k, v in global_draws.items()}
        replace |= {self.local_values[k]: v for k, v in local_draws.items()}
        terms = self.global_terms + self.unit_terms
        drawn = [bool(set(replace) & set(ancestors([term]))) for term in terms]
        data = {placeholder: unit_data[name] for name, (placeholder, _) in self.unit_data.items()}
        data[self.batch_size] = batch_size
        # Data first, draws second: clone_replace clones every ancestor of its outputs, so run
        # after the draws were in, it would copy the encoder graph, and the draws and the entropy
        # would each get their own copy and their own (duplicated) backward pass.
        terms = clone_replace(terms, data, rebuild_strict=False)
        return vectorize_graph(terms, replace), drawn

    def per_draw(
        self,
        global_draws: dict[str, TensorVariable],
        local_draws: dict[str, TensorVariable],
        unit_data: dict[str, TensorVariable],
        batch_size: TensorVariable,
        scale: TensorVariable,
    ) -> TensorVariable:
        """log p(x, θ, z) for each of S draws, the unit terms scaled by ``scale`` (N/B).

        ``global_draws`` have shape (S, *shape), ``local_draws`` (S, B, *event_shape).
        """
        terms, drawn = self._terms_per_draw(global_draws, local_draws, unit_data, batch_size)
        n_global = len(self.global_terms)
        total = pt.zeros(())
        for i, (term, has_draw_axis) in enumerate(zip(terms, drawn, strict=True)):
            # Sum everything but the leading draw axis; a term no draw enters has no such axis.
            summed = term.sum(axis=tuple(range(1, term.ndim))) if has_draw_axis else term.sum()
            total = total + (summed if i < n_global else scale * summed)
        return total

    def per_unit(
        self,
        global_draws: dict[str, TensorVariable],
        local_draws: dict[str, TensorVariable],
        unit_data: dict[str, TensorVariable],
        batch_size: TensorVariable,
    ) -> tuple[TensorVariable, TensorVariable]:
        """log p(θ) per draw (S,) and log p(x_n, z_n | θ) per draw and unit (S, B), unscaled.

        Needs every unit term to have a leading unit axis (one factor per unit).
        """
        terms, drawn = self._terms_per_draw(global_draws, local_draws, unit_data, batch_size)
        n_global = len(self.global_terms)
        n_draws = next(iter((global_draws | local_draws).values())).shape[0]
        global_total = pt.zeros((n_draws,))
        for term, has_draw_axis in zip(terms[:n_global], drawn[:n_global], strict=True):
            global_total += (
                term.sum(axis=tuple(range(1, term.ndim))) if has_draw_axis else term.sum()
            )
        unit_total = pt.zeros((n_draws, batch_size))
        for term, has_draw_axis in zip(terms[n_global:], drawn[n_global:], strict=True):
            unit_axis = 1 if has_draw_axis else 0
            if term.ndim <= unit_axis:
                raise AmortizationError(
                    "A log density term of the model couples the units (it has no per-unit "
                    "axis), so the log joint does not factorise over units."
                )
            unit_total += term.sum(axis=tuple(range(unit_axis + 1, term.ndim)))
        return global_total, unit_total


def split_terms(
    varlist: list[Variable],
    terms: list[TensorVariable],
    per_batch: set[Variable],
    *,
    minibatch: bool,
    check_fixed_length: bool,
) -> tuple[list[TensorVariable], list[TensorVariable]]:
    """Sort the model's terms into global ones and per-unit ones (those a batch input enters).

    Under minibatching a per-unit term must have one entry per unit (or row) and a length that
    follows the batch; anything else is refused with a message naming the variable.
    """
    global_terms, unit_terms = [], []
    for var, term in zip(varlist, terms, strict=True):
        if not per_batch & set(ancestors([term])):
            global_terms.append(term)
            continue
        if minibatch and term.ndim == 0:
            raise AmortizationError(
                f"The log density of '{var.name}' couples the units (it is not one term per unit), "
                "so it cannot be estimated from a minibatch of units. Fit with batch_size=None."
            )
        if minibatch and check_fixed_length and term.type.shape[0] is not None:
            raise AmortizationError(
                f"The log density of '{var.name}' has a fixed length of {term.type.shape[0]} "
                "units in the model (a literal shape= or a parameter array of that length), so it "
                "cannot be evaluated on a minibatch of units. Give the unit axis a dim "
                "(pm.Model(coords={'unit': range(N)}) and dims='unit'), or fit with "
                "batch_size=None."
            )
        unit_terms.append(term)
    return global_terms, unit_terms


def global_value_vars(model: pm.Model, local_rvs: list[Variable]) -> dict[str, TensorVariable]:
    """Value variable of each free variable that is not local, by name."""
    return {
        model.rvs_to_values[rv].name: model.rvs_to_values[rv]
        for rv in model.free_RVs
        if rv not in local_rvs
    }


def build_batch_logjoint(model: pm.Model, plate: UnitPlate, *, minibatch: bool) -> BatchLogJoint:
    """Clone the model's log density with batch-sized placeholders for every per-unit quantity."""
    local_rvs = [model[name] for name in plate.latent_names]
    local_value_vars = [model.rvs_to_values[rv] for rv in local_rvs]
    replace: dict[Variable, Variable] = {}
    local_values = {}
    for latent, value_var in zip(plate.latents, local_value_vars, strict=True):
        placeholder = pt.tensor(
            f"{latent.value_name}_batch",
            dtype=value_var.dtype,
            shape=(None, *latent.event_shape),
        )
        replace[value_var] = placeholder
        local_values[latent.value_name] = placeholder

    unit_data = {}
    for name in plate.unit_data:
        var = model[name]
        node = model.rvs_to_values[var] if var in model.observed_RVs else var
        placeholder = pt.tensor(
            f"{name}_batch", dtype=node.dtype, shape=(None, *node.type.shape[1:])
        )
        replace[node] = placeholder
        unit_data[name] = (placeholder, node)

    batch_size = pt.scalar("n_units_in_batch", dtype="int64")
    if plate.dim is not None:
        replace[model.dim_lengths[plate.dim]] = batch_size

    varlist = model.free_RVs + model.observed_RVs + model.potentials
    terms = model.logp(vars=varlist, sum=False)
    # rebuild_strict=False re-derives every node's static type, so (N,)-shaped types become (B,).
    terms = clone_replace(terms, replace, rebuild_strict=False)

    global_terms, unit_terms = split_terms(
        varlist,
        terms,
        set(replace.values()) - {batch_size},
        minibatch=minibatch,
        check_fixed_length=True,
    )
    global_values = global_value_vars(model, local_rvs)
    return BatchLogJoint(
        global_terms=global_terms,
        unit_terms=unit_terms,
        global_values=global_values,
        local_values=local_values,
        unit_data=unit_data,
        batch_size=batch_size,
    )
