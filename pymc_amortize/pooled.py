"""Amortized VI for units that own many rows: a pooling encoder, its approximation and objective.

A unit's encoder input is the set of its rows, of any size. :class:`PooledEncoder` is
permutation-invariant (DeepSets): a per-row feature map φ, the mean of φ over the unit's rows and
the log of the row count, then a network ρ to the mean and log-sd of q(z_j). One encoder serves
units with 0, 1 or thousands of rows, and a new unit's posterior is one forward pass over its rows.
The structure comes from :mod:`pymc_amortize.indexed`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import graph_replace
from pytensor.tensor.variable import TensorVariable
from pytensor_ml.layers import Linear, Sequential
from pytensor_ml.state import XavierNormalInitializer, initialize_params

from pymc_amortize.analysis import data_value
from pymc_amortize.approximation import (
    AmortizedApproximation,
    InputScaling,
    LocalPosterior,
    _checked_matrix,
)
from pymc_amortize.encoders import (
    MLPEncoder,
    _activation,
    _mlp,
    check_encoder_outputs,
    encoder_params,
    resolve_user_encoders,
)
from pymc_amortize.errors import AmortizationError
from pymc_amortize.indexed import (
    UNIT_COVARIATES_KEY,
    IndexedPlate,
    build_indexed_logjoint,
    gather_unit_rows,
)
from pymc_amortize.inference import AmortizedObjective, _RandomDraws

__all__ = ["IndexedApproximation", "IndexedObjective", "PooledEncoder"]

#: A pooled encoder maps (rows (R, k), unit of each row (R,), number of units B, unit covariates
#: (B, c) or None) to the (B, event_size) mean and log-sd of q(z_j).
PooledEncoderFn = Callable[
    [TensorVariable, TensorVariable, TensorVariable, TensorVariable | None],
    tuple[TensorVariable, TensorVariable],
]


def segment_mean(
    values: TensorVariable, segment: TensorVariable, n_segments: TensorVariable
) -> tuple[TensorVariable, TensorVariable]:
    """Mean of the rows of ``values`` (R, F) per segment id in 0..n_segments-1, and the counts.

    A scatter-add: O(R·F) work, any number of rows per segment; an empty segment has mean 0.
    """
    sums = pt.inc_subtensor(
        pt.zeros((n_segments, values.shape[1]), dtype=values.dtype)[segment], values
    )
    counts = pt.inc_subtensor(pt.zeros((n_segments,), dtype=values.dtype)[segment], 1.0)
    return sums / pt.maximum(counts, 1.0)[:, None], counts


@dataclass
class PooledEncoder:
    """A DeepSets encoder: q(z_j) from the set of unit j's rows, whatever their number.

    ``h_j = [mean_{i in j} φ(row_i), log(1 + n_j), covariates_j]`` feeds an
    :class:`~pymc_amortize.MLPEncoder` ρ with separate mean and log-sd networks. φ is
    ``n_row_inputs -> row_widths... -> n_features``. The mean is invariant to the order of the rows,
    and the count tells ρ how much the rows weigh against the prior.

    Parameters
    ----------
    n_row_inputs : int
        Width of one row's input.
    event_size : int
        Size of one unit's latent z_j.
    n_unit_covariates : int
        Width of the per-unit covariates (0 for none).
    row_widths : sequence of int
        Hidden widths of φ.
    n_features : int
        Output width of φ (the pooled summary of a unit).
    widths : sequence of int
        Hidden widths of ρ.
    activation : str or callable
        Activation of both networks.
    init_scale, init_mean : float
        sd and mean of every q(z_j) at the start (see :class:`~pymc_amortize.MLPEncoder`).
    log_count_center, log_count_scale : float
        Standardisation of log(1 + n_j) (the fitted units' mean and sd).
    name : str
        Prefix of the parameter names.
    random_seed : int or Generator, optional
        Seed of the initial weights.

    Examples
    --------
    .. code-block:: python

        import pytensor.tensor as pt
        from pymc_amortize import PooledEncoder

        encoder = PooledEncoder(n_row_inputs=2, event_size=1, random_seed=0)
        mean, log_sd = encoder(pt.matrix("rows"), pt.lvector("unit_of_row"), pt.lscalar("n"))
    """

    n_row_inputs: int
    event_size: int
    n_unit_covariates: int = 0
    row_widths: Sequence[int] = (32,)
    n_features: int = 16
    widths: Sequence[int] = (32, 32)
    activation: str | Callable = "relu"
    init_scale: float = 0.1
    init_mean: float = 0.0
    log_count_center: float = 0.0
    log_count_scale: float = 1.0
    name: str = "encoder"
    random_seed: int | np.random.Generator | None = None

    def __post_init__(self):
        if self.n_features <= 0 or any(int(w) <= 0 for w in self.row_widths):
            raise AmortizationError(
                f"n_features and row_widths must be positive; got {self.n_features}, "
                f"{self.row_widths}."
            )
        rng = np.random.default_rng(self.random_seed)
        trunk, width = _mlp(
            f"{self.name}_row", self.n_row_inputs, self.row_widths, _activation(self.activation)
        )
        self._row_out = Linear(f"{self.name}_row_out", n_in=width, n_out=self.n_features)
        self._phi = Sequential(trunk, self._row_out) if self.row_widths else self._row_out
        probe = self._phi(pt.matrix("probe", shape=(None, self.n_row_inputs)))
        params = encoder_params([probe], exclude=())
        xavier = XavierNormalInitializer()
        initializers = {p: xavier for p in params if p.name.endswith("_W")}
        for param, value in zip(params, initialize_params(params, rng, initializers), strict=True):
            param.set_value(value)
        self._rho = MLPEncoder(
            n_inputs=self.n_features + 1 + self.n_unit_covariates,
            event_size=self.event_size,
            widths=tuple(self.widths),
            activation=self.activation,
            init_scale=self.init_scale,
            init_mean=self.init_mean,
            name=f"{self.name}_unit",
            random_seed=rng,
        )

    def __call__(
        self,
        rows: TensorVariable,
        unit_of_row: TensorVariable,
        n_units: TensorVariable,
        unit_covariates: TensorVariable | None = None,
    ) -> tuple[TensorVariable, TensorVariable]:
        pooled, counts = segment_mean(self._phi(rows), unit_of_row, n_units)
        log_count = (pt.log1p(counts) - self.log_count_center) / self.log_count_scale
        parts = [pooled, log_count[:, None]]
        if self.n_unit_covariates:
            if unit_covariates is None:
                raise AmortizationError(
                    f"{self.name} takes {self.n_unit_covariates} unit covariate(s); got none."
                )
            parts.append(unit_covariates)
        return self._rho(pt.concatenate(parts, axis=1))


def _row_matrix(
    plate: IndexedPlate, data: Mapping[str, np.ndarray], n_rows: int | None
) -> np.ndarray:
    columns = []
    for name in plate.row_inputs:
        if name not in data:
            raise AmortizationError(
                f"The encoder of '{plate.latents[0].name}' needs the rows of '{name}'; got "
                f"{sorted(data)}."
            )
        column = np.asarray(data[name])
        columns.append(column.reshape(column.shape[0], -1) if column.ndim else column.reshape(1, 1))
    lengths = {c.shape[0] for c in columns}
    if len(lengths) != 1:
        raise AmortizationError(
            f"The row inputs ({', '.join(plate.row_inputs)}) must have one row per observation "
            f"each; got leading lengths {sorted(lengths)}."
        )
    return _checked_matrix(plate.latents[0].name, np.column_stack(columns), n_rows)


def _unit_covariate_matrix(
    plate: IndexedPlate, data: Mapping[str, np.ndarray], n_units: int | None
) -> np.ndarray | None:
    """The (n_units, c) unit covariates from ``data`` (model data or new units'), or None."""
    if plate.unit_covariates is not None:
        names = (UNIT_COVARIATES_KEY,)
    elif plate.unit_covariate_names:
        names = plate.unit_covariate_names
    else:
        return None
    if missing := [n for n in names if n not in data]:
        raise AmortizationError(
            f"The encoder needs the unit covariates {missing} of the new units, one row per unit."
        )
    columns = [np.asarray(data[n]) for n in names]
    columns = [c.reshape(c.shape[0], -1) if c.ndim else c.reshape(1, 1) for c in columns]
    if len({c.shape[0] for c in columns}) != 1:
        raise AmortizationError(
            f"The unit covariates {list(names)} have different numbers of rows "
            f"{[c.shape[0] for c in columns]}."
        )
    return _checked_matrix(", ".join(names), np.column_stack(columns), n_units)


def build_pooled_encoders(
    plate: IndexedPlate,
    model: pm.Model,
    encoder: PooledEncoderFn | Mapping[str, PooledEncoderFn] | None,
    encoder_widths: Sequence[int],
    activation: str | Callable,
    init_scale: float,
    random_seed: int | None,
) -> tuple[dict[str, PooledEncoderFn], frozenset[str]]:
    """One :class:`PooledEncoder` per indexed latent, or the user's encoders."""
    user = resolve_user_encoders(
        encoder,
        plate.latent_names,
        signature="(rows, unit_of_row, n_units, unit_covariates) -> (mean, log_sd)",
    )
    n_row_inputs = _row_matrix(
        plate, {n: data_value(model, n) for n in plate.row_inputs}, None
    ).shape[1]
    covariates = _fitted_unit_covariates(plate, model)
    log_counts = np.log1p(plate.row_counts)
    seeds = np.random.SeedSequence(random_seed).spawn(len(plate.latents))
    initial_point = model.initial_point()
    encoders, owned = {}, set()
    for latent, seed in zip(plate.latents, seeds, strict=True):
        if latent.name in user:
            encoders[latent.name] = user[latent.name]
            continue
        encoders[latent.name] = PooledEncoder(
            n_row_inputs=n_row_inputs,
            event_size=latent.event_size,
            n_unit_covariates=0 if covariates is None else covariates.shape[1],
            widths=tuple(encoder_widths),
            activation=activation,
            init_scale=init_scale,
            init_mean=float(np.mean(initial_point[latent.value_name])),
            log_count_center=float(log_counts.mean()),
            log_count_scale=float(log_counts.std()) or 1.0,
            name=f"{latent.name}_encoder",
            random_seed=np.random.default_rng(seed),
        )
        owned.add(latent.name)
    return encoders, frozenset(owned)


def _fitted_unit_covariates(plate: IndexedPlate, model: pm.Model) -> np.ndarray | None:
    if plate.unit_covariates is not None:
        return _unit_covariate_matrix(
            plate, {UNIT_COVARIATES_KEY: plate.unit_covariates}, plate.size
        )
    return _unit_covariate_matrix(
        plate, {n: data_value(model, n) for n in plate.unit_covariate_names}, plate.size
    )


class IndexedApproximation(AmortizedApproximation):
    """q(θ) ∏_j q(z_j; f_φ(rows of unit j)) for units tied to rows by an index array.

    Built by :class:`~pymc_amortize.AmortizedVI` when the model has an indexed local latent; its
    ``encode`` and ``sample_new_units`` take new units' rows and index.
    """

    plate: IndexedPlate

    def _init_encoders(self, owned_encoders: frozenset[str], standardize_inputs: bool) -> None:
        plate, floatx = self.plate, pytensor.config.floatX
        rows = _row_matrix(plate, {n: data_value(self.model, n) for n in plate.row_inputs}, None)
        self.row_scaling = InputScaling.fit(rows, standardize_inputs)
        self.row_inputs = pytensor.shared(
            self.row_scaling.apply(rows).astype(floatx), name="encoder_row_inputs"
        )
        covariates = _fitted_unit_covariates(plate, self.model)
        self.covariate_scaling = None
        self.unit_covariates = None
        if covariates is not None:
            self.covariate_scaling = InputScaling.fit(covariates, standardize_inputs)
            self.unit_covariates = pytensor.shared(
                self.covariate_scaling.apply(covariates).astype(floatx),
                name="encoder_unit_covariates",
            )
        # The CSR layout a minibatch step gathers its rows from (see pymc_amortize.indexed).
        self.unit_of_row = pytensor.shared(plate.index, name="unit_of_row")
        self.row_counts = pytensor.shared(plate.row_counts, name="row_counts")
        self.row_offsets = pytensor.shared(plate.offsets, name="row_offsets")
        self.row_order = pytensor.shared(plate.row_order, name="row_order")
        data = [self.row_inputs, self.unit_covariates, self.unit_of_row]
        for latent in plate.latents:
            outputs = self._call_encoder(
                latent.name,
                pt.matrix("rows_probe", shape=(None, rows.shape[1])),
                pt.lvector("unit_of_row_probe"),
                pt.lscalar("n_units_probe"),
                None if covariates is None else pt.matrix("covariates_probe"),
            )
            params = encoder_params(outputs, exclude=[d for d in data if d is not None])
            copies = (
                {}
                if latent.name in owned_encoders
                else {p: pytensor.shared(p.get_value(borrow=False), name=p.name) for p in params}
            )
            self._param_copies[latent.name] = copies
            self.encoder_params += [copies.get(p, p) for p in params]

    def _call_encoder(self, name, rows, unit_of_row, n_units, unit_covariates):
        latent = next(lat for lat in self.plate.latents if lat.name == name)
        return check_encoder_outputs(
            name,
            self._encoders[name](rows, unit_of_row, n_units, unit_covariates),
            latent.event_size,
        )

    def symbolic_encode(self, name, inputs):
        raise AmortizationError(
            f"'{name}' is encoded from the set of each unit's rows; use symbolic_encode_units."
        )

    def symbolic_encode_units(
        self,
        name: str,
        rows: TensorVariable,
        unit_of_row: TensorVariable,
        n_units: TensorVariable,
        unit_covariates: TensorVariable | None,
    ) -> tuple[TensorVariable, TensorVariable]:
        """Mean and log-sd (B, event_size) of q(z_j) from standardized rows (R, k).

        ``unit_of_row`` gives each row's unit in 0..n_units-1; ``unit_covariates`` is (B, c).
        """
        outputs = self._call_encoder(name, rows, unit_of_row, n_units, unit_covariates)
        copies = self._param_copies[name]
        return tuple(graph_replace(list(outputs), copies)) if copies else outputs

    def _encode_fn(self, name: str):
        if name not in self._encode_fns:
            rows, unit_of_row, n_units = (
                pt.matrix("rows"),
                pt.lvector("unit_of_row"),
                pt.lscalar("n"),
            )
            covariates = pt.matrix("unit_covariates") if self.unit_covariates is not None else None
            mean, log_sd = self.symbolic_encode_units(name, rows, unit_of_row, n_units, covariates)
            inputs = [rows, unit_of_row, n_units] + ([covariates] if covariates is not None else [])
            self._encode_fns[name] = pytensor.function(
                inputs, [mean, pt.exp(log_sd)], on_unused_input="ignore"
            )
        return self._encode_fns[name]

    def encode(self, new_data: Mapping[str, np.ndarray] | None = None) -> dict[str, LocalPosterior]:
        """Mean and sd of q(z_j) per unit, from each unit's rows in one forward pass.

        Parameters
        ----------
        new_data : mapping, optional
            Rows of new units: every row input by name (e.g. ``{"log_radon": y, "floor": f}``),
            the unit of each row under the index's name (values 0..M-1; all rows form one unit
            when omitted) and, if the encoder takes unit covariates, their M rows. When omitted,
            the units the model was fitted on.

        Returns
        -------
        dict of str to LocalPosterior
            Per indexed latent, mean and sd arrays of shape ``(M, *event_shape)`` on the latent's
            unconstrained space. A unit with no rows gets the encoder's prior-only answer.

        Examples
        --------
        .. code-block:: python

            approx = pm.fit(5_000, method="amortized", model=radon)
            q = approx.encode({"log_radon": np.array([1.2, 0.4, 1.9]), "floor": np.array([0, 1, 0])})
            q["a"].mean, q["a"].sd  # one new county with three houses
        """
        plate = self.plate
        if new_data is None:
            rows = self.row_inputs.get_value()
            unit_of_row = plate.index
            n_units = plate.size
            covariates = None if self.unit_covariates is None else self.unit_covariates.get_value()
        else:
            if not isinstance(new_data, Mapping):
                raise AmortizationError(
                    "encode() of an indexed latent takes {data name: rows}, with the index under "
                    f"'{plate.index_key}'; got {type(new_data).__name__}."
                )
            rows = self.row_scaling.apply(_row_matrix(plate, new_data, None))
            unit_of_row = np.asarray(new_data.get(plate.index_key, np.zeros(rows.shape[0], int)))
            if unit_of_row.shape != (rows.shape[0],) or unit_of_row.dtype.kind not in "iu":
                raise AmortizationError(
                    f"new_data['{plate.index_key}'] must be an integer vector with one entry per "
                    f"row ({rows.shape[0]}); got shape {unit_of_row.shape}, dtype {unit_of_row.dtype}."
                )
            if unit_of_row.size and unit_of_row.min() < 0:
                raise AmortizationError(f"new_data['{plate.index_key}'] has negative unit ids.")
            n_units = int(unit_of_row.max()) + 1 if unit_of_row.size else 1
            covariates = _unit_covariate_matrix(plate, new_data, None)
            if covariates is not None:
                if covariates.shape[0] < n_units:
                    raise AmortizationError(
                        f"The unit covariates have {covariates.shape[0]} rows but the index names "
                        f"{n_units} new units."
                    )
                n_units = covariates.shape[0]
                covariates = self.covariate_scaling.apply(covariates)
        floatx = pytensor.config.floatX
        args = [rows.astype(floatx), unit_of_row.astype(np.int64), np.int64(n_units)]
        if covariates is not None:
            args.append(covariates.astype(floatx))
        out = {}
        for latent in plate.latents:
            mean, sd = self._encode_fn(latent.name)(*args)
            shape = (n_units, *latent.event_shape)
            out[latent.name] = LocalPosterior(mean.reshape(shape), sd.reshape(shape))
        return out

    def __repr__(self) -> str:
        return (
            f"IndexedApproximation(locals=[{', '.join(self.plate.latent_names)}], "
            f"units={self.plate.size}, rows={self.plate.n_rows}, global_dim={self.n_global}, "
            f"encoder_params={sum(p.get_value().size for p in self.encoder_params)})"
        )


class IndexedObjective(AmortizedObjective):
    """The objective on B drawn units and all their rows, unit terms scaled by N_units / B."""

    approx: IndexedApproximation

    def build_logjoint(self):
        return build_indexed_logjoint(
            self.approx.model, self.approx.plate, minibatch=self.batch_size is not None
        )

    def mc_terms(
        self, n_draws: int, random: _RandomDraws, *, full_batch: bool = False
    ) -> tuple[pt.TensorVariable, pt.TensorVariable, pt.TensorVariable]:
        approx, plate, logjoint = self.approx, self.approx.plate, self.logjoint
        n_units = plate.size
        batch = n_units if (self.batch_size is None or full_batch) else self.batch_size
        if batch == n_units:
            units = rows = None
            unit_of_row = approx.unit_of_row
        else:
            # B unit ids with replacement, then all their rows from the CSR layout: unit u's rows
            # are row_order[offsets[u] : offsets[u] + counts[u]], laid end to end.
            units = random(pt.random.integers, 0, n_units, size=(batch,))
            unit_of_row, rows = gather_unit_rows(
                units, approx.row_counts, approx.row_offsets, approx.row_order
            )

        def select(var, index):
            return var if index is None or var is None else var[index]

        joint = logjoint.joint
        data = {key: select(joint.unit_data[key][1], rows) for key in logjoint.row_keys}
        data |= {key: select(joint.unit_data[key][1], units) for key in logjoint.unit_keys}
        data[logjoint.index_key] = unit_of_row

        global_draws, entropy, log_q = self.draw_globals(n_draws, random)
        scale = n_units / batch
        n_batch = pt.constant(batch, dtype="int64")
        local_draws = {}
        for latent in plate.latents:
            mean, log_sd = approx.symbolic_encode_units(
                latent.name,
                select(approx.row_inputs, rows),
                unit_of_row,
                n_batch,
                select(approx.unit_covariates, units),
            )
            draws, local_entropy, local_log_q = self.draw_local(
                latent, mean, log_sd, n_draws, random, scale=scale
            )
            local_draws[latent.value_name] = draws
            entropy, log_q = entropy + local_entropy, log_q + local_log_q

        log_joint = joint.per_draw(global_draws, local_draws, data, n_batch, scale)
        return log_joint, entropy, log_q
