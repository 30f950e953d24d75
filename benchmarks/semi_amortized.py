"""Semi-amortized VI (A-VI, then per-unit F-VI) against F-VI from scratch, in optimisation steps.

On the saw model with the encoder fed x_n only (i = 1) and on the HMM, no encoder reaches the F-VI
optimum, so A-VI alone stops short. Both models are linear-Gaussian: the exact ELBO of the current
iterate is computed every ``--every`` steps (no Monte Carlo error) and compared with the exact F-VI
optimum. "Steps to 1%" is the first step whose exact ELBO is within 1% of the optimum (the paper's
criterion); both phases use Adam with the same constant learning rate.

    python -m benchmarks.semi_amortized [--seed 0] [--saw-units 1000] [--hmm-units 100]
"""

from __future__ import annotations

import argparse

import numpy as np
import pymc as pm

from benchmarks.gaussian_models import ExactMeanField, hmm_model, saw_model
from benchmarks.harness import ScoreTrace, fit_vi
from pymc_amortize.diagnostics import meanfield_of, semi_amortize


def exact_trace(exact: ExactMeanField, every: int, offset: int = 0) -> ScoreTrace:
    """The exact ELBO of the current iterate every ``every`` steps."""
    return ScoreTrace(lambda approx: exact.elbo(meanfield_of(approx)), every, offset=offset)


def semi_vs_fvi(model, *, widths, avi_steps, refine_steps, fvi_steps, lr, every, seed):
    exact = ExactMeanField(model)
    approx = fit_vi(
        model, "amortized", avi_steps, lr=lr, seed=seed, encoder_widths=widths, family="encoder"
    )
    avi_elbo = exact.elbo(meanfield_of(approx))
    tracker = exact_trace(exact, every, offset=avi_steps)
    semi = semi_amortize(
        approx,
        refine_steps,
        obj_optimizer=pm.adam(learning_rate=lr),
        average_last=0.0,
        callbacks=[tracker],
        random_seed=seed,
        progressbar=False,
    )
    scratch = exact_trace(exact, every)
    fit_vi(model, "advi", fvi_steps, lr=lr, seed=seed, callbacks=[scratch])
    target = exact.optimum_elbo
    return {
        "optimum": target,
        "avi_elbo": avi_elbo,
        "semi_final": exact.elbo(meanfield_of(semi)),
        "semi_steps": tracker.first_within(target),
        "semi_steps_tight": tracker.first_within(target, rel=0.0025),
        "fvi_final": scratch.values[-1],
        "fvi_steps": scratch.first_within(target),
        "fvi_steps_tight": scratch.first_within(target, rel=0.0025),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--saw-units", type=int, default=1_000)
    parser.add_argument("--hmm-units", type=int, default=100)
    parser.add_argument("--avi-steps", type=int, default=300)
    parser.add_argument("--refine-steps", type=int, default=2_000)
    parser.add_argument("--fvi-steps", type=int, default=10_000)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--every", type=int, default=25)
    args = parser.parse_args(argv)
    rows = []
    for name, model in (
        (f"saw i=1, N={args.saw_units}", saw_model(args.saw_units, random_seed=args.seed)),
        (f"HMM, N={args.hmm_units}", hmm_model(args.hmm_units, random_seed=args.seed)),
    ):
        result = semi_vs_fvi(
            model,
            widths=(16, 16),
            avi_steps=args.avi_steps,
            refine_steps=args.refine_steps,
            fvi_steps=args.fvi_steps,
            lr=args.lr,
            every=args.every,
            seed=args.seed,
        )
        rows.append((name, result))
    print(f"Adam lr {args.lr}, A-VI {args.avi_steps} steps then refinement; exact ELBOs")
    print(
        "| model | F-VI optimum | A-VI | semi-amortized final | F-VI final | "
        "semi steps to 1% / 0.25% (A-VI + refine) | F-VI steps to 1% / 0.25% |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['optimum']:.2f} | {r['avi_elbo']:.2f} | {r['semi_final']:.2f} | "
            f"{r['fvi_final']:.2f} | {r['semi_steps']} / {r['semi_steps_tight']} | "
            f"{r['fvi_steps']} / {r['fvi_steps_tight']} |"
        )
    return rows


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
