"""The posterior of each unit's local latents: summaries, draws, and zero-row units' priors.

A unit with no rows has no data for its encoder: its posterior is its prior given the globals,
p(z_n | θ) under q(θ), drawn by PyMC's forward sampling in :func:`zero_row_prior`, the one place
every result (``encode``, ``sample``, ``sample_new_units``, ``sample_dataset``) takes it from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pymc as pm
import xarray as xr
from pymc.distributions.transforms import LogTransform

from pymc_amortize.errors import AmortizationError
from pymc_amortize.guide.compiled import first_line
from pymc_amortize.guide.conditional import ConditionalSampler
from pymc_amortize.guide.state import AmortizedGuide
from pymc_amortize.model.forward import forward_draws, posterior_dataset
from pymc_amortize.model.types import LocalLatent, Plate
from pymc_amortize.posterior.conditional_units import split_entries

__all__ = [
    "QUANTILE_LEVELS",
    "SUMMARY_DRAWS",
    "LocalPosterior",
    "conditional_moments",
    "draw_locals",
    "encode_fitted",
    "fill_prior",
    "fitted_other_locals",
    "local_posterior",
    "normal_ppf",
    "plate_prior_draws",
    "summarize",
    "units_without_rows",
    "zero_row_prior",
]

#: Default levels of the constrained-scale quantiles of :class:`LocalPosterior`.
QUANTILE_LEVELS = (0.05, 0.5, 0.95)

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


def normal_ppf(levels: np.ndarray) -> np.ndarray:
    """The standard normal quantiles of ``levels``, each strictly between 0 and 1."""
    from scipy.special import ndtri

    if np.any((levels <= 0) | (levels >= 1)):
        raise AmortizationError(f"quantiles must lie strictly between 0 and 1; got {levels}.")
    return ndtri(levels)


def units_without_rows(plate: Plate) -> np.ndarray:
    """(N,) bool: the fitted units of an indexed plate that no row names (all False for a row
    plate). Their posterior is their prior given the globals, not the encoder's extrapolation."""
    if plate.index is None:
        return np.zeros(plate.size, dtype=bool)
    return np.asarray(plate.row_counts) == 0


def plate_prior_draws(
    guide: AmortizedGuide,
    plate: Plate,
    model: pm.Model,
    n_units: int,
    global_values: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    outputs: Mapping | None = None,
) -> dict[str, np.ndarray]:
    """Constrained draws (S, n_units, ...) of the plate's latents from their prior given each
    draw of the globals, by PyMC's forward sampling on ``model``: the fitted model (for its
    units without rows) or a copy resized to new units (:func:`pymc_amortize.posterior.new_units.resized_for`). The other
    plates' latents come from their encoders (``outputs``, see :func:`fitted_other_locals`).
    """
    draws = len(next(iter(global_values.values()))) if global_values else 1
    values = dict(global_values) | fitted_other_locals(guide, plate, draws, rng, outputs)
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
        drawn = forward_draws(model, idata, plate.latent_names, random_seed=rng, predictions=True)
    except AmortizationError:
        raise
    except Exception as error:
        raise AmortizationError(
            f"Drawing the prior of {', '.join(plate.latent_names)} for units with no rows "
            f"failed: {type(error).__name__}: {first_line(error)}"
        ) from error
    return {name: drawn.predictions[name].values[0] for name in plate.latent_names}


def fitted_other_locals(
    guide: AmortizedGuide, plate: Plate, draws: int, rng, outputs: Mapping | None = None
) -> dict[str, np.ndarray]:
    """Value-space draws of the local latents of the other plates, from their encoders
    (``outputs``: ``guide.fitted_encoder_outputs()``, when the caller has them already)."""
    others = [p for p in guide.analysis.plates if p.name != plate.name]
    if not others:
        return {}
    outputs = guide.fitted_encoder_outputs() if outputs is None else outputs
    q = {lat.name: LocalPosterior(*outputs[lat.name]) for p in others for lat in p.latents}
    return draw_locals(guide, draws, rng, q)


def draw_locals(
    guide: AmortizedGuide, draws: int, rng: np.random.Generator, encoded: dict[str, LocalPosterior]
) -> dict[str, np.ndarray]:
    """Value-space draws ``(draws, M, ...)`` of each latent of ``encoded`` from its Gaussian q."""
    out = {}
    for latent in guide.analysis.latents:
        if latent.name not in encoded:
            continue
        q = encoded[latent.name]
        eps = rng.standard_normal((draws, *q.mean.shape))
        out[latent.value_name] = q.mean + q.sd * eps
    return out


def zero_row_prior(
    guide: AmortizedGuide,
    plate: Plate,
    empty: np.ndarray,
    global_values: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    *,
    model: pm.Model | None = None,
    outputs: Mapping | None = None,
) -> dict[str, np.ndarray]:
    """Constrained draws ``(S, empty.sum(), ...)`` of the plate's latents for its units without
    rows (``empty``, a bool mask over the units of ``model``), from their prior given each of the
    S draws of the globals ``global_values``; empty when no unit is.

    ``model`` is the fitted model (default) or a copy resized to new units (see
    :func:`pymc_amortize.posterior.new_units.resized_for`); ``outputs`` as in
    :func:`plate_prior_draws`.
    """
    if not empty.any():
        return {}
    drawn = plate_prior_draws(
        guide,
        plate,
        guide.model if model is None else model,
        empty.size,
        global_values,
        rng,
        outputs,
    )
    return {name: value[:, empty] for name, value in drawn.items()}


def fill_prior(
    guide: AmortizedGuide,
    plate: Plate,
    values: dict[str, np.ndarray],
    prior: Mapping[str, np.ndarray],
    empty: np.ndarray,
) -> None:
    """Put the zero-row units' prior draws ``prior`` (:func:`zero_row_prior`) into the value-space
    draws ``values`` ``{value name: (S, M, ...)}`` of the plate's latents, in place."""
    for latent in plate.latents:
        if latent.name in prior and latent.value_name in values:
            values[latent.value_name][:, empty] = guide.transforms.to_value(
                latent, prior[latent.name]
            )


def summarize(
    guide: AmortizedGuide,
    latent: LocalLatent,
    mean: np.ndarray,
    sd: np.ndarray,
    levels: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and quantiles of z_n on the latent's constrained scale under q = N(mean, sd²) on
    the value space: exact for an untransformed or log-transformed latent, else Monte Carlo
    (``SUMMARY_DRAWS`` draws of a fixed seed, so that ``encode`` is deterministic)."""
    z = normal_ppf(np.asarray(levels))
    z = z.reshape((-1,) + (1,) * mean.ndim)
    transform = guide.model.rvs_to_transforms.get(guide.model[latent.name])
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
        constrained = guide.transforms.to_constrained(latent, draws)
        means.append(constrained.mean(axis=0))
        quantiles.append(np.quantile(constrained, levels, axis=0))
    if not means:
        shape = guide.transforms.to_constrained(
            latent, np.zeros((1, 1, *latent.event_shape))
        ).shape[2:]
        return np.zeros((0, *shape)), np.zeros((len(levels), 0, *shape))
    return np.concatenate(means), np.concatenate(quantiles, axis=1)


def local_posterior(
    guide: AmortizedGuide,
    latent: LocalLatent,
    mean: np.ndarray,
    sd: np.ndarray,
    prior_only: np.ndarray,
    levels: Sequence[float],
    summary: bool,
    prior: np.ndarray | None = None,
) -> LocalPosterior:
    """Assemble a :class:`LocalPosterior`; zero-row units' entries from their prior draws
    ``prior`` (S, prior_only.sum(), ...) on the constrained scale (:func:`zero_row_prior`)."""
    levels = tuple(float(q) for q in levels)
    constrained_mean = quantiles = None
    if summary:
        constrained_mean, quantiles = summarize(
            guide, latent, np.nan_to_num(mean), np.nan_to_num(sd, nan=1.0), levels
        )
    if prior is not None and prior_only.any():
        mean, sd = mean.copy(), sd.copy()
        value = guide.transforms.to_value(latent, prior)
        mean[prior_only], sd[prior_only] = value.mean(axis=0), value.std(axis=0)
        if summary:
            own = prior
            constrained_mean[prior_only] = own.mean(axis=0)
            quantiles[:, prior_only] = np.quantile(own, levels, axis=0)
    return LocalPosterior(mean, sd, prior_only, constrained_mean, quantiles, levels)


def _stacked_draws(
    sampler: ConditionalSampler,
    values: Mapping[str, np.ndarray],
    noise: list[np.ndarray],
    i: int,
    own: np.ndarray,
) -> np.ndarray:
    """The draws (S, N, d) of the sampler's plate ``i``, its latents stacked, with its noise
    ``own``, the plates drawn before it at their noise ``noise`` (the later ones do not matter)."""
    plate = sampler.plates[i]
    trial = [*noise[:i], own, *(np.zeros_like(e) for e in noise[i + 1 :])]
    out, _, _ = sampler.draw(values, trial, own.shape[0])
    return np.concatenate(
        [out[lat.value_name].reshape(*own.shape[:2], -1) for lat in plate.latents], axis=-1
    )


def conditional_moments(
    guide: AmortizedGuide,
    draws: int,
    rng: np.random.Generator,
    encoded: Mapping[str, tuple[np.ndarray, np.ndarray]],
    block: int = 250,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Value-space mean and sd of the conditional plates' marginal q(z_n) over ``draws`` draws
    of q(θ) and of the other plates' locals (as ``sample()`` draws them), ``block`` at a time
    (memory ``block`` × N).

    The conditional moments are exact per draw: mean E m_n(θ), variance E Var(z_n | θ) +
    Var m_n(θ) (the law of total variance), so only the draws of θ (and of the plates drawn
    before) carry Monte Carlo error, not those of z_n. The fit's ConditionalSampler (compiled once
    per fit, shared with ``sample()`` and the joint density) draws z_n = m_n + A_n ε, linear in
    the plate's noise ε given everything else: it gives m_n at ε = 0 and A_n's column k at
    ε = e_k, so Var(z_n | θ) = Σ_k (A_n)_{·k}², one call per entry of the plate's latents.
    """
    sampler = guide.compiled_conditional_sampler()
    q = {name: LocalPosterior(mean, sd) for name, (mean, sd) in encoded.items()}
    sizes = [sum(lat.event_size for lat in p.latents) for p in sampler.plates]
    # Per plate: draws so far, the running mean of m_n and the sum of squared deviations of m_n
    # (Chan et al.'s pairwise update, block by block), and the sum of Var(z_n | θ).
    count = 0
    first = [np.zeros((p.size, d)) for p, d in zip(sampler.plates, sizes, strict=True)]
    spread = [np.zeros_like(f) for f in first]
    within = [np.zeros_like(f) for f in first]
    while count < draws:
        size = min(block, draws - count)
        values = guide.draw_globals(size, rng) | draw_locals(guide, size, rng, q)
        noise = [
            rng.standard_normal((size, p.size, d))
            for p, d in zip(sampler.plates, sizes, strict=True)
        ]
        for i, d in enumerate(sizes):
            zero = np.zeros_like(noise[i])
            mean = _stacked_draws(sampler, values, noise, i, zero)
            variance = np.zeros_like(mean)
            for k in range(d):
                unit = zero.copy()
                unit[..., k] = 1.0
                variance += (_stacked_draws(sampler, values, noise, i, unit) - mean) ** 2
            block_first = mean.mean(axis=0)
            delta = block_first - first[i]
            total = count + size
            first[i] = first[i] + delta * size / total
            spread[i] = (
                spread[i]
                + ((mean - block_first) ** 2).sum(axis=0)
                + delta**2 * count * size / total
            )
            within[i] = within[i] + variance.sum(axis=0)
        count += size
    out = {}
    for i, plate in enumerate(sampler.plates):
        sd = np.sqrt(within[i] / count + spread[i] / count)
        bad = ~(np.isfinite(first[i]).all(axis=1) & np.isfinite(sd).all(axis=1))
        if bad.any():
            raise AmortizationError(
                f"The conditional family's q(z | θ, x) of plate '{plate.name}' is NaN or infinite "
                f"for {int(bad.sum())} of {bad.size} units (first: unit {int(np.argmax(bad))}): "
                "its Newton steps failed at these draws of the globals (a fit that diverged, or a "
                "unit whose log density is far from concave). Refit with family='encoder', or "
                "with pm.fit(method='advi')."
            )
        means, sds = split_entries(plate, first[i]), split_entries(plate, sd)
        out |= {lat.name: (means[lat.name], sds[lat.name]) for lat in plate.latents}
    return out


def encode_fitted(
    guide: AmortizedGuide,
    *,
    quantiles: Sequence[float] = QUANTILE_LEVELS,
    prior_draws: int = 4000,
    random_seed: int | None = 0,
    summary: bool = True,
    chunk_size: int = 100_000,
) -> dict[str, LocalPosterior]:
    """:meth:`~pymc_amortize.AmortizedApproximation.encode` of the fitted units."""
    out = {}
    encoded = guide.fitted_encoder_outputs(chunk_size)
    rng = np.random.default_rng(random_seed)
    if guide.conditional_plates:
        # q(z_n) = ∫ q(z_n | θ) q(θ) dθ: its moments over draws of q(θ), not the encoder's output.
        encoded |= conditional_moments(guide, prior_draws, rng, encoded)
    for plate in guide.analysis.plates:
        empty = units_without_rows(plate)
        prior = {}
        if empty.any():
            global_values = guide.draw_globals(prior_draws, rng)
            prior = zero_row_prior(guide, plate, empty, global_values, rng, outputs=encoded)
        for latent in plate.latents:
            mean, sd = encoded[latent.name]
            out[latent.name] = local_posterior(
                guide, latent, mean, sd, empty, quantiles, summary, prior.get(latent.name)
            )
    return out
