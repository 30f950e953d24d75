"""Units read from an :class:`xarray.Dataset` chunk by chunk: fits on data larger than memory.

The model is written on a *template*, any few units of the data in memory (``ds.isel(unit=
slice(0, 100)).load()``), with the same variable names as the dataset; ``unit_data=ds`` gives the
N units the fit draws its minibatches from. The dataset may be lazy (zarr through dask): it is
read one chunk (of its own chunking along the unit dim) at a time and never held whole.

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
shapes never change and the gather happens on the host.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import xarray as xr

from pymc_amortize.analysis import DataInput, ModelAnalysis, Plate
from pymc_amortize.errors import AmortizationError, ChunkOrderWarning

__all__ = [
    "POOL_MIB",
    "ChunkedUnitSampler",
    "ColumnSummary",
    "UnitSource",
    "input_columns",
    "summarize_columns",
]

#: Chunk length along the unit dim when the dataset has no chunking of its own (numpy-backed).
DEFAULT_CHUNK = 100_000
#: MiB of chunks a fit holds by default: the whole dataset when it fits, else as many chunks.
POOL_MIB = 128.0
#: Chunk means this many times more spread than a random order gives mark an ordered store.
ORDER_RATIO = 10.0


class UnitSource:
    """The N units of a model's plate, read from an xarray Dataset one chunk at a time.

    Parameters
    ----------
    dataset : xarray.Dataset
        One variable per unit-aligned data array of the plate (observed variables, ``pm.Data``
        and encoder inputs), under the model's names, with the plate's dim first and the same
        trailing shape as in the model. May be lazy (dask, zarr); its chunking along the unit dim
        is the read unit (``DEFAULT_CHUNK`` units when it has none).
    analysis : ModelAnalysis
        The analysis of the template model.
    batch_size : int
        B, the length of the step's buffers.

    Attributes
    ----------
    plate : Plate
        The template's plate with its size set to the dataset's N.
    analysis : ModelAnalysis
        The template's analysis with that plate.
    dim : str
        The dataset's unit dim.
    keys : tuple of str
        The variables read, in a fixed order.
    bounds : ndarray
        (n_chunks + 1,) int64 chunk starts, and N last.
    batch : dict of str to ndarray
        The fixed (B, ...) buffers, filled in place by :class:`ChunkedUnitSampler`.

    Raises
    ------
    AmortizationError
        When the model has more than one plate, when the plate ties several rows to a unit (an
        index), when an encoder reads an unnamed array or a given matrix, or when the dataset
        lacks a variable or the unit dim, or a variable's trailing shape or dtype does not match
        the model's.
    """

    def __init__(
        self,
        dataset: xr.Dataset,
        analysis: ModelAnalysis,
        batch_size: int,
        *,
        model_dims: Mapping[str, Sequence[str]] | None = None,
        model_coords: Mapping[str, Sequence] | None = None,
    ):
        if not isinstance(dataset, xr.Dataset):
            raise AmortizationError(
                f"unit_data must be an xarray.Dataset (e.g. xr.open_zarr(path)); got "
                f"{type(dataset).__name__}."
            )
        plates = [plate for plate in analysis.plates if plate.latents]
        if len(plates) != 1:
            names = ", ".join(f"'{p.name}'" for p in plates) or "none"
            hint = (
                ""
                if plates
                else "\nThe template's data decide what is local: a template of one unit, or "
                "data that are constant on it (all zeros, say), look like no data. Take a "
                "template of at least two varied units (a random sample), or name each local "
                "latent's inputs with local=."
            )
            raise AmortizationError(
                "unit_data= streams the units of one plate, and every other latent must be "
                f"global; this model has the plates {names}:\n{analysis.summary()}{hint}"
            )
        (plate,) = plates
        if plate.index is not None:
            raise AmortizationError(
                f"unit_data= streams a plate with one row per unit; plate '{plate.name}' ties "
                f"rows to its units through '{plate.index.key}'. Give each unit's rows as "
                "trailing axes of its variables (one row per unit), or fit in memory."
            )
        needed: dict[str, DataInput] = {d.key: d for d in plate.batched_units}
        for latent in plate.latents:
            if latent.input_matrix is not None:
                raise AmortizationError(
                    f"The encoder of '{latent.name}' reads a given matrix; with unit_data= its "
                    "inputs must be variables of the dataset: name them in local= "
                    f"({{'{latent.name}': ['x', ...]}})."
                )
            needed |= {d.key: d for d in latent.unit_inputs}
        for data in needed.values():
            if not data.named:
                raise AmortizationError(
                    f"'{data.key}' is an unnamed array of the model aligned with plate "
                    f"'{plate.name}'; with unit_data= each such array is read from the dataset by "
                    "name: give it one with pm.Data and add it to the dataset."
                )
        self.dim = self._unit_dim(dataset, plate, needed)
        self.size = int(dataset.sizes[self.dim])
        if batch_size > self.size:
            raise AmortizationError(
                f"batch_size={batch_size} is more than the {self.size} units of unit_data."
            )
        self.keys = tuple(needed)
        self.dtypes: dict[str, np.dtype] = {}
        self.trailing: dict[str, tuple[int, ...]] = {}
        variables = {}
        for key, data in needed.items():
            template = np.asarray(data.value)
            dims = (model_dims or {}).get(key)
            variables[key] = self._aligned(
                dataset, key, template, tuple(dims[1:]) if dims else None, model_coords or {}
            )
            self.dtypes[key], self.trailing[key] = template.dtype, template.shape[1:]
        # unify_chunks: variables of one store may be chunked differently along the units.
        self.dataset = xr.Dataset(variables).unify_chunks()
        self.bounds = self._chunk_bounds()
        #: Variables whose chunks differ more than units stored in random order would (see scan).
        self.ordered: tuple[str, ...] = ()
        self._scan()
        self.plate: Plate = dataclasses.replace(plate, size=self.size)
        self.analysis = dataclasses.replace(
            analysis,
            plates=tuple(self.plate if p is plate else p for p in analysis.plates),
        )
        self.batch = {
            key: np.zeros((batch_size, *self.trailing[key]), dtype=self.dtypes[key])
            for key in self.keys
        }

    @staticmethod
    def _unit_dim(dataset: xr.Dataset, plate: Plate, needed: Mapping[str, DataInput]) -> str:
        if plate.dim is not None and plate.dim in dataset.dims:
            return plate.dim
        leading = {dataset[k].dims[0] for k in needed if k in dataset and dataset[k].dims}
        if plate.dim is None and len(leading) == 1:
            return leading.pop()
        raise AmortizationError(
            f"unit_data has no dim '{plate.dim or plate.name}' for the units of plate "
            f"'{plate.name}'; its dims are {sorted(dataset.dims)}."
        )

    def _aligned(
        self,
        dataset: xr.Dataset,
        key: str,
        template: np.ndarray,
        trailing_dims: tuple[str, ...] | None,
        coords: Mapping[str, Sequence],
    ) -> xr.DataArray:
        """``dataset[key]`` checked against the model's variable and laid out as the model
        reads it: its trailing dims in the model's order (by name) and their coords in the
        model's order (by label), so that a store written in another order is read right."""
        self._check_variable(dataset, key, template)
        var = dataset[key]
        if trailing_dims is not None and tuple(var.dims[1:]) != trailing_dims:
            if set(var.dims[1:]) != set(trailing_dims):
                raise AmortizationError(
                    f"unit_data['{key}'] has the dims {var.dims}; the model's '{key}' has "
                    f"{(self.dim, *trailing_dims)}: give the dataset the model's dim names."
                )
            var = var.transpose(self.dim, *trailing_dims)
        for dim in var.dims[1:]:
            if dim not in coords or dim not in var.coords:
                continue
            labels = list(np.asarray(coords[dim]).tolist())
            if list(var[dim].values.tolist()) != labels:
                if set(var[dim].values.tolist()) != set(labels):
                    raise AmortizationError(
                        f"unit_data['{key}'] has the labels {var[dim].values.tolist()} along "
                        f"'{dim}'; the model's are {labels}."
                    )
                var = var.sel({dim: labels})
        if tuple(var.shape[1:]) != template.shape[1:]:
            raise AmortizationError(
                f"unit_data['{key}'] has a unit of shape {tuple(var.shape[1:])}; the model's "
                f"'{key}' has {template.shape[1:]}."
            )
        return var

    def _scan(self) -> None:
        """One pass over the dataset: every value finite, and which variables' chunk means
        differ more than a random order of the units would make them (an ordered store, whose
        few pooled chunks make neighbouring batches alike)."""
        sums = {k: [] for k in self.keys}
        squares = dict.fromkeys(self.keys, 0.0)
        for start, stop in self.spans():
            piece = self.read(start, stop)
            for key, values in piece.items():
                flat = values.reshape(stop - start, -1).astype(np.float64)
                finite = np.isfinite(flat).all(axis=1)
                if not finite.all():
                    first = start + int(np.flatnonzero(~finite)[0])
                    raise AmortizationError(
                        f"unit_data['{key}'] has NaN or inf at unit {first} (of '{self.dim}'); "
                        "every value the model reads must be finite."
                    )
                sums[key].append(flat.sum(axis=0))
                squares[key] = squares[key] + (flat**2).sum(axis=0)
        lengths = self.chunk_lengths.astype(np.float64)
        if lengths.size < 3:
            return
        ordered = []
        for key in self.keys:
            chunk_means = np.stack(sums[key]) / lengths[:, None]
            mean = chunk_means.T @ lengths / self.size
            variance = squares[key] / self.size - mean**2
            # Under a random order a chunk mean has variance ≈ variance / n_c: the ratio of the
            # chunk means' spread to that is ≈ 1 (an F statistic); 10 is far beyond chance.
            spread = ((chunk_means - mean) ** 2 * lengths[:, None]).sum(axis=0) / (lengths.size - 1)
            ratio = spread / np.where(variance > 0, variance, np.inf)
            if (ratio > ORDER_RATIO).any():
                ordered.append(key)
        self.ordered = tuple(ordered)

    def _check_variable(self, dataset: xr.Dataset, key: str, template: np.ndarray) -> None:
        if key not in dataset:
            raise AmortizationError(
                f"unit_data has no variable '{key}', which the model reads per unit of plate "
                f"'{self.dim}'; it has {sorted(dataset.data_vars)}."
            )
        var = dataset[key]
        if not var.dims or var.dims[0] != self.dim:
            raise AmortizationError(
                f"unit_data['{key}'] must have the unit dim '{self.dim}' first; its dims are "
                f"{var.dims}."
            )
        if var.ndim != template.ndim:
            raise AmortizationError(
                f"unit_data['{key}'] has a unit of shape {tuple(var.shape[1:])}; the model's "
                f"'{key}' has {template.shape[1:]}."
            )
        if var.dtype.kind not in "biuf":
            raise AmortizationError(
                f"unit_data['{key}'] has dtype {var.dtype}; it must be numeric."
            )
        if template.dtype.kind in "biu" and var.dtype.kind == "f":
            raise AmortizationError(
                f"unit_data['{key}'] holds floats, but the model's '{key}' is of integer dtype "
                f"{template.dtype} (counts?); store it as integers."
            )

    def _chunk_bounds(self) -> np.ndarray:
        chunks = self.dataset.chunksizes.get(self.dim) if self.dataset.chunks else None
        if chunks:
            lengths = np.asarray(chunks, dtype=np.int64)
        else:
            n_full, rest = divmod(self.size, DEFAULT_CHUNK)
            lengths = np.asarray([DEFAULT_CHUNK] * n_full + ([rest] if rest else []), np.int64)
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    @property
    def n_chunks(self) -> int:
        return self.bounds.size - 1

    @property
    def chunk_lengths(self) -> np.ndarray:
        return np.diff(self.bounds)

    def read(self, start: int, stop: int, keys=None) -> dict[str, np.ndarray]:
        """Units ``start:stop`` of each variable (all of ``keys``) as numpy, in the model's
        dtype: one read of the dataset (dask computes the variables together)."""
        keys = self.keys if keys is None else tuple(keys)
        piece = self.dataset[list(keys)].isel({self.dim: slice(start, stop)}).compute()
        return {k: np.asarray(piece[k].values, dtype=self.dtypes[k]) for k in keys}

    def read_chunk(self, chunk: int) -> dict[str, np.ndarray]:
        return self.read(int(self.bounds[chunk]), int(self.bounds[chunk + 1]))

    def spans(self, chunk_size: int | None = None) -> Iterator[tuple[int, int]]:
        """(start, stop) of the dataset's chunks, or of pieces of ``chunk_size`` units."""
        if chunk_size is None:
            yield from zip(self.bounds[:-1].tolist(), self.bounds[1:].tolist(), strict=True)
        else:
            for start in range(0, self.size, chunk_size):
                yield start, min(start + chunk_size, self.size)


class ChunkedUnitSampler:
    """Fills the source's (B, ...) buffers with one minibatch per step from a pool of chunks.

    When the whole dataset fits in ``pool_mib``, it is read once and every batch is a uniform
    draw of B of its N units, as from memory. Otherwise the pool holds K chunks (as many as fit in
    ``pool_mib``, at least 2), each drawn with probability proportional to its length, and a batch
    draws a slot uniformly and then a unit uniformly within it; see the module docstring for why
    every unit is still drawn with probability 1/N.

    Parameters
    ----------
    source : UnitSource
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
        *,
        pool_mib: float = POOL_MIB,
        slots: int | None = None,
        refresh_every: int | None = None,
        random_seed: int | np.random.Generator | None = None,
    ):
        self.source = source
        self.rng = np.random.default_rng(random_seed)
        self.batch_size = next(iter(source.batch.values())).shape[0]
        lengths = source.chunk_lengths
        unit_bytes = sum(
            source.dtypes[k].itemsize * int(np.prod(source.trailing[k], dtype=np.int64))
            for k in source.keys
        )
        budget = pool_mib * 2**20
        self.whole = slots is None and source.size * unit_bytes <= budget
        if self.whole:
            self.slots, self.width = 1, source.size
        else:
            self.width = int(lengths.max())
            fit = int(budget // (self.width * unit_bytes))
            self.slots = int(slots) if slots is not None else max(2, fit)
        self.chunk_probabilities = lengths / lengths.sum()
        self.refresh_every = (
            refresh_every
            if refresh_every is not None
            else max(1, math.ceil(lengths.mean() / self.batch_size))
        )
        self.pool = {
            key: np.zeros((self.slots * self.width, *source.trailing[key]), source.dtypes[key])
            for key in source.keys
        }
        #: The chunk each slot holds, and its length.
        self.slot_chunks = np.zeros(self.slots, dtype=np.int64)
        self.slot_lengths = np.zeros(self.slots, dtype=np.int64)
        self.steps = 0
        self.chunks_read = 0
        self.units = np.zeros(self.batch_size, dtype=np.int64)
        self._reader: ThreadPoolExecutor | None = None
        if self.whole:
            for start, stop in source.spans():
                for key, array in source.read(start, stop).items():
                    self.pool[key][start:stop] = array
                self.chunks_read += 1
            return
        if source.ordered:
            warnings.warn(
                f"unit_data's chunks differ more than units stored in random order would "
                f"({', '.join(source.ordered)}: the chunk means spread over {ORDER_RATIO:g}x "
                f"what a random order gives), and the pool holds {self.slots} of its "
                f"{source.n_chunks} chunks at a time, so neighbouring batches "
                "come from a few alike chunks, which slows the fit and can bias its globals. "
                "Store the units shuffled, or raise unit_data_pool_mib to "
                f"{math.ceil(source.size * unit_bytes / 2**20)} to hold the whole dataset.",
                ChunkOrderWarning,
                stacklevel=2,
            )
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

    def _put(self, slot: int, chunk: int, values: Mapping[str, np.ndarray]) -> None:
        length = int(self.source.chunk_lengths[chunk])
        begin = slot * self.width
        for key, array in values.items():
            self.pool[key][begin : begin + length] = array
        self.slot_chunks[slot], self.slot_lengths[slot] = chunk, length
        self.chunks_read += 1

    def fill(self) -> None:
        """Put the next step's batch into the source's buffers (in place)."""
        self.steps += 1
        if self.whole:
            self.units = pool_position = self.rng.integers(self.width, size=self.batch_size)
        else:
            if self.steps % self.refresh_every == 0:
                slot = (self.steps // self.refresh_every) % self.slots
                chunk, future = self._next
                self._put(slot, chunk, future.result())
                self._next = self._read_ahead()
            slot = self.rng.integers(self.slots, size=self.batch_size)
            position = (self.rng.random(self.batch_size) * self.slot_lengths[slot]).astype(np.int64)
            self.units = self.source.bounds[self.slot_chunks[slot]] + position
            pool_position = slot * self.width + position
        for key, buffer in self.source.batch.items():
            np.take(self.pool[key], pool_position, axis=0, out=buffer)

    def close(self) -> None:
        """Stop the read-ahead thread."""
        if self._reader is not None:
            self._next[1].cancel()
            self._reader.shutdown(wait=True)


@dataclass(frozen=True)
class ColumnSummary:
    """Moments and range of the columns of an (N, k) input read chunk by chunk (float64)."""

    n: int
    mean: np.ndarray
    cov: np.ndarray
    low: np.ndarray
    high: np.ndarray


def input_columns(
    source: UnitSource, keys: Sequence[str], chunk_size: int | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, (stop - start, k) float64 matrix) of the named variables side by side."""
    for start, stop in source.spans(chunk_size):
        piece = source.read(start, stop, keys)
        yield (
            start,
            stop,
            np.column_stack([piece[k].reshape(stop - start, -1).astype(np.float64) for k in keys]),
        )


def summarize_columns(source: UnitSource, keys: Sequence[str], what: str) -> ColumnSummary:
    """One pass over the dataset: column means, covariance, minima and maxima.

    Raises :class:`AmortizationError` naming the variable when a value is NaN or infinite.
    """
    n, total, outer, low, high = 0, 0.0, 0.0, np.inf, -np.inf
    for start, _, matrix in input_columns(source, keys):
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            first = start + int(np.flatnonzero(~finite)[0])
            raise AmortizationError(
                f"unit_data[{list(keys)}] ({what}) has NaN or inf at unit {first}; the encoder "
                "needs finite inputs."
            )
        n += matrix.shape[0]
        total = total + matrix.sum(axis=0)
        outer = outer + matrix.T @ matrix
        low, high = np.minimum(low, matrix.min(axis=0)), np.maximum(high, matrix.max(axis=0))
    mean = total / n
    # E[xx'] - mm' loses digits when |mean| >> sd; centred sums would need a second pass, and the
    # result only scales the encoder's inputs and its training range.
    cov = np.atleast_2d(outer / n - np.outer(mean, mean))
    np.fill_diagonal(cov, np.maximum(np.diag(cov), 0.0))
    return ColumnSummary(n, mean, cov, low, high)
