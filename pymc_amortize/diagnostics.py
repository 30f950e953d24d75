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
import xarray as xr
from pymc.progress_bar import default_progress_theme

from pymc_amortize.approximation import AmortizedApproximation
from pymc_amortize.errors import AmortizationError
from pymc_amortize.logjoint import compile_log_terms
from pymc_amortize.results import unit_dim

__all__ = [
    "AmortizationGap",
    "MeanFieldELBO",
    "SemiAmortizedApproximation",
    "amortization_gap",
    "meanfield_of",
    "semi_amortize",
]

_HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2.0 * math.pi))


class GaussianFactor(NamedTuple):
    """Mean and sd of one variable's Gaussian factor, on its value (unconstrained) space."""

    mean: np.ndarray
    sd: np.ndarray


#: A fully factorised Gaussian q: one factor per value variable of the model, by value name.
MeanField = dict[str, GaussianFactor]


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _group_factors(group) -> MeanField:
    """The factors held by a PyMC mean-field group, split by its ordering."""
    mu = np.asarray(group.params_dict["mu"].get_value())
    sd = _softplus(np.asarray(group.params_dict["rho"].get_value()))
    return {
        name: GaussianFactor(mu[slc].reshape(shape), sd[slc].reshape(shape))
        for name, slc, shape, _ in group.ordering.values()
    }


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
        factors = _group_factors(approx.global_group) if approx.global_group is not None else {}
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
            np.log(q[name].sd).sum() + np.size(q[name].sd) * _HALF_LOG_2PI_E for name in self.shapes
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
    approx.require_units_in_memory("semi_amortize")
    if not isinstance(n, int | np.integer) or n <= 0:
        raise AmortizationError(f"n (the refinement steps) must be a positive integer; got {n!r}.")
    if not 0 <= average_last < 1:
        raise AmortizationError(f"average_last must be in [0, 1); got {average_last!r}.")
    start, start_sigma = _advi_start(approx)
    advi = pm.ADVI(model=approx.model, start=start, random_seed=random_seed)
    # The sds go straight into the group's flat rho: PyMC's start_sigma= assigns each variable's
    # array to a flat slice and fails for variables of two or more dims.
    group = advi.approx.groups[0]
    rho = group.rho.get_value()
    for value_name, slc, _, _ in group.ordering.values():
        rho[slc] = np.log(np.expm1(np.ravel(start_sigma[value_name])))
    group.rho.set_value(rho)
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
        NaN when a factor couples the plate's units (e.g. a random-walk prior).
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
            lines.append(
                f"  plate {name}: gain {float(ds['gain'].sum()):.4g} nats over {ds.sizes[dim]} "
                f"units; moved most (KL refined ‖ amortized): {moved}"
            )
        return "\n".join(lines)


def _per_unit_gap(
    approx: AmortizedApproximation,
    before: MeanField,
    after: MeanField,
    values_before: Mapping[str, np.ndarray],
    values_after: Mapping[str, np.ndarray],
) -> dict[str, xr.Dataset]:
    """Per plate and unit: KL(after ‖ before) and the rise of the unit's ELBO terms."""
    out = {}
    for plate in approx.analysis.plates:
        try:
            fn, order = compile_log_terms(approx.model, approx.analysis, plate)
        except AmortizationError:
            # A factor couples the plate's units (e.g. a random-walk prior): no per-unit terms.
            units_before = units_after = np.full((2, plate.size), np.nan)
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
        dim, coords = unit_dim(approx.model, plate)
        out[plate.name] = xr.Dataset(
            {
                "kl": (dim, kl, {"long_name": "KL(refined q(z_n) ‖ encoder q(z_n))"}),
                "gain": (dim, per_draw.mean(axis=0), {"long_name": "ELBO gain of the unit"}),
                "gain_se": (dim, per_draw.std(axis=0, ddof=1) / math.sqrt(per_draw.shape[0])),
            },
            coords={dim: coords},
        )
    return out


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
    per_plate = _per_unit_gap(
        approx, before, after, evaluator.draws(before), evaluator.draws(after)
    )
    return AmortizationGap(
        gain=float(diff.mean()),
        standard_error=float(diff.std(ddof=1) / math.sqrt(diff.size)),
        elbo_amortized=float(amortized_draws.mean()),
        elbo_refined=float(refined_draws.mean()),
        per_plate=per_plate,
        steps=int(n),
        tolerance=float(tolerance),
        refined=semi,
    )
