"""The method-specific groups of an amortized fit's ArviZ data, in pymc-extras' spirit.

Besides ``posterior`` and ``observed_data``, the DataTree of ``approx.sample()`` and
``fit_amortized`` carries:

``amortized_fit``
    ``loss`` (−ELBO, as in ``approx.hist``) and ``step_seconds`` (wall-clock seconds) per step;
    attributes name the method, the encoders and the fit's settings.
``variational_params``
    Mean and sd of q(θ) for each global, on its unconstrained (value) space, under the model's
    dims and coords, with a leading ``param`` dim (``"mean"``, ``"sd"``).
``encoder_outputs``
    Mean and sd of q(z_n) for each local latent and unit (the encoder's outputs), on the value
    space, with the same ``param`` dim; the unit axis is under the dim of the latent's plate (its
    model dim, else the plate's name, e.g. ``county_idx_unit``), so the latents of several plates
    each sit under their own units.

Every attribute is a string or a number, so the tree survives ``to_netcdf`` and ``to_zarr``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pymc as pm
import xarray as xr
from pymc.backends.base import MultiTrace
from pytensor.graph.traversal import ancestors

from pymc_amortize._version import __version__
from pymc_amortize.guide.encoders import MLPEncoder, PooledEncoder
from pymc_amortize.guide.state import AmortizedGuide
from pymc_amortize.model.forward import trace_from_values
from pymc_amortize.model.types import ModelAnalysis
from pymc_amortize.posterior.datasets import unit_coords, unit_dim, variable_dims
from pymc_amortize.posterior.local import (
    LocalPosterior,
    draw_locals,
    encode_fitted,
    fill_prior,
    units_without_rows,
    zero_row_prior,
)
from pymc_amortize.posterior.record import FitRecord

__all__ = [
    "add_method_groups",
    "describe_encoder",
    "encoder_outputs",
    "fit_attributes",
    "fit_trace",
    "method_groups",
    "sample_fitted",
    "sample_globals",
    "variational_params",
]

METHOD = "amortized_vi"
PARAM_COORD = ["mean", "sd"]


def fit_trace(loss: np.ndarray, step_seconds: np.ndarray | None = None) -> xr.Dataset:
    """Loss and wall time per step as a Dataset over ``step`` (1, 2, ...).

    Used for the ``amortized_fit`` group; call it on any PyMC fit (e.g. ADVI's ``approx.hist``
    and step times you measured) to compare fits with :func:`pymc_amortize.plots.plot_loss`.

    Parameters
    ----------
    loss : ndarray
        Loss (−ELBO) of each step.
    step_seconds : ndarray, optional
        Wall-clock seconds of each step; NaN where unknown.

    Returns
    -------
    xarray.Dataset
        ``loss`` and ``step_seconds`` along ``step``.

    Examples
    --------
    .. code-block:: python

        advi = pm.fit(5_000, method="advi", model=model)
        trace = fit_trace(advi.hist)
    """
    loss = np.asarray(loss, dtype=float).ravel()
    if step_seconds is None:
        seconds = np.full(loss.size, np.nan)
    else:
        seconds = np.asarray(step_seconds, dtype=float).ravel()[: loss.size]
        seconds = np.pad(seconds, (0, loss.size - seconds.size), constant_values=np.nan)
    return xr.Dataset(
        {
            "loss": ("step", loss, {"long_name": "loss (−ELBO)"}),
            "step_seconds": ("step", seconds, {"long_name": "wall time of the step", "units": "s"}),
        },
        coords={"step": np.arange(1, loss.size + 1)},
    )


def describe_encoder(encoder: object) -> str:
    """A short text naming an encoder's architecture, e.g. ``MLPEncoder(widths=(16, 16), relu)``."""
    if isinstance(encoder, MLPEncoder | PooledEncoder):
        activation = (
            encoder.activation
            if isinstance(encoder.activation, str)
            else type(encoder.activation).__name__
        )
        widths = tuple(int(w) for w in encoder.widths)
        kind = "affine" if not widths else activation
        if isinstance(encoder, MLPEncoder):
            return f"MLPEncoder(inputs={encoder.n_inputs}, widths={widths}, {kind})"
        return (
            f"PooledEncoder(row_inputs={encoder.n_row_inputs}, "
            f"unit_covariates={encoder.n_unit_covariates}, "
            f"row_widths={tuple(int(w) for w in encoder.row_widths)}, "
            f"features={encoder.n_features}, widths={widths}, {kind})"
        )
    return f"user encoder ({type(encoder).__name__})"


def _attr(value: object) -> str | int | float:
    """netCDF attributes are strings or numbers; everything else is written as text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return value.item() if isinstance(value, np.generic) else value
    return str(value)


def _param_dataarray(
    model: pm.Model, rv_name: str, value_name: str, mean: np.ndarray, sd: np.ndarray
) -> xr.DataArray:
    """Mean and sd stacked along ``param``; named by the value variable (``sigma_log__``),
    because the Gaussian lives on its space, with the latent's model dims."""
    dims, coords = variable_dims(model, rv_name, mean.shape)
    return xr.DataArray(
        np.stack([mean, sd]),
        dims=["param", *dims],
        coords={"param": PARAM_COORD, **coords},
        attrs={"variable": rv_name, "space": "unconstrained (value) space"},
    )


def variational_params(
    model: pm.Model, global_factors: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> xr.Dataset:
    """Mean and sd of q(θ) for each global, by value variable, under the model's dims.

    ``global_factors`` maps each global's value variable name to its mean and sd (shaped as the
    variable), as ``approx.global_factors()`` gives them.
    """
    rv_names = {value.name: rv.name for rv, value in model.rvs_to_values.items()}
    return xr.Dataset(
        {
            value_name: _param_dataarray(model, rv_names[value_name], value_name, mean, sd)
            for value_name, (mean, sd) in global_factors.items()
        }
    )


def encoder_outputs(
    model: pm.Model, analysis: ModelAnalysis, encoded: Mapping[str, object]
) -> xr.Dataset:
    """Mean and sd of q(z_n) for each local latent and unit, under its plate's unit dim.

    ``encoded`` maps each local latent's name to its q on the fitted units (anything with
    ``mean`` and ``sd``, as ``approx.encode()`` gives them).
    """
    data = {}
    for plate in analysis.plates:
        dim, units = unit_dim(plate), unit_coords(model, plate)
        for latent in plate.latents:
            q = encoded[latent.name]
            event_dims, event_coords = variable_dims(model, latent.name, q.mean.shape[1:])
            data[latent.value_name] = xr.DataArray(
                np.stack([q.mean, q.sd]),
                dims=["param", dim, *event_dims],
                coords={"param": PARAM_COORD, dim: units, **event_coords},
                attrs={
                    "variable": latent.name,
                    "plate": plate.name,
                    "space": "unconstrained (value) space",
                },
            )
    return xr.Dataset(data)


def fit_attributes(
    analysis: ModelAnalysis,
    encoders: Mapping[str, object],
    *,
    n_encoder_params: int,
    global_dim: int,
    settings: Mapping[str, object],
    divergence: str | None = None,
) -> dict[str, str | int | float]:
    """The method, encoders and fit settings as netCDF-safe attributes."""
    attrs = {
        "method": METHOD,
        "library": "pymc_amortize",
        "library_version": __version__,
        "local_latents": ", ".join(analysis.latent_names),
        "plates": "; ".join(
            f"{p.name}: {p.size} units"
            + ("" if p.index is None else f", {p.n_rows} rows by {p.index.key}")
            for p in analysis.plates
        ),
        "analysis": analysis.summary(),
        "encoder": "; ".join(
            f"{name}: {describe_encoder(encoder)}" for name, encoder in encoders.items()
        ),
        "encoder_params": int(n_encoder_params),
        "global_dim": global_dim,
    }
    attrs |= {name: _attr(value) for name, value in settings.items()}
    if divergence is not None:
        attrs["divergence"] = divergence
    return attrs


def method_groups(
    model: pm.Model,
    analysis: ModelAnalysis,
    *,
    loss: np.ndarray,
    step_seconds: np.ndarray | None,
    encoders: Mapping[str, object],
    n_encoder_params: int,
    global_factors: Mapping[str, tuple[np.ndarray, np.ndarray]],
    settings: Mapping[str, object],
    divergence: str | None = None,
    encoded: Mapping[str, object] | None = None,
) -> dict[str, xr.Dataset]:
    """The ``amortized_fit``, ``variational_params`` and ``encoder_outputs`` groups of a fit.

    Everything is passed as values (``approx.sample()`` gathers them from its approximation).

    Parameters
    ----------
    model : pm.Model
        The fitted model: its dims and coords label the groups.
    analysis : ModelAnalysis
        The fit's plates and local latents.
    loss, step_seconds : ndarray
        Loss (−ELBO) and wall-clock seconds of each step.
    encoders : dict of str to callable
        Each local latent's encoder, described in the attributes.
    n_encoder_params : int
        The number of encoder weights.
    global_factors : dict of str to (ndarray, ndarray)
        Mean and sd of q(θ) by value variable name.
    settings : dict
        The fit's options, written as attributes.
    divergence : str, optional
        Where the fit diverged (``DivergenceInfo.message()``).
    encoded : dict of str to LocalPosterior, optional
        q(z_n) of each local latent on the fitted units; without it (a fit on ``unit_data``,
        whose units ``encode_dataset`` gives) there is no ``encoder_outputs`` group.

    Returns
    -------
    dict of str to xarray.Dataset
        One Dataset per group, ready for ``idata[name] = xr.DataTree(dataset)``.

    Examples
    --------
    .. code-block:: python

        idata = approx.sample(100)   # carries these groups
        idata["encoder_outputs"]["z"].sel(param="sd")
    """
    fit = fit_trace(loss, step_seconds)
    fit.attrs = fit_attributes(
        analysis,
        encoders,
        n_encoder_params=n_encoder_params,
        global_dim=sum(int(np.size(mean)) for mean, _ in global_factors.values()),
        settings=settings,
        divergence=divergence,
    )
    groups = {"amortized_fit": fit, "variational_params": variational_params(model, global_factors)}
    if encoded is not None:
        groups["encoder_outputs"] = encoder_outputs(model, analysis, encoded)
    return groups


def sample_fitted(
    guide: AmortizedGuide,
    record: FitRecord,
    draws: int = 1000,
    *,
    random_seed: int | None = None,
    return_inferencedata: bool = True,
) -> xr.DataTree | MultiTrace:
    """:meth:`~pymc_amortize.AmortizedApproximation.sample`: draws for the fitted units, with the
    groups of :func:`method_groups` from the fit's ``record``."""

    rng = np.random.default_rng(random_seed)
    global_values = guide.draw_globals(draws, rng)
    if guide.unit_source is not None:
        return sample_globals(guide, record, global_values, return_inferencedata)
    outputs = guide.fitted_encoder_outputs()
    values = global_values | draw_locals(
        guide, draws, rng, {name: LocalPosterior(mean, sd) for name, (mean, sd) in outputs.items()}
    )
    if guide.conditional_plates:
        # q(z | θ): the conditional plates' draws follow the globals' draws.
        values |= guide.conditional_sampler(values, rng)
    for plate in guide.analysis.plates:
        empty = units_without_rows(plate)
        if not empty.any():
            continue
        # No rows: the posterior is the prior given the globals, drawn with the same draws.
        prior = zero_row_prior(guide, plate, empty, global_values, rng, outputs=outputs)
        fill_prior(guide, plate, values, prior, empty)
    if not return_inferencedata:
        return trace_from_values(guide.model, values)
    idata = pm.to_inference_data(
        trace_from_values(guide.model, values), model=guide.model, log_likelihood=False
    )
    add_method_groups(guide, record, idata)
    return idata


def sample_globals(
    guide: AmortizedGuide,
    record: FitRecord,
    global_values: dict[str, np.ndarray],
    return_inferencedata: bool,
) -> xr.DataTree | MultiTrace:
    """:func:`sample_fitted` of a fit on ``unit_data``: the globals and the Deterministics of the
    globals alone. The template model's locals are only placeholders (its initial point);
    every variable that depends on them is left out."""
    draws = len(next(iter(global_values.values()))) if global_values else 1
    start = guide.model.initial_point()
    values = dict(global_values)
    for latent in guide.analysis.latents:
        values[latent.value_name] = np.repeat(start[latent.value_name][None], draws, axis=0)
    trace = trace_from_values(guide.model, values)
    if not return_inferencedata:
        return trace
    idata = pm.to_inference_data(trace, model=guide.model, log_likelihood=False)
    local_rvs = [guide.model[name] for name in guide.analysis.latent_names]
    per_unit = [
        name
        for name in idata.posterior.data_vars
        if name in guide.analysis.latent_names
        or set(local_rvs) & set(ancestors([guide.model[name]]))
    ]
    posterior = idata.posterior.to_dataset().drop_vars(per_unit)
    used = {dim for var in posterior.data_vars.values() for dim in var.dims}
    # The template's unit coords (and any other left unused) would only mislead.
    posterior = posterior.drop_vars([c for c in posterior.coords if c not in used])
    idata["posterior"] = xr.DataTree(posterior)
    for group in ("observed_data", "constant_data"):  # the template's few units
        if group in idata.children:
            del idata[group]
    idata["posterior"].attrs["note"] = (
        "Fitted on unit_data: the posterior of its units is approx.encode_dataset()'s."
    )
    add_method_groups(guide, record, idata)
    return idata


def add_method_groups(guide: AmortizedGuide, record: FitRecord, idata: xr.DataTree) -> None:
    """The groups of :func:`method_groups`, added to ``idata``."""
    groups = method_groups(
        guide.model,
        guide.analysis,
        loss=record.hist,
        step_seconds=record.step_seconds,
        encoders=dict(guide.encoders),
        n_encoder_params=sum(p.get_value().size for p in guide.encoder_params),
        global_factors=guide.global_factors(),
        settings=record.settings,
        divergence=None if record.divergence is None else record.divergence.message(),
        # A fit on unit_data may have more units than memory holds: encode_dataset gives them.
        encoded=encode_fitted(guide) if guide.unit_source is None else None,
    )
    for name, dataset in groups.items():
        idata[name] = xr.DataTree(dataset)
