"""The README's picture: exact ELBO against wall time, A-VI vs ADVI on the paper's linear model.

Both methods fit the same PyMC model with the same optimizer (Adam, learning rate 1e-2). Every
``--every`` steps a callback computes the exact ELBO of the current q (the model is
linear-Gaussian, so no Monte Carlo error) and the time spent since ``pm.fit`` was called,
compilation included and the callback's own time excluded.

    python -m benchmarks.readme_figure [--n-units 10000] [--out docs/_static/elbo_vs_time.png]
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.harness import ScoreTrace, fit_vi
from benchmarks.linear_avi_vs_advi import linear_elbo_of, linear_problem


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-units", type=int, default=10_000)
    parser.add_argument("--avi-steps", type=int, default=5_000)
    parser.add_argument("--advi-steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/_static/elbo_vs_time.png"))
    args = parser.parse_args(argv)

    x, model, optimum = linear_problem(args.n_units, args.seed)

    traces = {}
    for label, method, steps, options in [
        ("A-VI, affine encoder", "amortized", args.avi_steps, {"encoder_widths": ()}),
        ("ADVI, a mean and sd per unit", "advi", args.advi_steps, {}),
    ]:
        trace = ScoreTrace(functools.partial(linear_elbo_of, x), args.every)
        approx = fit_vi(model, method, steps, lr=1e-2, seed=args.seed, callbacks=[trace], **options)
        trace.add_final(approx)
        traces[label] = trace

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    for (label, trace), color in zip(traces.items(), ["C0", "C1"], strict=True):
        gap = optimum - np.asarray(trace.values)
        ax.plot(trace.seconds, np.maximum(gap, 1e-2), color=color, label=label)
        print(
            f"{label}: {len(trace.values) - 1} checkpoints, final ELBO {trace.values[-1]:,.2f} "
            f"(optimum {optimum:,.2f}, gap {gap[-1]:.2f}) after {trace.seconds[-1]:.1f} s"
        )
    ax.set_yscale("log")
    ax.set_xlabel("wall time since pm.fit was called (s), compilation included")
    ax.set_ylabel("optimal ELBO − ELBO (nats)")
    ax.set_title(
        f"Linear model, N = {args.n_units:,} units: distance to the best ELBO over time",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(frameon=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
