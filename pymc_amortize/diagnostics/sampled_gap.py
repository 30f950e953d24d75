"""The cheap gap check run after every fit: per-unit refinement of a sample of units, q(θ) held.

:func:`gap_check` gives each sampled unit its own mean and sd, started at the encoder's q(z_n),
raises the ELBO by a few Adam steps on fresh draws and measures the gain on other fresh draws. Where
a plate's factors split into per-unit terms only the sample's terms are evaluated, so the cost does
not grow with the number of units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc

from pymc_amortize.diagnostics.meanfield import GaussianFactor, standard_error
from pymc_amortize.errors import AmortizationError, as_clause, require_integer, require_number
from pymc_amortize.model.logjoint import build_logjoint
from pymc_amortize.model.types import Plate
from pymc_amortize.posterior.approximation import AmortizedApproximation
from pymc_amortize.psis import batch_unit_graph, draw_placeholders, rows_of_units

__all__ = ["GAP_CHECK_DEFAULTS", "GapCheck", "PlateGapCheck", "gap_check"]

#: The encoder's (mean, sd) of every fitted unit, by latent name.
Encoded = Mapping[str, tuple[np.ndarray, np.ndarray]]

#: Defaults of :func:`gap_check` (and of ``pm.fit(method="amortized", gap_check=True)``).
GAP_CHECK_DEFAULTS = {
    "units": 100,
    "steps": 300,
    "draws": 16,
    "eval_draws": 256,
    "tolerance": 0.01,
    "min_gain": 5.0,
}


@dataclass(frozen=True)
class PlateGapCheck:
    """:func:`gap_check` on one plate: per-unit refinement of a sample of its units.

    Attributes
    ----------
    plate : str
        The plate's name.
    n_units : int
        Units of the plate (N).
    units : ndarray
        Positions of the checked units (n of them).
    gain, standard_error : float
        ELBO(refined) − ELBO(encoder) over the checked units, in nats, on fresh draws (not those
        the refinement was fitted on), and its Monte Carlo SE (paired draws).
    unit_gain : ndarray or None
        The gain of each checked unit; None where the plate's factors couple its units (then
        only the sample's total is defined).
    extrapolated, extrapolated_se : float
        The gain scaled to all N units, N/n × ``gain``, and its SE (with the spread between
        units where ``unit_gain`` is known, else the Monte Carlo SE alone).
    evaluation : str
        ``"per-unit terms"``: the checked units' own factors only (the cost does not grow with N);
        ``"whole log joint"``: the model's whole log joint with the other units held at their
        encoder's q (a factor couples the units; ``note`` says which).
    steps : int
        Adam steps of the refinement.
    note : str
        Why the whole log joint was needed, or empty.
    encoder, refined : dict of str to GaussianFactor
        The checked units' q(z_n) (value space, by value name): the encoder's and the refined.
    """

    plate: str
    n_units: int
    units: np.ndarray = field(repr=False)
    gain: float
    standard_error: float
    unit_gain: np.ndarray | None = field(repr=False)
    extrapolated: float
    extrapolated_se: float
    evaluation: str
    steps: int
    note: str = ""
    encoder: dict[str, GaussianFactor] = field(default_factory=dict, repr=False)
    refined: dict[str, GaussianFactor] = field(default_factory=dict, repr=False)

    @property
    def n_checked(self) -> int:
        """Units checked (n)."""
        return int(self.units.size)

    @property
    def gain_per_unit(self) -> float:
        """The gain per checked unit, in nats."""
        return self.gain / self.n_checked


@dataclass(frozen=True)
class GapCheck:
    """The check run at the end of ``pm.fit(method="amortized")``; see :func:`gap_check`.

    Attributes
    ----------
    plates : dict of str to PlateGapCheck
        The result per plate.
    flagged : bool
        Whether per-unit parameters clearly beat the encoder on some plate (then
        ``pm.fit`` warned :class:`~pymc_amortize.AmortizationGapWarning`).
    seconds : float
        Wall time of the check, compilation included.
    skipped : str
        Why the check did not run (units streamed from ``unit_data``, no plate), or empty.
    tolerance, min_gain : float
        The thresholds: a plate is flagged when its gain per checked unit is above
        ``tolerance`` nats, its extrapolated gain above ``min_gain`` nats, and its gain above
        4 standard errors.
    """

    plates: dict[str, PlateGapCheck]
    flagged: bool
    seconds: float
    skipped: str = ""
    tolerance: float = GAP_CHECK_DEFAULTS["tolerance"]
    min_gain: float = GAP_CHECK_DEFAULTS["min_gain"]

    def is_flagged(self, plate: PlateGapCheck) -> bool:
        """Whether ``plate``'s gain passes all three thresholds (see the class's attributes)."""
        return (
            plate.gain_per_unit > self.tolerance
            and plate.extrapolated > self.min_gain
            and plate.gain > 4 * plate.standard_error
        )

    def summary(self) -> str:
        """One line per plate: the gain, per unit and extrapolated, and the verdict."""
        if self.skipped:
            return f"gap check skipped: {self.skipped}"
        lines = []
        for check in self.plates.values():
            verdict = (
                "per-unit parameters do clearly better than the encoder"
                if self.is_flagged(check)
                else "no clear gap"
            )
            lines.append(
                f"gap check, plate '{check.plate}': per-unit refinement of {check.n_checked} of "
                f"{check.n_units} units (q(θ) held) raised the ELBO by {check.gain:.3g} ± "
                f"{check.standard_error:.2g} nats ({check.gain_per_unit:.3g} per unit; "
                f"≈ {check.extrapolated:.3g} ± {check.extrapolated_se:.2g} over all "
                f"{check.n_units}): {verdict} ({self.seconds:.2g} s)"
            )
        return "\n".join(lines)

    def warning_message(self) -> str:
        """The :class:`~pymc_amortize.AmortizationGapWarning` text: the flagged plates' gains,
        the likely causes and what to run next."""
        flagged = [c for c in self.plates.values() if self.is_flagged(c)]
        parts = [
            f"plate '{c.plate}': +{c.gain:.3g} ± {c.standard_error:.2g} nats on {c.n_checked} of "
            f"{c.n_units} units ({c.gain_per_unit:.3g} per unit, ≈ {c.extrapolated:.3g} nats "
            "over all units)" + (f"; {c.note}" if c.note else "")
            for c in flagged
        ]
        return (
            "A-VI's solution is clearly below what per-unit parameters reach: a short per-unit "
            "refinement with q(θ) held raised the ELBO on a sample of units ("
            + "; ".join(parts)
            + "). The encoder cannot give these units their posteriors (units coupled by a prior "
            "or a term the encoder does not read, too few inputs or too small an encoder), or the "
            "fit has not converged. Diagnose with pymc_amortize.amortization_gap(approx); for "
            "per-unit posteriors use pymc_amortize.semi_amortize(approx) (or "
            "pm.fit(method='advi')). This check: approx.gap_check; turn it off with "
            "pm.fit(..., gap_check=False)."
        )

    def attributes(self) -> dict[str, str | int | float]:
        """netCDF-safe attributes for ``idata.amortized_fit.attrs`` (``gap_check*``)."""
        attrs: dict[str, str | int | float] = {
            "gap_check": self.summary(),
            "gap_check_flagged": int(self.flagged),
            "gap_check_seconds": float(self.seconds),
        }
        if self.plates:
            attrs["gap_check_gain_nats"] = float(sum(c.gain for c in self.plates.values()))
            attrs["gap_check_extrapolated_nats"] = float(
                sum(c.extrapolated for c in self.plates.values())
            )
            attrs["gap_check_units"] = int(sum(c.n_checked for c in self.plates.values()))
        return attrs

    def __repr__(self) -> str:
        return f"GapCheck(flagged={self.flagged})\n{self.summary()}"


def _compile_check(inputs: list, outputs: list) -> Callable:
    """FAST_COMPILE, as for the package's other run-a-few-times functions: NUMBA's code
    generation would cost more than the check itself."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
        return compile_pymc(inputs, outputs, mode="FAST_COMPILE", on_unused_input="ignore")


class _SampleObjective:
    """log p of the terms a sample of a plate's units enters, per draw, and its gradient with
    respect to the sample's draws.

    Per-unit terms when the plate's factors split by unit (only the sample's units and rows are
    evaluated); else the model's whole log joint, the other units' draws given.
    """

    def __init__(
        self, approx: AmortizedApproximation, plate: Plate, n_sample: int, rng: np.random.Generator
    ):
        self.plate = plate
        names = [latent.value_name for latent in plate.latents]
        self.note = ""
        try:
            graph = batch_unit_graph(approx, plate, skip_undrawn=True)
        except AmortizationError as error:
            # Every evaluation costs the whole log joint anyway, so every unit is refined: in a
            # chain, one unit moved between neighbours held at the encoder's q gains little even
            # where the units moved together gain much.
            self.whole = True
            self.units = units = np.arange(plate.size, dtype=np.int64)
            self.note = f"every unit refined, on the whole log joint: {as_clause(error)}"
            logjoint = build_logjoint(approx.model, approx.analysis)
            draws, global_draws, local_draws = draw_placeholders(logjoint)
            total = logjoint.per_draw(global_draws, local_draws, None)
            grads = pt.grad(total.sum(), [draws[name] for name in names])
            taken = [g[:, pt.as_tensor(units)] for g in grads]
            self._order = list(draws)
            self._fn = _compile_check(list(draws.values()), [total[:, None], *taken])
            self._extra = []
        else:
            self.whole = False
            sample = rng.choice(plate.size, size=min(n_sample, plate.size), replace=False)
            self.units = units = np.sort(sample).astype(np.int64)
            grads = pt.grad(graph.per_unit.sum(), [graph.draws[name] for name in names])
            inputs = [*graph.draws.values(), graph.units, graph.rows, graph.slot]
            self._order = list(graph.draws)
            self._fn = _compile_check(inputs, [graph.per_unit, *grads])
            self._extra = [units, *rows_of_units(approx, plate, units)]
        self._names = names

    def __call__(
        self, fixed: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(S, n) per unit (or (S, 1) for the whole log joint) and the gradient per latent."""
        values = dict(fixed)
        for name in self._names:
            if self.whole:
                full = values[name].copy()
                full[:, self.units] = local[name]
                values[name] = full
            else:
                values[name] = local[name]
        per_unit, *grads = self._fn(*(values[name] for name in self._order), *self._extra)
        return np.asarray(per_unit), dict(zip(self._names, grads, strict=True))


def _fixed_draws(
    approx: AmortizedApproximation,
    plate: Plate,
    whole: bool,
    encoded: Encoded,
    n_draws: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draws of everything held during the refinement: the globals from q(θ) and the local
    latents of the other plates from their encoders (and of this plate, for ``whole``)."""
    values = approx.draw_globals(n_draws, rng)
    for other in approx.analysis.plates:
        if other.name == plate.name and not whole:
            continue  # the per-unit terms read the sample's draws alone
        for latent in other.latents:
            mean, sd = encoded[latent.name]
            values[latent.value_name] = mean + sd * rng.standard_normal((n_draws, *mean.shape))
    return values


def _adam_refine(
    objective: _SampleObjective,
    start: dict[str, tuple[np.ndarray, np.ndarray]],
    shapes: dict[str, tuple[int, ...]],
    steps: int,
    n_draws: int,
    plate: Plate,
    encoded: Encoded,
    approx: AmortizedApproximation,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-unit (mean, log sd) after ``steps`` Adam steps from ``start``, each step on fresh
    draws of q(θ), the held units and the refined ones.

    Parameterised in the encoder's sds, mean = m₀ + s₀·δ and log sd = log s₀ + η, so one learning
    rate suits units whose posteriors differ in scale; the rate decays to zero (cosine) and the
    result is the mean of the iterates of the second half. Fixed draws would let the
    refinement fit their noise (in-sample gains of hundreds of nats that fresh draws reverse).
    """
    names = list(shapes)
    scale = {n: np.exp(start[n][1]) for n in names}
    params = {n: [np.zeros(shapes[n]), np.zeros(shapes[n])] for n in names}  # δ, η
    moments = {n: [[np.zeros(shapes[n]) for _ in range(2)] for _ in range(2)] for n in names}
    average = {n: [np.zeros(shapes[n]), np.zeros(shapes[n])] for n in names}
    rate, beta1, beta2, tiny = 0.1, 0.9, 0.999, 1e-8
    averaged = 0
    for step in range(1, steps + 1):
        fixed = _fixed_draws(approx, plate, objective.whole, encoded, n_draws, rng)
        eps = {n: rng.standard_normal((n_draws, *shapes[n])) for n in names}
        sds = {n: scale[n] * np.exp(params[n][1]) for n in names}
        local = {n: start[n][0] + scale[n] * params[n][0] + sds[n] * eps[n] for n in names}
        _, grads = objective(fixed, local)
        lr = 0.5 * rate * (1.0 + math.cos(math.pi * (step - 1) / steps))
        for n in names:
            g = grads[n]
            if not np.isfinite(g).all():
                continue  # a draw off the support: skip this step for the latent
            # The ELBO's gradient with respect to δ and η (the entropy gives η its 1).
            ascent = (scale[n] * g.mean(axis=0), (g * eps[n]).mean(axis=0) * sds[n] + 1.0)
            for k in range(2):
                m1, m2 = moments[n][k]
                m1 *= beta1
                m1 += (1 - beta1) * ascent[k]
                m2 *= beta2
                m2 += (1 - beta2) * ascent[k] ** 2
                correction = math.sqrt(1 - beta2**step) / (1 - beta1**step)
                params[n][k] += lr * correction * m1 / (np.sqrt(m2) + tiny)
        if step > steps // 2:
            averaged += 1
            for n in names:
                for k in range(2):
                    average[n][k] += (params[n][k] - average[n][k]) / averaged
    return {n: (start[n][0] + scale[n] * average[n][0], start[n][1] + average[n][1]) for n in names}


def _check_plate(
    approx: AmortizedApproximation,
    plate: Plate,
    encoded: Encoded,
    options: Mapping[str, int],
    rng: np.random.Generator,
) -> PlateGapCheck:
    """Refine q(z_n) of a sample of ``plate``'s units by Adam on fresh draws each step (q(θ)
    held), then measure the gain on other fresh draws."""
    objective = _SampleObjective(approx, plate, int(options["units"]), rng)
    units, n_sample = objective.units, objective.units.size
    n_draws, n_eval = int(options["draws"]), int(options["eval_draws"])
    if objective.whole:  # (S, N) arrays of every unit: keep them to a few million numbers
        n_eval = min(n_eval, max(32, 4_000_000 // plate.size))
    shapes = {lat.value_name: (n_sample, *lat.event_shape) for lat in plate.latents}
    start = {
        lat.value_name: (encoded[lat.name][0][units], np.log(encoded[lat.name][1][units]))
        for lat in plate.latents
    }
    steps = int(options["steps"])
    refined = _adam_refine(objective, start, shapes, steps, n_draws, plate, encoded, approx, rng)

    # The gain on fresh draws: the refinement's own draws would flatter it.
    fixed = _fixed_draws(approx, plate, objective.whole, encoded, n_eval, rng)
    eps = {name: rng.standard_normal((n_eval, *s)) for name, s in shapes.items()}
    before = {n: m + np.exp(w) * eps[n] for n, (m, w) in start.items()}
    after = {n: m + np.exp(w) * eps[n] for n, (m, w) in refined.items()}
    diff = objective(fixed, after)[0] - objective(fixed, before)[0]
    entropy = sum((refined[n][1] - start[n][1]).reshape(n_sample, -1).sum(axis=1) for n in shapes)
    per_draw = diff.sum(axis=1) + entropy.sum()
    gain, se = float(per_draw.mean()), standard_error(per_draw)
    scale = plate.size / n_sample
    unit_gain = None
    extrapolated_se = scale * se
    if not objective.whole:
        unit_gain = diff.mean(axis=0) + entropy
        if n_sample > 1:
            between = unit_gain.var(ddof=1) / n_sample * (1.0 - n_sample / plate.size)
            extrapolated_se = plate.size * math.sqrt(between + (se / n_sample) ** 2)
    return PlateGapCheck(
        plate=plate.name,
        n_units=plate.size,
        units=units,
        gain=gain,
        standard_error=se,
        unit_gain=unit_gain,
        extrapolated=scale * gain,
        extrapolated_se=extrapolated_se,
        evaluation="whole log joint" if objective.whole else "per-unit terms",
        steps=steps,
        note=objective.note,
        encoder={n: GaussianFactor(m, np.exp(w)) for n, (m, w) in start.items()},
        refined={n: GaussianFactor(m, np.exp(w)) for n, (m, w) in refined.items()},
    )


def gap_check(
    approx: AmortizedApproximation,
    *,
    units: int = GAP_CHECK_DEFAULTS["units"],
    steps: int = GAP_CHECK_DEFAULTS["steps"],
    draws: int = GAP_CHECK_DEFAULTS["draws"],
    eval_draws: int = GAP_CHECK_DEFAULTS["eval_draws"],
    tolerance: float = GAP_CHECK_DEFAULTS["tolerance"],
    min_gain: float = GAP_CHECK_DEFAULTS["min_gain"],
    random_seed: int | None = None,
) -> GapCheck:
    """A cheap check of the amortization gap: do per-unit parameters clearly beat the encoder?

    ``pm.fit(method="amortized")`` runs it after every fit (``gap_check=False`` turns it off,
    ``gap_check={...}`` sets these options) and warns :class:`~pymc_amortize.AmortizationGapWarning`
    when it flags a plate. For a random sample of at most ``units`` units of each plate, it gives
    each sampled unit its own mean and sd, starts them at the encoder's q(z_n), holds q(θ) and
    every other unit as fitted, and raises the ELBO by ``steps`` Adam steps on ``draws`` fresh
    draws each (a decaying rate, in units of the encoder's sd); the gain is then measured on
    ``eval_draws`` fresh draws, paired. Where the plate's factors split into per-unit terms only
    the sampled units' terms are evaluated, so the cost does not grow with the number of units.
    Where a factor couples the units (a random-walk or AR prior, a ``pm.Potential`` summed over
    them) every evaluation needs the whole log joint, and every unit of the plate is refined
    (one unit moved between neighbours held at the encoder's q gains little where the units moved
    together gain much).

    A plate is flagged when the gain per checked unit exceeds ``tolerance`` nats, the gain
    extrapolated to all its units exceeds ``min_gain`` nats, and the gain exceeds 4 standard
    errors. With q(θ) held this is the conditional gap, a lower bound on what
    :func:`amortization_gap` (which refines θ too, on every unit) finds.

    Parameters
    ----------
    approx : AmortizedApproximation
        A fitted approximation whose units are in the model (a fit on ``unit_data`` is skipped,
        with the reason in ``skipped``).
    units : int
        Units checked per plate (all of a smaller plate).
    steps : int
        Adam steps of the refinement.
    draws, eval_draws : int
        Monte Carlo draws per step of the refinement, and of the final comparison.
    tolerance, min_gain : float
        Thresholds in nats: per checked unit, and extrapolated to the plate.
    random_seed : int, optional
        Seeds the sample of units and the draws.

    Returns
    -------
    GapCheck
        Per plate the gain (checked units, per unit, extrapolated) with standard errors,
        ``flagged``, ``summary()`` and the seconds it took.

    Examples
    --------
    .. code-block:: python

        approx = pm.fit(10_000, method="amortized", model=model)   # checks, may warn
        approx.gap_check.summary()
        pymc_amortize.gap_check(approx, units=200, random_seed=1)  # again, on more units
    """
    import time

    started = time.perf_counter()
    if not isinstance(approx, AmortizedApproximation):
        raise AmortizationError(
            f"gap_check() takes a fitted AmortizedApproximation; got {type(approx).__name__}."
        )
    options = {
        "units": require_integer(units, "units"),
        "steps": require_integer(steps, "steps"),
        # A standard error needs two draws.
        "draws": require_integer(draws, "draws", minimum=2),
        "eval_draws": require_integer(eval_draws, "eval_draws", minimum=2),
    }
    thresholds = {
        "tolerance": require_number(tolerance, "tolerance"),
        "min_gain": require_number(min_gain, "min_gain"),
    }
    skipped = ""
    if approx.unit_source is not None:
        skipped = (
            f"the fit read its {approx.unit_source.size} units from unit_data, and only a "
            "template of a few is in the model; run pymc_amortize.amortization_gap on a model "
            "holding a sample of the units"
        )
    elif not approx.analysis.plates:
        skipped = "no plate of units: every latent is fitted mean-field, nothing is amortized"
    elif approx.conditional_plates:
        skipped = (
            "the conditional family q(z_n | θ, x_n) is not a subset of per-unit mean-field "
            "parameters (its locals depend on θ), so their refinement bounds nothing for it"
        )
    if skipped:
        return GapCheck({}, False, time.perf_counter() - started, skipped, **thresholds)
    rng = np.random.default_rng(random_seed)
    encoded = approx.fitted_encoder_outputs()
    plates = {
        plate.name: _check_plate(approx, plate, encoded, options, rng)
        for plate in approx.analysis.plates
    }
    check = GapCheck(plates, False, 0.0, "", **thresholds)
    flagged = any(check.is_flagged(c) for c in plates.values())
    return GapCheck(plates, flagged, time.perf_counter() - started, "", **thresholds)
