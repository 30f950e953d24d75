"""Every unit's results, chunk by chunk: draws that do not depend on the chunking, and datasets
assembled in memory or appended to a zarr store as each chunk is computed.

``encode_dataset``, ``sample_dataset`` and ``psis_diagnostic(chunk_size=...)`` run over millions of
units a chunk at a time. Two things make their results independent of ``chunk_size``:

- **Noise by unit block.** The standard normal noise of units ``n`` in block
  ``b = n // NOISE_BLOCK`` comes from its own generator, seeded by ``(seed, stream, b)`` and filled
  unit by unit, so the noise of units ``start:stop`` is the same whichever chunks they fall in (a
  chunk that starts inside a block regenerates that block's first units, at most
  ``NOISE_BLOCK`` units of waste per chunk).
- **One writer.** :func:`assemble_chunks` concatenates the chunks along their unit dim, or appends
  them to a zarr store with zarr chunks of ``chunk_size`` units and returns the store opened lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import xarray as xr

__all__ = ["NOISE_BLOCK", "ChunkedPart", "assemble_chunks", "seed_sequence", "unit_noise"]

#: Units per noise block (see the module docstring).
NOISE_BLOCK = 1024


def seed_sequence(random_seed) -> np.random.SeedSequence:
    """The :class:`numpy.random.SeedSequence` of ``random_seed`` (None, an int, a SeedSequence or
    a Generator, from which one integer is drawn). ``np.random.default_rng(seed_sequence(s))``
    is ``np.random.default_rng(s)`` for an int ``s``."""
    if isinstance(random_seed, np.random.SeedSequence):
        return random_seed
    if isinstance(random_seed, np.random.Generator):
        return np.random.SeedSequence(int(random_seed.integers(2**63)))
    return np.random.SeedSequence(random_seed)


def unit_noise(
    seed: np.random.SeedSequence,
    stream: int,
    draws: int,
    start: int,
    stop: int,
    event_shape: Sequence[int] = (),
) -> np.ndarray:
    """Standard normal noise ``(draws, stop - start, *event_shape)`` for units ``start:stop`` of
    one ``stream`` (e.g. one latent), the same for a unit whatever chunk asks for it.

    Block ``b`` of :data:`NOISE_BLOCK` units draws from
    ``SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, stream, b))``, unit by unit: a prefix
    of a block is a prefix of its stream, so only the units up to ``stop`` are generated.
    ``np.random.default_rng(seed)`` itself (e.g. for the globals' draws) is a different stream.
    """
    event_shape = tuple(int(d) for d in event_shape)
    pieces = []
    for block in range(start // NOISE_BLOCK, -(-stop // NOISE_BLOCK)):
        first = block * NOISE_BLOCK
        key = np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, stream, block))
        rng = np.random.default_rng(key)
        noise = rng.standard_normal((min(stop, first + NOISE_BLOCK) - first, draws, *event_shape))
        pieces.append(noise[max(start - first, 0) :])
    noise = np.concatenate(pieces) if pieces else np.zeros((0, draws, *event_shape))
    return np.moveaxis(noise, 0, 1)


class ChunkedPart(NamedTuple):
    """The dataset of ``size`` units laid end to end along ``unit_dim``: ``build(start, stop)``
    computes units ``start:stop``. With ``unit_dim=None``, ``build(0, size)`` is the whole part
    (e.g. the globals' draws), computed once."""

    unit_dim: str | None
    size: int
    build: Callable[[int, int], xr.Dataset]


def assemble_chunks(
    parts: Sequence[ChunkedPart],
    *,
    chunk_size: int,
    description: str,
    progressbar: bool,
    store=None,
) -> xr.Dataset:
    """Lay each part's chunks end to end along its unit dim and merge the parts.

    Parameters
    ----------
    parts : sequence of ChunkedPart
        The parts, each computed ``chunk_size`` units at a time.
    chunk_size : int
        Units per chunk: the zarr chunk length along the unit dim (other dims are one chunk).
    description : str
        The label of PyMC's progress bar, which advances once per chunk.
    progressbar : bool
        Show the progress bar.
    store : str, path or zarr store, optional
        Write the first chunk of each part with ``Dataset.to_zarr`` (the first part overwrites the
        store), append the others along the part's unit dim as they come, and return the store
        opened lazily (``xr.open_zarr``; dask-backed when dask is installed). Without it the
        chunks are concatenated in memory.

    Returns
    -------
    xarray.Dataset
        Every part's variables, their attributes dropped.
    """
    from pymc.progress_bar import create_simple_progress

    merged: list[xr.Dataset] = []
    written = False
    progress = create_simple_progress(progressbar)  # (a null one's __enter__ gives None)
    total = sum(-(-part.size // chunk_size) for part in parts if part.unit_dim is not None)
    with progress:
        task = progress.add_task(description, completed=0, total=total)
        for unit_dim, size, build in parts:
            in_memory = []
            if unit_dim is None:
                bounds = [(0, size)]
            else:
                bounds = [(a, min(a + chunk_size, size)) for a in range(0, size, chunk_size)]
            for i, (start, stop) in enumerate(bounds):
                piece = build(start, stop)
                piece.attrs = {}
                if store is None:
                    in_memory.append(piece)
                elif i == 0:
                    encoding = {
                        name: {
                            "chunks": tuple(
                                chunk_size if dim == unit_dim else size
                                for dim, size in zip(var.dims, var.shape, strict=True)
                            )
                        }
                        for name, var in piece.data_vars.items()
                    }
                    mode = "a" if written else "w"
                    piece.to_zarr(store, mode=mode, encoding=encoding, consolidated=False)
                else:
                    piece.to_zarr(store, append_dim=unit_dim, consolidated=False)
                written = written or store is not None
                if unit_dim is not None:
                    progress.advance(task)
            if len(in_memory) == 1 or (in_memory and unit_dim is None):
                merged.append(in_memory[0])
            elif in_memory:
                merged.append(xr.concat(in_memory, dim=unit_dim, data_vars="all"))
    if store is not None:
        try:
            import dask  # noqa: F401

            chunks = {}
        except ImportError:
            chunks = None
        return xr.open_zarr(store, chunks=chunks, consolidated=False)
    return xr.merge(merged) if merged else xr.Dataset()
