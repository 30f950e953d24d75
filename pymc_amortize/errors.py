"""Exceptions and warnings raised by pymc_amortize, and the argument checks that raise them."""

import numpy as np

__all__ = [
    "AmortizationError",
    "AmortizationGapWarning",
    "ChunkOrderWarning",
    "ConvergenceWarning",
    "CouplingWarning",
    "DivergenceWarning",
    "OutOfTrainingRangeWarning",
    "as_clause",
    "require_integer",
    "require_number",
    "require_numeric",
]


class AmortizationError(ValueError):
    """A model, its data or an option cannot be used for amortized VI; the message says why."""


class AmortizationGapWarning(UserWarning):
    """The check after ``pm.fit(method="amortized")`` found that per-unit parameters, started at
    the encoder's q(z_n) with q(θ) held, raise the ELBO clearly: the encoder cannot represent these
    units' posteriors (e.g. a prior that couples the units, a term it does not read) or the fit
    has not converged. The message gives the gain in nats and what to run; the check's result is
    ``approx.gap_check``; turn it off with ``gap_check=False``."""


class ConvergenceWarning(UserWarning):
    """``pm.fit(method="amortized")`` ran all its ``n`` steps (the cap) before its loss flattened
    (see :class:`~pymc_amortize.ELBOConvergence`): the fit may be far from its optimum. The message
    gives the windowed loss's last relative changes, the steps run and the call that continues
    (``inference.refine(...)``) or refits with a larger ``n``; ``approx.settings["converged"]`` is
    False. A fit run with ``convergence=False`` never warns."""


class DivergenceWarning(RuntimeWarning):
    """The fit met a NaN or infinite loss and stopped, keeping the best parameters seen."""


class OutOfTrainingRangeWarning(UserWarning):
    """New units' encoder inputs lie outside the range seen in training: their q(z_n) is an
    extrapolation of the encoder. The message names the units and by how much; silence it with
    ``check_range=False``."""


class ChunkOrderWarning(UserWarning):
    """The chunks of ``unit_data`` differ more than units stored in random order would, and the
    fit holds only some of them at a time: neighbouring batches then come from a few alike chunks,
    which slows the fit and can leave its globals off. Store the units shuffled, or give the pool
    the memory to hold the whole dataset (``unit_data_pool_mib``)."""


class CouplingWarning(UserWarning):
    """``local=`` amortizes a latent whose units the model couples (a random walk, an AR or
    MvNormal prior over the units, a likelihood reading neighbours' latents): the encoder's
    q(z_n) cannot reach what per-unit parameters reach. The message names the coupling."""


def as_clause(error: Exception) -> str:
    """An error's message to follow a colon in another message: first letter lower case, no
    final full stop."""
    text = str(error).strip().rstrip(".")
    return text[:1].lower() + text[1:]


def require_integer(value: object, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int, after checking that it is an integer of at least ``minimum``.

    The message names the argument: ``"{name} must be a positive integer; got 0."``.
    """
    if not isinstance(value, int | np.integer) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise AmortizationError(f"{name} must be {need}; got {value!r}.")
    return int(value)


def require_number(value: object, name: str, *, minimum: float = 0.0) -> float:
    """``value`` as a float, after checking that it is a real number of at least ``minimum``
    (NaN is refused)."""
    if not isinstance(value, int | float | np.integer | np.floating) or not value >= minimum:
        need = "a non-negative number" if minimum == 0 else f"a number >= {minimum:g}"
        raise AmortizationError(f"{name} must be {need}; got {value!r}.")
    return float(value)


def require_numeric(array: object, subject: str) -> np.ndarray:
    """``array`` as a NumPy array, after checking that its dtype is numeric (bool, integer or
    float): ``"{subject} has dtype <U1; it must be numeric."``."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise AmortizationError(f"{subject} has dtype {array.dtype}; it must be numeric.")
    return array
