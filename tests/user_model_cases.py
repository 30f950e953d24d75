"""The models of ``shared/cases/c0*.py``, exactly as written there (same data, seeds, names, dims).

Used by ``tests/test_user_models.py`` and by ``benchmarks/case_references.py``, which runs NUTS on
each of them to get the reference numbers the tests compare against. Each builder returns the
model (and, where a test needs it, the data); it does not fit.
"""

from __future__ import annotations

import numpy as np
import pymc as pm


def unit_covariate_model():
    """c01: y[n, r] ~ N(mu + beta c_n + tau z_n, sigma), c in pm.Data under the unit dim."""
    rng = np.random.default_rng(6)
    N = 1000
    c_values = rng.normal(size=N)
    Y = (1.0 + 0.5 * c_values + 0.8 * rng.normal(size=N))[:, None] + 0.6 * rng.normal(size=(N, 5))
    with pm.Model(coords={"unit": range(N), "rep": range(5)}) as model:
        c = pm.Data("c", c_values, dims="unit")
        mu = pm.Normal("mu", 0, 5)
        beta = pm.Normal("beta", 0, 1)
        tau = pm.HalfNormal("tau", 1)
        sigma = pm.HalfNormal("sigma", 1)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Normal("y", (mu + beta * c + tau * z)[:, None], sigma, observed=Y, dims=("unit", "rep"))
    return model


def noncentered_index_data():
    idx = np.repeat(np.arange(30), 5)
    y = np.random.default_rng(0).normal(size=150)
    return idx, y


def noncentered_index_model():
    """c02: a = Deterministic(mu + s a_raw), y ~ N(a[idx], 1)."""
    idx, y = noncentered_index_data()
    with pm.Model(coords={"group": range(30), "obs": range(150)}) as model:
        g = pm.Data("idx", idx, dims="obs")
        mu = pm.Normal("mu")
        s = pm.HalfNormal("s")
        a_raw = pm.Normal("a_raw", 0, 1, dims="group")
        a = pm.Deterministic("a", mu + s * a_raw, dims="group")
        pm.Normal("y", a[g], 1, observed=y, dims="obs")
    return model


TOPIC_D, TOPIC_K, TOPIC_V = 50, 3, 10


def topic_data():
    D, _, V = TOPIC_D, TOPIC_K, TOPIC_V
    return np.random.default_rng(0).multinomial(20, np.ones(V) / V, size=D)


def topic_model(array_concentration: bool = True):
    """c03: theta ~ Dirichlet(a) per document, a either (docs, topics) or (topics,)."""
    D, K, V = TOPIC_D, TOPIC_K, TOPIC_V
    W = topic_data()
    concentration = 0.5 * np.ones((D, K)) if array_concentration else 0.5 * np.ones(K)
    with pm.Model(coords={"doc": range(D), "topic": range(K), "word": range(V)}) as model:
        phi = pm.Dirichlet("phi", a=np.ones(V), dims=("topic", "word"))
        theta = pm.Dirichlet("theta", a=concentration, dims=("doc", "topic"))
        pm.Multinomial("W", n=20, p=theta @ phi, observed=W, dims=("doc", "word"))
    return model


def radon_like_data(seed: int = 5, J: int = 50, N: int = 1500):
    """The c04/c05 (seed 5, J=50, N=1500) and c06 (seed 8, J=60, N=1200) data."""
    rng = np.random.default_rng(seed)
    county = rng.integers(0, J, N)
    floor = rng.binomial(1, 0.3, N).astype(float)
    y = rng.normal(1.0, 0.5, J)[county] - 0.6 * floor + rng.normal(0, 0.7, N)
    return county, floor, y


def rows_without_dims_model(data_dims: bool = False, obs_dims: bool = False):
    """c04: radon-style, the index/floor data and/or the observed rows without dims."""
    county, floor, y = radon_like_data()
    J, N = 50, 1500
    with pm.Model(coords={"county": range(J), "obs_id": range(N)}) as model:
        dims = {"dims": "obs_id"} if data_dims else {}
        idx = pm.Data("county_idx", county, **dims)
        fl = pm.Data("floor", floor, **dims)
        a = pm.Normal("a", pm.Normal("mu_a", 0, 5), pm.HalfNormal("sd_a", 2), dims="county")
        b = pm.Normal("b", 0, 2)
        pm.Normal(
            "y",
            a[idx] + b * fl,
            pm.HalfNormal("sigma", 2),
            observed=y,
            **({"dims": "obs_id"} if obs_dims else {}),
        )
    return model


def pm_minibatch_model():
    """c05: the same data minibatched with pm.Minibatch and total_size, as PyMC's docs teach."""
    county, floor, y = radon_like_data()
    J, N = 50, 1500
    with pm.Model(coords={"county": range(J)}) as model:
        idx, fl, yy = pm.Minibatch(county, floor, y, batch_size=100)
        a = pm.Normal("a", pm.Normal("mu_a", 0, 5), pm.HalfNormal("sd_a", 2), dims="county")
        b = pm.Normal("b", 0, 2)
        pm.Normal("y", a[idx] + b * fl, pm.HalfNormal("sigma", 2), observed=yy, total_size=N)
    return model


def varying_intercept_model(
    county: np.ndarray, floor: np.ndarray, y: np.ndarray, n_counties: int, *, upstairs: bool = False
) -> pm.Model:
    """Radon's varying-intercept model on the given rows, with dims; ``upstairs`` adds the
    Deterministic ``a_upstairs = a + b`` along the counties."""
    with pm.Model(coords={"county": range(n_counties), "obs_id": range(len(y))}) as model:
        idx = pm.Data("county_idx", county, dims="obs_id")
        fl = pm.Data("floor", floor, dims="obs_id")
        mu_a = pm.Normal("mu_a", 0, 5)
        sd_a = pm.HalfNormal("sd_a", 2)
        a = pm.Normal("a", mu_a, sd_a, dims="county")
        b = pm.Normal("b", 0, 2)
        if upstairs:
            pm.Deterministic("a_upstairs", a + b, dims="county")
        pm.Normal(
            "log_radon", a[idx] + b * fl, pm.HalfNormal("sigma", 2), observed=y, dims="obs_id"
        )
    return model


def zero_row_model():
    """c06: radon-style with J=60 counties, N=1200 rows."""
    county, floor, y = radon_like_data(seed=8, J=60, N=1200)
    return varying_intercept_model(county, floor, y, 60)


# c06's new counties: #0 has no rows, #1 these five.
ZERO_ROW_NEW_ROWS = {
    "log_radon": np.array([1.2, 0.8, 1.0, 0.4, 1.1]),
    "floor": np.array([0, 0, 1, 1, 0.0]),
}


def indexed_small_data():
    rng = np.random.default_rng(0)
    J, N = 10, 100
    county = rng.integers(0, J, N)
    y = rng.normal(0, 1, J)[county] + rng.normal(0, 0.5, N)
    return county, y


def indexed_small_model():
    """c07: y ~ N(a[county_idx], sigma), a ~ N(0, 1), 10 counties, 100 rows."""
    county, y = indexed_small_data()
    J, N = 10, 100
    with pm.Model(coords={"county": range(J), "obs_id": range(N)}) as model:
        ci = pm.Data("county_idx", county, dims="obs_id")
        a = pm.Normal("a", 0, 1, dims="county")
        pm.Normal("y", a[ci], pm.HalfNormal("sigma", 1), observed=y, dims="obs_id")
    return model


def crossed_data():
    rng = np.random.default_rng(0)
    A, B, R = 30, 5, 600
    actor = rng.integers(0, A, R)
    block = rng.integers(0, B, R)
    y = rng.normal(0, 1, A)[actor] + rng.normal(0, 0.5, B)[block] + rng.normal(0, 0.5, R)
    return actor, block, y


def crossed_model():
    """c08: y ~ N(z_actor[actor_idx] + z_block[block_idx], sigma), actor x block crossed."""
    actor, block, y = crossed_data()
    A, B, R = 30, 5, 600
    with pm.Model(coords={"actor": range(A), "block": range(B), "obs_id": range(R)}) as model:
        ai = pm.Data("actor_idx", actor, dims="obs_id")
        bi = pm.Data("block_idx", block, dims="obs_id")
        z_actor = pm.Normal("z_actor", 0, 1, dims="actor")
        z_block = pm.Normal("z_block", 0, 1, dims="block")
        pm.Normal(
            "y", z_actor[ai] + z_block[bi], pm.HalfNormal("sigma", 1), observed=y, dims="obs_id"
        )
    return model


# -- variants of the same kinds, written for the tests (not in shared/cases) ---------------------


def unit_covariate_poisson_model():
    """c01's kind with Poisson counts: log rate mu + beta c_n + tau z_n, 4 counts per unit."""
    rng = np.random.default_rng(11)
    N = 400
    c_values = rng.normal(size=N)
    log_rate = 0.5 + 0.5 * c_values + 0.5 * rng.normal(size=N)
    counts = rng.poisson(np.exp(log_rate)[:, None], size=(N, 4))
    with pm.Model(coords={"unit": range(N), "rep": range(4)}) as model:
        c = pm.Data("c", c_values, dims="unit")
        mu = pm.Normal("mu", 0, 2)
        beta = pm.Normal("beta", 0, 1)
        tau = pm.HalfNormal("tau", 1)
        z = pm.Normal("z", 0, 1, dims="unit")
        pm.Poisson(
            "y",
            pm.math.exp(mu + beta * c + tau * z)[:, None],
            observed=counts,
            dims=("unit", "rep"),
        )
    return model


def noncentered_poisson_model():
    """c02's kind: non-centred, Poisson counts, the group effect inline (no Deterministic),
    unbalanced groups."""
    rng = np.random.default_rng(3)
    G = 20
    idx = np.repeat(np.arange(G), rng.integers(2, 12, G))
    counts = rng.poisson(np.exp(1.0 + 0.5 * rng.normal(size=G))[idx])
    with pm.Model(coords={"group": range(G), "obs": range(len(idx))}) as model:
        g = pm.Data("idx", idx, dims="obs")
        mu = pm.Normal("mu", 0, 2)
        s = pm.HalfNormal("s", 1)
        a_raw = pm.Normal("a_raw", 0, 1, dims="group")
        pm.Poisson("y", pm.math.exp((mu + s * a_raw)[g]), observed=counts, dims="obs")
    return model


def unit_prior_mean_data():
    rng = np.random.default_rng(4)
    N = 60
    prior_mean = rng.normal(0, 2, N)
    Y = (prior_mean + rng.normal(0, 0.5, N))[:, None] + 0.8 * rng.normal(size=(N, 3))
    return prior_mean, Y


def unit_prior_mean_model():
    """c03's kind: z_n ~ N(m_n, 0.5) with m a plain length-N array (no pm.Data)."""
    prior_mean, Y = unit_prior_mean_data()
    N = len(prior_mean)
    with pm.Model(coords={"unit": range(N), "rep": range(3)}) as model:
        sigma = pm.HalfNormal("sigma", 1)
        z = pm.Normal("z", prior_mean, 0.5, dims="unit")
        pm.Normal("y", z[:, None], sigma, observed=Y, dims=("unit", "rep"))
    return model


def bernoulli_rows_data(seed: int = 7, J: int = 40, N: int = 1200):
    rng = np.random.default_rng(seed)
    county = rng.integers(0, J, N)
    x = rng.normal(size=N)
    logit = rng.normal(0.0, 1.0, J)[county] + 0.8 * x
    y = rng.binomial(1, 1 / (1 + np.exp(-logit)))
    return county, x, y


def bernoulli_rows_without_dims_model():
    """c04's kind: Bernoulli rows, index/covariate data and observed rows all without dims."""
    county, x, y = bernoulli_rows_data()
    with pm.Model(coords={"county": range(40)}) as model:
        idx = pm.Data("county_idx", county)
        xx = pm.Data("x", x)
        a = pm.Normal("a", pm.Normal("mu_a", 0, 2), pm.HalfNormal("sd_a", 2), dims="county")
        b = pm.Normal("b", 0, 2)
        pm.Bernoulli("y", logit_p=a[idx] + b * xx, observed=y)
    return model


def bernoulli_pm_minibatch_model():
    """c05's kind: the Bernoulli rows minibatched with pm.Minibatch, no dims."""
    county, x, y = bernoulli_rows_data()
    with pm.Model() as model:
        # int32: PyMC refuses the minibatch of an int64 array as Bernoulli data (a Cast node)
        idx, xx, yy = pm.Minibatch(county, x, y.astype(np.int32), batch_size=50)
        a = pm.Normal("a", pm.Normal("mu_a", 0, 2), pm.HalfNormal("sd_a", 2), shape=40)
        b = pm.Normal("b", 0, 2)
        pm.Bernoulli("y", logit_p=a[idx] + b * xx, observed=yy, total_size=len(y))
    return model


def poisson_indexed_model():
    """c07's kind: Poisson counts indexed by county, the index data and the rows without dims."""
    rng = np.random.default_rng(9)
    J, N = 12, 150
    county = rng.integers(0, J, N)
    counts = rng.poisson(np.exp(rng.normal(1.0, 0.5, J))[county])
    with pm.Model(coords={"county": range(J)}) as model:
        ci = pm.Data("county_idx", county)
        mu = pm.Normal("mu", 0, 2)
        a = pm.Normal("a", mu, pm.HalfNormal("sd", 1), dims="county")
        pm.Poisson("y", pm.math.exp(a[ci]), observed=counts)
    return model


def crossed_bernoulli_data():
    rng = np.random.default_rng(12)
    A, B, R = 20, 6, 1200
    actor = rng.integers(0, A, R)
    block = rng.integers(0, B, R)
    logit = 0.3 + rng.normal(0, 1.5, A)[actor] + rng.normal(0, 0.5, B)[block]
    y = rng.binomial(1, 1 / (1 + np.exp(-logit)))
    return actor, block, y


def crossed_bernoulli_model():
    """c08's kind, chimpanzees-like: Bernoulli, hierarchical actor and block effects, non-centred
    block effect."""
    actor, block, y = crossed_bernoulli_data()
    with pm.Model(coords={"actor": range(20), "block": range(6), "obs_id": range(len(y))}) as model:
        ai = pm.Data("actor_idx", actor, dims="obs_id")
        bi = pm.Data("block_idx", block, dims="obs_id")
        alpha = pm.Normal("alpha", 0, 1.5)
        z_actor = pm.Normal("z_actor", alpha, pm.HalfNormal("sd_actor", 2), dims="actor")
        sd_block = pm.HalfNormal("sd_block", 1)
        z_block_raw = pm.Normal("z_block_raw", 0, 1, dims="block")
        z_block = pm.Deterministic("z_block", sd_block * z_block_raw, dims="block")
        pm.Bernoulli("y", logit_p=z_actor[ai] + z_block[bi], observed=y, dims="obs_id")
    return model


# -- c11-c13 and new user models, fitted under the default family (test_default_user_models) -----


def potential_second_index_model():
    """c11: a[idx_obs] in an observed term and a[idx_pot] in a pm.Potential; units 30-44 appear
    only in the Potential."""
    rng = np.random.default_rng(11)
    J = 45
    a_true = rng.normal(0, 1, J)
    idx_obs = rng.integers(0, 30, 300)
    idx_pot = rng.integers(0, J, 200)
    y_obs = a_true[idx_obs] + rng.normal(0, 0.5, idx_obs.size)
    y_pot = a_true[idx_pot] + rng.normal(0, 0.5, idx_pot.size)
    with pm.Model(coords={"unit": np.arange(J)}) as model:
        tau = pm.HalfNormal("tau", 2)
        s = pm.HalfNormal("s", 2)
        a = pm.Normal("a", 0, tau, dims="unit")
        pm.Normal("y_obs", a[idx_obs], s, observed=y_obs)
        pm.Potential("second_term", pm.logp(pm.Normal.dist(a[idx_pot], s), y_pot).sum())
    return model


def zerosum_contrast_model():
    """c12: a ZeroSumNormal group effect and a treatment-coded factor concatenate([0], b)[k]."""
    import pytensor.tensor as pt

    rng = np.random.default_rng(12)
    G, K, n = 30, 3, 500
    g, k = rng.integers(0, G, n), rng.integers(0, K, n)
    eff = rng.normal(0, 0.5, G)
    eff -= eff.mean()
    y = 1.0 + np.array([0.0, 0.4, -0.4])[k] + eff[g] + rng.normal(0, 0.6, n)
    with pm.Model(coords={"grp": np.arange(G), "level": [1, 2], "obs": np.arange(n)}) as model:
        gi, ki = pm.Data("g", g, dims="obs"), pm.Data("k", k, dims="obs")
        e = pm.ZeroSumNormal("e", sigma=pm.HalfNormal("s", 1), dims="grp")
        b = pm.Normal("b", 0, 2, dims="level")
        mu = pm.Normal("mu", 0, 5) + pt.concatenate([pt.zeros(1), b])[ki] + e[gi]
        pm.Normal("y", mu, pm.HalfNormal("sy", 1), observed=y, dims="obs")
    return model


def censored_frailty_model():
    """c13: right-censored Weibull times, pm.Censored with upper=inf for uncensored rows, a
    per-clinic frailty f[clinic_idx]."""
    rng = np.random.default_rng(13)
    C, n = 40, 400
    clinic = rng.integers(0, C, n)
    frailty = rng.normal(0, 0.5, C)
    t = rng.weibull(1.5, n) * np.exp(1.0 + frailty[clinic])
    cap = rng.uniform(1.0, 6.0, n)
    upper = np.where(t > cap, cap, np.inf)
    with pm.Model(coords={"clinic": np.arange(C), "obs": np.arange(n)}) as model:
        ci = pm.Data("clinic_idx", clinic, dims="obs")
        f = pm.Normal("f", 0, pm.HalfNormal("sd_f", 1), dims="clinic")
        scale = pm.math.exp(pm.Normal("b0", 0, 2) + f[ci])
        pm.Censored(
            "time",
            pm.Weibull.dist(alpha=pm.HalfNormal("shape", 2), beta=scale),
            lower=None,
            upper=upper,
            observed=np.minimum(t, cap),
            dims="obs",
        )
    return model


def bambi_named_poisson_model():
    """What Bambi builds for ``y ~ x + (1|g)``, family poisson (its names, non-centred group
    effect, an unnamed index array), written by hand: Bambi is not a dependency."""
    rng = np.random.default_rng(31)
    G = 25
    sizes = rng.integers(2, 40, G)
    g = np.repeat(np.arange(G), sizes)
    x = rng.normal(size=g.size)
    y = rng.poisson(np.exp(0.5 + 0.4 * x + rng.normal(0, 0.6, G)[g]))
    with pm.Model(coords={"g__factor_dim": [f"g{i:02d}" for i in range(G)]}) as model:
        intercept = pm.Normal("Intercept", 0, 2.5)
        slope = pm.Normal("x", 0, 2.5)
        sigma = pm.HalfNormal("1|g_sigma", 2.5)
        offset = pm.Normal("1|g_offset", 0, 1, dims="g__factor_dim")
        effect = pm.Deterministic("1|g", sigma * offset, dims="g__factor_dim")
        pm.Poisson("y", pm.math.exp(intercept + slope * x + effect[g]), observed=y)
    return model


def gamma_rows_without_dims_model():
    """No dims at all, plain numpy arrays: a Gamma likelihood with a log link, a[g] per group."""
    rng = np.random.default_rng(32)
    G = 30
    g = rng.integers(0, G, 400)
    x = rng.normal(size=400)
    mean = np.exp(1.0 + 0.3 * x + rng.normal(0, 0.5, G)[g])
    y = rng.gamma(3.0, mean / 3.0)
    with pm.Model() as model:
        m0 = pm.Normal("m0", 0, 2)
        b = pm.Normal("b", 0, 1)
        a = pm.Normal("a", 0, pm.HalfNormal("sd", 1), shape=G)
        shape = pm.HalfNormal("shape", 5)
        pm.Gamma("y", alpha=shape, beta=shape / pm.math.exp(m0 + b * x + a[g]), observed=y)
    return model


def unbalanced_binomial_data():
    """35 groups of 1-6 rows and 5 of 100-300 rows, 5-19 trials a row."""
    rng = np.random.default_rng(36)
    G = 40
    sizes = np.concatenate([rng.integers(1, 7, 35), rng.integers(100, 301, 5)])
    eff = rng.normal(0, 0.8, G)
    trials = rng.integers(5, 20, sizes.sum())
    g = np.repeat(np.arange(G), sizes)
    k = rng.binomial(trials, 1 / (1 + np.exp(-(-0.5 + eff[g]))))
    return G, g, trials, k


def unbalanced_binomial_model(centred: bool = True):
    """Binomial logit, a[g] ~ N(mu, sd) centred or mu + sd z non-centred (a Deterministic)."""
    G, g, trials, k = unbalanced_binomial_data()
    with pm.Model(coords={"grp": range(G), "obs": range(g.size)}) as model:
        gi = pm.Data("gi", g, dims="obs")
        mu = pm.Normal("mu", 0, 2)
        sd = pm.HalfNormal("sd", 1)
        if centred:
            a = pm.Normal("a", mu, sd, dims="grp")
        else:
            a = pm.Deterministic("a", mu + sd * pm.Normal("z", 0, 1, dims="grp"), dims="grp")
        pm.Binomial("k", n=trials, logit_p=a[gi], observed=k, dims="obs")
    return model
