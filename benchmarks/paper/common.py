"""Shared machinery of the paper's experiments: fit methods over seeds, score, write, plot.

Every experiment script declares its model, its methods (:class:`Method`) and the paper's
reference numbers, and calls :func:`run_experiment`; this module does the rest the same way for
all of them, so that the six scripts differ only in what they study.

Conventions
-----------
- The *loss* is −ELBO of the final variational parameters, with every constant kept (the paper
  drops some, so our losses are offset from its numbers; differences between methods, the *gap
  to F-VI*, are comparable). Scripts score it exactly where the model is Gaussian and with 100
  Monte Carlo draws of the model's own ``logp`` otherwise, the same estimator for every method.
- Optimiser: Adam (pytensor-ml's, passed as ``obj_optimizer``) with the learning rate decaying
  along a half cosine to 1/100 of its start, for every method (``--constant-lr``: the paper's
  constant rate). With a constant rate the last iterate of F-VI jitters: on the linear model it
  sat ≈ 50 nats above the closed-form optimum, and A-VI looked better than F-VI for that reason.
- *Steps to 1 %*: first step where the 50-step running mean of the training loss is within 1 % of
  F-VI's median final loss (``None``: never). *Wall to 1 %*: the seconds from the first step to
  that step (compilation excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm
from pytensor_ml.optim import adam, cosine_schedule

from benchmarks.harness import Params, ScoredClock, fit_vi, steps_to_within, variational_params
from pymc_amortize.errors import DivergenceWarning

__all__ = [
    "Method",
    "Run",
    "amortized",
    "conditional",
    "const_method",
    "fvi",
    "markdown_table",
    "parse_args",
    "plot_curves",
    "plot_width_sweep",
    "run_cache",
    "run_experiment",
    "steps_to_within",
    "variational_params",
]

RESULTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "paper"
SMOOTHING_WINDOW = 50


@dataclass(frozen=True)
class Method:
    """One column of a comparison: a ``pm.fit`` method and its options."""

    label: str
    kind: str  # "amortized" or "advi"
    width: int | None = None
    family: str = ""  # groups a width sweep (e.g. "i=1"); empty for single methods
    options: Mapping[str, Any] = field(default_factory=dict)
    learning_rate: float | None = None  # overrides the experiment's learning rate
    steps: int | None = None  # overrides the experiment's number of steps
    #: Scores the fitted approximation itself (a dict with "loss"), for a family whose q is not
    #: mean-field (the conditional family q(θ) ∏ q(z_n | θ, x_n)); None: score the mean-field
    #: means and sds with the experiment's score.
    scorer: Callable[[Any], dict] | None = None


#: The conditional family's exactness checks a run records beside its loss (linear model).
CONDITIONAL_METRICS = (
    "gap_to_evidence",
    "theta_sd_ratio",
    "train_loss_tail",
    "cond_resid_mean",
    "cond_resid_var",
    "cond_unit_rms",
)


def fvi(*, steps: int | None = None, **options) -> Method:
    """F-VI: PyMC's mean-field ADVI, a separate Gaussian per unit."""
    return Method("F-VI", "advi", options=options, steps=steps)


def const_method(n_units: int, **options) -> Method:
    """Const: one shared Gaussian for every z_n, i.e. an affine encoder fed a column of ones."""
    return Method(
        "Const",
        "amortized",
        options={"local": {"z": np.ones((n_units, 1))}, "encoder_widths": ()} | options,
    )


def amortized(label: str, *, width: int | None = None, family: str = "", **options) -> Method:
    """A-VI with the given ``pm.fit(method="amortized")`` options."""
    return Method(label, "amortized", width=width, family=family, options=options)


def conditional(label: str, scorer: Callable[[Any], dict], **options) -> Method:
    """A-VI with the conditional local family q(θ) ∏ q(z_n | θ, x_n) (``family="conditional"``),
    scored on its joint q by ``scorer(approx)``."""
    return Method(
        label,
        "amortized",
        family="conditional",
        options={"family": "conditional"} | options,
        scorer=scorer,
    )


@dataclass
class Run:
    """One fit of one method with one seed."""

    method: Method
    seed: int
    steps: int
    hist: np.ndarray
    wall: np.ndarray  # seconds since the first step, at every step
    compile_s: float
    diverged: bool
    metrics: dict[str, float]
    params: Params | None
    trace: list[dict[str, float]]

    @property
    def loss(self) -> float:
        return self.metrics.get("loss", math.nan)

    def steps_to(self, target: float) -> int | None:
        return steps_to_within(self.hist, target)

    def wall_to(self, target: float) -> float | None:
        step = self.steps_to(target)
        return None if step is None else float(self.wall[min(step, self.wall.size) - 1])


def mc_negative_elbo(model: pm.Model, n_draws: int = 100, seed: int = 0) -> Callable:
    """−ELBO of mean-field Gaussian parameters by Monte Carlo on the model's own log density.

    Independent of either fitting path: draws from q, ``model.compile_logp()`` (value space, with
    Jacobians, as ADVI's objective), exact Gaussian entropy. Common random numbers: the same seed
    for every method.
    """
    logp = model.compile_logp()

    def score(params: Params) -> float:
        rng = np.random.default_rng(seed)
        total = 0.0
        for _ in range(n_draws):
            point = {
                name: mean + sd * rng.standard_normal(np.shape(mean))
                for name, (mean, sd) in params.items()
            }
            total += float(logp(point))
        entropy = sum(
            0.5 * np.log(2 * np.pi * np.e * np.broadcast_to(sd, np.shape(mean)) ** 2).sum()
            for mean, sd in params.values()
        )
        return -(total / n_draws + entropy)

    return score


def optimizer(learning_rate: float, steps: int, schedule: str):
    """Adam with a constant rate or a half-cosine decay to 1/100 of it over ``steps``."""
    if schedule == "constant":
        return pm.adam(learning_rate=learning_rate)
    if schedule != "cosine":
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant'; got {schedule!r}.")
    return adam(learning_rate=cosine_schedule(learning_rate, steps, learning_rate / 100))


def fit_one(
    model: pm.Model,
    method: Method,
    *,
    steps: int,
    learning_rate: float,
    seed: int,
    score: Callable[[Params], dict],
    obj_n_mc: int = 1,
    trace_every: int | None = None,
    lr_schedule: str = "cosine",
) -> Run:
    """Fit one method with one seed through ``pm.fit`` and score its final parameters."""
    clock = ScoredClock(lambda approx: score(variational_params(approx)), trace_every)
    lr = method.learning_rate or learning_rate
    steps = method.steps or steps
    diverged, approx = False, None
    options = dict(method.options)
    if method.kind == "amortized":
        # The paper's protocol: a fixed number of steps on the (cosine) schedule. pm.fit's
        # amortized default stops on convergence and then runs a gap check; neither belongs here.
        # The paper's family is the encoder's, not pm.fit's default (the conditional family).
        options = {"convergence": False, "gap_check": False, "family": "encoder"} | options
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DivergenceWarning)
        try:
            approx = fit_vi(
                model,
                method.kind,
                steps,
                seed=seed,
                obj_optimizer=optimizer(lr, steps, lr_schedule),
                obj_n_mc=obj_n_mc,
                callbacks=[clock],
                **options,
            )
        except FloatingPointError:  # PyMC's ADVI raises on a NaN loss
            diverged = True
    diverged = diverged or any(issubclass(w.category, DivergenceWarning) for w in caught)
    times = np.asarray(clock.times)
    compile_s = float(times[0]) if times.size else math.nan
    wall = times - times[0] if times.size else times
    metrics = {"loss": math.nan}
    if method.scorer is not None:
        params = None
        if approx is not None:
            metrics = method.scorer(approx)
    else:
        params = variational_params(approx) if approx is not None else None
        if params is not None and all(np.isfinite(m).all() for m, _ in params.values()):
            metrics = score(params)
    hist = np.asarray(approx.hist if approx is not None else [], float)
    return Run(method, seed, steps, hist, wall, compile_s, diverged, metrics, params, clock.trace)


_NOT_IN_CACHE_KEY = {
    "seeds",
    "widths",
    "widths_i1",
    "widths_i2",
    "windows",
    "sizes",
    "largest_n_seeds",
    "skip_fvi_above",
}


def run_cache(experiment: str, settings: Mapping[str, Any]) -> Path | None:
    """A folder for finished fits of these settings, under ``$PAPER_RUN_CACHE``.

    With the variable set, every fit is saved when it ends and loaded instead of refitted when the
    same settings are run again, so that a long study can be run a few seeds at a time (and
    resumed after an interruption); the result file always holds every seed asked for. Unset
    (the default, and in CI): no cache.
    """
    import hashlib
    import os

    root = os.environ.get("PAPER_RUN_CACHE")
    if not root:
        return None
    # The lists of seeds, widths, windows and sizes choose which fits run, not how each runs
    # (a fit is filed by its method's label and seed), so they stay out of the key.
    key = {k: v for k, v in settings.items() if k not in _NOT_IN_CACHE_KEY}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = Path(root) / f"{experiment}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "settings.json").write_text(json.dumps(key, default=str, indent=1))
    return path


def _cache_file(cache: Path, label: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "=-." else "_" for c in label)
    return cache / f"{safe}-seed{seed}.pkl"


def _save_run(cache: Path, run: Run) -> None:
    import pickle

    state = {k: v for k, v in vars(run).items() if k != "method"}
    _cache_file(cache, run.method.label, run.seed).write_bytes(pickle.dumps(state))


def _load_run(cache: Path, method: Method, seed: int) -> Run | None:
    import pickle

    path = _cache_file(cache, method.label, seed)
    if not path.exists():
        return None
    return Run(method=method, **pickle.loads(path.read_bytes()))


def run_experiment(
    model: pm.Model,
    methods: Sequence[Method],
    *,
    seeds: Sequence[int],
    steps: int,
    learning_rate: float,
    score: Callable[[Params], dict],
    obj_n_mc: int = 1,
    trace_every: int | None = None,
    lr_schedule: str = "cosine",
    log: Callable[[str], None] = print,
    cache: Path | None = None,
) -> list[Run]:
    """Every method with every seed on one model; prints one line per fit.

    ``cache`` (see :func:`run_cache`): fits found there are loaded, new ones saved.
    """
    runs = []
    for method in methods:
        for seed in seeds:
            run = None if cache is None else _load_run(cache, method, seed)
            if run is not None:
                runs.append(run)
                log(f"  {method.label:<16} seed {seed}: loss {run.loss:,.2f}  (cached)")
                continue
            run = fit_one(
                model,
                method,
                steps=steps,
                learning_rate=learning_rate,
                seed=seed,
                score=score,
                obj_n_mc=obj_n_mc,
                trace_every=trace_every,
                lr_schedule=lr_schedule,
            )
            if cache is not None:
                _save_run(cache, run)
            runs.append(run)
            extra = " DIVERGED" if run.diverged else ""
            log(
                f"  {method.label:<16} seed {seed}: loss {run.loss:,.2f}  "
                f"{run.wall[-1] if run.wall.size else math.nan:.1f} s{extra}"
            )
    return runs


def refine_with_fvi(
    model: pm.Model,
    runs: Sequence[Run],
    *,
    label: str,
    steps: int,
    learning_rate: float,
    score: Callable[[Params], dict],
    lr_schedule: str = "cosine",
    log: Callable[[str], None] = print,
    cache: Path | None = None,
) -> list[Run]:
    """The paper's diagnostic: F-VI started at each A-VI solution (its means and sds).

    If the loss drops below A-VI's, the encoder was too weak or A-VI stuck; if it drops below the
    F-VI run started at PyMC's default point, that run had stopped short of F-VI's optimum.
    """
    out = []
    for run in runs:
        if run.params is None:
            continue
        start = {name: mean for name, (mean, _) in run.params.items()}
        sigma = {name: sd for name, (_, sd) in run.params.items()}
        method = Method(label, "advi", options={"start": start, "start_sigma": sigma})
        refined = None if cache is None else _load_run(cache, method, run.seed)
        if refined is not None:
            log(f"  {label:<16} seed {run.seed}: loss {refined.loss:,.2f}  (cached)")
            out.append(refined)
            continue
        refined = fit_one(
            model,
            method,
            steps=steps,
            learning_rate=learning_rate,
            seed=run.seed,
            score=score,
            lr_schedule=lr_schedule,
        )
        if cache is not None:
            _save_run(cache, refined)
        log(f"  {label:<16} seed {run.seed}: loss {refined.loss:,.2f}")
        out.append(refined)
    return out


# -- results -------------------------------------------------------------------------------------


def _median(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def _extreme(pick, values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return pick(values) if values else None


def summarize(
    runs: Sequence[Run], *, reference: str = "F-VI", extra: Sequence[str] = ()
) -> tuple[list[dict], list[dict], float]:
    """Per-run rows and per-method summaries; the target is F-VI's median final loss."""
    target = _median(r.loss for r in runs if r.method.label == reference)
    target = math.nan if target is None else target
    rows = []
    for r in runs:
        rows.append(
            {
                "method": r.method.label,
                "family": r.method.family,
                "width": r.method.width,
                "seed": r.seed,
                "steps": r.steps,
                "loss": r.loss,
                **{k: r.metrics.get(k) for k in extra},
                "steps_to_1pct": r.steps_to(target),
                "wall_to_1pct_s": r.wall_to(target),
                "wall_s": float(r.wall[-1]) if r.wall.size else None,
                "compile_s": r.compile_s,
                "diverged": r.diverged,
            }
        )
    summary = []
    for label in dict.fromkeys(r.method.label for r in runs):
        mine = [row for row in rows if row["method"] == label]
        method = next(r.method for r in runs if r.method.label == label)
        losses = [row["loss"] for row in mine if np.isfinite(row["loss"])]
        within = [
            row
            for row in mine
            if np.isfinite(row["loss"]) and row["loss"] <= target + 0.01 * abs(target)
        ]
        summary.append(
            {
                "method": label,
                "family": method.family,
                "width": method.width,
                "seeds": len(mine),
                "loss_median": _median(losses),
                "loss_min": min(losses) if losses else None,
                "loss_max": max(losses) if losses else None,
                "gap_median": None if not losses else _median(losses) - target,
                **{f"{k}_median": _median(row[k] for row in mine) for k in extra},
                "within_1pct": len(within),
                "diverged": sum(row["diverged"] for row in mine),
                "steps_to_1pct_median": _median(row["steps_to_1pct"] for row in mine),
                "steps_to_1pct_min": _extreme(min, (row["steps_to_1pct"] for row in mine)),
                "steps_to_1pct_max": _extreme(max, (row["steps_to_1pct"] for row in mine)),
                "wall_to_1pct_s_median": _median(row["wall_to_1pct_s"] for row in mine),
                "wall_s_median": _median(row["wall_s"] for row in mine),
            }
        )
    return rows, summary, target


def clean_json(value):
    """``value`` with NumPy scalars made Python numbers and NaN or infinite floats made None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return clean_json(value.item())
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def write_results(
    out_dir: Path,
    name: str,
    *,
    settings: dict,
    rows: list[dict],
    summary: list[dict],
    target: float,
    paper: Mapping[str, Mapping[str, Any]],
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """``<name>.json`` (settings, per-run rows, summary, paper numbers) and ``<name>.csv``."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "experiment": name,
        "settings": settings,
        "fvi_target_loss": target,
        "summary": summary,
        "paper": dict(paper),
        "notes": list(notes),
        "rows": rows,
    } | dict(extra or {})
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(clean_json(payload), indent=1))
    with open(out_dir / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(clean_json(rows))
    return path


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def markdown_table(results: Mapping[str, Any], *, extra: Sequence[str] = ()) -> str:
    """Ours beside the paper's, one row per method, from a results JSON payload."""
    paper = results.get("paper", {})
    header = [
        "method",
        "paper loss",
        "paper gap",
        "our loss",
        "our gap",
        "our gap [min, max]",
        "paper ≤1%",
        "our ≤1%",
        "paper steps to 1%",
        "our steps to 1%",
        "[min, max]",
        "our s to 1%",
        "diverged",
    ]
    for k in extra:
        header += [f"paper {k}", f"our {k}"] if k in _PAPER_EXTRAS else [f"our {k}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fvi_paper = paper.get("F-VI", {}).get("loss")
    target = results.get("fvi_target_loss")

    def span(low, high, offset=0.0, digits=1):
        if low is None or high is None or offset is None:
            return "–"
        return f"[{_fmt(low - offset, digits)}, {_fmt(high - offset, digits)}]"

    for s in results["summary"]:
        ref = paper.get(s["method"], {})
        paper_gap = (
            ref["loss"] - fvi_paper
            if isinstance(ref.get("loss"), int | float) and fvi_paper is not None
            else None
        )
        cells = [
            s["method"],
            _fmt(ref.get("loss")),
            _fmt(None if paper_gap is None else round(paper_gap)),
            _fmt(s["loss_median"]),
            _fmt(s["gap_median"]),
            span(s.get("loss_min"), s.get("loss_max"), target),
            ref.get("within_1pct", "–"),
            f"{s['within_1pct']}/{s['seeds']}",
            _fmt(ref.get("steps_to_1pct")),
            _fmt(None if s["steps_to_1pct_median"] is None else round(s["steps_to_1pct_median"])),
            span(s.get("steps_to_1pct_min"), s.get("steps_to_1pct_max"), 0, 0),
            _fmt(s["wall_to_1pct_s_median"]),
            f"{s['diverged']}/{s['seeds']}",
        ]
        for k in extra:
            if k in _PAPER_EXTRAS:
                cells.append(_fmt(ref.get(k), 4))
            cells.append(_fmt(s.get(f"{k}_median"), 4))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


# -- figures -------------------------------------------------------------------------------------


def _representative(runs: Sequence[Run]) -> dict[str, Run]:
    """Per method, the run whose final loss is the median one (finite runs first)."""
    out = {}
    for label in dict.fromkeys(r.method.label for r in runs):
        mine = [r for r in runs if r.method.label == label and r.hist.size]
        finite = sorted((r for r in mine if np.isfinite(r.loss)), key=lambda r: r.loss)
        pool = finite or mine
        if pool:
            out[label] = pool[(len(pool) - 1) // 2]
    return out


def plot_curves(runs: Sequence[Run], target: float, path: Path, *, title: str = "") -> Path:
    """Training loss minus F-VI's final loss, vs iteration and vs wall time, a line per method.

    The median-loss seed of each method, smoothed over 50 steps; symlog axis, so that gaps of
    0.1 and 1,000 nats are both visible.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    window = SMOOTHING_WINDOW
    for label, run in _representative(runs).items():
        if run.hist.size < window:
            continue
        smooth = np.convolve(run.hist, np.ones(window) / window, mode="valid") - target
        steps = np.arange(window, run.hist.size + 1)
        axes[0].plot(steps, smooth, label=label, lw=1.2)
        wall = run.wall[window - 1 : window - 1 + smooth.size]
        axes[1].plot(wall, smooth[: wall.size], label=label, lw=1.2)
    for ax, xlabel in zip(axes, ("iteration", "wall time (s, compilation excluded)"), strict=True):
        ax.set_yscale("symlog", linthresh=max(1.0, 1e-3 * abs(target)))
        ax.axhline(0.01 * abs(target), color="grey", ls=":", lw=1)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("loss − F-VI final loss")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title + " (dotted: 1% of F-VI's loss)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_width_sweep(
    rows: Sequence[dict],
    target: float,
    path: Path,
    *,
    value: str = "loss",
    ylabel: str = "final loss − F-VI median",
    title: str = "",
    xlabel: str = "encoder width k",
    references: Sequence[str] = ("F-VI", "Const"),
) -> Path:
    """Final value per seed against encoder width, one series per family, as the paper draws it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    offset = target if value == "loss" else 0.0
    families = dict.fromkeys(r["family"] for r in rows if r["width"] is not None)
    for family in families:
        mine = [r for r in rows if r["family"] == family and r["width"] is not None]
        widths = sorted({r["width"] for r in mine})
        vals = [[r[value] - offset for r in mine if r["width"] == w] for w in widths]
        med = [np.nanmedian(v) if np.isfinite(v).any() else np.nan for v in vals]
        (line,) = ax.plot(widths, med, marker="o", label=f"A-VI {family}".strip())
        for w, v in zip(widths, vals, strict=True):
            ax.scatter([w] * len(v), v, s=12, alpha=0.6, color=line.get_color())
    for ref, style in zip(references, ("--", ":"), strict=False):
        vals = [r[value] - offset for r in rows if r["method"] == ref and np.isfinite(r[value])]
        if vals:
            ax.axhline(np.median(vals), ls=style, color="k", lw=1, label=ref)
    ax.set_xscale("log", base=2)
    ax.margins(y=0.15)
    if value == "loss":
        ax.set_yscale("symlog", linthresh=max(1.0, 1e-3 * abs(target)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# -- command line --------------------------------------------------------------------------------


def parse_args(doc: str, argv: Sequence[str] | None, *, full: dict, quick: dict):
    """``--quick`` picks the quick settings; each setting can be overridden by its own flag."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute version")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument(
        "--constant-lr", action="store_true", help="the paper's constant Adam rate (no decay)"
    )
    for key, value in full.items():
        kind = type(value)
        if isinstance(value, bool):
            parser.add_argument(
                f"--{key.replace('_', '-')}",
                type=lambda text: text.lower() in ("1", "true", "yes", "on"),
                metavar="{true,false}",
            )
        elif isinstance(value, list | tuple):
            parser.add_argument(f"--{key.replace('_', '-')}", type=type(value[0]), nargs="+")
        else:
            parser.add_argument(f"--{key.replace('_', '-')}", type=kind)
    args = parser.parse_args(argv)
    settings = dict(quick if args.quick else full)
    for key in full:
        given = getattr(args, key)
        if given is not None:
            settings[key] = list(given) if isinstance(given, list) else given
    settings["quick"] = args.quick
    settings["lr_schedule"] = "constant" if args.constant_lr else "cosine"
    return settings, args.out


def result_name(experiment: str, settings: dict) -> str:
    return f"{experiment}_quick" if settings["quick"] else experiment


_PROCESS_START = time.perf_counter()


def run_info(experiment: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How the results were made: the command, the machine, the date and the wall times.

    ``fits_s``: compilation plus fitting seconds summed over every run (runs loaded from a
    :func:`run_cache` count with the seconds they took when fitted); ``process_s``: this process
    from import to writing (scoring and figures included; cached runs cost nothing here).
    """
    import datetime
    import os
    import platform
    import sys

    def cpu_model() -> str:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()

    def seconds(value) -> float:  # a fit that diverged at its first step has no clock
        return value if value is not None and math.isfinite(value) else 0.0

    fits = sum(seconds(r.get("compile_s")) + seconds(r.get("wall_s")) for r in rows)
    return {
        "command": " ".join(["python -m", f"benchmarks.paper.{experiment}", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPU cores ({cpu_model()}), {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}",
        "load_average_at_end": [round(v, 1) for v in os.getloadavg()],
        "fits_s": round(fits, 1),
        "process_s": round(time.perf_counter() - _PROCESS_START, 1),
    }


def finish(
    experiment: str,
    runs: Sequence[Run],
    *,
    settings: dict,
    out: Path,
    paper: Mapping[str, Mapping[str, Any]],
    notes: Sequence[str] = (),
    extra_metrics: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    title: str = "",
    sweep: dict | None = None,
) -> dict:
    """Summarise, write the JSON/CSV and the figures, print the table; return the payload."""
    name = result_name(experiment, settings)
    rows, summary, target = summarize(runs, extra=extra_metrics)
    extra = dict(extra or {}) | {"run": run_info(experiment, rows)}
    figures = {"curves": plot_curves(runs, target, out / f"{name}_curves.png", title=title).name}
    if sweep is not None:
        figures["sweep"] = plot_width_sweep(
            rows, target, out / f"{name}_sweep.png", title=title, **sweep
        ).name
    path = write_results(
        out,
        name,
        settings=settings,
        rows=rows,
        summary=summary,
        target=target,
        paper=paper,
        notes=notes,
        extra=extra | {"figures": figures},
    )
    payload = json.loads(path.read_text())
    print(markdown_table(payload, extra=extra_metrics))
    print(f"wrote {path} and {', '.join(figures.values())}")
    return payload


#: Extra metrics the paper reports a number for (shown as paper/ours columns).
_PAPER_EXTRAS = {"mse", "epochs_to_mse"}
