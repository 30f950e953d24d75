"""Benchmark 1: wall time and steps until the ELBO is within 1% of the F-VI optimum, A-VI vs ADVI.

    python -m benchmarks.perf.time_to_elbo [--quick] [--lrs 0.01 0.03 0.1] [--seeds 3]

Both methods are ``pm.fit`` on the same model object with Adam; each gets its best learning rate
from the same grid (the lr with the lowest median time among those where every seed got there).
A fit stops at the first step where the mean loss of the last 50 steps is within 1% of −(F-VI
optimum); the optimum is exact for the linear and saw models and a quadrature reference for the
nonlinear one (:mod:`benchmarks.perf.models`). Compile time (start of ``pm.fit`` to the first
callback) is reported apart. Fits run in turn (A-VI, ADVI, A-VI, ...) for each seed and lr. On the
nonlinear model a NumPyro SVI loop with the same encoder (float32, B = 1,000) runs too.
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm
import pytensor

from benchmarks.perf import common, models

WINDOW = 50
# A-VI minibatch per model: the selling point is cheap steps; saw's N = 1,000 is one batch.
BATCH = {"linear": 1_000, "nonlinear": 1_000, "saw": None}


class StopAtTarget:
    """``pm.fit`` callback: record compile time, stop when the running loss reaches ``target``."""

    def __init__(self, target_loss: float, start: float):
        self.target = target_loss
        self.start = start
        self.first = None
        self.last = None
        self.hit_step = None
        self.hit_time = None

    def __call__(self, approx, losses, i):
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        if i >= WINDOW and i % 10 == 0 and np.mean(losses[i - WINDOW : i]) <= self.target:
            self.hit_step, self.hit_time = i, now - self.first
            raise StopIteration


def one_fit(method, bench, lr, seed, target, max_steps):
    start = time.perf_counter()
    stop = StopAtTarget(target, start)
    kwargs = {}
    if method == "A-VI":
        kwargs = {
            "method": "amortized",
            "local": bench.local,
            "encoder_widths": bench.encoder_widths,
            "batch_size": BATCH[bench.name],
        }
    with bench.model:
        pm.fit(
            max_steps,
            obj_optimizer=pm.adam(learning_rate=lr),
            random_seed=seed,
            progressbar=False,
            callbacks=[stop],
            **kwargs,
        )
    return {
        "compile_s": (stop.first or time.perf_counter()) - start,
        "steps": stop.hit_step,
        "wall_s": stop.hit_time,
        # Wall time of all the steps run, a lower bound on the time to the target if not reached.
        "ran_s": (stop.last or start) - (stop.first or start),
    }


def numpyro_fit(bench, lr, seed, target, max_steps):
    from benchmarks.perf.numpyro_models import nonlinear_svi

    start = time.perf_counter()
    step, _ = nonlinear_svi(bench.data["x"], batch_size=1_000, lr=lr, random_seed=seed)
    losses = [step()]
    first = time.perf_counter()
    for i in range(1, max_steps):
        losses.append(step())
        if i >= WINDOW and i % 10 == 0 and np.mean(losses[i - WINDOW : i]) <= target:
            wall = time.perf_counter() - first
            return {"compile_s": first - start, "steps": i, "wall_s": wall, "ran_s": wall}
    ran = time.perf_counter() - first
    return {"compile_s": first - start, "steps": None, "wall_s": None, "ran_s": ran}


def step_costs(bench, *, repeats: int = 7, calls: int = 50) -> dict[str, float]:
    """Median ms per compiled step of A-VI (at the benchmark's batch) and ADVI on ``bench``,
    timed interleaved in this process (the fits' own wall/steps add pm.fit's loop and callback)."""
    steps = {
        "A-VI": common.avi_step(bench, batch_size=BATCH[bench.name]),
        "ADVI": common.advi_step(bench),
    }
    # PyTensor's numba cache wraps the step in `def f(*args)`, which numba types in Python on every
    # call (~5 µs per argument); without it the call is cheaper but compilation far slower (NOTES).
    with pytensor.config.change_flags(numba__cache=False):
        steps["ADVI, numba cache off"] = common.advi_step(bench)
    seconds = common.interleaved(steps, repeats=repeats, calls=calls)
    costs = {name: float(np.median(s) * 1e3) for name, s in seconds.items()}
    costs["A-VI / ADVI"] = common.paired_ratio(seconds["A-VI"], seconds["ADVI"])
    costs["A-VI / ADVI, numba cache off"] = common.paired_ratio(
        seconds["A-VI"], seconds["ADVI, numba cache off"]
    )
    costs["nodes"] = {
        name: len(step.compiled.maker.fgraph.apply_nodes) for name, step in steps.items()
    }
    return costs


def best_lr(runs: dict) -> tuple[float, list]:
    """The lr whose seeds all got there with the lowest median time (else the most that did)."""

    def key(item):
        _, fits = item
        done = [f["wall_s"] for f in fits if f["wall_s"] is not None]
        return (-len(done), np.median(done) if done else np.inf)

    return min(runs.items(), key=key)


def _ratio(avi: tuple[str, float], advi: tuple[str, float]) -> tuple[float, str]:
    """A-VI ÷ ADVI wall and whether it is exact ("="), an upper ("<") or lower (">") bound, or
    unknown ("?") when neither reached the target. Each side is ("=", time) or (">", bound)."""
    (a_kind, a), (b_kind, b) = avi, advi
    if a_kind == "=" and b_kind == "=":
        return a / b, "="
    if a_kind == "=":
        return a / b, "<"
    if b_kind == "=":
        return a / b, ">"
    return float("nan"), "?"


def _shown(ratio: float, kind: str) -> str:
    if kind == "?":
        return "unknown (neither reached the target)"
    return f"{ratio:.2f}" if kind == "=" else f"{kind} {ratio:.2f}"


def run(
    *,
    quick: bool = False,
    model_names=("linear", "nonlinear", "saw"),
    lrs: tuple[float, ...] | None = None,
    seeds: int | None = None,
    max_steps: dict | None = None,
    n_units: dict | None = None,
    numpyro: bool = True,
    step_cost: bool = True,
    write: bool = True,
) -> dict:
    lrs = lrs or ((1e-2, 3e-2) if quick else (3e-3, 1e-2, 3e-2, 1e-1))
    seeds = seeds or (2 if quick else 5)
    max_steps = max_steps or (
        {"linear": 3_000, "nonlinear": 3_000, "saw": 5_000}
        if quick
        else {"linear": 20_000, "nonlinear": 20_000, "saw": 30_000}
    )
    n_units = n_units or {}
    results, rows = {}, []
    for name in model_names:
        bench = models.build(name, n_units.get(name))
        optimum = models.fvi_optimum(name, bench)
        target = -optimum + 0.01 * abs(optimum)
        methods = ["A-VI", "ADVI"] + (["NumPyro"] if numpyro and name == "nonlinear" else [])
        runs = {m: {lr: [] for lr in lrs} for m in methods}
        for seed in range(seeds):
            for lr in lrs:
                for method in methods:
                    if method == "NumPyro":
                        fit = numpyro_fit(bench, lr, seed, target, max_steps[name])
                    else:
                        fit = one_fit(method, bench, lr, seed, target, max_steps[name])
                    runs[method][lr].append(fit)
        best = {m: best_lr(runs[m]) for m in methods}
        costs = step_costs(bench) if step_cost else {}
        walls = {}
        for method in methods:
            lr, fits = best[method]
            done = [f for f in fits if f["wall_s"] is not None]
            compile_s = float(np.median([f["compile_s"] for f in fits]))
            if done:
                wall = np.array([f["wall_s"] for f in done])
                steps = np.array([f["steps"] for f in done])
                walls[method] = ("=", float(np.median(wall)))
                cells = [
                    float(np.median(steps)),
                    f"{steps.min():.0f}–{steps.max():.0f}",
                    float(np.median(wall)),
                    f"{wall.min():.2f}–{wall.max():.2f}",
                    float(np.median(wall / steps) * 1e3),
                ]
            else:
                # No seed got there at any lr: its time is more than what it ran at every lr.
                bound = min(
                    float(np.median([f["ran_s"] for f in f_lr])) for f_lr in runs[method].values()
                )
                walls[method] = (">", bound)
                n_steps = max_steps[name]
                cells = [
                    f"> {n_steps}",
                    "—",
                    f"> {bound:.3g} s (not reached in {n_steps} steps)",
                    "—",
                    "—",
                ]
            cost = f"{costs[method]:.3g}" if method in costs else ""
            rows.append([name, method, lr, f"{len(done)}/{len(fits)}", *cells, cost, compile_s])
        ratio, kind = _ratio(walls["A-VI"], walls["ADVI"])
        results[name] = {
            "optimum": optimum,
            "runs": {m: {str(lr): f for lr, f in r.items()} for m, r in runs.items()},
            "best_lr": {m: best[m][0] for m in methods},
            "avi_over_advi_wall": ratio,
            "ratio_is": kind,
            "step_ms": costs,
        }
        shown = _shown(ratio, kind)
        step_ratio = (
            f"{costs['A-VI / ADVI']:.2f} ({costs['A-VI / ADVI, numba cache off']:.2f} against "
            f"ADVI at {costs['ADVI, numba cache off']:.3g} ms, numba cache off)"
            if costs
            else ""
        )
        rows.append(
            [name, "**A-VI ÷ ADVI wall**", "", "", "", "", f"**{shown}**", "", "", step_ratio, ""]
        )
    header = [
        "model",
        "method",
        "best lr",
        "seeds reached",
        "median steps",
        "steps range",
        "median wall s",
        "wall range s",
        "ms/step in fit",
        "ms/step compiled",
        "compile s",
    ]
    table = (
        f"Target: 50-step running loss within 1% of −(F-VI optimum). lr grid {list(lrs)}, "
        f"{seeds} seeds, at most {max_steps} steps. A-VI batch: {BATCH}. Wall time excludes "
        "compilation (shown apart); medians over the seeds that reached the target. Where no seed "
        "reached it at any lr, the time is a lower bound (the smallest over lrs of the median wall "
        "time of the steps run) and the ratio a bound. *ms/step in fit*: median over those seeds "
        "of wall ÷ steps inside `pm.fit` (loop, callback and, for A-VI, the divergence guard included); "
        "*ms/step compiled*: the bare compiled step of each method, A-VI at its batch, timed "
        "interleaved in the same process (7 rounds of 50 calls), with the A-VI ÷ ADVI ratio of "
        "those on the ratio row, and in brackets against ADVI compiled without PyTensor's numba "
        "cache.\n\n"
        + common.markdown_table(header, rows)
        + "\nTarget: A-VI ÷ ADVI wall ≤ 0.33 on every model: "
        + ", ".join(
            f"{n} **{_shown(r['avi_over_advi_wall'], r['ratio_is'])}**" for n, r in results.items()
        )
        + "\n"
    )
    payload = {"models": results, "lrs": list(lrs), "seeds": seeds, "max_steps": max_steps}
    if write:
        common.write_results("time_to_elbo", payload, table, quick=quick)
    return payload


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute version")
    parser.add_argument(
        "--lrs", type=float, nargs="+", help="Adam learning-rate grid, the same for both methods"
    )
    parser.add_argument("--seeds", type=int, help="seeds per learning rate")
    args = parser.parse_args(argv)
    run(quick=args.quick, lrs=tuple(args.lrs) if args.lrs else None, seeds=args.seeds)


if __name__ == "__main__":
    main()
