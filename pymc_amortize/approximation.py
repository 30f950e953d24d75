"""The amortized guide q(θ) ∏_plates ∏_n q(z_n; f_φ(data of unit n)) and what a user does with it.

One class for every plate kind. The globals (and every latent the analysis leaves mean-field) get
a global family (:mod:`pymc_amortize.guide.globals`: mean-field as ADVI, or full-rank); each local
latent gets
a diagonal Gaussian whose mean and log-sd are its encoder's output on its unit's data: the unit's
own inputs (one row per unit) and, for an indexed plate, the set of its rows, pooled.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import arviz as az
import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from pymc.backends.base import MultiTrace
from pymc.distributions.transforms import LogTransform
from pymc.variational.opvi import Group
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import graph_replace, vectorize_graph
from pytensor.graph.traversal import ancestors
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.analysis import DataInput, LocalLatent, ModelAnalysis, Plate
from pymc_amortize.chunks import ChunkedPart, assemble_chunks, seed_sequence, unit_noise
from pymc_amortize.conditional import ConditionalGaussian, ConditionalSampler
from pymc_amortize.encoders import (
    MLPEncoder,
    PooledEncoder,
    check_encoder_outputs,
    default_encoder_widths,
    encoder_params,
    inline_layers,
    resolve_user_encoders,
    standardization_scale,
)
from pymc_amortize.errors import AmortizationError, OutOfTrainingRangeWarning
from pymc_amortize.fitting.record import FitRecord
from pymc_amortize.guide.globals import GlobalFamily, make_global_family
from pymc_amortize.new_units import (
    InputEnvelope,
    TrainingEnvelope,
    column_labels,
    forward_draws,
    posterior_dataset,
    resized_model,
    trace_from_values,
)
from pymc_amortize.plates import PlateLayout, UnitBatch
from pymc_amortize.results import method_groups
from pymc_amortize.streaming import UnitSource, input_columns, summarize_columns

__all__ = [
    "AmortizedApproximation",
    "EncoderWeight",
    "InputScaling",
    "LocalPosterior",
    "NewUnits",
]

#: Default levels of the constrained-scale quantiles of :class:`LocalPosterior`.
QUANTILE_LEVELS = (0.05, 0.5, 0.95)
#: Draws of p(z | θ) under q(θ) behind the prior's moments in :meth:`_temper_by_count`.
COUNT_PRIOR_DRAWS = 4000
#: A new unit's q(z) is absurd (an error, not a result) when its mean lies more than this many
#: widths of the fitted units' means (or their largest sd, if wider) beyond their range ...
ABSURD_MEAN_WIDTHS = 100.0
#: ... or its sd is more than this factor outside the fitted units' range of sds.
ABSURD_SD_RATIO = 1e4
#: Fitted units behind that range (encoded once per fit's weights).
OUTPUT_RANGE_UNITS = 100_000

#: Monte Carlo draws behind the constrained summary of a latent whose transform is neither the
#: identity nor log (e.g. a simplex), per unit.
SUMMARY_DRAWS = 1000


class LocalPosterior(NamedTuple):
    """The posterior of each unit's z_n, as ``encode`` summarises it.

    Attributes
    ----------
    mean, sd : ndarray
        ``(M, *event_shape)`` mean and sd of the Gaussian q(z_n) on the latent's **unconstrained**
        (value) space: the encoder's output (a zero-row unit: Monte Carlo moments of its prior
        given q(θ), mapped to that space).
    prior_only : ndarray or None
        (M,) bool: the unit has no rows, so its posterior is its prior given the globals.
    constrained_mean : ndarray or None
        ``(M, *shape)`` posterior mean of z_n on the latent's **own (constrained)** scale, e.g. a
        positive rate or a point of the simplex.
    quantiles : ndarray or None
        ``(len(quantile_levels), M, *shape)`` posterior quantiles of each entry of z_n on its own scale.
    quantile_levels : tuple of float
        The levels of ``quantiles``.
    """

    mean: np.ndarray
    sd: np.ndarray
    prior_only: np.ndarray | None = None
    constrained_mean: np.ndarray | None = None
    quantiles: np.ndarray | None = None
    quantile_levels: tuple[float, ...] = QUANTILE_LEVELS


class NewUnits(NamedTuple):
    """The new units of one plate in an ``encode``/``sample_new_units`` call.

    ``labels`` (M,) are their coords; ``unit_of_row`` (R,) the position of each row's unit and
    ``counts`` (M,) the rows per unit (None for a row plate, whose units are their own rows).
    """

    labels: np.ndarray
    unit_of_row: np.ndarray | None
    counts: np.ndarray | None

    @property
    def prior_only(self) -> np.ndarray:
        """(M,) bool: units with no rows."""
        if self.counts is None:
            return np.zeros(self.labels.size, dtype=bool)
        return self.counts == 0


def _normal_ppf(levels: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    if np.any((levels <= 0) | (levels >= 1)):
        raise AmortizationError(f"quantiles must lie strictly between 0 and 1; got {levels}.")
    return ndtri(levels)


def _data_under(model: pm.Model, dim: str | None, aligned: Sequence[DataInput]) -> list[str]:
    """Names of the model's data containers (``pm.Data``) whose leading dim is ``dim`` or that
    are in ``aligned`` (the plate's unit- or row-aligned data), in model order."""
    names = {d.key for d in aligned if d.named and d.key in model.named_vars}
    out = []
    for var in model.data_vars:
        dims = model.named_vars_to_dims.get(var.name) or (None,)
        if (dim is not None and dims[0] == dim) or var.name in names:
            out.append(var.name)
    return out


def _fmt(value) -> str:
    value = np.asarray(value, dtype=float)
    return (
        f"{float(value.ravel()[0]):.4g}" if value.size == 1 else np.array2string(value, precision=4)
    )


class InputScaling(NamedTuple):
    """How an encoder reads its input columns: non-finite entries encoded, then centred and scaled.

    With an affine first layer the centre and scale are a reparameterisation of the same family of
    encoders; they keep the first steps well-scaled whatever units the data are in.

    Attributes
    ----------
    center, scale : ndarray
        (k + f,) per encoded column: the k raw columns, then one indicator per flagged column.
    flagged : tuple of int
        Raw columns that held NaN or ±inf over the fitted units: bookkeeping rather than
        measurements, such as a censoring bound of ``np.inf`` for the uncensored rows or a mask.
        Each reads as its value where finite and its centre elsewhere (0 once standardised), and
        gets an indicator column appended, 1 where the value is finite and 0 where not.
    constant : tuple of int
        Encoded columns with one value over the fitted units: centred on it exactly (so they read
        0 there) with scale 1. The default encoders start with zero weights on them, which stay
        zero (their gradient is 0), so a new unit's other value of such a column is ignored.
    """

    center: np.ndarray
    scale: np.ndarray
    flagged: tuple[int, ...] = ()
    constant: tuple[int, ...] = ()

    @classmethod
    def fit(cls, matrix: np.ndarray, standardize: bool) -> InputScaling:
        return _fit_scaling([np.asarray(matrix)], standardize)

    @property
    def raw_width(self) -> int:
        """k, the raw columns of one row of the data."""
        return len(self.center) - len(self.flagged)

    def encoded(self, matrix: np.ndarray) -> np.ndarray:
        """The (n, k + f) float64 columns the scaling applies to: flagged columns' non-finite
        entries replaced by their centre, the indicators appended. Other non-finite entries are
        left as they are (see :func:`_check_encodable`)."""
        matrix = np.asarray(matrix, dtype=np.float64)
        if not self.flagged:
            return matrix
        flagged = list(self.flagged)
        part = matrix[:, flagged]
        finite = np.isfinite(part)
        matrix = matrix.copy()
        matrix[:, flagged] = np.where(finite, part, np.asarray(self.center)[flagged])
        return np.concatenate([matrix, finite.astype(np.float64)], axis=1)

    def apply(self, matrix: np.ndarray) -> np.ndarray:
        return (self.encoded(matrix) - self.center) / self.scale

    def labels(self, raw: Sequence[str]) -> tuple[str, ...]:
        """One label per encoded column from the raw columns' labels."""
        raw = tuple(raw)
        return raw + tuple(f"{raw[j]} is finite" for j in self.flagged)


#: ``{(latent, "units" or "rows"): raw columns}`` that get an indicator whatever the data hold,
#: while set (:func:`fixed_input_flags`): a loaded fit's encoders have the saved widths.
_FIXED_FLAGS: contextvars.ContextVar[Mapping[tuple[str, str], tuple[int, ...]] | None] = (
    contextvars.ContextVar("fixed_input_flags", default=None)
)


@contextlib.contextmanager
def fixed_input_flags(flags: Mapping[tuple[str, str], Sequence[int]]) -> Iterator[None]:
    """Within the block, approximations built flag the given raw columns of each latent's unit
    or row inputs (``InputScaling.flagged``) rather than those with a NaN or inf in the model's
    data: :func:`~pymc_amortize.load_approximation` rebuilds a saved fit's encoders, whose width
    depends on them, on a model whose data may differ."""
    token = _FIXED_FLAGS.set({k: tuple(int(j) for j in v) for k, v in flags.items()})
    try:
        yield
    finally:
        _FIXED_FLAGS.reset(token)


def _check_encodable(
    name: str, matrix: np.ndarray, scaling: InputScaling, labels: Sequence[str], what: str
) -> None:
    """New units' raw (n, k) inputs: NaN or inf only in the columns that held them in training
    (those have an encoding for them; a column finite in training has none)."""
    if matrix.dtype.kind != "f":
        return
    bad = ~np.isfinite(matrix)
    if scaling.flagged:
        bad[:, list(scaling.flagged)] = False
    if bad.any():
        row, column = (int(v[0]) for v in np.nonzero(bad))
        label = labels[column] if column < len(labels) else f"column {column}"
        raise AmortizationError(
            f"The {what} of '{name}' for the new units have NaN or inf in {int(bad.any(axis=1).sum())} "
            f"row(s) (first: row {row}, {label}); {label} was finite for every fitted unit, so "
            "the encoder has no encoding of a missing or infinite value there."
        )


def _checked_matrix(name: str, matrix: np.ndarray, n_units: int | None) -> np.ndarray:
    if matrix.dtype.kind not in "biuf":
        raise AmortizationError(
            f"The encoder input of '{name}' has dtype {matrix.dtype}; it must be numeric."
        )
    if n_units is not None and matrix.shape[0] != n_units:
        raise AmortizationError(
            f"The encoder input of '{name}' has {matrix.shape[0]} rows, but '{name}' has "
            f"{n_units} units."
        )
    # NaN and inf are encoded (InputScaling.flagged), not refused.
    return matrix.astype(pytensor.config.floatX, copy=False)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _units_without_rows(plate: Plate) -> np.ndarray:
    """(N,) bool: the fitted units of an indexed plate that no row names (all False for a row
    plate). Their posterior is their prior given the globals, not the encoder's extrapolation."""
    if plate.index is None:
        return np.zeros(plate.size, dtype=bool)
    return np.asarray(plate.row_counts) == 0


def _check_new_observations(model: pm.Model, new_data: Mapping[str, np.ndarray]) -> None:
    """New units' observations of a discrete likelihood must be whole numbers.

    An encoder takes any real input, so counts of 2.5 were encoded without complaint; the
    likelihood gives them no density, so the posterior they stand for does not exist.
    """
    for key, value in new_data.items():
        var = model.named_vars.get(key)
        if var is None or var not in model.observed_RVs or var.dtype[0] not in "iu":
            continue
        value = np.asarray(value)
        if value.dtype.kind != "f":
            continue
        finite = value[np.isfinite(value)]
        if not np.array_equal(finite, np.round(finite)):
            bad = finite[finite != np.round(finite)]
            raise AmortizationError(
                f"new_data['{key}'] holds values that are not whole numbers (e.g. {bad[0]:g}), "
                f"but '{key}' has a discrete likelihood ({type(var.owner.op).__name__}); its "
                "new units' observations must be counts or categories like the fitted ones."
            )


def _compile_once(inputs: list, outputs):
    """Compile a function that runs once or a few times per fit (probes, encode, transforms).

    FAST_COMPILE skips the NUMBA code generation that the step needs: on a model's first fit
    NUMBA took 3.5 s to compile ``encode`` (whose arithmetic on all units is a few matrix products
    that NumPy's BLAS does as fast).
    """
    with warnings.catch_warnings():
        # FAST_COMPILE's rewrites read PyTensor's BLAS flags, which warns on a pip install;
        # these functions run NumPy's BLAS through the Python linker, so the warning would mislead.
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
        return pytensor.function(inputs, outputs, mode="FAST_COMPILE", on_unused_input="ignore")


def _probe_encoder(
    latent: LocalLatent, symbolic: list, outputs: tuple, values: list, n_units: int
) -> None:
    """Run a user encoder once on every unit, so that a shape or value known only at run time is
    reported here, with the latent's name, rather than from deep inside the first step.

    """
    pairs = [(s, v) for s, v in zip(symbolic, values, strict=True) if s is not None]
    try:
        probe_fn = _compile_once([s for s, _ in pairs], list(outputs))
        mean, log_sd = probe_fn(*[v for _, v in pairs])
    except Exception as error:
        raise AmortizationError(
            f"The encoder of '{latent.name}' failed on the {n_units} units' inputs: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    expected = (n_units, latent.event_size)
    for label, value in (("mean", mean), ("log_sd", log_sd)):
        if value.shape != expected:
            raise AmortizationError(
                f"The encoder of '{latent.name}' returned a {label} of shape {value.shape} for "
                f"{n_units} units; it must be {expected}, one row of {latent.event_size} per unit."
            )
        if not np.isfinite(value).all():
            raise AmortizationError(
                f"The encoder of '{latent.name}' returned a {label} with NaN or inf at its initial "
                "weights; check its initialisation and inputs."
            )


class EncoderWeight:
    """One encoder weight, stored as a slice of the flat ``encoder_weights`` vector.

    Reads and writes like a shared variable (``name``, ``get_value``, ``set_value``), for
    checkpoints, divergence reports and users; the compiled step sees only the flat vector.
    """

    def __init__(self, flat: SharedVariable, name: str | None, offset: int, shape, dtype):
        self.flat, self.name, self.offset = flat, name, int(offset)
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))

    def get_value(self, borrow: bool = False) -> np.ndarray:
        piece = self.flat.get_value(borrow=True)[self.offset : self.offset + self.size]
        value = piece.reshape(self.shape).astype(self.dtype, copy=False)
        return value if borrow else value.copy()

    def set_value(self, value, borrow: bool = False) -> None:
        value = np.asarray(value)
        if value.shape != self.shape:
            raise AmortizationError(
                f"Encoder weight {self.name!r} has shape {self.shape}; got a value of shape "
                f"{value.shape}."
            )
        flat = self.flat.get_value(borrow=False)
        flat[self.offset : self.offset + self.size] = value.ravel()
        self.flat.set_value(flat, borrow=True)

    def __repr__(self) -> str:
        return f"EncoderWeight({self.name!r}, shape={self.shape})"


class EncoderInput:
    """One latent's unit (or row) encoder input over the fitted data, held without copying it.

    Each data array the input stacks is a shared variable that **borrows the model's array**
    (reshaped to (n, k_i), a view), and the column-wise standardisation is applied in the graph,
    after a minibatch's rows are gathered: a fit holds each data array once, however many encoders
    and likelihood terms read it (a standardised (n, k) copy per encoder was held before).
    Standardisation parameters are a shared (2, k) array, not literals, so that the compiled step
    does not depend on the data (see :class:`~pymc_amortize.plates.PlateLayout`).

    Parameters
    ----------
    name : str
        Prefix of the shared variables' names.
    arrays : sequence of ndarray
        The (n, k_i) numeric arrays, in column order; integer arrays stay integer (cast per batch).
    scaling : InputScaling
        Column centre and scale, (k,) each.
    reader : callable, optional
        ``(start, stop) -> arrays`` of units ``start:stop``, for a fit on ``unit_data``: then
        ``arrays`` are the step's (B, k_i) batch buffers and every unit is read through ``reader``.
    length : int, optional
        The number of units when ``reader`` is given.
    """

    def __init__(
        self,
        name: str,
        arrays: Sequence[np.ndarray],
        scaling: InputScaling,
        *,
        reader: Callable[[int, int], list[np.ndarray]] | None = None,
        length: int | None = None,
    ):
        # The column counts are static: JAX needs the split positions of a concatenate's
        # gradient (encoder inputs beside pooled features) as constants.
        self.columns: list[SharedVariable] = [
            pytensor.shared(a, name=f"{name}_{i}", borrow=True, shape=(None, a.shape[1]))
            for i, a in enumerate(arrays)
        ]
        self.widths = tuple(int(a.shape[1]) for a in arrays)
        #: Indicator columns appended to the raw ones (InputScaling.flagged); fixed at
        #: construction, since the encoder's width depends on it.
        self.flagged = tuple(scaling.flagged)
        #: Reads units ``start:stop`` as (n, k_i) arrays when the columns hold one batch only
        #: (a fit on ``unit_data``); None when they hold every unit.
        self.reader = reader
        self.length = int(arrays[0].shape[0]) if length is None else int(length)
        self.standardization = pytensor.shared(
            np.zeros((2, self.width), dtype=pytensor.config.floatX),
            name=f"{name}_standardization",
            shape=(2, self.width),
        )
        self.standardization.tag.trainable = False
        self.set_scaling(scaling)

    @property
    def raw_width(self) -> int:
        """k, the columns of one row of the data."""
        return sum(self.widths)

    @property
    def width(self) -> int:
        """The columns the encoder reads per row: the data's, then one indicator per flagged
        column (see :class:`InputScaling`)."""
        return self.raw_width + len(self.flagged)

    def set_scaling(self, scaling: InputScaling) -> None:
        """Standardise with ``scaling`` from now on (e.g. a saved fit's, which must flag the
        same columns)."""
        if tuple(scaling.flagged) != self.flagged:
            raise AmortizationError(
                f"An input scaling that flags columns {list(scaling.flagged)} cannot replace one "
                f"that flags {list(self.flagged)}: the encoder's width depends on them."
            )
        self.scaling = scaling
        value = np.stack([np.asarray(scaling.center), np.asarray(scaling.scale)])
        self.standardization.set_value(value.astype(pytensor.config.floatX))

    def symbolic(self, take: Callable[[TensorVariable], TensorVariable]) -> TensorVariable:
        """The standardised (B, k) input of the rows ``take`` picks from each shared array."""
        floatx = pytensor.config.floatX
        parts = [take(column).astype(floatx) for column in self.columns]
        matrix = parts[0] if len(parts) == 1 else pt.concatenate(parts, axis=1)
        if self.flagged:
            # InputScaling.encoded, in the graph: the value where finite, else the centre, and
            # an indicator per flagged column.
            flagged = np.asarray(self.flagged, dtype=np.int64)
            values = matrix[:, flagged]
            finite = pt.isfinite(values)
            filled = pt.switch(finite, values, self.standardization[0][flagged])
            matrix = pt.concatenate(
                [pt.set_subtensor(matrix[:, flagged], filled), finite.astype(floatx)], axis=1
            )
        return (matrix - self.standardization[0]) / self.standardization[1]

    def raw(self, start: int | np.ndarray = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` (or the rows numbered by an integer array ``start``), (n, k), on
        the data's own scale (a view when there is one array and a slice)."""
        if self.reader is not None:
            if isinstance(start, np.ndarray):
                raise AmortizationError("Units read from unit_data are taken by slices only.")
            arrays = self.reader(start, self.length if stop is None else stop)
        else:
            index = start if isinstance(start, np.ndarray) else slice(start, stop)
            arrays = [c.get_value(borrow=True)[index] for c in self.columns]
        return arrays[0] if len(arrays) == 1 else np.column_stack(arrays)

    def chunk(self, start: int | np.ndarray = 0, stop: int | None = None) -> np.ndarray:
        """Rows as in :meth:`raw`, standardised, in floatX: what the encoder reads."""
        return self.standardized(self.raw(start, stop))

    def standardized(self, matrix: np.ndarray) -> np.ndarray:
        """An (n, k) matrix of this input's columns on the data's scale, as the encoder reads
        it: standardised, in floatX."""
        return self.scaling.apply(matrix).astype(pytensor.config.floatX)

    def get_value(self, borrow: bool = False) -> np.ndarray:
        """The whole standardised (n, k) input, computed (a new array: use :meth:`chunk` for
        large n)."""
        return self.chunk()


class EncoderData(NamedTuple):
    """One latent's encoder inputs over the fitted units and rows, and their scalings."""

    units: EncoderInput | None
    unit_scaling: InputScaling | None
    rows: EncoderInput | None
    row_scaling: InputScaling | None


def _stack(
    latent: LocalLatent, inputs: Sequence[DataInput], data: Mapping, what: str
) -> np.ndarray:
    """Stack the named arrays of ``data`` into an (n, k) float matrix, checked."""
    columns = _columns(latent, inputs, data, what)
    return _checked_matrix(latent.name, np.column_stack(columns), None)


def _columns(
    latent: LocalLatent, inputs: Sequence[DataInput], data: Mapping, what: str
) -> list[np.ndarray]:
    """The named arrays of ``data``, checked, each as an (n, k_i) view."""
    columns = []
    for item in inputs:
        if item.key not in data:
            hint = (
                ""
                if item.named
                else f" ('{item.key}' is an unnamed array in the model; give it a name with "
                "pm.Data to pass it by that name)"
            )
            raise AmortizationError(
                f"The encoder of '{latent.name}' needs '{item.key}' ({what}); got "
                f"{sorted(data)}.{hint}"
            )
        column = np.asarray(data[item.key])
        if column.dtype.kind not in "biuf":
            raise AmortizationError(
                f"'{item.key}' feeds the encoder of '{latent.name}' but has dtype {column.dtype}; "
                "it must be numeric."
            )
        columns.append(column.reshape(column.shape[0], -1) if column.ndim else column.reshape(1, 1))
    lengths = sorted({c.shape[0] for c in columns})
    if len(lengths) != 1:
        raise AmortizationError(
            f"The {what} of '{latent.name}' ({', '.join(i.key for i in inputs)}) must have the "
            f"same number of rows; got leading lengths {lengths}."
        )
    return columns


def _check_width(latent: LocalLatent, matrix: np.ndarray, fitted: EncoderInput, what: str):
    """New units' raw inputs: the fitted width, and NaN or inf only where the fitted data had
    them (:func:`_check_encodable`)."""
    width = fitted.raw_width
    if matrix.shape[1] != width:
        raise AmortizationError(
            f"The {what} of '{latent.name}' for the new units have {matrix.shape[1]} column(s) "
            f"per row; the encoder was fitted on {width} ({', '.join(latent.input_names)}, each "
            "with the shape of one row of the fitted data)."
        )
    inputs = latent.row_inputs if what == "row inputs" else latent.unit_inputs
    labels = column_labels(inputs) if inputs else ()
    _check_encodable(latent.name, matrix, fitted.scaling, labels, what)


def _fitted_unit_arrays(latent: LocalLatent, size: int) -> list[np.ndarray] | None:
    """The fitted units' encoder input arrays, (N, k_i) views of the model's data."""
    if latent.input_matrix is not None:
        matrix = np.asarray(latent.input_matrix)
        _checked_matrix(latent.name, matrix.reshape(matrix.shape[0], -1), size)
        return [matrix.reshape(matrix.shape[0], -1)]
    if not latent.unit_inputs:
        return None
    return _columns(
        latent, latent.unit_inputs, {d.key: d.value for d in latent.unit_inputs}, "unit inputs"
    )


def _fitted_row_arrays(latent: LocalLatent) -> list[np.ndarray] | None:
    """The fitted rows' encoder input arrays, (R, k_i) views of the model's data."""
    if not latent.row_inputs:
        return None
    return _columns(
        latent, latent.row_inputs, {d.key: d.value for d in latent.row_inputs}, "row inputs"
    )


def _column_moments(a: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per column of an (n, k) array, over its finite entries: mean, sd, min, max, and the
    fraction of entries that are finite (columns without a finite entry: 0, 0, 0, 0, 0)."""
    if a.dtype.kind != "f" or np.isfinite(a).all():
        if a.shape[0] == 0:
            zeros = np.zeros(a.shape[1])
            return zeros, zeros, zeros, zeros, np.ones(a.shape[1])
        return (
            a.mean(axis=0, dtype=np.float64),
            a.std(axis=0, dtype=np.float64),
            a.min(axis=0).astype(np.float64),
            a.max(axis=0).astype(np.float64),
            np.ones(a.shape[1]),
        )
    out = [np.zeros(a.shape[1]) for _ in range(5)]
    for j in range(a.shape[1]):
        column = a[:, j]
        finite = column[np.isfinite(column)].astype(np.float64)
        if finite.size:
            out[0][j], out[1][j] = finite.mean(), finite.std()
            out[2][j], out[3][j] = finite.min(), finite.max()
        out[4][j] = finite.size / max(column.size, 1)
    return tuple(out)


def _fit_scaling(
    arrays: Sequence[np.ndarray], standardize: bool, flagged: Sequence[int] | None = None
) -> InputScaling:
    """How the encoder reads the arrays side by side (without stacking them): see
    :class:`InputScaling`. ``flagged`` fixes the raw columns that get an indicator (a saved fit's);
    by default those with a NaN or inf."""
    moments = [_column_moments(np.asarray(a).reshape(np.shape(a)[0], -1)) for a in arrays]
    mean, sd, low, high, finite = (np.concatenate([m[i] for m in moments]) for i in range(5))
    if flagged is None:
        flagged = np.flatnonzero(finite < 1)
    flagged = tuple(int(j) for j in flagged)
    p = finite[list(flagged)]
    # Indicator columns: mean p, sd sqrt(p(1 - p)), one value when p is 0 or 1.
    mean = np.concatenate([mean, p])
    sd = np.concatenate([sd, np.sqrt(p * (1 - p))])
    constant = np.concatenate([low == high, (p == 0) | (p == 1)])
    if not standardize:
        zeros = np.zeros(mean.size)
        return InputScaling(zeros, np.ones(mean.size), flagged, ())
    # A constant column is centred on its value exactly, so it reads exactly 0 in training.
    center = np.where(constant, np.concatenate([low, p]), mean)
    scale = np.where(constant, 1.0, standardization_scale(sd, center))
    return InputScaling(center, scale, flagged, tuple(int(j) for j in np.flatnonzero(constant)))


def _streamed_envelope(
    source: UnitSource, keys: list[str], labels, summary, scaling: InputScaling, rows: bool
) -> InputEnvelope:
    """The training envelope of streamed inputs, from their summary (and for several columns
    one more pass for the largest Mahalanobis distance)."""
    center, scale = scaling.center, scaling.scale
    precision = max_distance = None
    if summary.mean.size >= 2:
        precision = np.linalg.pinv(summary.cov / np.outer(scale, scale))
        # Mahalanobis distances are the same on the raw and the standardised scale.
        raw_precision = np.linalg.pinv(summary.cov)
        max_distance = 0.0
        for _, _, matrix in input_columns(source, keys, rows=rows):
            diff = matrix - summary.mean
            d2 = np.einsum("ij,jk,ik->i", diff, raw_precision, diff)
            max_distance = max(max_distance, float(np.sqrt(max(d2.max(), 0.0))))
    return InputEnvelope(
        labels,
        (summary.low - center) / scale,
        (summary.high - center) / scale,
        (summary.mean - center) / scale,
        precision,
        max_distance,
    )


def _streamed_part(
    source: UnitSource, latent: LocalLatent, standardize: bool, rows: bool
) -> tuple[EncoderInput | None, InputEnvelope | None]:
    """A latent's unit (or row) encoder input over ``unit_data``: the step's batch buffers, with
    a reader of any units' data, its scaling and its training envelope from passes over the
    dataset."""
    inputs = latent.row_inputs if rows else latent.unit_inputs
    if not inputs:
        return None, None
    keys = [d.key for d in inputs]
    summary = summarize_columns(source, keys, rows=rows)
    sd = np.sqrt(np.diag(summary.cov))
    # As _fit_scaling: a constant column is centred on its value exactly, with scale 1.
    constant = summary.low == summary.high
    center = np.where(constant, summary.low, summary.mean)
    scaling = (
        InputScaling(
            center,
            np.where(constant, 1.0, standardization_scale(sd, center)),
            (),
            tuple(int(j) for j in np.flatnonzero(constant)),
        )
        if standardize
        else InputScaling(np.zeros_like(summary.mean), np.ones_like(summary.mean))
    )
    envelope = _streamed_envelope(source, keys, column_labels(inputs), summary, scaling, rows)
    buffers = [source.batch[k].reshape(source.batch[k].shape[0], -1) for k in keys]

    def reader(start: int, stop: int) -> list[np.ndarray]:
        if rows:
            return source.row_columns(start, stop, keys)[0]
        piece = source.read(start, stop, keys)
        return [piece[k].reshape(stop - start, -1) for k in keys]

    what = "row" if rows else "unit"
    encoder_input = EncoderInput(
        f"{latent.name}_{what}_inputs", buffers, scaling, reader=reader, length=source.size
    )
    return encoder_input, envelope


def training_envelope(
    latent: LocalLatent,
    plate: Plate,
    units: np.ndarray | None,
    rows: np.ndarray | None,
    *,
    unit_scaling: InputScaling | None = None,
    row_scaling: InputScaling | None = None,
) -> TrainingEnvelope:
    """The range of a latent's standardised encoder inputs on the fitted units (the columns the
    encoder reads: with the scalings, the indicators of non-finite entries labelled too)."""
    if latent.input_matrix is not None and units is not None:
        width = units.shape[1] - (len(unit_scaling.flagged) if unit_scaling else 0)
        unit_labels = tuple(f"{latent.name} input[{i}]" for i in range(width))
    else:
        unit_labels = column_labels(latent.unit_inputs)
    row_labels = column_labels(latent.row_inputs)
    if unit_scaling is not None:
        unit_labels = unit_scaling.labels(unit_labels)
    if row_scaling is not None:
        row_labels = row_scaling.labels(row_labels)
    counts = None
    if plate.index is not None:
        with_rows = plate.row_counts[plate.row_counts > 0]
        counts = (int(with_rows.min()), int(with_rows.max())) if with_rows.size else None
    return TrainingEnvelope(
        InputEnvelope.fit(unit_labels, units) if units is not None else None,
        InputEnvelope.fit(row_labels, rows) if rows is not None else None,
        counts,
    )


def default_encoder(
    latent: LocalLatent,
    plate: Plate,
    *,
    n_unit_inputs: int,
    n_row_inputs: int,
    widths: Sequence[int] | None,
    activation: str | Callable,
    init_scale: float,
    init_mean: float,
    random_seed: np.random.Generator,
    log_count_scaling: tuple[float, float] | None = None,
    constant_count: bool | None = None,
    constant_unit_inputs: Sequence[int] = (),
    constant_row_inputs: Sequence[int] = (),
) -> MLPEncoder | PooledEncoder:
    """An :class:`MLPEncoder` for a latent with unit inputs only, else a :class:`PooledEncoder`.

    ``widths=None`` picks :func:`~pymc_amortize.encoders.default_encoder_widths` from the plate's
    number of units. ``log_count_scaling`` (centre, scale of log(1 + rows) over the units) and
    ``constant_count`` (every unit has the same number of rows) are the plate's own when omitted.
    The encoder ignores the inputs constant over the fitted units (``constant_*``, and the count
    when constant; see :class:`~pymc_amortize.MLPEncoder`).
    """
    if n_row_inputs == 0:
        if widths is None:
            widths = default_encoder_widths(plate.size)
        return MLPEncoder(
            n_inputs=n_unit_inputs,
            event_size=latent.event_size,
            widths=tuple(widths),
            activation=activation,
            init_scale=init_scale,
            init_mean=init_mean,
            name=f"{latent.name}_encoder",
            random_seed=random_seed,
            constant_inputs=constant_unit_inputs,
        )
    if log_count_scaling is None:
        counts = np.asarray(plate.row_counts)
        log_counts = np.log1p(counts)
        constant_count = bool(counts.min() == counts.max())
        # A constant count is centred on its value exactly, so it reads exactly 0 in training.
        center = float(log_counts[0] if constant_count else log_counts.mean())
        log_count_scaling = (center, float(standardization_scale(log_counts.std(), center)))
    if widths is None:
        widths = default_encoder_widths(plate.size)
    return PooledEncoder(
        n_row_inputs=n_row_inputs,
        event_size=latent.event_size,
        n_unit_covariates=n_unit_inputs,
        widths=tuple(widths),
        activation=activation,
        init_scale=init_scale,
        init_mean=init_mean,
        log_count_center=log_count_scaling[0],
        log_count_scale=log_count_scaling[1],
        name=f"{latent.name}_encoder",
        random_seed=random_seed,
        constant_row_inputs=constant_row_inputs,
        constant_unit_covariates=constant_unit_inputs,
        constant_count=bool(constant_count),
    )


class AmortizedApproximation:
    """A fitted (or fitting) amortized variational posterior.

    Built by :class:`~pymc_amortize.AmortizedVI`; users get it back from
    ``pm.fit(method="amortized")``. ``analysis`` holds its plates and what stays mean-field.
    """

    def __init__(
        self,
        model: pm.Model,
        analysis: ModelAnalysis,
        *,
        encoder: Callable | Mapping[str, Callable] | None = None,
        encoder_widths: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        activation: str | Callable = "relu",
        init_scale: float = 0.1,
        standardize_inputs: bool = True,
        start: Mapping[str, np.ndarray] | None = None,
        start_sigma: Mapping[str, np.ndarray] | None = None,
        random_seed: int | None = None,
        unit_source: UnitSource | None = None,
        local_family: ConditionalGaussian | None = None,
        conditional_plates: Sequence[str] = (),
        global_family: str = "meanfield",
        record: FitRecord | None = None,
    ):
        self.model = model
        #: The conditional local family (None: the encoder family q(z_n; f(x_n)) everywhere) and
        #: the plates that use it, q(z_n | θ, x_n); see :mod:`pymc_amortize.conditional`.
        self.local_family = local_family
        self.conditional_plates = frozenset(conditional_plates) if local_family else frozenset()
        self._conditional_sampler: ConditionalSampler | None = None
        self.analysis = analysis
        #: Where the batch plate's units are read from when they are not in the model (a fit on
        #: ``unit_data``); the model is then a template of a few of them.
        self.unit_source = unit_source
        #: The fit's record, written by the fitting adapter (AmortizedVI); read below.
        self.record = record if record is not None else FitRecord()
        local = set(analysis.latent_names)
        global_rvs = [rv for rv in model.free_RVs if rv.name not in local]
        #: q(θ), a :class:`~pymc_amortize.guide.globals.GlobalFamily` (None without globals).
        self.globals: GlobalFamily | None = (
            make_global_family(
                global_family,
                global_rvs,
                model=model,
                random_seed=random_seed,
                start=start,
                start_sigma=start_sigma,
            )
            if global_rvs
            else None
        )
        self.layouts = {
            plate.name: PlateLayout(
                plate, buffered=unit_source is not None and plate is unit_source.plate
            )
            for plate in analysis.plates
        }
        self.inputs: dict[str, EncoderData] = {}
        self._encoders: dict[str, Callable] = {}
        self._user_encoders = frozenset()
        #: Each latent's encoder weights, as the encoder's own shared variables.
        self._own_weights: dict[str, list[SharedVariable]] = {}
        #: Each latent's encoder weights -> their views of ``encoder_weights`` (symbolic).
        self._weight_views: dict[str, dict[SharedVariable, TensorVariable]] = {}
        #: Every encoder weight of every latent in one flat shared vector (None without encoders):
        #: the step's one encoder parameter, so that its argument count does not grow with the
        #: number of layers. ``encoder_params`` names its slices.
        self.encoder_weights: SharedVariable | None = None
        self.encoder_params: list[EncoderWeight] = []
        self._encode_fns: dict[str, pytensor.compile.Function] = {}
        self._transform_fns: dict[tuple[str, str], pytensor.compile.Function | None] = {}
        #: Each latent's training envelope: the range of its encoder inputs in training.
        self.envelopes: dict[str, TrainingEnvelope] = {}
        #: The fitted units' range of encoder outputs, for the current weights (see
        #: ``_fitted_output_range``).
        self._output_ranges: dict[tuple, tuple[np.ndarray, ...]] = {}
        self._init_encoders(
            encoder, encoder_widths, activation, init_scale, standardize_inputs, random_seed
        )
        self._flatten_weights()

    # -- set-up --------------------------------------------------------------------------------
    def _init_encoders(self, encoder, widths, activation, init_scale, standardize, random_seed):
        analysis = self.analysis
        user = resolve_user_encoders(
            encoder,
            analysis.latent_names,
            signature="(B, k) unit inputs -> (mean, log_sd), or for pooled rows "
            "(rows, unit_of_row, n_units, unit_covariates) -> (mean, log_sd)",
        )
        self._user_encoders = frozenset(user)
        if isinstance(widths, Mapping):
            if unknown := set(widths) - set(analysis.latent_names):
                raise AmortizationError(
                    f"encoder_widths= names {sorted(unknown)}, which are not local latents "
                    f"({', '.join(analysis.latent_names)})."
                )
            per_latent = dict(widths)
        else:
            per_latent = dict.fromkeys(analysis.latent_names, widths)
        seeds = np.random.SeedSequence(random_seed).spawn(max(len(analysis.latents), 1))
        initial_point = self.model.initial_point()
        for plate in analysis.plates:
            for latent in plate.latents:
                seed = seeds[analysis.latent_names.index(latent.name)]
                streamed = self.unit_source is not None and plate is self.unit_source.plate
                unit_arrays = None if streamed else _fitted_unit_arrays(latent, plate.size)
                row_arrays = None if streamed else _fitted_row_arrays(latent)
                units = rows = None
                if streamed:
                    source = self.unit_source
                    units, unit_envelope = _streamed_part(source, latent, standardize, False)
                    rows, row_envelope = _streamed_part(source, latent, standardize, True)
                    envelope = TrainingEnvelope(unit_envelope, row_envelope, source.row_count_range)
                fixed = _FIXED_FLAGS.get() or {}
                if unit_arrays is not None:
                    flagged = fixed.get((latent.name, "units"))
                    scaling = _fit_scaling(unit_arrays, standardize, flagged)
                    units = EncoderInput(f"{latent.name}_unit_inputs", unit_arrays, scaling)
                if row_arrays is not None:
                    flagged = fixed.get((latent.name, "rows"))
                    scaling = _fit_scaling(row_arrays, standardize, flagged)
                    rows = EncoderInput(f"{latent.name}_row_inputs", row_arrays, scaling)
                self.inputs[latent.name] = EncoderData(
                    units,
                    None if units is None else units.scaling,
                    rows,
                    None if rows is None else rows.scaling,
                )
                self.envelopes[latent.name] = (
                    envelope
                    if streamed
                    else training_envelope(
                        latent,
                        plate,
                        None if units is None else units.chunk(),
                        None if rows is None else rows.chunk(),
                        unit_scaling=None if units is None else units.scaling,
                        row_scaling=None if rows is None else rows.scaling,
                    )
                )
                if latent.name in user:
                    self._encoders[latent.name] = user[latent.name]
                else:
                    self._encoders[latent.name] = default_encoder(
                        latent,
                        plate,
                        n_unit_inputs=0 if units is None else units.width,
                        n_row_inputs=0 if rows is None else rows.width,
                        widths=per_latent.get(latent.name),
                        activation=activation,
                        init_scale=init_scale,
                        init_mean=float(np.mean(initial_point[latent.value_name])),
                        random_seed=np.random.default_rng(seed),
                        log_count_scaling=self.unit_source.log_count_scaling if streamed else None,
                        constant_count=(self.unit_source.constant_count if streamed else None),
                        constant_unit_inputs=() if units is None else units.scaling.constant,
                        constant_row_inputs=() if rows is None else rows.scaling.constant,
                    )
                self._init_params(latent, plate)

    def _probe_inputs(self, latent: LocalLatent) -> tuple[list, list]:
        """Symbolic encoder inputs for one latent, and their values on the fitted units."""
        data, plate = self.inputs[latent.name], self.analysis.plate_of(latent.name)
        units = (
            None if data.units is None else pt.matrix("units_probe", shape=(None, data.units.width))
        )
        if data.rows is None:
            # Units read from unit_data: the first chunk is probe enough.
            stop = None if data.units.reader is None else min(data.units.length, 10_000)
            return [units], [data.units.chunk(0, stop)]
        rows = pt.matrix("rows_probe", shape=(None, data.rows.width))
        symbolic = [rows, pt.lvector("unit_of_row_probe"), pt.lscalar("n_units_probe"), units]
        stop = plate.size if data.rows.reader is None else min(plate.size, 10_000)
        row_values, unit_of_row = self._fitted_rows(latent.name, 0, stop)
        values = [
            row_values,
            unit_of_row,
            np.int64(stop),
            None if units is None else data.units.chunk(0, stop),
        ]
        return symbolic, values

    def _fitted_rows(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The standardised row inputs of ``name``'s fitted units ``start:stop`` and each row's
        unit position 0..stop-start-1, from the model or from ``unit_data``."""
        rows = self.inputs[name].rows
        if rows.reader is not None:
            # One read of unit_data for the rows and their units (the index).
            latent = next(lat for lat in self.analysis.latents if lat.name == name)
            keys = [d.key for d in latent.row_inputs]
            columns, slot = self.unit_source.row_columns(start, stop, keys)
            return rows.standardized(np.column_stack(columns)), slot
        plate = self.analysis.plate_of(name)
        row_numbers, slot = self.layouts[plate.name].chunk_rows(start, stop)
        return rows.chunk(row_numbers), slot

    def _init_params(self, latent: LocalLatent, plate: Plate) -> None:
        symbolic, values = self._probe_inputs(latent)
        outputs = self._call_encoder(latent, symbolic)
        data = [
            shared
            for part in self.inputs[latent.name]
            if isinstance(part, EncoderInput)
            for shared in (*part.columns, part.standardization)
        ]
        if latent.name in self._user_encoders:
            _probe_encoder(latent, symbolic, outputs, values, plate.size)
        self._own_weights[latent.name] = encoder_params(outputs, exclude=data)

    def _flatten_weights(self) -> None:
        """Copy every encoder weight into one flat shared vector, ``encoder_weights``.

        Each encoder's graph reads its weights as reshaped pieces of that vector (one ``Split``,
        whose gradient is one ``Join``), so a step takes one encoder parameter and one moment per
        optimiser slot whatever the encoders' layers: PyTensor's numba wrapper types every argument
        in Python on each call (≈ 5 µs each, ``benchmarks/perf/NOTES.md``). The encoders' own
        shared variables (a user's encoder included) keep their initial values; the trained ones
        live in ``encoder_weights`` and are read and written per weight through ``encoder_params``.
        A weight used by two latents' encoders gets a slice for each, trained separately.
        """
        entries = [(name, p) for name, params in self._own_weights.items() for p in params]
        self._weight_views = {name: {} for name in self._own_weights}
        if not entries:
            return
        values = [np.asarray(p.get_value(borrow=True)) for _, p in entries]
        dtype = np.result_type(*values)
        flat = pytensor.shared(
            np.concatenate([v.ravel() for v in values]).astype(dtype), name="encoder_weights"
        )
        sizes = [int(v.size) for v in values]
        pieces = pt.split(flat, sizes, n_splits=len(sizes)) if len(sizes) > 1 else [flat]
        offset = 0
        for (name, param), value, piece in zip(entries, values, pieces, strict=True):
            view = piece.reshape(value.shape)
            if view.dtype != param.dtype:
                view = view.astype(param.dtype)
            view = param.type.filter_variable(view)
            view.name = param.name
            self._weight_views[name][param] = view
            self.encoder_params.append(
                EncoderWeight(flat, param.name, offset, value.shape, param.dtype)
            )
            offset += value.size
        self.encoder_weights = flat

    def _call_encoder(self, latent: LocalLatent, inputs: list) -> tuple:
        encoder = self._encoders[latent.name]
        try:
            outputs = encoder(*inputs) if len(inputs) > 1 else encoder(inputs[0])
        except AmortizationError:
            raise
        except Exception as error:
            raise AmortizationError(
                f"The encoder of '{latent.name}' failed on its symbolic inputs: "
                f"{type(error).__name__}: {_first_line(error)}"
            ) from error
        return check_encoder_outputs(latent.name, outputs, latent.event_size)

    def require_units_in_memory(self, what: str) -> None:
        """Raise :class:`AmortizationError` for ``what`` on a fit on ``unit_data``, whose units
        are not in the (template) model."""
        if self.unit_source is not None:
            raise AmortizationError(
                f"{what} needs every unit in the model, and this fit read its "
                f"{self.unit_source.size} units from unit_data (the model is a template of a "
                "few). Per-unit posteriors: approx.encode_dataset(); globals: approx.sample()."
            )

    def require_encoder_family(self, what: str) -> None:
        """Raise :class:`AmortizationError` for ``what`` on a fit whose plates use the conditional
        family, where it is not available yet."""
        if self.conditional_plates:
            raise AmortizationError(
                f"{what} is not available yet for the conditional family q(z_n | θ, x_n) of "
                f"plate(s) {', '.join(sorted(self.conditional_plates))}. Fit with "
                "family='encoder' for it; sample() and encode() of the fitted units work."
            )

    def nonfinite_params(self) -> tuple[str, ...]:
        """Names of the parameters with a NaN or infinite entry, globals by variable."""
        names = self.globals.nonfinite() if self.globals is not None else []
        names += [
            p.name or "unnamed encoder weight"
            for p in self.encoder_params
            if not np.isfinite(p.get_value(borrow=True)).all()
        ]
        return tuple(names)

    # -- the fit's record (read-only here) -------------------------------------------------------
    @property
    def hist(self) -> np.ndarray:
        """The loss of each step (``record.hist``)."""
        return self.record.hist

    @property
    def step_seconds(self) -> np.ndarray:
        """Wall-clock seconds of each step, aligned with ``hist``."""
        return self.record.step_seconds

    @property
    def settings(self) -> dict[str, object]:
        """Options and outcome of the fit (batch size, optimizer, ...), for the results."""
        return self.record.settings

    @property
    def divergence(self):
        """Where the last fit or refine diverged (a :class:`~pymc_amortize.DivergenceInfo`)."""
        return self.record.divergence

    @property
    def gap_check(self):
        """The after-fit amortization-gap check (a :class:`~pymc_amortize.GapCheck`), or None."""
        return self.record.gap_check

    # -- what PyMC's Inference loop reads -------------------------------------------------------
    @property
    def groups(self) -> list[Group]:
        return [self.globals.group] if self.globals is not None else []

    @property
    def global_params(self) -> list[SharedVariable]:
        return self.globals.params if self.globals is not None else []

    @property
    def params(self) -> list[SharedVariable]:
        """Every optimised shared variable: global mean and rho, then ``encoder_weights`` (all the
        encoders' weights in one flat vector)."""
        flat = [self.encoder_weights] if self.encoder_weights is not None else []
        return self.global_params + flat

    @property
    def encoders(self) -> dict[str, Callable]:
        """Each local latent's encoder, by latent name (built-in or the user's)."""
        return dict(self._encoders)

    @property
    def encoder_widths(self) -> dict[str, tuple[int, ...]]:
        """The hidden widths of each built-in encoder (ρ's for a pooled one), as resolved."""
        return {
            name: tuple(int(w) for w in encoder.widths)
            for name, encoder in self._encoders.items()
            if isinstance(encoder, MLPEncoder | PooledEncoder)
        }

    @property
    def latents(self) -> tuple[LocalLatent, ...]:
        return self.analysis.latents

    @property
    def n_global(self) -> int:
        return self.globals.size if self.globals is not None else 0

    def global_factors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Mean and sd of q(θ) for each global, by value variable name, shaped as the variable
        (on its unconstrained space)."""
        return self.globals.factors() if self.globals is not None else {}

    # -- symbolic pieces used by the objective --------------------------------------------------
    def encoder_graph(
        self,
        name: str,
        units: TensorVariable | None,
        rows: TensorVariable | None = None,
        unit_of_row: TensorVariable | None = None,
        n_units: TensorVariable | None = None,
    ) -> tuple[TensorVariable, TensorVariable]:
        """Mean and log-sd (B, event_size) of q(z_n) from standardised inputs.

        ``units`` (B, c) are the unit inputs; for pooled latents ``rows`` (R, k) are the rows,
        ``unit_of_row`` (R,) their unit in 0..B-1 and ``n_units`` is B.
        """
        latent = next(lat for lat in self.analysis.latents if lat.name == name)
        inputs = [units] if rows is None else [rows, unit_of_row, n_units, units]
        outputs = self._call_encoder(latent, inputs)
        views = self._weight_views[name]
        outputs = graph_replace(list(outputs), views, strict=False) if views else outputs
        return tuple(inline_layers(outputs))

    def symbolic_encode(self, name: str, batch: UnitBatch) -> tuple[TensorVariable, TensorVariable]:
        """Mean and log-sd (B, event_size) of q(z_n) for the units of ``batch``."""
        data = self.inputs[name]
        units = None if data.units is None else data.units.symbolic(batch.take_units)
        if data.rows is None:
            return self.encoder_graph(name, units)
        unit_of_row, n_units = batch.pooling_slots()
        if batch.row_weight is not None and units is not None:
            # The padding's extra unit needs a row of unit inputs too (any: it is dropped). A
            # gather, not a concatenate: the gradient of a concatenate is a Split whose
            # positions JAX needs as constants.
            units = units[pt.minimum(pt.arange(n_units), n_units - 2)]
        mean, log_sd = self.encoder_graph(
            name, units, data.rows.symbolic(batch.take_rows), unit_of_row, n_units
        )
        if batch.row_weight is not None:
            mean, log_sd = mean[:-1], log_sd[:-1]
        return mean, log_sd

    def global_draws(self, eps: TensorVariable) -> dict[str, TensorVariable]:
        """Value-space draws ``(S, *shape)`` of each global from standard normal ``eps`` (S, D)."""
        return self.globals.draws(eps)

    # -- results ------------------------------------------------------------------------------
    def _encode_fn(self, name: str):
        if name not in self._encode_fns:
            data = self.inputs[name]
            units = None if data.units is None else pt.matrix("units")
            if data.rows is None:
                inputs = [units]
                mean, log_sd = self.encoder_graph(name, units)
            else:
                rows, unit_of_row, n = pt.matrix("rows"), pt.lvector("unit_of_row"), pt.lscalar("n")
                inputs = [rows, unit_of_row, n] + ([units] if units is not None else [])
                mean, log_sd = self.encoder_graph(name, units, rows, unit_of_row, n)
            self._encode_fns[name] = _compile_once(inputs, [mean, pt.exp(log_sd)])
        return self._encode_fns[name]

    # -- new units ------------------------------------------------------------------------------
    def _unit_request(self, plate: Plate, new_data, units) -> NewUnits | None:
        """How many new units ``plate`` gets, their coords, and each row's unit; None when the
        call concerns none of its units."""
        given = units.get(plate.name, units.get(plate.dim)) if isinstance(units, Mapping) else units
        if isinstance(units, Mapping) and given is None:
            # A mapping names the plates that get new units; the others keep their fitted units
            # (a crossed model's new actor whose rows name known blocks must not make new blocks).
            return None
        data = new_data if isinstance(new_data, Mapping) else {}
        keys = {d.key for lat in plate.latents for d in lat.unit_inputs + lat.row_inputs}
        keys |= {lat.name for lat in plate.latents if lat.input_matrix is not None}
        has_data = not isinstance(new_data, Mapping) and new_data is not None
        has_data = has_data or any(k in data for k in keys)
        if not has_data and (given is None or plate.index is None):
            return None
        labels = None
        if given is not None:
            if isinstance(given, int | np.integer):
                if given < 1:
                    raise AmortizationError(f"units= must be a positive count; got {given}.")
                labels = np.arange(int(given))
            else:
                labels = np.asarray(list(given))
                if labels.ndim != 1 or labels.size == 0 or len(set(labels.tolist())) != labels.size:
                    raise AmortizationError(
                        "units= must be a positive count or a sequence of distinct coords of the "
                        f"new units; got {given!r}."
                    )
        n_unit_rows = self._new_unit_rows(plate, new_data)
        if plate.index is None:  # a row plate: each unit is its own row of data
            if n_unit_rows is None:
                raise AmortizationError(
                    f"The units of plate '{plate.name}' are rows of data; a new unit without data "
                    f"cannot be given (pass its {', '.join(sorted(keys))})."
                )
            if labels is not None and labels.size != n_unit_rows:
                raise AmortizationError(
                    f"units= names {labels.size} new units of plate '{plate.name}', but its data "
                    f"have {n_unit_rows} rows (one per unit)."
                )
            labels = np.arange(n_unit_rows) if labels is None else labels
            return NewUnits(labels, None, None)
        key = plate.index_key
        n_rows = self._new_row_count(plate, data)
        index = data.get(key)
        if index is not None:
            index = np.asarray(index)
            if (
                index.ndim != 1
                or index.dtype.kind not in "iu"
                or (n_rows is not None and index.size != n_rows)
            ):
                raise AmortizationError(
                    f"new_data['{key}'] must be an integer vector with one entry per row "
                    f"({n_rows if n_rows is not None else 'as many as the rows'}); got shape "
                    f"{index.shape}, dtype {index.dtype}."
                )
            n_rows = index.size
            if index.size and index.min() < 0:
                raise AmortizationError(f"new_data['{key}'] has negative unit ids.")
        n_rows = n_rows or 0
        if labels is None and n_unit_rows is not None:
            labels = np.arange(n_unit_rows)
        if labels is not None:
            if n_unit_rows is not None and n_unit_rows != labels.size:
                raise AmortizationError(
                    f"The unit inputs of plate '{plate.name}' have {n_unit_rows} rows but "
                    f"{labels.size} new units are given."
                )
            if index is None:
                if n_rows and labels.size > 1:
                    raise AmortizationError(
                        f"new_data has {n_rows} rows for {labels.size} new units of plate "
                        f"'{plate.name}'; give each row's unit (0..{labels.size - 1}) as "
                        f"new_data['{key}']."
                    )
                index = np.zeros(n_rows, dtype=np.int64)
            elif index.size and index.max() >= labels.size:
                bad = np.unique(index[index >= labels.size])
                raise AmortizationError(
                    f"new_data['{key}'] has unit ids {bad.tolist()} outside the {labels.size} new "
                    f"units (0..{labels.size - 1}); new units are given by units= (or the unit "
                    "inputs' rows), and each row's unit is its position among them."
                )
        else:
            if index is None:
                index = np.zeros(n_rows, dtype=np.int64)
            n_units = int(index.max()) + 1 if index.size else 1
            empty = np.flatnonzero(np.bincount(index, minlength=n_units) == 0)
            if empty.size:
                raise AmortizationError(
                    f"new_data['{key}'] names no rows for unit id(s) {empty.tolist()} below its "
                    f"largest id {n_units - 1}. A new unit with no rows gets its prior given the "
                    f"globals: declare the new units with units={n_units} (or their coords), or "
                    "renumber the ids 0..M-1 without gaps."
                )
            labels = np.arange(n_units)
        index = index.astype(np.int64)
        return NewUnits(labels, index, np.bincount(index, minlength=labels.size).astype(np.int64))

    def _new_unit_rows(self, plate: Plate, new_data) -> int | None:
        """Rows of the new units' unit inputs in ``new_data`` (None when it has none)."""
        if not isinstance(new_data, Mapping):
            return None if new_data is None else int(np.shape(new_data)[0])
        for latent in plate.latents:
            keys = [d.key for d in latent.unit_inputs]
            keys += [latent.name] if latent.input_matrix is not None else []
            for key in keys:
                if key in new_data:
                    return int(np.shape(new_data[key])[0]) if np.ndim(new_data[key]) else 1
        return None

    def _new_row_count(self, plate: Plate, data: Mapping) -> int | None:
        for latent in plate.latents:
            for item in latent.row_inputs:
                if item.key in data:
                    return int(np.shape(data[item.key])[0]) if np.ndim(data[item.key]) else 1
        return None

    def _new_inputs(
        self, latent: LocalLatent, plate: Plate, new_data, request: NewUnits
    ) -> tuple[list, np.ndarray | None, np.ndarray | None]:
        """Standardised encoder arguments for the new units, and the standardised unit and row
        matrices (for the envelope)."""
        data = self.inputs[latent.name]
        floatx = pytensor.config.floatX
        if not isinstance(new_data, Mapping) and new_data is not None:
            if len(self.analysis.latents) != 1 or data.rows is not None:
                raise AmortizationError(
                    "Pass new units' data as {data name: array}; an array alone is accepted only "
                    "for a model with one local latent fed by unit inputs."
                )
            matrix = np.asarray(new_data, dtype=float)
            matrix = matrix.reshape(matrix.shape[0], -1)
            width = data.units.raw_width
            if matrix.shape[1] != width:
                raise AmortizationError(
                    f"The encoder of '{latent.name}' takes {width} input column(s); got "
                    f"{matrix.shape[1]}."
                )
            _check_width(latent, matrix, data.units, "unit inputs")
            units = data.unit_scaling.apply(_checked_matrix(latent.name, matrix, None))
            return [units.astype(floatx)], units, None
        new_data = new_data or {}
        units = None
        if latent.input_matrix is not None:
            if latent.name not in new_data:
                raise AmortizationError(
                    f"'{latent.name}' was fitted on an explicit input matrix; pass "
                    f"{{'{latent.name}': matrix}} for the new units."
                )
            matrix = np.asarray(new_data[latent.name])
            units = _checked_matrix(latent.name, matrix.reshape(matrix.shape[0], -1), None)
        elif latent.unit_inputs:
            units = _stack(latent, latent.unit_inputs, new_data, "unit inputs")
        if units is not None:
            _check_width(latent, units, data.units, "unit inputs")
            units = data.unit_scaling.apply(units).astype(floatx)
        if data.rows is None:
            return [units], units, None
        if request.unit_of_row.size == 0 and not any(d.key in new_data for d in latent.row_inputs):
            rows = np.zeros((0, data.rows.width), dtype=floatx)
        else:
            rows = _stack(latent, latent.row_inputs, new_data, "row inputs")
            _check_width(latent, rows, data.rows, "row inputs")
            rows = data.row_scaling.apply(rows).astype(floatx)
        args = [rows, request.unit_of_row, np.int64(request.labels.size)]
        return args + ([units] if units is not None else []), units, rows

    def _encode_new(
        self, new_data, units, check_range: bool
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, NewUnits]]:
        """Encoder mean and sd (value space, (M, *event_shape)) of the new units of every plate
        the call concerns, and each plate's :class:`NewUnits`. A zero-row unit's entries are NaN:
        its posterior is its prior given the globals, drawn by the callers."""
        if isinstance(new_data, Mapping):
            _check_new_observations(self.model, new_data)
        out, requests, warned = {}, {}, []
        for plate in self.analysis.plates:
            request = self._unit_request(plate, new_data, units)
            if request is None:
                continue
            requests[plate.name] = request
            prior_only = request.prior_only
            flat = {}
            for latent in plate.latents:
                args, unit_matrix, row_matrix = self._new_inputs(latent, plate, new_data, request)
                n = request.labels.size
                if prior_only.all():
                    mean = sd = np.full((n, latent.event_size), np.nan)
                else:
                    mean, sd = self._encode_fn(latent.name)(*args)
                    mean, sd = np.array(mean, dtype=float), np.array(sd, dtype=float)
                    mean[prior_only], sd[prior_only] = np.nan, np.nan
                flat[latent.name] = (mean, sd)
                envelope = self.envelopes.get(latent.name)
                if check_range and envelope is not None:
                    data = self.inputs[latent.name]
                    found = envelope.findings(
                        units=unit_matrix,
                        rows=row_matrix,
                        unit_of_row=request.unit_of_row,
                        counts=request.counts,
                        n_units=n,
                        skip=prior_only,
                        unit_scaling=data.unit_scaling,
                        row_scaling=data.row_scaling,
                    )
                    warned += [
                        f"'{latent.name}' unit {request.labels.tolist()[j]!r}: {text}"
                        for j, text in found.items()
                    ]
            self._temper_by_count(plate, request, new_data, flat)
            for latent in plate.latents:
                mean, sd = flat[latent.name]
                self._check_new_outputs(latent, request, mean, sd)
                shape = (request.labels.size, *latent.event_shape)
                out[latent.name] = (mean.reshape(shape), sd.reshape(shape))
        if warned:
            warnings.warn(
                f"{len(warned)} new unit(s) have encoder inputs outside what the encoder saw in "
                "training, so their q(z) is an extrapolation: "
                + "; ".join(warned)
                + ". Pass check_range=False to silence this warning.",
                OutOfTrainingRangeWarning,
                stacklevel=3,
            )
        return out, requests

    def _temper_by_count(
        self, plate: Plate, request: NewUnits, new_data, flat: dict[str, tuple]
    ) -> None:
        """New units of a plate whose fitted units all have k rows, given n != k rows: q(z) from
        the encoder's output (which reads them as a unit of k rows, see
        :class:`~pymc_amortize.PooledEncoder`'s ``constant_count``) with the rows' likelihood
        message scaled by n / k, in place.

        An encoder that saw one count cannot tell how the posterior depends on it. The rows of a
        unit are exchangeable and each carries its share of the likelihood, so on the value space
        the message of the rows is q's natural parameters less the prior's (p(z | θ) under q(θ),
        Gaussian moments of its draws), and n rows carry n / k times the message of k rows with
        the same pooled summary. Exact for a Gaussian likelihood with known noise (the pooled
        mean is sufficient), a Laplace-style approximation otherwise.
        """
        if request.counts is None:
            return
        latents = [
            lat
            for lat in plate.latents
            if isinstance(self._encoders[lat.name], PooledEncoder)
            and self._encoders[lat.name].constant_count
            and lat.name in flat
        ]
        if not latents:
            return
        k = round(float(np.expm1(self._encoders[latents[0].name].log_count_center)))
        units = (request.counts > 0) & (request.counts != k)
        if not units.any() or k < 1:
            return
        rng = np.random.default_rng(0)
        prior = self._prior_draws(
            plate,
            self._resized_for(plate, request, new_data),
            request.labels.size,
            self.draw_globals(COUNT_PRIOR_DRAWS, rng),
            rng,
        )
        ratio = (request.counts[units] / k)[:, None]
        for latent in latents:
            draws = self._to_value(latent, prior[latent.name])
            draws = draws.reshape(draws.shape[0], request.labels.size, -1)[:, units]
            prior_precision = 1.0 / np.maximum(draws.var(axis=0), 1e-300)
            prior_mean = draws.mean(axis=0)
            mean, sd = flat[latent.name]
            precision = 1.0 / sd[units] ** 2
            # The rows' message; none where the encoder is wider than the prior.
            message = np.maximum(precision - prior_precision, 0.0)
            shift = np.where(
                message > 0, mean[units] * precision - prior_mean * prior_precision, 0.0
            )
            total = prior_precision + ratio * message
            mean[units] = (prior_mean * prior_precision + ratio * shift) / total
            sd[units] = 1.0 / np.sqrt(total)

    def _check_new_outputs(
        self, latent: LocalLatent, request: NewUnits, mean: np.ndarray, sd: np.ndarray
    ) -> None:
        """Raise when the encoder's q(z) of a new unit (with rows) is not finite, or lies absurdly
        far outside what it gave the fitted units: a mean more than ``ABSURD_MEAN_WIDTHS`` times
        the width of the fitted units' means (or their largest sd) beyond their range, or an sd
        beyond ``ABSURD_SD_RATIO`` times their range of sds."""
        rows = ~request.prior_only
        bad = rows & ~(np.isfinite(mean).all(axis=1) & np.isfinite(sd).all(axis=1))
        bad |= rows & (sd <= 0).any(axis=1)
        what = "NaN or inf"
        if not bad.any():
            low, high, sd_low, sd_high = self._fitted_output_range(latent.name)
            width = np.maximum(np.maximum(high - low, sd_high), 1e-12 * np.abs(high))
            far = (mean < low - ABSURD_MEAN_WIDTHS * width) | (
                mean > high + ABSURD_MEAN_WIDTHS * width
            )
            wild = (sd < sd_low / ABSURD_SD_RATIO) | (sd > sd_high * ABSURD_SD_RATIO)
            bad = rows & (far | wild).any(axis=1)
            what = (
                f"a mean outside [{_fmt(low - ABSURD_MEAN_WIDTHS * width)}, "
                f"{_fmt(high + ABSURD_MEAN_WIDTHS * width)}] or an sd outside "
                f"[{_fmt(sd_low / ABSURD_SD_RATIO)}, {_fmt(sd_high * ABSURD_SD_RATIO)}] "
                f"(fitted units: means in [{_fmt(low)}, {_fmt(high)}], sds in "
                f"[{_fmt(sd_low)}, {_fmt(sd_high)}])"
            )
        if not bad.any():
            return
        positions = np.flatnonzero(bad)
        labels = request.labels.tolist()
        named = ", ".join(repr(labels[j]) for j in positions[:5])
        more = f" and {positions.size - 5} more" if positions.size > 5 else ""
        j = positions[0]
        raise AmortizationError(
            f"The encoder of '{latent.name}' gave {positions.size} new unit(s) ({named}{more}) "
            f"{what}: unit {labels[j]!r} got mean {_fmt(mean[j])}, sd {_fmt(sd[j])} on the "
            "latent's unconstrained space. Its inputs lie far outside what the encoder was "
            "trained on (see the OutOfTrainingRangeWarning, if not silenced); its q(z) would be "
            "an extrapolation without meaning. Fit with units like these, or check the data."
        )

    def _fitted_output_range(self, name: str) -> tuple[np.ndarray, ...]:
        """Per event entry: the range of the encoder's means and sds over the fitted units with
        rows (for a fit on unit_data, its first ``OUTPUT_RANGE_UNITS`` units), cached for the
        current encoder weights."""
        weights = None if self.encoder_weights is None else self.encoder_weights.get_value()
        key = (name, None if weights is None else hash(weights.tobytes()))
        cache = self._output_ranges
        if key not in cache:
            plate = self.analysis.plate_of(name)
            streamed = self.unit_source is not None and plate is self.unit_source.plate
            stop = min(plate.size, OUTPUT_RANGE_UNITS) if streamed else plate.size
            pieces = [
                self.encode_units(name, start, min(start + OUTPUT_RANGE_UNITS, stop))
                for start in range(0, stop, OUTPUT_RANGE_UNITS)
            ]
            mean = np.concatenate([m for m, _ in pieces])
            sd = np.concatenate([v for _, v in pieces])
            with_rows = ~_units_without_rows(plate)[: mean.shape[0]]
            mean = mean.reshape(mean.shape[0], -1)[with_rows]
            sd = sd.reshape(sd.shape[0], -1)[with_rows]
            if mean.shape[0] == 0:
                mean, sd = np.zeros((1, mean.shape[1])), np.ones((1, sd.shape[1]))
            cache.clear()
            cache[key] = (mean.min(0), mean.max(0), sd.min(0), sd.max(0))
        return cache[key]

    def _unit_data(self, plate: Plate, new_data, request: NewUnits) -> dict[str, np.ndarray]:
        """The model's data under the plate's unit dim, for the new units (from ``new_data``)."""
        data = new_data if isinstance(new_data, Mapping) else {}
        out = {}
        for name in _data_under(self.model, plate.dim, plate.batched_units):
            if name in data:
                out[name] = np.asarray(data[name])
            elif self._is_observed(name):
                continue  # an observed pm.Data: forward draws do not read it
            else:
                raise AmortizationError(
                    f"The new units of plate '{plate.name}' need '{name}' (model data with one "
                    f"row per unit), {request.labels.size} row(s); got {sorted(data)}."
                )
        return out

    def _is_observed(self, name: str) -> bool:
        var = self.model[name]
        return any(self.model.rvs_to_values[rv] is var for rv in self.model.observed_RVs)

    def _fitted_encoder_outputs(
        self, chunk_size: int = 100_000
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The encoders' (mean, sd) of every fitted unit, unconstrained, chunk by chunk."""
        out = {}
        for plate in self.analysis.plates:
            for latent in plate.latents:
                mean = np.empty((plate.size, *latent.event_shape))
                sd = np.empty_like(mean)
                for start in range(0, plate.size, chunk_size):
                    stop = min(start + chunk_size, plate.size)
                    mean[start:stop], sd[start:stop] = self.encode_units(latent.name, start, stop)
                out[latent.name] = (mean, sd)
        return out

    def _conditional_moments(
        self,
        draws: int,
        rng: np.random.Generator,
        encoded: Mapping[str, tuple[np.ndarray, np.ndarray]],
        block: int = 250,
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Value-space mean and sd of the conditional plates' marginal q(z_n), from ``draws``
        joint draws taken ``block`` at a time (memory ``block`` x N)."""
        moments: dict[str, list[np.ndarray]] = {}
        q = {name: LocalPosterior(mean, sd) for name, (mean, sd) in encoded.items()}
        done = 0
        while done < draws:
            size = min(block, draws - done)
            values = self.draw_globals(size, rng) | self._draw_locals(size, rng, q)
            for name, value in self.conditional_sampler(values, rng).items():
                total = moments.setdefault(name, [0.0, 0.0])
                total[0] = total[0] + value.sum(axis=0)
                total[1] = total[1] + (value**2).sum(axis=0)
            done += size
        out = {}
        for latent in self.analysis.latents:
            if latent.value_name in moments:
                first, second = (m / draws for m in moments[latent.value_name])
                out[latent.name] = (first, np.sqrt(np.maximum(second - first**2, 0.0)))
        return out

    def conditional_sampler(
        self, values: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Draws of the conditional plates' locals given (S, ...) draws ``values`` of every other
        free variable (by value name), through a :class:`~pymc_amortize.conditional.
        ConditionalSampler` compiled on first use."""
        if self._conditional_sampler is None:
            plates = [p for p in self.analysis.plates if p.name in self.conditional_plates]
            self._conditional_sampler = ConditionalSampler(
                self.model,
                self.analysis,
                self.local_family,
                plates,
                self.symbolic_encode,
                {p.name: self.layouts[p.name].full() for p in plates},
            )
        return self._conditional_sampler(values, rng)

    def _fitted_other_locals(
        self, plate: Plate, draws: int, rng, outputs: Mapping | None = None
    ) -> dict[str, np.ndarray]:
        """Value-space draws of the local latents of the other plates, from their encoders
        (``outputs``: :meth:`_fitted_encoder_outputs`, when the caller has them already)."""
        others = [p for p in self.analysis.plates if p.name != plate.name]
        if not others:
            return {}
        outputs = self._fitted_encoder_outputs() if outputs is None else outputs
        q = {lat.name: LocalPosterior(*outputs[lat.name]) for p in others for lat in p.latents}
        return self._draw_locals(draws, rng, q)

    def _resized_for(self, plate: Plate, request: NewUnits, new_data) -> pm.Model:
        """A copy of the model whose ``plate`` has the requested new units and their data."""
        return resized_model(
            self.model,
            dim=plate.dim,
            coords=request.labels,
            data=self._unit_data(plate, new_data, request),
            what=f"'{plate.latents[0].name}'",
        )

    def _prior_draws(
        self,
        plate: Plate,
        model: pm.Model,
        n_units: int,
        global_values: Mapping[str, np.ndarray],
        rng: np.random.Generator,
        outputs: Mapping | None = None,
    ) -> dict[str, np.ndarray]:
        """Constrained draws (S, n_units, ...) of the plate's latents from their prior given each
        draw of the globals, by PyMC's forward sampling on ``model``: the fitted model (for its
        units without rows) or a copy resized to new units (:meth:`_resized_for`). The other
        plates' latents come from their encoders (``outputs``, see :meth:`_fitted_other_locals`).
        """
        draws = len(next(iter(global_values.values()))) if global_values else 1
        values = dict(global_values) | self._fitted_other_locals(plate, draws, rng, outputs)
        for latent in plate.latents:  # placeholders: drawn below, not read
            values[latent.value_name] = np.zeros((draws, n_units, *latent.event_shape))
        kept = [rv.name for rv in model.free_RVs if rv.name not in plate.latent_names]
        if kept:
            idata = posterior_dataset(model, values, var_names=kept)
        else:  # nothing to condition on: the prior itself
            idata = xr.DataTree.from_dict(
                {"posterior": xr.Dataset(coords={"chain": [0], "draw": np.arange(draws)})}
            )
        try:
            drawn = forward_draws(
                model, idata, plate.latent_names, random_seed=rng, predictions=True
            )
        except AmortizationError:
            raise
        except Exception as error:
            raise AmortizationError(
                f"Drawing the prior of {', '.join(plate.latent_names)} for units with no rows "
                f"failed: {type(error).__name__}: {_first_line(error)}"
            ) from error
        return {name: drawn.predictions[name].values[0] for name in plate.latent_names}

    def _transform_fn(self, latent: LocalLatent, direction: str):
        """Compiled map of a latent's draws between its value space and its constrained space."""
        key = (latent.name, direction)
        if key not in self._transform_fns:
            rv = self.model[latent.name]
            transform = self.model.rvs_to_transforms.get(rv)
            if transform is None:
                self._transform_fns[key] = None
            else:
                ndim = 1 + rv.type.ndim  # a leading draw axis
                x = pt.tensor("x", dtype=rv.type.dtype, shape=(None,) * ndim)
                method = transform.backward if direction == "backward" else transform.forward
                self._transform_fns[key] = _compile_once([x], method(x, *rv.owner.inputs))
        return self._transform_fns[key]

    def _to_constrained(self, latent: LocalLatent, values: np.ndarray) -> np.ndarray:
        fn = self._transform_fn(latent, "backward")
        return (
            values if fn is None else np.asarray(fn(values.astype(self.model[latent.name].dtype)))
        )

    def _to_value(self, latent: LocalLatent, values: np.ndarray) -> np.ndarray:
        fn = self._transform_fn(latent, "forward")
        return (
            values if fn is None else np.asarray(fn(values.astype(self.model[latent.name].dtype)))
        )

    def _summary(
        self, latent: LocalLatent, mean: np.ndarray, sd: np.ndarray, levels: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and quantiles of z_n on the latent's constrained scale under q = N(mean, sd²) on
        the value space: exact for an untransformed or log-transformed latent, else Monte Carlo
        (``SUMMARY_DRAWS`` draws of a fixed seed, so that ``encode`` is deterministic)."""
        z = _normal_ppf(np.asarray(levels))
        z = z.reshape((-1,) + (1,) * mean.ndim)
        transform = self.model.rvs_to_transforms.get(self.model[latent.name])
        if transform is None:
            return mean.copy(), mean + sd * z
        if isinstance(transform, LogTransform):
            return np.exp(mean + sd**2 / 2), np.exp(mean + sd * z)
        rng = np.random.default_rng(0)
        means, quantiles = [], []
        chunk = max(1, 200_000 // (SUMMARY_DRAWS * max(latent.event_size, 1)))
        for start in range(0, mean.shape[0], chunk):
            m, s = mean[start : start + chunk], sd[start : start + chunk]
            draws = m + s * rng.standard_normal((SUMMARY_DRAWS, *m.shape))
            constrained = self._to_constrained(latent, draws)
            means.append(constrained.mean(axis=0))
            quantiles.append(np.quantile(constrained, levels, axis=0))
        if not means:
            shape = self._to_constrained(latent, np.zeros((1, 1, *latent.event_shape))).shape[2:]
            return np.zeros((0, *shape)), np.zeros((len(levels), 0, *shape))
        return np.concatenate(means), np.concatenate(quantiles, axis=1)

    def encode_units(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Encoder mean and sd of q(z_n) for the fitted units ``start:stop`` of ``name``'s plate.

        Parameters
        ----------
        name : str
            A local latent.
        start, stop : int
            Units ``start <= n < stop`` of its plate (with all their rows).

        Returns
        -------
        mean, sd : ndarray
            ``(stop - start, *event_shape)`` float64, on the latent's unconstrained (value) space.
        """
        latent = next(lat for lat in self.analysis.latents if lat.name == name)
        data = self.inputs[name]
        units = None if data.units is None else data.units.chunk(start, stop)
        if data.rows is None:
            args = [units]
        else:
            rows, slot = self._fitted_rows(name, start, stop)
            args = [rows, slot, np.int64(stop - start)]
            args += [units] if units is not None else []
        mean, sd = self._encode_fn(name)(*args)
        shape = (stop - start, *latent.event_shape)
        return (
            np.asarray(mean, dtype=float).reshape(shape),
            np.asarray(sd, dtype=float).reshape(shape),
        )

    def encode_dataset(
        self,
        *,
        chunk_size: int = 100_000,
        progressbar: bool = True,
        summary: bool = True,
        quantiles: Sequence[float] = QUANTILE_LEVELS,
        store=None,
    ) -> xr.Dataset:
        """The posterior q(z_n) of every fitted unit, encoded chunk by chunk, as an xarray Dataset.

        For millions of units: the encoder's temporaries are bounded by ``chunk_size``, and with
        ``store`` each chunk is appended to a zarr store as it is computed, so that the results
        need not fit in memory either.

        Parameters
        ----------
        chunk_size : int, default 100,000
            Units per forward pass (and the zarr chunk length along the unit dim).
        progressbar : bool, default True
            Show PyMC's progress bar over the chunks.
        summary : bool, default True
            Also the constrained-scale mean and quantiles (see :meth:`encode`).
        quantiles : sequence of float, default (0.05, 0.5, 0.95)
            Levels of the constrained-scale quantiles.
        store : str, path or zarr store, optional
            Write the dataset there, chunk by chunk (``Dataset.to_zarr``, overwriting it), and
            return it opened lazily from there (dask-backed when dask is installed).

        Returns
        -------
        xarray.Dataset
            Per local latent ``<name>_mean`` and ``<name>_sd`` ``(unit dim, *event dims)`` on the
            unconstrained (value) space; with ``summary``, ``<name>`` ``(unit dim, *dims)`` the
            posterior mean on the latent's own scale and ``<name>_quantiles`` ``(quantile, unit
            dim, *dims)``. The unit dim is the plate's dim (its coords when the model has them).
            Equal to :meth:`encode` whatever ``chunk_size``.

        Examples
        --------
        .. code-block:: python

            posterior = approx.encode_dataset(chunk_size=500_000, store="units.zarr")
            posterior["z_mean"].sel(unit=slice(0, 10)).values
        """
        self.require_encoder_family("encode_dataset()")
        if not isinstance(chunk_size, int | np.integer) or chunk_size <= 0:
            raise AmortizationError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
        chunk_size = int(chunk_size)
        levels = tuple(float(q) for q in quantiles)
        parts = [
            ChunkedPart(
                self._unit_dim(plate),
                plate.size,
                functools.partial(
                    self._unit_dataset,
                    plate,
                    summary=summary,
                    levels=levels,
                    labels=self._unit_labels(plate),
                ),
            )
            for plate in self.analysis.plates
            if plate.latents
        ]
        return assemble_chunks(
            parts,
            chunk_size=chunk_size,
            description="Encoding units",
            progressbar=progressbar,
            store=store,
        )

    def _unit_dim(self, plate: Plate) -> str:
        return plate.dim if plate.dim is not None else plate.name

    def _unit_labels(self, plate: Plate) -> np.ndarray | None:
        """The plate's unit coords as one array (None without coords). Converted once per call and
        sliced per chunk, a chunk's labels keep the whole array's dtype: string labels converted
        chunk by chunk ("c9" then "c10") failed to append to zarr (dtype <U2, then <U3)."""
        source = self.unit_source
        if source is not None and plate is source.plate:
            # The units are the dataset's, not the template model's.
            if source.dim in source.dataset.coords:
                return np.asarray(source.dataset[source.dim].values)
            return None
        values = self.model.coords.get(plate.dim) if plate.dim is not None else None
        return None if values is None else np.asarray(values)

    def _unit_dataset(
        self,
        plate: Plate,
        start: int,
        stop: int,
        summary: bool,
        levels: tuple[float, ...],
        labels: np.ndarray | None,
    ) -> xr.Dataset:
        """The posterior of the fitted units ``start:stop`` of ``plate``, whose coords are
        ``labels`` (see :meth:`encode_dataset` and :meth:`_unit_labels`)."""
        dim = self._unit_dim(plate)
        coords = {}
        if labels is not None:
            coords[dim] = labels[start:stop]
        data_vars = {}
        for latent in plate.latents:
            mean, sd = self.encode_units(latent.name, start, stop)
            model_dims = list(self.model.named_vars_to_dims.get(latent.name) or ())[1:]
            value_dims = (
                model_dims
                if len(model_dims) == len(latent.event_shape)
                else [f"{latent.name}_dim_{i}" for i in range(len(latent.event_shape))]
            )
            data_vars[f"{latent.name}_mean"] = ([dim, *value_dims], mean)
            data_vars[f"{latent.name}_sd"] = ([dim, *value_dims], sd)
            if summary:
                post = self._local_posterior(
                    latent, mean, sd, np.zeros(stop - start, bool), levels, True
                )
                own = post.constrained_mean
                own_dims = (
                    model_dims
                    if len(model_dims) == own.ndim - 1
                    else [f"{latent.name}_dim_{i}" for i in range(own.ndim - 1)]
                )
                if own.shape[1:] != mean.shape[1:] and own_dims == value_dims:
                    own_dims = [f"{latent.name}_constrained_dim_{i}" for i in range(own.ndim - 1)]
                data_vars[latent.name] = ([dim, *own_dims], own)
                data_vars[f"{latent.name}_quantiles"] = (
                    ["quantile", dim, *own_dims],
                    post.quantiles,
                )
        if summary:
            coords["quantile"] = np.asarray(levels)
        # The model's labels of the event dims, where a variable has them at their length (a
        # simplex's value space is one shorter than its dim).
        sizes = {
            d: n
            for dims, values in data_vars.values()
            for d, n in zip(dims, values.shape, strict=True)
        }
        for name, size in sizes.items():
            labels_of_dim = self.model.coords.get(name)
            if name not in coords and labels_of_dim is not None and len(labels_of_dim) == size:
                coords[name] = np.asarray(labels_of_dim)
        return xr.Dataset(data_vars, coords=coords, attrs={"unit_dim": dim})

    def encode(
        self,
        new_data: Mapping[str, np.ndarray] | np.ndarray | None = None,
        *,
        units: int | Sequence | Mapping[str, int | Sequence] | None = None,
        check_range: bool = True,
        quantiles: Sequence[float] = QUANTILE_LEVELS,
        prior_draws: int = 4000,
        random_seed: int | None = 0,
        summary: bool = True,
        chunk_size: int = 100_000,
    ) -> dict[str, LocalPosterior]:
        """The posterior q(z_n) of each unit, in one forward pass of the encoders.

        Parameters
        ----------
        new_data : mapping or ndarray, optional
            Data of new units by the keys of the encoders' inputs (see ``approx.analysis``):
            unit inputs with one row per new unit; for an indexed plate its row inputs, one row per
            observation, and each row's unit, its position 0..M-1 among the new units, under the
            index's name (all rows form one unit when omitted and there is one new unit). An
            (M, k) array is accepted for a model with one local latent fed by unit inputs.
            Latents whose inputs are absent are left out. When omitted (and ``units`` too), the
            units the model was fitted on.
        units : int, sequence or mapping, optional
            The new units of an indexed plate: their number M or their M coords (a mapping
            ``{plate name: ...}`` for one plate of several; the plates it leaves out keep their
            fitted units and are not encoded, so a crossed model's new rows may name known units
            of the other grouping). A unit that no row names (no entry
            of the index equals its position) is a **zero-row unit**: its posterior is its prior
            given the globals, ``p(z | θ)`` under ``q(θ)``. Without ``units`` the new units are
            the unit inputs' rows, else the index values 0..max, which must then all have rows
            (an index value outside the new units raises). ``encode(units=2)`` gives two new
            units without any data.
        check_range : bool, default True
            Warn (:class:`~pymc_amortize.OutOfTrainingRangeWarning`) when new units' encoder inputs
            lie outside the range seen in training, naming the units and by how much.
        quantiles : sequence of float, default (0.05, 0.5, 0.95)
            Levels of the constrained-scale quantiles.
        prior_draws : int, default 4000
            Draws of (θ, z) behind a zero-row unit's summary (its Monte Carlo error is about
            sd / sqrt(prior_draws)).
        random_seed : int, optional
            Seed of those draws (fixed by default, so that ``encode`` is deterministic).
        summary : bool, default True
            Compute the constrained-scale summary (False leaves those fields None).
        chunk_size : int, default 100,000
            Fitted units encoded per forward pass, which bounds the encoder's temporaries; the
            results are the same for any chunk size. For millions of units see
            :meth:`encode_dataset`, which also bounds the results' memory.

        Returns
        -------
        dict of str to LocalPosterior
            Per local latent: ``mean`` and ``sd`` of shape ``(M, *event_shape)`` on the latent's
            unconstrained (value) space, the Gaussian the encoder outputs; ``constrained_mean``
            ``(M, *shape)`` and ``quantiles`` ``(len(quantiles), M, *shape)`` on the latent's own
            scale (e.g. a positive rate, a simplex); ``prior_only`` (M,) marks zero-row units,
            whose summaries are Monte Carlo moments of their prior given q(θ).

        Examples
        --------
        .. code-block:: python

            approx = pm.fit(10_000, method="amortized", model=model)
            q_new = approx.encode({"x": np.array([0.5, 2.0])})["z"]
            q_new.mean, q_new.sd, q_new.constrained_mean, q_new.quantiles
            # Two new counties: the first with no rows (its prior given the globals).
            q = approx.encode({"y": y_rows, "county_idx": np.ones(5, int)}, units=2)["a"]
        """
        out = {}
        if new_data is None and units is None:
            encoded = self._fitted_encoder_outputs(chunk_size)
            rng = np.random.default_rng(random_seed)
            if self.conditional_plates:
                # q(z_n) = ∫ q(z_n | θ) q(θ) dθ: its moments from draws, not the encoder's output.
                encoded |= self._conditional_moments(prior_draws, rng, encoded)
            for plate in self.analysis.plates:
                empty = _units_without_rows(plate)
                prior = {}
                if empty.any():
                    prior = self._prior_draws(
                        plate,
                        self.model,
                        plate.size,
                        self.draw_globals(prior_draws, rng),
                        rng,
                        encoded,
                    )
                for latent in plate.latents:
                    mean, sd = encoded[latent.name]
                    out[latent.name] = self._local_posterior(
                        latent, mean, sd, empty, quantiles, summary, prior.get(latent.name)
                    )
            return out
        self.require_encoder_family("encode() of new units")
        encoded, requests = self._encode_new(new_data, units, check_range)
        if not encoded:
            keys = sorted({k for lat in self.analysis.latents for k in lat.input_names})
            raise AmortizationError(
                f"new_data has none of the encoders' inputs ({', '.join(keys)}); got "
                f"{sorted(new_data) if isinstance(new_data, Mapping) else type(new_data).__name__}."
            )
        rng = np.random.default_rng(random_seed)
        for plate in self.analysis.plates:
            request = requests.get(plate.name)
            if request is None:
                continue
            prior = {}
            if request.prior_only.any():
                prior = self._prior_draws(
                    plate,
                    self._resized_for(plate, request, new_data),
                    request.labels.size,
                    self.draw_globals(prior_draws, rng),
                    rng,
                )
            for latent in plate.latents:
                if latent.name not in encoded:
                    continue
                mean, sd = encoded[latent.name]
                post = self._local_posterior(
                    latent, mean, sd, request.prior_only, quantiles, summary, prior.get(latent.name)
                )
                out[latent.name] = post
        return out

    def _local_posterior(
        self,
        latent: LocalLatent,
        mean: np.ndarray,
        sd: np.ndarray,
        prior_only: np.ndarray,
        levels: Sequence[float],
        summary: bool,
        prior: np.ndarray | None = None,
    ) -> LocalPosterior:
        """Assemble a :class:`LocalPosterior`; zero-row units' entries from their prior draws
        ``prior`` (S, M, ...) on the constrained scale."""
        levels = tuple(float(q) for q in levels)
        constrained_mean = quantiles = None
        if summary:
            constrained_mean, quantiles = self._summary(
                latent, np.nan_to_num(mean), np.nan_to_num(sd, nan=1.0), levels
            )
        if prior is not None and prior_only.any():
            mean, sd = mean.copy(), sd.copy()
            value = self._to_value(latent, prior)[:, prior_only]
            mean[prior_only], sd[prior_only] = value.mean(axis=0), value.std(axis=0)
            if summary:
                own = prior[:, prior_only]
                constrained_mean[prior_only] = own.mean(axis=0)
                quantiles[:, prior_only] = np.quantile(own, levels, axis=0)
        return LocalPosterior(mean, sd, prior_only, constrained_mean, quantiles, levels)

    def draw_globals(self, draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.globals.sample(draws, rng) if self.globals is not None else {}

    def _draw_locals(
        self, draws: int, rng: np.random.Generator, encoded: dict[str, LocalPosterior]
    ) -> dict[str, np.ndarray]:
        out = {}
        for latent in self.analysis.latents:
            if latent.name not in encoded:
                continue
            q = encoded[latent.name]
            eps = rng.standard_normal((draws, *q.mean.shape))
            out[latent.value_name] = q.mean + q.sd * eps
        return out

    def sample(
        self,
        draws: int = 1000,
        *,
        random_seed: int | None = None,
        return_inferencedata: bool = True,
    ) -> xr.DataTree | MultiTrace:
        """Draw from the approximation for the fitted units.

        Returns ArviZ data with the globals, the local latents and the deterministics under the
        model's dims and coords (or a :class:`~pymc.backends.base.MultiTrace`), as
        ``pm.sample`` would. Besides ``posterior`` and ``observed_data``, the data carry the
        groups ``amortized_fit`` (loss and wall time per step; the method, encoder and settings
        as attributes), ``variational_params`` (mean and sd of q(θ)) and ``encoder_outputs``
        (mean and sd of each q(z_n)), see :func:`pymc_amortize.results.method_groups`.
        """
        rng = np.random.default_rng(random_seed)
        global_values = self.draw_globals(draws, rng)
        if self.unit_source is not None:
            return self._sample_globals(global_values, return_inferencedata)
        outputs = self._fitted_encoder_outputs()
        values = global_values | self._draw_locals(
            draws, rng, {name: LocalPosterior(mean, sd) for name, (mean, sd) in outputs.items()}
        )
        if self.conditional_plates:
            # q(z | θ): the conditional plates' draws follow the globals' draws.
            values |= self.conditional_sampler(values, rng)
        for plate in self.analysis.plates:
            empty = _units_without_rows(plate)
            if not empty.any():
                continue
            # No rows: the posterior is the prior given the globals, drawn with the same draws.
            prior = self._prior_draws(plate, self.model, plate.size, global_values, rng, outputs)
            for latent in plate.latents:
                own = self._to_value(latent, prior[latent.name])
                values[latent.value_name][:, empty] = own[:, empty]
        if not return_inferencedata:
            return self.trace_from_values(values)
        idata = pm.to_inference_data(
            self.trace_from_values(values), model=self.model, log_likelihood=False
        )
        self._add_method_groups(idata)
        return idata

    def _add_method_groups(self, idata: xr.DataTree) -> None:
        """The groups of :func:`pymc_amortize.results.method_groups`, added to ``idata``."""
        groups = method_groups(
            self.model,
            self.analysis,
            loss=self.hist,
            step_seconds=self.step_seconds,
            encoders=self.encoders,
            n_encoder_params=sum(p.get_value().size for p in self.encoder_params),
            global_factors=self.global_factors(),
            settings=self.settings,
            divergence=None if self.divergence is None else self.divergence.message(),
            # A fit on unit_data may have more units than memory holds: encode_dataset gives them.
            encoded=self.encode() if self.unit_source is None else None,
        )
        for name, dataset in groups.items():
            idata[name] = xr.DataTree(dataset)

    def _sample_globals(
        self, global_values: dict[str, np.ndarray], return_inferencedata: bool
    ) -> xr.DataTree | MultiTrace:
        """:meth:`sample` of a fit on ``unit_data``: the globals and the Deterministics of the
        globals alone. The template model's locals are only placeholders (its initial point);
        every variable that depends on them is left out."""
        draws = len(next(iter(global_values.values()))) if global_values else 1
        start = self.model.initial_point()
        values = dict(global_values)
        for latent in self.analysis.latents:
            values[latent.value_name] = np.repeat(start[latent.value_name][None], draws, axis=0)
        trace = self.trace_from_values(values)
        if not return_inferencedata:
            return trace
        idata = pm.to_inference_data(trace, model=self.model, log_likelihood=False)
        local_rvs = [self.model[name] for name in self.analysis.latent_names]
        per_unit = [
            name
            for name in idata.posterior.data_vars
            if name in self.analysis.latent_names
            or set(local_rvs) & set(ancestors([self.model[name]]))
        ]
        posterior = idata.posterior.to_dataset().drop_vars(per_unit)
        used = {dim for var in posterior.data_vars.values() for dim in var.dims}
        # The template's unit coords (and any other left unused) would only mislead.
        posterior = posterior.drop_vars([c for c in posterior.coords if c not in used])
        idata["posterior"] = xr.DataTree(posterior)
        for group in ("observed_data", "constant_data"):  # the template's few units
            if group in idata.children:
                del idata[group]
        idata["posterior"].attrs["note"] = (
            "Fitted on unit_data: the posterior of its units is approx.encode_dataset()'s."
        )
        self._add_method_groups(idata)
        return idata

    def sample_dataset(
        self,
        draws: int = 1000,
        *,
        chunk_size: int = 10_000,
        store=None,
        random_seed: int | None = None,
        progressbar: bool = True,
    ) -> xr.Dataset:
        """Posterior draws of every fitted unit, chunk by chunk, as an xarray Dataset.

        For millions of units: the draws of ``chunk_size`` units are computed at a time, and with
        ``store`` each chunk is appended to a zarr store as it is computed, so that the draws need
        not fit in memory. The globals are drawn once, and the same draws θ_s are paired with
        every chunk: draw s of every unit is a draw of q(z_n) next to the same θ_s, and a unit
        without rows gets draws of its prior p(z_n | θ_s), as in :meth:`sample`.

        Parameters
        ----------
        draws : int, default 1000
            Draws S (one chain).
        chunk_size : int, default 10,000
            Units per chunk, and the zarr chunk length along the unit dim: a chunk holds
            S × ``chunk_size`` × (entries per unit) floats (80 MB at the defaults).
        store : str, path or zarr store, optional
            Write the dataset there, chunk by chunk (``Dataset.to_zarr``, overwriting it), and
            return it opened lazily from there (dask-backed when dask is installed).
        random_seed : int, optional
            Seed of every draw. The draws are the same for every ``chunk_size`` (the noise of
            each block of units has its own stream, see :mod:`pymc_amortize.chunks`); the globals'
            draws are those of :meth:`sample` with the same seed, the units' are not.
        progressbar : bool, default True
            Show PyMC's progress bar over the chunks.

        Returns
        -------
        xarray.Dataset
            Each local latent ``(chain, draw, unit dim, *dims)`` and each global ``(chain, draw,
            *dims)``, on the variable's own (constrained) scale, e.g. a positive scale or a point
            of the simplex, with the model's dims and coords (``<name>_dim_<i>`` where the model
            has none); ``chain`` has length 1 and ``draw`` length S. Deterministics are left out
            (derive them from these draws, or use :meth:`sample` for a few units' worth).
            A plate with units without rows draws their prior once, by PyMC's forward sampling
            over the whole plate, which holds S × N of its latents for a moment.

        Examples
        --------
        .. code-block:: python

            posterior = approx.sample_dataset(1000, chunk_size=10_000, store="draws.zarr")
            posterior["z"].isel(unit=slice(0, 10)).mean("draw").compute()
        """
        self.require_encoder_family("sample_dataset()")
        if not isinstance(draws, int | np.integer) or draws <= 0:
            raise AmortizationError(f"draws must be a positive integer; got {draws!r}.")
        if not isinstance(chunk_size, int | np.integer) or chunk_size <= 0:
            raise AmortizationError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
        draws, chunk_size = int(draws), int(chunk_size)
        seed = seed_sequence(random_seed)
        global_values = self.draw_globals(draws, np.random.default_rng(seed))
        globals_dataset = self._globals_dataset(global_values, draws)
        parts = [ChunkedPart(None, 0, lambda start, stop: globals_dataset)]
        for plate_number, plate in enumerate(self.analysis.plates):
            if not plate.latents:
                continue
            empty = np.flatnonzero(_units_without_rows(plate))
            prior = {}
            if empty.size:
                # The prior given the same θ_s, drawn once (a stream of its own) so that it does
                # not depend on the chunking.
                rng = np.random.default_rng(
                    np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, plate_number))
                )
                drawn = self._prior_draws(plate, self.model, plate.size, global_values, rng)
                prior = {name: value[:, empty] for name, value in drawn.items()}
            build = functools.partial(
                self._draws_dataset,
                plate,
                draws=draws,
                seed=seed,
                labels=self._unit_labels(plate),
                empty=empty,
                prior=prior,
            )
            parts.append(ChunkedPart(self._unit_dim(plate), plate.size, build))
        return assemble_chunks(
            parts,
            chunk_size=chunk_size,
            description="Drawing units",
            progressbar=progressbar,
            store=store,
        )

    def _unit_draws(
        self,
        latent: LocalLatent,
        start: int,
        stop: int,
        draws: int,
        seed: np.random.SeedSequence,
        q: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value-space draws ``(draws, stop - start, *event_shape)`` of q(z_n) for the fitted units
        ``start:stop``, the same whatever chunk asks (:func:`~pymc_amortize.chunks.unit_noise`),
        and q's mean and sd there (``q``, else the encoder's)."""
        mean, sd = self.encode_units(latent.name, start, stop) if q is None else q
        stream = self.analysis.latent_names.index(latent.name)
        noise = unit_noise(seed, stream, draws, start, stop, latent.event_shape)
        return mean + sd * noise, mean, sd

    def _dims_and_coords(self, name: str, shape: Sequence[int]) -> tuple[list[str], dict]:
        """The model's dims of ``name``'s trailing axes of ``shape`` (``<name>_dim_<i>`` where
        the model has none or they do not fit) and their coords."""
        model_dims = list(self.model.named_vars_to_dims.get(name) or ())
        model_dims = model_dims[len(model_dims) - len(shape) :] if len(shape) else []
        if len(model_dims) != len(shape) or None in model_dims:
            model_dims = [f"{name}_dim_{i}" for i in range(len(shape))]
        coords = {}
        for dim, size in zip(model_dims, shape, strict=True):
            values = self.model.coords.get(dim)
            if values is not None and len(values) == size:
                coords[dim] = np.asarray(values)
        return model_dims, coords

    def _globals_dataset(self, global_values: Mapping[str, np.ndarray], draws: int) -> xr.Dataset:
        """The globals' value-space draws on their own scale, ``(chain, draw, *dims)``."""
        coords = {"chain": [0], "draw": np.arange(draws)}
        if self.globals is None:
            return xr.Dataset(coords=coords)
        local = set(self.analysis.latent_names)
        rvs = [rv for rv in self.model.free_RVs if rv.name not in local]
        value_vars = [self.model.rvs_to_values[rv] for rv in rvs]
        # Each global on its own scale as a graph of the value variables, with a draw axis.
        batched = {
            v: pt.tensor(f"{v.name}_draws", dtype=v.dtype, shape=(None, *v.type.shape))
            for v in value_vars
        }
        own = vectorize_graph(self.model.replace_rvs_by_values(rvs), batched)
        values = _compile_once(list(batched.values()), own)(
            *(global_values[v.name] for v in value_vars)
        )
        data_vars = {}
        for rv, value in zip(rvs, values, strict=True):
            dims, dim_coords = self._dims_and_coords(rv.name, value.shape[1:])
            data_vars[rv.name] = (["chain", "draw", *dims], np.asarray(value)[None])
            coords |= dim_coords
        return xr.Dataset(data_vars, coords=coords)

    def _draws_dataset(
        self,
        plate: Plate,
        start: int,
        stop: int,
        draws: int,
        seed: np.random.SeedSequence,
        labels: np.ndarray | None,
        empty: np.ndarray,
        prior: Mapping[str, np.ndarray],
    ) -> xr.Dataset:
        """Draws of the fitted units ``start:stop`` of ``plate`` (coords ``labels``) on their own
        scale (see :meth:`sample_dataset`); ``empty`` are the plate's units without rows and
        ``prior`` their constrained prior draws ``(draws, empty.size, ...)``."""
        dim = self._unit_dim(plate)
        coords = {"chain": [0], "draw": np.arange(draws)}
        if labels is not None:
            coords[dim] = labels[start:stop]
        inside = (empty >= start) & (empty < stop)
        data_vars = {}
        for latent in plate.latents:
            value, _, _ = self._unit_draws(latent, start, stop, draws, seed)
            own = self._to_constrained(latent, value)
            if inside.any():
                own[:, empty[inside] - start] = prior[latent.name][:, inside]
            dims, dim_coords = self._dims_and_coords(latent.name, own.shape[2:])
            data_vars[latent.name] = (["chain", "draw", dim, *dims], own[None])
            coords |= dim_coords
        return xr.Dataset(data_vars, coords=coords)

    def trace_from_values(self, values: Mapping[str, np.ndarray]) -> MultiTrace:
        """A one-chain trace of value-space draws ``{value name: (draws, *shape)}``.

        PyMC's own trace turns value-space points into constrained values and deterministics.
        """
        return trace_from_values(self.model, values)

    def sample_new_units(
        self,
        new_data: Mapping[str, np.ndarray] | np.ndarray | None = None,
        draws: int = 1000,
        *,
        units: int | Sequence | Mapping[str, int | Sequence] | None = None,
        random_seed: int | None = None,
        unit_dim: str = "new_unit",
        predictions: bool = False,
        prediction_data: Mapping[str, np.ndarray] | None = None,
        check_range: bool = True,
    ) -> xr.DataTree:
        """Posterior draws for units the model never saw, and optionally predictions of their rows.

        One forward pass of the encoder gives q(z_n) for each new unit with data; a zero-row unit
        (see ``units`` in :meth:`encode`) gets draws of its prior given each draw of q(θ).

        Parameters
        ----------
        new_data, units, check_range
            The new units, as in :meth:`encode`.
        draws : int, default 1000
            Draws (one chain).
        random_seed : int, optional
            Seed of every draw.
        unit_dim : str, default "new_unit"
            Dim of the new units when ``predictions=False``.
        predictions : bool, default False
            Also draw the model's observed variables for the new units' rows, with PyMC's
            ``pm.sample_posterior_predictive(..., predictions=True)`` on a copy of the model whose
            data are set to the new units (the model itself is not changed).
        prediction_data : mapping, optional
            The rows to predict: every model data array under the plate's row dim (covariates,
            and the index giving each row's unit as its position among the new units). Rows of a
            zero-row unit are given here. Default: the rows of ``new_data``.

        Returns
        -------
        xarray.DataTree
            ``predictions=False``: ``posterior`` with one variable per local latent on its
            constrained scale, dims ``(chain, draw, unit_dim, ...)``.
            ``predictions=True``: the layout of ``pm.sample_posterior_predictive(...,
            predictions=True)``: ``posterior`` holds the draws of the globals, of the new units'
            latents and of every Deterministic, under the model's dims with the new units' coords
            (``units``, else 0..M-1) and the rows' coords 0..R-1; ``predictions`` holds draws of
            the observed variables of the new rows and ``predictions_constant_data`` their data.

        Examples
        --------
        .. code-block:: python

            idata = approx.sample_new_units(
                {"log_radon": y_rows, "floor": floor_rows, "county_idx": np.zeros(5, int)},
                draws=1000,
                predictions=True,
            )
            idata.predictions["log_radon"]          # (chain, draw, obs_id)
        """
        self.require_encoder_family("sample_new_units()")
        rng = np.random.default_rng(random_seed)
        encoded, requests = self._encode_new(new_data, units, check_range)
        if not encoded:
            raise AmortizationError(
                "new_data and units= give no new units of any plate; pass their data (see "
                "approx.analysis) or units=."
            )
        global_values = self.draw_globals(draws, rng)
        local_values: dict[str, np.ndarray] = {}
        for plate in self.analysis.plates:
            request = requests.get(plate.name)
            if request is None:
                continue
            plate_latents = [lat for lat in plate.latents if lat.name in encoded]
            q = {lat.name: LocalPosterior(*encoded[lat.name]) for lat in plate_latents}
            local_values |= self._draw_locals(draws, rng, q)
            if request.prior_only.any():
                clone = self._resized_for(plate, request, new_data)
                prior = self._prior_draws(plate, clone, request.labels.size, global_values, rng)
                for latent in plate_latents:
                    value = local_values[latent.value_name]
                    value[:, request.prior_only] = self._to_value(latent, prior[latent.name])[
                        :, request.prior_only
                    ]
        if predictions:
            return self._predict(
                requests, new_data, prediction_data, global_values, local_values, draws, rng
            )
        posterior, dims = {}, {}
        for latent in self.analysis.latents:
            if latent.value_name not in local_values:
                continue
            value = self._to_constrained(latent, local_values[latent.value_name])
            posterior[latent.name] = value[None]
            dims[latent.name] = [unit_dim] + [
                f"{latent.name}_dim_{i}" for i in range(value.ndim - 2)
            ]
        return az.from_dict({"posterior": posterior}, dims=dims)

    def _predict(
        self,
        requests: Mapping[str, NewUnits],
        new_data,
        prediction_data: Mapping[str, np.ndarray] | None,
        global_values: Mapping[str, np.ndarray],
        local_values: Mapping[str, np.ndarray],
        draws: int,
        rng: np.random.Generator,
    ) -> xr.DataTree:
        if len(requests) != 1:
            raise AmortizationError(
                f"predictions=True predicts the new units of one plate; this call gives new units "
                f"of plates {sorted(requests)} (pass units={{plate: ...}} or the data of one)."
            )
        plate_name, request = next(iter(requests.items()))
        plate = next(p for p in self.analysis.plates if p.name == plate_name)
        model = self.model
        row_dim = plate.dim if plate.index is None else plate.row_dim
        rows = prediction_data if prediction_data is not None else new_data
        if not isinstance(rows, Mapping):
            raise AmortizationError(
                "predictions=True needs the new rows' data as {data name: array} "
                "(prediction_data=, or new_data)."
            )
        data = self._unit_data(plate, new_data, request)
        observed = {rv.name for rv in model.observed_RVs}
        row_names = [
            name
            for name in _data_under(model, row_dim, plate.batched_rows)
            if name not in observed and not self._is_observed(name) and name not in data
        ]
        if plate.index is not None and plate.index.key not in row_names:
            row_names.append(plate.index.key)
        missing = [name for name in row_names if name not in rows]
        if plate.index is not None and prediction_data is None and plate.index.key in missing:
            rows = {**rows, plate.index.key: request.unit_of_row}
            missing.remove(plate.index.key)
        if missing:
            raise AmortizationError(
                f"predictions=True needs the new rows' {', '.join(missing)} (model data under the "
                f"dim '{row_dim}'); got {sorted(rows)}."
            )
        row_data = {name: np.asarray(rows[name]) for name in row_names}
        lengths = {name: value.shape[0] if value.ndim else 1 for name, value in row_data.items()}
        n_rows = request.labels.size if plate.index is None else None
        if plate.index is not None:
            if len(set(lengths.values())) > 1:
                raise AmortizationError(f"The new rows' data must have one length; got {lengths}.")
            n_rows = next(iter(lengths.values()))
            index = row_data[plate.index.key]
            if index.size and (
                index.dtype.kind not in "iu"
                or index.min() < 0
                or index.max() >= request.labels.size
            ):
                raise AmortizationError(
                    f"The rows' '{plate.index.key}' must be positions 0..{request.labels.size - 1} "
                    f"of the new units; got values in [{index.min()}, {index.max()}]."
                )
        elif any(n != n_rows for n in lengths.values()):
            raise AmortizationError(
                f"The new units' data must have one row per new unit ({n_rows}); got {lengths}."
            )
        clone = resized_model(
            model,
            dim=plate.dim,
            coords=request.labels,
            data=data | row_data,
            row_dim=None if plate.index is None else row_dim,
            n_rows=n_rows,
            what=f"'{plate.latents[0].name}'",
        )
        values = dict(global_values) | dict(local_values)
        values |= self._fitted_other_locals(plate, draws, rng)
        for latent in plate.latents:  # latents of the plate left mean-field by the analysis
            if latent.value_name not in values:
                raise AmortizationError(f"No draws of '{latent.name}' for the new units.")
        mean_field_local = [v.name for v in clone.value_vars if v.name not in values]
        if mean_field_local:
            raise AmortizationError(
                f"predictions=True needs draws of {mean_field_local} for the new units; they are "
                "fitted mean-field per fitted unit, so new units have none."
            )
        predicted = [
            rv.name
            for rv in clone.observed_RVs
            if (clone.named_vars_to_dims.get(rv.name) or (None,))[0] == row_dim
        ]
        if not predicted:
            raise AmortizationError(
                f"No observed variable has the dim '{row_dim}' of the new rows, so there is "
                "nothing to predict; give the observed variables dims=."
            )
        idata = posterior_dataset(clone, values)
        try:
            drawn = forward_draws(clone, idata, predicted, random_seed=rng, predictions=True)
        except Exception as error:
            raise AmortizationError(
                f"Drawing {', '.join(predicted)} for the new rows failed: "
                f"{type(error).__name__}: {_first_line(error)}"
            ) from error
        out = xr.DataTree()
        out["posterior"] = idata["posterior"]
        for group in ("predictions", "predictions_constant_data"):
            if group in drawn.children:
                out[group] = drawn[group]
        return out

    def __repr__(self) -> str:
        plates = ", ".join(
            f"{plate.name}: {plate.size} units [{', '.join(plate.latent_names)}]"
            for plate in self.analysis.plates
        )
        return (
            f"AmortizedApproximation(plates=[{plates}], global_dim={self.n_global}, "
            "encoder_params="
            f"{sum(p.get_value().size for p in self.encoder_params)})"
        )
