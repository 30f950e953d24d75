"""PSIS diagnostics on the linear and saw models: the numbers behind tests/test_psis_and_results.py.

Run: ``source scripts/env.sh && python -m benchmarks.psis_diagnostics`` (about a minute).
"""

import timeit

import numpy as np
import pymc as pm
from scipy.stats import spearmanr

import tests.test_psis_and_results as t
from pymc_amortize import AmortizedVI
from pymc_amortize.examples.paper import (
    LINEAR_SIGMA,
    LINEAR_TAU,
    linear_data,
    linear_model,
    saw_data,
    saw_model,
)
from pymc_amortize.psis import psis_diagnostic

print(
    "perf_counter pair cost (us):",
    timeit.timeit("p(); p()", setup="import time; p=time.perf_counter", number=100000)
    / 100000
    * 1e6,
)
x = linear_data(1_000, random_seed=0)
model = linear_model(x)
inf = AmortizedVI(family="encoder", model=model, encoder_widths=(), random_seed=1)
inf.fit(3000, obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
approx = inf.fit(1000, obj_optimizer=pm.adam(learning_rate=1e-3), progressbar=False)
print(
    "linear: median step s",
    np.median(approx.step_seconds),
    "first step s",
    approx.step_seconds[0],
    approx.step_seconds[3000],
)
d = psis_diagnostic(approx, draws=1000, random_seed=0)
print(d.summary())
d4 = psis_diagnostic(approx, draws=4000, random_seed=2)
r = d4.resample(random_seed=3)
print(
    "theta sd: exact",
    np.sqrt(LINEAR_SIGMA**2 + LINEAR_TAU**2) / np.sqrt(x.size),
    "q",
    approx.globals.mean_and_scale()[1][0],
    "resampled",
    float(r.posterior["theta"].std()),
    "ESS",
    d4.ess,
)
xs = saw_data(200, random_seed=0)
xp = np.concatenate([[0.0], xs[:-1]])
sm = saw_model(xs)
for label, inputs in (("x only", "x"), ("x_prev and x", ["x_prev", "x"])):
    a = AmortizedVI(
        {"z": inputs}, family="encoder", model=sm, encoder_widths=(), random_seed=1
    ).fit(1500, obj_optimizer=pm.adam(learning_rate=1e-2), progressbar=False)
    dd = psis_diagnostic(a, draws=1000, random_seed=0)
    m = a.globals.mean_and_scale()[0][0]
    prec = 1 + t.SAW_ALPHA**2
    om = (xp + t.SAW_ALPHA * (xs - t.SAW_ALPHA * m)) / prec
    osd = 1 / np.sqrt(prec)
    q = a.encode()["z"]
    kl = np.log(osd / q.sd) + (q.sd**2 + (q.mean - om) ** 2) / (2 * osd**2) - 0.5
    k = dd.khat_per_unit.values
    top = 20
    print(f"saw, encoder on {label}:", dd.summary().replace("\n", " | "))
    print(
        "   spearman(k, KL)",
        spearmanr(k, kl).statistic,
        "top-10% overlap",
        np.intersect1d(np.argsort(-k)[:top], np.argsort(-kl)[:top]).size / top,
        "max KL",
        kl.max(),
    )
