"""The encoders' weights as one flat shared vector, and each weight as a slice of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.errors import AmortizationError

__all__ = ["EncoderWeight", "FlatWeights", "flatten_weights"]


class EncoderWeight:
    """One encoder weight, stored as a slice of the flat ``encoder_weights`` vector.

    Reads and writes like a shared variable (``name``, ``get_value``, ``set_value``), for
    checkpoints, divergence reports and users; the compiled step sees only the flat vector.
    """

    def __init__(self, flat: SharedVariable, name: str | None, offset: int, shape, dtype):
        self.flat, self.name, self.offset = flat, name, int(offset)
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))

    def get_value(self, borrow: bool = False) -> np.ndarray:
        piece = self.flat.get_value(borrow=True)[self.offset : self.offset + self.size]
        value = piece.reshape(self.shape).astype(self.dtype, copy=False)
        return value if borrow else value.copy()

    def set_value(self, value, borrow: bool = False) -> None:
        value = np.asarray(value)
        if value.shape != self.shape:
            raise AmortizationError(
                f"Encoder weight {self.name!r} has shape {self.shape}; got a value of shape "
                f"{value.shape}."
            )
        flat = self.flat.get_value(borrow=False)
        flat[self.offset : self.offset + self.size] = value.ravel()
        self.flat.set_value(flat, borrow=True)

    def __repr__(self) -> str:
        return f"EncoderWeight({self.name!r}, shape={self.shape})"


class FlatWeights(NamedTuple):
    """Every encoder weight of every latent in one flat shared vector.

    Attributes
    ----------
    flat : SharedVariable or None
        The vector (None without encoder weights): the step's one encoder parameter.
    views : dict
        Per latent, each of its encoders' own shared variables -> its (symbolic) view of ``flat``.
    params : list of EncoderWeight
        Each weight, read and written as a slice of ``flat``.
    """

    flat: SharedVariable | None
    views: dict[str, dict[SharedVariable, TensorVariable]]
    params: list[EncoderWeight]


def flatten_weights(own_weights: Mapping[str, list[SharedVariable]]) -> FlatWeights:
    """Copy every encoder weight (``{latent: its encoder's shared variables}``) into one flat
    shared vector, the guide's ``encoder_weights``.

    Each encoder's graph reads its weights as reshaped pieces of that vector (one ``Split``,
    whose gradient is one ``Join``), so a step takes one encoder parameter and one moment per
    optimiser slot whatever the encoders' layers: PyTensor's numba wrapper types every argument
    in Python on each call (≈ 5 µs each, ``benchmarks/perf/NOTES.md``). The encoders' own
    shared variables (a user's encoder included) keep their initial values; the trained ones
    live in ``encoder_weights`` and are read and written per weight through ``encoder_params``.
    A weight used by two latents' encoders gets a slice for each, trained separately.
    """
    entries = [(name, p) for name, params in own_weights.items() for p in params]
    views: dict[str, dict] = {name: {} for name in own_weights}
    params: list[EncoderWeight] = []
    if not entries:
        return FlatWeights(None, views, params)
    values = [np.asarray(p.get_value(borrow=True)) for _, p in entries]
    dtype = np.result_type(*values)
    flat = pytensor.shared(
        np.concatenate([v.ravel() for v in values]).astype(dtype), name="encoder_weights"
    )
    sizes = [int(v.size) for v in values]
    pieces = pt.split(flat, sizes, n_splits=len(sizes)) if len(sizes) > 1 else [flat]
    offset = 0
    for (name, param), value, piece in zip(entries, values, pieces, strict=True):
        view = piece.reshape(value.shape)
        if view.dtype != param.dtype:
            view = view.astype(param.dtype)
        view = param.type.filter_variable(view)
        view.name = param.name
        views[name][param] = view
        params.append(EncoderWeight(flat, param.name, offset, value.shape, param.dtype))
        offset += value.size
    return FlatWeights(flat, views, params)
