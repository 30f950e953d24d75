"""Benchmark 2: cost per step against the number of units N, minibatched A-VI (fixed B) vs ADVI.

    python -m benchmarks.perf.scaling [--quick]

Time per step: every (method, N) step is built in one process and timed in turn (interleaved
rounds). Peak memory: one child process per (method, N) that builds the model, compiles the step
and runs 20 steps; its peak resident set (``ru_maxrss``) is reported, minus that of a child that
only imports the libraries and builds the smallest model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

from benchmarks.perf import common, models

_CHILD = """
import json, resource, sys
from benchmarks.perf import common, models
method, n_units, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bench = models.build("nonlinear", n_units)
if method == "A-VI":
    step = common.avi_step(bench, batch_size=batch)
elif method == "ADVI":
    step = common.advi_step(bench)
else:
    step = lambda: None
for _ in range(20):
    step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def peak_mib(method: str, n_units: int, batch: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, method, str(n_units), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def run(
    *,
    quick: bool = False,
    sizes: tuple[int, ...] | None = None,
    batch: int = 1_000,
    repeats: int | None = None,
    memory: bool = True,
    write: bool = True,
) -> dict:
    sizes = sizes or ((1_000, 10_000, 1_000_000) if quick else (1_000, 10_000, 100_000, 1_000_000))
    repeats = repeats or (5 if quick else 11)
    contenders, n_params = {}, {}
    for n in sizes:
        bench = models.build("nonlinear", n)
        inference = common.avi_inference(bench, batch_size=min(batch, n))
        n_params[("A-VI", n)] = common.n_params(inference.approx.params)
        contenders[("A-VI", n)] = common.avi_step(bench, batch_size=min(batch, n))
        contenders[("ADVI", n)] = common.advi_step(bench)
        n_params[("ADVI", n)] = 2 * (n + 1)
    # Calls per round so that each contender takes ~20 ms a round (ADVI at N = 10⁶ is slow).
    calls = {}
    for key, fn in contenders.items():
        fn()
        seconds = common.interleaved({key: fn}, repeats=1, calls=3, warmup=0)[key][0]
        calls[key] = int(np.clip(0.02 / seconds, 1, 200))
    times = {key: [] for key in contenders}
    for _ in range(repeats):
        for key, fn in contenders.items():
            times[key].append(
                common.interleaved({key: fn}, repeats=1, calls=calls[key], warmup=0)[key][0]
            )
    times = {k: np.asarray(v) for k, v in times.items()}
    baseline = peak_mib("none", sizes[0], batch) if memory else np.nan
    rows, payload_rows = [], []
    for n in sizes:
        row = {"n_units": n}
        for method in ("A-VI", "ADVI"):
            s = common.summary(times[(method, n)])
            mem = peak_mib(method, n, min(batch, n)) - baseline if memory else np.nan
            row[method] = s | {"peak_mib": mem, "n_params": n_params[(method, n)]}
        row["ADVI ÷ A-VI"] = common.paired_ratio(times[("ADVI", n)], times[("A-VI", n)])
        payload_rows.append(row)
        rows.append(
            [
                f"{n:,}",
                row["A-VI"]["median_ms"],
                row["A-VI"]["peak_mib"],
                row["A-VI"]["n_params"],
                row["ADVI"]["median_ms"],
                row["ADVI"]["peak_mib"],
                row["ADVI"]["n_params"],
                row["ADVI ÷ A-VI"],
            ]
        )
    flat = common.paired_ratio(times[("A-VI", sizes[-1])], times[("A-VI", sizes[0])])
    advi_growth = common.paired_ratio(times[("ADVI", sizes[-1])], times[("ADVI", sizes[0])])
    header = [
        "N",
        f"A-VI (B={batch}) ms/step",
        "A-VI peak MiB",
        "A-VI params",
        "ADVI ms/step",
        "ADVI peak MiB",
        "ADVI params",
        "ADVI ÷ A-VI",
    ]
    table = (
        f"Nonlinear model, A-VI minibatched with B = {batch} (1→16→16→1 encoders), ADVI full batch "
        f"(it has one mean and sd per unit). Medians of {repeats} interleaved rounds. Peak MiB: the "
        "process's peak resident set (building, compiling, 20 steps) above a process that builds "
        "the smallest model without a step.\n\n"
        + common.markdown_table(header, rows)
        + f"\nTargets: A-VI step time N = {sizes[-1]:,} ÷ N = {sizes[0]:,}: **{flat:.2f}** (≤ 1.2); "
        f"ADVI's: {advi_growth:.1f}. A-VI parameter count: "
        f"{sorted({n_params[('A-VI', n)] for n in sizes})} for every N.\n"
    )
    payload = {"rows": payload_rows, "avi_step_ratio_max_min_n": flat, "advi_growth": advi_growth}
    if write:
        common.write_results("scaling", payload, table, quick=quick)
    return payload


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    run(quick=args.quick)


if __name__ == "__main__":
    main()
