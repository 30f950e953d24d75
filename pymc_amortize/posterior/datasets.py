"""The posterior of every fitted unit as xarray Datasets, chunk by chunk (for millions of units),
and the one rule for the dims and coords of a variable and of a plate's units."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from pytensor.graph.replace import vectorize_graph

from pymc_amortize.data.streaming import UnitSource
from pymc_amortize.errors import AmortizationError
from pymc_amortize.guide.compiled import compile_once
from pymc_amortize.guide.state import AmortizedGuide
from pymc_amortize.model.types import LocalLatent, Plate
from pymc_amortize.posterior.chunks import ChunkedPart, assemble_chunks, seed_sequence, unit_noise
from pymc_amortize.posterior.conditional_units import (
    fitted_unit_data,
    mixture_moments,
    other_plate_values,
    plate_conditional,
    split_entries,
)
from pymc_amortize.posterior.local import (
    QUANTILE_LEVELS,
    local_posterior,
    units_without_rows,
    zero_row_prior,
)

__all__ = [
    "CONDITIONAL_DRAWS",
    "CONDITIONAL_SEED",
    "conditional_unit_draws",
    "conditioning_draws",
    "draws_dataset",
    "encode_dataset",
    "globals_dataset",
    "sample_dataset",
    "unit_coords",
    "unit_dataset",
    "unit_dim",
    "unit_draws",
    "unit_labels",
    "variable_dims",
]

#: Draws of q(θ), and their seed, behind the moments of a conditional plate's q(z_n) in
#: :func:`encode_dataset`: ``encode()``'s defaults (``prior_draws``, ``random_seed``), so that a
#: chunk's moments equal those ``encode()`` gives the same units passed as new units.
CONDITIONAL_DRAWS = 4000
CONDITIONAL_SEED = 0


def variable_dims(
    model: pm.Model, name: str, shape: Sequence[int], *, prefix: str | None = None
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The dims of the trailing axes ``shape`` of variable ``name``, and their coords.

    Each axis takes the model's dim of that axis of ``name`` where it has one whose coords (if
    any) have the axis' length, else PyMC's ``<prefix>_dim_<i>`` (``prefix`` defaults to
    ``name``; e.g. a transform that changes the shape). The coords are the model's, for the dims
    that have them.
    """
    prefix = name if prefix is None else prefix
    model_dims = list(model.named_vars_to_dims.get(name) or ())
    model_dims = model_dims[len(model_dims) - len(shape) :] if len(shape) else []
    if len(model_dims) != len(shape):
        model_dims = [None] * len(shape)
    dims, coords = [], {}
    for i, (dim, size) in enumerate(zip(model_dims, shape, strict=True)):
        values = model.coords.get(dim) if dim is not None else None
        if dim is None or (values is not None and len(values) != size):
            dims.append(f"{prefix}_dim_{i}")
            continue
        dims.append(dim)
        if values is not None:
            coords[dim] = np.asarray(values)
    return dims, coords


def unit_dim(plate: Plate) -> str:
    """The dim of ``plate``'s units in every result: its model dim, else the plate's name."""
    return plate.dim if plate.dim is not None else plate.name


def unit_labels(
    model: pm.Model, plate: Plate, unit_source: UnitSource | None = None
) -> np.ndarray | None:
    """The plate's unit coords as one array (None without coords): the model's, or for the plate
    read from ``unit_data`` (``unit_source``) the dataset's. Converted once per call and sliced
    per chunk, a chunk's labels keep the whole array's dtype: string labels converted chunk by
    chunk ("c9" then "c10") failed to append to zarr (dtype <U2, then <U3)."""
    if unit_source is not None and plate is unit_source.plate:
        # The units are the dataset's, not the template model's.
        if unit_source.dim in unit_source.dataset.coords:
            return np.asarray(unit_source.dataset[unit_source.dim].values)
        return None
    values = model.coords.get(plate.dim) if plate.dim is not None else None
    return None if values is None else np.asarray(values)


def unit_coords(model: pm.Model, plate: Plate, unit_source: UnitSource | None = None) -> np.ndarray:
    """:func:`unit_labels` where they label every unit, else the positions 0..N-1."""
    labels = unit_labels(model, plate, unit_source)
    if labels is None or len(labels) != plate.size:
        return np.arange(plate.size)
    return labels


def encode_dataset(
    guide: AmortizedGuide,
    *,
    chunk_size: int = 100_000,
    progressbar: bool = True,
    summary: bool = True,
    quantiles: Sequence[float] = QUANTILE_LEVELS,
    store=None,
) -> xr.Dataset:
    """:meth:`~pymc_amortize.AmortizedApproximation.encode_dataset`."""

    if not isinstance(chunk_size, int | np.integer) or chunk_size <= 0:
        raise AmortizationError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
    chunk_size = int(chunk_size)
    levels = tuple(float(q) for q in quantiles)
    conditional = {}
    if guide.conditional_plates:
        # The draws of q(θ) behind every chunk's mixture moments, drawn once.
        rng = np.random.default_rng(CONDITIONAL_SEED)
        global_values = guide.draw_globals(CONDITIONAL_DRAWS, rng)
        for plate in guide.analysis.plates:
            if plate.name in guide.conditional_plates:
                conditional[plate.name] = dict(global_values) | other_plate_values(
                    guide, plate, global_values, rng
                )
    parts = [
        ChunkedPart(
            unit_dim(plate),
            plate.size,
            functools.partial(
                unit_dataset,
                guide,
                plate,
                summary=summary,
                levels=levels,
                labels=unit_labels(guide.model, plate, guide.unit_source),
                conditional=conditional.get(plate.name),
            ),
        )
        for plate in guide.analysis.plates
        if plate.latents
    ]
    return assemble_chunks(
        parts,
        chunk_size=chunk_size,
        description="Encoding units",
        progressbar=progressbar,
        store=store,
    )


def unit_dataset(
    guide: AmortizedGuide,
    plate: Plate,
    start: int,
    stop: int,
    summary: bool,
    levels: tuple[float, ...],
    labels: np.ndarray | None,
    conditional: Mapping[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """The posterior of the fitted units ``start:stop`` of ``plate``, whose coords are
    ``labels`` (see :func:`encode_dataset` and :func:`unit_labels`); for a conditional plate,
    the moments of the marginal q(z_n) over the draws ``conditional`` of everything else
    (:func:`~pymc_amortize.posterior.conditional_units.mixture_moments`)."""
    dim = unit_dim(plate)
    coords = {}
    if labels is not None:
        coords[dim] = labels[start:stop]
    data_vars = {}
    encoded = {lat.name: guide.encode_units(lat.name, start, stop) for lat in plate.latents}
    if conditional is not None:
        starts = [encoded[lat.name][0].reshape(stop - start, -1) for lat in plate.latents]
        mean, sd = mixture_moments(
            plate_conditional(guide, plate),
            fitted_unit_data(guide, plate, start, stop),
            starts,
            conditional,
        )
        means, sds = split_entries(plate, mean), split_entries(plate, sd)
        encoded = {name: (means[name], sds[name]) for name in encoded}
    for latent in plate.latents:
        mean, sd = encoded[latent.name]
        value_dims, value_coords = variable_dims(guide.model, latent.name, mean.shape[1:])
        data_vars[f"{latent.name}_mean"] = ([dim, *value_dims], mean)
        data_vars[f"{latent.name}_sd"] = ([dim, *value_dims], sd)
        coords |= value_coords
        if summary:
            post = local_posterior(
                guide, latent, mean, sd, np.zeros(stop - start, bool), levels, True
            )
            own = post.constrained_mean
            own_dims, own_coords = variable_dims(guide.model, latent.name, own.shape[1:])
            if own.shape[1:] != mean.shape[1:] and set(own_dims) & set(value_dims):
                # A transform that changes the shape (a simplex): the two spaces' dims differ.
                own_dims, own_coords = variable_dims(
                    guide.model, latent.name, own.shape[1:], prefix=f"{latent.name}_constrained"
                )
            data_vars[latent.name] = ([dim, *own_dims], own)
            data_vars[f"{latent.name}_quantiles"] = (["quantile", dim, *own_dims], post.quantiles)
            coords |= own_coords
    if summary:
        coords["quantile"] = np.asarray(levels)
    return xr.Dataset(data_vars, coords=coords, attrs={"unit_dim": dim})


def sample_dataset(
    guide: AmortizedGuide,
    draws: int = 1000,
    *,
    chunk_size: int = 10_000,
    store=None,
    random_seed: int | None = None,
    progressbar: bool = True,
) -> xr.Dataset:
    """:meth:`~pymc_amortize.AmortizedApproximation.sample_dataset`."""

    if not isinstance(draws, int | np.integer) or draws <= 0:
        raise AmortizationError(f"draws must be a positive integer; got {draws!r}.")
    if not isinstance(chunk_size, int | np.integer) or chunk_size <= 0:
        raise AmortizationError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
    draws, chunk_size = int(draws), int(chunk_size)
    seed = seed_sequence(random_seed)
    global_values = guide.draw_globals(draws, np.random.default_rng(seed))
    globals_part = globals_dataset(guide, global_values, draws)
    parts = [ChunkedPart(None, 0, lambda start, stop: globals_part)]
    for plate_number, plate in enumerate(guide.analysis.plates):
        if not plate.latents:
            continue
        mask = units_without_rows(plate)
        empty = np.flatnonzero(mask)
        prior = {}
        if empty.size:
            # The prior given the same θ_s, drawn once (a stream of its own) so that it does
            # not depend on the chunking.
            rng = np.random.default_rng(
                np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, plate_number))
            )
            prior = zero_row_prior(guide, plate, mask, global_values, rng)
        conditional = None
        if plate.name in guide.conditional_plates:
            conditional = dict(global_values) | conditioning_draws(
                guide, plate, global_values, draws, seed
            )
        build = functools.partial(
            draws_dataset,
            guide,
            plate,
            draws=draws,
            seed=seed,
            labels=unit_labels(guide.model, plate, guide.unit_source),
            empty=empty,
            prior=prior,
            conditional=conditional,
        )
        parts.append(ChunkedPart(unit_dim(plate), plate.size, build))
    return assemble_chunks(
        parts,
        chunk_size=chunk_size,
        description="Drawing units",
        progressbar=progressbar,
        store=store,
    )


def unit_draws(
    guide: AmortizedGuide,
    latent: LocalLatent,
    start: int,
    stop: int,
    draws: int,
    seed: np.random.SeedSequence,
    q: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value-space draws ``(draws, stop - start, *event_shape)`` of q(z_n) for the fitted units
    ``start:stop``, the same whatever chunk asks (:func:`~pymc_amortize.posterior.chunks.unit_noise`),
    and q's mean and sd there (``q``, else the encoder's)."""
    mean, sd = guide.encode_units(latent.name, start, stop) if q is None else q
    stream = guide.analysis.latent_names.index(latent.name)
    noise = unit_noise(seed, stream, draws, start, stop, latent.event_shape)
    return mean + sd * noise, mean, sd


def globals_dataset(
    guide: AmortizedGuide, global_values: Mapping[str, np.ndarray], draws: int
) -> xr.Dataset:
    """The globals' value-space draws on their own scale, ``(chain, draw, *dims)``."""
    if guide.globals is None:
        return _chain_dataset(guide.model, {}, draws)
    local = set(guide.analysis.latent_names)
    rvs = [rv for rv in guide.model.free_RVs if rv.name not in local]
    value_vars = [guide.model.rvs_to_values[rv] for rv in rvs]
    # Each global on its own scale as a graph of the value variables, with a draw axis.
    batched = {
        v: pt.TensorType(v.dtype, shape=(None, *v.type.shape))(name=f"{v.name}_draws")
        for v in value_vars
    }
    own = vectorize_graph(guide.model.replace_rvs_by_values(rvs), batched)
    values = compile_once(list(batched.values()), own)(*(global_values[v.name] for v in value_vars))
    return _chain_dataset(
        guide.model, {rv.name: value for rv, value in zip(rvs, values, strict=True)}, draws
    )


def draws_dataset(
    guide: AmortizedGuide,
    plate: Plate,
    start: int,
    stop: int,
    draws: int,
    seed: np.random.SeedSequence,
    labels: np.ndarray | None,
    empty: np.ndarray,
    prior: Mapping[str, np.ndarray],
    conditional: Mapping[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """Draws of the fitted units ``start:stop`` of ``plate`` (coords ``labels``) on their own
    scale (see :func:`sample_dataset`); ``empty`` are the plate's units without rows and
    ``prior`` their constrained prior draws ``(draws, empty.size, ...)``; a conditional plate's
    from q(z_n | θ_s, ...) given the draws ``conditional`` of everything else
    (:func:`conditional_unit_draws`)."""
    dim = unit_dim(plate)
    inside = (empty >= start) & (empty < stop)
    values = {}
    drawn = None
    if conditional is not None:
        drawn = conditional_unit_draws(guide, plate, start, stop, draws, seed, conditional)
    for latent in plate.latents:
        if drawn is not None:
            value = drawn[latent.value_name]
        else:
            value, _, _ = unit_draws(guide, latent, start, stop, draws, seed)
        own = guide.transforms.to_constrained(latent, value)
        if inside.any():
            own[:, empty[inside] - start] = prior[latent.name][:, inside]
        values[latent.name] = own
    units = {dim: None if labels is None else labels[start:stop]}
    return _chain_dataset(guide.model, values, draws, units)


def _chain_dataset(
    model: pm.Model,
    values: Mapping[str, np.ndarray],
    draws: int,
    units: Mapping[str, np.ndarray | None] | None = None,
) -> xr.Dataset:
    """One chain of draws as a Dataset: each of ``values`` (by variable name), shaped
    ``(draws, *unit axes, *event_shape)``, under dims ``(chain, draw, *units, *event dims)``.

    ``units`` maps the unit dims, in axis order, to their coords (None: no coords); the event
    dims and their coords are :func:`variable_dims`.
    """
    units = dict(units or {})
    coords = {"chain": [0], "draw": np.arange(draws)}
    coords |= {dim: labels for dim, labels in units.items() if labels is not None}
    data_vars = {}
    for name, value in values.items():
        dims, dim_coords = variable_dims(model, name, value.shape[1 + len(units) :])
        data_vars[name] = (["chain", "draw", *units, *dims], np.asarray(value)[None])
        coords |= dim_coords
    return xr.Dataset(data_vars, coords=coords)


def conditional_unit_draws(
    guide: AmortizedGuide,
    plate: Plate,
    start: int,
    stop: int,
    draws: int,
    seed: np.random.SeedSequence,
    values: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Value-space draws ``(draws, stop - start, *event_shape)`` of a conditional plate's fitted
    units ``start:stop`` from q(z_n | θ_s, ...) given the draws ``values`` of the globals and the
    other plates' locals, by value name; the same whatever chunk asks (the noise of the plate's
    stacked locals is :func:`~pymc_amortize.posterior.chunks.unit_noise` of the stream of its first
    latent)."""
    conditional = plate_conditional(guide, plate)
    stream = guide.analysis.latent_names.index(plate.latents[0].name)
    noise = unit_noise(seed, stream, draws, start, stop, (conditional.size,))
    starts = [
        guide.encode_units(lat.name, start, stop)[0].reshape(stop - start, -1)
        for lat in plate.latents
    ]
    drawn, _, _ = conditional(fitted_unit_data(guide, plate, start, stop), starts, values, noise)
    return drawn


def conditioning_draws(
    guide: AmortizedGuide,
    plate: Plate,
    global_values: Mapping[str, np.ndarray],
    draws: int,
    seed: np.random.SeedSequence,
) -> dict[str, np.ndarray]:
    """The other plates' draws (S, N, ...) that a conditional plate's units are drawn given in
    :func:`sample_dataset`: those the dataset reports for them (an encoder plate's
    :func:`unit_draws`, a conditional plate drawn before ``plate`` in the fit's order its
    :func:`conditional_unit_draws`), a conditional plate drawn after it at its encoder mean, as
    in the training step. Each holds S × N of its latents for a moment."""
    order = [p.name for p in guide.analysis.plates]
    out: dict[str, np.ndarray] = {}
    for other in guide.analysis.plates:
        if other.name == plate.name or not other.latents:
            continue
        if other.name not in guide.conditional_plates:
            for latent in other.latents:
                out[latent.value_name] = unit_draws(guide, latent, 0, other.size, draws, seed)[0]
        elif order.index(other.name) < order.index(plate.name):
            given = dict(global_values) | conditioning_draws(
                guide, other, global_values, draws, seed
            )
            out |= conditional_unit_draws(guide, other, 0, other.size, draws, seed, given)
        else:
            for latent in other.latents:
                mean = guide.encode_units(latent.name, 0, other.size)[0]
                out[latent.value_name] = np.broadcast_to(mean, (draws, *mean.shape))
    return out
