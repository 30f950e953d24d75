"""Diagnostics of an amortized fit against per-unit (F-VI) parameters.

- :mod:`~pymc_amortize.diagnostics.meanfield`: the factorised Gaussian of a fit
  (:func:`meanfield_of`) and its ELBO on common random numbers (:class:`MeanFieldELBO`);
- :mod:`~pymc_amortize.diagnostics.semi_amortized`: per-unit F-VI started at the A-VI solution
  (:func:`semi_amortize`), or at any fit's marginals (:func:`fvi_from_fit`);
- :mod:`~pymc_amortize.diagnostics.gap`: the amortization gap (:func:`amortization_gap`, the
  paper's §5 diagnostic), in total, per plate and per unit;
- :mod:`~pymc_amortize.diagnostics.sampled_gap`: the cheap check after every fit
  (:func:`gap_check`: a sample of units refined with q(θ) held).

The names below are the public API of ``pymc_amortize.diagnostics``.
"""

from pymc_amortize.diagnostics.gap import AmortizationGap, amortization_gap
from pymc_amortize.diagnostics.meanfield import (
    GaussianFactor,
    MeanField,
    MeanFieldELBO,
    meanfield_of,
)
from pymc_amortize.diagnostics.sampled_gap import (
    GAP_CHECK_DEFAULTS,
    GapCheck,
    PlateGapCheck,
    gap_check,
)
from pymc_amortize.diagnostics.semi_amortized import (
    SemiAmortizedApproximation,
    fvi_from_fit,
    semi_amortize,
)

__all__ = [
    "GAP_CHECK_DEFAULTS",
    "AmortizationGap",
    "GapCheck",
    "GaussianFactor",
    "MeanField",
    "MeanFieldELBO",
    "PlateGapCheck",
    "SemiAmortizedApproximation",
    "amortization_gap",
    "fvi_from_fit",
    "gap_check",
    "meanfield_of",
    "semi_amortize",
]
