"""Benchmark 9: A-VI against what users pick instead (nutpie NUTS, pathfinder, DADVI) on radon.

    python -m benchmarks.perf.competitors [--quick]

Model: the simulated radon model (:mod:`pymc_amortize.examples.simulated_radon`: centred county
intercepts ``a``, a floor covariate, Gaussian houses), 10³, 10⁴ and 10⁵ counties with 5 houses
each on average (skewed sizes, 1 to a few dozen). ``--quick`` runs 10³ and 10⁴ counties.

**Reference.** Given the globals θ = (μ_a, σ_a, b, σ) each county's intercept has a conjugate
Gaussian posterior in closed form. θ is set at the mode of its exact marginal posterior (the
intercepts integrated out analytically, per county), and its remaining uncertainty is carried by a
Laplace approximation: the reference sd of a_j is √(sd_j(θ̂)² + g_jᵀ Σ g_j), g_j = ∂ mean_j/∂θ,
Σ = the inverse Hessian at the mode (the table reports the largest ratio of that added spread to
sd_j). It costs milliseconds at 10⁵ counties, where a long NUTS run would not; the true simulation
values would be off by the globals' estimation error (about one posterior sd of θ, up to ≈ 0.1
sd_j for the largest counties), which the Laplace term measures. At 10³ counties nutpie's means
(2 × 1,000 draws) agree with it to a median of 0.02 sd (section 9).

**Metric.** For each contender's posterior means of the ``a_j``: |mean − reference| / reference sd
per county; *reached* when at least 99% of the counties are within 0.1 sd (the median and the
largest error are reported too). Wall time until then, setup and compile included and without:

* A-VI (``pm.fit(method="amortized")``, default encoder, ``batch_size=B``) and ADVI, Adam, each
  stopped at the first check (every ``every`` steps, off the clock) that meets the target, else by
  ``ELBOConvergence()`` or the step cap;
* NUTS through nutpie (what ``pm.sample(nuts_sampler="nutpie")`` runs): compile, then 2 chains,
  default tuning, ``draws`` per chain; the running means are checked after 50, 100, 200, ...
  draws, and the time at the first that meets the target is prorated over the iterations (tuning
  included), marked "≈";
* pymc-extras' ``fit(method="pathfinder")`` and ``fit(method="dadvi")`` with their defaults (one
  call each; its time includes compiling).
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm
from scipy import optimize

from benchmarks.perf import common
from pymc_amortize.diagnostics import meanfield_of
from pymc_amortize.examples.simulated_radon import RadonData, radon_data, radon_model

SD_TOLERANCE = 0.1  # |mean error| in reference posterior sds
FRACTION = 0.99  # of the counties within it
ROWS_PER_GROUP = 5


def data_and_model(n_counties: int, *, random_seed: int = 0) -> tuple[RadonData, pm.Model]:
    data = radon_data(n_counties, ROWS_PER_GROUP * n_counties, random_seed=random_seed)
    # Named coords: pymc-extras' pathfinder fails on dims given by length only (see report).
    return data, radon_model(data, coords=True)


# -- the reference: conjugate posterior of each a_j, globals at their marginal posterior mode -----
class Reference:
    """Closed-form posterior of the county intercepts of :func:`radon_model` given the globals.

    ``theta`` = (μ_a, log σ_a, b, log σ), the priors of :func:`radon_model` (μ_a ~ N(0, 5),
    σ_a ~ HalfNormal(1), b ~ N(0, 1), σ ~ HalfNormal(1)), log-scale Jacobians included.
    """

    def __init__(self, data: RadonData):
        idx, y, f = data.county_idx, data.log_radon, data.floor
        self.n_groups = data.n_counties

        def per_group(w):
            return np.bincount(idx, weights=w, minlength=self.n_groups)

        self.n = per_group(np.ones_like(y))
        self.sy, self.sf = per_group(y), per_group(f)
        self.syy, self.syf, self.sff = per_group(y * y), per_group(y * f), per_group(f * f)
        fit = optimize.minimize(self.neg_log_posterior, np.array([1.0, -0.5, 0.0, -0.5]))
        self.theta = fit.x
        cov = np.linalg.inv(_hessian(self.neg_log_posterior, self.theta))
        mean, sd = self.conditional(self.theta)
        grad = _jacobian(lambda t: self.conditional(t)[0], self.theta)  # (groups, 4)
        spread = np.einsum("gi,ij,gj->g", grad, cov, grad)
        self.mean, self.sd = mean, np.sqrt(sd**2 + spread)
        self.globals_shift = float(np.max(np.sqrt(spread) / sd))

    def _residuals(self, b):
        mean_r = (self.sy - b * self.sf) / self.n
        ss = self.syy - 2 * b * self.syf + b**2 * self.sff - self.n * mean_r**2
        return mean_r, ss

    def neg_log_posterior(self, theta) -> float:
        mu, log_sa, b, log_s = theta
        sa2, s2 = np.exp(2 * log_sa), np.exp(2 * log_s)
        n = self.n
        mean_r, ss = self._residuals(b)
        total_var = s2 + n * sa2
        loglik = (
            -0.5 * n * np.log(2 * np.pi)
            - (n - 1) * log_s
            - 0.5 * np.log(total_var)
            - ss / (2 * s2)
            - n * (mean_r - mu) ** 2 / (2 * total_var)
        ).sum()
        log_prior = (
            -0.5 * (mu / 5) ** 2 - 0.5 * sa2 + log_sa - 0.5 * b**2 - 0.5 * s2 + log_s
        )  # up to constants, Jacobians of the log scales included
        return -(loglik + log_prior)

    def conditional(self, theta) -> tuple[np.ndarray, np.ndarray]:
        mu, log_sa, b, log_s = theta
        sa2, s2 = np.exp(2 * log_sa), np.exp(2 * log_s)
        mean_r, _ = self._residuals(b)
        precision = 1 / sa2 + self.n / s2
        return (mu / sa2 + self.n * mean_r / s2) / precision, precision**-0.5

    def errors(self, means: np.ndarray) -> dict:
        z = np.abs(np.asarray(means) - self.mean) / self.sd
        within = float(np.mean(z <= SD_TOLERANCE))
        return {
            "within": within,
            "median": float(np.median(z)),
            "max": float(z.max()),
            "reached": within >= FRACTION,
        }


def _jacobian(f, x, h=1e-5) -> np.ndarray:
    cols = [(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.size)]
    return np.stack(cols, axis=-1)


def _hessian(f, x, h=1e-4) -> np.ndarray:
    hess = _jacobian(lambda t: _jacobian(f, t, h), x, h)
    return (hess + hess.T) / 2


# -- the contenders --------------------------------------------------------------------------------
def _group_means(approx) -> np.ndarray:
    return meanfield_of(approx)["a"].mean


def run_vi(model, ref, method, *, lr, batch, max_steps, every, seed=0, mode=None) -> dict:
    kwargs = {"method": "amortized", "batch_size": batch} if method == "A-VI" else {}
    clock = common.FitClock(
        lambda approx: ref.errors(_group_means(approx)), every=every, stop=lambda e: e["reached"]
    )
    approx = common.converged_fit(
        model,
        clock,
        max_steps=max_steps,
        lr=lr,
        mode=mode,
        seed=seed,
        **({"method": "advi"} | kwargs),
    )
    errors = clock.points[-1][2] if clock.points else ref.errors(_group_means(approx))
    reached = bool(clock.points) and errors["reached"]
    return {
        "compile_s": clock.compile_s,
        "run_s": clock.run_s,
        "wall_s": clock.compile_s + clock.run_s,
        "reached": reached,
        "steps": clock.steps,
        "errors": errors,
        "settings": f"Adam {lr:g}, {clock.steps:,} steps" + (f", B={batch}" if batch else ""),
    }


def run_nutpie(model, ref, *, draws, seed=0, chains=2) -> dict:
    import nutpie

    start = time.perf_counter()
    compiled = nutpie.compile_pymc_model(model)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    idata = nutpie.sample(compiled, draws=draws, chains=chains, seed=seed, progress_bar=False)
    sample_s = time.perf_counter() - start
    a = idata.posterior["a"].to_numpy()  # (chain, draw, county)
    tune = int(idata.warmup_posterior.sizes["draw"]) if "warmup_posterior" in idata else 0
    prefixes = [d for d in (50, 100, 200, 400, 800) if d < draws] + [draws]
    reached_at = None
    for d in prefixes:
        errors = ref.errors(a[:, :d].mean(axis=(0, 1)))
        if errors["reached"]:
            reached_at = d
            break
    share = (tune + (reached_at or draws)) / (tune + draws)
    return {
        "compile_s": compile_s,
        "run_s": sample_s * share,
        "wall_s": compile_s + sample_s * share,
        "full_run_s": compile_s + sample_s,
        "estimated": reached_at is not None and reached_at < draws,
        "reached": reached_at is not None,
        "errors": errors,
        "settings": f"{chains} chains, tune {tune}, "
        + (f"target at {reached_at} of {draws} draws" if reached_at else f"{draws} draws"),
    }


def run_pymc_extras(model, ref, method, *, seed=0) -> dict:
    from pymc_extras.inference import fit

    start = time.perf_counter()
    idata = fit(method=method, model=model, random_seed=seed, progressbar=False)
    wall = time.perf_counter() - start
    errors = ref.errors(idata.posterior["a"].mean(("chain", "draw")).to_numpy())
    return {
        "compile_s": float("nan"),
        "run_s": float("nan"),
        "wall_s": wall,
        "reached": errors["reached"],
        "errors": errors,
        "settings": "defaults",
    }


def contenders(settings: dict) -> dict:
    """``{name: run(model, ref)}``, leaving out what is not installed."""
    out = {
        name: lambda m, r, name=name: run_vi(m, r, name, **settings["vi"][name])
        for name in ("A-VI", "ADVI")
    }
    try:
        import nutpie  # noqa: F401

        out["NUTS (nutpie)"] = lambda m, r: run_nutpie(m, r, **settings["nuts"])
    except ImportError:
        print("[competitors] nutpie is not installed: NUTS left out")
    try:
        import pymc_extras  # noqa: F401

        out["pathfinder"] = lambda m, r: run_pymc_extras(m, r, "pathfinder")
        out["DADVI"] = lambda m, r: run_pymc_extras(m, r, "dadvi")
    except ImportError:
        print("[competitors] pymc-extras is not installed: pathfinder and DADVI left out")
    return out


def default_settings(quick: bool) -> dict:
    vi = {"lr": 1e-2, "every": 100, "max_steps": 20_000 if quick else 50_000}
    return {
        "vi": {"A-VI": vi | {"batch": 100}, "ADVI": vi | {"batch": None}},
        "nuts": {"draws": 1_000},
    }


def run(*, quick: bool = False, sizes=None, settings=None, only=None, write=True) -> dict:
    sizes = sizes or ((1_000, 10_000) if quick else (1_000, 10_000, 100_000))
    settings = settings or default_settings(quick)
    chosen = contenders(settings)
    chosen = {k: v for k, v in chosen.items() if only is None or k in only}
    results, rows, leads = {}, [], {}
    common.warm_up_fits()
    for n in sizes:
        data, model = data_and_model(n)
        start = time.perf_counter()
        ref = Reference(data)
        ref_s = time.perf_counter() - start
        results[n] = {"reference_s": ref_s, "globals_shift": ref.globals_shift, "fits": {}}
        for name, fit in chosen.items():
            print(f"[competitors] {n:,} counties: {name}", flush=True)
            try:
                r = fit(model, ref)
            except Exception as err:  # a contender that fails is reported, not fatal
                r = {"failed": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
            results[n]["fits"][name] = r
            rows.append(_row(n, name, r))
        leads[n] = _leader(results[n]["fits"])
    table = _table(sizes, settings, results, rows, leads)
    payload = {"sizes": {str(n): r for n, r in results.items()}, "leaders": leads, "table": table}
    if write:
        common.write_results("competitors", payload, table, quick=quick)
    return payload


def _row(n, name, r) -> list:
    if "failed" in r:
        return [f"{n:,}", name, "failed", "", "", "", "", "", r["failed"]]
    e = r["errors"]
    approx = "≈ " if r.get("estimated") else ""
    wall = f"{approx}{r['wall_s']:.3g}" if r["reached"] else f"not reached ({r['wall_s']:.3g})"
    return [
        f"{n:,}",
        name,
        wall,
        r["compile_s"],
        r["run_s"] if r["reached"] else "",
        e["within"],
        e["median"],
        e["max"],
        r["settings"],
    ]


def _leader(fits: dict) -> str | None:
    reached = {k: v["wall_s"] for k, v in fits.items() if v.get("reached")}
    return min(reached, key=reached.get) if reached else None


def _table(sizes, settings, results, rows, leads) -> str:
    header = [
        "counties",
        "method",
        "wall s to target (compile incl.)",
        "setup + compile s",
        "s without compile",
        f"share within {SD_TOLERANCE} sd",
        "median |err|/sd",
        "max |err|/sd",
        "settings",
    ]
    refs = ", ".join(
        f"{n:,}: {results[n]['reference_s']:.2g} s, globals' uncertainty moves it by "
        f"≤ {results[n]['globals_shift']:.3f} sd"
        for n in sizes
    )
    lead = "; ".join(f"{n:,} counties: **{leads[n] or 'none reached'}**" for n in sizes)
    return (
        f"Simulated radon (centred intercepts, {ROWS_PER_GROUP} houses per county on average). "
        f"Target: ≥ {FRACTION:.0%} of the counties' posterior means within {SD_TOLERANCE} "
        "reference posterior sd (conjugate posterior given the globals at their marginal "
        f"posterior mode, with their Laplace uncertainty; reference computed in {refs}). A-VI and "
        f"ADVI: {settings['vi']['A-VI']}, {settings['vi']['ADVI']}, checked every "
        f'{settings["vi"]["A-VI"]["every"]} steps off the clock. "≈": NUTS\'s time prorated '
        "to the draws at which it met the target. The share and errors are at the time of the "
        "target, or at the end where it was not reached. Fastest to the target: "
        + lead
        + ".\n\n"
        + common.markdown_table(header, rows)
    )


def main(argv=None):
    common.run_quick_cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
