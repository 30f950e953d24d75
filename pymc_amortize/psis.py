"""Pareto-smoothed importance sampling diagnostics of an amortized fit (Yao et al., 2018).

With S draws (θ_s, z_s) from q, the importance log weights are log p(x, θ_s, z_s) − log q(θ_s, z_s).
The Pareto shape k̂ of their right tail (fitted by arviz-stats) says whether q can be trusted:
k̂ < 0.5 good, 0.5–0.7 usable, > 0.7 unreliable ("Yes, but did it work?").

In a simple hierarchical model the log weights split over units,

    log w_s = [log p(θ_s) − log q(θ_s)] + Σ_n [log p(x_n, z_n,s | θ_s) − log q(z_n,s)],

so, conditioning on the global draws, each unit's factor gives its own k̂: a unit whose q(z_n)
the encoder got wrong has heavy-tailed weights, whatever the other units do. For the conditional
family the unit's factor is log p(x_n, z_n,s | θ_s) − log q(z_n,s | θ_s, x_n), and the joint draws
and their log q come from :class:`~pymc_amortize.posterior.joint.JointDensity`: the weights are
those of the fit's own joint q(θ) q(z | θ), never of the product of its marginals.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from arviz_stats.base import array_stats
from pymc.pytensorf import compile as compile_pymc
from scipy.special import logsumexp

from pymc_amortize.errors import AmortizationError, as_clause, require_integer
from pymc_amortize.guide.globals import HALF_LOG_2PI
from pymc_amortize.model.logjoint import LogJoint, build_logjoint, compile_log_terms
from pymc_amortize.model.plates import UnitBatch
from pymc_amortize.model.types import Plate
from pymc_amortize.posterior.approximation import AmortizedApproximation
from pymc_amortize.posterior.chunks import ChunkedPart, assemble_chunks, seed_sequence
from pymc_amortize.posterior.joint import JointSample

__all__ = [
    "BatchUnitGraph",
    "PSISDiagnostic",
    "batch_unit_graph",
    "draw_placeholders",
    "khat_verdict",
    "pareto_khat",
    "psis_diagnostic",
    "rows_of_units",
]

#: Yao et al.'s thresholds on k̂.
GOOD_KHAT = 0.5
USABLE_KHAT = 0.7


def khat_verdict(khat: float) -> str:
    """``"good"`` (k̂ < 0.5), ``"usable"`` (0.5 ≤ k̂ ≤ 0.7) or ``"unreliable"`` (k̂ > 0.7)."""
    if not khat <= USABLE_KHAT:  # NaN is unreliable too
        return "unreliable"
    return "good" if khat < GOOD_KHAT else "usable"


def _is_constant(log_weights: np.ndarray, axis: int) -> np.ndarray:
    spread = np.ptp(log_weights, axis=axis)
    return spread <= 1e-12 * (1.0 + np.abs(log_weights).max(axis=axis))


def pareto_khat(
    log_weights: xr.DataArray, *, dim: str = "draw"
) -> tuple[xr.DataArray, xr.DataArray]:
    """PSIS-smoothed, normalised log weights and the Pareto k̂ of their right tail along ``dim``.

    arviz-stats' ``psislw`` follows the leave-one-out convention and smooths the right tail of
    the *negated* input, so the log weights are negated on the way in. Weights that are all
    equal (q is exact) have no tail to fit; their k̂ is −inf.

    Parameters
    ----------
    log_weights : xarray.DataArray
        Unnormalised importance log weights with the draws along ``dim``; other dims are batched.
    dim : str
        The draw dim.

    Returns
    -------
    smoothed : xarray.DataArray
        Normalised smoothed log weights (they log-sum-exp to 0 along ``dim``).
    khat : xarray.DataArray
        k̂ for each entry of the other dims.

    Examples
    --------
    .. code-block:: python

        import numpy as np, xarray as xr
        from pymc_amortize.psis import pareto_khat

        w = np.random.default_rng(0).pareto(1 / 0.8, size=4000) + 1  # tail shape k = 0.8
        _, khat = pareto_khat(xr.DataArray(np.log(w), dims="draw"))
    """
    if dim not in log_weights.dims:
        raise AmortizationError(f"The log weights have no '{dim}' dim; dims: {log_weights.dims}.")
    log_weights = log_weights.transpose(..., dim)
    values = np.asarray(log_weights.values, dtype=float)
    if not np.isfinite(values).all():
        raise AmortizationError(
            "Some importance log weights are NaN or infinite: log p or log q is not finite at a "
            "draw of q. Check the model's support against the approximation."
        )
    flat = values.reshape(-1, values.shape[-1])
    smoothed = flat - logsumexp(flat, axis=-1, keepdims=True)
    khat = np.full(flat.shape[0], -np.inf)
    tailed = ~_is_constant(flat, axis=-1)
    if tailed.any():
        smoothed[tailed], khat[tailed] = array_stats.psislw(-flat[tailed], r_eff=1.0, axis=-1)
    khat_da = log_weights.isel({dim: 0}, drop=True).copy(data=khat.reshape(values.shape[:-1]))
    return log_weights.copy(data=smoothed.reshape(values.shape)), khat_da.rename("pareto_k")


@dataclass(frozen=True)
class PSISDiagnostic:
    """The PSIS diagnostic of an amortized approximation; see :func:`psis_diagnostic`.

    Attributes
    ----------
    khat : float
        k̂ of the whole approximation q(θ) ∏ q(z_n) (or q(θ) ∏ q(z_n | θ, x_n), the conditional
        family's joint).
    khat_per_plate : dict of str to xarray.DataArray
        Per plate, k̂ of each unit's factor p(x_n, z_n | rest) / q(z_n | rest), under the plate's
        dim;
        NaN where the plate's factors couple its units (see ``notes``).
    log_weights : xarray.DataArray
        Unnormalised importance log weights along ``draw``.
    smoothed_log_weights : xarray.DataArray
        Normalised PSIS-smoothed log weights along ``draw``.
    """

    khat: float
    khat_per_plate: dict[str, xr.DataArray]
    log_weights: xr.DataArray
    smoothed_log_weights: xr.DataArray
    approximation: AmortizedApproximation = field(repr=False)
    values: dict[str, np.ndarray] = field(repr=False)
    #: Per plate whose units have no k̂ of their own (a prior or a ``pm.Potential`` couples them,
    #: e.g. a random walk over the units), why; their ``khat_per_plate`` entries are NaN.
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def khat_per_unit(self) -> xr.DataArray:
        """k̂ of each unit of the model's plate (the plate with the most units if several)."""
        if not self.khat_per_plate:
            raise AmortizationError("The model has no plate of units: every latent is mean-field.")
        return max(self.khat_per_plate.values(), key=lambda k: k.size)

    @property
    def verdict(self) -> str:
        """:func:`khat_verdict` of the overall k̂."""
        return khat_verdict(self.khat)

    @property
    def ess(self) -> float:
        """Effective sample size of the smoothed weights, 1 / Σ w²."""
        return float(1.0 / np.exp(2.0 * self.smoothed_log_weights).sum())

    def flagged_units(self, threshold: float = USABLE_KHAT) -> xr.DataArray:
        """k̂ of the units above ``threshold``, worst first."""
        flagged = self.khat_per_unit.where(self.khat_per_unit > threshold, drop=True)
        return flagged.sortby(flagged, ascending=False)

    def summary(self, *, worst: int = 5) -> str:
        """A short verdict: the overall k̂ and, per plate, units per verdict and the worst units."""
        n_draws = self.log_weights.sizes["draw"]
        lines = [
            f"PSIS diagnostic of the amortized approximation ({n_draws} draws): overall "
            f"k̂ = {self.khat:.2f}, {self.verdict} (k̂ < 0.5 good, 0.5–0.7 usable, > 0.7 "
            f"unreliable); importance-sampling ESS {self.ess:.0f} of {n_draws}."
        ]
        for plate, per_unit in self.khat_per_plate.items():
            unit_dim = per_unit.dims[0]
            if plate in self.notes:
                lines.append(f"Per unit ({unit_dim}): {self.notes[plate]}")
                continue
            counts = {v: 0 for v in ("good", "usable", "unreliable")}
            for k in per_unit.values:
                counts[khat_verdict(k)] += 1
            order = np.argsort(-per_unit.values, kind="stable")[:worst]
            worst_units = ", ".join(
                f"{per_unit[unit_dim].values[i]} (k̂ = {per_unit.values[i]:.2f})" for i in order
            )
            lines.append(
                f"Per unit ({unit_dim}): {counts['good']} good, {counts['usable']} usable, "
                f"{counts['unreliable']} unreliable. Highest k̂: {worst_units}."
            )
        return "\n".join(lines)

    def to_dataset(self) -> xr.Dataset:
        """``pareto_k`` per unit and ``pareto_k_overall``, e.g. for ``idata["psis"]``."""
        return xr.Dataset(
            {
                "pareto_k": self.khat_per_unit,
                "pareto_k_overall": ((), self.khat),
            },
            attrs={"verdict": self.verdict, "draws": self.log_weights.sizes["draw"]},
        )

    def resample(self, draws: int | None = None, *, random_seed: int | None = None) -> xr.DataTree:
        """Posterior draws resampled (with replacement) in proportion to the smoothed weights.

        Less biased than q's own draws when k̂ is small enough for the weights to be trusted
        (k̂ < 0.7); duplicates are expected, and the effective sample size is :attr:`ess`.

        Parameters
        ----------
        draws : int, optional
            Number of draws; as many as the diagnostic used when omitted.
        random_seed : int, optional
            Seed of the resampling.

        Returns
        -------
        xarray.DataTree
            ``posterior`` (and ``observed_data``) under the model's dims, as ``approx.sample``.
        """
        n_draws = self.log_weights.sizes["draw"]
        draws = n_draws if draws is None else require_integer(draws, "draws")
        approx = self.approximation
        missing = [v.name for v in approx.model.value_vars if v.name not in self.values]
        if missing:
            raise AmortizationError(
                f"This diagnostic was computed in chunks (chunk_size=), so it kept no draws of "
                f"{', '.join(missing)} to resample; rerun psis_diagnostic without chunk_size."
            )
        weights = np.exp(self.smoothed_log_weights.values)
        rng = np.random.default_rng(random_seed)
        index = rng.choice(n_draws, size=draws, replace=True, p=weights / weights.sum())
        values = {name: value[index] for name, value in self.values.items()}
        idata = pm.to_inference_data(
            approx.trace_from_values(values), model=approx.model, log_likelihood=False
        )
        idata["posterior"].attrs |= {"psis_resampled": 1, "pareto_k_overall": self.khat}
        return idata


def _log_normal(value: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((value - mean) / sd) ** 2 - np.log(sd) - HALF_LOG_2PI


def psis_diagnostic(
    approx: AmortizedApproximation,
    *,
    draws: int = 1000,
    random_seed: int | None = None,
    chunk_size: int | None = None,
    store=None,
    progressbar: bool = False,
) -> PSISDiagnostic:
    """Pareto k̂ of the whole approximation and of each unit's q(z_n) (Yao et al., 2018).

    Draws θ_s ~ q(θ) and z_n,s ~ q(z_n) (the conditional family: z_n,s ~ q(z_n | θ_s, x_n), from
    the fit's :meth:`~pymc_amortize.AmortizedApproximation.joint_density`; a full-rank q(θ)
    scores its own log density) and computes, on the unconstrained space where q lives,
    log p(x_n, z_n,s | θ_s) − log q(z_n,s) per unit and their sum plus
    log p(θ_s) − log q(θ_s) overall; arviz-stats fits the Pareto tail of each. A unit's k̂ is
    conditional on the global draws, so it judges the encoder's q(z_n) for that unit. Where a
    plate's factors couple its units (a random-walk or AR prior over them, a ``pm.Potential``
    summed over them), a unit has no factor of its own: the overall k̂ is computed from the
    whole log joint and the plate's k̂ per unit is NaN, with the reason in ``notes`` and the
    summary.

    Parameters
    ----------
    approx : AmortizedApproximation
        A fitted approximation.
    draws : int
        Number of draws S (a few hundred at least; k̂ is noisy for small S).
    random_seed : int, optional
        Seed of the draws. A unit's draws do not depend on ``chunk_size`` (see
        :mod:`pymc_amortize.posterior.chunks`), so neither do the results.
    chunk_size : int, optional
        Units of a plate per chunk: the draws, log weights and k̂ of ``chunk_size`` units are
        computed at a time (with PyMC's progress bar when ``progressbar``), so memory grows as
        S × ``chunk_size``, not S × N; the plate's factors are compiled once for any chunk length.
        A crossed model's other plates' draws are held whole. ``resample`` then has no draws to
        resample (the units' draws are not kept). None (default): all units at once, memory
        S × N (a few arrays of S × N floats).
        Not for the conditional family, whose plate draws every unit at once.
    store : str, path or zarr store, optional
        With ``chunk_size``: write each plate's k̂ per unit, ``pareto_k_<plate>``, to this zarr
        store chunk by chunk, and read it back lazily (dask-backed) into ``khat_per_plate``.
    progressbar : bool, default False
        Show PyMC's progress bar over the chunks.

    Returns
    -------
    PSISDiagnostic
        ``khat``, ``khat_per_unit`` (a DataArray under the unit dim), the log weights,
        ``summary()`` with a verdict, and ``resample()`` for PSIS-corrected posterior draws.

    Examples
    --------
    .. code-block:: python

        approx = pm.fit(5_000, method="amortized", model=model)
        diagnostic = psis_diagnostic(approx, draws=1000, random_seed=0)
        print(diagnostic.summary())
        diagnostic.khat_per_unit.sortby(diagnostic.khat_per_unit)[-5:]
        # Millions of units: 100,000 at a time, k̂ per unit written to zarr.
        big = psis_diagnostic(approx, draws=500, chunk_size=100_000, store="khat.zarr")
    """
    if not isinstance(approx, AmortizedApproximation):
        raise AmortizationError(
            f"psis_diagnostic needs an AmortizedApproximation (from pm.fit(method='amortized')); "
            f"got {type(approx).__name__}."
        )
    approx.require_units_in_memory("psis_diagnostic")
    draws = require_integer(draws, "draws", minimum=10)
    if chunk_size is not None:
        chunk_size = require_integer(chunk_size, "chunk_size")
    if store is not None and chunk_size is None:
        raise AmortizationError("store= writes k̂ chunk by chunk; give chunk_size= too.")
    conditional = bool(approx.conditional_plates)
    if conditional and chunk_size is not None:
        raise AmortizationError(
            "psis_diagnostic(chunk_size=...) draws a chunk of units at a time, and the "
            f"conditional family's plate(s) {', '.join(sorted(approx.conditional_plates))} draw "
            "every unit at once (each unit's q(z_n | θ, x_n) follows the same draws of θ, in one "
            "graph over the plate). Pass chunk_size=None."
        )
    seed = seed_sequence(random_seed)
    joint = None
    if conditional:
        # q(z_n | θ) follows the draws of θ: the joint draws and their log q come together.
        joint = approx.joint_density().sample(draws, np.random.default_rng(seed))
        values = dict(joint.values)
        log_q_globals = joint.log_q_globals
    else:
        values = approx.draw_globals(draws, np.random.default_rng(seed))
        log_q_globals = np.zeros(draws)
        if approx.globals is not None:
            log_q_globals += approx.globals.log_density(values)
    plates = approx.analysis.plates
    if not plates:  # every latent is mean-field
        fn, order = compile_log_terms(approx.model, approx.analysis, None)
        log_weights = fn(*(values[name] for name in order))[0] - log_q_globals
        return _diagnostic(approx, log_weights, {}, values)

    # A unit without rows has q = the Monte Carlo moments of its prior given q(θ) (see encode).
    prior_only = any(p.index is not None and (np.asarray(p.row_counts) == 0).any() for p in plates)
    if joint is not None:
        units = _JointUnits(approx, joint)
    else:
        encoded = approx.encode(summary=False) if prior_only else None
        units = _PlateUnits(approx, draws, seed, encoded)
    # Every plate's draws and log q, whole, unless one plate is chunked: with several plates,
    # a plate's factors (a crossed likelihood) read the other plates' draws at every unit.
    whole = {
        plate.name: units.draws(plate, 0, plate.size)
        for plate in plates
        if chunk_size is None or len(plates) > 1
    }
    for plate_values, _ in whole.values():
        values |= plate_values

    terms, totals, parts, notes = {}, {}, [], {}
    for plate in plates:
        try:
            terms[plate.name] = _UnitTerms(approx, plate, whole=chunk_size is None)
        except AmortizationError as error:
            if chunk_size is not None:
                raise
            # A prior or a Potential couples the plate's units: the overall k̂ is still defined
            # (from the whole log joint below), a unit's is not.
            notes[plate.name] = f"no k̂ per unit: {as_clause(error)}"
            build = functools.partial(_undefined_khat, approx=approx, plate=plate)
            parts.append(ChunkedPart(approx.unit_dim(plate), plate.size, build))
            continue
        totals[plate.name] = np.zeros(draws)  # Σ over the plate's units of log p − log q
        build = functools.partial(
            _khat_chunk,
            approx=approx,
            plate=plate,
            values=values,
            draw_units=(lambda p, a, b: whole[p.name]) if chunk_size is None else units.draws,
            terms=terms[plate.name],
            total=totals[plate.name],
            labels=approx.unit_labels(plate),
        )
        parts.append(ChunkedPart(approx.unit_dim(plate), plate.size, build))
    khats = assemble_chunks(
        parts,
        chunk_size=chunk_size or max(p.size for p in plates),
        description="PSIS per unit",
        progressbar=progressbar,
        store=store,
    )
    khat_per_plate = {p.name: khats[f"pareto_k_{p.name}"].rename("pareto_k") for p in plates}
    if notes:  # whole (chunk_size=None): every plate's draws are in `values` and `whole`
        fn, order = compile_log_terms(approx.model, approx.analysis, None)
        log_p = fn(*(values[name] for name in order))[0]
        log_q = sum((q.sum(axis=1) for _, q in whole.values()), np.zeros(draws))
        log_weights = log_p - log_q - log_q_globals
        return _diagnostic(approx, log_weights, khat_per_plate, values, notes)
    # log p(x, θ, z) − log q(θ, z) from the first plate: its units' factors (summed over the
    # chunks) and the rest of the model, in which every other plate's draws enter whole.
    first = plates[0]
    other_q = sum(
        (log_q.sum(axis=1) for name, (_, log_q) in whole.items() if name != first.name),
        np.zeros(draws),
    )
    log_weights = (
        terms[first.name].rest(values, draws) + totals[first.name] - other_q - log_q_globals
    )
    return _diagnostic(approx, log_weights, khat_per_plate, values)


def _undefined_khat(
    start: int, stop: int, *, approx: AmortizedApproximation, plate: Plate
) -> xr.Dataset:
    """NaN k̂ for the units ``start:stop`` of a plate whose factors couple its units."""
    dim, labels = approx.unit_dim(plate), approx.unit_labels(plate)
    coords = {dim: labels[start:stop] if labels is not None else np.arange(start, stop)}
    khat = np.full(stop - start, np.nan)
    return xr.Dataset({f"pareto_k_{plate.name}": ((dim,), khat)}, coords=coords)


def _khat_chunk(
    start: int,
    stop: int,
    *,
    approx: AmortizedApproximation,
    plate: Plate,
    values: dict[str, np.ndarray],
    draw_units: Callable[[Plate, int, int], tuple[dict[str, np.ndarray], np.ndarray]],
    terms: _UnitTerms,
    total: np.ndarray,
    labels: np.ndarray | None,
) -> xr.Dataset:
    """k̂ of the units ``start:stop`` of ``plate`` as ``pareto_k_<plate>``; adds their
    log p − log q to ``total`` (S,)."""
    local, log_q = draw_units(plate, start, stop)
    log_weights = terms.per_unit(values | local, start, stop) - log_q
    total += log_weights.sum(axis=1)
    dim = approx.unit_dim(plate)
    khat = pareto_khat(xr.DataArray(log_weights, dims=("draw", dim)))[1].values
    coords = {dim: labels[start:stop] if labels is not None else np.arange(start, stop)}
    return xr.Dataset({f"pareto_k_{plate.name}": ((dim,), khat)}, coords=coords)


def _diagnostic(approx, log_weights, khat_per_plate, values, notes=None) -> PSISDiagnostic:
    overall = xr.DataArray(log_weights, dims="draw")
    smoothed, khat = pareto_khat(overall)
    return PSISDiagnostic(
        khat=float(khat),
        khat_per_plate=khat_per_plate,
        log_weights=overall,
        smoothed_log_weights=smoothed,
        approximation=approx,
        values=values,
        notes=dict(notes or {}),
    )


class _PlateUnits:
    """Draws of a plate's units ``start:stop`` from q and their log q, the same whatever the
    chunk (``AmortizedApproximation.unit_draws``); ``encoded``: q of every unit when some units
    have no rows (their q is their prior's moments), else the encoder's, per chunk."""

    def __init__(
        self,
        approx: AmortizedApproximation,
        draws: int,
        seed: np.random.SeedSequence,
        encoded: dict | None,
    ):
        self.approx, self.n_draws, self.seed, self.encoded = approx, draws, seed, encoded

    def draws(
        self, plate: Plate, start: int, stop: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        values, log_q = {}, np.zeros((self.n_draws, stop - start))
        for latent in plate.latents:
            q = None
            if self.encoded is not None:
                post = self.encoded[latent.name]
                q = (post.mean[start:stop], post.sd[start:stop])
            value, mean, sd = self.approx.unit_draws(
                latent, start, stop, self.n_draws, self.seed, q
            )
            values[latent.value_name] = value
            log_q += _log_normal(value, mean, sd).reshape(self.n_draws, stop - start, -1).sum(2)
        return values, log_q


class _JointUnits:
    """A plate's units ``start:stop`` of joint draws from q (the conditional family's), and their
    log q given the rest (:class:`~pymc_amortize.posterior.joint.JointSample`)."""

    def __init__(self, approx: AmortizedApproximation, sample: JointSample):
        self.approx, self.sample = approx, sample

    def draws(
        self, plate: Plate, start: int, stop: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        values = {
            latent.value_name: self.sample.values[latent.value_name][:, start:stop]
            for latent in plate.latents
        }
        return values, self.sample.log_q_units[plate.name][:, start:stop]


def draw_placeholders(logjoint: LogJoint) -> tuple[dict, dict, dict]:
    """Placeholders of draws ``(S, *shape)`` of every free variable of ``logjoint``, by value
    name, in the order a compiled function takes them; and the same split into the globals' and
    the local latents' (the two arguments of ``LogJoint.terms_per_draw``)."""
    draws = {
        name: pt.TensorType(var.dtype, shape=(None, *var.type.shape))(name=f"{name}_draws")
        for name, var in (logjoint.global_values | logjoint.local_values).items()
    }
    global_draws = {k: v for k, v in draws.items() if k in logjoint.global_values}
    local_draws = {k: v for k, v in draws.items() if k in logjoint.local_values}
    return draws, global_draws, local_draws


@dataclass(frozen=True)
class BatchUnitGraph:
    """log p of one plate's factors per unit, for draws of a batch of its units (any units, in
    any order, with their rows), and the rest of the model's factors.

    Attributes
    ----------
    draws : dict of str to TensorVariable
        Placeholders of the draws, by value name: ``(S, *shape)`` of every free variable but the
        plate's local latents, ``(S, B, *event_shape)`` of those.
    units, rows, slot : TensorVariable
        int64 placeholders: the batch's units (B,), their rows (R,) and each row's batch slot.
    per_unit : TensorVariable
        (S, B): the plate's factors (its latents' priors, its rows' likelihood) of each unit.
    other_terms, other_drawn : list
        The other factors and whether each has a leading draw axis.
    """

    draws: dict[str, pt.TensorVariable]
    units: pt.TensorVariable
    rows: pt.TensorVariable
    slot: pt.TensorVariable
    per_unit: pt.TensorVariable
    other_terms: list
    other_drawn: list


def batch_unit_graph(
    approx: AmortizedApproximation, plate: Plate, *, skip_undrawn: bool = False
) -> BatchUnitGraph:
    """Build :class:`BatchUnitGraph` from ``build_logjoint(batch_plate=plate)``.

    Raises :class:`AmortizationError` when a factor of the plate has no per-unit terms (a prior or
    a ``pm.Potential`` that couples its units), naming it. ``skip_undrawn``: leave out a factor of
    the plate that no draw enters (a constant) rather than refuse it.
    """
    model, analysis = approx.model, approx.analysis
    logjoint = build_logjoint(model, analysis, batch_plate=plate)
    draws, global_draws, local_draws = draw_placeholders(logjoint)
    units, rows, slot = pt.lvector("units"), pt.lvector("rows"), pt.lvector("slot")
    batch = UnitBatch(units=units, rows=rows, unit_of_row=slot, n_units=units.shape[0], scale=1.0)
    batch_terms, other_terms, batch_drawn, other_drawn = logjoint.terms_per_draw(
        global_draws, local_draws, batch
    )
    n_draws = draws[plate.latents[0].value_name].shape[0]
    names = [name for name, _ in logjoint.batch_terms]
    factors = list(zip(names, batch_terms, batch_drawn, strict=True))
    per_unit = logjoint.sum_per_unit(
        model,
        plate,
        factors,
        pt.zeros((n_draws, units.shape[0])),
        slot,
        skip_undrawn=skip_undrawn,
    )
    return BatchUnitGraph(draws, units, rows, slot, per_unit, other_terms, other_drawn)


def rows_of_units(approx: AmortizedApproximation, plate: Plate, units: np.ndarray):
    """The rows (R,) of ``units`` of ``plate``, unit by unit, and each row's position in ``units``
    (the ``rows`` and ``slot`` inputs of :class:`BatchUnitGraph`); for a plate without an index,
    each unit is its own row."""
    units = np.asarray(units, dtype=np.int64)
    if plate.index is None:
        return units, np.arange(units.size, dtype=np.int64)
    layout = approx.layouts[plate.name]
    offsets = layout.offsets.get_value(borrow=True)
    order = None if layout.row_order is None else layout.row_order.get_value(borrow=True)
    counts = offsets[units + 1] - offsets[units]
    slot = np.repeat(np.arange(units.size, dtype=np.int64), counts)
    starts = np.repeat(offsets[units] - np.cumsum(counts) + counts, counts)
    position = starts + np.arange(slot.size, dtype=np.int64)
    rows = position if order is None else order[position]
    return rows.astype(np.int64, copy=False), slot


class _UnitTerms:
    """log p of a plate's factors per unit (S, B) for units ``start:stop``, and of the rest of
    the model (S,).

    ``whole``: the full-batch log joint (``compile_log_terms``) on all units. Else the plate's
    batch log joint (``build_logjoint(batch_plate=plate)``) with the chunk's units, rows and data
    gathered by index vectors, compiled once for every chunk length.
    """

    def __init__(self, approx: AmortizedApproximation, plate: Plate, *, whole: bool):
        self.approx, self.plate, self.whole = approx, plate, whole
        model, analysis = approx.model, approx.analysis
        if whole:
            self._fn, self._order = compile_log_terms(model, analysis, plate)
            self._rest_fn = None
            return
        try:
            graph = batch_unit_graph(approx, plate)
        except AmortizationError as error:
            raise AmortizationError(
                f"psis_diagnostic(chunk_size=...) evaluates plate '{plate.name}' chunk by chunk, "
                f"which this model does not allow: {error} Pass chunk_size=None."
            ) from error
        draws, units, rows, slot = graph.draws, graph.units, graph.rows, graph.slot
        per_unit, other_terms, other_drawn = graph.per_unit, graph.other_terms, graph.other_drawn
        n_rest = pt.lscalar("n_draws")  # the rest may have no drawn input
        rest = pt.zeros((n_rest,))
        for term, drawn in zip(other_terms, other_drawn, strict=True):
            rest = rest + (term.sum(axis=tuple(range(1, term.ndim))) if drawn else term.sum())
        self._order = list(draws)
        self._fn = compile_pymc(
            [*draws.values(), units, rows, slot], per_unit, on_unused_input="ignore"
        )
        own = {latent.value_name for latent in plate.latents}
        self._rest_order = [name for name in draws if name not in own]
        self._rest_fn = compile_pymc(
            [n_rest, *(draws[name] for name in self._rest_order)], rest, on_unused_input="ignore"
        )

    def per_unit(self, values, start: int, stop: int) -> np.ndarray:
        if self.whole:  # one call for every unit: keep the rest for rest()
            self._whole = self._fn(*(values[name] for name in self._order))
            return self._whole[1][:, start:stop]
        units = np.arange(start, stop, dtype=np.int64)
        rows, slot = self.approx.layouts[self.plate.name].chunk_rows(start, stop)
        rows = units if rows is None else rows.astype(np.int64, copy=False)
        args = [values[name] for name in self._order]
        return self._fn(*args, units, rows, slot)

    def rest(self, values, n_draws: int) -> np.ndarray:
        if self.whole:
            return self._whole[0]
        return self._rest_fn(n_draws, *(values[name] for name in self._rest_order))
