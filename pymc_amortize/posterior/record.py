"""The record of a fit: what the steps did, kept as one explicit value.

One writer: the fitting adapter (:class:`~pymc_amortize.AmortizedVI`) creates the record with the
approximation and is the only code that updates it (after each ``fit`` / ``refine`` run). The
approximation and the results read it (``approx.hist``, ``approx.settings``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FitRecord"]


@dataclass
class FitRecord:
    """Losses, step times, settings and outcome of an amortized fit.

    Attributes
    ----------
    hist : ndarray, shape (steps,)
        The loss (−ELBO estimate, or the objective's) of each step, as PyMC's ``approx.hist``.
    step_seconds : ndarray, shape (steps,)
        Wall-clock seconds of each step, aligned with ``hist`` (NaN where a step was cut).
    settings : dict
        The fit's options and outcome (batch size, family, analysis summary, whether it converged,
        the after-fit gap check's attributes), written into the results' attributes.
    divergence : DivergenceInfo or None
        Where the last run diverged (its parameters restored to the last finite step), or None.
    gap_check : GapCheck or None
        The after-fit amortization-gap check (see :func:`pymc_amortize.gap_check`), or None.
    """

    hist: np.ndarray = field(default_factory=lambda: np.asarray(()))
    step_seconds: np.ndarray = field(default_factory=lambda: np.asarray(()))
    settings: dict[str, object] = field(default_factory=dict)
    divergence: object | None = None
    gap_check: object | None = None
