"""Units read from an :class:`xarray.Dataset` chunk by chunk: fits on data larger than memory.

The model is written on a *template*, any few units of the data in memory (``ds.isel(unit=
slice(0, 100)).load()``), with the same variable names as the dataset; ``unit_data=ds`` gives the
N units the fit draws its minibatches from. The dataset may be lazy (zarr through dask): it is
read one chunk (of its own chunking along the unit dim) at a time and never held whole.

:class:`UnitSource` checks the dataset against the template and reads it: chunks of units, their
rows, and one-pass column summaries (:func:`summarize_columns`) for the encoders' scaling. An
indexed plate (units with any number of rows, e.g. counties and their houses) keeps its rows
sorted by unit in the store, so a chunk's rows are one contiguous read. The minibatches are drawn
from a pool of chunks by :mod:`pymc_amortize.data.sampler`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pymc as pm
import xarray as xr

from pymc_amortize.data.scaling import standardization_scale
from pymc_amortize.errors import AmortizationError
from pymc_amortize.model.types import DataInput, ModelAnalysis, Plate

__all__ = [
    "DEFAULT_CHUNK",
    "ORDER_RATIO",
    "ChunkData",
    "ColumnSummary",
    "StreamedPlate",
    "UnitSource",
    "input_columns",
    "summarize_columns",
]

#: Chunk length along the unit dim when the dataset has no chunking of its own (numpy-backed).
DEFAULT_CHUNK = 100_000
#: Chunk means this many times more spread than a random order gives mark an ordered store.
ORDER_RATIO = 10.0


@dataclass(frozen=True)
class StreamedPlate(Plate):
    """A plate whose units are read from ``unit_data``: its row statistics come from passes over
    the dataset, not from the template model's index (see :class:`UnitSource`)."""

    stream_rows: int = 0

    @property
    def n_rows(self) -> int:
        return self.stream_rows if self.index is not None else self.size

    @property
    def row_counts(self) -> np.ndarray:
        # A fit on unit_data has no unit without rows (UnitSource refuses them).
        return np.ones(self.size, dtype=np.int64)

    @property
    def unit_of_row(self) -> np.ndarray:
        raise AmortizationError(
            f"The rows of plate '{self.name}' are read from unit_data chunk by chunk; they are "
            "never in memory together."
        )


class ChunkData(NamedTuple):
    """One chunk of units: their unit arrays, their rows' arrays, and (indexed plates) where each
    unit's rows start in them, (n_c + 1,) int64."""

    units: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    offsets: np.ndarray | None


class UnitSource:
    """The N units of a model's plate, read from an xarray Dataset one chunk at a time.

    Parameters
    ----------
    dataset : xarray.Dataset
        One variable per data array of the plate (observed variables, ``pm.Data`` and encoder
        inputs), under the model's names, with the plate's dim first (its rows' dim for
        row-aligned arrays of an indexed plate, whose index must be sorted by unit) and the same
        trailing dims as in the model. May be lazy (dask, zarr); its chunking along the unit dim
        is the read unit (``DEFAULT_CHUNK`` units when it has none).
    analysis : ModelAnalysis
        The analysis of the template model.
    batch_size : int
        B, the units of one minibatch (checked against the dataset's N; the step's buffers,
        :class:`~pymc_amortize.data.sampler.StepBuffers`, are that long).
    model : pm.Model, optional
        The template model: its dims and coords, to read the dataset in their order.

    Attributes
    ----------
    plate : StreamedPlate
        The template's plate with its size set to the dataset's N.
    analysis : ModelAnalysis
        The template's analysis with that plate.
    dim, row_dim : str
        The dataset's unit dim, and (indexed plates) its rows' dim.
    unit_keys, row_keys : tuple of str
        The unit-aligned and (indexed plates) row-aligned variables read.
    bounds : ndarray
        (n_chunks + 1,) int64 chunk starts, and N last; ``row_bounds`` the chunks' first rows.
    max_rows : int
        The most rows of a unit (1 for a row plate): a batch holds at most B times as many.

    Raises
    ------
    AmortizationError
        When the model has more than one plate, when an encoder reads an unnamed array or a given
        matrix, when the dataset lacks a variable or a dim, when a variable's trailing dims,
        labels or dtype do not match the model's, when a value is not finite, or when an index
        is not sorted by unit, out of range, or leaves a unit without rows.
    """

    def __init__(
        self,
        dataset: xr.Dataset,
        analysis: ModelAnalysis,
        batch_size: int,
        *,
        model: pm.Model | None = None,
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
        if plate.size < 2:
            raise AmortizationError(
                f"The template holds {plate.size} unit of plate '{plate.name}'; it needs at least "
                "two units whose data vary: the analysis reads from the template which data are "
                "the units' (a covariate that is constant on it looks like none)."
            )
        units: dict[str, DataInput] = {d.key: d for d in plate.batched_units}
        rows: dict[str, DataInput] = {d.key: d for d in plate.batched_rows}
        for latent in plate.latents:
            if latent.input_matrix is not None:
                raise AmortizationError(
                    f"The encoder of '{latent.name}' reads a given matrix; with unit_data= its "
                    "inputs must be variables of the dataset: name them in local= "
                    f"({{'{latent.name}': ['x', ...]}})."
                )
            units |= {d.key: d for d in latent.unit_inputs}
            rows |= {d.key: d for d in latent.row_inputs}
        for data in (*units.values(), *rows.values(), *([plate.index] if plate.index else [])):
            if not data.named:
                raise AmortizationError(
                    f"'{data.key}' is an unnamed array of the model aligned with plate "
                    f"'{plate.name}'; with unit_data= each such array is read from the dataset by "
                    "name: give it one with pm.Data and add it to the dataset."
                )
        model_dims = model.named_vars_to_dims if model is not None else {}
        model_coords = model.coords if model is not None else {}
        self.index_key = plate.index.key if plate.index is not None else None
        self.row_dim: str | None = None
        if self.index_key is not None:
            if self.index_key not in dataset or not dataset[self.index_key].dims:
                raise AmortizationError(
                    f"unit_data has no variable '{self.index_key}', the unit of each row of "
                    f"plate '{plate.name}'; it has {sorted(dataset.data_vars)}."
                )
            self.row_dim = dataset[self.index_key].dims[0]
        self.dim = self._unit_dim(dataset, plate, units)
        self.unit_keys, self.row_keys = tuple(units), tuple(rows)
        self.keys = self.unit_keys + self.row_keys
        self.dtypes: dict[str, np.dtype] = {}
        self.trailing: dict[str, tuple[int, ...]] = {}
        variables = {}
        for key, data in (*units.items(), *rows.items()):
            template = np.asarray(data.value)
            lead = self.dim if key in units else self.row_dim
            dims = model_dims.get(key)
            variables[key] = self._aligned(
                dataset, key, lead, template, tuple(dims[1:]) if dims else None, model_coords
            )
            self.dtypes[key], self.trailing[key] = template.dtype, template.shape[1:]
        if self.index_key is not None:
            index = dataset[self.index_key]
            if index.ndim != 1 or index.dtype.kind not in "iu":
                raise AmortizationError(
                    f"unit_data['{self.index_key}'] must be one integer unit id per row; it has "
                    f"dims {index.dims} and dtype {index.dtype}."
                )
            variables[self.index_key] = index
        # unify_chunks: variables of one store may be chunked differently along a dim.
        self.dataset = xr.Dataset(variables).unify_chunks()
        if self.dim in self.dataset.sizes:
            self.size = int(self.dataset.sizes[self.dim])
        elif self.dim in dataset.sizes:
            self.size = int(dataset.sizes[self.dim])
        else:  # an indexed plate whose units have no variable: the index's last unit
            self.size = int(self.dataset[self.index_key][-1].values) + 1
        if batch_size > self.size:
            raise AmortizationError(
                f"batch_size={batch_size} is more than the {self.size} units of unit_data."
            )
        self.bounds = self._chunk_bounds(self.dim, self.size)
        if self.index_key is not None and not self.unit_keys:
            # No unit variable to take the chunking of: chunks of units with about as many rows
            # as the rows' chunks.
            n_rows = int(self.dataset.sizes[self.row_dim])
            row_chunk = int(np.diff(self._chunk_bounds(self.row_dim, n_rows)).max(initial=1))
            length = max(1, round(self.size * row_chunk / max(n_rows, 1)))
            self.bounds = np.unique(np.r_[np.arange(0, self.size, length), self.size])
        self.row_bounds: np.ndarray | None = None
        self.n_rows, self.max_rows = self.size, 1
        #: Fewest and most rows of a unit; centre and scale of log(1 + rows) over the units.
        self.row_count_range: tuple[int, int] | None = None
        self.log_count_scaling = (0.0, 1.0)
        self.constant_count = False
        if self.index_key is not None:
            self._index_pass()
        #: Variables whose chunks differ more than units stored in random order would (see scan).
        self.ordered: tuple[str, ...] = ()
        self._scan()
        self.plate = StreamedPlate(
            **{f.name: getattr(plate, f.name) for f in dataclasses.fields(plate)}
            | {"size": self.size},
            stream_rows=self.n_rows,
        )
        self.analysis = dataclasses.replace(
            analysis,
            plates=tuple(self.plate if p is plate else p for p in analysis.plates),
        )
        self.batch_size = batch_size

    @staticmethod
    def _unit_dim(dataset: xr.Dataset, plate: Plate, needed: Mapping[str, DataInput]) -> str:
        if plate.dim is not None and (plate.dim in dataset.dims or plate.index is not None):
            return plate.dim
        leading = {dataset[k].dims[0] for k in needed if k in dataset and dataset[k].dims}
        if plate.dim is None and len(leading) == 1:
            return leading.pop()
        if plate.dim is None and plate.index is not None and not needed:
            return plate.name
        raise AmortizationError(
            f"unit_data has no dim '{plate.dim or plate.name}' for the units of plate "
            f"'{plate.name}'; its dims are {sorted(dataset.dims)}."
        )

    def _aligned(
        self,
        dataset: xr.Dataset,
        key: str,
        lead: str,
        template: np.ndarray,
        trailing_dims: tuple[str, ...] | None,
        coords: Mapping[str, Sequence],
    ) -> xr.DataArray:
        """``dataset[key]`` checked against the model's variable and laid out as the model
        reads it: its trailing dims in the model's order (by name) and their coords in the
        model's order (by label), so that a store written in another order is read right."""
        self._check_variable(dataset, key, lead, template)
        var = dataset[key]
        if trailing_dims is not None and tuple(var.dims[1:]) != trailing_dims:
            if set(var.dims[1:]) != set(trailing_dims):
                raise AmortizationError(
                    f"unit_data['{key}'] has the dims {var.dims}; the model's '{key}' has "
                    f"{(lead, *trailing_dims)}: give the dataset the model's dim names."
                )
            var = var.transpose(lead, *trailing_dims)
        for dim in var.dims[1:]:
            if dim not in coords or dim not in var.coords:
                continue
            labels = list(np.asarray(coords[dim]).tolist())
            if var[dim].values.tolist() != labels:
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

    def _check_variable(self, dataset: xr.Dataset, key: str, lead: str, template) -> None:
        if key not in dataset:
            raise AmortizationError(
                f"unit_data has no variable '{key}', which the model reads per unit of plate "
                f"'{self.dim}'; it has {sorted(dataset.data_vars)}."
            )
        var = dataset[key]
        if not var.dims or var.dims[0] != lead:
            raise AmortizationError(
                f"unit_data['{key}'] must have the dim '{lead}' first; its dims are {var.dims}."
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

    def _chunk_bounds(self, dim: str, size: int) -> np.ndarray:
        chunks = self.dataset.chunksizes.get(dim) if self.dataset.chunks else None
        if chunks:
            lengths = np.asarray(chunks, dtype=np.int64)
        else:
            n_full, rest = divmod(size, DEFAULT_CHUNK)
            lengths = np.asarray([DEFAULT_CHUNK] * n_full + ([rest] if rest else []), np.int64)
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def _index_pass(self) -> None:
        """One pass over the index, row chunk by row chunk: sorted, in range, every unit with
        rows; each unit chunk's first row; the rows per unit's range and log-count moments."""
        key, n_units = self.index_key, self.size
        row_bounds = np.zeros(self.bounds.size, dtype=np.int64)
        bounds = self._chunk_bounds(self.row_dim, int(self.dataset.sizes[self.row_dim]))
        previous, carry = -1, (-1, 0)
        with_rows, low, high, total, squares = 0, np.iinfo(np.int64).max, 0, 0.0, 0.0

        def close(count: int) -> None:
            nonlocal with_rows, low, high, total, squares
            with_rows += 1
            low, high = min(low, count), max(high, count)
            total, squares = total + np.log1p(count), squares + np.log1p(count) ** 2

        for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            index = self._read_index(start, stop)
            if index.size == 0:
                continue
            if index[0] < previous or (index.size > 1 and (np.diff(index) < 0).any()):
                raise AmortizationError(
                    f"unit_data['{key}'] must be sorted by unit (rows of a unit together, units "
                    "in order) to be read chunk by chunk; sort the store by it "
                    f"(ds.sortby('{key}')), near row {start}."
                )
            if index[0] < 0 or index[-1] >= n_units:
                raise AmortizationError(
                    f"unit_data['{key}'] has unit ids outside 0..{n_units - 1} near row {start}."
                )
            previous = int(index[-1])
            row_bounds += np.searchsorted(index, self.bounds, side="left")
            units, counts = np.unique(index, return_counts=True)
            if units[0] == carry[0]:
                counts[0] += carry[1]
            elif carry[1]:
                close(carry[1])
            for count in counts[:-1]:
                close(int(count))
            carry = (int(units[-1]), int(counts[-1]))
        if carry[1]:
            close(carry[1])
        if with_rows < n_units:
            raise AmortizationError(
                f"{n_units - with_rows} of the {n_units} units of '{self.dim}' in unit_data have "
                "no rows. A fit on unit_data needs rows for every unit: leave the others out "
                "(their posterior is their prior given the globals: approx.sample_new_units with "
                "units= gives it)."
            )
        self.row_bounds = row_bounds
        self.n_rows, self.max_rows = int(row_bounds[-1]), int(high)
        self.row_count_range = (int(low), int(high))
        mean = total / n_units
        sd = np.sqrt(max(squares / n_units - mean**2, 0.0))
        #: Every unit has the same number of rows: its log(1 + n) is the centre, exactly.
        self.constant_count = low == high
        if self.constant_count:
            mean = float(np.log1p(low))
        self.log_count_scaling = (mean, float(standardization_scale(sd, mean)))

    def _read_index(self, start: int, stop: int) -> np.ndarray:
        var = self.dataset[self.index_key].isel({self.row_dim: slice(start, stop)})
        return np.asarray(var.values, dtype=np.int64)

    def _scan(self) -> None:
        """One pass over the dataset: every value finite, and which variables' chunk means
        differ more than a random order of the units would make them (an ordered store, whose
        few pooled chunks make neighbouring batches alike)."""
        sums = {k: [] for k in self.keys}
        counts = {k: [] for k in self.keys}
        squares = dict.fromkeys(self.keys, 0.0)
        for chunk in range(self.n_chunks):
            start = int(self.bounds[chunk])
            data = self.read_chunk(chunk)
            for key, values in (*data.units.items(), *data.rows.items()):
                flat = values.reshape(values.shape[0], -1).astype(np.float64)
                finite = np.isfinite(flat).all(axis=1)
                if not finite.all():
                    where = int(np.flatnonzero(~finite)[0])
                    at = (
                        f"unit {start + where}"
                        if key in data.units
                        else f"row {int(self.row_bounds[chunk]) + where}"
                    )
                    raise AmortizationError(
                        f"unit_data['{key}'] has NaN or inf at {at}; every value the model reads "
                        "must be finite."
                    )
                if key not in data.units:
                    # Rows are alike within a unit by design: compare chunks by unit means.
                    sizes = np.diff(data.offsets)[:, None]
                    flat = np.add.reduceat(flat, data.offsets[:-1], axis=0) / sizes
                sums[key].append(flat.sum(axis=0))
                counts[key].append(flat.shape[0])
                squares[key] = squares[key] + (flat**2).sum(axis=0)
        if self.n_chunks < 3:
            return
        ordered = []
        for key in self.keys:
            lengths = np.asarray(counts[key], dtype=np.float64)
            keep = lengths > 0
            lengths, chunk_sums = lengths[keep], np.stack(sums[key])[keep]
            n = lengths.sum()
            chunk_means = chunk_sums / lengths[:, None]
            mean = chunk_sums.sum(axis=0) / n
            variance = squares[key] / n - mean**2
            # Under a random order a chunk mean has variance ≈ variance / n_c: the ratio of the
            # chunk means' spread to that is ≈ 1 (an F statistic); 10 is far beyond chance.
            spread = ((chunk_means - mean) ** 2 * lengths[:, None]).sum(axis=0) / max(
                lengths.size - 1, 1
            )
            ratio = spread / np.where(variance > 0, variance, np.inf)
            if (ratio > ORDER_RATIO).any():
                ordered.append(key)
        self.ordered = tuple(ordered)

    @property
    def n_chunks(self) -> int:
        return self.bounds.size - 1

    @property
    def chunk_lengths(self) -> np.ndarray:
        return np.diff(self.bounds)

    @property
    def chunk_rows(self) -> np.ndarray:
        """Rows of each chunk of units (its units for a row plate)."""
        return np.diff(self.row_bounds) if self.row_bounds is not None else self.chunk_lengths

    def read(self, start: int, stop: int, keys=None) -> dict[str, np.ndarray]:
        """Units ``start:stop`` of each unit variable (all of ``keys``) as numpy, in the model's
        dtype: one read of the dataset (dask computes the variables together)."""
        keys = self.unit_keys if keys is None else tuple(keys)
        if not keys:
            return {}
        piece = self.dataset[list(keys)].isel({self.dim: slice(start, stop)}).compute()
        return {k: np.asarray(piece[k].values, dtype=self.dtypes[k]) for k in keys}

    def _row_start(self, unit: int) -> int:
        """The first row of ``unit`` (of the rows of units ``unit`` and after)."""
        chunk = int(np.searchsorted(self.bounds, unit, side="right")) - 1
        if chunk >= self.n_chunks or unit == self.bounds[chunk]:
            return int(self.row_bounds[min(chunk, self.n_chunks)])
        lo, hi = int(self.row_bounds[chunk]), int(self.row_bounds[chunk + 1])
        return lo + int(np.searchsorted(self._read_index(lo, hi), unit, side="left"))

    def read_rows(
        self, start: int, stop: int, keys=None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The rows of units ``start:stop`` of each row variable (all of ``keys``), and each
        row's unit position 0..stop-start-1 (int64)."""
        keys = self.row_keys if keys is None else tuple(keys)
        lo, hi = self._row_start(start), self._row_start(stop)
        piece = self.dataset[[*keys, self.index_key]].isel({self.row_dim: slice(lo, hi)})
        piece = piece.compute()
        slot = np.asarray(piece[self.index_key].values, dtype=np.int64) - start
        return {k: np.asarray(piece[k].values, dtype=self.dtypes[k]) for k in keys}, slot

    def row_columns(
        self, start: int, stop: int, keys: Sequence[str]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The rows of units ``start:stop`` of the ``keys`` variables, each as an (R, k_i)
        matrix, and each row's unit position (one read, see :meth:`read_rows`)."""
        piece, slot = self.read_rows(start, stop, keys)
        return [piece[k].reshape(slot.size, -1) for k in keys], slot

    def read_chunk(self, chunk: int) -> ChunkData:
        start, stop = int(self.bounds[chunk]), int(self.bounds[chunk + 1])
        units = self.read(start, stop)
        if self.index_key is None:
            return ChunkData(units, {}, None)
        rows, slot = self.read_rows(start, stop)
        offsets = np.searchsorted(slot, np.arange(stop - start + 1), side="left").astype(np.int64)
        return ChunkData(units, rows, offsets)

    def spans(self, chunk_size: int | None = None) -> Iterator[tuple[int, int]]:
        """(start, stop) of the dataset's chunks, or of pieces of ``chunk_size`` units."""
        if chunk_size is None:
            yield from zip(self.bounds[:-1].tolist(), self.bounds[1:].tolist(), strict=True)
        else:
            for start in range(0, self.size, chunk_size):
                yield start, min(start + chunk_size, self.size)


@dataclass(frozen=True)
class ColumnSummary:
    """Moments and range of the columns of an (N, k) input read chunk by chunk (float64)."""

    n: int
    mean: np.ndarray
    cov: np.ndarray
    low: np.ndarray
    high: np.ndarray


def input_columns(
    source: UnitSource, keys: Sequence[str], chunk_size: int | None = None, *, rows: bool = False
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, (n, k) float64 matrix) of the named variables side by side, for the units
    ``start:stop`` (n = stop - start) or, with ``rows``, for their rows."""
    for start, stop in source.spans(chunk_size):
        piece = source.read_rows(start, stop, keys)[0] if rows else source.read(start, stop, keys)
        n = len(next(iter(piece.values())))
        yield (
            start,
            stop,
            np.column_stack([piece[k].reshape(n, -1).astype(np.float64) for k in keys]),
        )


def summarize_columns(
    source: UnitSource, keys: Sequence[str], *, rows: bool = False
) -> ColumnSummary:
    """One pass over the dataset: the columns' means, covariance, minima and maxima (their
    values were checked finite by the source's scan)."""
    n, total, outer, low, high = 0, 0.0, 0.0, np.inf, -np.inf
    for _, _, matrix in input_columns(source, keys, rows=rows):
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
