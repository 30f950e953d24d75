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
from pytensor.tensor.extra_ops import searchsorted
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.model.types import Plate

__all__ = ["PlateLayout", "UnitBatch", "gather_unit_rows", "gather_unit_rows_padded"]


@dataclass(frozen=True)
class UnitBatch:
    """Symbolic description of one batch of a plate's units.

    Attributes
    ----------
    units : TensorVariable or None
        Unit ids (B,) into the plate; None for all units in order.
    rows : TensorVariable, slice or None
        Row numbers (R,) of the batch's rows into the full data, or a slice of them; None for all
        rows in order.
    unit_of_row : TensorVariable
        Batch slot (0..B-1) of each batch row, int64 (R,).
    n_units : TensorVariable
        B, int64 scalar.
    scale : float or TensorVariable
        N / B, the weight of the batch's unit terms.
    row_weight : TensorVariable or None
        (R,) 1 for the batch's rows and 0 for padding, when the rows are padded to a fixed count
        (see :func:`gather_unit_rows_padded`); None without padding.
    """

    units: TensorVariable | None
    rows: TensorVariable | slice | None
    unit_of_row: TensorVariable
    n_units: TensorVariable
    scale: float | TensorVariable
    row_weight: TensorVariable | None = None

    def pooling_slots(self) -> tuple[TensorVariable, TensorVariable]:
        """Each row's unit and the number of units, for an encoder that pools rows by unit.

        With padding, the padded rows go to an extra unit B, so that any pooling encoder (a
        user's included) ignores them; its output for that unit is dropped by the caller.
        """
        if self.row_weight is None:
            return self.unit_of_row, self.n_units
        slot = pt.switch(self.row_weight > 0, self.unit_of_row, self.n_units)
        return slot, self.n_units + 1

    def take_units(self, var: TensorVariable) -> TensorVariable:
        return var if self.units is None else var[self.units]

    def take_rows(self, var: TensorVariable) -> TensorVariable:
        return var if self.rows is None else var[self.rows]


def gather_unit_rows(
    units: TensorVariable,
    offsets: TensorVariable,
    row_order: TensorVariable | None = None,
) -> tuple[TensorVariable, TensorVariable]:
    """All rows of the drawn ``units`` (B,) from a CSR layout, as (batch slot, row number) pairs.

    Unit u's rows are ``row_order[offsets[u] : offsets[u + 1]]`` (``row_order=None``: the rows are
    already sorted by unit, so they are the positions themselves); they are laid end to end in the
    order of ``units``. O(B + rows gathered).
    """
    starts = offsets[units]
    n_rows = offsets[units + 1] - starts
    slot = pt.repeat(pt.arange(units.shape[0], dtype="int64"), n_rows)
    start_minus_position = starts - (pt.cumsum(n_rows) - n_rows)
    position = pt.arange(slot.shape[0], dtype="int64")
    sorted_position = pt.repeat(start_minus_position, n_rows) + position
    return slot, sorted_position if row_order is None else row_order[sorted_position]


def gather_unit_rows_padded(
    units: TensorVariable,
    offsets: TensorVariable,
    row_order: TensorVariable | None,
    cap: int,
) -> tuple[TensorVariable, TensorVariable, TensorVariable]:
    """All rows of the drawn ``units`` (B,) as in :func:`gather_unit_rows`, padded to ``cap``
    rows: (batch slot, row number, weight), each (cap,).

    Every shape is fixed by ``cap``, which is what JAX compiles for. A padding row repeats row 0
    with slot 0 and weight 0, so that its terms are finite and weighted out. ``cap`` must be at
    least the rows of the B largest draws (B times the largest unit's, with replacement).
    """
    starts = offsets[units]
    n_rows = offsets[units + 1] - starts
    ends = pt.cumsum(n_rows)
    position = pt.arange(cap, dtype="int64")
    slot = pt.minimum(searchsorted(ends, position, side="right"), units.shape[0] - 1)
    valid = position < ends[-1]
    sorted_position = pt.switch(valid, starts[slot] + position - (ends - n_rows)[slot], 0)
    rows = sorted_position if row_order is None else row_order[sorted_position]
    slot = pt.switch(valid, slot, 0)
    return slot, rows, valid.astype(pytensor.config.floatX)


class PlateLayout:
    """The shared arrays a plate's batches are drawn from (its CSR layout), built once per fit.

    A row plate needs none: its unit is its own row. An indexed plate holds ``offsets`` (N + 1,)
    and, only when the index is not sorted by unit, ``row_order`` (R,); its ``unit_of_row`` is the
    model's own index array (borrowed, not copied, when it is int64).
    """

    def __init__(self, plate: Plate, *, buffered: bool = False):
        self.plate = plate
        #: N, shared rather than a literal: NUMBA compiles literals into the step's machine code,
        #: so a step with N inside (the N / B scale, the unit draw's bound) missed PyTensor's
        #: compile cache for every new data size and recompiled (see logjoint._gathered_leaf).
        self.size: SharedVariable = pytensor.shared(np.int64(plate.size), name=f"{plate.name}_size")
        self.unit_of_row: SharedVariable | None = None
        self.offsets: SharedVariable | None = None
        self.row_order: SharedVariable | None = None
        # A plate read from unit_data has its batches gathered on the host: no CSR layout (it
        # would be the template's, and N long).
        if plate.index is None or buffered:
            return
        # The model's own index array, in its own dtype (cast per use in the graph): an int64
        # copy of an int32 index was the layout's largest array.
        unit_of_row = plate.index.value
        counts = np.bincount(unit_of_row, minlength=plate.size)
        offsets = np.zeros(plate.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        del counts
        self.unit_of_row = pytensor.shared(
            unit_of_row, name=f"{plate.name}_unit_of_row", borrow=True
        )
        self.offsets = pytensor.shared(offsets, name=f"{plate.name}_offsets", borrow=True)
        if unit_of_row.size > 1 and (unit_of_row[1:] < unit_of_row[:-1]).any():
            self.row_order = pytensor.shared(
                np.argsort(unit_of_row, kind="stable").astype(np.int64, copy=False),
                name=f"{plate.name}_row_order",
                borrow=True,
            )

    def full(self) -> UnitBatch:
        """Every unit and every row, in order."""
        if self.unit_of_row is None:
            unit_of_row = pt.arange(self.size, dtype="int64")
        else:
            unit_of_row = self.unit_of_row.astype("int64")
        return UnitBatch(
            units=None,
            rows=None,
            unit_of_row=unit_of_row,
            n_units=self.size,
            scale=1.0,
        )

    def draw(self, units: TensorVariable, batch_size: int, *, padded: bool = False) -> UnitBatch:
        """The batch of the drawn unit ids ``units`` (B,) and all their rows; with ``padded``
        (an indexed plate under JAX), the rows padded to B times the largest unit's rows, so that
        the batch's shapes never change."""
        weight = None
        if self.plate.index is None:
            # A row plate: each unit is its own row.
            rows, slot = units, pt.arange(batch_size, dtype="int64")
        elif padded:
            offsets = self.offsets.get_value(borrow=True)
            cap = batch_size * max(int(np.diff(offsets).max(initial=0)), 1)
            slot, rows, weight = gather_unit_rows_padded(units, self.offsets, self.row_order, cap)
        else:
            slot, rows = gather_unit_rows(units, self.offsets, self.row_order)
        return self._batch_of(batch_size, units, rows, slot, weight)

    def _batch_of(self, batch_size: int, units, rows, slot, weight) -> UnitBatch:
        """A batch of ``batch_size`` of the plate's units, its terms scaled by N / B."""
        return UnitBatch(
            units=units,
            rows=rows,
            unit_of_row=slot,
            n_units=pt.constant(batch_size, dtype="int64"),
            scale=self.size.astype(pytensor.config.floatX) / batch_size,
            row_weight=weight,
        )

    def buffered(
        self,
        batch_size: int,
        unit_of_row: np.ndarray | None = None,
        row_weight: np.ndarray | None = None,
        row_count: np.ndarray | None = None,
    ) -> UnitBatch:
        """A batch of ``batch_size`` units gathered on the host into buffers the step reads
        whole (a fit on ``unit_data``, see :mod:`pymc_amortize.data.streaming`): every unit of the
        buffers, in order, scaled by N / B. An indexed plate's rows come padded, with each row's
        batch slot ``unit_of_row`` and ``row_weight`` (0 for padding), host arrays the step reads
        (borrowed). With ``row_count`` (a 0-d array the host sets to the batch's rows) the step
        reads only the rows, not the padding: shapes then vary, which NUMBA takes and JAX does
        not."""
        if unit_of_row is None:
            return self._batch_of(
                batch_size, None, None, pt.arange(batch_size, dtype="int64"), None
            )
        name = self.plate.name
        slot = pytensor.shared(unit_of_row, name=f"{name}_row_slots", borrow=True)
        weight = pytensor.shared(row_weight, name=f"{name}_row_weights", borrow=True)
        rows = None
        if row_count is not None:
            rows = slice(None, pytensor.shared(row_count, name=f"{name}_row_count", borrow=True))
            slot, weight = slot[rows], weight[rows]
        return self._batch_of(batch_size, None, rows, slot, weight)

    def chunk_rows(self, start: int, stop: int) -> tuple[np.ndarray | None, np.ndarray]:
        """Units ``start:stop``'s rows in numpy: (row numbers (R_c,), each row's unit position
        0..stop-start-1); for a row plate (None, arange)."""
        if self.plate.index is None:
            return None, np.arange(stop - start, dtype=np.int64)
        offsets = self.offsets.get_value(borrow=True)
        lo, hi = int(offsets[start]), int(offsets[stop])
        rows = (
            np.arange(lo, hi)
            if self.row_order is None
            else self.row_order.get_value(borrow=True)[lo:hi]
        )
        slot = np.repeat(
            np.arange(stop - start, dtype=np.int64), np.diff(offsets[start : stop + 1])
        )
        return rows, slot
