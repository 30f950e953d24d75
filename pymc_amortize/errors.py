"""Exceptions and warnings raised by pymc_amortize."""

__all__ = ["AmortizationError", "DivergenceWarning"]


class AmortizationError(ValueError):
    """A model, its data or an option cannot be used for amortized VI; the message says why."""


class DivergenceWarning(RuntimeWarning):
    """The fit met a NaN or infinite loss and stopped, keeping the best parameters seen."""
