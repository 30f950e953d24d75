"""Benchmark: minibatched A-VI on units read from a zarr store, 10⁶ to 10⁸ units, memory flat in N.

    python -m benchmarks.perf.scale_disk [--quick] [--store-dir DIR]
    # quick: N = 10⁵, 10⁶; full: 10⁶, 10⁷, 10⁸ (writes ≈ 0.8 GB per 10⁸ units to DIR, then deletes)

The paper's nonlinear model, one float64 x per unit, written to a zarr store in chunks of
``CHUNK`` units (generated chunk by chunk: the data never exist in memory whole). Each N runs in a
fresh process:

1. *baseline*: resident memory after the imports and a warm-up fit on a small store (numba and
   PyTensor loaded, the compile cache read);
2. the peak-RSS counter is reset, the store opened lazily (``xr.open_zarr``, dask), the model built
   on a template of its first 1,000 units and ``pm.fit(method="amortized", unit_data=store,
   batch_size=1000)`` run: the dataset's column moments and range are read in one pass, then every
   step draws its batch from a pool of 4 chunks. *fit peak* = peak RSS − baseline;
3. *step ms* = median wall time per step in the fit, the host's batch gathering and chunk reads
   included (reads run ahead in a thread);
4. ``approx.encode_dataset(chunk_size=10⁶, summary=False, store=...)``: every unit's mean and sd
   written to zarr; seconds per 10⁶ units and the peak it adds.

*Against in-memory batches* (one process, N = 10⁷; quick 3 × 10⁶; the same model, parameters and B):
the step time of the streamed (a pool of 8 chunks) and the in-memory fit, interleaved; and the
variance of the mean of 100 consecutive minibatch gradients (summed over parameters), streamed ÷
in-memory, with the default pool (the whole store, which fits in 128 MiB) and with 8 chunks: the
price of consecutive batches sharing chunks (1: none), for units stored in random order and sorted
by x.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.perf import common

BATCH = 1_000
CHUNK = 250_000
TEMPLATE = 1_000
#: A pool that holds 8 of the store's chunks, for the cost of the chunk-wise scheme.
SMALL_POOL_MIB = 8 * CHUNK * 8 / 2**20


def write_store(path: Path, n_units: int, *, seed: int = 0, sort: bool = False) -> None:
    """x ~ N(0, 1) for ``n_units`` units, written chunk by chunk (never held whole); with
    ``sort``, in increasing order (drawn whole first), so that chunks differ."""
    import xarray as xr
    import zarr

    root = zarr.open_group(str(path), mode="w")
    x = root.create_array(
        "x", shape=(n_units,), chunks=(CHUNK,), dtype="float64", dimension_names=["unit"]
    )
    ordered = np.sort(np.random.default_rng(seed).standard_normal(n_units)) if sort else None
    for i, start in enumerate(range(0, n_units, CHUNK)):
        stop = min(start + CHUNK, n_units)
        x[start:stop] = (
            ordered[start:stop]
            if sort
            else np.random.default_rng([seed, i]).standard_normal(stop - start)
        )
    del root
    xr.open_zarr(path, consolidated=False)  # fails here, not in the fit, if unreadable


def _fit(model, store, steps: int, pool_mib: float | None = None):
    import pymc as pm

    pool = {} if pool_mib is None else {"unit_data_pool_mib": pool_mib}
    return pm.fit(
        steps,
        method="amortized",
        model=model,
        unit_data=store,
        encoder_widths=(16, 16),
        batch_size=BATCH,
        obj_optimizer=pm.adam(learning_rate=1e-2),
        random_seed=0,
        progressbar=False,
        **pool,
    )


def _template(store):
    from benchmarks.perf import models
    from pymc_amortize.examples.paper import nonlinear_model

    x = store["x"].isel(unit=slice(0, TEMPLATE)).values
    return nonlinear_model(x, variance_floor=models.NONLINEAR_FLOOR, coords=False)


def one_size(n_units: int, steps: int, store_dir: Path, *, small_pool: bool = False) -> dict:
    """Measure one N in this process (called in a fresh subprocess); with ``small_pool``, the fit
    with a pool of ``SMALL_POOL_MIB`` and no encoding."""
    import xarray as xr

    import pymc_amortize  # noqa: F401

    small = store_dir / "warmup.zarr"
    write_store(small, 20_000, seed=1)
    warm = xr.open_zarr(small, consolidated=False)
    _fit(_template(warm), warm, 50)
    path = store_dir / f"units_{n_units}.zarr"
    t0 = time.perf_counter()
    write_store(path, n_units)
    write_s = time.perf_counter() - t0
    common.trim_heap()
    baseline = common.rss_mib()
    common.reset_peak_rss()
    start = time.perf_counter()
    store = xr.open_zarr(path, consolidated=False)
    approx = _fit(_template(store), store, steps, SMALL_POOL_MIB if small_pool else None)
    fit_s = time.perf_counter() - start
    fit_peak = common.rss_mib("VmHWM") - baseline
    after_fit = common.rss_mib() - baseline
    step_ms = float(np.median(approx.step_seconds[steps // 5 :]) * 1e3)
    row = {
        "n_units": n_units,
        "pool_mib": SMALL_POOL_MIB if small_pool else 128.0,
        "data_mib": n_units * 8 / 2**20,
        "write_s": write_s,
        "baseline_mib": baseline,
        "fit_peak_mib": fit_peak,
        "after_fit_mib": after_fit,
        "fit_s": fit_s,
        "steps": steps,
        "step_ms": step_ms,
    }
    if small_pool:
        shutil.rmtree(path)
        return row
    common.trim_heap()
    before_encode = common.rss_mib()
    common.reset_peak_rss()
    with tempfile.TemporaryDirectory(dir=store_dir) as tmp:
        t0 = time.perf_counter()
        approx.encode_dataset(
            chunk_size=1_000_000, summary=False, progressbar=False, store=f"{tmp}/q.zarr"
        )
        encode_s = time.perf_counter() - t0
    encode_peak = common.rss_mib("VmHWM") - before_encode
    shutil.rmtree(path)
    return row | {"encode_s_per_1e6": encode_s / n_units * 1e6, "encode_peak_mib": encode_peak}


def against_memory(store_dir: Path, n_units: int, *, sort: bool = False) -> dict:
    """Streamed against in-memory batches on the same N units, parameters and batch size: the
    step time (interleaved), and the variance of the mean of 100 consecutive gradients with the
    default pool (the whole dataset, when it fits) and a pool of ``SMALL_POOL_MIB``."""
    import pymc as pm
    import xarray as xr

    from benchmarks.perf import models
    from pymc_amortize.examples.paper import nonlinear_model
    from pymc_amortize.fitting.vi import AmortizedVI

    path = store_dir / "against.zarr"
    write_store(path, n_units, sort=sort)
    store = xr.open_zarr(path, consolidated=False)
    options = {
        "local": {"z": "x"},
        "encoder_widths": (16, 16),
        "batch_size": BATCH,
        "family": "encoder",
    }
    whole_model = nonlinear_model(
        store["x"].values, variance_floor=models.NONLINEAR_FLOOR, coords=False
    )
    memory = AmortizedVI(model=whole_model, random_seed=0, **options)
    pools = {}
    for pool_mib in (None, SMALL_POOL_MIB):
        extra = {} if pool_mib is None else {"unit_data_pool_mib": pool_mib}
        pools[pool_mib] = AmortizedVI(
            model=_template(store), unit_data=store, random_seed=0, **options, **extra
        )
        for mine, theirs in zip(pools[pool_mib].approx.params, memory.approx.params, strict=True):
            mine.set_value(theirs.get_value())
    sgd = pm.sgd(learning_rate=0.0)  # steps that leave the parameters where they are
    steps = {
        "streamed": pools[SMALL_POOL_MIB].objective.step_function(obj_optimizer=sgd),
        "memory": memory.objective.step_function(obj_optimizer=sgd),
    }
    common.pin_malloc_thresholds()
    times = common.interleaved(steps, repeats=7, calls=200)

    def block_variance(objective) -> np.ndarray:
        fn = objective.gradient_function(random_seed=1)
        grads = np.array([np.concatenate([g.ravel() for g in fn()[1]]) for _ in range(20_000)])
        return grads.reshape(200, 100, -1).mean(axis=1).var(axis=0, ddof=1)

    # Summed over parameters (a trace): some weights' gradients are exactly zero (dead ReLUs).
    reference = block_variance(memory.objective).sum()
    variance = {
        key: float(block_variance(inference.objective).sum() / reference)
        for key, inference in pools.items()
    }
    pools[SMALL_POOL_MIB].objective.sampler.close()
    shutil.rmtree(path)
    return {
        "n_units": n_units,
        "sorted": sort,
        "step_ratio_streamed_vs_memory": common.paired_ratio(times["streamed"], times["memory"]),
        "step_ms_streamed": float(np.median(times["streamed"]) * 1e3),
        "step_ms_memory": float(np.median(times["memory"]) * 1e3),
        "variance_ratio_default_pool": variance[None],
        "variance_ratio_small_pool": variance[SMALL_POOL_MIB],
    }


def write_indexed_store(path: Path, n_units: int, *, rows_per_unit: float = 10.0) -> int:
    """Radon-style rows, sorted by unit: unit j has 1 + Poisson(rows_per_unit - 1) rows, each
    with a covariate x and y ~ N(a_j + 0.5 x, 1), a_j ~ N(1, 0.5). Written unit chunk by unit
    chunk; returns the number of rows."""
    import xarray as xr
    import zarr

    rng = np.random.default_rng(0)
    counts = 1 + rng.poisson(rows_per_unit - 1, size=n_units)
    n_rows = int(counts.sum())
    root = zarr.open_group(str(path), mode="w")
    arrays = {
        name: root.create_array(
            name, shape=(n_rows,), chunks=(CHUNK,), dtype=dtype, dimension_names=["row"]
        )
        for name, dtype in (("idx", "int64"), ("x", "float64"), ("y", "float64"))
    }
    start = 0
    for first in range(0, n_units, CHUNK // 10):
        units = np.arange(first, min(first + CHUNK // 10, n_units))
        idx = np.repeat(units, counts[units])
        a = 1.0 + 0.5 * rng.standard_normal(units.size)
        x = rng.standard_normal(idx.size)
        y = np.repeat(a, counts[units]) + 0.5 * x + rng.standard_normal(idx.size)
        for name, values in (("idx", idx), ("x", x), ("y", y)):
            arrays[name][start : start + idx.size] = values
        start += idx.size
    del root
    xr.open_zarr(path, consolidated=False)
    return n_rows


def _indexed_model(rows):
    import pymc as pm

    n_units = int(rows["idx"].max()) + 1
    with pm.Model(coords={"unit": range(n_units), "row": range(rows.sizes["row"])}) as model:
        idx = pm.Data("idx", rows["idx"].values, dims="row")
        x = pm.Data("x", rows["x"].values, dims="row")
        mu, sigma_a = pm.Normal("mu", 0, 5), pm.HalfNormal("sigma_a", 1)
        a = pm.Normal("a", mu, sigma_a, dims="unit")
        b, sigma = pm.Normal("b", 0, 1), pm.HalfNormal("sigma", 1)
        pm.Normal("y", a[idx] + b * x, sigma, observed=rows["y"].values, dims="row")
    return model


def one_indexed(n_units: int, steps: int, store_dir: Path) -> dict:
    """An indexed plate (units with ~10 rows each) from zarr, in this (fresh) process: fit peak
    and step; then the same fit in memory for its step time."""
    import pymc as pm
    import xarray as xr

    import pymc_amortize  # noqa: F401

    options = {
        "method": "amortized",
        "batch_size": BATCH,
        "encoder_widths": (16,),
        "obj_optimizer": pm.adam(learning_rate=1e-2),
        "random_seed": 0,
        "progressbar": False,
    }
    path = store_dir / f"indexed_{n_units}.zarr"
    n_rows = write_indexed_store(path, n_units)
    store = xr.open_zarr(path, consolidated=False)
    template = _indexed_model(store.isel(row=slice(0, 10 * TEMPLATE)).load())
    pm.fit(50, model=template, unit_data=store.isel(row=slice(0, 20_000)), **options)  # warm-up
    common.trim_heap()
    baseline = common.rss_mib()
    common.reset_peak_rss()
    start = time.perf_counter()
    approx = pm.fit(steps, model=template, unit_data=store, **options)
    fit_s = time.perf_counter() - start
    fit_peak = common.rss_mib("VmHWM") - baseline
    step_ms = float(np.median(approx.step_seconds[steps // 5 :]) * 1e3)
    t0 = time.perf_counter()
    approx.encode_dataset(chunk_size=100_000, summary=False, progressbar=False)
    encode_s = time.perf_counter() - t0
    memory = pm.fit(steps, model=_indexed_model(store.load()), **options)
    shutil.rmtree(path)
    return {
        "n_units": n_units,
        "n_rows": n_rows,
        "data_mib": n_rows * 24 / 2**20,
        "fit_peak_mib": fit_peak,
        "fit_s": fit_s,
        "step_ms": step_ms,
        "step_ms_in_memory": float(np.median(memory.step_seconds[steps // 5 :]) * 1e3),
        "encode_s_per_1e6": encode_s / n_units * 1e6,
    }


def _subprocess(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.perf.scale_disk", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(*, quick: bool = False, sizes=None, steps: int = 2_000, store_dir: str | None = None):
    sizes = sizes or ((100_000, 1_000_000) if quick else (1_000_000, 10_000_000, 100_000_000))
    with tempfile.TemporaryDirectory(dir=store_dir) as tmp:
        rows = []
        for n in sizes:
            args = ("--one", str(n), "--steps", str(steps), "--store-dir", tmp)
            row = _subprocess(*args)
            small = _subprocess(*args, "--small-pool")
            row |= {"small_pool_" + k: small[k] for k in ("fit_peak_mib", "step_ms")}
            print(json.dumps(row), flush=True)
            rows.append(row)
        n_versus = str(3_000_000 if quick else 10_000_000)
        versus = [
            _subprocess("--versus", n_versus, *order, "--store-dir", tmp)
            for order in ((), ("--sorted",))
        ]
        for row in versus:
            print(json.dumps(row), flush=True)
        indexed = []
        for n in (100_000,) if quick else (100_000, 1_000_000):
            indexed.append(
                _subprocess("--indexed", str(n), "--steps", str(steps), "--store-dir", tmp)
            )
            print(json.dumps(indexed[-1]), flush=True)
    header = [
        "N (zarr, chunks of 250,000)",
        "data MiB on disk (uncompressed)",
        "fit peak MiB",
        "held after fit MiB",
        "fit peak MiB, pool of 8 chunks (15 MiB)",
        "fit s (moments pass + compile + steps)",
        "step ms (in fit)",
        "encode s per 10⁶ units",
        "encode peak MiB",
    ]
    cells = [
        [
            f"{r['n_units']:,}",
            r["data_mib"],
            r["fit_peak_mib"],
            r["after_fit_mib"],
            r["small_pool_fit_peak_mib"],
            r["fit_s"],
            r["step_ms"],
            r["encode_s_per_1e6"],
            r["encode_peak_mib"],
        ]
        for r in rows
    ]
    peaks = [r["fit_peak_mib"] for r in rows]
    small = [r["small_pool_fit_peak_mib"] for r in rows]
    table = (
        f'Nonlinear model, one float64 x per unit in a zarr store, `pm.fit(method="amortized", '
        f"unit_data=xr.open_zarr(store), batch_size={BATCH})`, encoders 1→16→16→1, {steps} Adam "
        "steps, each N in a fresh process; memory above the process after its imports and a "
        "warm-up fit (≈ {:.0f} MiB). *encode*: `encode_dataset(chunk_size=10⁶, summary=False, "
        "store=...)`.\n\n".format(float(np.median([r["baseline_mib"] for r in rows])))
        + common.markdown_table(header, cells)
        + f"\nFit peak from {min(peaks):.0f} to {max(peaks):.0f} MiB over N = "
        f"{rows[0]['n_units']:,} … {rows[-1]['n_units']:,} with the default pool (128 MiB: the "
        "whole store while it fits, then as many chunks), and from "
        f"{min(small):.0f} to {max(small):.0f} MiB with a pool of 8 chunks.\n\n"
        f"**Against in-memory batches** at N = {versus[0]['n_units']:,} (same parameters and B; "
        "the step timed interleaved, the pool of 8 chunks): "
        + "; ".join(
            f"units stored {'sorted by x' if v['sorted'] else 'in random order'}: step "
            f"{v['step_ms_streamed']:.3f} ms streamed vs {v['step_ms_memory']:.3f} ms in memory "
            f"(medians; the median of the rounds' ratios **{v['step_ratio_streamed_vs_memory']:.2f}**"
            "), variance of the mean of 100 "
            f"consecutive gradients **{v['variance_ratio_default_pool']:.2f}×** the in-memory one "
            f"with the default pool (the whole store: {v['n_units'] * 8 / 2**20:.0f} MiB ≤ 128) "
            f"and **{v['variance_ratio_small_pool']:.2f}×** with a pool of 8 chunks"
            for v in versus
        )
        + ".\n\n**An indexed plate** (units with 1 + Poisson(9) rows, sorted by unit; "
        "`y ~ N(a[idx] + b x, σ)`, a pooled encoder of width 16, B = 1,000 units with all their "
        "rows):\n\n"
        + common.markdown_table(
            [
                "units",
                "rows",
                "data MiB on disk",
                "fit peak MiB",
                "fit s",
                "step ms (streamed)",
                "step ms (same fit in memory)",
                "encode s per 10⁶ units",
            ],
            [
                [
                    f"{r['n_units']:,}",
                    f"{r['n_rows']:,}",
                    r["data_mib"],
                    r["fit_peak_mib"],
                    r["fit_s"],
                    r["step_ms"],
                    r["step_ms_in_memory"],
                    r["encode_s_per_1e6"],
                ]
                for r in indexed
            ],
        )
    )
    common.write_results(
        "scale_disk",
        {"rows": rows, "versus_memory": versus, "indexed": indexed},
        table,
        quick=quick,
    )


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10⁵, 10⁶")
    parser.add_argument("--sizes", type=int, nargs="*")
    parser.add_argument("--steps", type=int, default=2_000)
    parser.add_argument("--store-dir", help="where the zarr stores are written (a temp dir in it)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--versus", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sorted", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--small-pool", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--indexed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(
            json.dumps(
                one_size(args.one, args.steps, Path(args.store_dir), small_pool=args.small_pool)
            )
        )
    elif args.indexed:
        print(json.dumps(one_indexed(args.indexed, args.steps, Path(args.store_dir))))
    elif args.versus:
        print(json.dumps(against_memory(Path(args.store_dir), args.versus, sort=args.sorted)))
    else:
        run(
            quick=args.quick,
            sizes=tuple(args.sizes) if args.sizes else None,
            steps=args.steps,
            store_dir=args.store_dir,
        )


if __name__ == "__main__":
    main()
