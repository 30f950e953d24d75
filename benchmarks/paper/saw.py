"""Experiment 4: the saw time series, A-VI on x_n alone (i = 1) vs on (x_{n−1}, x_n) (i = 2).

θ ~ N(0, 1), x_0 = 0, z_n ~ N(x_{n−1}, 1), x_n ~ N(α(θ + z_n), 1), α = 0.75, N = 1,000.
No ideal encoder on x_n alone exists; one on (x_{n−1}, x_n) does. The model is Gaussian, so every
final solution is scored by its exact ELBO and the F-VI optimum is known in closed form.

    python -m benchmarks.paper.saw [--quick]
"""

from __future__ import annotations

from benchmarks.paper import common
from pymc_amortize.examples.paper import saw_data, saw_logjoint, saw_model

FULL = {
    "n_units": 1_000,
    "steps": 30_000,
    "fvi_steps": 30_000,
    "seeds": list(range(10)),
    "widths_i1": [4, 6, 10, 20],
    "widths_i2": [2, 4, 6, 10],
    "learning_rate": 1e-3,
    "conditional": True,
}
QUICK = FULL | {
    "conditional": False,
    "steps": 4_000,
    "fvi_steps": 12_000,
    "seeds": [0, 1],
    "widths_i1": [4, 10],
    "widths_i2": [2, 4, 10],
    "learning_rate": 1e-2,
}
PAPER = {
    "F-VI": {"loss": 553.08, "steps_to_1pct": 17_595},
    "Const": {"loss": 2933.7},
    **{f"A-VI i=1 k={k}": {"loss": 889.0} for k in (4, 6, 10, 20)},
    "A-VI i=2 k=2": {"within_1pct": "6/10"},
    "A-VI i=2 k=4": {"loss": 553.1, "steps_to_1pct": 7_780},
    "A-VI i=2 k=6": {"loss": 553.1},
    "A-VI i=2 k=10": {"loss": 553.1, "steps_to_1pct": 7_145},
}
NOTES = [
    "Loss = −ELBO, exact (the model is Gaussian), constants kept; `optimum` is the closed-form "
    "F-VI optimum (exact posterior means, variances 1/Λ_nn).",
    "Edge unit: the paper's model sets x_0 = 0, so z_1 ~ N(0, 1) and the i = 2 encoder sees "
    "(0, x_1) — the same function as for every other unit, no free parameter needed.",
    "Data simulated from the model as the paper writes it (θ drawn from its prior; the authors' "
    "code fixed θ = 3.4159 and never used the drawn z_n).",
    "The paper's i = 1 losses are 885–893 for every k; listed as 889.",
    "Quick settings: learning rate 1e-2 and 4,000 steps instead of 1e-3 and 30,000.",
    '`conditional, local=x k=4`: `family="conditional"` (the structured family q(θ) ∏ q(z_n '
    "| θ, x_n)) asked for with the encoder on x_n alone. `analyze_model` gives z the verdict "
    "*expand* ('x_prev' holds 'x' of the previous unit) and pm.fit applies the conditional "
    "family only to plates whose verdict is *amortize*, so the fit keeps the encoder family "
    "(its summary: \"local family, plate 'unit': encoder q(z_n; f(x_n)) (the verdict on z is "
    'not amortize)"): an encoder-family fit on x_n alone like `A-VI i=1 k=4` (seed 0: loss '
    "2,159.06 against 2,158.49, gap ≈ 506 nats). The family does not close the gap without the "
    "expanded domain, because it is not applied. (Given θ the saw's units are "
    "independent — a unit's terms read its neighbour's data, not its latent — so a Newton step "
    "per unit would be exact here; the package's rule is stricter than the family needs.)",
]


def methods(n_units: int, settings: dict) -> list[common.Method]:
    out = [common.fvi(steps=settings["fvi_steps"]), common.const_method(n_units)]
    for family, inputs, widths in (
        ("i=1", "x", settings["widths_i1"]),
        ("i=2", ["x_prev", "x"], settings["widths_i2"]),
    ):
        out += [
            common.amortized(
                f"A-VI {family} k={k}",
                width=k,
                family=family,
                local={"z": inputs},
                encoder_widths=(k, k),
            )
            for k in widths
        ]
    if settings["conditional"]:
        # The structured family asked for on x_n alone; pm.fit applies it only to plates whose
        # verdict is "amortize", and saw's z gets "expand" (x_prev is the previous unit's x), so
        # this fit keeps the encoder family (see NOTES).
        out.append(
            common.Method(
                "conditional, local=x k=4",
                "amortized",
                options={"family": "conditional", "local": {"z": "x"}, "encoder_widths": (4, 4)},
            )
        )
    return out


def main(argv=None) -> dict:
    settings, out = common.parse_args(__doc__, argv, full=FULL, quick=QUICK)
    cache = common.run_cache("saw", settings)
    x = saw_data(settings["n_units"], random_seed=0)
    logjoint = saw_logjoint(x)
    optimum_loss = -logjoint.elbo(*logjoint.optimum())

    def score(params):
        mean = logjoint.stack({k: m for k, (m, _) in params.items()})
        sd = logjoint.stack({k: s for k, (_, s) in params.items()})
        loss = -logjoint.elbo(mean, sd)
        return {"loss": loss, "gap_to_optimum": loss - optimum_loss}

    print(f"Saw model, N = {x.size}; closed-form optimum loss {optimum_loss:,.2f}")
    runs = common.run_experiment(
        saw_model(x),
        methods(x.size, settings),
        seeds=settings["seeds"],
        steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        lr_schedule=settings["lr_schedule"],
        score=score,
        cache=cache,
    )
    return common.finish(
        "saw",
        runs,
        settings=settings,
        out=out,
        paper=PAPER,
        notes=NOTES,
        extra_metrics=("gap_to_optimum",),
        extra={"optimum_loss": optimum_loss},
        title=f"Saw time series, N = {x.size}",
        sweep={},
    )


if __name__ == "__main__":
    main()
