"""Amortized variational inference for PyMC.

Importing the package makes ``pm.fit(method="amortized")`` available; every other ``pm.fit``
method behaves as before.
"""

from pymc_amortize import registration
from pymc_amortize._version import __version__ as __version__
from pymc_amortize.callbacks import ELBOConvergence
from pymc_amortize.compare import Comparison, compare
from pymc_amortize.diagnostics import (
    AmortizationGap,
    GapCheck,
    MeanFieldELBO,
    SemiAmortizedApproximation,
    amortization_gap,
    gap_check,
    semi_amortize,
)
from pymc_amortize.errors import (
    AmortizationError,
    AmortizationGapWarning,
    ChunkOrderWarning,
    ConvergenceWarning,
    CouplingWarning,
    DivergenceWarning,
    OutOfTrainingRangeWarning,
)
from pymc_amortize.fit import fit_amortized
from pymc_amortize.fitting.guard import DivergenceInfo
from pymc_amortize.fitting.objectives import ELBO, IWAE
from pymc_amortize.fitting.vi import AmortizedVI
from pymc_amortize.guide.conditional import ConditionalGaussian
from pymc_amortize.guide.encoders import MLPEncoder, PooledEncoder
from pymc_amortize.model.analysis import analyze_model
from pymc_amortize.model.types import (
    IndexedLocal,
    LocalLatent,
    MeanFieldLatent,
    ModelAnalysis,
    Plate,
)
from pymc_amortize.posterior.approximation import AmortizedApproximation
from pymc_amortize.posterior.local import LocalPosterior
from pymc_amortize.psis import PSISDiagnostic, psis_diagnostic
from pymc_amortize.serialization import load_approximation, save_approximation

registration.install()

__all__ = [
    "ELBO",
    "IWAE",
    "AmortizationError",
    "AmortizationGap",
    "AmortizationGapWarning",
    "AmortizedApproximation",
    "AmortizedVI",
    "ChunkOrderWarning",
    "Comparison",
    "ConditionalGaussian",
    "ConvergenceWarning",
    "CouplingWarning",
    "DivergenceInfo",
    "DivergenceWarning",
    "ELBOConvergence",
    "GapCheck",
    "IndexedLocal",
    "LocalLatent",
    "LocalPosterior",
    "MLPEncoder",
    "MeanFieldELBO",
    "MeanFieldLatent",
    "ModelAnalysis",
    "OutOfTrainingRangeWarning",
    "PSISDiagnostic",
    "Plate",
    "PooledEncoder",
    "SemiAmortizedApproximation",
    "amortization_gap",
    "analyze_model",
    "compare",
    "fit_amortized",
    "gap_check",
    "load_approximation",
    "psis_diagnostic",
    "save_approximation",
    "semi_amortize",
]
