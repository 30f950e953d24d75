"""Entry points: ``fit_amortized`` and the ``pm.fit(method="amortized")`` route."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr

from pymc_amortize.diagnostics import semi_amortize
from pymc_amortize.errors import AmortizationError, DivergenceWarning
from pymc_amortize.fitting.vi import DEFAULT_MAX_STEPS, AmortizedVI
from pymc_amortize.guide.encoders import Encoder
from pymc_amortize.model.types import EncoderInputSpec
from pymc_amortize.posterior.approximation import AmortizedApproximation

__all__ = ["fit_amortized"]

_CONSTRUCTOR_OPTIONS = set(inspect.signature(AmortizedVI.__init__).parameters) - {"self"}
_FIT_OPTIONS = set(inspect.signature(AmortizedVI.fit).parameters) - {"self", "n"}


def fit_from_pm_fit(arguments: dict[str, Any]) -> AmortizedApproximation:
    """Serve ``pm.fit(method="amortized", ...)``; ``arguments`` are pm.fit's bound arguments.

    ``semi_amortize=n`` adds ``n`` steps of per-unit F-VI after the A-VI fit (semi-amortized VI,
    see :func:`pymc_amortize.semi_amortize`) and returns a ``SemiAmortizedApproximation``.
    """
    options = dict(arguments.pop("kwargs", {}))
    semi_amortize_steps = options.pop("semi_amortize", None)
    inf_kwargs = dict(arguments.pop("inf_kwargs", None) or {})
    arguments.pop("method")
    n = arguments.pop("n", DEFAULT_MAX_STEPS)
    constructor = {
        k: v for k, v in arguments.items() if k in _CONSTRUCTOR_OPTIONS and v is not None
    }
    constructor |= inf_kwargs
    fit_options = {k: v for k, v in arguments.items() if k in _FIT_OPTIONS}
    for key, value in options.items():
        if key in _CONSTRUCTOR_OPTIONS:
            constructor[key] = value
        elif key in _FIT_OPTIONS:
            fit_options[key] = value
        else:
            allowed = sorted(_CONSTRUCTOR_OPTIONS | _FIT_OPTIONS | {"semi_amortize"})
            raise TypeError(
                f"pm.fit(method='amortized') got an unknown option {key!r}. Options: "
                f"{', '.join(allowed)}."
            )
    unknown_inf = set(constructor) - _CONSTRUCTOR_OPTIONS
    if unknown_inf:
        raise TypeError(f"inf_kwargs has unknown option(s) {sorted(unknown_inf)} for AmortizedVI.")
    if semi_amortize_steps is not None:
        # Every unit gets its own parameters next: the check for a gap they would close is moot.
        fit_options.setdefault("gap_check", False)
    approx = _fit(constructor, n, fit_options)
    if semi_amortize_steps is None:
        return approx
    return semi_amortize(
        approx,
        semi_amortize_steps,
        random_seed=constructor.get("random_seed"),
        progressbar=fit_options.get("progressbar", True),
    )


def _fit(
    constructor: dict[str, Any], n: int, fit_options: dict[str, Any]
) -> AmortizedApproximation:
    """``AmortizedVI(**constructor).fit(n, **fit_options)``, with the default family's fallback.

    With no ``family=`` given, plates the analysis amortizes get the conditional family, whose
    Newton steps need a log density that is not far from concave in each unit's latents. Where
    they fail on a model (the fit diverges: a curvature near zero or negative, as in the paper's
    nonlinear model x_n ~ N(θ + z_n(1 + sin z_n), cos² z_n)), the default must still give an
    answer: the encoder family is fitted instead, and a warning says why. A family the user
    names is kept, diverged or not (the DivergenceWarning says what to do).
    """
    inference = AmortizedVI(**constructor)
    if "family" in constructor or not inference.approx.conditional_plates:
        return inference.fit(n, **fit_options)
    with warnings.catch_warnings():
        # Replaced by the fallback's own warning below; every other warning passes.
        warnings.simplefilter("ignore", DivergenceWarning)
        approx = inference.fit(n, **fit_options)
    divergence = approx.divergence
    if divergence is None:
        return approx
    params = ", ".join(divergence.nonfinite_params) or "the loss alone"
    warnings.warn(
        f"The conditional family (the default) diverged at step {divergence.step} on this model "
        f"(non-finite: {params}): its Newton steps need a log density close to concave in each "
        f"unit's latents (plates {', '.join(sorted(approx.conditional_plates))}). Fitted the "
        "encoder family q(z_n; f(x_n)) instead. Pass family='encoder' to skip the attempt, or "
        "family='conditional' to keep the conditional fit.",
        DivergenceWarning,
        stacklevel=4,
    )
    return AmortizedVI(**constructor, family="encoder").fit(n, **fit_options)


def fit_amortized(
    model: pm.Model | None = None,
    *,
    local: Mapping[str, EncoderInputSpec] | None = None,
    n: int = DEFAULT_MAX_STEPS,
    draws: int = 1000,
    encoder: Encoder | Mapping[str, Encoder] | None = None,
    encoder_widths: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    activation: str | Callable = "relu",
    batch_size: int | None = None,
    obj_n_mc: int = 1,
    obj_optimizer: Callable | None = None,
    random_seed: int | None = None,
    progressbar: bool = True,
    **options: Any,
) -> xr.DataTree:
    """Fit amortized VI and return posterior draws as ArviZ data.

    The pymc-extras style entry point; ``pm.fit(method="amortized", ...)`` takes the same options
    and returns the approximation itself (for ``encode`` and ``sample_new_units``).

    Parameters
    ----------
    model : pm.Model, optional
        Taken from the context when omitted.
    local : mapping, optional
        ``{latent: encoder inputs}``; detected from the model's dims when omitted.
    n : int
        The cap on the optimisation steps (50,000); the fit stops earlier when its loss has
        converged (``convergence=False`` runs all ``n``; see :meth:`AmortizedVI.fit`).
    draws : int
        Posterior draws in the result.
    encoder, encoder_widths, activation
        The encoder: a user encoder, or the widths (per latent with a mapping; sized by
        :func:`~pymc_amortize.guide.encoders.default_encoder_widths` when omitted) and activation of
        the default MLP.
    batch_size : int, optional
        Units per step (full batch when omitted).
    obj_n_mc : int
        Monte Carlo draws per step.
    obj_optimizer : callable, optional
        A PyMC optimizer, e.g. ``pm.adam(learning_rate=1e-2)``, used as given; when omitted, Adam at
        1e-2 decayed ×0.1 on each plateau of the loss, twice, then stopped (see
        :meth:`AmortizedVI.fit`).
    random_seed : int, optional
        Seeds initial weights, draws and minibatches.
    progressbar : bool
        Show PyMC's progress bar.
    **options
        Further options of :class:`~pymc_amortize.AmortizedVI` and its ``fit``, e.g.
        ``gap_check=False`` to skip the check after the fit (:func:`~pymc_amortize.gap_check`;
        its result is in ``idata.amortized_fit.attrs["gap_check"]``).

    Returns
    -------
    xarray.DataTree
        ``posterior`` and ``observed_data`` as from ``pm.sample``; ``amortized_fit`` (loss and
        wall time per step, the method and settings as attributes), ``variational_params`` and
        ``encoder_outputs`` (see :mod:`pymc_amortize.posterior.idata`).

    Examples
    --------
    .. code-block:: python

        import numpy as np
        import pymc as pm
        from pymc_amortize import fit_amortized

        x = np.random.default_rng(0).normal(size=500)
        with pm.Model(coords={"unit": range(500)}) as model:
            theta = pm.Normal("theta", 0, 10)
            z = pm.Normal("z", 0, 1, dims="unit")
            pm.Normal("x", theta + z, 1, observed=x, dims="unit")
            idata = fit_amortized(n=2_000, encoder_widths=(), random_seed=1)
    """
    model = pm.modelcontext(model)
    constructor = {k: v for k, v in options.items() if k in _CONSTRUCTOR_OPTIONS}
    fit_options = {k: v for k, v in options.items() if k in _FIT_OPTIONS}
    unknown = set(options) - set(constructor) - set(fit_options)
    if unknown:
        raise TypeError(f"fit_amortized got unknown option(s) {sorted(unknown)}.")
    if not isinstance(draws, int | np.integer) or draws <= 0:
        raise AmortizationError(f"draws must be a positive integer; got {draws!r}.")
    constructor |= {
        "local": local,
        "model": model,
        "encoder": encoder,
        "encoder_widths": encoder_widths,
        "activation": activation,
        "batch_size": batch_size,
        "random_seed": random_seed,
    }
    fit_options |= {
        "progressbar": progressbar,
        "obj_n_mc": obj_n_mc,
        "obj_optimizer": obj_optimizer,
    }
    approx = _fit(constructor, n, fit_options)
    return approx.sample(draws, random_seed=random_seed)
