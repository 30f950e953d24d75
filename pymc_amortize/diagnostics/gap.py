"""The amortization gap of an A-VI fit (Margossian & Blei, §5): how much per-unit F-VI, started
at the A-VI solution, raises the ELBO, in total, per plate and per unit.

Both ELBOs are estimated by one :class:`~pymc_amortize.diagnostics.meanfield.MeanFieldELBO` on
common random numbers, so the gain's standard error comes from the paired differences.

That is the paper's setting: the encoder family with a mean-field q(θ) is a subset of F-VI's, so
the gain is ≥ 0. A fit whose q is not the product of its marginals (the conditional family
q(z_n | θ, x_n), a full-rank q(θ)) is not such a subset: its own joint ELBO
(:class:`~pymc_amortize.posterior.joint.JointDensity`) is set beside F-VI's, started at its
marginals, on separate draws, and the difference can have either sign.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pytensor.tensor as pt
import xarray as xr
from pymc.pytensorf import compile as compile_pymc

from pymc_amortize.diagnostics.meanfield import (
    GaussianFactor,
    MeanField,
    MeanFieldELBO,
    meanfield_of,
    standard_error,
)
from pymc_amortize.diagnostics.semi_amortized import (
    SemiAmortizedApproximation,
    fvi_from_fit,
    semi_amortize,
)
from pymc_amortize.errors import AmortizationError, as_clause, require_number
from pymc_amortize.guide.globals import HALF_LOG_2PI_E
from pymc_amortize.model.logjoint import build_logjoint, compile_log_terms, plate_factors
from pymc_amortize.posterior.approximation import AmortizedApproximation
from pymc_amortize.posterior.joint import JointSample
from pymc_amortize.psis import draw_placeholders

__all__ = ["AmortizationGap", "amortization_gap"]


def _gaussian_kl(q: GaussianFactor, p: GaussianFactor) -> np.ndarray:
    """KL(q ‖ p) elementwise for diagonal Gaussians."""
    return np.log(p.sd / q.sd) + (q.sd**2 + (q.mean - p.mean) ** 2) / (2 * p.sd**2) - 0.5


@dataclass
class AmortizationGap:
    """How much per-unit F-VI, started at the A-VI solution, raised the ELBO.

    Attributes
    ----------
    gain, standard_error : float
        ELBO(refined) − ELBO(amortized) in nats, from paired draws, and its Monte Carlo SE. A lower
        bound on the amortization gap plus A-VI's own optimisation gap (F-VI may stop short).
        For a fit that is not mean-field (``paired`` False) the signed difference of its own
        joint ELBO from F-VI's, on separate draws: negative where the fit is the better.
    elbo_amortized, elbo_refined : float
        The two ELBO estimates on the shared draws.
    per_plate : dict of str to xarray.Dataset
        Per plate (by name), under the plate's unit dim and coords: ``kl``, KL(refined q(z_n) ‖
        encoder q(z_n)) summed over the plate's local latents (how far unit n moved), and
        ``gain`` with ``gain_se``, the rise of unit n's ELBO terms (its latents' priors, the
        likelihood of its rows and the entropy of q(z_n)) on the shared draws, and its MC SE;
        NaN when a factor couples the plate's units (e.g. a random-walk prior or a
        ``pm.Potential`` summed over them; the Dataset's ``note`` attribute says which).
        ``plate_gain`` and ``plate_gain_se``: the rise of all the plate's terms together (the sum
        of ``gain`` where that is defined), whether or not its units couple.
    rest_gain, rest_standard_error : float
        The rise of the terms no plate's latent enters (the globals' priors and entropy, factors
        of mean-field latents only). On a model with one plate, ``plate_gain + rest_gain`` is
        ``gain`` (the same draws); a factor read by several plates (a crossed likelihood) counts
        in each of their ``plate_gain``.
    steps : int
        F-VI steps.
    tolerance : float
        Gain per unit (nats) below which the gap counts as closed.
    refined : SemiAmortizedApproximation
        The refined fit, usable as a semi-amortized approximation.
    """

    gain: float
    standard_error: float
    elbo_amortized: float
    elbo_refined: float
    per_plate: dict[str, xr.Dataset]
    steps: int
    tolerance: float
    refined: SemiAmortizedApproximation = field(repr=False)
    rest_gain: float = 0.0
    rest_standard_error: float = 0.0
    #: Whether both ELBOs were scored on the same draws (the fit is mean-field, a subset of
    #: F-VI's family: the gain is ≥ 0 up to F-VI's own optimisation). Else the fit's ELBO is its
    #: own joint q's, on its own draws, and the gain can have either sign.
    paired: bool = True
    #: The fit's family in words.
    family: str = ""
    #: The Monte Carlo SEs of ``elbo_amortized`` and ``elbo_refined`` on their own.
    elbo_amortized_se: float = float("nan")
    elbo_refined_se: float = float("nan")

    @property
    def n_units(self) -> int:
        """Units of every plate together."""
        return int(sum(ds["kl"].size for ds in self.per_plate.values()))

    @property
    def main_plate(self) -> str:
        """The plate with the most units (the one :attr:`unit_kl` and :meth:`top_units` read)."""
        return max(self.per_plate, key=lambda name: self.per_plate[name]["kl"].size)

    @property
    def unit_kl(self) -> np.ndarray:
        """``kl`` per unit of :attr:`main_plate`, as an array."""
        return self.per_plate[self.main_plate]["kl"].values

    @property
    def gain_per_unit(self) -> float:
        """The gain per unit of every plate, in nats."""
        return self.gain / self.n_units

    @property
    def closed(self) -> bool:
        """Whether the gap is closed: the gain is within 3 SE of zero or below the tolerance."""
        significant = self.gain > 3 * self.standard_error
        return not (significant and self.gain_per_unit > self.tolerance)

    def top_units(self, k: int = 5, *, plate: str | None = None) -> np.ndarray:
        """Positions of the ``k`` units of ``plate`` (default :attr:`main_plate`) that moved most
        (largest ``kl``)."""
        plate = self.main_plate if plate is None else plate
        if plate not in self.per_plate:
            raise AmortizationError(f"No plate '{plate}'; plates: {', '.join(self.per_plate)}.")
        return np.argsort(self.per_plate[plate]["kl"].values, kind="stable")[::-1][:k]

    @property
    def better(self) -> str:
        """Which ELBO is higher beyond 3 standard errors: ``"amortized"`` (the fit),
        ``"F-VI"`` or ``"neither"``."""
        if self.gain > 3 * self.standard_error:
            return "F-VI"
        if self.gain < -3 * self.standard_error:
            return "amortized"
        return "neither"

    @property
    def verdict(self) -> str:
        if not self.paired:
            # Not a subset of F-VI's family: both directions are possible.
            difference = (
                f"ELBO(F-VI) − ELBO(fit) = {self.gain:.4g} ± {self.standard_error:.2g} nats "
                f"({self.gain_per_unit:.3g} per unit)"
            )
            if self.better == "amortized":
                return (
                    f"the fit beats F-VI's optimum: {difference}. Its family ({self.family}) is "
                    "not a subset of F-VI's, so it can do better than ADVI and there is no "
                    "amortization gap to close"
                )
            if self.better == "F-VI" and not self.closed:
                return (
                    f"F-VI's optimum beats the fit: {difference}, above the tolerance "
                    f"{self.tolerance:g} per unit (the local network too weak, or the fit not "
                    "converged)"
                )
            if self.better == "F-VI":
                return (
                    f"F-VI's optimum is ahead of the fit, within the tolerance "
                    f"{self.tolerance:g} per unit: {difference}"
                )
            return f"no clear difference between the fit and F-VI's optimum: {difference}"
        if self.closed:
            return "gap closed: per-unit F-VI does not improve on the encoder"
        return (
            "encoder too weak (or A-VI not converged): per-unit F-VI raised the ELBO by "
            f"{self.gain_per_unit:.3g} nats per unit, above the tolerance {self.tolerance:g}"
        )

    def __repr__(self) -> str:
        lines = [
            f"AmortizationGap(gain={self.gain:.4g} ± {self.standard_error:.2g} nats, "
            f"per unit {self.gain_per_unit:.3g}, units={self.n_units}, steps={self.steps})",
            f"  verdict: {self.verdict}",
            f"  ELBO amortized {self.elbo_amortized:.6g}, refined {self.elbo_refined:.6g}",
        ]
        if not self.paired:
            lines[-1] = (
                f"  ELBO of the fit's own joint q ({self.family}) {self.elbo_amortized:.6g} ± "
                f"{self.elbo_amortized_se:.2g}; F-VI (ADVI from its marginals) "
                f"{self.elbo_refined:.6g} ± {self.elbo_refined_se:.2g} (separate draws)"
            )
        for name, ds in self.per_plate.items():
            dim = ds["kl"].dims[0]
            moved = ", ".join(
                f"{ds[dim].values[i]} ({ds['kl'].values[i]:.3g})"
                for i in self.top_units(5, plate=name)
            )
            per_unit = f" ({ds.attrs['note']})" if "note" in ds.attrs else ""
            lines.append(
                f"  plate {name}: gain {float(ds['plate_gain']):.4g} ± "
                f"{float(ds['plate_gain_se']):.2g} nats over {ds.sizes[dim]} units{per_unit}; "
                f"moved most (KL refined ‖ amortized): {moved}"
            )
        lines.append(
            f"  globals and the rest of the model: gain {self.rest_gain:.4g} ± "
            f"{self.rest_standard_error:.2g} nats"
        )
        return "\n".join(lines)


def _plate_totals(approx: AmortizedApproximation) -> tuple[Callable, list[str]]:
    """A compiled function of value-space draws ``(S, *shape)`` of every free variable, in the
    returned order, to ``[rest (S,), plate_1 (S,), ...]``: per draw, the sum of each plate's
    factors (every factor that reads its latents or its index: their priors, their rows'
    likelihood, a ``pm.Potential`` on them) and of the factors that read no plate's latents.

    Defined whether or not a plate's factors split into per-unit terms, so a plate's gain is
    known even where a prior couples its units. A factor read by several plates (a crossed
    likelihood) is in each of their sums.
    """
    model = approx.model
    logjoint = build_logjoint(model, approx.analysis)
    draws, global_draws, local_draws = draw_placeholders(logjoint)
    _, terms, _, drawn = logjoint.terms_per_draw(global_draws, local_draws, None)
    n_draws = next(iter(draws.values())).shape[0]
    named = dict(logjoint.other_terms)
    plate_names = [plate_factors(named, model, plate) for plate in approx.analysis.plates]
    sums = [pt.zeros((n_draws,)) for _ in range(len(plate_names) + 1)]
    for (name, _), term, has_draw_axis in zip(logjoint.other_terms, terms, drawn, strict=True):
        value = term.sum(axis=tuple(range(1, term.ndim))) if has_draw_axis else term.sum()
        owners = [i + 1 for i, names in enumerate(plate_names) if name in names] or [0]
        for i in owners:
            sums[i] = sums[i] + value
    fn = compile_pymc(list(draws.values()), sums, on_unused_input="ignore")
    return fn, list(draws)


def _per_plate_gap(
    approx: AmortizedApproximation,
    before: MeanField,
    after: MeanField,
    values_before: Mapping[str, np.ndarray],
    values_after: Mapping[str, np.ndarray],
) -> tuple[dict[str, xr.Dataset], tuple[float, float]]:
    """Per plate: KL(after ‖ before) per unit, the rise of each unit's ELBO terms where the
    plate's factors split into per-unit terms, and the rise of the plate's terms together; and the
    rise (with its SE) of the rest: the factors no plate's latent enters and the globals' entropy.

    On one plate the plate's rise and the rest's add up to the total gain, draw by draw.
    """
    totals_fn, totals_order = _plate_totals(approx)
    totals_before = totals_fn(*(values_before[name] for name in totals_order))
    totals_after = totals_fn(*(values_after[name] for name in totals_order))
    local = {lat.value_name for lat in approx.analysis.latents}
    rest_entropy = sum(
        float(np.log(after[name].sd / before[name].sd).sum()) for name in after if name not in local
    )
    rest = totals_after[0] - totals_before[0] + rest_entropy
    out = {}
    for position, plate in enumerate(approx.analysis.plates, start=1):
        note = ""
        try:
            fn, order = compile_log_terms(approx.model, approx.analysis, plate)
        except AmortizationError as error:
            # A factor couples the plate's units (a random-walk prior, a Potential summed over
            # them): the plate's rise is defined, a unit's is not.
            units_before = units_after = np.full((2, plate.size), np.nan)
            note = f"no gain per unit: {as_clause(error)}"
        else:
            _, units_before = fn(*(values_before[name] for name in order))
            _, units_after = fn(*(values_after[name] for name in order))
        kl = np.zeros(plate.size)
        entropy_gain = np.zeros(plate.size)
        for latent in plate.latents:
            q, p = after[latent.value_name], before[latent.value_name]
            kl += _gaussian_kl(q, p).reshape(plate.size, -1).sum(axis=1)
            entropy_gain += np.log(q.sd / p.sd).reshape(plate.size, -1).sum(axis=1)
        per_draw = units_after - units_before + entropy_gain
        plate_draws = totals_after[position] - totals_before[position] + entropy_gain.sum()
        dim, labels = approx.unit_dim(plate), approx.unit_labels(plate)
        coords = np.arange(plate.size) if labels is None else labels
        out[plate.name] = xr.Dataset(
            {
                "kl": (dim, kl, {"long_name": "KL(refined q(z_n) ‖ encoder q(z_n))"}),
                "gain": (dim, per_draw.mean(axis=0), {"long_name": "ELBO gain of the unit"}),
                "gain_se": (dim, per_draw.std(axis=0, ddof=1) / math.sqrt(per_draw.shape[0])),
                "plate_gain": (
                    (),
                    float(plate_draws.mean()),
                    {"long_name": "ELBO gain of the plate"},
                ),
                "plate_gain_se": ((), float(standard_error(plate_draws))),
            },
            coords={dim: coords},
            attrs={"note": note} if note else {},
        )
    return out, (float(rest.mean()), standard_error(rest))


def amortization_gap(
    approx: AmortizedApproximation,
    n: int = 2_000,
    *,
    n_draws: int = 500,
    learning_rate: float = 1e-2,
    tolerance: float = 0.01,
    random_seed: int | None = None,
    progressbar: bool = False,
) -> AmortizationGap:
    """Diagnose the amortization gap of a fitted A-VI solution (the paper's §5 diagnostic).

    Starts per-unit F-VI at the A-VI solution (:func:`semi_amortize`, ``n`` steps with a decaying
    learning rate), then estimates how much the ELBO rose, on common random numbers. If it rose by
    more than ``tolerance`` nats per unit (all plates' units together, and 3 standard errors), the
    encoder is too weak for this model, or A-VI had not converged; otherwise the gap is closed.
    Per plate, each unit's KL and ELBO gain say which units the encoder serves worst.

    For a fit that is not mean-field (``family="conditional"``, ``global_family="fullrank"``),
    whose family is not a subset of F-VI's, F-VI starts at the fit's marginals
    (:func:`~pymc_amortize.diagnostics.fvi_from_fit`) and its ELBO is compared with the fit's own
    joint ELBO (``approx.joint_density()``) on separate draws (``paired`` False, SEs added): the
    gain is then signed, negative where the fit beats F-VI's optimum, and ``better`` and the
    verdict say which is ahead.

    Parameters
    ----------
    approx : AmortizedApproximation
        A fitted A-VI solution.
    n : int
        F-VI steps.
    n_draws : int
        Shared draws for the two ELBO estimates.
    learning_rate : float
        Initial Adam rate of the refinement (cosine decay to zero).
    tolerance : float
        Gain per unit, in nats, below which the gap counts as closed.
    random_seed : int, optional
        Seeds the refinement and the draws.
    progressbar : bool
        Show PyMC's progress bar during the refinement.

    Returns
    -------
    AmortizationGap
        The gain with its standard error, the verdict, and per plate (``per_plate``, under each
        plate's dim) every unit's KL and ELBO gain; ``better`` says which ELBO is ahead.

    Examples
    --------
    .. code-block:: python

        import numpy as np
        import pymc as pm
        import pymc_amortize

        x = np.random.default_rng(0).normal(size=500)
        with pm.Model(coords={"unit": range(500)}) as model:
            theta = pm.Flat("theta")
            z = pm.Normal("z", 0, 1, dims="unit")
            pm.Normal("x", theta + 1.155 * z, 2.43, observed=x, dims="unit")
            approx = pm.fit(3_000, method="amortized", encoder_widths=(), progressbar=False,
                            obj_optimizer=pm.adam(learning_rate=1e-2))
        gap = pymc_amortize.amortization_gap(approx, n=1_000, random_seed=0)
        gap.closed, gap.gain, gap.standard_error
    """
    tolerance = require_number(tolerance, "tolerance")
    if not isinstance(approx, AmortizedApproximation):
        raise AmortizationError(
            "amortization_gap() takes a fitted AmortizedApproximation; got "
            f"{type(approx).__name__}."
        )
    approx.require_units_in_memory("amortization_gap")
    if not approx.analysis.plates:
        raise AmortizationError(
            "The model has no plate of units (every latent is fitted mean-field), so nothing is "
            f"amortized and there is no amortization gap:\n{approx.analysis.summary()}"
        )
    seeds = np.random.SeedSequence(random_seed).generate_state(2)
    if not approx.is_mean_field:
        return _joint_gap(approx, n, n_draws, learning_rate, tolerance, seeds, progressbar)
    semi = semi_amortize(
        approx,
        n,
        learning_rate=learning_rate,
        random_seed=int(seeds[0]),
        progressbar=progressbar,
    )
    before, after = meanfield_of(approx), meanfield_of(semi.refined)
    evaluator = MeanFieldELBO(approx.model, n_draws=n_draws, random_seed=int(seeds[1]))
    refined_draws, amortized_draws = evaluator.per_draw(after), evaluator.per_draw(before)
    plate_gaps = _per_plate_gap(
        approx, before, after, evaluator.draws(before), evaluator.draws(after)
    )
    return _gap_result(
        approx, semi, refined_draws, amortized_draws, plate_gaps, n, tolerance, paired=True
    )


def _gap_result(
    approx: AmortizedApproximation,
    semi: SemiAmortizedApproximation,
    refined_draws: np.ndarray,
    fit_draws: np.ndarray,
    plate_gaps: tuple[dict[str, xr.Dataset], tuple[float, float]],
    n: int,
    tolerance: float,
    *,
    paired: bool,
) -> AmortizationGap:
    """The :class:`AmortizationGap` from the per-draw ELBOs, shape (draws,), of F-VI's refined q
    and of the fit, and the per-plate gaps ``(per_plate, (rest_gain, rest_se))``.

    ``paired``: both were scored on the same draws, and the gain's SE is that of the differences;
    else they are independent, and the SEs add in quadrature.
    """
    per_plate, (rest_gain, rest_se) = plate_gaps
    unpaired = {}
    if paired:
        diff = refined_draws - fit_draws
        gain, gain_se = float(diff.mean()), standard_error(diff)
    else:
        refined_se, fit_se = standard_error(refined_draws), standard_error(fit_draws)
        gain = float(refined_draws.mean() - fit_draws.mean())
        gain_se = float(math.hypot(refined_se, fit_se))
        unpaired = {
            "paired": False,
            "family": approx.guide.family_description(),
            "elbo_amortized_se": fit_se,
            "elbo_refined_se": refined_se,
        }
    return AmortizationGap(
        gain=gain,
        standard_error=gain_se,
        elbo_amortized=float(fit_draws.mean()),
        elbo_refined=float(refined_draws.mean()),
        per_plate=per_plate,
        rest_gain=rest_gain,
        rest_standard_error=rest_se,
        steps=int(n),
        tolerance=float(tolerance),
        refined=semi,
        **unpaired,
    )


def _fit_marginals(approx: AmortizedApproximation, sample: JointSample) -> MeanField:
    """The fit's marginal Gaussians (value space): q(θ)'s exact marginals, the encoder's output
    for the encoder plates, and the moments of the joint draws for the conditional plates."""
    factors = {name: GaussianFactor(*f) for name, f in approx.global_factors().items()}
    encoded = approx.fitted_encoder_outputs()
    for plate in approx.analysis.plates:
        for latent in plate.latents:
            if plate.name in approx.conditional_plates:
                draws = sample.values[latent.value_name]
                factors[latent.value_name] = GaussianFactor(draws.mean(axis=0), draws.std(axis=0))
            else:
                factors[latent.value_name] = GaussianFactor(*encoded[latent.name])
    return factors


def _joint_gap(
    approx: AmortizedApproximation,
    n: int,
    n_draws: int,
    learning_rate: float,
    tolerance: float,
    seeds: np.ndarray,
    progressbar: bool,
) -> AmortizationGap:
    """:func:`amortization_gap` of a fit whose q is not the product of its marginals (the
    conditional family, a full-rank q(θ)): its own joint ELBO (``approx.joint_density()``) beside
    F-VI's, started at its marginals, each on its own draws.

    Both directions are possible: the fit's family is not a subset of F-VI's.
    """
    sample = approx.joint_density().sample(n_draws, np.random.default_rng(int(seeds[1])))
    before = _fit_marginals(approx, sample)
    semi = fvi_from_fit(
        approx,
        n,
        start=before,
        learning_rate=learning_rate,
        random_seed=int(seeds[0]),
        progressbar=progressbar,
    )
    after = meanfield_of(semi.refined)
    evaluator = MeanFieldELBO(approx.model, n_draws=n_draws, random_seed=int(seeds[1]))
    refined_draws, fit_draws = evaluator.per_draw(after), sample.log_weights
    plate_gaps = _unpaired_plate_gap(approx, before, after, sample, evaluator.draws(after))
    return _gap_result(
        approx, semi, refined_draws, fit_draws, plate_gaps, n, tolerance, paired=False
    )


def _unpaired(after: np.ndarray, before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``after`` − mean of ``before`` along the draws (axis 0), and its SE, from two
    independent sets of draws."""
    se = np.sqrt(
        after.var(axis=0, ddof=1) / after.shape[0] + before.var(axis=0, ddof=1) / before.shape[0]
    )
    return after.mean(axis=0) - before.mean(axis=0), se


def _unpaired_plate_gap(
    approx: AmortizedApproximation,
    before: MeanField,
    after: MeanField,
    sample: JointSample,
    values_after: Mapping[str, np.ndarray],
) -> tuple[dict[str, xr.Dataset], tuple[float, float]]:
    """:func:`_per_plate_gap` for a fit scored on its own joint draws ``sample``: its ELBO terms
    per unit are log p(x_n, z_n | rest) − log q(z_n | rest) (the conditional family's log q given
    θ), F-VI's log p(x_n, z_n | rest) + H[q(z_n)]; each side on its own draws, so the SEs add."""
    totals_fn, totals_order = _plate_totals(approx)
    totals_fit = totals_fn(*(sample.values[name] for name in totals_order))
    totals_after = totals_fn(*(values_after[name] for name in totals_order))
    local = {lat.value_name for lat in approx.analysis.latents}
    rest_entropy = sum(
        float(np.log(after[name].sd).sum() + np.size(after[name].sd) * HALF_LOG_2PI_E)
        for name in after
        if name not in local
    )
    rest, rest_se = _unpaired(totals_after[0] + rest_entropy, totals_fit[0] - sample.log_q_globals)
    out = {}
    for position, plate in enumerate(approx.analysis.plates, start=1):
        note = ""
        log_q_fit = sample.log_q_units[plate.name]
        entropy = np.zeros(plate.size)
        kl = np.zeros(plate.size)
        for latent in plate.latents:
            q, p = after[latent.value_name], before[latent.value_name]
            kl += _gaussian_kl(q, p).reshape(plate.size, -1).sum(axis=1)
            entropy += (np.log(q.sd) + HALF_LOG_2PI_E).reshape(plate.size, -1).sum(axis=1)
        try:
            fn, order = compile_log_terms(approx.model, approx.analysis, plate)
        except AmortizationError as error:
            gain = gain_se = np.full(plate.size, np.nan)
            note = f"no gain per unit: {as_clause(error)}"
        else:
            _, units_fit = fn(*(sample.values[name] for name in order))
            _, units_after = fn(*(values_after[name] for name in order))
            gain, gain_se = _unpaired(units_after + entropy, units_fit - log_q_fit)
        plate_gain, plate_se = _unpaired(
            totals_after[position] + entropy.sum(), totals_fit[position] - log_q_fit.sum(axis=1)
        )
        dim, labels = approx.unit_dim(plate), approx.unit_labels(plate)
        coords = np.arange(plate.size) if labels is None else labels
        out[plate.name] = xr.Dataset(
            {
                "kl": (dim, kl, {"long_name": "KL(F-VI q(z_n) ‖ the fit's marginal q(z_n))"}),
                "gain": (dim, gain, {"long_name": "ELBO gain of the unit"}),
                "gain_se": (dim, gain_se),
                "plate_gain": ((), float(plate_gain), {"long_name": "ELBO gain of the plate"}),
                "plate_gain_se": ((), float(plate_se)),
            },
            coords={dim: coords},
            attrs={"note": note} if note else {},
        )
    return out, (float(rest), float(rest_se))
