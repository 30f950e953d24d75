"""NUTS references for the user-model cases (shared/cases/c0*.py) behind tests/test_user_models.py.

Runs ``pm.sample(draws=1000, tune=1000, chains=2, random_seed=0)`` on exactly each case's model and
data (built by ``tests/user_model_cases.py``) and prints one Python dict: posterior means and sds of
the globals and summaries of the locals (per-group means and sds where the tests compare groups).
The tests hold a copy of this dict (``REFERENCE``); rerun this and paste the output when a case's
model or data change.

Run (about 3 minutes on 2 cores)::

    source scripts/env.sh && PYTHONPATH=. python -m benchmarks.case_references

Cases c03 (topic model: NUTS switches topic labels between chains) gets only label-invariant
summaries: the posterior mean of each document's word probabilities theta @ phi and the posterior
mean of the log-likelihood. Cases c04 and c05 share one model and data, hence one entry (c04).
"""

from __future__ import annotations

import pprint
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from benchmarks.harness import sample_nuts

# The tests folder is not a package (and site-packages holds an unrelated `tests`): import the
# builders the way pytest does, from the folder itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import user_model_cases as cases

R = 4  # decimals printed


def _r(x):
    return np.round(np.asarray(x, dtype=float), R).tolist()


def nuts(model):
    # PyMC's own NUTS: bit-for-bit reproducible under a seed (nutpie's threaded chains are
    # not; its numbers differ from these by Monte Carlo error, a few hundredths of an sd)
    idata, _ = sample_nuts(
        model, draws=1000, tune=1000, chains=2, seed=0, sampler="pymc", nuts_sampler="pymc"
    )
    post = idata.posterior
    diverging = int(idata.sample_stats["diverging"].sum())
    return post, diverging


def moments(post, names):
    return {
        name: {
            "mean": _r(post[name].mean(("chain", "draw"))),
            "sd": _r(post[name].std(("chain", "draw"))),
        }
        for name in names
    }


def per_group(post, name):
    mean = post[name].mean(("chain", "draw")).values
    sd = post[name].std(("chain", "draw")).values
    return {"mean": _r(mean), "sd": _r(sd)}


def c01():
    post, div = nuts(cases.unit_covariate_model())
    z_mean = post["z"].mean(("chain", "draw")).values
    z_sd = post["z"].std(("chain", "draw")).values
    out = moments(post, ["mu", "beta", "tau", "sigma"])
    out["z"] = {
        "mean_of_means": _r(z_mean.mean()),
        "sd_of_means": _r(z_mean.std()),
        "mean_sd": _r(z_sd.mean()),
    }
    return out, div


def c02():
    post, div = nuts(cases.noncentered_index_model())
    out = moments(post, ["mu", "s"])
    out["a"] = per_group(post, "a")
    out["a_raw"] = per_group(post, "a_raw")
    return out, div


def c03():
    post, div = nuts(cases.topic_model(array_concentration=True))
    W = cases.topic_data()
    theta = post["theta"].values.reshape(-1, cases.TOPIC_D, cases.TOPIC_K)
    phi = post["phi"].values.reshape(-1, cases.TOPIC_K, cases.TOPIC_V)
    p = theta @ phi  # (draws, D, V), label invariant
    loglik = stats.multinomial.logpmf(W[None], 20, p).sum(axis=1)
    p_mean = p.mean(0)
    out = {
        "p_word_mean": _r(p_mean.mean(0)),  # (V,) mean over documents
        # RMS over documents and words of E[p_dv] - mean_d E[p_dv]: how far the posterior pulls
        # each document's word probabilities from the pooled ones
        "p_doc_spread": _r(np.sqrt(((p_mean - p_mean.mean(0)) ** 2).mean())),
        "loglik": {"mean": _r(loglik.mean()), "sd": _r(loglik.std())},
    }
    return out, div


def c04():
    post, div = nuts(cases.rows_without_dims_model(data_dims=True, obs_dims=True))
    out = moments(post, ["mu_a", "sd_a", "b", "sigma"])
    out["a"] = per_group(post, "a")
    return out, div


def c06():
    post, div = nuts(cases.zero_row_model())
    out = moments(post, ["mu_a", "sd_a", "b", "sigma"])
    a_mean = post["a"].mean(("chain", "draw")).values
    out["a"] = {"mean_of_means": _r(a_mean.mean()), "sd_of_means": _r(a_mean.std())}
    mu_a, sd_a, b, sigma = (post[k].values.ravel() for k in ("mu_a", "sd_a", "b", "sigma"))
    # New county with no rows: the prior given the globals, mixed over the posterior.
    out["new_county_no_rows"] = {
        "mean": _r(mu_a.mean()),
        "sd": _r(np.sqrt((sd_a**2).mean() + mu_a.var())),
    }
    # New county with 5 rows: conjugate normal given each draw, the draws weighted by the rows'
    # marginal likelihood (exactly the posterior of a county added to the model with these rows).
    y_new, fl_new = cases.ZERO_ROW_NEW_ROWS["log_radon"], cases.ZERO_ROW_NEW_ROWS["floor"]
    n = len(y_new)
    resid = y_new[None] - b[:, None] * fl_new[None]
    precision = 1 / sd_a**2 + n / sigma**2
    cond_mean = (mu_a / sd_a**2 + resid.sum(1) / sigma**2) / precision
    cond_var = 1 / precision
    logw = np.array(
        [
            stats.multivariate_normal.logpdf(
                r, np.full(n, m), s**2 * np.eye(n) + t**2 * np.ones((n, n))
            )
            for r, m, s, t in zip(resid, mu_a, sigma, sd_a, strict=True)
        ]
    )
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = (w * cond_mean).sum()
    var = (w * (cond_var + (cond_mean - mean) ** 2)).sum()
    out["new_county_5_rows"] = {"mean": _r(mean), "sd": _r(np.sqrt(var))}
    return out, div


def c07():
    post, div = nuts(cases.indexed_small_model())
    out = moments(post, ["sigma"])
    out["a"] = per_group(post, "a")
    return out, div


def c08():
    post, div = nuts(cases.crossed_model())
    out = moments(post, ["sigma"])
    out["z_actor"] = per_group(post, "z_actor")
    out["z_block"] = per_group(post, "z_block")
    return out, div


# -- the tests' own variants of each kind ----------------------------------------------------------


def v01():
    post, div = nuts(cases.unit_covariate_poisson_model())
    return moments(post, ["mu", "beta", "tau"]), div


def v02():
    post, div = nuts(cases.noncentered_poisson_model())
    out = moments(post, ["mu", "s"])
    out["a_raw"] = per_group(post, "a_raw")
    group_effect = post["mu"] + post["s"] * post["a_raw"]
    out["a"] = {
        "mean": _r(group_effect.mean(("chain", "draw"))),
        "sd": _r(group_effect.std(("chain", "draw"))),
    }
    return out, div


def v03():
    post, div = nuts(cases.unit_prior_mean_model())
    out = moments(post, ["sigma"])
    out["z"] = per_group(post, "z")
    return out, div


def v04():
    post, div = nuts(cases.bernoulli_rows_without_dims_model())
    out = moments(post, ["mu_a", "sd_a", "b"])
    out["a"] = per_group(post, "a")
    return out, div


def v07():
    post, div = nuts(cases.poisson_indexed_model())
    out = moments(post, ["mu", "sd"])
    out["a"] = per_group(post, "a")
    return out, div


def v08():
    post, div = nuts(cases.crossed_bernoulli_model())
    out = moments(post, ["alpha", "sd_actor", "sd_block"])
    out["z_actor"] = per_group(post, "z_actor")
    out["z_block"] = per_group(post, "z_block")
    return out, div


def main(names):
    reference = {}
    for name in names:
        out, div = globals()[name]()
        reference[name] = out
        print(f"# {name}: {div} divergences", file=sys.stderr)
    pprint.pprint(reference, width=100, sort_dicts=False, compact=True)
    return reference


if __name__ == "__main__":
    main(
        sys.argv[1:]
        or [
            "c01",
            "c02",
            "c03",
            "c04",
            "c06",
            "c07",
            "c08",
            "v01",
            "v02",
            "v03",
            "v04",
            "v07",
            "v08",
        ]
    )
