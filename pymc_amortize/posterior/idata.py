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

from collections.abc import Mapping, Sequence

import numpy as np
import pymc as pm
import xarray as xr

from pymc_amortize._version import __version__
from pymc_amortize.analysis import ModelAnalysis, Plate
from pymc_amortize.guide.encoders import MLPEncoder, PooledEncoder

__all__ = ["describe_encoder", "fit_trace", "method_groups"]

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


def _dims(model: pm.Model, name: str, shape: Sequence[int]) -> list[str]:
    """The model's dims of ``name`` where they fit ``shape``, else PyMC's ``{name}_dim_{i}``."""
    model_dims = model.named_vars_to_dims.get(name) or ()
    if len(model_dims) != len(shape):
        model_dims = (None,) * len(shape)  # e.g. a transform that changes the shape
    dims = []
    for i, (dim, size) in enumerate(zip(model_dims, shape, strict=True)):
        coords = model.coords.get(dim) if dim is not None else None
        fits = dim is not None and (coords is None or len(coords) == size)
        dims.append(dim if fits else f"{name}_dim_{i}")
    return dims


def _coords(model: pm.Model, dims: Sequence[str]) -> dict[str, np.ndarray]:
    return {d: np.asarray(model.coords[d]) for d in dims if model.coords.get(d) is not None}


def _param_dataarray(
    model: pm.Model, rv_name: str, value_name: str, mean: np.ndarray, sd: np.ndarray
) -> xr.DataArray:
    """Mean and sd stacked along ``param``; named by the value variable (``sigma_log__``),
    because the Gaussian lives on its space, with the latent's model dims."""
    dims = _dims(model, rv_name, mean.shape)
    return xr.DataArray(
        np.stack([mean, sd]),
        dims=["param", *dims],
        coords={"param": PARAM_COORD, **_coords(model, dims)},
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


def unit_dim(model: pm.Model, plate: Plate) -> tuple[str, np.ndarray]:
    """The dim of ``plate``'s units (its model dim, else the plate's name) and their coords."""
    dim = plate.dim or plate.name
    coords = model.coords.get(plate.dim) if plate.dim else None
    if coords is None or len(coords) != plate.size:
        return dim, np.arange(plate.size)
    return dim, np.asarray(coords)


def encoder_outputs(
    model: pm.Model, analysis: ModelAnalysis, encoded: Mapping[str, object]
) -> xr.Dataset:
    """Mean and sd of q(z_n) for each local latent and unit, under its plate's unit dim.

    ``encoded`` maps each local latent's name to its q on the fitted units (anything with
    ``mean`` and ``sd``, as ``approx.encode()`` gives them).
    """
    data = {}
    for plate in analysis.plates:
        dim, units = unit_dim(model, plate)
        for latent in plate.latents:
            q = encoded[latent.name]
            event_dims = _dims(model, latent.name, q.mean.shape)[1:]
            data[latent.value_name] = xr.DataArray(
                np.stack([q.mean, q.sd]),
                dims=["param", dim, *event_dims],
                coords={"param": PARAM_COORD, dim: units, **_coords(model, event_dims)},
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
