"""The conditional family's q(z_n | θ, x_n) on units given by their own data.

A fit with ``family="conditional"`` draws each unit's locals by Newton steps on the model's log
density given a draw of the globals (:mod:`pymc_amortize.guide.conditional`). For units that are not
the model's own in-memory units as a whole (new units: ``encode(new_data)``,
``sample_new_units``; a chunk of the fitted units: ``encode_dataset``, ``sample_dataset``) the
steps run on *those units'* log joint: the model's log density with the plate's unit- and
row-aligned data (every array a minibatch of the plate would slice, the observations included)
and its index replaced by the units' own, the very graph a minibatch step of the fit evaluates,
linearised at the encoder's output for those units. :class:`PlateConditional` compiles it once
per fit and plate.

Given S draws θ_s of q(θ) it returns, per unit, the draws z_n ~ q(z_n | θ_s, x_n) and the
conditional mean m_n(θ_s) and variances; :func:`mixture_moments` turns the latter into the
moments of the marginal q(z_n) = ∫ q(z_n | θ, x_n) q(θ) dθ, Rao–Blackwellised over θ: mean
E_θ m_n(θ), variance E_θ Var(z_n | θ) + Var_θ m_n(θ).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc

from pymc_amortize.errors import AmortizationError
from pymc_amortize.guide.conditional import SAMPLER_MODE, conditional_draws
from pymc_amortize.guide.state import AmortizedGuide
from pymc_amortize.model.logjoint import build_logjoint
from pymc_amortize.model.types import Plate

__all__ = [
    "PlateConditional",
    "UnitData",
    "fitted_unit_data",
    "mixture_moments",
    "other_plate_values",
    "plate_conditional",
    "split_entries",
]

#: Numbers per call of the compiled steps (quadrature points × draws × rows): a block of draws at
#: a time, as :class:`~pymc_amortize.guide.conditional.ConditionalSampler` does.
BLOCK_NUMBERS = 2_000_000


class UnitData(NamedTuple):
    """The data of M units of one plate, by the keys of the plate's
    :class:`~pymc_amortize.model.types.DataInput` (``plate.batched_units`` / ``batched_rows``).

    ``units`` holds (M, ...) arrays; ``rows`` (R, ...) arrays and ``unit_of_row`` (R,) each row's
    unit, its position 0..M-1 (None for a row plate, whose units are their rows).
    """

    units: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    unit_of_row: np.ndarray | None
    n_units: int


class PlateConditional:
    """q(z_n | θ, x_n) of one conditional plate's units given their own data, compiled once.

    Parameters
    ----------
    guide : AmortizedGuide
        A fit with the conditional family on ``plate``.
    plate : Plate
        One of ``guide.conditional_plates``.
    """

    def __init__(self, guide: AmortizedGuide, plate: Plate):
        self.plate = plate
        self.family = guide.local_family
        try:
            logjoint = build_logjoint(guide.model, guide.analysis, batch_plate=plate)
        except AmortizationError as error:
            raise AmortizationError(
                f"The conditional family's q(z | θ, x) of units of plate '{plate.name}' outside "
                f"the fitted model needs the model's log density on them, which fails: {error}"
            ) from error
        # The batch log joint's placeholders of the plate's data are this function's inputs.
        self.unit_inputs = dict(
            zip([d.key for d in plate.batched_units], logjoint.unit_data, strict=True)
        )
        self.row_inputs = dict(
            zip([d.key for d in plate.batched_rows], logjoint.row_data, strict=True)
        )
        self.slot = logjoint.slot
        own = {lat.value_name for lat in plate.latents}
        self.values = {
            name: pt.TensorType(var.dtype, shape=(None, *var.type.shape))(name=f"{name}_draws")
            for name, var in (logjoint.global_values | logjoint.local_values).items()
            if name not in own
        }
        global_draws = {k: v for k, v in self.values.items() if k in logjoint.global_values}
        local_draws = {k: v for k, v in self.values.items() if k in logjoint.local_values}
        self.starts = [
            pt.matrix(f"{lat.name}_start", dtype=logjoint.local_values[lat.value_name].dtype)
            for lat in plate.latents
        ]
        self.size = sum(lat.event_size for lat in plate.latents)
        self.noise = pt.tensor3("noise")
        drawn = conditional_draws(
            self.family,
            plate,
            logjoint,
            global_draws,
            local_draws,
            self.starts,
            self.noise,
            batch=None,
        )
        n_draws, n_units = self.noise.shape[0], self.noise.shape[1]
        stacked = pt.concatenate(
            [draw.reshape((n_draws, n_units, -1)) for draw in drawn.draws], axis=-1
        )
        # z = m + A ε, so row i of A is ∂z_i/∂ε and Var(z_i | θ) = Σ_k A_ik²: the covariance the
        # draws use, read off them exactly (the draws' mean m does not depend on ε).
        variance = pt.stack(
            [
                (pytensor.grad(stacked[..., i].sum(), self.noise) ** 2).sum(axis=-1)
                for i in range(self.size)
            ],
            axis=-1,
        )
        self.names = [lat.value_name for lat in plate.latents]
        inputs = [
            *self.values.values(),
            *self.unit_inputs.values(),
            *self.row_inputs.values(),
            *([self.slot] if self.slot is not None else []),
            *self.starts,
            self.noise,
        ]
        self._fn = compile_pymc(
            inputs,
            [*drawn.draws, drawn.mean, variance],
            on_unused_input="ignore",
            mode=SAMPLER_MODE,
        )

    def block_draws(self, data: UnitData) -> int:
        """Draws per call for units ``data``: about :data:`BLOCK_NUMBERS` numbers a call."""
        rows = data.n_units if data.unit_of_row is None else max(data.unit_of_row.size, 1)
        points = len(self.family.nodes(self.size)[0])
        return max(1, BLOCK_NUMBERS // max(rows * points, data.n_units, 1))

    def __call__(
        self,
        data: UnitData,
        starts: Sequence[np.ndarray],
        values: Mapping[str, np.ndarray],
        noise: np.ndarray,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Draws of the units' locals from q(z_n | θ_s, x_n) for S draws of everything else.

        Parameters
        ----------
        data : UnitData
            The M units' data.
        starts : sequence of ndarray
            Per latent of the plate, (M, event_size) encoder means on the value space: the
            linearisation point of the first Newton step.
        values : mapping
            (S, ...) value-space draws of every global and every other plate's local, by value
            name.
        noise : ndarray
            (S, M, d) standard normal noise, d the plate's latents' entries stacked.

        Returns
        -------
        draws : dict
            (S, M, *event_shape) per value name of the plate's latents.
        mean, variance : ndarray
            (S, M, d) the conditional mean m_n(θ_s) and the variances of q(z_n | θ_s).
        """
        args = [values[name] for name in self.values]
        args += [data.units[key] for key in self.unit_inputs]
        args += [data.rows[key] for key in self.row_inputs]
        if self.slot is not None:
            args.append(data.unit_of_row.astype(np.int64))
        starts = [
            np.asarray(s, dtype=v.dtype).reshape(data.n_units, -1)
            for s, v in zip(starts, self.starts, strict=True)
        ]
        n_draws = noise.shape[0]
        block = self.block_draws(data)
        pieces = [
            self._fn(
                *(a[start : start + block] for a in args[: len(self.values)]),
                *args[len(self.values) :],
                *starts,
                noise[start : start + block],
            )
            for start in range(0, n_draws, block)
        ]
        out = [np.concatenate(parts) for parts in zip(*pieces, strict=True)]
        *draws, mean, variance = out
        bad = ~(np.isfinite(mean).all(axis=(0, 2)) & np.isfinite(variance).all(axis=(0, 2)))
        if bad.any():
            raise AmortizationError(
                f"The conditional family's q(z | θ, x) of plate '{self.plate.name}' is NaN or "
                f"infinite for {int(bad.sum())} of {bad.size} units (first: unit "
                f"{int(np.argmax(bad))} of these): its Newton steps failed at these draws of the "
                "globals (a fit that diverged, data far from the fitted units', or a unit whose "
                "log density is far from concave). Refit with family='encoder', or check the data."
            )
        return dict(zip(self.names, draws, strict=True)), mean, variance


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plate_conditional(guide: AmortizedGuide, plate: Plate) -> PlateConditional:
    """The :class:`PlateConditional` of ``plate``, compiled on first use and kept with the guide
    (it reads no parameter of the fit, so a refined fit reuses it)."""
    cache = _COMPILED.setdefault(guide, {})
    if plate.name not in cache:
        cache[plate.name] = PlateConditional(guide, plate)
    return cache[plate.name]


def fitted_unit_data(guide: AmortizedGuide, plate: Plate, start: int, stop: int) -> UnitData:
    """The data of the fitted units ``start:stop`` of ``plate``, from the model."""
    if guide.unit_source is not None and plate is guide.unit_source.plate:
        raise AmortizationError(
            f"The conditional family's q(z | θ, x) of the units of plate '{plate.name}' reads "
            "their data from the model, and this fit read them from unit_data."
        )
    row_numbers, slot = guide.layouts[plate.name].chunk_rows(start, stop)
    units = {d.key: np.asarray(d.value)[start:stop] for d in plate.batched_units}
    rows = {
        d.key: np.asarray(d.value) if row_numbers is None else np.asarray(d.value)[row_numbers]
        for d in plate.batched_rows
    }
    return UnitData(units, rows, None if plate.index is None else slot, stop - start)


def other_plate_values(
    guide: AmortizedGuide,
    plate: Plate,
    global_values: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    outputs: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Value-space draws (S, N, ...) of the other plates' locals for the fitted units, as the
    training step conditions ``plate`` on them: an encoder plate's from its q(z_n), a
    conditional plate drawn before ``plate`` from q(z | θ) (given those), one drawn after it at
    its encoder mean. ``outputs``: ``guide.fitted_encoder_outputs()`` when the caller has them."""
    others = [p for p in guide.analysis.plates if p.name != plate.name]
    if not others:
        return {}
    draws = len(next(iter(global_values.values()))) if global_values else 1
    outputs = guide.fitted_encoder_outputs() if outputs is None else outputs
    values = {}
    for other in others:
        if other.name in guide.conditional_plates:
            continue
        for latent in other.latents:
            mean, sd = outputs[latent.name]
            values[latent.value_name] = mean + sd * rng.standard_normal((draws, *mean.shape))
    order = [p.name for p in guide.analysis.plates]
    before = {
        lat.value_name
        for p in others
        if p.name in guide.conditional_plates and order.index(p.name) < order.index(plate.name)
        for lat in p.latents
    }
    if before:
        drawn = guide.conditional_sampler(dict(global_values) | values, rng)
        values |= {name: value for name, value in drawn.items() if name in before}
    for other in others:
        for latent in other.latents:
            if latent.value_name not in values:
                mean = outputs[latent.name][0]
                values[latent.value_name] = np.broadcast_to(mean, (draws, *mean.shape))
    return values


def mixture_moments(
    conditional: PlateConditional,
    data: UnitData,
    starts: Sequence[np.ndarray],
    values: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (M, d) of the marginal q(z_n) = ∫ q(z_n | θ, x_n) q(θ) dθ on the value space
    over the S draws ``values``: E_θ m_n(θ) and √(E_θ Var(z_n | θ) + Var_θ m_n(θ)), the
    conditional moments exact per draw (no noise of z's draws)."""
    n_draws = len(next(iter(values.values()))) if values else 1
    noise = np.zeros((n_draws, data.n_units, conditional.size))
    _, mean, variance = conditional(data, starts, values, noise)
    first = mean.mean(axis=0)
    spread = ((mean - first) ** 2).mean(axis=0)
    return first, np.sqrt(variance.mean(axis=0) + spread)


def split_entries(plate: Plate, stacked: np.ndarray) -> dict[str, np.ndarray]:
    """(..., M, d) stacked entries -> per latent name (..., M, *event_shape)."""
    out, offset = {}, 0
    for latent in plate.latents:
        size = math.prod(latent.event_shape)
        piece = stacked[..., offset : offset + size]
        out[latent.name] = piece.reshape(*stacked.shape[:-1], *latent.event_shape)
        offset += size
    return out
