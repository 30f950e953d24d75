"""What the benchmark scripts share: fitting A-VI and ADVI through ``pm.fit``, NUTS references,
timing, q's parameters, posterior summaries and their agreement with a reference.

One definition of each, so that a script says only what it studies. :mod:`benchmarks.paper.common`
builds the paper's experiments on it, :mod:`benchmarks.perf.common` the performance harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr

import pymc_amortize  # noqa: F401  (registers method="amortized")
from pymc_amortize import AmortizedApproximation
from pymc_amortize.compare import StepClock, steps_to_within
from pymc_amortize.guide.globals import group_factors

__all__ = [
    "ScoreTrace",
    "ScoredClock",
    "StepClock",
    "agreement",
    "fit_vi",
    "n_params",
    "nutpie_available",
    "posterior_summary",
    "reset_peak_rss",
    "rss_mib",
    "sample_nuts",
    "steps_to_within",
    "timed",
    "variational_params",
]

#: Variational parameters of one fit: ``{value variable name: (mean, sd)}``, value space.
Params = dict[str, tuple[np.ndarray, np.ndarray]]


# -- fitting ------------------------------------------------------------------------------------
def fit_vi(
    model: pm.Model,
    method: str,
    steps: int,
    *,
    seed: int | None,
    lr: float | None = None,
    obj_optimizer: Callable | None = None,
    callbacks: Sequence[Callable] | None = None,
    **options,
):
    """``pm.fit(steps, method=method)`` on ``model`` without a progress bar: Adam at ``lr`` unless
    ``obj_optimizer`` is given; ``options`` go to ``pm.fit`` as they are."""
    if obj_optimizer is None:
        obj_optimizer = pm.adam(learning_rate=lr)
    if callbacks is not None:
        options["callbacks"] = list(callbacks)
    with model:
        return pm.fit(
            steps,
            method=method,
            obj_optimizer=obj_optimizer,
            random_seed=seed,
            progressbar=False,
            **options,
        )


def n_params(approx) -> int:
    """The number of optimised parameters of a PyMC or amortized approximation."""
    return int(sum(np.size(p.get_value()) for p in approx.params))


# -- NUTS ---------------------------------------------------------------------------------------
def nutpie_available() -> bool:
    try:
        import nutpie  # noqa: F401
    except ImportError:
        return False
    return True


def sample_nuts(
    model: pm.Model,
    *,
    draws: int,
    tune: int,
    chains: int,
    seed: int,
    sampler: str = "auto",
    **pm_sample_options,
) -> tuple[xr.DataTree, str]:
    """NUTS draws and a label naming the sampler: ``"nutpie"``, ``"pymc"`` (``pm.sample`` with
    ``pm_sample_options``), or ``"auto"``, nutpie when it is importable, else ``pm.sample``.

    PyMC's own NUTS is bit-for-bit reproducible under a seed; nutpie's threaded chains are not.
    """
    if sampler == "nutpie" or (sampler == "auto" and nutpie_available()):
        import nutpie

        compiled = nutpie.compile_pymc_model(model)
        idata = nutpie.sample(
            compiled, draws=draws, tune=tune, chains=chains, seed=seed, progress_bar=False
        )
        return idata, "NUTS (nutpie)"
    if sampler not in ("pymc", "auto"):
        raise ValueError(f"sampler must be 'auto', 'nutpie' or 'pymc'; got {sampler!r}.")
    with model:
        idata = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            random_seed=seed,
            progressbar=False,
            **pm_sample_options,
        )
    return idata, "NUTS (pm.sample)"


# -- timing -------------------------------------------------------------------------------------
def timed(work: Callable[[], Any], *, label: str | None = None) -> tuple[Any, float]:
    """``work()`` and its wall seconds; with ``label``, ``label ...`` is printed before and
    ``label: 1.2 s`` after."""
    if label is not None:
        print(f"{label} ...", flush=True)
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    if label is not None:
        print(f"{label}: {seconds:.1f} s", flush=True)
    return result, seconds


class ScoredClock(StepClock):
    """:class:`~pymc_amortize.compare.StepClock` that also records ``score(approx)`` (a dict) in
    ``trace``, with ``step`` and ``wall`` (seconds since the first step), and keeps the scoring's
    own time off the clock: every earlier time is moved later by it, so that differences of
    ``times`` are fitting time.

    It scores at PyMC's callback index ``i`` with ``(i + 1) % every == 0`` and labels the record
    ``i + 1``, as the paper experiments always have (PyMC's ``i`` counts from 1, so these are steps
    every − 1, 2·every − 1, … labelled every, 2·every, …).
    """

    def __init__(self, score: Callable[[Any], dict] | None = None, every: int | None = None):
        super().__init__()
        self.score, self.every = score, every
        self.trace: list[dict[str, float]] = []

    def __call__(self, approx, losses, i):
        super().__call__(approx, losses, i)
        if self.every and self.score is not None and (i + 1) % self.every == 0:
            start = time.perf_counter()
            self.trace.append(
                {"step": i + 1, "wall": self.times[-1] - self.times[0]} | self.score(approx)
            )
            self.times = [t + (time.perf_counter() - start) for t in self.times]


class ScoreTrace:
    """PyMC callback: ``score(approx)`` (a number) after every ``every``-th step, with the step
    (plus ``offset``) and the seconds since the trace was created, compilation included and the
    scoring's own time excluded."""

    def __init__(self, score: Callable[[Any], float], every: int, *, offset: int = 0):
        self.score, self.every, self.offset = score, every, offset
        self.start = time.perf_counter()
        self.excluded = 0.0
        self.steps: list[int] = []
        self.seconds: list[float] = []
        self.values: list[float] = []

    def __call__(self, approx, losses, i):
        if i % self.every:
            return
        entered = time.perf_counter()
        self.steps.append(i + self.offset)
        self.seconds.append(entered - self.start - self.excluded)
        self.values.append(self.score(approx))
        self.excluded += time.perf_counter() - entered

    def add_final(self, approx) -> None:
        """Record the fitted ``approx`` after the last step (no step number)."""
        self.seconds.append(time.perf_counter() - self.start - self.excluded)
        self.values.append(self.score(approx))

    def first_within(self, target: float, rel: float = 0.01) -> int | None:
        """The first recorded step whose value is ``target − rel · |target|`` or above."""
        hits = [
            s
            for s, v in zip(self.steps, self.values, strict=False)
            if v >= target - rel * abs(target)
        ]
        return hits[0] if hits else None


# -- memory -------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def rss_mib(field: str = "VmRSS") -> float:
    """The process's resident memory (``VmRSS``) or its peak since the last reset (``VmHWM``)."""
    return _status_kib(field) / 1024


def reset_peak_rss() -> None:
    """Reset Linux's peak-RSS counter (``VmHWM``) to the current resident memory."""
    Path("/proc/self/clear_refs").write_text("5")


# -- q's parameters and posterior summaries -----------------------------------------------------
def variational_params(approx) -> Params:
    """Means and sds of q on the value space, by value variable, for A-VI and ADVI alike (A-VI's
    locals are the encoder's outputs on the fitted units)."""
    if isinstance(approx, AmortizedApproximation):
        out = approx.global_factors()
        for latent, q in zip(approx.analysis.latents, approx.encode().values(), strict=True):
            out[latent.value_name] = (q.mean, q.sd)
        return out
    return group_factors(approx.groups[0])


def posterior_summary(
    idata: xr.DataTree, scalars: Sequence[str], effects: Sequence[str] = ()
) -> dict[str, Any]:
    """Posterior means of the ``scalars``; for each of the ``effects`` (a vector per unit), the
    means ``{name}_mean`` and sds ``{name}_sd`` of its entries."""
    draws = idata["posterior"].to_dataset().stack(sample=("chain", "draw"))
    out: dict[str, Any] = {name: float(draws[name].mean()) for name in scalars}
    for name in effects:
        out[f"{name}_mean"] = draws[name].mean("sample").to_numpy()
        out[f"{name}_sd"] = draws[name].std("sample").to_numpy()
    return out


def agreement(fit: dict[str, Any], ref: dict[str, Any], name: str) -> dict[str, float]:
    """How the effect ``name`` of one :func:`posterior_summary` matches a reference's: the
    correlation of the means, the RMS and largest |z| of ``z = (mean − ref mean) / ref sd``, and
    the mean ratio of the sds."""
    mean, ref_mean, ref_sd = fit[f"{name}_mean"], ref[f"{name}_mean"], ref[f"{name}_sd"]
    z = (mean - ref_mean) / ref_sd
    return {
        "corr": float(np.corrcoef(mean, ref_mean)[0, 1]),
        "rms_z": float(np.sqrt(np.mean(z**2))),
        "max_abs_z": float(np.max(np.abs(z))),
        "sd_ratio": float(np.mean(fit[f"{name}_sd"] / ref_sd)),
    }
