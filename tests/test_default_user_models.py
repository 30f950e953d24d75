"""User models under the *default* family (``pm.fit(method="amortized")`` with no ``family=``).

The default is the conditional family q(θ) ∏ q(z_n | θ, x_n) where the analysis amortizes a plate,
the encoder family (with the reason in the summary) where it does not, and the encoder family with
a DivergenceWarning where the conditional fit diverges. These tests fit the shared failing cases
(``shared/cases/c*.py``) and models written as users write them (Bambi's names, no dims, a Gamma
likelihood, unbalanced Binomial groups) under that default, against NUTS or a closed form: no
crash, no refusal of what ADVI fits, no silent wrong answer. ``test_user_models.py`` pins the
encoder family on the c01-c08 cases; this file is the default's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytest
import user_model_cases as cases
from test_user_models import REFERENCE as ENCODER_CASES_REFERENCE

import pymc_amortize  # noqa: F401  (registers method="amortized")
from pymc_amortize import AmortizedVI

# Printed by (PyMC's NUTS, draws=1000, tune=1000, chains=2, random_seed=0):
#   source scripts/env.sh && cd tests && PYTHONPATH=.. python test_default_user_models.py
# fmt: off
REFERENCE = {
 'bambi': {'1|g': {'mean': [-0.4408, 0.7949, -0.2432, -0.2182, 0.3605, -0.0209, 1.2308, -0.1676,
                            0.3072, -0.4033, 0.7769, 0.3317, -0.6367, -0.1665, -0.5193, 0.0756,
                            -0.1641, 0.2383, -0.4709, 0.0122, -0.2552, 0.6599, -0.1062, -1.1352,
                            0.3052],
                   'sd': [0.2335, 0.1539, 0.2212, 0.3653, 0.1828, 0.1849, 0.1956, 0.2022, 0.2073,
                          0.2087, 0.1578, 0.3167, 0.3326, 0.3723, 0.1963, 0.2493, 0.1839, 0.161,
                          0.2234, 0.2356, 0.2523, 0.1583, 0.1757, 0.2147, 0.2615]},
           '1|g_sigma': {'mean': 0.5862, 'sd': 0.1038},
           'Intercept': {'mean': 0.4142, 'sd': 0.1267},
           'divergences': 0,
           'x': {'mean': 0.5028, 'sd': 0.0328}},
 'binomial': {'a': {'mean': [-0.5941, -0.6379, 0.1073, -0.1615, -1.1237, -0.2468, -0.301, -1.2473,
                             -1.0057, -0.0712, -0.079, 0.284, -0.5107, 0.2026, -1.0667, -0.6345,
                             -0.7839, -0.2996, -0.072, -1.0089, 0.7209, -0.4343, -1.2266, -0.2878,
                             -0.311, -0.7484, -1.3418, -1.1937, -0.1316, 0.2415, -0.0363, -0.9573,
                             0.6143, -0.6803, -0.2969, -0.4651, -0.7368, -1.4204, 1.2699, -0.5526],
                    'sd': [0.2867, 0.3537, 0.2727, 0.2865, 0.3642, 0.2488, 0.2009, 0.4093, 0.223,
                           0.2145, 0.2879, 0.2358, 0.2468, 0.3194, 0.3401, 0.2306, 0.4004, 0.3673,
                           0.4081, 0.5461, 0.2724, 0.4335, 0.5615, 0.3397, 0.4917, 0.3322, 0.2661,
                           0.2868, 0.2846, 0.3252, 0.3114, 0.4221, 0.342, 0.3764, 0.3934, 0.0427,
                           0.0402, 0.0594, 0.0615, 0.037]},
              'divergences': 0,
              'mu': {'mean': -0.4288, 'sd': 0.119},
              'sd': {'mean': 0.6909, 'sd': 0.1015}},
 'c11': {'a': {'mean': [-0.2033, 1.4044, 1.295, -0.4443, -0.4869, -0.5899, 0.6717, -0.187, 0.7023,
                        -1.9817, 1.4685, 0.1499, 0.7304, 0.031, -0.3514, 0.6958, 0.9193, -0.2301,
                        -0.2405, 0.7926, -0.7533, -1.6993, 0.4328, -0.8735, -2.0422, -0.6326,
                        -0.4522, -0.8612, -1.7025, 0.1843, 0.8573, -0.174, -0.7174, 0.1297, 0.2627,
                        -0.6084, 1.0073, 0.5149, -0.0853, -0.7097, 0.331, 0.3171, 1.5983, -1.307,
                        -0.4171],
               'sd': [0.1338, 0.1307, 0.1041, 0.1274, 0.1214, 0.1162, 0.1523, 0.1325, 0.1259,
                      0.1253, 0.1411, 0.1518, 0.1438, 0.161, 0.1237, 0.1668, 0.1227, 0.1523, 0.1311,
                      0.1306, 0.1112, 0.1772, 0.1112, 0.1292, 0.1338, 0.1587, 0.1288, 0.1404,
                      0.1692, 0.1531, 0.3433, 0.2186, 0.2215, 0.2224, 0.2451, 0.2845, 0.2327,
                      0.2411, 0.1988, 0.1671, 0.2472, 0.2023, 0.288, 0.1976, 0.4353]},
         'divergences': 0,
         's': {'mean': 0.5085, 'sd': 0.0171},
         'tau': {'mean': 0.9283, 'sd': 0.1027}},
 'c12': {'b': {'mean': [0.312, -0.5479], 'sd': [0.0689, 0.0686]},
         'divergences': 0,
         'e': {'mean': [0.2562, -0.0348, -0.0911, -0.8547, 0.3187, -0.1471, 0.5852, -0.0803,
                        -0.0236, -0.146, -0.2878, 0.4199, -0.098, 0.0493, -0.0277, 0.0197, 0.3445,
                        0.0195, 0.5305, -0.1737, 0.28, -0.2824, -0.0567, -0.062, 0.416, 0.0483,
                        0.2814, -0.1747, -0.0977, -0.9309],
               'sd': [0.1561, 0.1416, 0.1414, 0.1244, 0.1573, 0.1199, 0.1423, 0.1322, 0.1329,
                      0.1388, 0.1631, 0.1797, 0.1357, 0.1489, 0.1203, 0.1564, 0.142, 0.1507, 0.148,
                      0.1632, 0.1169, 0.1589, 0.1316, 0.1161, 0.1351, 0.1491, 0.108, 0.1298, 0.1348,
                      0.1414]},
         'mu': {'mean': 1.086, 'sd': 0.05},
         's': {'mean': 0.384, 'sd': 0.0616},
         'sy': {'mean': 0.6115, 'sd': 0.0206}},
 'c13': {'b0': {'mean': 1.0072, 'sd': 0.119},
         'divergences': 0,
         'f': {'mean': [0.3048, 1.5262, 0.1294, -0.586, -0.3252, 0.6665, -0.4669, -1.0392, -0.9188,
                        -0.3396, 0.353, 0.5572, -0.135, -0.6902, -0.1086, 0.8122, -0.2268, -0.3546,
                        -0.326, 0.9856, -1.2729, 0.1299, -0.447, 0.0202, -0.2003, 0.2527, 0.6727,
                        0.3196, 0.5616, -0.6702, 0.5664, -0.3599, 0.3576, 0.4454, 0.4749, 0.9993,
                        -0.7505, -0.362, -0.3115, -0.3147],
               'sd': [0.2893, 0.4282, 0.2763, 0.2485, 0.263, 0.3615, 0.2615, 0.319, 0.3052, 0.3889,
                      0.2882, 0.295, 0.2502, 0.27, 0.2792, 0.315, 0.2688, 0.2643, 0.245, 0.3477,
                      0.2643, 0.2845, 0.2453, 0.2546, 0.2656, 0.2891, 0.3639, 0.2748, 0.3305,
                      0.2052, 0.2953, 0.2527, 0.2514, 0.3195, 0.2972, 0.3387, 0.2346, 0.2156,
                      0.2359, 0.2593]},
         'sd_f': {'mean': 0.6829, 'sd': 0.0991},
         'shape': {'mean': 1.4826, 'sd': 0.0757}},
 'gamma': {'a': {'mean': [0.4274, -0.7931, -0.4822, -0.2316, 1.0656, -0.1686, 0.0747, -0.5975,
                          0.3426, 0.3675, -0.1181, 0.5073, 1.5295, 0.7304, -0.3291, 0.1748, -0.5949,
                          -0.0013, -0.3964, -0.3786, -0.954, 0.6939, 0.3544, -0.9125, 0.447, 0.2921,
                          -0.7893, 0.6393, -1.3788, 0.4046],
                 'sd': [0.2, 0.1925, 0.2014, 0.2429, 0.1927, 0.2134, 0.2091, 0.2105, 0.2115, 0.1819,
                        0.1924, 0.2236, 0.1957, 0.1947, 0.2224, 0.1997, 0.1988, 0.1988, 0.2189,
                        0.2505, 0.2234, 0.2016, 0.2027, 0.2411, 0.2123, 0.2193, 0.2659, 0.1913,
                        0.2611, 0.2007]},
           'b': {'mean': 0.2508, 'sd': 0.0345},
           'divergences': 0,
           'm0': {'mean': 0.9377, 'sd': 0.1342},
           'sd': {'mean': 0.7025, 'sd': 0.1021},
           'shape': {'mean': 2.6678, 'sd': 0.1856}}}
# fmt: on


def fit(model, n=20_000, **options):
    """The default family, as a user writes it (the convergence stop ends it early); every
    warning recorded."""
    options.setdefault("random_seed", 0)
    with model, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        approx = pm.fit(
            n,
            method="amortized",
            obj_optimizer=pm.adam(learning_rate=1e-2),
            progressbar=False,
            **options,
        )
    for w in caught:
        print(f"warning {w.category.__name__}: {str(w.message)[:200]}")
    return approx, [w.category.__name__ for w in caught]


def posterior(approx):
    return approx.sample(1000, random_seed=0).posterior


def mean(post, name):
    return post[name].mean(("chain", "draw")).values


def sd_units(estimate, reference):
    """(RMS, max) over groups of |estimate - NUTS mean| / NUTS sd."""
    z = (np.asarray(estimate) - np.array(reference["mean"])) / np.array(reference["sd"])
    return float(np.sqrt((z**2).mean())), float(np.abs(z).max())


def global_z(post, ref, name):
    got = float(post[name].mean())
    z = (got - ref[name]["mean"]) / ref[name]["sd"]
    print(f"{name}: {got:.4f} (NUTS {ref[name]['mean']:.4f} ± {ref[name]['sd']:.4f}, z {z:+.2f})")
    return z


def family_lines(approx):
    return [line for line in approx.settings["analysis"].splitlines() if "local family" in line]


def assert_groups_close(post, ref, name, rms_tol, max_tol):
    rms, worst = sd_units(mean(post, name), ref[name])
    print(f"{name}: RMS {rms:.3f}, max {worst:.3f} NUTS sd")
    assert rms < rms_tol and worst < max_tol, (rms, worst)


def ar_path_model():
    """c10: a latent AR(1) path over 400 days with Poisson counts."""
    rng = np.random.default_rng(10)
    x = np.zeros(400)
    for t in range(1, 400):
        x[t] = 0.9 * x[t - 1] + rng.normal(0, 0.3)
    with pm.Model(coords={"day": np.arange(400)}) as model:
        rho, sd = pm.Uniform("rho", -1, 1), pm.HalfNormal("sd", 1)
        path = pm.AR("path", rho=[rho], sigma=sd, init_dist=pm.Normal.dist(0, 1), dims="day")
        pm.Poisson("counts", pm.math.exp(1.0 + path), observed=rng.poisson(np.exp(1.0 + x)))
    return model


@pytest.mark.parametrize(
    ("build", "latent", "reason"),
    [
        (ar_path_model, "path", "kept mean-field path [cannot close]: its prior (AR)"),
        (cases.potential_second_index_model, "a", "'second_term' through"),
        (cases.zerosum_contrast_model, "e", "kept mean-field e [cannot close]"),
    ],
    ids=["c10_ar_path", "c11_potential_second_index", "c12_zerosum"],
)
def test_coupled_cases_are_mean_field_under_the_default_with_the_reason(build, latent, reason):
    """c10-c12: where no plate holds a latent, the default family has nothing to condition: the
    latent is in ADVI's own mean-field group, and the summary says why (never amortized
    silently, never refused)."""
    inference = AmortizedVI(model=build(), random_seed=0)
    approx = inference.approx
    assert not approx.conditional_plates and approx.local_family is None
    assert [type(group).__name__ for group in approx.groups] == ["MeanFieldGroup"]
    names = [name for name, *_ in approx.groups[0].ordering.values()]
    assert any(name == latent or name.startswith(f"{latent}_") for name in names), names
    assert reason in approx.settings["analysis"]


# -- the shared cases under the default --------------------------------------------------------


@pytest.mark.slow
def test_c01_unit_covariate_default():
    """c01 as written: the conditional family reads c through the model's own log density, so
    beta comes out near NUTS's 0.54 (the encoder without c among its inputs gave 0.07)."""
    ref = ENCODER_CASES_REFERENCE["c01"]
    approx, _ = fit(cases.unit_covariate_model(), 3000, batch_size=100, random_seed=1)
    assert "plate 'unit': conditional" in "\n".join(family_lines(approx))
    post = posterior(approx)
    for name, tol in (("beta", 0.05), ("mu", 0.05), ("tau", 0.05), ("sigma", 0.02)):
        assert abs(float(post[name].mean()) - ref[name]["mean"]) < tol, name


@pytest.mark.slow
def test_c06_zero_row_county_default():
    """c06 as written: a new county with no rows is its prior given q(θ) (NUTS 0.99 ± 0.53, the
    pooled encoder's extrapolation 0.74 ± 0.21); one with 5 rows matches NUTS's 1.12 ± 0.27."""
    ref = ENCODER_CASES_REFERENCE["c06"]
    approx, _ = fit(cases.zero_row_model(), 3000, batch_size=20)
    new = cases.ZERO_ROW_NEW_ROWS | {"county_idx": np.ones(5, dtype=np.int64)}
    # As written in the case (no units=) this raises an AmortizationError asking for units=2.
    q = approx.encode(new, units=2, prior_draws=20_000)["a"]
    print("new counties:", q.mean, q.sd)
    assert q.prior_only.tolist() == [True, False]
    for i, key in enumerate(("new_county_no_rows", "new_county_5_rows")):
        assert abs(q.mean[i] - ref[key]["mean"]) < 0.15 * ref[key]["sd"], key
        assert abs(q.sd[i] / ref[key]["sd"] - 1) < 0.15, key


@pytest.mark.slow
def test_c11_potential_second_index_default():
    """c11: a latent read through a second index by a pm.Potential is fitted mean-field (the
    analysis finds no plate), as ADVI: s and the effects at NUTS's (the old plate built from
    idx_obs alone gave s 0.58-0.81 against 0.51)."""
    ref = REFERENCE["c11"]
    approx, _ = fit(cases.potential_second_index_model())
    assert approx.settings["analysis"].count("local family") == 0
    post = posterior(approx)
    assert abs(global_z(post, ref, "s")) < 1.0
    assert abs(global_z(post, ref, "tau")) < 1.0
    assert_groups_close(post, ref, "a", 0.3, 0.7)  # measured 0.18, 0.40


@pytest.mark.slow
def test_c12_zerosum_and_contrast_default():
    """c12: ZeroSumNormal and concatenate([0], b)[k] fit (mean-field, with the reason), never
    refused; b and e at NUTS's."""
    ref = REFERENCE["c12"]
    approx, _ = fit(cases.zerosum_contrast_model(), 10_000)
    post = posterior(approx)
    assert_groups_close(post, ref, "b", 0.5, 0.75)
    assert_groups_close(post, ref, "e", 0.3, 0.7)  # measured 0.18, 0.37
    for name in ("mu", "sy"):
        assert abs(global_z(post, ref, name)) < 1.0


@pytest.mark.slow
def test_c13_censored_frailty_default():
    """c13: pm.Censored with upper=inf fits under the default (the bounds are not measurements);
    the frailties and sd_f at NUTS's."""
    ref = REFERENCE["c13"]
    approx, _ = fit(cases.censored_frailty_model(), 10_000)
    print("\n".join(family_lines(approx)))
    post = posterior(approx)
    assert_groups_close(post, ref, "f", 0.2, 0.4)  # measured 0.08, 0.16
    for name in ("sd_f", "b0", "shape"):
        assert abs(global_z(post, ref, name)) < 0.5  # measured -0.14, -0.21, +0.09


# -- new user models under the default ---------------------------------------------------------


@pytest.mark.slow
def test_bambi_names_fit_and_sample_default():
    """Bambi's names ('1|g_sigma', '1|g_offset'): the conditional sampler built placeholders with
    pt.tensor(name), which parses '1|g_sigma_log___draws' as a dtype and raised ValueError from
    sample(). Now it samples, and the group effects match NUTS."""
    ref = REFERENCE["bambi"]
    approx, caught = fit(cases.bambi_named_poisson_model())
    assert "conditional q(z_n | θ, x_n)" in "\n".join(family_lines(approx))
    assert "DivergenceWarning" not in caught
    post = posterior(approx)
    assert_groups_close(post, ref, "1|g", 0.2, 0.4)  # measured 0.06, 0.12; ADVI 0.21, 0.46
    for name in ("Intercept", "x", "1|g_sigma"):
        assert abs(global_z(post, ref, name)) < 0.75


@pytest.mark.slow
def test_gamma_rows_without_dims_default():
    """No dims, plain arrays, a Gamma likelihood: conditional, group means within a tenth of a
    NUTS sd (ADVI at 30,000 steps: RMS 0.14, max 0.42)."""
    ref = REFERENCE["gamma"]
    approx, caught = fit(cases.gamma_rows_without_dims_model())
    assert "conditional q(z_n | θ, x_n)" in "\n".join(family_lines(approx))
    assert "DivergenceWarning" not in caught
    post = posterior(approx)
    assert_groups_close(post, ref, "a", 0.15, 0.3)  # measured 0.04, 0.12
    for name in ("m0", "b", "sd", "shape"):
        assert abs(global_z(post, ref, name)) < 0.75


@pytest.mark.slow
@pytest.mark.parametrize("centred", [True, False], ids=["centred", "non_centred"])
def test_unbalanced_binomial_default(centred):
    """Binomial logit, 35 groups of 1-6 rows and 5 of 100-300: group effects at NUTS's, centred
    or non-centred (same posterior of a = mu + sd z). ADVI at 30,000 steps: RMS 0.15-0.16 NUTS
    sd, max 0.43-0.62."""
    ref = REFERENCE["binomial"]
    approx, caught = fit(cases.unbalanced_binomial_model(centred))
    print("\n".join(family_lines(approx)), caught)
    post = posterior(approx)
    assert_groups_close(post, ref, "a", 0.15, 0.3)  # measured 0.03, 0.06 (non-centred 0.07)
    for name in ("mu", "sd"):
        assert abs(global_z(post, ref, name)) < 1.0


def _nuts_references():
    """The REFERENCE dict: NUTS moments of each model's globals and group effects."""
    models = {
        "c11": (cases.potential_second_index_model, ["tau", "s"], ["a"]),
        "c12": (cases.zerosum_contrast_model, ["mu", "s", "sy"], ["b", "e"]),
        "c13": (cases.censored_frailty_model, ["b0", "sd_f", "shape"], ["f"]),
        "bambi": (cases.bambi_named_poisson_model, ["Intercept", "x", "1|g_sigma"], ["1|g"]),
        "gamma": (cases.gamma_rows_without_dims_model, ["m0", "b", "sd", "shape"], ["a"]),
        "binomial": (lambda: cases.unbalanced_binomial_model(True), ["mu", "sd"], ["a"]),
    }
    out = {}
    for key, (build, globals_, groups) in models.items():
        with build():
            idata = pm.sample(1000, tune=1000, chains=2, cores=1, random_seed=0, progressbar=False)
        post = idata.posterior
        out[key] = {
            name: {
                "mean": np.round(post[name].mean(("chain", "draw")).values, 4).tolist(),
                "sd": np.round(post[name].std(("chain", "draw")).values, 4).tolist(),
            }
            for name in [*globals_, *groups]
        }
        out[key]["divergences"] = int(idata.sample_stats["diverging"].sum())
    return out


if __name__ == "__main__":
    import pprint

    pprint.pprint(_nuts_references(), width=100, compact=True)
