"""Plots of an amortized fit (matplotlib; posteriors through arviz-plots).

Every function returns the matplotlib Figure and labels its axes. The posterior comparison uses
arviz-plots' forest and density plots; the loss curves, k̂ per unit and encoder curves are line
and scatter plots that arviz-plots has no counterpart for, so they are drawn with matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import arviz_plots as azp
import numpy as np
import xarray as xr

from pymc_amortize.errors import AmortizationError
from pymc_amortize.posterior.approximation import AmortizedApproximation
from pymc_amortize.psis import GOOD_KHAT, USABLE_KHAT, PSISDiagnostic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_encoder", "plot_khat", "plot_loss", "plot_posterior_comparison"]


def _figure(n_axes: int, *, width: float = 5.0, height: float = 3.6):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_axes, figsize=(width * n_axes, height), squeeze=False)
    return fig, list(axes[0])


def _fit_dataset(fit: xr.DataTree | xr.Dataset, label: str) -> xr.Dataset:
    if isinstance(fit, xr.DataTree):
        if "amortized_fit" not in fit.children:
            raise AmortizationError(
                f"The DataTree given for '{label}' has no 'amortized_fit' group; pass the result "
                "of approx.sample() or fit_amortized(), or a Dataset from results.fit_trace()."
            )
        fit = fit["amortized_fit"].to_dataset()
    if not isinstance(fit, xr.Dataset) or "loss" not in fit:
        raise AmortizationError(
            f"'{label}' must be a DataTree with an 'amortized_fit' group or a Dataset with 'loss' "
            "along 'step' (see pymc_amortize.posterior.idata.fit_trace)."
        )
    return fit


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return values
    kernel = np.ones(window) / window
    valid = np.convolve(values, kernel, mode="valid")
    return np.concatenate([np.full(window - 1, np.nan), valid])


def plot_loss(
    fits: Mapping[str, xr.DataTree | xr.Dataset],
    *,
    window: int = 1,
    yscale: Literal["linear", "log", "symlog"] = "linear",
) -> Figure:
    """Loss against step and against wall time, one line per fit on each axis.

    Parameters
    ----------
    fits : mapping
        ``{label: fit}``; a fit is the DataTree of ``approx.sample()`` or ``fit_amortized``, or a
        Dataset from :func:`pymc_amortize.posterior.idata.fit_trace` (e.g. an ADVI fit's ``hist``). A
        fit without step times is left out of the wall-time axis.
    window : int
        Steps in a rolling mean of the loss (1: the raw loss).
    yscale : {"linear", "log", "symlog"}
        Scale of the loss axis.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: loss vs step, loss vs cumulative wall time (s). Under PyTensor's NUMBA backend
        the first step includes just-in-time compilation.

    Examples
    --------
    .. code-block:: python

        from pymc_amortize.plots import plot_loss
        from pymc_amortize.posterior.idata import fit_trace

        fig = plot_loss({"A-VI": approx.sample(100), "ADVI": fit_trace(advi.hist, seconds)})
    """
    if not fits:
        raise AmortizationError("plot_loss needs at least one fit: {label: DataTree or Dataset}.")
    fig, (by_step, by_time) = _figure(2)
    for label, fit in fits.items():
        data = _fit_dataset(fit, label)
        loss = _rolling_mean(np.asarray(data["loss"], dtype=float), int(window))
        by_step.plot(np.asarray(data["step"]), loss, label=label)
        seconds = np.asarray(data["step_seconds"], dtype=float) if "step_seconds" in data else None
        if seconds is not None and np.isfinite(seconds).all() and seconds.size:
            by_time.plot(np.cumsum(seconds), loss, label=label)
    smoothed = f" (rolling mean of {window} steps)" if window > 1 else ""
    for ax in (by_step, by_time):
        ax.set_ylabel(f"loss (−ELBO){smoothed}")
        ax.set_yscale(yscale)
    by_step.set_xlabel("step")
    by_time.set_xlabel("wall time (s)")
    by_step.legend()
    if by_time.lines:
        by_time.legend()
    fig.tight_layout()
    return fig


def plot_posterior_comparison(
    posteriors: Mapping[str, xr.DataTree],
    *,
    var_names: str | Sequence[str],
    kind: Literal["forest", "dist"] = "forest",
    coords: Mapping[str, object] | None = None,
) -> Figure:
    """Overlay the posteriors of several fits (A-VI, ADVI, NUTS ...) for chosen variables.

    Parameters
    ----------
    posteriors : mapping
        ``{label: DataTree with a posterior group}``, e.g. ``{"A-VI": approx.sample(),
        "ADVI": advi.sample(return_inferencedata=True), "NUTS": pm.sample()}``.
    var_names : str or sequence of str
        Variables to show.
    kind : {"forest", "dist"}
        arviz-plots' ``plot_forest`` (credible intervals) or ``plot_dist`` (densities).
    coords : mapping, optional
        Selection passed to arviz-plots, e.g. ``{"unit": [0, 1, 2]}``.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    .. code-block:: python

        fig = plot_posterior_comparison(
            {"A-VI": avi_idata, "NUTS": nuts_idata}, var_names=["theta"], kind="dist"
        )
    """
    if len(posteriors) < 1:
        raise AmortizationError("plot_posterior_comparison needs {label: DataTree}.")
    names = [var_names] if isinstance(var_names, str) else list(var_names)
    for label, dt in posteriors.items():
        missing = [n for n in names if "posterior" not in dt.children or n not in dt.posterior]
        if missing:
            raise AmortizationError(f"The posterior of '{label}' has no variable(s) {missing}.")
    data = dict(posteriors)
    if kind == "forest":
        pc = azp.plot_forest(
            data, var_names=names, coords=coords, combined=True, backend="matplotlib"
        )
    elif kind == "dist":
        pc = azp.plot_dist(data, var_names=names, coords=coords, backend="matplotlib")
    else:
        raise AmortizationError(f"kind must be 'forest' or 'dist'; got {kind!r}.")
    pc.add_legend("model")
    fig = pc.viz["figure"].item()
    for ax in fig.axes:
        if kind == "forest":
            if ax.get_xticks().size and ax.lines:  # the interval column, not the labels column
                ax.set_xlabel("posterior value")
        else:
            ax.set_xlabel(ax.get_title() or "value")
            ax.set_ylabel("density")
    return fig


def _raw(data_input) -> np.ndarray:
    return np.asarray(data_input.raw(), dtype=float)


def _unit_input(approx: AmortizedApproximation, latent: str) -> tuple[np.ndarray, str]:
    """One value per unit of ``latent``'s plate to plot against, and its label: the encoder's
    one-column unit input on its original scale, or, for an encoder pooling one-column rows, the
    mean of each unit's rows (NaN for a unit without rows)."""
    spec = next((lat for lat in approx.analysis.latents if lat.name == latent), None)
    if spec is None:
        raise AmortizationError(
            f"'{latent}' is not a local latent; local latents: {approx.analysis.latent_names}."
        )
    data = approx.inputs[latent]
    if data.rows is not None and data.rows.width == 1:
        plate = approx.analysis.plate_of(latent)
        rows = _raw(data.rows)[:, 0]
        sums = np.bincount(plate.unit_of_row, weights=rows, minlength=plate.size)
        counts = plate.row_counts
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return means, f"mean of {spec.row_inputs[0].key} over the unit's rows"
    if data.units is not None and data.units.width == 1:
        name = spec.unit_inputs[0].key if spec.unit_inputs else f"{latent} encoder input"
        return _raw(data.units)[:, 0], name
    widths = [
        f"{m.width} {what}"
        for m, what in ((data.units, "unit"), (data.rows, "row"))
        if m is not None
    ]
    raise AmortizationError(
        f"The encoder of '{latent}' takes {' and '.join(widths)} input columns; pass a "
        "one-dimensional `inputs=` array (one value per unit) to plot against."
    )


def _khat_axis(approx: AmortizedApproximation, plate) -> tuple[np.ndarray, str]:
    """What a plate's k̂ is plotted against by default: its first latent's one-column input, else
    the rows per unit (indexed plate) or the unit's position."""
    try:
        return _unit_input(approx, plate.latents[0].name)
    except AmortizationError:
        if plate.index is not None:
            return plate.row_counts.astype(float), f"rows of the unit ({plate.index.key})"
        return np.arange(plate.size, dtype=float), f"unit ({plate.dim or plate.name})"


def plot_khat(
    diagnostic: PSISDiagnostic,
    *,
    plate: str | None = None,
    inputs: np.ndarray | None = None,
    input_label: str | None = None,
) -> Figure:
    """k̂ of each unit against the unit's encoder input, with the 0.5 and 0.7 thresholds.

    One axis per plate (crossed or nested groupings get one each), or only ``plate``.

    Parameters
    ----------
    diagnostic : PSISDiagnostic
        From :func:`pymc_amortize.psis.psis_diagnostic`.
    plate : str, optional
        The plate to show (by name, see ``approx.analysis.plates``); every plate when omitted.
    inputs : ndarray, optional
        One value per unit to plot against (one plate only). By default the encoder's input when
        it has one column (for pooled rows, each unit's mean row), else the rows per unit of an
        indexed plate, else the unit's position.
    input_label : str, optional
        Label of the x axis.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    .. code-block:: python

        fig = plot_khat(psis_diagnostic(approx))
    """
    approx = diagnostic.approximation
    plates = {p.name: p for p in approx.analysis.plates}
    if not plates:
        raise AmortizationError("The model has no plate of units: every latent is mean-field.")
    if plate is not None and plate not in plates:
        raise AmortizationError(f"No plate '{plate}'; plates: {', '.join(plates)}.")
    names = [plate] if plate is not None else list(plates)
    if inputs is not None and len(names) > 1:
        raise AmortizationError(
            f"inputs= gives one value per unit of one plate; name it with plate= (plates: "
            f"{', '.join(names)})."
        )
    fig, axes = _figure(len(names), width=6.0)
    for ax, name in zip(axes, names, strict=True):
        khat = diagnostic.khat_per_plate[name].values
        if inputs is None:
            x, label = _khat_axis(approx, plates[name])
            label = input_label or label
        else:
            x, label = np.asarray(inputs, dtype=float).ravel(), input_label or "unit input"
        if x.size != khat.size:
            raise AmortizationError(
                f"inputs has {x.size} values but plate '{name}' has {khat.size} units; give one "
                "per unit."
            )
        ax.scatter(x, np.maximum(khat, -1.0), s=10, alpha=0.7, label="unit")
        ax.axhline(GOOD_KHAT, color="C2", linestyle="--", label=f"k̂ = {GOOD_KHAT} (good below)")
        ax.axhline(
            USABLE_KHAT, color="C3", linestyle="--", label=f"k̂ = {USABLE_KHAT} (unreliable above)"
        )
        ax.set_xlabel(label)
        ax.set_ylabel("Pareto k̂ of the unit")
        title = f"overall k̂ = {diagnostic.khat:.2f} ({diagnostic.verdict})"
        ax.set_title(title if len(plates) == 1 else f"plate {name}; {title}")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_encoder(
    approx: AmortizedApproximation,
    *,
    latent: str | None = None,
    grid: np.ndarray | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
    reference_label: str = "reference",
) -> Figure:
    """The encoder's mean and sd of q(z_n) as functions of a one-dimensional input.

    An encoder of one unit input is drawn as a curve over ``grid``. An encoder that pools a unit's
    rows (an indexed plate) has a set of rows, not one number, as its input: its outputs at the
    fitted units are drawn against each unit's mean row (one-column rows), or its one-column
    unit covariate.

    Parameters
    ----------
    approx : AmortizedApproximation
        A fitted approximation whose encoder for ``latent`` takes one input column.
    latent : str, optional
        The local latent (the first one when omitted).
    grid : ndarray, optional
        Input values to evaluate a unit-input encoder at; 200 points over the data's range by
        default.
    reference : mapping, optional
        ``{"mean": (N,), "sd": (N,)}`` per-unit values to scatter at the units' inputs, e.g. the
        exact F-VI optimum or long-run ADVI means and sds.
    reference_label : str
        Legend label of ``reference``.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: mean vs input and sd vs input (value space of the latent).

    Examples
    --------
    .. code-block:: python

        fig = plot_encoder(approx, reference={"mean": advi_mean, "sd": advi_sd})
    """
    names = approx.analysis.latent_names
    if not names:
        raise AmortizationError("The model has no local latent: every latent is mean-field.")
    latent = latent or names[0]
    if latent not in names:
        raise AmortizationError(f"'{latent}' is not a local latent; local latents: {names}.")
    spec = next(lat for lat in approx.analysis.latents if lat.name == latent)
    if spec.event_size != 1:
        raise AmortizationError(
            f"'{latent}' has {spec.event_size} values per unit; plot_encoder shows a scalar latent."
        )
    inputs, input_name = _unit_input(approx, latent)
    fig, (mean_ax, sd_ax) = _figure(2)
    if approx.inputs[latent].rows is None:
        if grid is None:
            grid = np.linspace(inputs.min(), inputs.max(), 200)
        grid = np.asarray(grid, dtype=float).ravel()
        data = (
            {latent: grid[:, None]}
            if spec.input_matrix is not None
            else {spec.input_names[0]: grid}
        )
        q = approx.encode(data)[latent]
        mean_ax.plot(grid, q.mean.ravel(), color="C0", label="encoder")
        sd_ax.plot(grid, q.sd.ravel(), color="C0", label="encoder")
    else:
        if grid is not None:
            raise AmortizationError(
                f"The encoder of '{latent}' pools each unit's rows, so it has no one-dimensional "
                "input to evaluate on a grid; it is shown at the fitted units (omit grid=)."
            )
        q = approx.encode()[latent]
        for ax, values in ((mean_ax, q.mean), (sd_ax, q.sd)):
            ax.plot(inputs, values.ravel(), "o", ms=3, color="C0", label="encoder (fitted units)")
    if reference is not None:
        for key, ax in (("mean", mean_ax), ("sd", sd_ax)):
            if key in reference:
                values = np.broadcast_to(np.asarray(reference[key], dtype=float), inputs.shape)
                ax.scatter(inputs, values, s=8, alpha=0.6, color="C1", label=reference_label)
    mean_ax.set_ylabel(f"mean of q({latent}ₙ)")
    sd_ax.set_ylabel(f"sd of q({latent}ₙ)")
    for ax in (mean_ax, sd_ax):
        ax.set_xlabel(input_name)
        ax.legend()
    fig.tight_layout()
    return fig
