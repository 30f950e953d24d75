"""New units: parsing a request, encoding it, sampling it and predicting its rows.

``approx.encode(new_data, units=...)`` and ``approx.sample_new_units(...)`` read the new units of
each plate from ``new_data`` and ``units=`` (:func:`unit_request`), check and standardise their
encoder inputs (:func:`new_inputs`), encode them (:func:`encode_new`, which warns outside the
training envelope and refuses absurd outputs), and draw a zero-row unit's prior given the globals
(:func:`~pymc_amortize.posterior.local.zero_row_prior`) on a copy of the model resized to them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import arviz as az
import numpy as np
import pymc as pm
import pytensor
import xarray as xr

from pymc_amortize.errors import AmortizationError, OutOfTrainingRangeWarning
from pymc_amortize.guide.compiled import first_line
from pymc_amortize.guide.encoders import PooledEncoder
from pymc_amortize.guide.inputs import check_width, checked_matrix, stack_inputs
from pymc_amortize.guide.state import AmortizedGuide
from pymc_amortize.model.forward import forward_draws, posterior_dataset, resized_model
from pymc_amortize.model.types import DataInput, LocalLatent, Plate
from pymc_amortize.posterior.conditional_units import (
    UnitData,
    mixture_moments,
    other_plate_values,
    plate_conditional,
    split_entries,
)
from pymc_amortize.posterior.local import (
    QUANTILE_LEVELS,
    LocalPosterior,
    draw_locals,
    fill_prior,
    fitted_other_locals,
    local_posterior,
    plate_prior_draws,
    units_without_rows,
    zero_row_prior,
)

__all__ = [
    "ABSURD_MEAN_WIDTHS",
    "ABSURD_SD_RATIO",
    "COUNT_PRIOR_DRAWS",
    "OUTPUT_RANGE_UNITS",
    "NewUnits",
    "check_new_observations",
    "check_new_outputs",
    "conditional_new_draws",
    "conditional_new_moments",
    "data_under",
    "encode_new",
    "encode_new_units",
    "fitted_output_range",
    "fmt_value",
    "new_inputs",
    "new_unit_data",
    "predict",
    "resized_for",
    "sample_new_units",
    "temper_by_count",
    "unit_data",
    "unit_request",
]

#: Draws of p(z | θ) under q(θ) behind the prior's moments in :func:`temper_by_count`.
COUNT_PRIOR_DRAWS = 4000
#: A new unit's q(z) is absurd (an error, not a result) when its mean lies more than this many
#: widths of the fitted units' means (or their largest sd, if wider) beyond their range ...
ABSURD_MEAN_WIDTHS = 100.0
#: ... or its sd is more than this factor outside the fitted units' range of sds.
ABSURD_SD_RATIO = 1e4
#: Fitted units behind that range (encoded once per fit's weights).
OUTPUT_RANGE_UNITS = 100_000


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


def data_under(model: pm.Model, dim: str | None, aligned: Sequence[DataInput]) -> list[str]:
    """Names of the model's data containers (``pm.Data``) whose leading dim is ``dim`` or that
    are in ``aligned`` (the plate's unit- or row-aligned data), in model order."""
    names = {d.key for d in aligned if d.named and d.key in model.named_vars}
    out = []
    for var in model.data_vars:
        dims = model.named_vars_to_dims.get(var.name) or (None,)
        if (dim is not None and dims[0] == dim) or var.name in names:
            out.append(var.name)
    return out


def fmt_value(value) -> str:
    """A number (or a short array) for an error message."""
    value = np.asarray(value, dtype=float)
    return (
        f"{float(value.ravel()[0]):.4g}" if value.size == 1 else np.array2string(value, precision=4)
    )


def check_new_observations(model: pm.Model, new_data: Mapping[str, np.ndarray]) -> None:
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


def unit_request(guide: AmortizedGuide, plate: Plate, new_data, units) -> NewUnits | None:
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
    n_unit_rows = _new_unit_rows(plate, new_data)
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
    n_rows = _new_row_count(plate, data)
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


def _new_unit_rows(plate: Plate, new_data) -> int | None:
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


def _new_row_count(plate: Plate, data: Mapping) -> int | None:
    for latent in plate.latents:
        for item in latent.row_inputs:
            if item.key in data:
                return int(np.shape(data[item.key])[0]) if np.ndim(data[item.key]) else 1
    return None


def new_inputs(
    guide: AmortizedGuide, latent: LocalLatent, plate: Plate, new_data, request: NewUnits
) -> tuple[list, np.ndarray | None, np.ndarray | None]:
    """Standardised encoder arguments for the new units, and the standardised unit and row
    matrices (for the envelope)."""
    data = guide.inputs[latent.name]
    floatx = pytensor.config.floatX
    if not isinstance(new_data, Mapping) and new_data is not None:
        if len(guide.analysis.latents) != 1 or data.rows is not None:
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
        check_width(latent, matrix, data.units, "unit inputs")
        units = data.unit_scaling.apply(checked_matrix(latent.name, matrix, None))
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
        units = checked_matrix(latent.name, matrix.reshape(matrix.shape[0], -1), None)
    elif latent.unit_inputs:
        units = stack_inputs(latent, latent.unit_inputs, new_data, "unit inputs")
    if units is not None:
        check_width(latent, units, data.units, "unit inputs")
        units = data.unit_scaling.apply(units).astype(floatx)
    if data.rows is None:
        return [units], units, None
    if request.unit_of_row.size == 0 and not any(d.key in new_data for d in latent.row_inputs):
        rows = np.zeros((0, data.rows.width), dtype=floatx)
    else:
        rows = stack_inputs(latent, latent.row_inputs, new_data, "row inputs")
        check_width(latent, rows, data.rows, "row inputs")
        rows = data.row_scaling.apply(rows).astype(floatx)
    args = [rows, request.unit_of_row, np.int64(request.labels.size)]
    return args + ([units] if units is not None else []), units, rows


def encode_new(
    guide: AmortizedGuide, new_data, units, check_range: bool
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, NewUnits]]:
    """Encoder mean and sd (value space, ``(M, *event_shape)``) of the new units of every plate
    the call concerns, and each plate's :class:`NewUnits`. A zero-row unit's entries are NaN:
    its posterior is its prior given the globals, drawn by the callers."""
    if isinstance(new_data, Mapping):
        check_new_observations(guide.model, new_data)
    out, requests, warned = {}, {}, []
    for plate in guide.analysis.plates:
        request = unit_request(guide, plate, new_data, units)
        if request is None:
            continue
        requests[plate.name] = request
        prior_only = request.prior_only
        flat = {}
        for latent in plate.latents:
            args, unit_matrix, row_matrix = new_inputs(guide, latent, plate, new_data, request)
            n = request.labels.size
            if prior_only.all():
                mean = sd = np.full((n, latent.event_size), np.nan)
            else:
                mean, sd = guide.encode_fn(latent.name)(*args)
                mean, sd = np.array(mean, dtype=float), np.array(sd, dtype=float)
                mean[prior_only], sd[prior_only] = np.nan, np.nan
            flat[latent.name] = (mean, sd)
            envelope = guide.envelopes.get(latent.name)
            if check_range and envelope is not None:
                data = guide.inputs[latent.name]
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
        temper_by_count(guide, plate, request, new_data, flat)
        for latent in plate.latents:
            mean, sd = flat[latent.name]
            check_new_outputs(guide, latent, request, mean, sd)
            shape = (request.labels.size, *latent.event_shape)
            out[latent.name] = (mean.reshape(shape), sd.reshape(shape))
    if warned:
        conditional = sorted(set(requests) & guide.conditional_plates)
        start_only = (
            f" (for plate(s) {', '.join(conditional)} of the conditional family only the start "
            "of the Newton steps on the units' own log density, which is exact for Gaussian-"
            "linear units from any start)"
            if conditional
            else ""
        )
        warnings.warn(
            f"{len(warned)} new unit(s) have encoder inputs outside what the encoder saw in "
            f"training, so their q(z) is an extrapolation{start_only}: "
            + "; ".join(warned)
            + ". Pass check_range=False to silence this warning.",
            OutOfTrainingRangeWarning,
            stacklevel=4,  # the user's approx.encode / sample_new_units, through the facade
        )
    return out, requests


def temper_by_count(
    guide: AmortizedGuide, plate: Plate, request: NewUnits, new_data, flat: dict[str, tuple]
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
        if isinstance(guide.encoders[lat.name], PooledEncoder)
        and guide.encoders[lat.name].constant_count
        and lat.name in flat
    ]
    if not latents:
        return
    k = round(float(np.expm1(guide.encoders[latents[0].name].log_count_center)))
    units = (request.counts > 0) & (request.counts != k)
    if not units.any() or k < 1:
        return
    rng = np.random.default_rng(0)
    prior = plate_prior_draws(
        guide,
        plate,
        resized_for(guide, plate, request, new_data),
        request.labels.size,
        guide.draw_globals(COUNT_PRIOR_DRAWS, rng),
        rng,
    )
    ratio = (request.counts[units] / k)[:, None]
    for latent in latents:
        draws = guide.transforms.to_value(latent, prior[latent.name])
        draws = draws.reshape(draws.shape[0], request.labels.size, -1)[:, units]
        prior_precision = 1.0 / np.maximum(draws.var(axis=0), 1e-300)
        prior_mean = draws.mean(axis=0)
        mean, sd = flat[latent.name]
        precision = 1.0 / sd[units] ** 2
        # The rows' message; none where the encoder is wider than the prior.
        message = np.maximum(precision - prior_precision, 0.0)
        shift = np.where(message > 0, mean[units] * precision - prior_mean * prior_precision, 0.0)
        total = prior_precision + ratio * message
        mean[units] = (prior_mean * prior_precision + ratio * shift) / total
        sd[units] = 1.0 / np.sqrt(total)


def check_new_outputs(
    guide: AmortizedGuide, latent: LocalLatent, request: NewUnits, mean: np.ndarray, sd: np.ndarray
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
        low, high, sd_low, sd_high = fitted_output_range(guide, latent.name)
        width = np.maximum(np.maximum(high - low, sd_high), 1e-12 * np.abs(high))
        far = (mean < low - ABSURD_MEAN_WIDTHS * width) | (mean > high + ABSURD_MEAN_WIDTHS * width)
        wild = (sd < sd_low / ABSURD_SD_RATIO) | (sd > sd_high * ABSURD_SD_RATIO)
        bad = rows & (far | wild).any(axis=1)
        what = (
            f"a mean outside [{fmt_value(low - ABSURD_MEAN_WIDTHS * width)}, "
            f"{fmt_value(high + ABSURD_MEAN_WIDTHS * width)}] or an sd outside "
            f"[{fmt_value(sd_low / ABSURD_SD_RATIO)}, {fmt_value(sd_high * ABSURD_SD_RATIO)}] "
            f"(fitted units: means in [{fmt_value(low)}, {fmt_value(high)}], sds in "
            f"[{fmt_value(sd_low)}, {fmt_value(sd_high)}])"
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
        f"{what}: unit {labels[j]!r} got mean {fmt_value(mean[j])}, sd {fmt_value(sd[j])} on the "
        "latent's unconstrained space. Its inputs lie far outside what the encoder was "
        "trained on (see the OutOfTrainingRangeWarning, if not silenced); its q(z) would be "
        "an extrapolation without meaning. Fit with units like these, or check the data."
    )


def fitted_output_range(guide: AmortizedGuide, name: str) -> tuple[np.ndarray, ...]:
    """Per event entry: the range of the encoder's means and sds over the fitted units with
    rows (for a fit on unit_data, its first ``OUTPUT_RANGE_UNITS`` units), cached for the
    current encoder weights."""
    weights = None if guide.encoder_weights is None else guide.encoder_weights.get_value()
    key = (name, None if weights is None else hash(weights.tobytes()))
    cache = guide.output_ranges
    if key not in cache:
        plate = guide.analysis.plate_of(name)
        streamed = guide.unit_source is not None and plate is guide.unit_source.plate
        stop = min(plate.size, OUTPUT_RANGE_UNITS) if streamed else plate.size
        pieces = [
            guide.encode_units(name, start, min(start + OUTPUT_RANGE_UNITS, stop))
            for start in range(0, stop, OUTPUT_RANGE_UNITS)
        ]
        mean = np.concatenate([m for m, _ in pieces])
        sd = np.concatenate([v for _, v in pieces])
        with_rows = ~units_without_rows(plate)[: mean.shape[0]]
        mean = mean.reshape(mean.shape[0], -1)[with_rows]
        sd = sd.reshape(sd.shape[0], -1)[with_rows]
        if mean.shape[0] == 0:
            mean, sd = np.zeros((1, mean.shape[1])), np.ones((1, sd.shape[1]))
        cache.clear()
        cache[key] = (mean.min(0), mean.max(0), sd.min(0), sd.max(0))
    return cache[key]


def unit_data(
    guide: AmortizedGuide, plate: Plate, new_data, request: NewUnits
) -> dict[str, np.ndarray]:
    """The model's data under the plate's unit dim, for the new units (from ``new_data``)."""
    data = new_data if isinstance(new_data, Mapping) else {}
    out = {}
    for name in data_under(guide.model, plate.dim, plate.batched_units):
        if name in data:
            out[name] = np.asarray(data[name])
        elif _is_observed(guide.model, name):
            continue  # an observed pm.Data: forward draws do not read it
        else:
            raise AmortizationError(
                f"The new units of plate '{plate.name}' need '{name}' (model data with one "
                f"row per unit), {request.labels.size} row(s); got {sorted(data)}."
            )
    return out


def _is_observed(model: pm.Model, name: str) -> bool:
    var = model[name]
    return any(model.rvs_to_values[rv] is var for rv in model.observed_RVs)


def resized_for(guide: AmortizedGuide, plate: Plate, request: NewUnits, new_data) -> pm.Model:
    """A copy of the model whose ``plate`` has the requested new units and their data."""
    return resized_model(
        guide.model,
        dim=plate.dim,
        coords=request.labels,
        data=unit_data(guide, plate, new_data, request),
        what=f"'{plate.latents[0].name}'",
    )


def _conditional_requests(guide: AmortizedGuide, requests: Mapping[str, NewUnits]) -> bool:
    """Whether the call gives new units of a conditional plate; refuses new units of several
    plates then (their rows' log density would need the other plate's new units' draws)."""
    conditional = [name for name in requests if name in guide.conditional_plates]
    if conditional and len(requests) > 1:
        raise AmortizationError(
            f"This call gives new units of plates {sorted(requests)}; with the conditional "
            f"family of plate(s) {', '.join(sorted(conditional))}, give new units of one plate "
            "at a time (units={plate: ...}, whose rows may name the other plates' fitted units)."
        )
    return bool(conditional)


def new_unit_data(
    guide: AmortizedGuide, plate: Plate, new_data, request: NewUnits, keep: np.ndarray
) -> UnitData:
    """The data of the new units ``keep`` (a bool mask over the request's units, every row's
    unit among them) that the plate's log density reads: every array a minibatch of the plate
    slices (``plate.batched_units`` and ``batched_rows``, the observations included)."""
    if not isinstance(new_data, Mapping):
        raise AmortizationError(
            f"The conditional family's q(z | θ, x) of new units of plate '{plate.name}' runs on "
            "their log density; pass their data as {data name: array}."
        )
    n_units = request.labels.size
    n_rows = n_units if request.unit_of_row is None else request.unit_of_row.size
    missing, units, rows = [], {}, {}
    for group, length, out in (
        (plate.batched_units, n_units, units),
        (plate.batched_rows, n_rows, rows),
    ):
        for item in group:
            if item.key not in new_data:
                missing.append(item)
                continue
            value = np.asarray(new_data[item.key])
            if value.ndim == 0 or value.shape[0] != length:
                what = "unit" if group is plate.batched_units else "row"
                raise AmortizationError(
                    f"new_data['{item.key}'] must have one entry per new {what} ({length}); got "
                    f"shape {value.shape}."
                )
            value = value.astype(item.node.dtype, copy=False)
            out[item.key] = value[keep] if group is plate.batched_units else value
    if missing:
        names = ", ".join(
            f"'{item.key}'" + (f" ({item.source})" if item.source else "") for item in missing
        )
        raise AmortizationError(
            f"The conditional family draws the new units of plate '{plate.name}' from their own "
            f"log density, which reads {names}: pass {'it' if len(missing) == 1 else 'them'} in "
            "new_data, one entry per new row (or unit)."
        )
    for other in guide.analysis.plates:
        # A crossed model's rows name fitted units of the other grouping.
        if other.index is None or other.name == plate.name or other.index.key not in rows:
            continue
        ids = rows[other.index.key]
        if ids.size and (ids.min() < 0 or ids.max() >= other.size):
            raise AmortizationError(
                f"new_data['{other.index.key}'] names units of plate '{other.name}' outside its "
                f"{other.size} fitted units (0..{other.size - 1})."
            )
    unit_of_row = None
    if request.unit_of_row is not None:
        position = np.cumsum(keep) - 1
        unit_of_row = position[request.unit_of_row]
    return UnitData(units, rows, unit_of_row, int(keep.sum()))


def _conditional_inputs(
    guide: AmortizedGuide,
    plate: Plate,
    request: NewUnits,
    new_data,
    encoded: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, UnitData, list[np.ndarray]]:
    """The new units with rows, their data, and the encoder's means there (the start)."""
    keep = ~request.prior_only
    data = new_unit_data(guide, plate, new_data, request, keep)
    starts = [encoded[lat.name][0].reshape(request.labels.size, -1)[keep] for lat in plate.latents]
    return keep, data, starts


def conditional_new_moments(
    guide: AmortizedGuide,
    plate: Plate,
    request: NewUnits,
    new_data,
    encoded: Mapping[str, tuple[np.ndarray, np.ndarray]],
    global_values: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Value-space mean and sd ``(M, *event_shape)`` of the marginal q(z_n) = ∫ q(z_n | θ, x_n)
    q(θ) dθ of the new units of a conditional plate, over the draws ``global_values`` of q(θ)
    (see :func:`~pymc_amortize.posterior.conditional_units.mixture_moments`); NaN for zero-row
    units, as :func:`encode_new` gives them."""
    keep, data, starts = _conditional_inputs(guide, plate, request, new_data, encoded)
    n = request.labels.size
    out = {}
    for latent in plate.latents:
        nan = np.full((n, *latent.event_shape), np.nan)
        out[latent.name] = (nan, nan.copy())
    if not keep.any():
        return out
    values = dict(global_values) | other_plate_values(guide, plate, global_values, rng)
    mean, sd = mixture_moments(plate_conditional(guide, plate), data, starts, values)
    for name, value in split_entries(plate, mean).items():
        out[name][0][keep] = value
    for name, value in split_entries(plate, sd).items():
        out[name][1][keep] = value
    return out


def conditional_new_draws(
    guide: AmortizedGuide,
    plate: Plate,
    request: NewUnits,
    new_data,
    encoded: Mapping[str, tuple[np.ndarray, np.ndarray]],
    global_values: Mapping[str, np.ndarray],
    other_values: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Value-space draws ``(S, M, *event_shape)`` of the new units of a conditional plate from
    q(z_n | θ_s, x_n), one per draw θ_s of ``global_values`` (and of the other plates' locals
    ``other_values``); zeros for zero-row units, whose prior the caller fills in."""
    keep, data, starts = _conditional_inputs(guide, plate, request, new_data, encoded)
    draws = len(next(iter(global_values.values()))) if global_values else 1
    out = {
        lat.value_name: np.zeros((draws, request.labels.size, *lat.event_shape))
        for lat in plate.latents
    }
    if not keep.any():
        return out
    conditional = plate_conditional(guide, plate)
    noise = rng.standard_normal((draws, data.n_units, conditional.size))
    drawn, _, _ = conditional(data, starts, dict(global_values) | dict(other_values), noise)
    for name, value in drawn.items():
        out[name][:, keep] = value
    return out


def encode_new_units(
    guide: AmortizedGuide,
    new_data: Mapping[str, np.ndarray] | np.ndarray | None,
    *,
    units: int | Sequence | Mapping[str, int | Sequence] | None = None,
    check_range: bool = True,
    quantiles: Sequence[float] = QUANTILE_LEVELS,
    prior_draws: int = 4000,
    random_seed: int | None = 0,
    summary: bool = True,
) -> dict[str, LocalPosterior]:
    """:meth:`~pymc_amortize.AmortizedApproximation.encode` of new units."""
    out = {}
    encoded, requests = encode_new(guide, new_data, units, check_range)
    if not encoded:
        keys = sorted({k for lat in guide.analysis.latents for k in lat.input_names})
        raise AmortizationError(
            f"new_data has none of the encoders' inputs ({', '.join(keys)}); got "
            f"{sorted(new_data) if isinstance(new_data, Mapping) else type(new_data).__name__}."
        )
    rng = np.random.default_rng(random_seed)
    shared = None
    if _conditional_requests(guide, requests):
        # One set of draws of q(θ) for the mixture over θ and the zero-row units' prior.
        shared = guide.draw_globals(prior_draws, rng)
    for plate in guide.analysis.plates:
        request = requests.get(plate.name)
        if request is None:
            continue
        if plate.name in guide.conditional_plates:
            encoded |= conditional_new_moments(
                guide, plate, request, new_data, encoded, shared, rng
            )
        prior = {}
        if request.prior_only.any():
            clone = resized_for(guide, plate, request, new_data)
            global_values = shared if shared is not None else guide.draw_globals(prior_draws, rng)
            prior = zero_row_prior(
                guide, plate, request.prior_only, global_values, rng, model=clone
            )
        for latent in plate.latents:
            if latent.name not in encoded:
                continue
            mean, sd = encoded[latent.name]
            post = local_posterior(
                guide,
                latent,
                mean,
                sd,
                request.prior_only,
                quantiles,
                summary,
                prior.get(latent.name),
            )
            out[latent.name] = post
    return out


def sample_new_units(
    guide: AmortizedGuide,
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
    """:meth:`~pymc_amortize.AmortizedApproximation.sample_new_units`."""
    rng = np.random.default_rng(random_seed)
    encoded, requests = encode_new(guide, new_data, units, check_range)
    if not encoded:
        raise AmortizationError(
            "new_data and units= give no new units of any plate; pass their data (see "
            "approx.analysis) or units=."
        )
    global_values = guide.draw_globals(draws, rng)
    local_values: dict[str, np.ndarray] = {}
    other_values = None
    for plate in guide.analysis.plates:
        request = requests.get(plate.name)
        if request is None:
            continue
        if plate.name in guide.conditional_plates:
            # (θ, z_new) jointly: the new units' draws given each draw θ_s, and the other
            # plates' draws they were conditioned on, which the predictions then read.
            _conditional_requests(guide, requests)
            other_values = other_plate_values(guide, plate, global_values, rng)
            local_values |= conditional_new_draws(
                guide, plate, request, new_data, encoded, global_values, other_values, rng
            )
        else:
            plate_latents = [lat for lat in plate.latents if lat.name in encoded]
            q = {lat.name: LocalPosterior(*encoded[lat.name]) for lat in plate_latents}
            local_values |= draw_locals(guide, draws, rng, q)
        if request.prior_only.any():
            clone = resized_for(guide, plate, request, new_data)
            empty = request.prior_only
            prior = zero_row_prior(guide, plate, empty, global_values, rng, model=clone)
            fill_prior(guide, plate, local_values, prior, empty)
    if predictions:
        return predict(
            guide,
            requests,
            new_data,
            prediction_data,
            global_values,
            local_values,
            draws,
            rng,
            other_values=other_values,
        )
    posterior, dims = {}, {}
    for latent in guide.analysis.latents:
        if latent.value_name not in local_values:
            continue
        value = guide.transforms.to_constrained(latent, local_values[latent.value_name])
        posterior[latent.name] = value[None]
        dims[latent.name] = [unit_dim] + [f"{latent.name}_dim_{i}" for i in range(value.ndim - 2)]
    return az.from_dict({"posterior": posterior}, dims=dims)


def predict(
    guide: AmortizedGuide,
    requests: Mapping[str, NewUnits],
    new_data,
    prediction_data: Mapping[str, np.ndarray] | None,
    global_values: Mapping[str, np.ndarray],
    local_values: Mapping[str, np.ndarray],
    draws: int,
    rng: np.random.Generator,
    *,
    other_values: Mapping[str, np.ndarray] | None = None,
) -> xr.DataTree:
    """Draws of the observed variables of the new units' rows (``sample_new_units(...,
    predictions=True)``), on a copy of the model resized to the new units and rows; the other
    plates' locals are ``other_values`` (those the new units' draws were conditioned on), else
    drawn from their encoders."""
    if len(requests) != 1:
        raise AmortizationError(
            f"predictions=True predicts the new units of one plate; this call gives new units "
            f"of plates {sorted(requests)} (pass units={{plate: ...}} or the data of one)."
        )
    plate_name, request = next(iter(requests.items()))
    plate = next(p for p in guide.analysis.plates if p.name == plate_name)
    model = guide.model
    row_dim = plate.dim if plate.index is None else plate.row_dim
    rows = prediction_data if prediction_data is not None else new_data
    if not isinstance(rows, Mapping):
        raise AmortizationError(
            "predictions=True needs the new rows' data as {data name: array} "
            "(prediction_data=, or new_data)."
        )
    data = unit_data(guide, plate, new_data, request)
    observed = {rv.name for rv in model.observed_RVs}
    row_names = [
        name
        for name in data_under(model, row_dim, plate.batched_rows)
        if name not in observed and not _is_observed(guide.model, name) and name not in data
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
            index.dtype.kind not in "iu" or index.min() < 0 or index.max() >= request.labels.size
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
    values |= (
        dict(other_values)
        if other_values is not None
        else fitted_other_locals(guide, plate, draws, rng)
    )
    for latent in plate.latents:  # latents of the plate left mean-field by the analysis
        if latent.value_name not in values:
            raise AmortizationError(f"No draws of '{latent.name}' for the new units.")
    mean_field_local = [v.name for v in clone.value_vars if v.name not in values]
    if mean_field_local:
        raise AmortizationError(
            f"predictions=True needs draws of {mean_field_local} for the new units; they are "
            "fitted mean-field per fitted unit, so new units have none."
        )
    # The plate's own observed variables: those its minibatches slice (a model without dims
    # names no row dim, and an observed variable of another part of the model, e.g. a chain, is
    # not the new rows'); by the row dim where the analysis saw none.
    sliced = {data.key for data in (*plate.batched_rows, *plate.batched_units)}
    predicted = [rv.name for rv in clone.observed_RVs if rv.name in sliced] or [
        rv.name
        for rv in clone.observed_RVs
        if row_dim is not None and (clone.named_vars_to_dims.get(rv.name) or (None,))[0] == row_dim
    ]
    if not predicted:
        raise AmortizationError(
            f"No observed variable has the dim '{row_dim}' of the new rows, so there is "
            "nothing to predict; give the observed variables dims=."
        )
    for name in predicted:
        length = int(clone[name].shape[0].eval()) if clone[name].ndim else 1
        if n_rows is not None and length != n_rows:
            raise AmortizationError(
                f"predictions=True cannot draw '{name}' for {n_rows} new rows: its length is "
                f"fixed at {length} (its observed array, with no dim the new rows can resize). "
                f"Give it and the rows' data a dim (dims='obs' with coords), or draw the new "
                "units without predictions."
            )
    idata = posterior_dataset(clone, values)
    try:
        drawn = forward_draws(clone, idata, predicted, random_seed=rng, predictions=True)
    except Exception as error:
        raise AmortizationError(
            f"Drawing {', '.join(predicted)} for the new rows failed: "
            f"{type(error).__name__}: {first_line(error)}"
        ) from error
    out = xr.DataTree()
    out["posterior"] = idata["posterior"]
    for group in ("predictions", "predictions_constant_data"):
        if group in drawn.children:
            out[group] = drawn[group]
    return out
