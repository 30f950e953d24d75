"""Functions compiled once per fit (probes, ``encode``, transforms), and the latents' transforms."""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt

from pymc_amortize.model.types import LocalLatent

__all__ = ["LatentTransforms", "compile_once", "first_line"]


def compile_once(inputs: list, outputs):
    """Compile a function that runs once or a few times per fit (probes, encode, transforms).

    FAST_COMPILE skips the NUMBA code generation that the step needs: on a model's first fit
    NUMBA took 3.5 s to compile ``encode`` (whose arithmetic on all units is a few matrix products
    that NumPy's BLAS does as fast).
    """
    with warnings.catch_warnings():
        # FAST_COMPILE's rewrites read PyTensor's BLAS flags, which warns on a pip install;
        # these functions run NumPy's BLAS through the Python linker, so the warning would mislead.
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
        return pytensor.function(inputs, outputs, mode="FAST_COMPILE", on_unused_input="ignore")


def first_line(error: Exception) -> str:
    """The first line of an error's message, for a one-line report."""
    return (str(error).strip().splitlines() or [""])[0]


class LatentTransforms:
    """Maps a local latent's draws between its value (unconstrained) space and its own
    (constrained) scale, each map compiled on first use and kept."""

    def __init__(self, model: pm.Model):
        self.model = model
        self._fns: dict[tuple[str, str], pytensor.compile.Function | None] = {}

    def fn(self, latent: LocalLatent, direction: str):
        """Compiled map of a latent's draws (with a leading draw axis) in ``direction``
        (``"backward"``: to the constrained scale; ``"forward"``: to the value space), or None
        for an untransformed latent."""
        key = (latent.name, direction)
        if key not in self._fns:
            rv = self.model[latent.name]
            transform = self.model.rvs_to_transforms.get(rv)
            if transform is None:
                self._fns[key] = None
            else:
                ndim = 1 + rv.type.ndim  # a leading draw axis
                x = pt.tensor("x", dtype=rv.type.dtype, shape=(None,) * ndim)
                method = transform.backward if direction == "backward" else transform.forward
                self._fns[key] = compile_once([x], method(x, *rv.owner.inputs))
        return self._fns[key]

    def to_constrained(self, latent: LocalLatent, values: np.ndarray) -> np.ndarray:
        """Value-space draws of ``latent`` on its own scale."""
        fn = self.fn(latent, "backward")
        return (
            values if fn is None else np.asarray(fn(values.astype(self.model[latent.name].dtype)))
        )

    def to_value(self, latent: LocalLatent, values: np.ndarray) -> np.ndarray:
        """Draws of ``latent`` on its own scale, on its value space."""
        fn = self.fn(latent, "forward")
        return (
            values if fn is None else np.asarray(fn(values.astype(self.model[latent.name].dtype)))
        )
