"""The amortized approximation q(θ) ∏_n q(z_n; f_φ(x_n)) and what a user does with a fitted one."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
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

from pymc_amortize.analysis import LocalLatent, UnitPlate, data_value
from pymc_amortize.encoders import Encoder, check_encoder_outputs, encoder_params, inline_layers
from pymc_amortize.errors import AmortizationError
from pymc_amortize.results import method_groups

__all__ = ["AmortizedApproximation", "LocalPosterior"]


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


def encoder_input_matrix(
    latent: LocalLatent, data: Mapping[str, np.ndarray], n_units: int | None = None
) -> np.ndarray:
    """Stack the data feeding ``latent``'s encoder into an (n_units, k) float matrix."""
    columns = []
    for name in latent.input_names:
        if name not in data:
            raise AmortizationError(
                f"The encoder of '{latent.name}' needs '{name}' for the new units; got "
                f"{sorted(data)}."
            )
        column = np.asarray(data[name])
        if column.dtype.kind not in "biuf":
            raise AmortizationError(
                f"'{name}' feeds the encoder of '{latent.name}' but has dtype {column.dtype}; it "
                "must be numeric."
            )
        if not np.isfinite(column).all():
            bad = np.flatnonzero(~np.isfinite(column.reshape(column.shape[0], -1)).all(axis=1))
            raise AmortizationError(
                f"'{name}' feeds the encoder of '{latent.name}' but has NaN or inf in {bad.size} "
                f"unit(s) (first: row {bad[0]}); the encoder needs finite inputs."
            )
        columns.append(column)
    rows = {c.shape[0] if c.ndim else None for c in columns}
    if len(rows) != 1 or None in rows:
        raise AmortizationError(
            f"The inputs of '{latent.name}' ({', '.join(latent.input_names)}) must all have one "
            f"row per unit; got leading lengths {sorted(map(str, rows))}."
        )
    matrix = np.column_stack([c.reshape(c.shape[0], -1) for c in columns])
    return _checked_matrix(latent.name, matrix, n_units)


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


def _call_encoder(name: str, encoder: Encoder, inputs: TensorVariable) -> object:
    """Build a user encoder's graph, naming the latent when the encoder itself fails."""
    try:
        return encoder(inputs)
    except Exception as error:
        raise AmortizationError(
            f"The encoder of '{name}' failed on a symbolic input of shape (batch, "
            f"{inputs.type.shape[1]}): {type(error).__name__}: {_first_line(error)}"
        ) from error


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _probe_encoder(
    latent: LocalLatent, probe: TensorVariable, outputs: tuple, matrix: np.ndarray
) -> None:
    """Run a user encoder once on every unit, so that a shape or value known only at run time is
    reported here, with the latent's name, rather than from deep inside the first step.

    Compiled in FAST_COMPILE mode (no backend compilation): this runs once.
    """
    try:
        with warnings.catch_warnings():
            # FAST_COMPILE's rewrites read PyTensor's BLAS flags, which warns on a pip install;
            # this Python-only probe uses no BLAS, so the warning would only mislead.
            warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
            probe_fn = pytensor.function([probe], list(outputs), mode="FAST_COMPILE")
        mean, log_sd = probe_fn(matrix)
    except Exception as error:
        raise AmortizationError(
            f"The encoder of '{latent.name}' failed on the {matrix.shape[0]} units' inputs "
            f"(shape {matrix.shape}): {type(error).__name__}: {_first_line(error)}"
        ) from error
    expected = (matrix.shape[0], latent.event_size)
    for label, value in (("mean", mean), ("log_sd", log_sd)):
        if value.shape != expected:
            raise AmortizationError(
                f"The encoder of '{latent.name}' returned a {label} of shape {value.shape} for "
                f"{matrix.shape[0]} units; it must be {expected}, one row of "
                f"{latent.event_size} per unit."
            )
        if not np.isfinite(value).all():
            raise AmortizationError(
                f"The encoder of '{latent.name}' returned a {label} with NaN or inf at its initial "
                "weights; check its initialisation and inputs."
            )


class AmortizedApproximation:
    """A fitted (or fitting) amortized variational posterior.

    The globals θ get a mean-field Gaussian on the unconstrained space (PyMC's
    :class:`~pymc.variational.approximations.MeanFieldGroup`, the same family and initialisation as
    ADVI); each local latent z_n gets a diagonal Gaussian whose mean and log-sd are the encoder's
    output on unit n's data. Built by :class:`~pymc_amortize.AmortizedVI`; users get it back from
    ``pm.fit(method="amortized")``.
    """

    def __init__(
        self,
        model: pm.Model,
        plate: UnitPlate,
        encoders: Mapping[str, Encoder],
        *,
        owned_encoders: frozenset[str] = frozenset(),
        standardize_inputs: bool = True,
        start: Mapping[str, np.ndarray] | None = None,
        start_sigma: Mapping[str, np.ndarray] | None = None,
        random_seed: int | None = None,
    ):
        self.model = model
        self.plate = plate
        self.hist = np.asarray(())
        #: Wall-clock seconds of each step, aligned with ``hist``.
        self.step_seconds = np.asarray(())
        #: Options of the fit (batch size, optimizer, ...), for the results' attributes.
        self.settings: dict[str, object] = {}
        local_rvs = set(plate.latent_names)
        global_rvs = [rv for rv in model.free_RVs if rv.name not in local_rvs]
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
        self.input_scaling: dict[str, InputScaling] = {}
        self.encoder_inputs: dict[str, SharedVariable] = {}
        self._encoders = dict(encoders)
        self._param_copies: dict[str, dict[SharedVariable, SharedVariable]] = {}
        self.encoder_params: list[SharedVariable] = []
        self._init_encoders(owned_encoders, standardize_inputs)
        self._encode_fns: dict[str, pytensor.compile.Function] = {}
        #: Where the last fit or refine diverged (a :class:`~pymc_amortize.DivergenceInfo`), or None.
        self.divergence = None

    def _init_encoders(self, owned_encoders: frozenset[str], standardize_inputs: bool) -> None:
        """Encoder inputs, their scaling and the trainable copies of the encoders' weights."""
        for latent in self.plate.latents:
            matrix = (
                _checked_matrix(latent.name, latent.input_matrix, self.plate.size)
                if latent.input_matrix is not None
                else encoder_input_matrix(
                    latent,
                    {n: data_value(self.model, n) for n in latent.input_names},
                    self.plate.size,
                )
            )
            scaling = InputScaling.fit(matrix, standardize_inputs)
            self.input_scaling[latent.name] = scaling
            self.encoder_inputs[latent.name] = pytensor.shared(
                scaling.apply(matrix).astype(pytensor.config.floatX),
                name=f"{latent.name}_encoder_input",
            )
            probe = pt.matrix(f"{latent.name}_probe", shape=(None, matrix.shape[1]))
            outputs = check_encoder_outputs(
                latent.name,
                _call_encoder(latent.name, self._encoders[latent.name], probe),
                latent.event_size,
            )
            params = encoder_params(outputs, exclude=list(self.encoder_inputs.values()))
            if latent.name in owned_encoders:
                copies = {}
            else:
                _probe_encoder(latent, probe, outputs, self.encoder_inputs[latent.name].get_value())
                # Train copies, so that the user's encoder object keeps its weights.
                copies = {
                    p: pytensor.shared(p.get_value(borrow=False), name=p.name) for p in params
                }
            self._param_copies[latent.name] = copies
            self.encoder_params += [copies.get(p, p) for p in params]

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
        """Every optimised shared variable: global mean and rho, then encoder weights."""
        return self.global_params + self.encoder_params

    # -- symbolic pieces used by the objective --------------------------------------------------
    def symbolic_encode(
        self, name: str, inputs: TensorVariable
    ) -> tuple[TensorVariable, TensorVariable]:
        """Mean and log-sd (B, event_size) of q(z_n) for standardized encoder inputs (B, k)."""
        latent = next(lat for lat in self.plate.latents if lat.name == name)
        outputs = check_encoder_outputs(name, self._encoders[name](inputs), latent.event_size)
        copies = self._param_copies[name]
        outputs = graph_replace(list(outputs), copies) if copies else outputs
        return tuple(inline_layers(outputs))

    def global_draws(self, eps: TensorVariable) -> dict[str, TensorVariable]:
        """Value-space draws ``(S, *shape)`` of each global from standard normal ``eps`` (S, D)."""
        group = self.global_group
        flat = group.mean + pt.softplus(group.rho) * eps
        return {
            value_name: flat[:, slc].reshape((eps.shape[0], *shape))
            for value_name, slc, shape, _ in group.ordering.values()
        }

    @property
    def n_global(self) -> int:
        return self.global_group.ddim if self.global_group is not None else 0

    # -- results ------------------------------------------------------------------------------
    def _encode_fn(self, name: str):
        if name not in self._encode_fns:
            inputs = pt.matrix("inputs")
            mean, log_sd = self.symbolic_encode(name, inputs)
            self._encode_fns[name] = pytensor.function([inputs], [mean, pt.exp(log_sd)])
        return self._encode_fns[name]

    def encode(
        self, new_data: Mapping[str, np.ndarray] | np.ndarray | None = None
    ) -> dict[str, LocalPosterior]:
        """Mean and sd of q(z_n) for each unit, in one forward pass of the encoder.

        Parameters
        ----------
        new_data : mapping or ndarray, optional
            Data of new units, by the names that feed the encoders (``{"x": x_new}``, row = unit),
            or, for a model with one local latent, its (M, k) encoder input matrix. When omitted,
            the units the model was fitted on.

        Returns
        -------
        dict of str to LocalPosterior
            Per local latent, the mean and sd arrays of shape ``(M, *event_shape)`` on the latent's
            unconstrained space.

        Examples
        --------
        .. code-block:: python

            approx = pm.fit(10_000, method="amortized", model=model)
            q_new = approx.encode({"x": np.array([0.5, 2.0])})["z"]
            q_new.mean, q_new.sd
        """
        out = {}
        for latent in self.plate.latents:
            if new_data is None:
                matrix = self.encoder_inputs[latent.name].get_value()
            else:
                matrix = self.input_scaling[latent.name].apply(self._new_matrix(latent, new_data))
            mean, sd = self._encode_fn(latent.name)(matrix.astype(pytensor.config.floatX))
            shape = (matrix.shape[0], *latent.event_shape)
            out[latent.name] = LocalPosterior(mean.reshape(shape), sd.reshape(shape))
        return out

    def _new_matrix(self, latent: LocalLatent, new_data) -> np.ndarray:
        if isinstance(new_data, Mapping):
            if latent.input_matrix is not None:
                if latent.name not in new_data:
                    raise AmortizationError(
                        f"'{latent.name}' was fitted on an explicit input matrix; pass "
                        f"{{'{latent.name}': matrix}} for the new units."
                    )
                matrix = np.asarray(new_data[latent.name])
                return _checked_matrix(latent.name, matrix.reshape(matrix.shape[0], -1), None)
            return encoder_input_matrix(latent, new_data)
        if len(self.plate.latents) != 1:
            raise AmortizationError(
                "This model has several local latents; pass new data as {data name: array}."
            )
        matrix = np.asarray(new_data)
        matrix = matrix.reshape(matrix.shape[0], -1)
        width = self.encoder_inputs[latent.name].get_value().shape[1]
        if matrix.shape[1] != width:
            raise AmortizationError(
                f"The encoder of '{latent.name}' takes {width} input column(s); got {matrix.shape[1]}."
            )
        return _checked_matrix(latent.name, matrix, None)

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
        for latent in self.plate.latents:
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
        for latent in self.plate.latents:
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
            for latent in self.plate.latents
        }
        return az.from_dict({"posterior": posterior}, dims=dims)

    def __repr__(self) -> str:
        latents = ", ".join(self.plate.latent_names)
        return (
            f"AmortizedApproximation(locals=[{latents}], units={self.plate.size}, "
            f"global_dim={self.n_global}, encoder_params="
            f"{sum(p.get_value().size for p in self.encoder_params)})"
        )
