"""Minibatches of units: draw B units of a plate and gather all their rows.

One minibatcher for every plate kind. A row plate's unit is its own row; an indexed plate's rows
are sorted by unit once (a CSR layout: ``row_order`` and ``offsets``), so a drawn unit's rows are
one slice ``row_order[offsets[j]:offsets[j + 1]]`` and the step gathers them with a
``repeat``/``arange`` expression: O(B + rows of the drawn units) whatever N is, no padding and no
cap on rows. Units are drawn with replacement (as ``pm.Minibatch`` draws rows), and every term of
the drawn units (their local prior, entropy and the likelihood of their rows) is scaled by N / B,
which is unbiased because each row belongs to exactly one unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.analysis import Plate

__all__ = ["PlateLayout", "UnitBatch", "gather_unit_rows"]


@dataclass(frozen=True)
class UnitBatch:
    """Symbolic description of one batch of a plate's units.

    Attributes
    ----------
    units : TensorVariable or None
        Unit ids (B,) into the plate; None for all units in order.
    rows : TensorVariable or None
        Row numbers (R,) of the batch's rows into the full data; None for all rows in order.
    unit_of_row : TensorVariable
        Batch slot (0..B-1) of each batch row, int64 (R,).
    n_units : TensorVariable
        B, int64 scalar.
    scale : float or TensorVariable
        N / B, the weight of the batch's unit terms.
    """

    units: TensorVariable | None
    rows: TensorVariable | None
    unit_of_row: TensorVariable
    n_units: TensorVariable
    scale: float | TensorVariable

    def take_units(self, var: TensorVariable) -> TensorVariable:
        return var if self.units is None else var[self.units]

    def take_rows(self, var: TensorVariable) -> TensorVariable:
        return var if self.rows is None else var[self.rows]


def gather_unit_rows(
    units: TensorVariable,
    counts: TensorVariable,
    offsets: TensorVariable,
    row_order: TensorVariable,
) -> tuple[TensorVariable, TensorVariable]:
    """All rows of the drawn ``units`` (B,) from a CSR layout, as (batch slot, row number) pairs.

    Unit u's rows are ``row_order[offsets[u] : offsets[u] + counts[u]]``; they are laid end to end
    in the order of ``units``. O(B + rows gathered).
    """
    n_rows = counts[units]
    slot = pt.repeat(pt.arange(units.shape[0], dtype="int64"), n_rows)
    start_minus_position = offsets[units] - (pt.cumsum(n_rows) - n_rows)
    position = pt.arange(slot.shape[0], dtype="int64")
    return slot, row_order[pt.repeat(start_minus_position, n_rows) + position]


class PlateLayout:
    """The shared arrays a plate's batches are drawn from (its CSR layout), built once per fit."""

    def __init__(self, plate: Plate):
        self.plate = plate
        #: N, shared rather than a literal: NUMBA compiles literals into the step's machine code,
        #: so a step with N inside (the N / B scale, the unit draw's bound) missed PyTensor's
        #: compile cache for every new data size and recompiled (see logjoint._gathered_leaf).
        self.size: SharedVariable = pytensor.shared(np.int64(plate.size), name=f"{plate.name}_size")
        unit_of_row = plate.unit_of_row
        counts = plate.row_counts
        self.unit_of_row: SharedVariable = pytensor.shared(
            unit_of_row, name=f"{plate.name}_unit_of_row"
        )
        self.counts = pytensor.shared(counts, name=f"{plate.name}_row_counts")
        self.offsets = pytensor.shared(
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), name=f"{plate.name}_offsets"
        )
        self.row_order = pytensor.shared(
            np.argsort(unit_of_row, kind="stable").astype(np.int64), name=f"{plate.name}_row_order"
        )

    def full(self) -> UnitBatch:
        """Every unit and every row, in order."""
        return UnitBatch(
            units=None,
            rows=None,
            unit_of_row=self.unit_of_row,
            n_units=self.size,
            scale=1.0,
        )

    def draw(self, units: TensorVariable, batch_size: int) -> UnitBatch:
        """The batch of the drawn unit ids ``units`` (B,) and all their rows."""
        if self.plate.index is None:
            # A row plate: each unit is its own row.
            rows, slot = units, pt.arange(batch_size, dtype="int64")
        else:
            slot, rows = gather_unit_rows(units, self.counts, self.offsets, self.row_order)
        return UnitBatch(
            units=units,
            rows=rows,
            unit_of_row=slot,
            n_units=pt.constant(batch_size, dtype="int64"),
            scale=self.size.astype(pytensor.config.floatX) / batch_size,
        )
