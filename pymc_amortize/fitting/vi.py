"""Amortized VI as a PyMC :class:`~pymc.variational.inference.Inference`.

Subclassing PyMC's ``Inference`` keeps its loop: the rich progress bar, callbacks called as
``callback(approx, losses, i)``, ``hist``, ``refine`` and ``StopIteration`` handling. What differs
is the objective (minibatched over units, :mod:`pymc_amortize.fitting.estimator`) and the
divergence guard (:mod:`pymc_amortize.fitting.guard`), which keeps the best parameters instead of
raising from deep inside the loop. This is the only module that overrides PyMC's private loop
methods (``_iterate_with_loss``, ``_maybe_score``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pymc as pm
import pytensor
import xarray as xr
from pymc.progress_bar import default_progress_theme
from pymc.pytensorf import resolve_backend_compile_kwargs
from pymc.variational.inference import Inference, State
from pytensor.graph.traversal import ancestors

from pymc_amortize.callbacks import ELBOConvergence
from pymc_amortize.data.sampler import POOL_MIB, StepBuffers
from pymc_amortize.data.streaming import UnitSource
from pymc_amortize.errors import (
    AmortizationError,
    AmortizationGapWarning,
    ConvergenceWarning,
    CouplingWarning,
    DivergenceWarning,
)
from pymc_amortize.fitting.estimator import AmortizedObjective, batch_plate_of
from pymc_amortize.fitting.objectives import ELBO, Objective
from pymc_amortize.guide.conditional import ConditionalGaussian, resolve_family
from pymc_amortize.guide.encoders import Encoder
from pymc_amortize.guide.globals import GLOBAL_FAMILIES
from pymc_amortize.guide.state import AmortizedGuide
from pymc_amortize.model.analysis import analyze_model, factorized_terms, reads_other_units
from pymc_amortize.model.types import EncoderInputSpec, ModelAnalysis, Plate
from pymc_amortize.posterior.approximation import AmortizedApproximation
from pymc_amortize.posterior.record import FitRecord

__all__ = ["DEFAULT_LEARNING_RATE", "DEFAULT_MAX_STEPS", "AmortizedVI"]


#: ``fit``'s cap on the steps (it stops earlier on convergence).
DEFAULT_MAX_STEPS = 50_000
#: Adam's first learning rate when no ``obj_optimizer`` is given (decayed on plateaus).
DEFAULT_LEARNING_RATE = 1e-2


#: The backend of the conditional family's step when the user names none (see ``_run``).
CONDITIONAL_STEP_MODE = "FAST_RUN"


def _gap_check_options(option: bool | Mapping[str, object]) -> dict | None:
    """``fit``'s ``gap_check=`` as options of :func:`~pymc_amortize.gap_check`, or None (off)."""
    from pymc_amortize.diagnostics import GAP_CHECK_DEFAULTS

    if option is True:
        return {}
    if option is False or option is None:
        return None
    if isinstance(option, Mapping):
        allowed = {*GAP_CHECK_DEFAULTS, "random_seed"}
        unknown = sorted(set(option) - allowed)
        if unknown:
            raise AmortizationError(
                f"gap_check= has unknown option(s) {unknown}; options: {', '.join(sorted(allowed))}."
            )
        return dict(option)
    raise AmortizationError(
        f"gap_check must be True, False or a mapping of gap_check() options; got {option!r}."
    )


def _convergence_callback(
    convergence: ELBOConvergence | bool | None, callbacks: list[Callable]
) -> ELBOConvergence | None:
    """``fit``'s stop: the one given, one found in ``callbacks``, the default, or None (off).

    A stop it makes or is given is appended to ``callbacks`` (once)."""
    given = [c for c in callbacks if isinstance(c, ELBOConvergence)]
    if isinstance(convergence, ELBOConvergence):
        if given and given[0] is not convergence:
            raise AmortizationError(
                "convergence= and callbacks= both hold an ELBOConvergence; pass one of them."
            )
        if not given:
            callbacks.append(convergence)
        return convergence
    if convergence is True:
        if given:
            return given[0]
        stop = ELBOConvergence()
        callbacks.append(stop)
        return stop
    if convergence is False or convergence is None:
        return given[0] if given else None
    raise AmortizationError(
        f"convergence must be True, False or an ELBOConvergence; got {convergence!r}."
    )


def _cap_message(stop: ELBOConvergence, n: int, run: int, *, total: int, refine: bool) -> str:
    """The ConvergenceWarning's text: where the loss stood when the cap cut the fit, what to run."""
    changes = ", ".join(f"{c:+.1e}" for c in stop.changes[-4:])
    if stop.changes:
        where = (
            f"the relative change of the mean loss over its last windows of {stop.window} steps "
            f"was {changes} (a window is flat under {stop.tolerance:g} or its noise; "
            f"{stop.patience} flat windows in a row make a plateau)"
        )
    else:
        where = f"fewer than two windows of {stop.window} steps were run, too few to judge"
    rate = stop.current_learning_rate()
    if rate is not None:
        where += (
            f"; the learning rate is {rate:.1e}, decayed {len(stop.decayed_at)} of "
            f"{stop.decays} times"
        )
    call = "inference.refine" if refine else "pm.fit"
    return (
        f"Amortized VI stopped at its cap of {n:,} steps ({call}; {total:,} steps in all) before "
        f"the loss converged: {where}. The fit may be far from its optimum. Continue it with "
        f"AmortizedVI's inference.refine({max(n, 10_000):,}) (same parameters, learning rate and "
        f"stop), or refit with a larger cap, e.g. pm.fit(n={max(2 * total, 20_000):,}, "
        "method='amortized', ...). Pass convergence=False to run exactly n steps without this "
        "warning."
    )


def _conditional_plates(
    model: pm.Model,
    analysis: ModelAnalysis,
    family: ConditionalGaussian | None,
    batch_plate: Plate | None,
    *,
    named: bool = True,
) -> tuple[list[str], list[str]]:
    """The plates that get the conditional family, and a summary line per plate.

    The family's Newton step needs a unit's terms to read no other unit's latents (a
    block-diagonal Hessian given θ). The verdict *amortize* says so; *expand* does when it comes
    from a unit's terms reading its neighbours' *data* (the saw series: x_{n−1} in z_n's prior),
    which leaves the units' latents independent given θ, so each of the plate's latents is
    checked for a term that reads another unit's latent (a chain's, an HMM's): such plates, and
    those with any other verdict, keep the encoder. Under a minibatch only the batch plate is
    conditional: the other plates' rows would enter a unit's Newton step only through the
    batch's rows. Crossed conditional plates (an observed variable reads latents of both) say
    what was measured of them (:data:`CROSSED_ACCURACY`) and, unless the family was ``named``,
    a CouplingWarning says so too.
    """
    if family is None:
        return [], []
    terms = None
    names, lines = [], []
    for plate in analysis.plates:
        expand = [lat for lat in plate.latents if lat.verdict == "expand"]
        if expand and terms is None:
            terms = factorized_terms(model)
        coupled = [lat.name for lat in plate.latents if lat.verdict not in ("amortize", "expand")]
        chained = [lat.name for lat in expand if reads_other_units(model, terms, lat.name)]
        if coupled or chained:
            why = "; ".join(
                [f"the verdict on {', '.join(coupled)} is not amortize"] * bool(coupled)
                + [f"a term reads other units' values of {', '.join(chained)}"] * bool(chained)
            )
        elif batch_plate is not None and plate is not batch_plate:
            why = f"batch_size minibatches plate '{batch_plate.name}' only"
        else:
            names.append(plate.name)
            also = (
                f"; verdict expand on {', '.join(lat.name for lat in expand)}, but given θ no term "
                "reads two units' latents, so its units are independent"
                if expand
                else ""
            )
            lines.append(
                f"local family, plate '{plate.name}': conditional q(z_n | θ, x_n), "
                f"{family.newton_steps} Newton step(s) on the model's log density{also}"
            )
            continue
        lines.append(f"local family, plate '{plate.name}': encoder q(z_n; f(x_n)) ({why})")
    if len(names) > 1:
        crossed = _crossed_plates(model, terms or factorized_terms(model), analysis, names)
        for i, plate in enumerate(analysis.plates):
            if plate.name in crossed:
                together = ", ".join(f"'{name}'" for name in [plate.name, *crossed[plate.name]])
                lines[i] += (
                    f"; crossed plates {together}, drawn given each other: {CROSSED_ACCURACY}"
                )
        if crossed and not named:
            warnings.warn(
                f"The conditional family (the default) on crossed plates "
                f"{', '.join(sorted(crossed))} (the data read their latents together): "
                f"{CROSSED_ACCURACY}. Check their posteriors against pm.sample or "
                "pm.fit(method='advi'); family='conditional' keeps it without this warning.",
                CouplingWarning,
                stacklevel=3,
            )
    return names, lines


#: What was measured of the conditional family on crossed plates against NUTS (persons x items,
#: ``python -m benchmarks.conditional_accuracy --models crossed --variants
#: variational,encoder,advi``, 2026-12-07): said in such plates' analysis lines, as each plate is
#: conditioned on the other's draws, not on its uncertainty (docs/user_guide/conditional_family.md).
CROSSED_ACCURACY = (
    "on a persons x items model (150 x 40) its posterior means were 0.25 / 0.38 NUTS sds off "
    "(RMS over persons / items; ADVI 0.08 / 0.10, the encoder family 0.40 / 0.29)"
)


def _crossed_plates(
    model: pm.Model, terms: Mapping, analysis: ModelAnalysis, names: Sequence[str]
) -> dict[str, list[str]]:
    """Per conditional plate of ``names``, the other conditional plates whose latents an observed
    variable's term reads together with its own (crossed plates: persons x items)."""
    plate_of = {
        model.rvs_to_values[model[lat.name]]: plate.name
        for plate in analysis.plates
        if plate.name in names
        for lat in plate.latents
    }
    coupled: dict[str, set[str]] = {}
    for rv in model.observed_RVs:
        read = {plate_of[var] for var in ancestors([terms[rv.name]]) if var in plate_of}
        for name in read:
            coupled.setdefault(name, set()).update(read - {name})
    return {name: sorted(others) for name, others in coupled.items() if others}


def _describe_optimizer(optimizer: Callable | None) -> str:
    """A short text naming an optimizer and its settings, e.g. ``adam(learning_rate=0.01)``."""
    if optimizer is None:
        return "adam(learning_rate=0.001)"
    if isinstance(optimizer, functools.partial):
        options = ", ".join(f"{k}={v}" for k, v in optimizer.keywords.items())
        return f"{getattr(optimizer.func, '__name__', 'optimizer')}({options})"
    return getattr(optimizer, "__name__", type(optimizer).__name__)


class AmortizedVI(Inference):
    """Amortized variational inference: q(θ) ∏_n q(z_n; f_φ(x_n)).

    Parameters
    ----------
    local : mapping, optional
        ``{latent: inputs}``: the latents to amortize and the data that feed their encoders (an
        observed variable or ``pm.Data`` name, a list of names, an (N, k) array, or an
        :class:`~pymc_amortize.IndexedLocal`); latents it leaves out are fitted mean-field. When
        omitted, :func:`~pymc_amortize.analyze_model` finds the plates and local latents from the
        model's graph (aligned rows, or ``a[index]`` through Deterministics and arithmetic) and
        feeds each encoder the data of the latent's Markov blanket; a unit with many rows is
        encoded from the set of its rows by a :class:`~pymc_amortize.PooledEncoder`.
    model : pm.Model, optional
        Taken from the context when omitted.
    encoder : callable or mapping, optional
        A user encoder, ``(B, k) tensor -> (mean, log_sd)``, e.g. built from pytensor-ml layers; a
        mapping gives one per latent. Its weights are copied, never trained in place. For an
        indexed latent it takes ``(rows, unit_of_row, n_units, unit_covariates)``.
    encoder_widths : sequence of int or mapping, optional
        Hidden widths of the default encoder (of ρ for a pooled one), or ``{latent: widths}``;
        ``()`` is an affine encoder. When omitted (or for a latent the mapping leaves out),
        :func:`~pymc_amortize.guide.encoders.default_encoder_widths` sizes one hidden layer from the
        plate's number of units.
    activation : str or callable
        Activation of the default encoder.
    init_scale : float
        sd of every q(z_n) at the start.
    batch_size : int, optional
        Units per step of the plate with the most units, drawn with replacement with all their
        rows; that plate's terms are evaluated on the batch only and scaled by N/B. Other plates
        are evaluated whole. Full batch when omitted.
    standardize_inputs : bool
        Centre and scale each encoder input column (a reparameterisation for an affine first layer).
    objective : ELBO or IWAE, optional
        The variational objective (the ELBO when omitted); ``IWAE(K)`` for the importance-weighted
        bound (full batch only).
    random_seed : int, optional
        Seeds the initial weights, the Monte Carlo draws and the minibatches.
    start, start_sigma : dict, optional
        Initial mean and sd of the globals, as for ADVI.
    unit_data : xarray.Dataset, optional
        The units of the model's plate, for data larger than memory (see
        :mod:`pymc_amortize.data.streaming`): the model is then a *template* written on a few of them
        (at least two), and the fit reads minibatches of ``batch_size`` units from this dataset,
        one chunk (of its own chunking, e.g. a zarr store's through dask) at a time. It holds one
        variable per data array of the plate (observed variables, ``pm.Data``, encoder inputs),
        by the model's names, with the plate's dim first (the rows' dim for an indexed plate's
        row-aligned arrays, whose index must be sorted by unit). Needs ``batch_size``, a model
        with one plate, and named data. The results for its units come from ``encode_dataset``;
        ``sample`` gives the globals.
    unit_data_pool_mib : float, default 128
        Memory (MiB) for the chunks of ``unit_data`` held at once: all of it when it fits (then
        batches are uniform draws, as from memory), else as many chunks as fit, refreshed as the
        fit goes (see :class:`~pymc_amortize.data.sampler.ChunkedUnitSampler`).
    family : {"conditional", "encoder"} or ConditionalGaussian, optional
        The local family. ``"conditional"`` (the default when omitted): q(z_n | θ, x_n), a Gaussian from
        Newton and quadrature steps on the model's own log density given the draw of the globals,
        linearised at the encoder's output (see :mod:`pymc_amortize.guide.conditional`; exact for
        Gaussian-linear units, whatever their number of rows). It applies to a plate whose every
        latent the analysis amortizes; the other plates get the encoder family, and the
        analysis summary (``approx.settings["analysis"]``) names each plate's family and why.
        Crossed plates (persons x items: the data read both plates' latents) are drawn given each
        other's draws; ADVI was measured closer to NUTS there, so the default warns (a
        :class:`~pymc_amortize.CouplingWarning` with the numbers), a family given by name does not.
        Under ``batch_size`` only the batch plate is conditional; a fit on ``unit_data`` uses the
        encoder family. ``"encoder"``: q(z_n; f_φ(x_n)), a Gaussian from the encoder alone,
        mean-field between the globals and the locals (the family of Margossian & Blei, 2024).
    global_family : {"meanfield", "fullrank"}, default "meanfield"
        The family of q(θ), the globals' factor (and that of every latent fitted mean-field):
        ``"meanfield"``, independent Gaussians as ADVI (2D parameters); ``"fullrank"``, one
        Gaussian with a full covariance (D + D(D+1)/2 parameters, for up to a few hundred global
        coordinates), which keeps the correlations between globals that mean-field drops (see
        :mod:`pymc_amortize.guide.globals`).

    Attributes
    ----------
    record : FitRecord
        The fit's explicit state (losses, step seconds, settings, divergence, gap check), shared
        with the approximation, which reads it (``approx.hist``, ``approx.settings``, ...); only
        this class writes it. ``inference.hist`` is PyMC's own copy of the losses.
    objective : AmortizedObjective
        The objective graph and the compiled step.

    Raises
    ------
    AmortizationError
        For an option out of range, a model nothing can be minibatched in, or ``unit_data`` that
        does not match the model (naming the variable).

    Examples
    --------
    .. code-block:: python

        import pymc as pm
        from pymc_amortize import AmortizedVI
        from pymc_amortize.examples.paper import linear_data, linear_model

        with linear_model(linear_data(1_000, random_seed=0)):
            inference = AmortizedVI(batch_size=100, random_seed=1)
        approx = inference.fit(5_000)
        inference.refine(2_000)  # more steps, same optimizer state
        inference.record.settings["converged"]
    """

    def __init__(
        self,
        local: Mapping[str, EncoderInputSpec] | None = None,
        *,
        model: pm.Model | None = None,
        encoder: Encoder | Mapping[str, Encoder] | None = None,
        encoder_widths: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        activation: str | Callable = "relu",
        init_scale: float = 0.1,
        batch_size: int | None = None,
        standardize_inputs: bool = True,
        objective: Objective | None = None,
        random_seed: int | None = None,
        start: Mapping[str, np.ndarray] | None = None,
        start_sigma: Mapping[str, np.ndarray] | None = None,
        unit_data: xr.Dataset | None = None,
        unit_data_pool_mib: float = POOL_MIB,
        family: str | ConditionalGaussian | None = None,
        global_family: str = "meanfield",
    ):
        model = pm.modelcontext(model)
        local_family = resolve_family("conditional" if family is None else family)
        if global_family not in GLOBAL_FAMILIES:
            raise AmortizationError(
                f"global_family must be one of {sorted(GLOBAL_FAMILIES)}; got {global_family!r}."
            )
        analysis = analyze_model(model, local)
        source = buffers = None
        if not isinstance(unit_data_pool_mib, int | float) or not unit_data_pool_mib >= 0:
            raise AmortizationError(
                f"unit_data_pool_mib must be a number >= 0; got {unit_data_pool_mib!r}."
            )
        if unit_data is not None:
            if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
                raise AmortizationError(
                    "unit_data= reads minibatches of units from a dataset; give their size, "
                    f"batch_size= (a positive integer); got {batch_size!r}."
                )
            source = UnitSource(
                unit_data,
                analysis,
                int(batch_size),
                model=model,
            )
            analysis = source.analysis
            buffers = StepBuffers.for_source(source)
        batch_plate = batch_plate_of(analysis)
        if batch_size is not None:
            if batch_plate is None:
                raise AmortizationError(
                    "batch_size= needs a plate of units to minibatch, and this model has none "
                    f"(every latent is fitted mean-field):\n{analysis.summary()}"
                )
            if (
                not isinstance(batch_size, int | np.integer)
                or not 0 < batch_size <= batch_plate.size
            ):
                raise AmortizationError(
                    f"batch_size must be an integer in [1, {batch_plate.size}] (the number of "
                    f"units of plate '{batch_plate.name}'); got {batch_size!r}."
                )
            if batch_size == batch_plate.size and source is None:
                batch_size = None
        if batch_size is not None and objective is not None and objective.n_particles > 1:
            raise AmortizationError(
                f"objective={objective!r} needs batch_size=None: the importance-weighted bound is "
                "a log-mean-exp over the whole data set's weights, and a minibatch's scaled weight "
                "gives a biased estimate of it. Use the ELBO with batch_size, or the full batch."
            )
        conditional_plates, family_lines = _conditional_plates(
            model,
            analysis,
            local_family,
            batch_plate if batch_size is not None else None,
            named=family is not None,
        )
        if conditional_plates and source is not None:
            # The Newton steps read a unit's rows through the model's log density, and a streamed
            # fit holds only a template of a few units there: the encoder family, said so.
            conditional_plates = []
            family_lines = [
                f"local family, plate '{plate.name}': encoder q(z_n; f(x_n)) (the units stream "
                "from unit_data; the conditional family reads them from the model)"
                for plate in analysis.plates
            ]
        if not conditional_plates:
            local_family = None  # no plate takes it: the fit (and its saved file) is the encoder's
        if conditional_plates and start_sigma is None:
            # The conditional family's Newton steps are taken at draws of θ: PyMC's initial sd of
            # 0.69 on every global makes them wild (a Poisson GLMM's fit never recovered from it);
            # start q(θ) as narrow as the encoder family starts its q(z_n).
            start_sigma = {
                model.rvs_to_values[rv].name: init_scale
                for rv in model.free_RVs
                if rv.name not in set(analysis.latent_names)
            }
        #: The fit's record (losses, step times, settings, divergence, gap check): created here,
        #: shared with the approximation (which reads it) and updated only by this class.
        self.record = record = FitRecord()
        guide = AmortizedGuide(
            model,
            analysis,
            encoder=encoder,
            encoder_widths=encoder_widths,
            activation=activation,
            init_scale=init_scale,
            standardize_inputs=standardize_inputs,
            start=start,
            start_sigma=start_sigma,
            random_seed=random_seed,
            unit_source=source,
            step_buffers=buffers,
            local_family=local_family,
            conditional_plates=conditional_plates,
            global_family=global_family,
        )
        approx = AmortizedApproximation(guide, record)
        # Recorded in the results' attributes; save_approximation rebuilds the encoders from them.
        record.settings = {
            "batch_size": (
                batch_size if batch_size is not None else (batch_plate.size if batch_plate else 0)
            ),
            "analysis": "\n".join([analysis.summary(), *family_lines]),
            "init_scale": init_scale,
            "standardize_inputs": bool(standardize_inputs),
            "objective": type(objective).__name__ if objective is not None else "ELBO",
            "random_seed": random_seed,
            "encoder_widths": {name: list(w) for name, w in approx.encoder_widths.items()},
            "activation": activation if isinstance(activation, str) else repr(activation),
            "user_encoders": bool(encoder) or not isinstance(activation, str),
            "family": "encoder" if local_family is None else repr(local_family),
            "global_family": global_family,
            "conditional_plates": sorted(approx.conditional_plates),
        }
        if source is not None:
            record.settings["unit_data"] = (
                f"{source.size} units of '{source.dim}' read in {source.n_chunks} chunks "
                f"({', '.join(source.keys)}), a pool of {unit_data_pool_mib:g} MiB"
            )
        self.hist = np.asarray(())
        self.state = None
        # Set by fit, kept for refine: the convergence stop and the after-fit gap check's options.
        self._convergence: ELBOConvergence | None = None
        self._gap_check_options: dict | None = None
        self.objective = AmortizedObjective(
            approx,
            batch_size=batch_size,
            objective=objective if objective is not None else ELBO(),
            random_seed=random_seed,
            pool_mib=unit_data_pool_mib,
        )

    def _maybe_score(self, score):
        # The loss comes with every step for free, and PyMC's loop without loss assumes a
        # single-group approximation; always score.
        return True

    def fit(
        self,
        n: int = DEFAULT_MAX_STEPS,
        score: bool | None = None,
        callbacks: Sequence[Callable] | None = None,
        progressbar: bool = True,
        progressbar_theme=default_progress_theme,
        *,
        backend: str | None = None,
        include_transformed: bool = False,
        obj_n_mc: int = 1,
        obj_optimizer: Callable | None = None,
        total_grad_norm_constraint: float | None = None,
        compile_kwargs: dict | None = None,
        gap_check: bool | Mapping[str, object] = True,
        convergence: ELBOConvergence | bool | None = True,
    ) -> AmortizedApproximation:
        """Optimise until the loss has converged, at most ``n`` steps, and return the approximation.

        **Defaults that converge.** Without ``obj_optimizer``, the optimizer is Adam at learning
        rate 1e-2, multiplied by 0.1 on each plateau of the loss (twice: 1e-2 → 1e-3 → 1e-4), and
        the fit stops on the plateau at the last rate (:class:`~pymc_amortize.ELBOConvergence`:
        windows of 500 steps, a window is flat when the mean loss improved by less than 1e-4 of
        its magnitude or less than one standard error of the windows' noise, a plateau is two flat
        windows in a row). ``n`` is a cap (50,000 by default): a fit that reaches it before the
        last plateau warns :class:`~pymc_amortize.ConvergenceWarning` with the numbers and the
        call that continues it. ``approx.settings`` (and ``idata.amortized_fit.attrs``) record
        ``converged``, ``steps`` and ``final_learning_rate``.

        ``convergence``: True (default) stops as above; an :class:`~pymc_amortize.ELBOConvergence`
        sets its window, tolerance, patience and decays (one passed in ``callbacks`` is used the
        same way); False (or None) runs all ``n`` steps and never warns (the default learning
        rate still decays on plateaus). A user's ``obj_optimizer`` is used as given: nothing
        decays it, and the stop (when on) ends the fit on the first plateau.

        A step that makes the loss NaN or infinite stops the fit with a
        :class:`~pymc_amortize.DivergenceWarning`; the best parameters seen are restored, so the
        returned approximation is usable and ``refine`` resumes from it.

        ``gap_check`` (default True): after the steps, :func:`~pymc_amortize.gap_check` refines
        the q(z_n) of a sample of units per unit, q(θ) held, and warns
        :class:`~pymc_amortize.AmortizationGapWarning` when that clearly raises the ELBO (the
        encoder falls short of per-unit parameters). Its result is ``approx.gap_check`` and the
        ``gap_check*`` attributes of ``idata.amortized_fit``. A mapping passes options to
        :func:`~pymc_amortize.gap_check` (e.g. ``{"units": 200}``); False skips it. ``refine``
        repeats it with the same options.

        Parameters
        ----------
        n : int
            The cap on the steps.
        score : bool, optional
            Ignored: every step returns its loss (kept for ``pm.fit``).
        callbacks : sequence of callable, optional
            Called as ``callback(approx, losses, i)`` after each step, as in PyMC.
        progressbar, progressbar_theme
            PyMC's progress bar.
        backend, compile_kwargs
            How to compile the step, as for ``pm.fit`` (e.g. ``compile_kwargs={"mode": "JAX"}``).
            When neither names a mode, a step with conditional plates compiles with the C
            backend (``CONDITIONAL_STEP_MODE``; it reaches a first answer sooner), any other
            with PyMC's default.
        include_transformed : bool
            As for ``pm.fit``: q(θ)'s samples include the transformed variables.
        obj_n_mc, obj_optimizer, total_grad_norm_constraint
            Monte Carlo draws per step, PyMC optimizer and gradient clipping, as for ``pm.fit``.
        gap_check : bool or mapping
            The check after the steps (see above).
        convergence : bool or ELBOConvergence
            The stop (see above).

        Returns
        -------
        AmortizedApproximation
            The fitted approximation; its fit state is ``self.record``.
        """
        if not isinstance(n, int | np.integer) or n <= 0:
            raise AmortizationError(
                f"n (the number of steps) must be a positive integer; got {n!r}."
            )
        self._gap_check_options = _gap_check_options(gap_check)
        callbacks = list(callbacks or ())
        described = _describe_optimizer(obj_optimizer)
        self._convergence = stop = _convergence_callback(convergence, callbacks)
        if obj_optimizer is None:
            if stop is None:  # no stop, but the default rate still decays on plateaus
                stop = self._convergence = ELBOConvergence(stop=False)
                callbacks.append(stop)
            if stop.learning_rate is None:
                stop.learning_rate = pytensor.shared(
                    np.asarray(DEFAULT_LEARNING_RATE, dtype=pytensor.config.floatX),
                    name="learning_rate",
                )
            obj_optimizer = pm.adam(learning_rate=stop.learning_rate)
            described = (
                f"adam(learning_rate={stop.current_learning_rate():g}), ×{stop.decay:g} on each "
                f"plateau of the loss, {stop.decays} times"
            )
        self.record.settings |= {
            "obj_n_mc": obj_n_mc,
            "obj_optimizer": described,
            "convergence": (
                stop.describe() if stop is not None and stop.stop else "off (all n steps)"
            ),
        }
        timed_before, hist_before = self.record.step_seconds, self.hist.size
        approx = self._run(
            n,
            callbacks,
            progressbar,
            progressbar_theme,
            backend=backend,
            include_transformed=include_transformed,
            obj_n_mc=obj_n_mc,
            obj_optimizer=obj_optimizer,
            total_grad_norm_constraint=total_grad_norm_constraint,
            compile_kwargs=compile_kwargs,
        )
        self._record_step_seconds(timed_before, hist_before, first=0)
        self._warn_if_diverged()
        self._record_convergence(n, hist_before, refine=False)
        self._check_gap()
        return approx

    def _run(
        self,
        n: int,
        callbacks: list[Callable],
        progressbar: bool,
        progressbar_theme,
        *,
        backend: str | None,
        include_transformed: bool,
        compile_kwargs: dict | None,
        **step_options,
    ) -> AmortizedApproximation:
        """PyMC's ``Inference.fit`` less its write of ``approx.hist``: compile, loop, record.

        The approximation's fit state is the :class:`FitRecord` this class updates, so the loss
        history goes to ``record.hist`` (``inference.hist`` stays as PyMC's loop keeps it).
        """
        compile_kwargs = resolve_backend_compile_kwargs(backend, compile_kwargs)
        if "mode" not in compile_kwargs and self.approx.conditional_plates:
            # The conditional family's step holds third derivatives of the log joint: on real
            # radon with empty caches NUMBA takes 47 CPU s to its first step and C 17 s, at
            # 0.61 against 0.77 ms a step, so C reaches a first answer sooner unless a fit runs
            # ~190,000 steps. The encoder family's step compiles alike on both and keeps
            # PyMC's default.
            compile_kwargs["mode"] = CONDITIONAL_STEP_MODE
        step = self.objective.step_function(
            score=True, compile_kwargs=compile_kwargs, **step_options
        )
        self.state = self._iterate_with_loss(0, n, step, progressbar, progressbar_theme, callbacks)
        self.record.hist = self.hist
        approx = self.approx
        for group in approx.groups:
            group.include_transformed = include_transformed
        # A JAX step leaves jax.Arrays in the parameters; other backends need NumPy arrays.
        for param in approx.params:
            if hasattr(param, "container") and not isinstance(
                param.container.storage[0], np.ndarray
            ):
                param.set_value(np.asarray(param.get_value()))
        return approx

    def refine(
        self, n: int, progressbar: bool = True, progressbar_theme=default_progress_theme
    ) -> None:
        """Run up to ``n`` more steps from where the last run stopped, with its optimizer state,
        learning rate and convergence stop (whose windows start afresh); ``self.record`` is
        extended and the gap check repeated as after ``fit``."""
        if not isinstance(n, int | np.integer) or n <= 0:
            raise AmortizationError(
                f"n (the number of steps) must be a positive integer; got {n!r}."
            )
        stop = self._convergence
        if stop is not None:
            stop.reset()
        timed_before, hist_before = self.record.step_seconds, self.hist.size
        first = len(self.objective.guard.seconds) if self.objective.guard is not None else 0
        super().refine(n, progressbar, progressbar_theme)
        self.record.hist = self.hist
        self._record_step_seconds(timed_before, hist_before, first=first)
        self._warn_if_diverged()
        self._record_convergence(n, hist_before, refine=True)
        self._check_gap()

    def _record_convergence(self, n: int, hist_before: int, *, refine: bool) -> None:
        """Record in ``record.settings`` whether the run converged; warn when the cap cut it."""
        stop = self._convergence
        run = int(self.hist.size - hist_before)
        record = {"steps": int(self.hist.size), "max_steps": int(n)}
        if stop is None:
            self.record.settings |= record | {"converged": None}
            return
        record |= {
            "converged": bool(stop.converged),
            "final_learning_rate": stop.current_learning_rate(),
            "learning_rate_decayed_at": ", ".join(f"{i:,}" for i in stop.decayed_at) or "never",
            "last_relative_change": stop.last_change,
        }
        self.record.settings |= record
        if stop.converged or not stop.stop or self.record.divergence is not None or run < n:
            return
        warnings.warn(
            _cap_message(stop, n, run, total=int(self.hist.size), refine=refine),
            ConvergenceWarning,
            stacklevel=4,
        )

    def _check_gap(self) -> None:
        """The check after the steps (see ``fit``'s ``gap_check``): never fails the fit."""
        from pymc_amortize.diagnostics import GapCheck
        from pymc_amortize.diagnostics import gap_check as run_check

        options = self._gap_check_options
        if options is None:
            return
        if self.record.divergence is not None:  # the DivergenceWarning said it all
            check = GapCheck({}, False, 0.0, "the fit diverged (see approx.divergence)")
            self.record.gap_check = check
            self.record.settings |= check.attributes()
            return
        options = {"random_seed": self.objective.random_seed, **options}
        try:
            check = run_check(self.approx, **options)
        except Exception as error:  # a diagnostic must not lose the user a finished fit
            check = GapCheck({}, False, 0.0, f"the check failed: {type(error).__name__}: {error}")
            warnings.warn(
                f"The amortization-gap check after the fit failed ({type(error).__name__}: "
                f"{error}); the fit itself is fine. Run pymc_amortize.amortization_gap(approx) "
                "to check the gap, or pass gap_check=False.",
                UserWarning,
                stacklevel=4,
            )
        self.record.gap_check = check
        self.record.settings |= check.attributes()
        if check.flagged:
            warnings.warn(check.warning_message(), AmortizationGapWarning, stacklevel=4)

    def _record_step_seconds(self, timed_before: np.ndarray, hist_before: int, *, first: int):
        """Append this run's step times to ``record.step_seconds``, aligned with ``hist``."""
        n_steps = self.hist.size - hist_before
        timed = np.asarray(self.objective.guard.seconds[first : first + n_steps], dtype=float)
        # An interrupted run can keep a loss without its time; pad so the arrays stay aligned.
        timed = np.pad(timed, (0, n_steps - timed.size), constant_values=np.nan)
        self.record.step_seconds = np.concatenate([timed_before, timed])

    def _iterate_with_loss(self, s, n, step_func, progressbar, progressbar_theme, callbacks):
        if n >= 10:
            return super()._iterate_with_loss(
                s, n, step_func, progressbar, progressbar_theme, callbacks
            )
        # PyMC 6.4's loop, stopped early in a run of fewer than 10 steps, logs `scores[i]` after
        # cutting `scores` to i entries and so raises IndexError. For such short runs we keep the
        # losses ourselves and finish its bookkeeping (hist, State) when that happens.
        losses: list[float] = []

        def recorded_step():
            loss = step_func()
            losses.append(loss)
            return loss

        recorded_step.profile = None
        try:
            state = super()._iterate_with_loss(
                s, n, recorded_step, progressbar, progressbar_theme, callbacks
            )
            return state._replace(step=step_func)  # refine steps without the recorder
        except IndexError:
            guard = self.objective.guard
            if guard is None or guard.diverged is None:
                raise
            self.hist = np.concatenate([self.hist, np.asarray(losses, dtype=float)])
            return State(len(losses) + s, step=step_func, callbacks=callbacks, score=True)

    def _warn_if_diverged(self):
        guard = self.objective.guard
        if guard is None:
            return
        guard.check_final_state()
        self.record.divergence = guard.diverged
        if guard.diverged is not None:
            warnings.warn(guard.diverged.message(), DivergenceWarning, stacklevel=3)
            guard.diverged = None
