"""Benchmarks 3 and 4: time per step on the nonlinear model, A-VI vs NumPyro vs ADVI, by backend and
precision, against the arithmetic floor, all timed in turn in one process.

    python -m benchmarks.perf.step_time [--quick]

The floor: the step's matrix-product FLOPs (counted below) at the rate this machine's BLAS reaches on
the step's own GEMM shape (N, 16) @ (16, 16), measured as one more contender of the same rounds.
Elementwise work (ReLU masks, sin/cos/log of the likelihood) is left out, so the floor is optimistic.
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import pytensor

from benchmarks.perf import common, models

WIDTH = 16


def gemm_flops_per_unit(width: int = WIDTH) -> int:
    """Matrix-product FLOPs per unit of one step with two 1 → w → w → 1 MLPs (mean, log-sd).

    Per net: hidden→hidden forward, its weight gradient and its input gradient (3 · 2w²), plus the
    rank-one products of the first and last layers (forward, weight gradient; the head's input
    gradient): 5 · 2w.
    """
    return 2 * (3 * 2 * width * width + 5 * 2 * width)


def _gemm_contender(n_units: int, dtype: str):
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n_units, WIDTH)).astype(dtype)
    w = rng.standard_normal((WIDTH, WIDTH)).astype(dtype)
    return lambda: h @ w


def _label(mode: str) -> str:
    return "C" if mode == "FAST_RUN" else mode


def build_contenders(
    n_units: int,
    batch: int,
    *,
    backends: tuple[str, ...],
    precisions: tuple[str, ...],
    numpyro: bool,
    advi: bool,
) -> dict:
    """Every step, by precision: A-VI full batch on each backend, A-VI minibatched and ADVI on the
    first backend, the GEMM of the floor, and NumPyro's full and minibatched steps."""
    contenders, first = {}, backends[0]
    for floatx in precisions:
        with pytensor.config.change_flags(floatX=floatx):
            bench = models.build("nonlinear", n_units)
            for mode in backends:
                contenders[f"A-VI full {floatx} {_label(mode)}"] = common.avi_step(bench, mode=mode)
            contenders[f"A-VI B={batch} {floatx} {_label(first)}"] = common.avi_step(
                bench, batch_size=batch, mode=first
            )
            if advi and floatx == "float64":
                contenders[f"ADVI float64 {_label(first)}"] = common.advi_step(bench, mode=first)
        contenders[f"BLAS GEMM (N,16)@(16,16) {floatx}"] = _gemm_contender(n_units, floatx)
    if numpyro:
        from benchmarks.perf.numpyro_models import nonlinear_svi

        x = models.build("nonlinear", n_units).data["x"]
        for dtype in ("float32", "float64"):
            contenders[f"NumPyro full {dtype}"] = nonlinear_svi(x, dtype=dtype)[0]
            contenders[f"NumPyro B={batch} {dtype}"] = nonlinear_svi(
                x, batch_size=batch, dtype=dtype
            )[0]
    return contenders


def run(
    *,
    quick: bool = False,
    n_units: int = 10_000,
    batch: int = 1_000,
    repeats: int | None = None,
    calls: int | None = None,
    backends: tuple[str, ...] = ("NUMBA", "FAST_RUN", "JAX"),
    precisions: tuple[str, ...] = ("float64", "float32"),
    numpyro: bool = True,
    advi: bool = True,
    pin_malloc: bool = True,
    write: bool = True,
) -> dict:
    repeats = repeats or (7 if quick else 21)
    calls = calls or (20 if quick else 50)
    if pin_malloc:
        common.pin_malloc_thresholds()
    contenders = build_contenders(
        n_units, batch, backends=backends, precisions=precisions, numpyro=numpyro, advi=advi
    )
    faults = {}
    times = common.interleaved(contenders, repeats=repeats, calls=calls, faults=faults)
    flops = gemm_flops_per_unit() * n_units
    floor = {
        dt: flops / (2 * n_units * WIDTH * WIDTH) * times[f"BLAS GEMM (N,16)@(16,16) {dt}"]
        for dt in precisions
    }
    ref = "NumPyro full float32" if numpyro else None
    ref_b = f"NumPyro B={batch} float32" if numpyro else None
    rows, ratios = [], {}
    for name, seconds in times.items():
        if name.startswith("BLAS"):
            continue
        dtype = "float32" if "float32" in name else "float64"
        full = "full" in name or name.startswith("ADVI")
        vs_numpyro = common.paired_ratio(seconds, times[ref if full else ref_b]) if ref else np.nan
        vs_floor = common.paired_ratio(seconds, floor[dtype]) if full and dtype in floor else np.nan
        ratios[name] = {"vs_numpyro_f32": vs_numpyro, "vs_floor": vs_floor}
        s = common.summary(seconds)
        rows.append([name, s["median_ms"], s["min_ms"], vs_numpyro, vs_floor, faults[name]])
    for dtype in precisions:
        s = common.summary(floor[dtype])
        rows.append([f"arithmetic floor {dtype}", s["median_ms"], s["min_ms"], "", 1.0, ""])
    header = [
        "contender",
        "median ms/step",
        "min ms/step",
        "÷ NumPyro float32 (same batch)",
        "÷ floor (full batch)",
        "page faults/step",
    ]
    table = (
        f"Nonlinear model, N = {n_units:,}, encoder 1→{WIDTH}→{WIDTH}→1 (mean and log-sd nets), one "
        f"MC draw, Adam; {repeats} interleaved rounds of {calls} steps after warm-up. Floor: "
        f"{gemm_flops_per_unit():,} matrix-product FLOP per unit at the measured GEMM rate. "
        + (
            "glibc's malloc thresholds pinned (`common.pin_malloc_thresholds`, section 6).\n\n"
            if pin_malloc
            else "glibc's malloc at its defaults (section 6).\n\n"
        )
        + common.markdown_table(header, rows)
    )
    label = _label(backends[0])
    wanted = {
        f"B={batch} float64 ≤ 0.5× NumPyro float32": (f"A-VI B={batch} float64", "vs_numpyro_f32"),
        "full float64 ≤ 1.0× NumPyro float32": ("A-VI full float64", "vs_numpyro_f32"),
        "full float32 ≤ 0.5× NumPyro float32": ("A-VI full float32", "vs_numpyro_f32"),
        "full float64 ≤ 2× floor": ("A-VI full float64", "vs_floor"),
    }
    targets = {
        target: ratios[f"{name} {label}"][field]
        for target, (name, field) in wanted.items()
        if f"{name} {label}" in ratios and (numpyro or field == "vs_floor")
    }
    table += "\nTargets (measured ratio):\n\n" + "".join(
        f"- {k}: **{v:.2f}**\n" for k, v in targets.items()
    )
    payload = {
        "n_units": n_units,
        "batch": batch,
        "times_ms": {k: common.summary(v) for k, v in times.items()},
        "ratios": ratios,
        "targets": targets,
    }
    if write:
        common.write_results("step_time", payload, table, quick=quick)
    return payload


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run(quick=args.quick)


if __name__ == "__main__":
    main()
