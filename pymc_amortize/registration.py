"""Make ``pm.fit(method="amortized")`` work.

PyMC 6.4's ``pm.fit`` picks its method from a dict rebuilt inside the function on every call, so
there is no registry to add to. We bind a thin wrapper in its place (as ``pymc.fit``,
``pymc.variational.fit`` and ``pymc.variational.inference.fit``): it handles ``"amortized"`` and
hands every other call, arguments untouched, to the original. Installing twice is a no-op.
Code that did ``from pymc import fit`` before the import keeps the original.
"""

from __future__ import annotations

import functools
import inspect

import pymc
import pymc.variational
import pymc.variational.inference

__all__ = ["install", "original_fit"]

METHOD = "amortized"

original_fit = getattr(
    pymc.variational.inference.fit, "__wrapped_by_pymc_amortize__", pymc.variational.inference.fit
)
_SIGNATURE = inspect.signature(original_fit)


@functools.wraps(original_fit)
def fit(*args, **kwargs):
    bound = _SIGNATURE.bind_partial(*args, **kwargs)
    method = bound.arguments.get("method", "advi")
    if not (isinstance(method, str) and method.lower() == METHOD):
        return original_fit(*args, **kwargs)
    from pymc_amortize.fit import fit_from_pm_fit

    return fit_from_pm_fit(bound.arguments)


fit.__wrapped_by_pymc_amortize__ = original_fit


def install() -> None:
    """Bind the wrapper wherever PyMC exposes ``fit``; idempotent."""
    for namespace in (pymc, pymc.variational, pymc.variational.inference):
        namespace.fit = fit
