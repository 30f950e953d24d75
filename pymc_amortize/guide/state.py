"""The amortized guide's state and its symbolic q.

q(θ) ∏_plates ∏_n q(z_n; f_φ(data of unit n)): the globals (and every latent the analysis leaves
mean-field) get a global family (:mod:`pymc_amortize.guide.globals`); each local latent gets a
diagonal Gaussian whose mean and log-sd are its encoder's output on its unit's data: the unit's
own inputs (one row per unit) and, for an indexed plate, the set of its rows, pooled. The
:class:`AmortizedGuide` builds the encoders on their inputs (:mod:`~pymc_amortize.guide.inputs`),
flattens their weights (:mod:`~pymc_amortize.guide.weights`), and gives the objective its
symbolic pieces; :class:`~pymc_amortize.AmortizedApproximation` is the public face of a fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.variational.opvi import Group
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import graph_replace
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.data.sampler import StepBuffers
from pymc_amortize.data.scaling import standardization_scale
from pymc_amortize.data.streaming import UnitSource
from pymc_amortize.errors import AmortizationError
from pymc_amortize.guide.compiled import LatentTransforms, compile_once, first_line
from pymc_amortize.guide.conditional import ConditionalGaussian, ConditionalSampler
from pymc_amortize.guide.encoders import (
    MLPEncoder,
    PooledEncoder,
    check_encoder_outputs,
    default_encoder_widths,
    encoder_params,
    inline_layers,
    resolve_user_encoders,
)
from pymc_amortize.guide.envelope import TrainingEnvelope
from pymc_amortize.guide.globals import GlobalFamily, make_global_family
from pymc_amortize.guide.inputs import (
    EncoderData,
    EncoderInput,
    fit_scaling,
    fitted_row_arrays,
    fitted_unit_arrays,
    fixed_flags,
    streamed_input,
    training_envelope,
)
from pymc_amortize.guide.weights import EncoderWeight, flatten_weights
from pymc_amortize.model.plates import PlateLayout, UnitBatch
from pymc_amortize.model.types import LocalLatent, ModelAnalysis, Plate

__all__ = ["AmortizedGuide", "default_encoder"]


def _probe_encoder(
    latent: LocalLatent, symbolic: list, outputs: tuple, values: list, n_units: int
) -> None:
    """Run a user encoder once on every unit, so that a shape or value known only at run time is
    reported here, with the latent's name, rather than from deep inside the first step.

    """
    pairs = [(s, v) for s, v in zip(symbolic, values, strict=True) if s is not None]
    try:
        probe_fn = compile_once([s for s, _ in pairs], list(outputs))
        mean, log_sd = probe_fn(*[v for _, v in pairs])
    except Exception as error:
        raise AmortizationError(
            f"The encoder of '{latent.name}' failed on the {n_units} units' inputs: "
            f"{type(error).__name__}: {first_line(error)}"
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

    ``widths=None`` picks :func:`~pymc_amortize.guide.encoders.default_encoder_widths` from the plate's
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


class AmortizedGuide:
    """The state of an amortized guide: q(θ), the encoders, their inputs and weights.

    Built by :class:`~pymc_amortize.AmortizedApproximation` (its ``guide``) from the model and its
    analysis, with the options of :class:`~pymc_amortize.AmortizedVI`; the objective reads its
    symbolic pieces (:meth:`symbolic_encode`, :meth:`global_draws`), the posterior functions
    (:mod:`pymc_amortize.posterior`) its encoders on the fitted units (:meth:`encode_units`).
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
        step_buffers: StepBuffers | None = None,
        local_family: ConditionalGaussian | None = None,
        conditional_plates: Sequence[str] = (),
        global_family: str = "meanfield",
    ):
        self.model = model
        self.analysis = analysis
        #: The conditional local family (None: the encoder family q(z_n; f(x_n)) everywhere) and
        #: the plates that use it, q(z_n | θ, x_n); see :mod:`pymc_amortize.guide.conditional`.
        self.local_family = local_family
        self.conditional_plates = frozenset(conditional_plates) if local_family else frozenset()
        self._conditional_sampler: ConditionalSampler | None = None
        #: Where the batch plate's units are read from when they are not in the model (a fit on
        #: ``unit_data``); the model is then a template of a few of them.
        self.unit_source = unit_source
        #: The host arrays the step reads each minibatch of ``unit_source`` from.
        self.step_buffers = step_buffers
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
        #: Each local latent's encoder, by latent name (built-in or the user's).
        self.encoders: dict[str, Callable] = {}
        #: The latents whose encoder is the user's.
        self.user_encoders: frozenset[str] = frozenset()
        #: Each latent's encoder weights, as the encoder's own shared variables.
        self._own_weights: dict[str, list[SharedVariable]] = {}
        self._encode_fns: dict[str, pytensor.compile.Function] = {}
        #: Compiled maps between each latent's value space and its own scale.
        self.transforms = LatentTransforms(model)
        #: Each latent's training envelope: the range of its encoder inputs in training.
        self.envelopes: dict[str, TrainingEnvelope] = {}
        #: The fitted units' range of encoder outputs, per latent and encoder weights (a cache of
        #: :func:`pymc_amortize.posterior.new_units.fitted_output_range`).
        self.output_ranges: dict[tuple, tuple[np.ndarray, ...]] = {}
        self._init_encoders(
            encoder, encoder_widths, activation, init_scale, standardize_inputs, random_seed
        )
        weights = flatten_weights(self._own_weights)
        #: Every encoder weight of every latent in one flat shared vector (None without encoders):
        #: the step's one encoder parameter, so that its argument count does not grow with the
        #: number of layers. ``encoder_params`` names its slices.
        self.encoder_weights: SharedVariable | None = weights.flat
        self.encoder_params: list[EncoderWeight] = weights.params
        #: Each latent's encoder weights -> their views of ``encoder_weights`` (symbolic).
        self.weight_views: dict[str, dict[SharedVariable, TensorVariable]] = weights.views

    def _init_encoders(self, encoder, widths, activation, init_scale, standardize, random_seed):
        analysis = self.analysis
        user = resolve_user_encoders(
            encoder,
            analysis.latent_names,
            signature="(B, k) unit inputs -> (mean, log_sd), or for pooled rows "
            "(rows, unit_of_row, n_units, unit_covariates) -> (mean, log_sd)",
        )
        self.user_encoders = frozenset(user)
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
                unit_arrays = None if streamed else fitted_unit_arrays(latent, plate.size)
                row_arrays = None if streamed else fitted_row_arrays(latent)
                units = rows = None
                if streamed:
                    source = self.unit_source
                    buffers = self.step_buffers
                    units, unit_envelope = streamed_input(
                        source, buffers, latent, standardize, False
                    )
                    rows, row_envelope = streamed_input(source, buffers, latent, standardize, True)
                    envelope = TrainingEnvelope(unit_envelope, row_envelope, source.row_count_range)
                fixed = fixed_flags()
                if unit_arrays is not None:
                    flagged = fixed.get((latent.name, "units"))
                    scaling = fit_scaling(unit_arrays, standardize, flagged)
                    units = EncoderInput(f"{latent.name}_unit_inputs", unit_arrays, scaling)
                if row_arrays is not None:
                    flagged = fixed.get((latent.name, "rows"))
                    scaling = fit_scaling(row_arrays, standardize, flagged)
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
                    self.encoders[latent.name] = user[latent.name]
                else:
                    self.encoders[latent.name] = default_encoder(
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
        row_values, unit_of_row = self.fitted_rows(latent.name, 0, stop)
        values = [
            row_values,
            unit_of_row,
            np.int64(stop),
            None if units is None else data.units.chunk(0, stop),
        ]
        return symbolic, values

    def fitted_rows(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
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
        if latent.name in self.user_encoders:
            _probe_encoder(latent, symbolic, outputs, values, plate.size)
        self._own_weights[latent.name] = encoder_params(outputs, exclude=data)

    def _call_encoder(self, latent: LocalLatent, inputs: list) -> tuple:
        encoder = self.encoders[latent.name]
        try:
            outputs = encoder(*inputs) if len(inputs) > 1 else encoder(inputs[0])
        except AmortizationError:
            raise
        except Exception as error:
            raise AmortizationError(
                f"The encoder of '{latent.name}' failed on its symbolic inputs: "
                f"{type(error).__name__}: {first_line(error)}"
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

    @property
    def is_mean_field(self) -> bool:
        """Whether q is the product of its marginals: the encoder family on every plate and a
        mean-field q(θ) (or none). Only then is q a subset of F-VI's (ADVI's) family, and its
        ELBO that of its marginals; a full-rank q(θ) or the conditional family q(z_n | θ, x_n)
        is scored through its joint density (``pymc_amortize.posterior.joint``)."""
        globals_ok = self.globals is None or self.globals.kind == "meanfield"
        return globals_ok and not self.conditional_plates

    def family_description(self) -> str:
        """q's family in words, e.g. for a diagnostic's verdict."""
        local = (
            f"the conditional family q(z_n | θ, x_n) on plate(s) "
            f"{', '.join(sorted(self.conditional_plates))}"
            if self.conditional_plates
            else "the encoder family q(z_n; f(x_n))"
        )
        kind = "no globals" if self.globals is None else f"a {self.globals.kind} q(θ)"
        return f"{local} with {kind}"

    def nonfinite_params(self) -> tuple[str, ...]:
        """Names of the parameters with a NaN or infinite entry, globals by variable."""
        names = self.globals.nonfinite() if self.globals is not None else []
        names += [
            p.name or "unnamed encoder weight"
            for p in self.encoder_params
            if not np.isfinite(p.get_value(borrow=True)).all()
        ]
        return tuple(names)

    # -- what PyMC's Inference loop reads -------------------------------------------------------

    @property
    def groups(self) -> list[Group]:
        """PyMC's group of q(θ), for PyMC's ``Inference`` loop (none without globals)."""
        return [self.globals.group] if self.globals is not None else []

    @property
    def global_params(self) -> list[SharedVariable]:
        """q(θ)'s optimised shared variables."""
        return self.globals.params if self.globals is not None else []

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
            for name, encoder in self.encoders.items()
            if isinstance(encoder, MLPEncoder | PooledEncoder)
        }

    @property
    def latents(self) -> tuple[LocalLatent, ...]:
        """The local latents, as the analysis found them."""
        return self.analysis.latents

    @property
    def n_global(self) -> int:
        """The size of q(θ): the entries of every global."""
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
        views = self.weight_views[name]
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

    # -- the encoders and draws on the fitted units ---------------------------------------------

    def encode_fn(self, name: str):
        """The compiled map of one latent's standardised inputs to the mean and sd of q(z_n)."""
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
            self._encode_fns[name] = compile_once(inputs, [mean, pt.exp(log_sd)])
        return self._encode_fns[name]

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
            rows, slot = self.fitted_rows(name, start, stop)
            args = [rows, slot, np.int64(stop - start)]
            args += [units] if units is not None else []
        mean, sd = self.encode_fn(name)(*args)
        shape = (stop - start, *latent.event_shape)
        return (
            np.asarray(mean, dtype=float).reshape(shape),
            np.asarray(sd, dtype=float).reshape(shape),
        )

    def fitted_encoder_outputs(
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

    def draw_globals(self, draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``draws`` value-space draws of each global from q(θ), by value variable name."""
        return self.globals.sample(draws, rng) if self.globals is not None else {}

    def conditional_sampler(
        self, values: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Draws of the conditional plates' locals given (S, ...) draws ``values`` of every other
        free variable (by value name), through :meth:`compiled_conditional_sampler`."""
        return self.compiled_conditional_sampler()(values, rng)

    def compiled_conditional_sampler(self) -> ConditionalSampler:
        """The fit's :class:`~pymc_amortize.guide.conditional.ConditionalSampler`, compiled on
        first use and kept: one compile of the Newton steps for ``sample()``, ``encode()`` and
        the joint density (it reads the parameters as shared variables, so it stays valid when
        they change)."""
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
        return self._conditional_sampler
