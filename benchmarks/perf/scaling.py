"""Benchmark 2: cost per step against the number of units N, minibatched A-VI (fixed B) vs ADVI.

    python -m benchmarks.perf.scaling [--quick]

Time per step: every (method, N) step is built in one process and timed in turn (interleaved
rounds). Memory, measured in the same process before the timing (see :mod:`benchmarks.perf.common`):
what the compiled step holds between calls, split into the state it updates (parameters and Adam
moments) and the data it reads, and the peak resident memory its temporaries add over 20 steps.
(The process's ``ru_maxrss`` is no use here: compilation dominates it at every N.)
"""

from __future__ import annotations

import numpy as np

from benchmarks.perf import common, models


def run(
    *,
    quick: bool = False,
    sizes: tuple[int, ...] | None = None,
    batch: int = 1_000,
    repeats: int | None = None,
    mode: str | None = None,
    write: bool = True,
) -> dict:
    sizes = sizes or ((1_000, 10_000, 1_000_000) if quick else (1_000, 10_000, 100_000, 1_000_000))
    repeats = repeats or (5 if quick else 11)
    contenders, n_params = {}, {}
    for n in sizes:
        bench = models.build("nonlinear", n)
        inference = common.avi_inference(bench, batch_size=min(batch, n))
        n_params[("A-VI", n)] = common.n_params(inference.approx)
        contenders[("A-VI", n)] = common.avi_step(bench, batch_size=min(batch, n), mode=mode)
        contenders[("ADVI", n)] = common.advi_step(bench, mode=mode)
        n_params[("ADVI", n)] = 2 * (n + 1)
    # Memory first: once the thresholds are pinned, freed temporaries stay in the heap and a later
    # step reuses them without raising the peak.
    memory = {}
    for key, fn in contenders.items():
        # The least of three: a peak counter only ever reads high (other allocations, batching).
        peak = min(common.step_peak_mib(fn) for _ in range(3))
        memory[key] = common.held_mib(fn) | {"step_peak_mib": peak}
    common.pin_malloc_thresholds()  # the same allocator for every contender (section 6)
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
    rows, payload_rows = [], []
    for n in sizes:
        row, cells = {"n_units": n}, [f"{n:,}"]
        for method in ("A-VI", "ADVI"):
            mem = memory[(method, n)]
            s = common.summary(times[(method, n)])
            row[method] = s | mem | {"n_params": n_params[(method, n)]}
            cells += [s["median_ms"], mem["state_mib"], mem["step_peak_mib"], mem["data_mib"]]
        row["ADVI ÷ A-VI"] = common.paired_ratio(times[("ADVI", n)], times[("A-VI", n)])
        payload_rows.append(row)
        rows.append([*cells, row["ADVI ÷ A-VI"]])
    flat = common.paired_ratio(times[("A-VI", sizes[-1])], times[("A-VI", sizes[0])])
    advi_growth = common.paired_ratio(times[("ADVI", sizes[-1])], times[("ADVI", sizes[0])])
    header = ["N"]
    for method in (f"A-VI (B={batch})", "ADVI"):
        header += [f"{method} {c}" for c in ("ms/step", "state MiB", "step peak MiB", "data MiB")]
    header.append("ADVI ÷ A-VI time")

    def own_mib(method, n):  # what the method adds beyond the data
        return memory[(method, n)]["state_mib"] + memory[(method, n)]["step_peak_mib"]

    big, small = sizes[-1], sizes[0]
    table = (
        f"Nonlinear model, A-VI minibatched with B = {batch} (1→16→16→1 encoders), ADVI full batch "
        f"(it has one mean and sd per unit). Medians of {repeats} interleaved rounds, glibc's malloc "
        "thresholds pinned (section 6). Memory: "
        "*state* = parameters and Adam moments the step updates; *step peak* = resident memory the "
        "step's temporaries add at their peak over 20 steps, least of 3 tries (Linux peak-RSS counter reset after "
        "warm-up; readings under ≈ 1 MiB are noise: Linux batches its RSS counts, and a step "
        "may reuse or first touch a little of the heap); "
        "*data* = the arrays the step reads (A-VI holds x twice: as the encoder's input "
        "and as the observed value). Peak memory of a fit ≈ state + step peak + data.\n\n"
        + common.markdown_table(header, rows)
        + f"\nTargets: A-VI step time N = {big:,} ÷ N = {small:,}: **{flat:.2f}** (≤ 1.2); ADVI's: "
        f"{advi_growth:.1f}. A-VI state + step peak: {own_mib('A-VI', small):.2f} MiB at "
        f"N = {small:,}, {own_mib('A-VI', big):.2f} MiB at N = {big:,} (parameter count "
        f"{sorted({n_params[('A-VI', n)] for n in sizes})} for every N); ADVI's: "
        f"{own_mib('ADVI', small):.2f} → {own_mib('ADVI', big):.1f} MiB.\n"
    )
    payload = {"rows": payload_rows, "avi_step_ratio_max_min_n": flat, "advi_growth": advi_growth}
    if write:
        common.write_results("scaling", payload, table, quick=quick)
    return payload


def main(argv=None):
    common.run_quick_cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
