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
UAI 2024): :func:`~pymc_amortize.model.dataflow.unit_flow` follows its units through every factor
that reads it (its prior, observed variables, potentials, other latents' priors). *amortize*: its
prior is one term per unit and each reading term reads it unit by unit or through one index
array; *expand*: a unit's terms read a neighbour's latent or data; *cannot close*: the prior
couples the units (random walk, AR, MvNormal, ZeroSum) or a term reads them all together (cumsum,
a product over the units); *undecided*: an operation the dataflow does not follow. All but
*amortize* (and *expand* whose neighbours' data the encoder already reads) are fitted mean-field
with the reason, unless ``local=`` names the latent (then a
:class:`~pymc_amortize.CouplingWarning`).

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
from pytensor.graph.traversal import ancestors, applys_between, graph_inputs
from pytensor.tensor.basic import Alloc
from pytensor.tensor.elemwise import CAReduce, DimShuffle
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape
from pytensor.tensor.subtensor import AdvancedSubtensor

from pymc_amortize.errors import AmortizationError, CouplingWarning
from pymc_amortize.model.dataflow import is_data_leaf, is_index, leaf_label, unit_flow
from pymc_amortize.model.types import (
    SCALAR_REASON,
    DataInput,
    IndexedLocal,
    LocalLatent,
    MeanFieldLatent,
    ModelAnalysis,
    Plate,
    leaf_value,
)

__all__ = [
    "VERDICTS",
    "analyze_model",
    "data_value",
    "factorized_terms",
    "reads_other_units",
    "strip_sums",
]

#: The paper's classes (Margossian & Blei, UAI 2024) and "undecided" (the graph cannot say).
VERDICTS = ("amortize", "expand", "cannot close", "undecided", "global")


# -- reading values and shapes -------------------------------------------------------------------
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


def _leading(var: Variable) -> int | None:
    value = leaf_value(var)
    return int(value.shape[0]) if value.ndim else None


def _dims(model: pm.Model, name: str | None) -> tuple[str, ...]:
    return tuple(model.named_vars_to_dims.get(name) or ()) if name else ()


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
        if not is_index(index) or any(getattr(r.type, "ndim", 0) or 0 for r in rest):
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


# -- the verdict: what the graph computes along a latent's unit axis (model.dataflow) ---------
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
            if is_data_leaf(leaf) and not is_index(leaf) and leaf not in arrays:
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
                        leaf_label(v),
                    )
                    for v in (prev, leaf)
                ]
                return labels[0], labels[1]
    return None


def strip_sums(term: Variable) -> Variable:
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
            term = strip_sums(term)
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
                    not is_data_leaf(leaf)
                    or is_index(leaf)
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
                        leaf_label(leaf),
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
    reads += [f"'{t}' through {leaf_label(leaf)}" for leaf, names in indexes.items() for t in names]
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


def reads_other_units(model: pm.Model, terms: Mapping[str, Variable], name: str) -> bool:
    """Whether a log-density term reads latent ``name`` other than unit by unit, or row by row
    through one index array: a neighbour's value (a chain, an HMM) or all units at once.

    The *expand* verdict also covers a unit's terms that read its neighbours' *data* only (the saw
    series); those leave the units' latents independent given θ, and this tells the two apart
    (the conditional family's Newton step needs a block-diagonal Hessian in the units' latents).

    Parameters
    ----------
    model : pm.Model
        The model.
    terms : mapping of str to Variable
        Its log-density factors by name, as :func:`factorized_terms` gives them; each term's
        trailing full sums are removed first (:func:`strip_sums`).
    name : str
        A local latent of ``model``, shaped ``(units, *event_shape)``.

    Returns
    -------
    bool
        True where some term's :func:`~pymc_amortize.model.dataflow.unit_flow` from the latent's
        value variable is neither ``("unit", 0)`` nor ``("row", 0, index)``.
    """
    value = model.rvs_to_values[model[name]]
    for term in terms.values():
        state = unit_flow(strip_sums(term), value)
        if state is not None and state != ("unit", 0) and not (state[0] == "row" and state[1] == 0):
            return True
    return False


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
            if leaf in seen or leaf in exclude or not is_data_leaf(leaf):
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
        if not is_data_leaf(node):
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
        if isinstance(node.op, AdvancedSubtensor) and is_index(node.inputs[1])
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
                f"'{t}' through {leaf_label(leaf)}"
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
