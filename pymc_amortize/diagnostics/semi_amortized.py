"""Semi-amortized VI: per-unit F-VI (PyMC's mean-field ADVI) started at an A-VI solution.

The globals' q(θ) and each unit's encoder output become ADVI's starting means and sds. The
globals are *initialised* from A-VI and then optimised jointly with the locals, not frozen: the
F-VI optimum moves θ and z together, and freezing θ would measure a conditional gap instead.
Adam's last iterate jitters by a few nats, more than a small gap, so the refinement decays its
learning rate to zero (a cosine schedule) and averages the last iterates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pymc as pm
import xarray as xr
from pymc.progress_bar import default_progress_theme

from pymc_amortize.diagnostics.meanfield import MeanField, meanfield_of
from pymc_amortize.errors import AmortizationError, require_integer
from pymc_amortize.guide.globals import set_group_sds
from pymc_amortize.posterior.approximation import AmortizedApproximation

__all__ = ["SemiAmortizedApproximation", "fvi_from_fit", "semi_amortize"]


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
        """The model both phases fitted."""
        return self.amortized.model

    @property
    def total_steps(self) -> int:
        """Steps of both phases together."""
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


@meanfield_of.register(SemiAmortizedApproximation)
def _semi_amortized_meanfield(approx: SemiAmortizedApproximation) -> MeanField:
    return meanfield_of(approx.refined)


def _advi_start(
    approx: AmortizedApproximation, factors: MeanField | None = None
) -> tuple[dict, dict]:
    """ADVI's ``start`` (constrained space, by variable name) and ``start_sigma`` (by value name),
    from ``factors`` (value space), by default the fit's marginals.

    PyMC maps ``start`` through the variable's forward transform (``make_initial_point_fn``), so a
    transformed variable's value-space mean goes through the backward transform first.
    """
    model = approx.model
    factors = meanfield_of(approx) if factors is None else factors
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
    approx: AmortizedApproximation, n: int = 2_000, **options
) -> SemiAmortizedApproximation:
    """Semi-amortized VI: per-unit F-VI (a mean and sd per unit) started at the encoder's output.

    Runs PyMC's mean-field ADVI (``pm.ADVI``) with ``start``/``start_sigma`` set to A-VI's solution:
    q(θ) as fitted (and every latent fitted mean-field), and for every unit of every plate the
    encoder's mean and sd. The globals are optimised too. ``pm.fit(method="amortized", semi_amortize=n)``
    calls this after the A-VI fit.

    Not to be confused with ``AmortizedVI.refine(n)`` (PyMC's ``Inference.refine``), which runs
    ``n`` more amortized steps of the same encoder.

    Not for the conditional family q(z_n | θ, x_n): F-VI's factors cannot hold its dependence of
    z_n on θ, so F-VI started there is not a refinement of it (see :func:`fvi_from_fit`).

    Parameters
    ----------
    approx : AmortizedApproximation
        A fitted A-VI solution.
    n : int
        Refinement steps.
    **options
        ``learning_rate``, ``average_last``, ``obj_optimizer``, ``obj_n_mc``, ``callbacks``,
        ``random_seed``, ``progressbar``, ``progressbar_theme``: as for :func:`fvi_from_fit`
        (every option but its ``start``: the start here is the fit's own solution).

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
    if approx.conditional_plates:
        raise AmortizationError(
            "semi_amortize() refines each unit's q(z_n) by per-unit F-VI, and the conditional "
            f"family's q(z_n | θ, x_n) of plate(s) {', '.join(sorted(approx.conditional_plates))} "
            "is not among F-VI's factors: F-VI drops the dependence of z_n on θ that this fit "
            "holds, so started here it is ADVI's optimum, not a refinement of the fit (its ELBO "
            "can be lower). pymc_amortize.amortization_gap(approx) runs it and reports both ELBOs; "
            "pymc_amortize.diagnostics.fvi_from_fit(approx) returns it."
        )
    if "start" in options:
        raise TypeError(
            "semi_amortize() starts at the fit's own solution and takes no start=; "
            "pymc_amortize.diagnostics.fvi_from_fit(approx, start=...) takes another start."
        )
    return fvi_from_fit(approx, n, **options)


def fvi_from_fit(
    approx: AmortizedApproximation,
    n: int = 2_000,
    *,
    start: MeanField | None = None,
    learning_rate: float = 1e-2,
    average_last: float = 0.5,
    obj_optimizer: Callable | None = None,
    obj_n_mc: int = 1,
    callbacks: Sequence[Callable] | None = None,
    random_seed: int | None = None,
    progressbar: bool = True,
    progressbar_theme=default_progress_theme,
) -> SemiAmortizedApproximation:
    """F-VI (PyMC's mean-field ADVI, a mean and sd per unit) started at a fit's marginals, for
    any family: :func:`semi_amortize` without its check of the family.

    For the encoder family with a mean-field q(θ) this is :func:`semi_amortize`, a refinement of
    the fit. For a family that is not a subset of F-VI's (the conditional family, a full-rank
    q(θ)) it is ADVI's optimum, started near the fit: :func:`~pymc_amortize.amortization_gap`
    compares its ELBO with the fit's own.

    Parameters
    ----------
    approx : AmortizedApproximation
        A fitted A-VI solution.
    n : int
        F-VI steps.
    start : dict of str to GaussianFactor, optional
        The start (value space, by value name); :func:`meanfield_of` ``(approx)``, the fit's
        marginals, when omitted.
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
        ``refined`` is ADVI's mean-field approximation.
    """
    if not isinstance(approx, AmortizedApproximation):
        raise AmortizationError(
            f"fvi_from_fit() takes a fitted AmortizedApproximation; got {type(approx).__name__}."
        )
    approx.require_units_in_memory("semi_amortize")
    n = require_integer(n, "n (the refinement steps)")
    if not 0 <= average_last < 1:
        raise AmortizationError(f"average_last must be in [0, 1); got {average_last!r}.")
    start, start_sigma = _advi_start(approx, start)
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
