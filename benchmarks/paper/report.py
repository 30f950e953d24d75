"""Write docs/paper_results.md from the experiments' result files (ours beside the paper's).

    python -m benchmarks.paper.report [--results docs/paper] [--out docs/paper_results.md]

For each experiment the full-settings result (``<experiment>.json``) comes first when present,
then the quick one (``<experiment>_quick.json``, what the notebooks and CI run).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from benchmarks.paper import common
from benchmarks.paper.scaling import scaling_table

EXPERIMENTS = [
    ("linear", "1. Linear model", ("gap_to_optimum",)),
    ("nonlinear", "2. Nonlinear model", ()),
    ("dgm", "3. Deep generative model (Bayesian decoder) on digits", ("mse", "epochs_to_mse")),
    ("saw", "4. Saw time series", ("gap_to_optimum",)),
    ("hmm", "5. HMM counterexample", ("gap_to_optimum", "planted_mean_difference")),
    ("scaling", "6. Beyond the paper: encoder width needed vs N", ()),
]


def load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


#: Per-run metrics shown when a result file has them (the conditional family's checks).
CONDITIONAL_EXTRA = common.CONDITIONAL_METRICS


def present_metrics(payload: dict, keys) -> tuple[str, ...]:
    """The metric names among ``keys`` that some method of ``payload`` has a value for."""
    return tuple(
        k for k in keys if any(s.get(f"{k}_median") is not None for s in payload["summary"])
    )


def _seconds(value: float) -> str:
    return f"{value / 60:,.1f} min" if value >= 120 else f"{value:,.0f} s"


def results_block(results: Path, docs: Path, experiment: str, payload: dict, extra) -> list[str]:
    settings = payload["settings"]
    quick = settings.get("quick")
    shown = {k: v for k, v in settings.items() if k != "quick"}
    run = payload.get("run")
    command = (
        run["command"]
        if run
        else f"python -m benchmarks.paper.{experiment}{' --quick' if quick else ''}"
    )
    lines = [f"Settings: `{json.dumps(shown)}`.", "", f"Command: `{command}`."]
    if run:
        lines += [
            "",
            f"Machine: {run['machine']}, shared with other jobs (load average "
            f"{', '.join(str(v) for v in run['load_average_at_end'])} when the file was written, "
            f"{run['date']}). Wall "
            f"time: {_seconds(run['fits_s'])} of compilation and fitting summed over the "
            f"{len(payload['rows'])} fits (each fit's own clock; the machine's load varies), this "
            f"process {_seconds(run['process_s'])} (fits loaded from the run cache cost it "
            "nothing).",
        ]
    lines.append("")
    if experiment == "scaling":
        lines.append(scaling_table(payload))
    else:
        shown_extra = tuple(extra) + present_metrics(payload, CONDITIONAL_EXTRA)
        lines.append(common.markdown_table(payload, extra=shown_extra))
        lines += ["", f"F-VI target loss (median final loss): {payload['fvi_target_loss']:,.2f}."]
        if "optimum_loss" in payload:
            lines.append(f"Closed-form F-VI optimum loss: {payload['optimum_loss']:,.2f}.")
        if "log_evidence" in payload:
            lines.append(
                f"−log p(x) (the exact posterior's loss, the most any family can reach): "
                f"{-payload['log_evidence']:,.2f}; exact posterior sd of θ "
                f"{payload['exact_theta_sd']:.5f}, mean-field (F-VI) sd {payload['fvi_theta_sd']:.5f}."
            )
        if "bounds" in payload:
            b = payload["bounds"]
            gaps = ", ".join(f"w={w}: {g:.3g}" for w, g in b["affine_window_gap"].items())
            lines.append(
                f"Exact lower bounds: any encoder of x_n alone ≥ {b['identical_units_bound']:.3f} "
                f"nats; affine encoder on window w ≥ {gaps}. Optimal mean difference of the "
                f"planted units: {b['optimum_planted_mean_difference']:.3f}."
            )
    lines.append("")
    for figure in payload.get("figures", {}).values():
        lines.append(f"![{figure}]({Path(os.path.relpath(results / figure, docs)).as_posix()})")
    lines.append("")
    return lines


def section(results: Path, docs: Path, experiment: str, title: str, extra) -> list[str]:
    full, quick = load(results, experiment), load(results, f"{experiment}_quick")
    lines = [f"## {title}", ""]
    if full is None and quick is None:
        return [*lines, f"No results yet: run `python -m benchmarks.paper.{experiment}`.", ""]
    if full is not None:
        seeds = len(full["settings"]["seeds"])
        lines += [
            f"### Full settings ({seeds} seed{'s' if seeds > 1 else ''})",
            "",
            *results_block(results, docs, experiment, full, extra),
        ]
    else:
        lines += ["No full-settings results yet; only the quick ones below.", ""]
    if quick is not None:
        lines += [
            "### Quick settings (`--quick`, what the notebooks and CI run, smaller)",
            "",
            *results_block(results, docs, experiment, quick, extra),
        ]
    notes = (full or quick)["notes"]
    lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return lines


#: Where our numbers and the paper's differ, and why (see ../shared/paper/README.md for the
#: authors' code). Static text: the numbers it cites are in the tables above.
DIFFERENCES = [
    "**Constants.** Our losses are −ELBO with every constant kept; the paper's drop some, so only "
    "gaps (loss − F-VI's) compare. The 1 % band is then wider in nats than the paper's (on the "
    "linear model 240 against 61 nats), so our steps to 1 % are smaller and compare methods "
    "only with each other.",
    "**Linear.** One data set drawn with θ = 0 (as the authors' code), fit seeds vary. The "
    "authors gave F-VI a 10× smaller learning rate than A-VI (1e-3 against 1e-2) and 5,000 "
    "steps, where some seeds had not converged (their F-VI mean 6,173 against a median 6,094): "
    "here both share 1e-2 on a cosine decay and F-VI gets 20,000 steps. F-VI then ends 2.0 nats "
    "above the closed-form optimum and A-VI 0.6, so A-VI is 1.5 nats below F-VI, not the "
    "paper's 6 (its A-VI 'beat' an unconverged F-VI). The Const gap (1,104 nats, 10 seeds within "
    "1 nat) is the paper's (1,138) up to the data set.",
    "**Nonlinear.** The paper's variance cos² z_n makes the ELBO −∞ for any Gaussian q; we use "
    "cos² z_n + 0.1 for every method. The authors' code used a different model (scale "
    "exp(cos z) with its log term dropped, flat θ, z simulated with sd 5), so its losses "
    "(F-VI 32,399, Const 36,701) are not our model's and the gaps differ in size (Const: ours "
    "+7,264, paper +4,302; k = 1: +1,025 against +4,091; k = 2: +178 against +1,046). The "
    "pattern is the paper's: Const and k = 1 far off, k = 2 close, k ≥ 4 at or below F-VI. "
    "Below: F-VI from PyMC's default start stops about 200 nats short of the best F-VI found "
    "(units with bimodal posteriors), as the paper's F-VI ended 12–13 nats above k = 16 and 32; "
    "`F-VI from A-VI` (ADVI started at the k = 32 solution) ends within 7 nats of A-VI k ≥ 8, "
    "so at N = 10,000 those encoders close the gap to Monte Carlo precision.",
    "**Deep generative model.** scikit-learn's digits (1,797 8×8 images) and a d → 64 → 64 "
    "decoder instead of FashionMNIST and 64 → 256 → 256 → 784 on a GPU; the model as the paper "
    "writes it (the authors' code used variance ½ for θ's prior and the likelihood and passed "
    "the sd where log q needs the variance). A-VI with k ≥ 64 reaches MSE 0.025–0.027 over the "
    "seeds (paper 0.0241–0.0244 on FashionMNIST) and k = 1 0.061–0.064 (paper 0.0505). F-VI "
    "gets 30,000 full-batch steps (30,000 epochs; A-VI's 10,000 minibatch steps are 1,113) and "
    "ends at MSE 0.0169–0.0172 with a loss about 130,000 nats (≈ 72 per image) below A-VI "
    "k ≥ 64's: on this budget the amortization gap is large and F-VI's MSE beats A-VI's, "
    "where the paper's A-VI (0.0244) beat its F-VI (0.0268) at epoch 4,500. A-VI still reaches "
    "MSE ≤ 0.03 in about 390 epochs against F-VI's 4,000–4,500 (paper: 1,713–1,821 against "
    "2,731). With 3,000 steps F-VI had barely left its start (MSE 0.070).",
    "**Saw.** The data are simulated from the model as written (θ from its prior); the authors' "
    "code fixed θ = 3.4159, simulated x_n = α(θ + x_{n−1}) + ε (never using the drawn z_n), "
    "had no p(θ) term, and measured steps to 1 % against F-VI's loss at step 19,500. So the "
    "losses are on other data: our i = 1 gap is 499–508 nats at every width and seed (paper "
    "885–893 − 553 ≈ 336), i = 2 closes it for every width and seed to within 2.1 nats "
    "(medians −0.05 to −0.06 for k ≥ 4; paper: k ≥ 4 closes, k = 2 closes in 6/10 seeds and sticks at Const in "
    "4, which none of our seeds did). Our steps to 1 % are far fewer than the paper's 17,595 "
    "for F-VI because our band is wider (constants kept).",
    "**HMM.** The paper reports no numbers; its appendix's matrix (3 on the diagonal, −2 off "
    "it) is not positive definite. We use the correct precision (2 at the ends, 3 inside, −1 "
    "off) and exact bounds on the gap.",
    '**Structured family.** pm.fit applies `family="conditional"` only to plates whose '
    "verdict is *amortize*: the linear model (where it is exact, beyond F-VI's mean-field "
    "optimum, up to log p(x)); not the saw (*expand*) nor the HMM (*cannot close*), where the "
    "fit keeps the encoder family or, left to the analysis, F-VI. On the nonlinear model it "
    "diverges at its first step, with the Gauss–Hermite variational steps too (N = 10,000 "
    "and the probe's 1,000): its undamped steps divide the gradient by a curvature near zero "
    "or negative where the log density is not concave in z_n (see the nonlinear notes).",
]


def shortfalls(results: Path) -> list[str]:
    """Per experiment, how the full-settings run differs from the script's full settings."""
    import importlib

    lines = []
    for experiment, title, _ in EXPERIMENTS:
        full = load(results, experiment)
        name = title.split(". ", 1)[-1]
        if full is None:
            lines.append(f"- {name}: no full-settings run yet.")
            continue
        wanted = importlib.import_module(f"benchmarks.paper.{experiment}").FULL
        ran = full["settings"]
        changed = [
            f"{k} {ran[k]} (full: {wanted[k]})"
            for k in wanted
            if k in ran and ran[k] != wanted[k] and k not in ("conditional",)
        ]
        lines.append(f"- {name}: " + ("; ".join(changed) if changed else "the full settings") + ".")
    return lines


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR.parent / "paper_results.md")
    args = parser.parse_args(argv)
    docs = args.out.parent
    lines = [
        "# The paper's experiments, reproduced",
        "",
        "Generated by `python -m benchmarks.paper.report` from the result files in "
        f"`{args.results.relative_to(docs.parent).as_posix() if args.results.is_relative_to(docs.parent) else args.results}`; "
        "do not edit by hand. Margossian & Blei, *Amortized Variational Inference: When and "
        "Why?* (UAI 2024).",
        "",
        "Reading the tables: *loss* is −ELBO at the final parameters (median over seeds) with all "
        "constants kept, while the paper drops some constants, so compare the *gap* columns "
        "(loss − F-VI's median loss), not the losses. *≤1%*: seeds whose final loss is within 1 % "
        "of F-VI's; *steps/s to 1%*: first step (and seconds after compilation) where the "
        "50-step running training loss is within 1 % of F-VI's final loss; because our losses keep the constants, 1 % is a wider band "
        "in nats than the paper's (240 vs 61 nats on the linear model), so our step counts are "
        "smaller than the paper's and compare methods only with each other. A negative gap means "
        "F-VI had not converged (the A-VI family is a subset of F-VI's). Results labelled "
        "**quick settings** come from the `--quick` runs (smaller N, fewer steps and seeds); "
        "*full settings* from runs without `--quick`, where the section says which settings "
        "actually ran (see the last section for what fell short of each script's full "
        "settings). *[min, max]*: the spread over seeds.",
        "",
    ]
    for experiment, title, extra in EXPERIMENTS:
        lines += section(args.results, docs, experiment, title, extra)
    lines += [
        "## Where our numbers differ from the paper's, and why",
        "",
        *[f"- {d}" for d in DIFFERENCES],
        "",
        "## What ran short of the full settings",
        "",
        "The full settings are each script's `FULL` (the paper's N, steps, widths and 10 seeds). "
        "These runs ran at `nice -n 19`, two to four studies at a time, beside other jobs that kept the "
        "load average near 10 on the 2 cores, so their wall times are several times those of "
        "the same fits on an idle machine (linear F-VI, 20,000 steps: 16 s in a timing run at "
        "load ≈ 1, 70–128 s in the 10-seed run). Fits are filed in a run cache "
        "(`PAPER_RUN_CACHE=/path`), so rerunning a command with more seeds adds only the new "
        "ones.",
        "",
        "On the shared 2-core machine the full settings did not all fit; what ran instead:",
        "",
        *shortfalls(args.results),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
