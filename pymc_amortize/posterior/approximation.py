"""The public face of an amortized fit: :class:`AmortizedApproximation`.

A thin facade: the guide's state and symbolic q are an :class:`~pymc_amortize.guide.state.
AmortizedGuide` (``approx.guide``), the fit's record a :class:`~pymc_amortize.posterior.record.
FitRecord` (``approx.record``), and each method below delegates to a function of
:mod:`pymc_amortize.posterior` (local summaries and zero-row priors in ``local``; new units in
``new_units``; Datasets in ``datasets``; ArviZ groups in ``idata``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pymc as pm
import xarray as xr
from pymc.backends.base import MultiTrace
from pymc.variational.opvi import Group
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.data.sampler import StepBuffers
from pymc_amortize.data.streaming import UnitSource
from pymc_amortize.guide.conditional import ConditionalGaussian
from pymc_amortize.guide.envelope import TrainingEnvelope
from pymc_amortize.guide.globals import GlobalFamily
from pymc_amortize.guide.inputs import EncoderData
from pymc_amortize.guide.state import AmortizedGuide
from pymc_amortize.guide.weights import EncoderWeight
from pymc_amortize.model.forward import trace_from_values
from pymc_amortize.model.plates import PlateLayout, UnitBatch
from pymc_amortize.model.types import LocalLatent, ModelAnalysis, Plate
from pymc_amortize.posterior.datasets import encode_dataset, sample_dataset, unit_draws, unit_labels
from pymc_amortize.posterior.datasets import unit_dim as plate_unit_dim
from pymc_amortize.posterior.idata import sample_fitted
from pymc_amortize.posterior.joint import JointDensity
from pymc_amortize.posterior.local import QUANTILE_LEVELS, LocalPosterior, encode_fitted
from pymc_amortize.posterior.new_units import encode_new_units, sample_new_units
from pymc_amortize.posterior.record import FitRecord

__all__ = ["AmortizedApproximation"]


class AmortizedApproximation:
    """A fitted (or fitting) amortized variational posterior.

    Built by :class:`~pymc_amortize.AmortizedVI`; users get it back from
    ``pm.fit(method="amortized")``. ``analysis`` holds its plates and what stays mean-field;
    ``guide`` the guide's state (q(θ), the encoders, their inputs and weights); ``record`` the
    fit's losses, step times, settings and outcome, written by the fitting adapter only.
    """

    def __init__(self, guide: AmortizedGuide, record: FitRecord | None = None):
        #: The guide's state and symbolic q.
        self.guide = guide
        #: The fit's record (a fresh, empty one before any fit).
        self.record = FitRecord() if record is None else record
        self._joint_density: JointDensity | None = None

    # -- the fit's record (read-only: the fitting adapter updates ``record``) -------------------
    @property
    def hist(self) -> np.ndarray:
        """The loss of each step (see :class:`~pymc_amortize.posterior.record.FitRecord`)."""
        return self.record.hist

    @property
    def step_seconds(self) -> np.ndarray:
        """Wall-clock seconds of each step, aligned with ``hist``."""
        return self.record.step_seconds

    @property
    def settings(self) -> dict[str, object]:
        """Options and outcome of the fit, for the results' attributes."""
        return self.record.settings

    @property
    def divergence(self):
        """Where the last fit or refine diverged (a :class:`~pymc_amortize.DivergenceInfo`), or
        None."""
        return self.record.divergence

    @property
    def gap_check(self):
        """The after-fit amortization-gap check (a :class:`~pymc_amortize.GapCheck`), or None."""
        return self.record.gap_check

    # -- the guide's state ----------------------------------------------------------------------
    @property
    def model(self) -> pm.Model:
        """The fitted model (a template of a few units for a fit on ``unit_data``)."""
        return self.guide.model

    @property
    def analysis(self) -> ModelAnalysis:
        """The model's plates, local latents and what stays mean-field."""
        return self.guide.analysis

    @property
    def step_buffers(self) -> StepBuffers | None:
        """The host arrays the step reads each minibatch of ``unit_source`` from."""
        return self.guide.step_buffers

    @property
    def unit_source(self) -> UnitSource | None:
        """Where the batch plate's units are read from on a fit on ``unit_data`` (else None)."""
        return self.guide.unit_source

    @property
    def local_family(self) -> ConditionalGaussian | None:
        """The conditional local family, or None (the encoder family everywhere)."""
        return self.guide.local_family

    @property
    def conditional_plates(self) -> frozenset[str]:
        """The plates whose locals use the conditional family q(z_n | θ, x_n)."""
        return self.guide.conditional_plates

    @conditional_plates.setter
    def conditional_plates(self, plates) -> None:
        # A loaded fit's plates (load_approximation).
        self.guide.conditional_plates = frozenset(plates)

    @property
    def globals(self) -> GlobalFamily | None:
        """q(θ), a :class:`~pymc_amortize.guide.globals.GlobalFamily` (None without globals)."""
        return self.guide.globals

    @property
    def layouts(self) -> dict[str, PlateLayout]:
        """Each plate's units and rows as the step and the encoders read them."""
        return self.guide.layouts

    @property
    def inputs(self) -> dict[str, EncoderData]:
        """Each local latent's encoder inputs and their scalings."""
        return self.guide.inputs

    @property
    def envelopes(self) -> dict[str, TrainingEnvelope]:
        """Each local latent's training envelope: the range of its encoder inputs in training."""
        return self.guide.envelopes

    @property
    def encoder_weights(self) -> SharedVariable | None:
        """Every encoder weight in one flat shared vector (None without encoders)."""
        return self.guide.encoder_weights

    @property
    def encoder_params(self) -> list[EncoderWeight]:
        """Each encoder weight, read and written as a slice of ``encoder_weights``."""
        return self.guide.encoder_params

    @property
    def encoders(self) -> dict[str, Callable]:
        """Each local latent's encoder, by latent name (built-in or the user's)."""
        return dict(self.guide.encoders)

    @property
    def encoder_widths(self) -> dict[str, tuple[int, ...]]:
        """The hidden widths of each built-in encoder (ρ's for a pooled one), as resolved."""
        return self.guide.encoder_widths

    @property
    def latents(self) -> tuple[LocalLatent, ...]:
        """The local latents, as the analysis found them."""
        return self.guide.latents

    @property
    def n_global(self) -> int:
        """The size of q(θ): the entries of every global."""
        return self.guide.n_global

    def global_factors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Mean and sd of q(θ) for each global, by value variable name, shaped as the variable
        (on its unconstrained space)."""
        return self.guide.global_factors()

    def require_units_in_memory(self, what: str) -> None:
        """Raise :class:`~pymc_amortize.AmortizationError` for ``what`` on a fit on
        ``unit_data``, whose units are not in the (template) model."""
        self.guide.require_units_in_memory(what)

    def require_encoder_family(self, what: str) -> None:
        """Raise :class:`~pymc_amortize.AmortizationError` for ``what`` on a fit whose plates use
        the conditional family, where it is not available yet."""
        self.guide.require_encoder_family(what)

    @property
    def is_mean_field(self) -> bool:
        """Whether q is the product of its marginals (the encoder family with a mean-field q(θ)):
        then its ELBO is that of :func:`~pymc_amortize.diagnostics.meanfield_of`'s factors, and it
        is a subset of F-VI's family; else only :meth:`joint_density` scores it."""
        return self.guide.is_mean_field

    def joint_density(self) -> JointDensity:
        """log p(x, θ, z) and log q(θ, z) of joint draws from this fit's q, for every family
        (compiled on the first call and kept; see :class:`~pymc_amortize.posterior.joint.
        JointDensity`)."""
        if self._joint_density is None:
            self._joint_density = JointDensity(self.guide)
        return self._joint_density

    def nonfinite_params(self) -> tuple[str, ...]:
        """Names of the parameters with a NaN or infinite entry, globals by variable."""
        return self.guide.nonfinite_params()

    # -- what PyMC's Inference loop and the objective read -----------------------------------
    @property
    def groups(self) -> list[Group]:
        """PyMC's group of q(θ), for PyMC's ``Inference`` loop (none without globals)."""
        return self.guide.groups

    @property
    def global_params(self) -> list[SharedVariable]:
        """q(θ)'s optimised shared variables."""
        return self.guide.global_params

    @property
    def params(self) -> list[SharedVariable]:
        """Every optimised shared variable: q(θ)'s, then ``encoder_weights``."""
        return self.guide.params

    def encoder_graph(
        self,
        name: str,
        units: TensorVariable | None,
        rows: TensorVariable | None = None,
        unit_of_row: TensorVariable | None = None,
        n_units: TensorVariable | None = None,
    ) -> tuple[TensorVariable, TensorVariable]:
        """Mean and log-sd (B, event_size) of q(z_n) from standardised inputs (see
        :meth:`AmortizedGuide.encoder_graph <pymc_amortize.guide.state.AmortizedGuide.encoder_graph>`)."""
        return self.guide.encoder_graph(name, units, rows, unit_of_row, n_units)

    def symbolic_encode(self, name: str, batch: UnitBatch) -> tuple[TensorVariable, TensorVariable]:
        """Mean and log-sd (B, event_size) of q(z_n) for the units of ``batch``."""
        return self.guide.symbolic_encode(name, batch)

    def global_draws(self, eps: TensorVariable) -> dict[str, TensorVariable]:
        """Value-space draws ``(S, *shape)`` of each global from standard normal ``eps`` (S, D)."""
        return self.guide.global_draws(eps)

    def conditional_sampler(
        self, values: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Draws of the conditional plates' locals given (S, ...) draws ``values`` of every other
        free variable (by value name)."""
        return self.guide.conditional_sampler(values, rng)

    def draw_globals(self, draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``draws`` value-space draws of each global from q(θ), by value variable name."""
        return self.guide.draw_globals(draws, rng)

    # -- per-unit results -----------------------------------------------------------------------
    def unit_dim(self, plate: Plate) -> str:
        """The dim of ``plate``'s units in every result: its model dim, else the plate's name."""
        return plate_unit_dim(plate)

    def unit_labels(self, plate: Plate) -> np.ndarray | None:
        """The coords of ``plate``'s units (the dataset's for a fit on ``unit_data``), or None."""
        return unit_labels(self.model, plate, self.unit_source)

    def unit_draws(
        self,
        latent: LocalLatent,
        start: int,
        stop: int,
        draws: int,
        seed: np.random.SeedSequence,
        q: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value-space draws ``(draws, stop - start, *event_shape)`` of q(z_n) for the fitted
        units ``start:stop``, the same whatever chunk asks, and q's mean and sd there (``q``,
        else the encoder's)."""
        return unit_draws(self.guide, latent, start, stop, draws, seed, q)

    def fitted_encoder_outputs(
        self, chunk_size: int = 100_000
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The encoders' (mean, sd) of every fitted unit, unconstrained, chunk by chunk."""
        return self.guide.fitted_encoder_outputs(chunk_size)

    def encode_units(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Encoder mean and sd ``(stop - start, *event_shape)`` of q(z_n) for the fitted units
        ``start:stop`` of ``name``'s plate (see :meth:`AmortizedGuide.encode_units
        <pymc_amortize.guide.state.AmortizedGuide.encode_units>`)."""
        return self.guide.encode_units(name, start, stop)

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
            Equal to :meth:`encode` whatever ``chunk_size``. For a plate of the conditional
            family, the moments of the mixture over q(θ) as :meth:`encode` gives them for new
            units (its default 4,000 draws of q(θ), seed 0), computed on each chunk's own data;
            :meth:`encode` of the fitted units gives the same moments, over its own draws of
            q(θ), equal within their Monte Carlo error.

        Examples
        --------
        .. code-block:: python

            posterior = approx.encode_dataset(chunk_size=500_000, store="units.zarr")
            posterior["z_mean"].sel(unit=slice(0, 10)).values
        """
        return encode_dataset(
            self.guide,
            chunk_size=chunk_size,
            progressbar=progressbar,
            summary=summary,
            quantiles=quantiles,
            store=store,
        )

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
            sd / sqrt(prior_draws)), and of θ behind a conditional plate's moments.
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
            unconstrained (value) space, the Gaussian the encoder outputs (for a plate of the
            conditional family, the moments of the mixture ∫ q(z_n | θ, x_n) q(θ) dθ over
            ``prior_draws`` draws of q(θ): the mean E_θ m_n(θ) and the variance
            E_θ Var(z_n | θ) + Var_θ m_n(θ) of the Newton steps on the units' own data, exact
            per draw of θ); ``constrained_mean``
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
        if new_data is None and units is None:
            return encode_fitted(
                self.guide,
                quantiles=quantiles,
                prior_draws=prior_draws,
                random_seed=random_seed,
                summary=summary,
                chunk_size=chunk_size,
            )
        return encode_new_units(
            self.guide,
            new_data,
            units=units,
            check_range=check_range,
            quantiles=quantiles,
            prior_draws=prior_draws,
            random_seed=random_seed,
            summary=summary,
        )

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
        (mean and sd of each q(z_n)), see :func:`pymc_amortize.posterior.idata.method_groups`.
        """
        return sample_fitted(
            self.guide,
            self.record,
            draws,
            random_seed=random_seed,
            return_inferencedata=return_inferencedata,
        )

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
            each block of units has its own stream, see :mod:`pymc_amortize.posterior.chunks`); the globals'
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
        return sample_dataset(
            self.guide,
            draws,
            chunk_size=chunk_size,
            store=store,
            random_seed=random_seed,
            progressbar=progressbar,
        )

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
        (see ``units`` in :meth:`encode`) gets draws of its prior given each draw of q(θ). A
        plate of the conditional family draws (θ, z_n) jointly: z_n from q(z_n | θ_s, x_n), the
        fit's Newton steps on the new units' own data (every array of the plate's log density,
        the observations included, must be in ``new_data``) for each draw θ_s.

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
        return sample_new_units(
            self.guide,
            new_data,
            draws,
            units=units,
            random_seed=random_seed,
            unit_dim=unit_dim,
            predictions=predictions,
            prediction_data=prediction_data,
            check_range=check_range,
        )

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
