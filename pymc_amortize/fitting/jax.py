"""What compiling the training step with PyTensor's JAX linker needs: every fit's step goes
through :func:`static_sizes` when its mode is JAX (:mod:`pymc_amortize.fitting.host_noise` has the
optional host-noise driver)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytensor.tensor as pt
from pytensor.compile.mode import get_mode
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Variable
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import ancestors
from pytensor.link.jax.linker import JAXLinker

__all__ = ["is_jax_mode", "static_sizes"]


def is_jax_mode(mode: Any) -> bool:
    """Whether ``mode`` (a name such as ``"JAX"`` or a ``Mode``) compiles with the JAX linker."""
    return mode is not None and isinstance(get_mode(mode).linker, JAXLinker)


def static_sizes(outputs: Sequence[Variable]) -> list[Variable]:
    """``outputs`` with every integer scalar shared variable replaced by a constant of its value.

    The step reads each plate's number of units (and the dims' lengths PyMC keeps shared) from
    integer scalar shared variables, so that NUMBA reuses its compiled code for a new data size.
    JAX traces shapes as Python integers, and a shape built from a traced value fails with
    "Shapes must be 1D sequences of concrete values of integer type". PyTensor's JAX linker makes
    such an input static only when shape ops are its sole clients; these are also used as values
    (the N / B scale, the unit draw's bound), so they are frozen here. A later change of one of
    them needs a new compilation, which JAX would need anyway for the new shapes.
    """
    sizes = [
        var
        for var in ancestors(outputs)
        if isinstance(var, SharedVariable)
        and getattr(var.type, "ndim", None) == 0
        and var.type.dtype.startswith(("int", "uint"))
    ]
    if not sizes:
        return list(outputs)
    constants = {var: pt.constant(var.get_value(), dtype=var.type.dtype) for var in sizes}
    return graph_replace(list(outputs), constants, strict=False)
