"""The amortized guide q(θ) ∏_plates ∏_n q(z_n; f_φ(data of unit n)) and what a user does with it.

One class for every plate kind. The globals (and every latent the analysis leaves mean-field) get
PyMC's :class:`~pymc.variational.approximations.MeanFieldGroup`, as ADVI; each local latent gets
a diagonal Gaussian whose mean and log-sd are its encoder's output on its unit's data: the unit's
own inputs (one row per unit) and, for an indexed plate, the set of its rows, pooled.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import arviz as az
import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from pymc.backends.base import MultiTrace
from pymc.backends.ndarray import NDArray
from pymc.variational.approximations import MeanFieldGroup
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import graph_replace
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.analysis import DataInput, LocalLatent, ModelAnalysis, Plate
from pymc_amortize.encoders import (
    MLPEncoder,
    PooledEncoder,
    check_encoder_outputs,
    default_encoder_widths,
    encoder_params,
    inline_layers,
    resolve_user_encoders,
)
from pymc_amortize.errors import AmortizationError
from pymc_amortize.plates import PlateLayout, UnitBatch
from pymc_amortize.results import method_groups

__all__ = ["AmortizedApproximation", "EncoderWeight", "InputScaling", "LocalPosterior"]


class LocalPosterior(NamedTuple):
    """Mean and sd of q(z_n) per unit, on the latent's unconstrained (value) space."""

    mean: np.ndarray
    sd: np.ndarray


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


class InputScaling(NamedTuple):
    """Column centre and scale applied to an encoder's input.

    With an affine first layer this is a reparameterisation of the same family of encoders; it keeps
    the first steps well-scaled whatever units the data are in.
    """

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, matrix: np.ndarray, standardize: bool) -> InputScaling:
        if not standardize:
            return cls(np.zeros(matrix.shape[1]), np.ones(matrix.shape[1]))
        scale = matrix.std(axis=0)
        return cls(matrix.mean(axis=0), np.where(scale > 0, scale, 1.0))

    def apply(self, matrix: np.ndarray) -> np.ndarray:
        return (matrix - self.center) / self.scale


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
    if not np.isfinite(matrix).all():
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        raise AmortizationError(
            f"The encoder input of '{name}' has NaN or inf in {bad.size} unit(s) (first: row "
            f"{bad[0]}); the encoder needs finite inputs."
        )
    return matrix.astype(pytensor.config.floatX)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _probe_encoder(
    latent: LocalLatent, symbolic: list, outputs: tuple, values: list, n_units: int
) -> None:
    """Run a user encoder once on every unit, so that a shape or value known only at run time is
    reported here, with the latent's name, rather than from deep inside the first step.

    Compiled in FAST_COMPILE mode (no backend compilation): this runs once.
    """
    pairs = [(s, v) for s, v in zip(symbolic, values, strict=True) if s is not None]
    try:
        with warnings.catch_warnings():
            # FAST_COMPILE's rewrites read PyTensor's BLAS flags, which warns on a pip install;
            # this Python-only probe uses no BLAS, so the warning would only mislead.
            warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
            probe_fn = pytensor.function(
                [s for s, _ in pairs], list(outputs), mode="FAST_COMPILE", on_unused_input="ignore"
            )
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


class EncoderData(NamedTuple):
    """One latent's standardised encoder inputs, as shared arrays, and their scalings."""

    units: SharedVariable | None
    unit_scaling: InputScaling | None
    rows: SharedVariable | None
    row_scaling: InputScaling | None


def _stack(
    latent: LocalLatent, inputs: Sequence[DataInput], data: Mapping, what: str
) -> np.ndarray:
    """Stack the named arrays of ``data`` into an (n, k) float matrix, checked."""
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
        if not np.isfinite(column).all():
            bad = np.flatnonzero(~np.isfinite(column.reshape(column.shape[0], -1)).all(axis=1))
            raise AmortizationError(
                f"'{item.key}' feeds the encoder of '{latent.name}' but has NaN or inf in "
                f"{bad.size} row(s) (first: row {bad[0] if bad.size else 0}); the encoder needs "
                "finite inputs."
            )
        columns.append(column.reshape(column.shape[0], -1) if column.ndim else column.reshape(1, 1))
    lengths = sorted({c.shape[0] for c in columns})
    if len(lengths) != 1:
        raise AmortizationError(
            f"The {what} of '{latent.name}' ({', '.join(i.key for i in inputs)}) must have the "
            f"same number of rows; got leading lengths {lengths}."
        )
    return _checked_matrix(latent.name, np.column_stack(columns), None)


def _check_width(latent: LocalLatent, matrix: np.ndarray, fitted: SharedVariable, what: str):
    width = fitted.get_value(borrow=True).shape[1]
    if matrix.shape[1] != width:
        raise AmortizationError(
            f"The {what} of '{latent.name}' for the new units have {matrix.shape[1]} column(s) "
            f"per row; the encoder was fitted on {width} ({', '.join(latent.input_names)}, each "
            "with the shape of one row of the fitted data)."
        )


def _fitted_unit_matrix(latent: LocalLatent, size: int) -> np.ndarray | None:
    if latent.input_matrix is not None:
        return _checked_matrix(latent.name, latent.input_matrix, size)
    if not latent.unit_inputs:
        return None
    return _stack(
        latent, latent.unit_inputs, {d.key: d.value for d in latent.unit_inputs}, "unit inputs"
    )


def _fitted_row_matrix(latent: LocalLatent) -> np.ndarray | None:
    if not latent.row_inputs:
        return None
    return _stack(
        latent, latent.row_inputs, {d.key: d.value for d in latent.row_inputs}, "row inputs"
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
) -> MLPEncoder | PooledEncoder:
    """An :class:`MLPEncoder` for a latent with unit inputs only, else a :class:`PooledEncoder`.

    ``widths=None`` picks :func:`~pymc_amortize.encoders.default_encoder_widths` from the plate's
    number of units.
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
        )
    log_counts = np.log1p(plate.row_counts)
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
        log_count_center=float(log_counts.mean()),
        log_count_scale=float(log_counts.std()) or 1.0,
        name=f"{latent.name}_encoder",
        random_seed=random_seed,
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
    ):
        self.model = model
        self.analysis = analysis
        self.hist = np.asarray(())
        #: Wall-clock seconds of each step, aligned with ``hist``.
        self.step_seconds = np.asarray(())
        #: Options of the fit (batch size, optimizer, ...), for the results' attributes.
        self.settings: dict[str, object] = {}
        #: Where the last fit or refine diverged (a :class:`~pymc_amortize.DivergenceInfo`), or None.
        self.divergence = None
        local = set(analysis.latent_names)
        global_rvs = [rv for rv in model.free_RVs if rv.name not in local]
        self.global_group = (
            MeanFieldGroup(
                global_rvs,
                model=model,
                random_seed=random_seed,
                start=start,
                start_sigma=start_sigma,
            )
            if global_rvs
            else None
        )
        self.layouts = {plate.name: PlateLayout(plate) for plate in analysis.plates}
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
        self._init_encoders(
            encoder, encoder_widths, activation, init_scale, standardize_inputs, random_seed
        )
        self._flatten_weights()

    # -- set-up --------------------------------------------------------------------------------
    def _init_encoders(self, encoder, widths, activation, init_scale, standardize, random_seed):
        analysis, floatx = self.analysis, pytensor.config.floatX
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
                units = _fitted_unit_matrix(latent, plate.size)
                rows = _fitted_row_matrix(latent)
                unit_scaling = row_scaling = None
                shared_units = shared_rows = None
                if units is not None:
                    unit_scaling = InputScaling.fit(units, standardize)
                    shared_units = pytensor.shared(
                        unit_scaling.apply(units).astype(floatx), name=f"{latent.name}_unit_inputs"
                    )
                if rows is not None:
                    row_scaling = InputScaling.fit(rows, standardize)
                    shared_rows = pytensor.shared(
                        row_scaling.apply(rows).astype(floatx), name=f"{latent.name}_row_inputs"
                    )
                self.inputs[latent.name] = EncoderData(
                    shared_units, unit_scaling, shared_rows, row_scaling
                )
                if latent.name in user:
                    self._encoders[latent.name] = user[latent.name]
                else:
                    self._encoders[latent.name] = default_encoder(
                        latent,
                        plate,
                        n_unit_inputs=0 if units is None else units.shape[1],
                        n_row_inputs=0 if rows is None else rows.shape[1],
                        widths=per_latent.get(latent.name),
                        activation=activation,
                        init_scale=init_scale,
                        init_mean=float(np.mean(initial_point[latent.value_name])),
                        random_seed=np.random.default_rng(seed),
                    )
                self._init_params(latent, plate)

    def _probe_inputs(self, latent: LocalLatent) -> tuple[list, list]:
        """Symbolic encoder inputs for one latent, and their values on the fitted units."""
        data, plate = self.inputs[latent.name], self.analysis.plate_of(latent.name)
        units = (
            None
            if data.units is None
            else pt.matrix("units_probe", shape=(None, data.units.type.shape[1]))
        )
        if data.rows is None:
            return [units], [data.units.get_value()]
        rows = pt.matrix("rows_probe", shape=(None, data.rows.type.shape[1]))
        symbolic = [rows, pt.lvector("unit_of_row_probe"), pt.lscalar("n_units_probe"), units]
        values = [
            data.rows.get_value(),
            plate.unit_of_row,
            np.int64(plate.size),
            None if units is None else data.units.get_value(),
        ]
        return symbolic, values

    def _init_params(self, latent: LocalLatent, plate: Plate) -> None:
        symbolic, values = self._probe_inputs(latent)
        outputs = self._call_encoder(latent, symbolic)
        data = [v for v in self.inputs[latent.name] if isinstance(v, SharedVariable)]
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

    def nonfinite_params(self) -> tuple[str, ...]:
        """Names of the parameters with a NaN or infinite entry, globals by variable."""
        names = []
        if self.global_group is not None:
            for label, param in (("mean", self.global_group.mean), ("rho", self.global_group.rho)):
                value = param.get_value(borrow=True)
                for var_name, slc, _, _ in self.global_group.ordering.values():
                    if not np.isfinite(value[slc]).all():
                        names.append(f"{label} of {var_name}")
        names += [
            p.name or "unnamed encoder weight"
            for p in self.encoder_params
            if not np.isfinite(p.get_value(borrow=True)).all()
        ]
        return tuple(names)

    # -- what PyMC's Inference loop reads -------------------------------------------------------
    @property
    def groups(self) -> list[MeanFieldGroup]:
        return [self.global_group] if self.global_group is not None else []

    @property
    def global_params(self) -> list[SharedVariable]:
        return list(self.global_group.params) if self.global_group is not None else []

    @property
    def params(self) -> list[SharedVariable]:
        """Every optimised shared variable: global mean and rho, then ``encoder_weights`` (all the
        encoders' weights in one flat vector)."""
        flat = [self.encoder_weights] if self.encoder_weights is not None else []
        return self.global_params + flat

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
        return self.global_group.ddim if self.global_group is not None else 0

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
        units = None if data.units is None else batch.take_units(data.units)
        if data.rows is None:
            return self.encoder_graph(name, units)
        return self.encoder_graph(
            name, units, batch.take_rows(data.rows), batch.unit_of_row, batch.n_units
        )

    def global_draws(self, eps: TensorVariable) -> dict[str, TensorVariable]:
        """Value-space draws ``(S, *shape)`` of each global from standard normal ``eps`` (S, D)."""
        group = self.global_group
        flat = group.mean + pt.softplus(group.rho) * eps
        return {
            value_name: flat[:, slc].reshape((eps.shape[0], *shape))
            for value_name, slc, shape, _ in group.ordering.values()
        }

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
            self._encode_fns[name] = pytensor.function(
                inputs, [mean, pt.exp(log_sd)], on_unused_input="ignore"
            )
        return self._encode_fns[name]

    def _new_inputs(self, latent: LocalLatent, plate: Plate, new_data) -> list | None:
        """Standardised encoder arguments for new units, or None when ``new_data`` lacks them."""
        data = self.inputs[latent.name]
        if not isinstance(new_data, Mapping):
            if len(self.analysis.latents) != 1 or data.rows is not None:
                raise AmortizationError(
                    "Pass new units' data as {data name: array}; an array alone is accepted only "
                    "for a model with one local latent fed by unit inputs."
                )
            matrix = np.asarray(new_data, dtype=float)
            matrix = matrix.reshape(matrix.shape[0], -1)
            width = data.units.get_value().shape[1]
            if matrix.shape[1] != width:
                raise AmortizationError(
                    f"The encoder of '{latent.name}' takes {width} input column(s); got "
                    f"{matrix.shape[1]}."
                )
            return [data.unit_scaling.apply(_checked_matrix(latent.name, matrix, None))]
        needed = [d.key for d in latent.unit_inputs + latent.row_inputs]
        if latent.input_matrix is not None:
            needed.append(latent.name)
        if not any(key in new_data for key in needed):
            return None
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
            units = data.unit_scaling.apply(units)
        if data.rows is None:
            return [units]
        rows = _stack(latent, latent.row_inputs, new_data, "row inputs")
        _check_width(latent, rows, data.rows, "row inputs")
        rows = data.row_scaling.apply(rows)
        key = plate.index_key
        unit_of_row = np.asarray(new_data.get(key, np.zeros(rows.shape[0], dtype=np.int64)))
        if unit_of_row.shape != (rows.shape[0],) or unit_of_row.dtype.kind not in "iu":
            raise AmortizationError(
                f"new_data['{key}'] must be an integer vector with one entry per row "
                f"({rows.shape[0]}); got shape {unit_of_row.shape}, dtype {unit_of_row.dtype}."
            )
        if unit_of_row.size and unit_of_row.min() < 0:
            raise AmortizationError(f"new_data['{key}'] has negative unit ids.")
        n_units = int(unit_of_row.max()) + 1 if unit_of_row.size else 1
        if units is not None:
            if units.shape[0] < n_units:
                raise AmortizationError(
                    f"The unit inputs of '{latent.name}' have {units.shape[0]} rows but "
                    f"new_data['{key}'] names {n_units} new units."
                )
            n_units = units.shape[0]
        floatx = pytensor.config.floatX
        args = [rows.astype(floatx), unit_of_row.astype(np.int64), np.int64(n_units)]
        return args + ([units] if units is not None else [])

    def encode(
        self, new_data: Mapping[str, np.ndarray] | np.ndarray | None = None
    ) -> dict[str, LocalPosterior]:
        """Mean and sd of q(z_n) for each unit, in one forward pass of the encoders.

        Parameters
        ----------
        new_data : mapping or ndarray, optional
            Data of new units by the keys of the encoders' inputs (see ``approx.analysis``):
            unit inputs with one row per new unit; for an indexed plate its row inputs, one row per
            observation, and each row's unit (0..M-1) under the index's name (all rows form one
            unit when omitted). An (M, k) array is accepted for a model with one local latent fed
            by unit inputs. Latents whose inputs are absent are left out. When omitted, the units
            the model was fitted on.

        Returns
        -------
        dict of str to LocalPosterior
            Per local latent, mean and sd arrays of shape ``(M, *event_shape)`` on the latent's
            unconstrained space.

        Examples
        --------
        .. code-block:: python

            approx = pm.fit(10_000, method="amortized", model=model)
            q_new = approx.encode({"x": np.array([0.5, 2.0])})["z"]
            q_new.mean, q_new.sd
        """
        floatx = pytensor.config.floatX
        out = {}
        for plate in self.analysis.plates:
            for latent in plate.latents:
                data = self.inputs[latent.name]
                if new_data is None:
                    units = None if data.units is None else data.units.get_value()
                    if data.rows is None:
                        args = [units]
                    else:
                        args = [data.rows.get_value(), plate.unit_of_row, np.int64(plate.size)]
                        args += [units] if units is not None else []
                else:
                    args = self._new_inputs(latent, plate, new_data)
                    if args is None:
                        continue
                    args = [
                        a.astype(floatx) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
                        for a in args
                    ]
                mean, sd = self._encode_fn(latent.name)(*args)
                shape = (mean.shape[0], *latent.event_shape)
                out[latent.name] = LocalPosterior(mean.reshape(shape), sd.reshape(shape))
        if new_data is not None and not out:
            keys = sorted({k for lat in self.analysis.latents for k in lat.input_names})
            raise AmortizationError(
                f"new_data has none of the encoders' inputs ({', '.join(keys)}); got "
                f"{sorted(new_data) if isinstance(new_data, Mapping) else type(new_data).__name__}."
            )
        return out

    def _draw_globals(self, draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.global_group is None:
            return {}
        mu = self.global_group.mean.get_value()
        sd = _softplus(self.global_group.rho.get_value())
        flat = mu + sd * rng.standard_normal((draws, mu.size))
        return {
            value_name: flat[:, slc].reshape((draws, *shape))
            for value_name, slc, shape, _ in self.global_group.ordering.values()
        }

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
        values = self._draw_globals(draws, rng) | self._draw_locals(draws, rng, self.encode())
        if not return_inferencedata:
            return self.trace_from_values(values)
        idata = pm.to_inference_data(
            self.trace_from_values(values), model=self.model, log_likelihood=False
        )
        for name, dataset in method_groups(self).items():
            idata[name] = xr.DataTree(dataset)
        return idata

    def trace_from_values(self, values: Mapping[str, np.ndarray]) -> MultiTrace:
        """A one-chain trace of value-space draws ``{value name: (draws, *shape)}``.

        PyMC's own trace turns value-space points into constrained values and deterministics.
        """
        draws = len(next(iter(values.values())))
        # PyMC's trace passes a point's values to its function by position: model order.
        values = {var.name: values[var.name] for var in self.model.value_vars}
        trace = NDArray(
            model=self.model, test_point={k: np.asarray(v[0]) for k, v in values.items()}
        )
        trace.setup(draws=draws, chain=0)
        try:
            for i in range(draws):
                trace.record({k: np.asarray(v[i]) for k, v in values.items()}, in_warmup=False)
        finally:
            trace.close()
        return MultiTrace([trace])

    def sample_new_units(
        self,
        new_data: Mapping[str, np.ndarray] | np.ndarray,
        draws: int = 1000,
        *,
        random_seed: int | None = None,
        unit_dim: str = "new_unit",
    ) -> xr.DataTree:
        """Posterior draws of the local latents of units the model never saw.

        One forward pass of the encoder gives q(z_n) for each new unit; the draws are mapped to the
        latent's constrained space. The result's posterior has one variable per local latent with
        dims ``(chain, draw, unit_dim, ...)``.
        """
        rng = np.random.default_rng(random_seed)
        encoded = self.encode(new_data)
        posterior = {}
        latents = [lat for lat in self.analysis.latents if lat.name in encoded]
        for latent in latents:
            values = self._draw_locals(draws, rng, {latent.name: encoded[latent.name]})
            value = values[latent.value_name]
            rv = self.model[latent.name]
            transform = self.model.rvs_to_transforms.get(rv)
            if transform is not None:
                value = transform.backward(pt.as_tensor(value), *rv.owner.inputs).eval()
            posterior[latent.name] = value[None]
        dims = {
            latent.name: [unit_dim]
            + [f"{latent.name}_dim_{i}" for i in range(len(latent.event_shape))]
            for latent in latents
        }
        return az.from_dict({"posterior": posterior}, dims=dims)

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
