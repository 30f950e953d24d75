"""Minibatches of a :class:`~pymc_amortize.data.streaming.UnitSource`'s units, from a chunk pool.

A dataset that fits in the pool's memory (``pool_mib``, 128 MiB by default) is read once, and
batches are uniform draws of its units, as from memory. A larger one is sampled through a
**pool of K chunks** (as many as ``pool_mib`` holds). Each slot of the pool holds a chunk
drawn with probability proportional to its length n_c / N, independently of everything else; a
batch draws each of its B units by picking a slot uniformly and then a unit uniformly within the
slot's chunk. A unit u in chunk c is therefore drawn with probability

    Σ_k (1/K) · P(slot k holds c) · 1/n_c = Σ_k (1/K) · (n_c/N) · (1/n_c) = 1/N,

the same as a uniform draw from all N units, so the N / B scaled minibatch ELBO and its gradient
stay unbiased for the full-data ones whatever the chunk lengths (equal chunks are not needed). One
slot is replaced every ``refresh_every`` steps by a chunk drawn afresh (read ahead in a thread, so
the read overlaps the steps); with the default ``ceil(C / B)`` the pool reads about as many units
as the steps consume. Neighbouring steps share chunks, which correlates their gradients but adds
no bias. The correlation costs nothing when units are stored in random order, and much when the
store is sorted (by date, region, ...), because then chunks differ: store units shuffled, or give
the pool more memory (``benchmarks/perf/scale_disk.py`` measures both).

The step reads each batch from **fixed-size buffers**: one (B, ...) array per data variable,
filled in place before each step and read by the compiled step as a shared variable, so its
shapes never change and the gather happens on the host. A pooled chunk of an indexed plate holds
its units' rows and where each unit's rows start; a batch's rows go into buffers of B times the
most rows of a unit, and the step reads them up to the batch's row count (NUMBA) or whole with
the padding weighted out (JAX, whose shapes must be fixed).
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytensor

from pymc_amortize.data.streaming import ORDER_RATIO, ChunkData, UnitSource
from pymc_amortize.errors import ChunkOrderWarning

__all__ = ["POOL_MIB", "ChunkedUnitSampler", "StepBuffers"]

#: MiB of chunks a fit holds by default: the whole dataset when it fits, else as many chunks.
POOL_MIB = 128.0


@dataclass(frozen=True, eq=False)
class StepBuffers:
    """The fixed-size host arrays one step reads its minibatch from.

    A :class:`ChunkedUnitSampler` writes each batch into them in place; the compiled step reads
    them as borrowed shared variables (so their shapes, and the compiled step, never change).
    They are created once per fit, by :meth:`for_source`, and every sampler of that fit fills the
    same arrays.

    Attributes
    ----------
    batch_size : int
        B, the units of one batch.
    units : dict of str to ndarray
        (B, ...) per unit-aligned variable of the source.
    rows : dict of str to ndarray
        (capacity, ...) per row-aligned variable (indexed plates; empty for a row plate): the
        batch's rows first, then padding that repeats its first row.
    row_slot : ndarray
        int64 (capacity,): the batch slot 0..B-1 of each buffered row (0 for padding).
    row_weight : ndarray
        floatX (capacity,): 1 for the batch's rows, 0 for padding.
    row_count : ndarray
        0-d int64: the batch's rows before the padding.

    Examples
    --------
    .. code-block:: python

        source = UnitSource(ds, analysis, 100, model=template)
        buffers = StepBuffers.for_source(source)
        sampler = ChunkedUnitSampler(source, buffers, random_seed=0)
        sampler.fill()  # buffers.units["x"] now holds the x of 100 drawn units
    """

    batch_size: int
    units: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    row_slot: np.ndarray
    row_weight: np.ndarray
    row_count: np.ndarray

    @classmethod
    def for_source(cls, source: UnitSource) -> StepBuffers:
        """Zeroed buffers for batches of ``source.batch_size`` units of ``source``: B rows per
        unit variable, B times the most rows of a unit per row variable (indexed plates)."""
        batch_size = source.batch_size
        capacity = batch_size * source.max_rows if source.index_key is not None else batch_size

        def zeros(key: str, length: int) -> np.ndarray:
            return np.zeros((length, *source.trailing[key]), dtype=source.dtypes[key])

        return cls(
            batch_size=batch_size,
            units={key: zeros(key, batch_size) for key in source.unit_keys},
            rows={key: zeros(key, capacity) for key in source.row_keys},
            row_slot=np.zeros(capacity, dtype=np.int64),
            row_weight=np.zeros(capacity, dtype=pytensor.config.floatX),
            row_count=np.zeros((), dtype=np.int64),
        )

    @property
    def capacity(self) -> int:
        """The rows the row buffers hold: the batch's rows and their padding."""
        return int(self.row_slot.size)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every data buffer by variable name: the unit and the row variables'."""
        return self.units | self.rows


class ChunkedUnitSampler:
    """Fills a fit's :class:`StepBuffers` with one minibatch per step from a pool of chunks.

    When the whole dataset fits in ``pool_mib``, it is read once and every batch is a uniform
    draw of B of its N units, as from memory. Otherwise the pool holds K chunks (as many as fit in
    ``pool_mib``, at least 2), each drawn with probability proportional to its length, and a batch
    draws a slot uniformly and then a unit uniformly within it; see the module docstring for why
    every unit is still drawn with probability 1/N.

    Parameters
    ----------
    source : UnitSource
        Where the units are read from.
    buffers : StepBuffers
        Where each batch is written (``StepBuffers.for_source(source)``).
    pool_mib : float, default 128
        Memory for the pool of chunks, in MiB.
    slots : int, optional
        K, overriding the number ``pool_mib`` allows.
    refresh_every : int, optional
        Steps between two chunk reads; ``ceil(C / B)`` for chunks of mean length C when omitted
        (the pool then reads about as many units as the steps draw).
    random_seed : int or numpy Generator, optional

    Attributes
    ----------
    units : ndarray
        Unit ids (B,) of the batch in the buffers, after :meth:`fill`.
    whole : bool
        Whether the pool holds the whole dataset.
    """

    def __init__(
        self,
        source: UnitSource,
        buffers: StepBuffers,
        *,
        pool_mib: float = POOL_MIB,
        slots: int | None = None,
        refresh_every: int | None = None,
        random_seed: int | np.random.Generator | None = None,
    ):
        self.source = source
        self.buffers = buffers
        self.rng = np.random.default_rng(random_seed)
        self.batch_size = buffers.batch_size
        lengths, rows = source.chunk_lengths, source.chunk_rows
        indexed = source.index_key is not None

        def nbytes(keys) -> int:
            return sum(
                source.dtypes[k].itemsize * int(np.prod(source.trailing[k], dtype=np.int64))
                for k in keys
            )

        # A unit costs its unit variables, its offset (indexed plates) and its rows' variables.
        unit_bytes, row_bytes = nbytes(source.unit_keys) + 8 * indexed, nbytes(source.row_keys)
        budget = pool_mib * 2**20
        self.whole = slots is None and (
            source.size * unit_bytes + source.n_rows * row_bytes <= budget
        )
        if self.whole:  # one slot holding the whole dataset
            self.slots, self.width, self.row_width = 1, source.size, source.n_rows
        else:
            self.width, self.row_width = int(lengths.max()), int(rows.max())
            fit = int(budget // max(self.width * unit_bytes + self.row_width * row_bytes, 1))
            self.slots = int(slots) if slots is not None else max(2, fit)
        if source.ordered and not self.whole:
            warnings.warn(
                f"unit_data's chunks differ more than units stored in random order would "
                f"({', '.join(source.ordered)}: the chunk means spread over {ORDER_RATIO:g}x "
                f"what a random order gives), and the pool holds {self.slots} of its "
                f"{source.n_chunks} chunks at a time, so neighbouring batches "
                "come from a few alike chunks, which slows the fit and can bias its globals. "
                "Store the units shuffled, or raise unit_data_pool_mib to "
                f"{math.ceil((source.size * unit_bytes + source.n_rows * row_bytes) / 2**20)} "
                "to hold the whole dataset.",
                ChunkOrderWarning,
                stacklevel=2,
            )
        self.chunk_probabilities = lengths / lengths.sum()
        self.refresh_every = (
            refresh_every
            if refresh_every is not None
            else max(1, math.ceil(lengths.mean() / self.batch_size))
        )
        self.pool = {
            key: np.zeros(
                (
                    self.slots * (self.width if key in source.unit_keys else self.row_width),
                    *source.trailing[key],
                ),
                source.dtypes[key],
            )
            for key in source.keys
        }
        #: Where each pooled unit's rows start in its slot's rows (indexed plates).
        self.offsets = np.zeros((self.slots, self.width + 1), dtype=np.int64) if indexed else None
        #: The chunk each slot holds, and its length.
        self.slot_chunks = np.zeros(self.slots, dtype=np.int64)
        self.slot_lengths = np.zeros(self.slots, dtype=np.int64)
        self.steps = 0
        self.chunks_read = 0
        self.units = np.zeros(self.batch_size, dtype=np.int64)
        self._reader: ThreadPoolExecutor | None = None
        if self.whole:
            for chunk in range(source.n_chunks):
                self._put_whole(chunk, source.read_chunk(chunk))
            self.slot_lengths[0] = source.size
            return
        for slot in range(self.slots):
            chunk = self._draw_chunk()
            self._put(slot, chunk, source.read_chunk(chunk))
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unit-chunks")
        self._next: tuple[int, Future] = self._read_ahead()

    def _draw_chunk(self) -> int:
        return int(self.rng.choice(self.chunk_probabilities.size, p=self.chunk_probabilities))

    def _read_ahead(self) -> tuple[int, Future]:
        # The chunk is drawn here, in the main thread, so the draws do not depend on timing.
        chunk = self._draw_chunk()
        return chunk, self._reader.submit(self.source.read_chunk, chunk)

    def _put(self, slot: int, chunk: int, data: ChunkData) -> None:
        length = int(self.source.chunk_lengths[chunk])
        begin, row_begin = slot * self.width, slot * self.row_width
        for key, array in data.units.items():
            self.pool[key][begin : begin + length] = array
        for key, array in data.rows.items():
            self.pool[key][row_begin : row_begin + len(array)] = array
        if data.offsets is not None:
            self.offsets[slot, : length + 1] = data.offsets
        self.slot_chunks[slot], self.slot_lengths[slot] = chunk, length
        self.chunks_read += 1

    def _put_whole(self, chunk: int, data: ChunkData) -> None:
        start, stop = int(self.source.bounds[chunk]), int(self.source.bounds[chunk + 1])
        for key, array in data.units.items():
            self.pool[key][start:stop] = array
        if data.offsets is not None:
            row_start = int(self.source.row_bounds[chunk])
            for key, array in data.rows.items():
                self.pool[key][row_start : row_start + len(array)] = array
            self.offsets[0, start : stop + 1] = row_start + data.offsets
        self.chunks_read += 1

    def fill(self) -> None:
        """Put the next step's batch into :attr:`buffers` (in place)."""
        self.steps += 1
        if not self.whole and self.steps % self.refresh_every == 0:
            slot = (self.steps // self.refresh_every) % self.slots
            chunk, future = self._next
            self._put(slot, chunk, future.result())
            self._next = self._read_ahead()
        slot = self.rng.integers(self.slots, size=self.batch_size)
        position = (self.rng.random(self.batch_size) * self.slot_lengths[slot]).astype(np.int64)
        self.units = self.source.bounds[self.slot_chunks[slot]] + position
        buffers = self.buffers
        for key in self.source.unit_keys:
            np.take(self.pool[key], slot * self.width + position, axis=0, out=buffers.units[key])
        if self.offsets is None:
            return
        first = self.offsets[slot, position]
        counts = self.offsets[slot, position + 1] - first
        total = int(counts.sum())
        ends = np.cumsum(counts)
        rows = np.repeat(slot * self.row_width + first - (ends - counts), counts)
        rows += np.arange(total)
        for key in self.source.row_keys:
            buffer = buffers.rows[key]
            np.take(self.pool[key], rows, axis=0, out=buffer[:total])
            # Padding repeats the batch's first row (real data, so its terms are finite).
            buffer[total:] = buffer[0]
        buffers.row_slot[:total] = np.repeat(np.arange(self.batch_size), counts)
        buffers.row_slot[total:] = 0
        buffers.row_weight[:total] = 1.0
        buffers.row_weight[total:] = 0.0
        buffers.row_count[...] = total

    def close(self) -> None:
        """Stop the read-ahead thread."""
        if self._reader is not None:
            self._next[1].cancel()
            self._reader.shutdown(wait=True)
