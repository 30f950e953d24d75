"""Pareto-smoothed importance sampling diagnostics of an amortized fit (Yao et al., 2018).

With S draws (θ_s, z_s) from q, the importance log weights are log p(x, θ_s, z_s) − log q(θ_s, z_s).
The Pareto shape k̂ of their right tail (fitted by arviz-stats) says whether q can be trusted:
k̂ < 0.5 good, 0.5–0.7 usable, > 0.7 unreliable ("Yes, but did it work?").

In a simple hierarchical model the log weights split over units,

    log w_s = [log p(θ_s) − log q(θ_s)] + Σ_n [log p(x_n, z_n,s | θ_s) − log q(z_n,s)],

so, conditioning on the global draws, each unit's factor gives its own k̂: a unit whose q(z_n)
the encoder got wrong has heavy-tailed weights, whatever the other units do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import xarray as xr
from arviz_stats.base import array_stats
from scipy.special import logsumexp

from pymc_amortize.approximation import AmortizedApproximation
from pymc_amortize.errors import AmortizationError
from pymc_amortize.logjoint import compile_log_terms

__all__ = ["PSISDiagnostic", "khat_verdict", "pareto_khat", "psis_diagnostic"]

#: Yao et al.'s thresholds on k̂.
GOOD_KHAT = 0.5
USABLE_KHAT = 0.7
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


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
        k̂ of the whole approximation q(θ) ∏ q(z_n).
    khat_per_plate : dict of str to xarray.DataArray
        Per plate, k̂ of each unit's factor p(x_n, z_n | rest) / q(z_n), under the plate's dim.
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
        for per_unit in self.khat_per_plate.values():
            unit_dim = per_unit.dims[0]
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
        draws = n_draws if draws is None else draws
        if not isinstance(draws, int | np.integer) or draws <= 0:
            raise AmortizationError(f"draws must be a positive integer; got {draws!r}.")
        weights = np.exp(self.smoothed_log_weights.values)
        rng = np.random.default_rng(random_seed)
        index = rng.choice(n_draws, size=draws, replace=True, p=weights / weights.sum())
        values = {name: value[index] for name, value in self.values.items()}
        approx = self.approximation
        idata = pm.to_inference_data(
            approx.trace_from_values(values), model=approx.model, log_likelihood=False
        )
        idata["posterior"].attrs |= {"psis_resampled": 1, "pareto_k_overall": self.khat}
        return idata


def _log_normal(value: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((value - mean) / sd) ** 2 - np.log(sd) - _HALF_LOG_2PI


def psis_diagnostic(
    approx: AmortizedApproximation, *, draws: int = 1000, random_seed: int | None = None
) -> PSISDiagnostic:
    """Pareto k̂ of the whole approximation and of each unit's q(z_n) (Yao et al., 2018).

    Draws θ_s ~ q(θ) and z_n,s ~ q(z_n) and computes, on the unconstrained space where q lives,
    log p(x_n, z_n,s | θ_s) − log q(z_n,s) per unit and their sum plus
    log p(θ_s) − log q(θ_s) overall; arviz-stats fits the Pareto tail of each. A unit's k̂ is
    conditional on the global draws, so it judges the encoder's q(z_n) for that unit.

    Parameters
    ----------
    approx : AmortizedApproximation
        A fitted approximation.
    draws : int
        Number of draws S (a few hundred at least; k̂ is noisy for small S). Memory grows as
        S × N: a few arrays of S × N floats are held at once.
    random_seed : int, optional
        Seed of the draws.

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
    """
    if not isinstance(approx, AmortizedApproximation):
        raise AmortizationError(
            f"psis_diagnostic needs an AmortizedApproximation (from pm.fit(method='amortized')); "
            f"got {type(approx).__name__}."
        )
    approx.require_units_in_memory("psis_diagnostic")
    if not isinstance(draws, int | np.integer) or draws < 10:
        raise AmortizationError(f"draws must be an integer >= 10; got {draws!r}.")
    rng = np.random.default_rng(random_seed)
    encoded = approx.encode()
    values = approx._draw_globals(draws, rng) | approx._draw_locals(draws, rng, encoded)

    log_q_globals = np.zeros(draws)
    group = approx.global_group
    if group is not None:
        mu = group.mean.get_value()
        sd = np.logaddexp(0.0, group.rho.get_value())
        for name, slc, _, _ in group.ordering.values():
            flat = values[name].reshape(draws, -1)
            log_q_globals += _log_normal(flat, mu[slc], sd[slc]).sum(axis=1)
    log_q_locals = {}
    for latent in approx.analysis.latents:
        q = encoded[latent.name]
        terms = _log_normal(values[latent.value_name], q.mean, q.sd)
        log_q_locals[latent.name] = terms.reshape(draws, q.mean.shape[0], -1).sum(axis=2)

    khat_per_plate = {}
    log_weights = None
    for plate in approx.analysis.plates:
        fn, order = compile_log_terms(approx.model, approx.analysis, plate)
        log_p_rest, log_p_units = fn(*(values[name] for name in order))
        log_q_units = sum(log_q_locals[name] for name in plate.latent_names)
        unit_log_weights = log_p_units - log_q_units
        if log_weights is None:
            # log p(x, θ, z) − log q(θ, z): the rest of log q is every other plate's and q(θ)'s.
            other_q = sum(
                (v.sum(axis=1) for k, v in log_q_locals.items() if k not in plate.latent_names),
                np.zeros(draws),
            )
            log_weights = (
                log_p_rest
                + log_p_units.sum(axis=1)
                - other_q
                - log_q_units.sum(axis=1)
                - log_q_globals
            )
        unit_dim = plate.dim or plate.name
        coords = approx.model.coords.get(unit_dim) if plate.dim else None
        unit_coords = np.asarray(coords) if coords is not None else np.arange(plate.size)
        per_unit = xr.DataArray(
            unit_log_weights, dims=("draw", unit_dim), coords={unit_dim: unit_coords}
        )
        khat_per_plate[plate.name] = pareto_khat(per_unit)[1]
    if log_weights is None:  # no plate: every latent is mean-field
        fn, order = compile_log_terms(approx.model, approx.analysis, None)
        log_weights = fn(*(values[name] for name in order))[0] - log_q_globals
    overall = xr.DataArray(log_weights, dims="draw")
    smoothed, khat = pareto_khat(overall)
    return PSISDiagnostic(
        khat=float(khat),
        khat_per_plate=khat_per_plate,
        log_weights=overall,
        smoothed_log_weights=smoothed,
        approximation=approx,
        values=values,
    )
