"""What a model analysis returns: plates, local latents, encoder inputs and the mean-field rest.

Frozen descriptions only (the analysis that builds them is :mod:`pymc_amortize.model.analysis`);
every later stage (the log joint, the guide, the results) reads a model through these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable

from pymc_amortize.errors import AmortizationError

__all__ = [
    "SCALAR_REASON",
    "DataInput",
    "EncoderInputSpec",
    "IndexedLocal",
    "LocalLatent",
    "MeanFieldLatent",
    "ModelAnalysis",
    "Plate",
    "leaf_value",
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
        The analysis's class of the latent (see
        :data:`~pymc_amortize.model.analysis.VERDICTS`; ``"amortize"`` unless ``local=``
        amortizes a latent the analysis would not) and why.
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
    verdict on it (see :data:`~pymc_amortize.model.analysis.VERDICTS`: ``"global"`` for a
    latent with no unit axis)."""

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


def leaf_value(var: Variable) -> np.ndarray:
    """The array held by a data leaf (a shared variable or a constant)."""
    if isinstance(var, SharedVariable):
        return np.asarray(var.get_value(borrow=True))
    if isinstance(var, Constant):
        return np.asarray(var.data)
    raise AmortizationError(f"'{var}' holds no data.")
