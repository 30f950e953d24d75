"""The amortization gap of an A-VI fit (Margossian & Blei, §5): how much per-unit F-VI, started
at the A-VI solution, raises the ELBO, in total, per plate and per unit.

Both ELBOs are estimated by one :class:`~pymc_amortize.diagnostics.meanfield.MeanFieldELBO` on
common random numbers, so the gain's standard error comes from the paired differences.
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
from pymc_amortize.diagnostics.semi_amortized import SemiAmortizedApproximation, semi_amortize
from pymc_amortize.errors import AmortizationError, as_clause, require_number
from pymc_amortize.model.logjoint import build_logjoint, compile_log_terms, plate_factors
from pymc_amortize.posterior.approximation import AmortizedApproximation
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
    def verdict(self) -> str:
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
        plate's dim) every unit's KL and ELBO gain.

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
    approx.require_mean_field("amortization_gap()")
    approx.require_units_in_memory("amortization_gap")
    if not approx.analysis.plates:
        raise AmortizationError(
            "The model has no plate of units (every latent is fitted mean-field), so nothing is "
            f"amortized and there is no amortization gap:\n{approx.analysis.summary()}"
        )
    seeds = np.random.SeedSequence(random_seed).generate_state(2)
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
    diff = refined_draws - amortized_draws
    per_plate, (rest_gain, rest_se) = _per_plate_gap(
        approx, before, after, evaluator.draws(before), evaluator.draws(after)
    )
    return AmortizationGap(
        gain=float(diff.mean()),
        standard_error=standard_error(diff),
        elbo_amortized=float(amortized_draws.mean()),
        elbo_refined=float(refined_draws.mean()),
        per_plate=per_plate,
        rest_gain=rest_gain,
        rest_standard_error=rest_se,
        steps=int(n),
        tolerance=float(tolerance),
        refined=semi,
    )
