"""The encoders' inputs: the fitted units' data, held without copying, and how an encoder reads
them (:class:`InputScaling`: non-finite entries encoded, columns centred and scaled)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.data.sampler import StepBuffers
from pymc_amortize.data.scaling import standardization_scale
from pymc_amortize.data.streaming import UnitSource, input_columns, summarize_columns
from pymc_amortize.errors import AmortizationError
from pymc_amortize.guide.envelope import InputEnvelope, TrainingEnvelope, column_labels
from pymc_amortize.model.types import DataInput, LocalLatent, Plate

__all__ = [
    "EncoderData",
    "EncoderInput",
    "InputScaling",
    "check_encodable",
    "check_width",
    "checked_matrix",
    "fit_scaling",
    "fitted_row_arrays",
    "fitted_unit_arrays",
    "fixed_flags",
    "fixed_input_flags",
    "stack_inputs",
    "streamed_input",
    "training_envelope",
]


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
        return fit_scaling([np.asarray(matrix)], standardize)

    @property
    def raw_width(self) -> int:
        """k, the raw columns of one row of the data."""
        return len(self.center) - len(self.flagged)

    def encoded(self, matrix: np.ndarray) -> np.ndarray:
        """The (n, k + f) float64 columns the scaling applies to: flagged columns' non-finite
        entries replaced by their centre, the indicators appended. Other non-finite entries are
        left as they are (see :func:`check_encodable`)."""
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


def fixed_flags() -> Mapping[tuple[str, str], tuple[int, ...]]:
    """The flags set by the enclosing :func:`fixed_input_flags` block (empty outside one)."""
    return _FIXED_FLAGS.get() or {}


def check_encodable(
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


def checked_matrix(name: str, matrix: np.ndarray, n_units: int | None) -> np.ndarray:
    """An encoder input ``matrix`` as floatX, checked: numeric, and ``n_units`` rows when given."""
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


class EncoderInput:
    """One latent's unit (or row) encoder input over the fitted data, held without copying it.

    Each data array the input stacks is a shared variable that **borrows the model's array**
    (reshaped to (n, k_i), a view), and the column-wise standardisation is applied in the graph,
    after a minibatch's rows are gathered: a fit holds each data array once, however many encoders
    and likelihood terms read it (a standardised (n, k) copy per encoder was held before).
    Standardisation parameters are a shared (2, k) array, not literals, so that the compiled step
    does not depend on the data (see :class:`~pymc_amortize.model.plates.PlateLayout`).

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


def stack_inputs(
    latent: LocalLatent, inputs: Sequence[DataInput], data: Mapping, what: str
) -> np.ndarray:
    """Stack the named arrays of ``data`` into an (n, k) float matrix, checked."""
    columns = _columns(latent, inputs, data, what)
    return checked_matrix(latent.name, np.column_stack(columns), None)


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


def check_width(latent: LocalLatent, matrix: np.ndarray, fitted: EncoderInput, what: str):
    """New units' raw inputs: the fitted width, and NaN or inf only where the fitted data had
    them (:func:`check_encodable`)."""
    width = fitted.raw_width
    if matrix.shape[1] != width:
        raise AmortizationError(
            f"The {what} of '{latent.name}' for the new units have {matrix.shape[1]} column(s) "
            f"per row; the encoder was fitted on {width} ({', '.join(latent.input_names)}, each "
            "with the shape of one row of the fitted data)."
        )
    inputs = latent.row_inputs if what == "row inputs" else latent.unit_inputs
    labels = column_labels(inputs) if inputs else ()
    check_encodable(latent.name, matrix, fitted.scaling, labels, what)


def fitted_unit_arrays(latent: LocalLatent, size: int) -> list[np.ndarray] | None:
    """The fitted units' encoder input arrays, (N, k_i) views of the model's data."""
    if latent.input_matrix is not None:
        matrix = np.asarray(latent.input_matrix)
        checked_matrix(latent.name, matrix.reshape(matrix.shape[0], -1), size)
        return [matrix.reshape(matrix.shape[0], -1)]
    if not latent.unit_inputs:
        return None
    return _columns(
        latent, latent.unit_inputs, {d.key: d.value for d in latent.unit_inputs}, "unit inputs"
    )


def fitted_row_arrays(latent: LocalLatent) -> list[np.ndarray] | None:
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


def fit_scaling(
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


def streamed_input(
    source: UnitSource, buffers: StepBuffers, latent: LocalLatent, standardize: bool, rows: bool
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
    # As fit_scaling: a constant column is centred on its value exactly, with scale 1.
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
    held = buffers.rows if rows else buffers.units
    columns = [held[k].reshape(held[k].shape[0], -1) for k in keys]

    def reader(start: int, stop: int) -> list[np.ndarray]:
        if rows:
            return source.row_columns(start, stop, keys)[0]
        piece = source.read(start, stop, keys)
        return [piece[k].reshape(stop - start, -1) for k in keys]

    what = "row" if rows else "unit"
    encoder_input = EncoderInput(
        f"{latent.name}_{what}_inputs", columns, scaling, reader=reader, length=source.size
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
