"""Benchmark: a minibatched A-VI fit's peak memory and step time against N, up to 10⁷ units.

    python -m benchmarks.perf.scale_memory [--quick]     # quick: N = 10³ … 10⁵; full: … 10⁷

The paper's nonlinear model (one row per unit, x float64), its ``unit`` dim given by length
(``nonlinear_model(x, coords=False)``: PyMC holds coordinate labels as a tuple of Python ints, ≈ 4×
the data). Each N runs in a fresh process:

1. *baseline*: resident memory after the imports and a warm-up fit on N = 10³ (numba and PyTensor
   loaded, the compile cache read), then x is drawn and the process's free heap handed back
   (``malloc_trim``), so the resting process holds x once;
2. Linux's peak-RSS counter is reset (``/proc/self/clear_refs``) and the user's fit runs: the model
   is built (PyMC copies x into its observed constant; the caller then drops its own ``x``), then
   ``pm.fit(method="amortized", batch_size=1000)``, set-up, analysis, compile and the steps;
   *fit peak* = peak RSS − baseline, against the target data + 300 MiB;
3. *step ms* = median of the fit's own per-step wall times; *÷ N = 10³* = the A-VI step at this N
   over a step on N = 10³ built in the same process, timed interleaved (the ratio that counts on
   a shared machine);
4. ``approx.encode_dataset(chunk_size=100_000, store=<tmp>.zarr)``: every unit's posterior (mean,
   sd, constrained mean and quantiles) written to zarr chunk by chunk; seconds per 10⁶ units and the
   peak RSS it adds;
5. up to N = 10⁶ (``CHUNKED_MAX``; 100 draws of 10⁷ units would write 8 GB):
   ``approx.sample_dataset(100, store=<tmp>.zarr)`` (every unit's draws, 10,000 units per chunk,
   written to zarr) and ``psis_diagnostic(approx, draws=100, chunk_size=100_000)`` (k̂ of every
   unit); seconds per 10⁶ units (compilation included) and the peak RSS each adds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.perf import common

BATCH = 1_000
#: Draws and the largest N of the chunked sample and PSIS rows.
CHUNKED_DRAWS = 100
CHUNKED_MAX = 1_000_000


def one_size(n_units: int, steps: int) -> dict:
    """Measure one N in this process (called in a fresh subprocess)."""
    import pymc as pm

    import pymc_amortize  # noqa: F401
    from benchmarks.perf import models
    from pymc_amortize.examples.paper import nonlinear_model

    def build(x):
        return nonlinear_model(x, variance_floor=models.NONLINEAR_FLOOR, coords=False)

    def fit(model, n_steps):
        return pm.fit(
            n_steps, family="encoder",
            method="amortized",
            model=model,
            local={"z": "x"},
            encoder_widths=(16, 16),
            batch_size=BATCH,
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=0,
            progressbar=False,
        )

    # Warm-up on a small N: what a process pays once is not charged to the fit measured.
    small = build(models.nonlinear_data(1_000)["x"])
    fit(small, 50)
    common.trim_heap()
    baseline = common.rss_mib()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n_units)  # the data: only its size matters to memory and time
    data_mib = x.nbytes / 2**20
    common.trim_heap()
    resting = common.rss_mib()
    common.reset_peak_rss()
    start = time.perf_counter()
    model = build(x)
    del x  # PyMC holds its own copy (make_obs_var's astype); the caller's is dropped
    approx = fit(model, steps)
    fit_s = time.perf_counter() - start
    fit_peak = common.rss_mib("VmHWM") - baseline
    after_fit = common.rss_mib() - baseline
    step_ms = float(np.median(approx.step_seconds[steps // 5 :]) * 1e3)
    # Encode every unit, chunk by chunk, into a zarr store.
    common.trim_heap()
    before_encode = common.rss_mib()
    common.reset_peak_rss()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        approx.encode_dataset(chunk_size=100_000, progressbar=False, store=f"{tmp}/units.zarr")
        encode_s = time.perf_counter() - t0
    encode_peak = common.rss_mib("VmHWM") - before_encode
    chunked = chunked_results(approx, n_units) if n_units <= CHUNKED_MAX else {}
    return chunked | {
        "n_units": n_units,
        "data_mib": data_mib,
        "baseline_mib": baseline,
        "resting_with_data_mib": resting - baseline,
        "fit_peak_mib": fit_peak,
        "after_fit_mib": after_fit,
        "fit_s": fit_s,
        "steps": steps,
        "step_ms": step_ms,
        "encode_s": encode_s,
        "encode_s_per_1e6": encode_s / n_units * 1e6,
        "encode_peak_mib": encode_peak,
    }


def chunked_results(approx, n_units: int) -> dict:
    """Seconds per 10⁶ units and added peak MiB of ``sample_dataset`` (to zarr) and of the
    chunked ``psis_diagnostic``, each with ``CHUNKED_DRAWS`` draws."""
    from pymc_amortize.psis import psis_diagnostic

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        calls = {
            "sample": lambda: approx.sample_dataset(
                CHUNKED_DRAWS, random_seed=0, progressbar=False, store=f"{tmp}/draws.zarr"
            ),
            "psis": lambda: psis_diagnostic(
                approx, draws=CHUNKED_DRAWS, chunk_size=100_000, random_seed=0
            ),
        }
        for name, call in calls.items():
            common.trim_heap()
            before = common.rss_mib()
            common.reset_peak_rss()
            t0 = time.perf_counter()
            call()
            seconds = time.perf_counter() - t0
            out[f"{name}_s_per_1e6"] = seconds / n_units * 1e6
            out[f"{name}_peak_mib"] = common.rss_mib("VmHWM") - before
    return out


def step_ratio(n_units: int, *, repeats: int = 7, calls: int = 200) -> float:
    """The A-VI step on N units over the step on N = 10³, interleaved in this process."""
    from benchmarks.perf import models
    from pymc_amortize.examples.paper import nonlinear_model

    x = np.random.default_rng(0).standard_normal(n_units)
    model = nonlinear_model(x, variance_floor=models.NONLINEAR_FLOOR, coords=False)
    big = models.BenchModel("nonlinear", model, {"z": "x"}, (16, 16), {})
    small = models.build("nonlinear", 1_000)
    fns = {
        "big": common.avi_step(big, batch_size=BATCH),
        "small": common.avi_step(small, batch_size=BATCH),
    }
    common.pin_malloc_thresholds()
    times = common.interleaved(fns, repeats=repeats, calls=calls)
    return common.paired_ratio(times["big"], times["small"])


def run(*, quick: bool = False, sizes: tuple[int, ...] | None = None, steps: int = 2_000):
    sizes = sizes or (
        (1_000, 10_000, 100_000) if quick else (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
    )
    rows = []
    for n in sizes:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.perf.scale_memory",
                "--one",
                str(n),
                "--steps",
                str(steps),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.perf.scale_memory", "--ratio", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        row["step_ratio_vs_1e3"] = json.loads(out.stdout.strip().splitlines()[-1])["ratio"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    header = [
        "N",
        "data MiB",
        "fit peak MiB (target ≤ data + 300)",
        "held after fit MiB",
        "fit s (build + compile + steps)",
        "step ms (in fit)",
        "step ÷ step at N = 10³ (interleaved)",
        "encode s per 10⁶ units",
        "encode peak MiB",
        f"sample_dataset ({CHUNKED_DRAWS} draws, zarr) s per 10⁶ units",
        f"chunked PSIS ({CHUNKED_DRAWS} draws) s per 10⁶ units",
    ]
    cells = [
        [
            f"{r['n_units']:,}",
            r["data_mib"],
            r["fit_peak_mib"],
            r["after_fit_mib"],
            r["fit_s"],
            r["step_ms"],
            r["step_ratio_vs_1e3"],
            r["encode_s_per_1e6"],
            r["encode_peak_mib"],
            r.get("sample_s_per_1e6", "–"),
            r.get("psis_s_per_1e6", "–"),
        ]
        for r in rows
    ]
    big = rows[-1]
    met_memory = all(r["fit_peak_mib"] <= r["data_mib"] + 300 for r in rows)
    table = (
        f"Nonlinear model (one float64 x per unit), A-VI with B = {BATCH}, encoders 1→16→16→1, "
        f"{steps} Adam steps, each N in a fresh process. Memory is resident memory (Linux "
        "`VmRSS`/`VmHWM`) above the process after its imports and a warm-up fit on N = 10³ "
        "(≈ {:.0f} MiB in these runs). *fit peak*: peak while the model is built (PyMC copies x; "
        "the caller then drops its own) and `pm.fit` sets up, compiles and runs. *held after fit*: "
        "what stays resident (x once, in the model). *step ÷ step at N = 10³*: medians of "
        "interleaved rounds of the two compiled steps in one process. *encode*: "
        "`approx.encode_dataset(chunk_size=100_000, store=...zarr)`, mean, sd, constrained mean "
        "and 3 quantiles of every unit written to zarr chunk by chunk. *sample_dataset*: "
        f"{CHUNKED_DRAWS} draws of every unit, to zarr; *chunked PSIS*: `psis_diagnostic(approx, "
        f"draws={CHUNKED_DRAWS}, chunk_size=100_000)`, k̂ of every unit (compilation included; up "
        f"to N = {CHUNKED_MAX:,}).\n\n".format(float(np.median([r["baseline_mib"] for r in rows])))
        + common.markdown_table(header, cells)
        + f"\nTargets at N = {big['n_units']:,}: step ÷ step at N = 10³ **{big['step_ratio_vs_1e3']:.2f}** "
        f"(≤ 1.2); fit peak {big['fit_peak_mib']:.0f} MiB against data + 300 = "
        f"{big['data_mib'] + 300:.0f} MiB (**{'met' if met_memory else 'missed'}** at every N).\n"
    )
    common.write_results("scale_memory", {"rows": rows}, table, quick=quick)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10³ … 10⁵")
    parser.add_argument("--sizes", type=int, nargs="*")
    parser.add_argument("--steps", type=int, default=2_000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ratio", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.one, args.steps)))
    elif args.ratio:
        print(json.dumps({"ratio": step_ratio(args.ratio)}))
    else:
        run(quick=args.quick, sizes=tuple(args.sizes) if args.sizes else None, steps=args.steps)


if __name__ == "__main__":
    main()
