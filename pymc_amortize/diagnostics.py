"""Semi-amortized refinement and the amortization-gap diagnostic (Margossian & Blei, §5).

Both start F-VI (PyMC's own mean-field ADVI, a separate mean and sd for every unit) from a fitted
A-VI solution: the globals' q(θ) and each unit's encoder output become ADVI's starting means and
sds. The globals are *initialised* from A-VI and then optimised jointly with the locals, not frozen:
the F-VI optimum moves θ and z together, and freezing θ would measure a conditional gap instead.

Comparing the ELBO of two fits is delicate: Adam's last iterate jitters by a few nats, and two
independent Monte Carlo ELBO estimates differ by more than a small gap. So the refinement decays its
learning rate to zero (a cosine schedule), and :class:`MeanFieldELBO` scores both solutions on the
*same* standard-normal draws (common random numbers) with the model's own ``logp``; the standard
error comes from the paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from pymc.progress_bar import default_progress_theme
from pymc.pytensorf import compile as compile_pymc

from pymc_amortize.errors import AmortizationError
from pymc_amortize.guide.globals import HALF_LOG_2PI_E, group_factors, set_group_sds
from pymc_amortize.model.logjoint import build_logjoint, compile_log_terms, plate_factors
from pymc_amortize.posterior.approximation import AmortizedApproximation

__all__ = [
    "AmortizationGap",
    "GapCheck",
    "MeanFieldELBO",
    "PlateGapCheck",
    "SemiAmortizedApproximation",
    "amortization_gap",
    "gap_check",
    "meanfield_of",
    "semi_amortize",
]


class GaussianFactor(NamedTuple):
    """Mean and sd of one variable's Gaussian factor, on its value (unconstrained) space."""

    mean: np.ndarray
    sd: np.ndarray


#: A fully factorised Gaussian q: one factor per value variable of the model, by value name.
MeanField = dict[str, GaussianFactor]


def _group_factors(group) -> MeanField:
    """The factors held by a PyMC mean-field group, by value name."""
    return {name: GaussianFactor(*factor) for name, factor in group_factors(group).items()}


def meanfield_of(approx) -> MeanField:
    """The factorised Gaussian of an A-VI, semi-amortized or ADVI fit, by value variable name.

    For an :class:`~pymc_amortize.AmortizedApproximation` the local factors are the encoder's
    outputs on the fitted units; for PyMC's mean-field approximation they are its own parameters.

    Examples
    --------
    .. code-block:: python

        q = meanfield_of(approx)
        q["z"].mean, q["z"].sd
    """
    if isinstance(approx, SemiAmortizedApproximation):
        approx = approx.refined
    if isinstance(approx, AmortizedApproximation):
        factors = {name: GaussianFactor(*f) for name, f in approx.global_factors().items()}
        encoded = approx.encode()
        for latent in approx.analysis.latents:
            q = encoded[latent.name]
            factors[latent.value_name] = GaussianFactor(q.mean, q.sd)
        return factors
    groups = getattr(approx, "groups", None)
    if not groups or any(type(g).__name__ != "MeanFieldGroup" for g in groups):
        raise AmortizationError(
            f"Expected an amortized or mean-field ADVI approximation; got {type(approx).__name__}."
        )
    factors = {}
    for group in groups:
        factors |= _group_factors(group)
    return factors


class MeanFieldELBO:
    """Monte Carlo ELBO of factorised Gaussians on one model, with common random numbers.

    Every q is scored on the same standard-normal draws ε: draw s of q is ``mean + sd·ε_s``, the log
    joint comes from ``model.compile_logp()`` (with the Jacobians of transformed variables, as ADVI
    uses) and the Gaussian entropy is exact. Differences between two q's are then estimated from
    paired draws, so a gap of a fraction of a nat is visible on a model with thousands of units.

    Parameters
    ----------
    model : pm.Model
        The model whose ELBO to estimate.
    n_draws : int
        Draws per estimate.
    random_seed : int, optional
        Seed of the shared draws.

    Examples
    --------
    .. code-block:: python

        evaluator = MeanFieldELBO(model, n_draws=500, random_seed=0)
        elbo, se = evaluator.estimate(meanfield_of(approx))
        gain, gain_se = evaluator.difference(meanfield_of(refined), meanfield_of(approx))
    """

    def __init__(self, model: pm.Model, *, n_draws: int = 500, random_seed: int | None = None):
        if not isinstance(n_draws, int | np.integer) or n_draws < 2:
            raise AmortizationError(f"n_draws must be an integer >= 2; got {n_draws!r}.")
        self.model = model
        self.n_draws = int(n_draws)
        self._logp = model.compile_logp()
        point = model.initial_point()
        self.shapes = {v.name: np.shape(point[v.name]) for v in model.value_vars}
        rng = np.random.default_rng(random_seed)
        self._eps = [
            {name: rng.standard_normal(shape) for name, shape in self.shapes.items()}
            for _ in range(self.n_draws)
        ]

    def _check(self, q: Mapping[str, GaussianFactor]) -> None:
        missing = set(self.shapes) - set(q)
        if missing:
            raise AmortizationError(f"q has no factor for {sorted(missing)}.")
        for name, shape in self.shapes.items():
            if np.shape(q[name].mean) != shape:
                raise AmortizationError(
                    f"The factor of '{name}' has shape {np.shape(q[name].mean)}; the model's value "
                    f"has shape {shape}."
                )

    def per_draw(self, q: Mapping[str, GaussianFactor]) -> np.ndarray:
        """(n_draws,) values of log p(x, w_s) − log q-entropy-free: ``log p(x, w_s) + H[q]``."""
        self._check(q)
        entropy = sum(
            np.log(q[name].sd).sum() + np.size(q[name].sd) * HALF_LOG_2PI_E for name in self.shapes
        )
        values = np.empty(self.n_draws)
        for s, eps in enumerate(self._eps):
            point = {name: q[name].mean + q[name].sd * eps[name] for name in self.shapes}
            values[s] = self._logp(point)
        return values + entropy

    def estimate(self, q: Mapping[str, GaussianFactor]) -> tuple[float, float]:
        """ELBO of ``q`` and its Monte Carlo standard error."""
        values = self.per_draw(q)
        return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))

    def difference(
        self, q: Mapping[str, GaussianFactor], reference: Mapping[str, GaussianFactor]
    ) -> tuple[float, float]:
        """ELBO(q) − ELBO(reference) from paired draws, and its standard error."""
        diff = self.per_draw(q) - self.per_draw(reference)
        return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size))

    def draws(self, q: Mapping[str, GaussianFactor]) -> dict[str, np.ndarray]:
        """The shared draws of ``q`` stacked per value variable: ``{name: (n_draws, *shape)}``."""
        self._check(q)
        return {
            name: q[name].mean + q[name].sd * np.stack([eps[name] for eps in self._eps])
            for name in self.shapes
        }


@dataclass
class SemiAmortizedApproximation:
    """A-VI followed by F-VI refinement of every unit (semi-amortized VI).

    Attributes
    ----------
    amortized : AmortizedApproximation
        The A-VI fit; its encoder still gives q(z) of new units (:meth:`encode`).
    refined : pymc.variational.approximations.MeanField
        PyMC's mean-field approximation after the refinement, one factor per unit.
    amortized_steps, refine_steps : int
        Optimisation steps of each phase.
    """

    amortized: AmortizedApproximation
    refined: pm.MeanField
    amortized_steps: int
    refine_steps: int

    @property
    def model(self) -> pm.Model:
        return self.amortized.model

    @property
    def total_steps(self) -> int:
        return self.amortized_steps + self.refine_steps

    @property
    def hist(self) -> np.ndarray:
        """Loss (−ELBO estimate) per step: the A-VI steps, then the refinement steps."""
        return np.concatenate([self.amortized.hist, self.refined.hist])

    def sample(self, draws: int = 1000, *, random_seed: int | None = None) -> xr.DataTree:
        """Posterior draws of the refined approximation, as ArviZ data."""
        return self.refined.sample(draws, random_seed=random_seed, return_inferencedata=True)

    def encode(self, new_data=None):
        """q(z_n) of new units from the A-VI encoder (see ``AmortizedApproximation.encode``)."""
        return self.amortized.encode(new_data)

    def __repr__(self) -> str:
        plates = ", ".join(f"{p.name}: {p.size}" for p in self.amortized.analysis.plates)
        return (
            f"SemiAmortizedApproximation(units={{{plates}}}, "
            f"amortized_steps={self.amortized_steps}, refine_steps={self.refine_steps})"
        )


def _advi_start(approx: AmortizedApproximation) -> tuple[dict, dict]:
    """ADVI's ``start`` (constrained space, by variable name) and ``start_sigma`` (by value name).

    PyMC maps ``start`` through the variable's forward transform (``make_initial_point_fn``), so a
    transformed variable's value-space mean goes through the backward transform first.
    """
    model = approx.model
    factors = meanfield_of(approx)
    start, start_sigma = {}, {}
    for rv in model.free_RVs:
        value = model.rvs_to_values[rv]
        q = factors[value.name]
        transform = model.rvs_to_transforms.get(rv)
        mean = q.mean
        if transform is not None:
            mean = transform.backward(mean, *rv.owner.inputs).eval()
        start[rv.name] = mean
        start_sigma[value.name] = q.sd
    return start, start_sigma


def _default_optimizer(n: int, learning_rate: float) -> Callable:
    # A cosine decay to zero: the last iterate then sits at the optimum instead of jittering around
    # it, which a gap measured as a difference of ELBOs needs (PyMC's own optimizers take a fixed
    # rate; pytensor-ml's take schedules and follow the same (loss, params) call convention).
    from pytensor_ml.optim import adam, cosine_schedule

    return adam(learning_rate=cosine_schedule(learning_rate, total_steps=n))


class _IterateAverage:
    """A PyMC callback keeping the running mean of the parameters over the last steps.

    Polyak averaging: on a noisy objective the mean of the iterates sits much closer to the optimum
    than the last one (Adam's per-coordinate step does not shrink with the gradient).
    """

    def __init__(self, params, first_step: int):
        self.params = list(params)
        self.first_step = first_step
        self.count = 0
        self.means = [np.zeros_like(p.get_value()) for p in self.params]

    def __call__(self, approx, losses, i):
        if i < self.first_step:
            return
        self.count += 1
        for mean, param in zip(self.means, self.params, strict=True):
            mean += (param.get_value(borrow=True) - mean) / self.count

    def apply(self) -> None:
        if self.count:
            for mean, param in zip(self.means, self.params, strict=True):
                param.set_value(mean)


def semi_amortize(
    approx: AmortizedApproximation,
    n: int = 2_000,
    *,
    learning_rate: float = 1e-2,
    average_last: float = 0.5,
    obj_optimizer: Callable | None = None,
    obj_n_mc: int = 1,
    callbacks: Sequence[Callable] | None = None,
    random_seed: int | None = None,
    progressbar: bool = True,
    progressbar_theme=default_progress_theme,
) -> SemiAmortizedApproximation:
    """Semi-amortized VI: per-unit F-VI (a mean and sd per unit) started at the encoder's output.

    Runs PyMC's mean-field ADVI (``pm.ADVI``) with ``start``/``start_sigma`` set to A-VI's solution:
    q(θ) as fitted (and every latent fitted mean-field), and for every unit of every plate the
    encoder's mean and sd. The globals are optimised too. ``pm.fit(method="amortized", semi_amortize=n)``
    calls this after the A-VI fit.

    Not to be confused with ``AmortizedVI.refine(n)`` (PyMC's ``Inference.refine``), which runs
    ``n`` more amortized steps of the same encoder.

    Parameters
    ----------
    approx : AmortizedApproximation
        A fitted A-VI solution.
    n : int
        Refinement steps.
    learning_rate : float
        Initial rate of the default optimizer, Adam with a cosine decay to zero over ``n`` steps.
    average_last : float
        Fraction of the last steps whose parameters are averaged into the result (Polyak
        averaging); 0 keeps the last iterate.
    obj_optimizer : callable, optional
        Any optimizer ``pm.fit`` takes; replaces the default.
    obj_n_mc : int
        Monte Carlo draws per step.
    callbacks : sequence of callable, optional
        PyMC callbacks, called as ``callback(approx, losses, i)``.
    random_seed : int, optional
        Seeds ADVI's draws.
    progressbar : bool
        Show PyMC's progress bar.

    Returns
    -------
    SemiAmortizedApproximation
        ``refined`` (PyMC's mean-field approximation), ``amortized`` (the untouched A-VI fit, whose
        encoder serves new units) and the steps of each phase.

    Examples
    --------
    .. code-block:: python

        import numpy as np
        import pymc as pm
        import pymc_amortize  # registers method="amortized"
        from pymc_amortize.diagnostics import semi_amortize

        x = np.random.default_rng(0).normal(size=200)
        with pm.Model(coords={"unit": range(200)}) as model:
            z = pm.GaussianRandomWalk("z", sigma=1, init_dist=pm.Normal.dist(0, 1), dims="unit")
            pm.Normal("x", z, 1, observed=x, dims="unit")
            approx = pm.fit(2_000, method="amortized", encoder_widths=(8,), progressbar=False)
        semi = semi_amortize(approx, 500, progressbar=False)
        idata = semi.sample(500)
    """
    if not isinstance(approx, AmortizedApproximation):
        raise AmortizationError(
            f"semi_amortize() takes a fitted AmortizedApproximation; got {type(approx).__name__}."
        )
    approx.require_encoder_family("semi_amortize()")
    approx.require_units_in_memory("semi_amortize")
    if not isinstance(n, int | np.integer) or n <= 0:
        raise AmortizationError(f"n (the refinement steps) must be a positive integer; got {n!r}.")
    if not 0 <= average_last < 1:
        raise AmortizationError(f"average_last must be in [0, 1); got {average_last!r}.")
    start, start_sigma = _advi_start(approx)
    advi = pm.ADVI(model=approx.model, start=start, random_seed=random_seed)
    set_group_sds(advi.approx.groups[0], start_sigma)
    optimizer = obj_optimizer if obj_optimizer is not None else _default_optimizer(n, learning_rate)
    average = _IterateAverage(advi.approx.params, first_step=int(n) - int(average_last * n))
    refined = advi.fit(
        int(n),
        obj_optimizer=optimizer,
        obj_n_mc=obj_n_mc,
        callbacks=[*(callbacks or ()), average],
        progressbar=progressbar,
        progressbar_theme=progressbar_theme,
    )
    average.apply()
    return SemiAmortizedApproximation(
        amortized=approx,
        refined=refined,
        amortized_steps=int(np.size(approx.hist)),
        refine_steps=int(n),
    )


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
    draws = {
        name: pt.tensor(f"{name}_draws", dtype=var.dtype, shape=(None, *var.type.shape))
        for name, var in (logjoint.global_values | logjoint.local_values).items()
    }
    global_draws = {k: v for k, v in draws.items() if k in logjoint.global_values}
    local_draws = {k: v for k, v in draws.items() if k in logjoint.local_values}
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
            note = f"no gain per unit: {_as_clause(error)}"
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
                "plate_gain_se": ((), float(_standard_error(plate_draws))),
            },
            coords={dim: coords},
            attrs={"note": note} if note else {},
        )
    return out, (float(rest.mean()), _standard_error(rest))


def _as_clause(error: Exception) -> str:
    """An error's message to follow a colon: first letter lower case, no final full stop."""
    text = str(error).strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size))


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
    if not isinstance(tolerance, int | float) or tolerance < 0:
        raise AmortizationError(f"tolerance must be a non-negative number; got {tolerance!r}.")
    if not isinstance(approx, AmortizedApproximation):
        raise AmortizationError(
            "amortization_gap() takes a fitted AmortizedApproximation; got "
            f"{type(approx).__name__}."
        )
    approx.require_encoder_family("amortization_gap()")
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
        standard_error=_standard_error(diff),
        elbo_amortized=float(amortized_draws.mean()),
        elbo_refined=float(refined_draws.mean()),
        per_plate=per_plate,
        rest_gain=rest_gain,
        rest_standard_error=rest_se,
        steps=int(n),
        tolerance=float(tolerance),
        refined=semi,
    )


# -- the check after every fit -------------------------------------------------------------------
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
        return int(self.units.size)

    @property
    def gain_per_unit(self) -> float:
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


def _compile_check(inputs, outputs):
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

    def __init__(self, approx: AmortizedApproximation, plate, n_sample: int, rng):
        from pymc_amortize.psis import batch_unit_graph, rows_of_units

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
            self.note = f"every unit refined, on the whole log joint: {_as_clause(error)}"
            logjoint = build_logjoint(approx.model, approx.analysis)
            draws = {
                name: pt.tensor(f"{name}_draws", dtype=var.dtype, shape=(None, *var.type.shape))
                for name, var in (logjoint.global_values | logjoint.local_values).items()
            }
            total = logjoint.per_draw(
                {k: v for k, v in draws.items() if k in logjoint.global_values},
                {k: v for k, v in draws.items() if k in logjoint.local_values},
                None,
            )
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

    def __call__(self, fixed: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray]):
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


def _fixed_draws(approx, plate, whole, encoded, n_draws, rng) -> dict[str, np.ndarray]:
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


def _adam_refine(objective, start, shapes, steps, n_draws, plate, encoded, approx, rng):
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


def _check_plate(approx, plate, encoded, options, rng) -> PlateGapCheck:
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
    gain, se = float(per_draw.mean()), _standard_error(per_draw)
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
        "units": units,
        "steps": steps,
        "draws": draws,
        "eval_draws": eval_draws,
    }
    for key, value in options.items():
        if not isinstance(value, int | np.integer) or value < (2 if "draws" in key else 1):
            raise AmortizationError(f"{key} must be a positive integer; got {value!r}.")
    for key, value in (("tolerance", tolerance), ("min_gain", min_gain)):
        if not isinstance(value, int | float) or not value >= 0:
            raise AmortizationError(f"{key} must be a non-negative number; got {value!r}.")
    thresholds = {"tolerance": float(tolerance), "min_gain": float(min_gain)}
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
