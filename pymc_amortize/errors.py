"""Exceptions and warnings raised by pymc_amortize."""

__all__ = ["AmortizationError", "DivergenceWarning", "OutOfTrainingRangeWarning"]


class AmortizationError(ValueError):
    """A model, its data or an option cannot be used for amortized VI; the message says why."""


class DivergenceWarning(RuntimeWarning):
    """The fit met a NaN or infinite loss and stopped, keeping the best parameters seen."""


class OutOfTrainingRangeWarning(UserWarning):
    """New units' encoder inputs lie outside the range seen in training: their q(z_n) is an
    extrapolation of the encoder. The message names the units and by how much; silence it with
    ``check_range=False``."""
