"""Shared harness of the performance benchmarks: step builders, interleaved timing, results files.

Every ratio in these benchmarks is measured in one process, with the contenders timed in turn
(A, B, A, B, ...) after a warm-up, so that a machine whose speed drifts (a shared 2-core box) moves
both sides of a ratio together.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor
from pytensor.graph.basic import Constant

import pymc_amortize  # noqa: F401  (registers method="amortized")
from benchmarks.harness import n_params as n_params  # re-exported for the perf scripts
from benchmarks.harness import reset_peak_rss, rss_mib
from pymc_amortize.fitting.vi import AmortizedVI

RESULTS = Path(__file__).parent / "results"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


# -- step builders ----------------------------------------------------------------------------
def avi_inference(bench, *, batch_size=None, random_seed=0, **kwargs) -> AmortizedVI:
    kwargs.setdefault("family", "encoder")  # the step these benchmarks measure
    with bench.model:
        return AmortizedVI(
            bench.local,
            encoder_widths=bench.encoder_widths,
            batch_size=batch_size,
            random_seed=random_seed,
            **kwargs,
        )


def avi_step(bench, *, batch_size=None, lr=1e-2, mode=None, random_seed=0) -> Callable:
    """The compiled A-VI step (no Python guard): one call is one Adam step."""
    inference = avi_inference(bench, batch_size=batch_size, random_seed=random_seed)
    kwargs = {"mode": mode} if mode else {}
    guard = inference.objective.step_function(
        obj_optimizer=pm.adam(learning_rate=lr), compile_kwargs=kwargs
    )
    return _synced(guard.fn)


def _synced(fn: Callable) -> Callable:
    # The JAX backend returns before the work is done; reading the loss waits for it (as the
    # guard's float() does in a fit, and as the NumPyro step does).
    def step() -> float:
        out = fn()
        return float(out[0] if isinstance(out, list) else out)

    step.compiled = fn  # for held_mib
    return step


def advi_step(bench, *, lr=1e-2, mode=None, random_seed=0) -> Callable:
    """PyMC ADVI's compiled step on the same model object."""
    with bench.model:
        advi = pm.ADVI(random_seed=random_seed)
    kwargs = {"mode": mode} if mode else {}
    return _synced(
        advi.objective.step_function(
            score=True, obj_optimizer=pm.adam(learning_rate=lr), compile_kwargs=kwargs
        )
    )


# -- memory -----------------------------------------------------------------------------------
def held_mib(step: Callable) -> dict[str, float]:
    """MiB the compiled step holds between calls, split into what it updates (parameters, optimiser
    state) and what it only reads (the data: shared encoder inputs and the observed values baked
    into its graph as constants)."""
    fn = step.compiled
    updated, read = [], []
    for inp in fn.maker.inputs:
        if inp.shared:
            value = inp.variable.get_value(borrow=True)
            (updated if inp.update is not None else read).append(value)
    read += [v.data for v in fn.maker.fgraph.variables if isinstance(v, Constant)]

    def mib(arrays):
        return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)) / 2**20

    return {"state_mib": mib(updated), "data_mib": mib(read)}


def trim_heap() -> None:
    """Collect garbage and hand glibc's free heap back to the OS, so RSS is what is held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def step_peak_mib(step: Callable, *, calls: int = 20, warmup: int = 2) -> float:
    """Peak resident MiB above the resting process while ``step`` runs ``calls`` times (after
    ``warmup`` calls), i.e. the step's temporaries; NaN where Linux's peak counter is unavailable.

    The process peak (``ru_maxrss``) is useless here: compilation dominates it. Instead the peak
    counter is reset (``/proc/self/clear_refs`` ← 5) after warm-up and ``VmHWM`` read after the
    calls. glibc's malloc would keep freed large blocks resident (its mmap threshold grows after the
    first free), hiding every step's temporaries after the first; the threshold is pinned at 16 KiB
    so that each temporary of 2,000 float64 or more is mapped and unmapped in its own step (smaller
    ones are below this measure's resolution). Readings under ≈ 1 MiB are noise: Linux batches its
    resident-page counts per CPU, and the first step measured in a process may touch a little more
    of the heap. Afterwards the thresholds are left pinned high
    (:func:`pin_malloc_thresholds`).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 16 * 1024)
        for _ in range(warmup):
            step()
        gc.collect()
        resting = rss_mib()
        reset_peak_rss()
        for _ in range(calls):
            step()
        return rss_mib("VmHWM") - resting
    except OSError:
        return float("nan")
    finally:
        # A 16 KiB threshold would slow whatever runs next in the process: leave it pinned high.
        pin_malloc_thresholds()


# -- timing -----------------------------------------------------------------------------------
def interleaved(
    contenders: dict[str, Callable],
    *,
    repeats: int,
    calls: int,
    warmup: int = 2,
    faults: dict | None = None,
) -> dict[str, np.ndarray]:
    """Seconds per call of each contender: ``repeats`` rounds, each timing ``calls`` calls of every
    contender in turn. Returns the per-round means (the min/median over rounds are the figures).
    ``faults``, if given, receives each contender's median minor page faults per call."""
    for fn in contenders.values():
        for _ in range(warmup * calls):
            fn()
    out = {name: [] for name in contenders}
    minflt = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            out[name].append((time.perf_counter() - start) / calls)
            minflt[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / calls)
    if faults is not None:
        faults.update({name: float(np.median(v)) for name, v in minflt.items()})
    return {name: np.asarray(v) for name, v in out.items()}


class FitClock:
    """``pm.fit`` callback: the fit's own clock, with a measurement every ``every`` steps kept off it.

    Create it just before calling ``pm.fit`` and pass it first among the callbacks. ``compile_s`` is
    the time from its creation to the first callback: building the inference, compiling its step and
    running one step. ``run_s`` is the time from the first callback to the last, less the time spent
    in ``measure``; ``steps`` the steps run. Every ``every`` steps ``measure(approx)`` is called and
    ``(step, seconds on the clock since the first callback, value)`` appended to ``points``;
    ``stop(value)`` true ends the fit (PyMC's loop stops cleanly on ``StopIteration``).
    """

    def __init__(self, measure: Callable | None = None, *, every: int = 100, stop=None):
        self.measure, self.every, self.stop = measure, every, stop
        self.start = time.perf_counter()
        self.first = self.last = None
        self.off_clock = 0.0
        self.steps = 0
        self.points: list[tuple[int, float, object]] = []

    def __call__(self, approx, losses, i):
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last, self.steps = now, i + 1
        if self.measure is None or self.steps % self.every:
            return
        value = self.measure(approx)
        self.points.append((self.steps, now - self.first - self.off_clock, value))
        self.off_clock += time.perf_counter() - now
        if self.stop is not None and self.stop(value):
            raise StopIteration

    @property
    def compile_s(self) -> float:
        return (self.first or time.perf_counter()) - self.start

    @property
    def run_s(self) -> float:
        return (self.last or self.start) - (self.first or self.start) - self.off_clock

    @property
    def ms_per_step(self) -> float:
        """Wall ÷ steps inside the fit, compilation and measurements excluded."""
        return self.run_s / max(self.steps - 1, 1) * 1e3


def converged_fit(model, clock: FitClock, *, max_steps, lr, mode=None, seed=0, **fit_kwargs):
    """``pm.fit`` with Adam at ``lr``, timed by ``clock`` and stopped by ``ELBOConvergence()`` (or
    at ``max_steps``), as the benchmarks that compare whole fits run every method."""
    from pymc_amortize import ELBOConvergence

    if mode:
        fit_kwargs["compile_kwargs"] = {"mode": mode}
    return pm.fit(
        max_steps,
        model=model,
        obj_optimizer=pm.adam(learning_rate=lr),
        callbacks=[clock, ELBOConvergence()],
        random_seed=seed,
        progressbar=False,
        **fit_kwargs,
    )


def warm_up_fits(mode: str | None = None) -> None:
    """Fit a tiny model with A-VI and ADVI for a few steps, so that what a process pays once (numba's
    start-up, PyTensor's first compilations, loading its on-disk cache) is not charged to whichever
    contender happens to run first."""
    from pymc_amortize.examples.simulated_radon import radon_data, radon_model

    model = radon_model(radon_data(20, 100, random_seed=0))
    for method in ("amortized", "advi"):
        kwargs = {"compile_kwargs": {"mode": mode}} if mode else {}
        pm.fit(5, method=method, model=model, progressbar=False, **kwargs)


def pin_malloc_thresholds(*, mmap_mib: int = 32, trim_mib: int = 512) -> None:
    """Keep blocks under ``mmap_mib`` in glibc's heap and the heap's free top under ``trim_mib``
    resident (process-wide; what ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` do).

    With glibc's defaults, whether a step's MiB-sized temporaries are handed back to the OS after
    every step (and page-faulted in afresh by the next) depends on the heap's layout, i.e. on what
    else ran in the process: the full-batch step measured 1.6 or 5.3 ms in one process by that alone
    (``benchmarks.perf.allocator``). Pinned, every contender runs under the same allocator.
    """
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, mmap_mib * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, trim_mib * 2**20)


def summary(seconds: np.ndarray) -> dict:
    return {
        "min_ms": float(seconds.min() * 1e3),
        "median_ms": float(np.median(seconds) * 1e3),
        "max_ms": float(seconds.max() * 1e3),
    }


def paired_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """Median of the round-by-round ratios a/b (rounds were timed back to back)."""
    return float(np.median(a / b))


# -- machine and results ----------------------------------------------------------------------
def machine() -> dict:
    import numpy
    import pymc

    versions = {"python": platform.python_version(), "pymc": pymc.__version__}
    versions |= {"pytensor": pytensor.__version__, "numpy": numpy.__version__}
    try:
        import jax
        import numpyro

        versions |= {"jax": jax.__version__, "numpyro": numpyro.__version__}
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
        "pytensor_default_mode": str(pytensor.config.mode),
        "versions": versions,
    }


def write_results(name: str, payload: dict, table: str, *, quick: bool) -> Path:
    """Save a benchmark's JSON and its markdown section (read by ``benchmarks.perf.report``)."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "quick": quick, "machine": machine()} | payload
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=float))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_quick_cli(run, doc: str, argv=None) -> None:
    """The command line of a benchmark whose only option is ``--quick``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute version")
    run(quick=parser.parse_args(argv).quick)
