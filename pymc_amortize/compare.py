"""Fit several VI methods on one model and compare them in one call."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr

from pymc_amortize.diagnostics import MeanFieldELBO, meanfield_of
from pymc_amortize.diagnostics.meanfield import standard_error
from pymc_amortize.errors import AmortizationError

__all__ = ["Comparison", "StepClock", "compare", "steps_to_within"]

METHODS = ("amortized", "advi")
COLUMNS = (
    "method",
    "elbo",
    "elbo_se",
    "wall_s",
    "steps",
    "steps_to_1pct",
    "n_params",
    "scored",
)
#: How a row's ELBO was scored (its ``scored`` column).
SHARED = "shared draws"
OWN = "own joint draws"


class StepClock:
    """PyMC callback: the seconds from the clock's creation to the end of every step.

    Create it just before ``pm.fit`` and pass it among the callbacks; ``times[k]`` is then the
    wall time of the first k + 1 steps, compilation included.

    Examples
    --------
    .. code-block:: python

        clock = StepClock()
        approx = pm.fit(1_000, method="amortized", model=model, callbacks=[clock])
        clock.times[-1]  # seconds since the call, at the last step
    """

    def __init__(self):
        self.start = time.perf_counter()
        self.times: list[float] = []

    def __call__(self, approx, losses, i):
        self.times.append(time.perf_counter() - self.start)


def _n_params(approx) -> int:
    return int(sum(np.size(p.get_value()) for p in approx.params))


def steps_to_within(
    losses: np.ndarray, target_loss: float, *, rel: float = 0.01, window: int = 50
) -> int | None:
    """The first step whose running-mean loss over ``window`` steps is within ``rel`` of
    ``target_loss`` (``target_loss + rel · |target_loss|`` or below), or None if none is (or the
    target is not finite, or there are fewer than ``window`` steps).

    Examples
    --------
    .. code-block:: python

        steps_to_within(approx.hist, advi.hist[-50:].mean())
    """
    losses = np.asarray(losses, float)
    if losses.size < window or not np.isfinite(target_loss):
        return None
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    hits = np.flatnonzero(smooth <= target_loss + rel * abs(target_loss))
    return int(hits[0] + window) if hits.size else None


@dataclass
class Comparison:
    """The result of :func:`compare`: a tidy table, posterior draws and traces per method.

    Attributes
    ----------
    rows : list of dict
        One row per method with the columns ``method``, ``elbo`` and ``elbo_se`` (final ELBO and
        its Monte Carlo SE, all methods scored on the same draws), ``wall_s`` (fit wall time,
        compilation included), ``steps``, ``steps_to_1pct`` (first step whose running-mean ELBO
        estimate is within 1% of the best final ELBO), ``n_params`` and ``scored``: how the
        ELBO was estimated, on the draws shared by all methods from the product of the fit's
        marginals (``"shared draws"``, a mean-field q) or on the fit's own joint draws
        (``"own joint draws"``: a full-rank q(θ) or the conditional family, whose marginals'
        product would understate its ELBO).
    idata : dict of str to xarray.DataTree
        Posterior draws of each method.
    traces : dict of str to xarray.Dataset
        Per method, ``elbo`` (−loss per step) and ``wall_s`` (seconds since the start) by step.
    approximations : dict
        The fitted approximations.
    difference : dict or None
        With two methods: ``methods`` (first, second), ``elbo`` (ELBO(first) − ELBO(second)),
        ``se`` (paired when both were scored on the shared draws), ``better`` (the method ahead
        by more than 3 SE, or ``"neither"``) and ``note``: whether the amortized family is a
        subset of ADVI's, so whether the difference can have either sign.
    """

    rows: list[dict[str, Any]]
    idata: dict[str, xr.DataTree]
    traces: dict[str, xr.Dataset]
    approximations: dict[str, Any] = field(repr=False)
    difference: dict[str, Any] | None = None

    def to_dataset(self) -> xr.Dataset:
        """The table as an :class:`xarray.Dataset` indexed by method."""
        methods = [row["method"] for row in self.rows]
        data = {
            col: ("method", [np.nan if row[col] is None else row[col] for row in self.rows])
            for col in COLUMNS[1:]
        }
        return xr.Dataset(data, coords={"method": methods})

    def plot(self, *, ax=None, window: int = 50):
        """ELBO (running mean over ``window`` steps) against wall time, one line per method."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        for method, trace in self.traces.items():
            elbo = trace["elbo"].values
            w = min(window, elbo.size)
            smooth = np.convolve(elbo, np.ones(w) / w, mode="valid")
            ax.plot(trace["wall_s"].values[w - 1 :], smooth, label=method)
        best = max(row["elbo"] for row in self.rows)
        ax.axhline(best, color="grey", lw=0.8, ls="--", label="best final ELBO")
        ax.set_ylim(best - 0.2 * abs(best) - 1, best + 0.02 * abs(best) + 1)
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("ELBO")
        ax.legend()
        return ax

    def __repr__(self) -> str:
        header = (
            f"{'method':<12} {'ELBO':>14} {'± MC SE':>9} {'wall s':>8} {'steps':>7} "
            f"{'to 1%':>7} {'params':>9}  scored on"
        )
        lines = [header]
        for r in self.rows:
            to1 = "never" if r["steps_to_1pct"] is None else str(r["steps_to_1pct"])
            lines.append(
                f"{r['method']:<12} {r['elbo']:>14.2f} {r['elbo_se']:>9.2f} {r['wall_s']:>8.2f} "
                f"{r['steps']:>7} {to1:>7} {r['n_params']:>9}  {r['scored']}"
            )
        if self.difference is not None:
            d = self.difference
            first, second = d["methods"]
            verdict = "no clear difference" if d["better"] == "neither" else f"{d['better']} better"
            lines.append(
                f"ELBO({first}) − ELBO({second}) = {d['elbo']:.3f} ± {d['se']:.2g}: {verdict}; "
                f"{d['note']}."
            )
        return "\n".join(lines)


def compare(
    model: pm.Model | None = None,
    methods: Sequence[str] = METHODS,
    *,
    n: int | Mapping[str, int] = 5_000,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    n_draws: int = 500,
    draws: int = 500,
    random_seed: int | None = None,
    progressbar: bool = False,
) -> Comparison:
    """Fit each method on the same model and tabulate ELBO, wall time, speed and size.

    Each method runs through ``pm.fit`` inside ``model`` (``"amortized"`` through this package,
    ``"advi"`` through PyMC). The mean-field solutions are scored by one :class:`MeanFieldELBO`
    on the same draws, so their ELBOs are comparable to within the reported standard errors. An
    amortized fit that is not mean-field (``family="conditional"``, ``global_family="fullrank"``)
    is scored on its own joint draws (``approx.joint_density()``): the product of its marginals
    would be another q. Its family is not a subset of ADVI's, so its ELBO can exceed ADVI's
    optimum; ``difference`` gives the signed difference and which method is ahead.

    Parameters
    ----------
    model : pm.Model, optional
        Taken from the context when omitted.
    methods : sequence of str
        Among ``"amortized"`` and ``"advi"``.
    n : int or mapping
        Steps, for all methods or per method.
    options : mapping, optional
        Extra ``pm.fit`` options per method, e.g.
        ``{"amortized": {"encoder_widths": ()}, "advi": {"obj_optimizer": pm.adam(1e-2)}}``.
    n_draws : int
        Draws of the shared ELBO evaluation.
    draws : int
        Posterior draws in each method's ArviZ data.
    random_seed : int, optional
        Seeds every fit and the evaluation.
    progressbar : bool
        Show PyMC's progress bars.

    Returns
    -------
    Comparison
        ``rows`` (the table; ``repr`` prints it), ``idata`` and ``traces`` per method, and
        ``plot()`` for ELBO against wall time.

    Examples
    --------
    .. code-block:: python

        import pymc_amortize
        from pymc_amortize.examples.paper import linear_data, linear_model

        model = linear_model(linear_data(1_000, random_seed=0))
        result = pymc_amortize.compare(model, n=2_000, options={"amortized": {"encoder_widths": ()}})
        print(result)
        result.plot()
    """
    model = pm.modelcontext(model)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise AmortizationError(
            f"compare() takes distinct methods among {METHODS}; got {methods}. Other methods "
            "(full-rank ADVI, SVGD) have no factorised Gaussian to score on the same draws."
        )
    options = dict(options or {})
    extra = set(options) - set(methods)
    if extra:
        raise AmortizationError(f"options= names methods not compared: {sorted(extra)}.")
    steps = {m: (n[m] if isinstance(n, Mapping) else n) for m in methods}
    approximations, clocks, walls = {}, {}, {}
    for method in methods:
        clock = StepClock()
        start = time.perf_counter()
        approximations[method] = pm.fit(
            steps[method],
            method=method,
            model=model,
            callbacks=[clock],
            random_seed=random_seed,
            progressbar=progressbar,
            **options.get(method, {}),
        )
        walls[method] = time.perf_counter() - start
        clocks[method] = clock
    evaluator = MeanFieldELBO(model, n_draws=n_draws, random_seed=random_seed)
    per_draw, scored = {}, {}
    for method, approx in approximations.items():
        if getattr(approx, "is_mean_field", True):
            per_draw[method] = evaluator.per_draw(meanfield_of(approx))
            scored[method] = SHARED
        else:
            # A full-rank q(θ) or the conditional family: the product of its marginals would
            # understate its ELBO, so it is scored on its own joint draws.
            sample = approx.joint_density().sample(n_draws, np.random.default_rng(random_seed))
            per_draw[method] = sample.log_weights
            scored[method] = OWN
    scores = {m: (float(v.mean()), standard_error(v)) for m, v in per_draw.items()}
    best = max(elbo for elbo, _ in scores.values())
    rows, traces, idata = [], {}, {}
    for method, approx in approximations.items():
        hist = np.asarray(approx.hist)
        rows.append(
            {
                "method": method,
                "elbo": scores[method][0],
                "elbo_se": scores[method][1],
                "wall_s": walls[method],
                "steps": int(hist.size),
                "steps_to_1pct": steps_to_within(hist, -best, window=min(50, hist.size)),
                "n_params": _n_params(approx),
                "scored": scored[method],
            }
        )
        times = np.asarray(clocks[method].times)[: hist.size]
        traces[method] = xr.Dataset(
            {"elbo": ("step", -hist[: times.size]), "wall_s": ("step", times)},
            coords={"step": np.arange(1, times.size + 1)},
        )
        idata[method] = approx.sample(draws, random_seed=random_seed)
    difference = None
    if len(methods) == 2:
        difference = _difference(methods, per_draw, scored, approximations)
    return Comparison(
        rows=rows,
        idata=idata,
        traces=traces,
        approximations=approximations,
        difference=difference,
    )


def _difference(methods, per_draw, scored, approximations) -> dict[str, Any]:
    """ELBO(first) − ELBO(second) with its SE (paired when both were scored on the same draws),
    which is better beyond 3 SE, and why the sign can go either way."""
    first, second = methods
    a, b = per_draw[first], per_draw[second]
    if scored[first] == scored[second] == SHARED:
        value, se = float((a - b).mean()), standard_error(a - b)
    else:
        value = float(a.mean() - b.mean())
        se = float(np.hypot(standard_error(a), standard_error(b)))
    better = first if value > 3 * se else second if value < -3 * se else "neither"
    amortized = approximations.get("amortized")
    if amortized is not None and not amortized.is_mean_field:
        note = (
            f"the amortized fit's family ({amortized.guide.family_description()}) is not a "
            "subset of ADVI's mean-field family, so its ELBO can exceed ADVI's optimum"
        )
    else:
        note = (
            "the amortized family is a subset of ADVI's mean-field family: at their optima "
            "ADVI's ELBO is at least A-VI's (the amortization gap is ≥ 0)"
        )
    return {"methods": (first, second), "elbo": value, "se": se, "better": better, "note": note}
