"""User models the package mishandles (``shared/cases/c0*.py``), fitted as users write them.

One test per kind of fault, each on the case's exact model and data (``user_model_cases.py``) plus
a variant of the same kind (another likelihood, dims or not, pm.Data or a plain array, centred or
non-centred). All use the public ``pm.fit(..., method="amortized")`` with no ``local=``: the package
must find the local latents and their encoder inputs itself. Posterior numbers are compared with
NUTS (``REFERENCE``); tolerances are set so that the known-wrong behaviour fails (c01's beta of
0.07 against 0.54) while a correct amortized fit at this step budget passes (VI underestimates
sds, so the comparisons are of means, in units of NUTS's posterior sd where groups are compared).
"""

import math

import numpy as np
import pymc as pm
import pytest
import user_model_cases as cases
from scipy import stats

from pymc_amortize import AmortizationError, load_approximation, psis_diagnostic, save_approximation

# Printed by (PyMC's NUTS, draws=1000, tune=1000, chains=2, random_seed=0; about a minute):
#   source scripts/env.sh && PYTHONPATH=. python -m benchmarks.case_references
# c01..c08 are the shared cases (c04 also holds c05's model and data), v01..v08 this file's variants.
# fmt: off
REFERENCE = {'c01': {'mu': {'mean': 1.0591, 'sd': 0.028},
         'beta': {'mean': 0.5435, 'sd': 0.027},
         'tau': {'mean': 0.8183, 'sd': 0.0201},
         'sigma': {'mean': 0.6064, 'sd': 0.0069},
         'z': {'mean_of_means': -0.0056, 'sd_of_means': 0.9484, 'mean_sd': 0.3179}},
 'c02': {'mu': {'mean': 0.0655, 'sd': 0.0905},
         's': {'mean': 0.181, 'sd': 0.1174},
         'a': {'mean': [0.0622, 0.07, -0.0842, 0.0474, 0.1092, -0.0063, 0.0334, 0.1192, 0.1329,
                        0.2511, 0.0041, 0.0393, 0.0479, 0.0918, 0.1431, 0.085, -0.0486, 0.1662,
                        0.0693, -0.0157, 0.0962, -0.0498, 0.063, 0.1551, 0.0642, -0.0572, 0.0789,
                        0.1306, 0.1113, -0.0178],
               'sd': [0.1949, 0.2069, 0.2321, 0.1937, 0.2049, 0.1984, 0.1851, 0.2049, 0.1962,
                      0.2677, 0.1951, 0.1883, 0.1935, 0.1988, 0.203, 0.1882, 0.2242, 0.2134, 0.1926,
                      0.207, 0.1973, 0.2289, 0.196, 0.2069, 0.1954, 0.2279, 0.1894, 0.1956, 0.1936,
                      0.2106]},
         'a_raw': {'mean': [-0.009, 0.0269, -0.6344, -0.0652, 0.1851, -0.3001, -0.1319, 0.2213,
                            0.292, 0.7864, -0.2769, -0.1043, -0.0753, 0.1173, 0.3386, 0.0876,
                            -0.4791, 0.4119, 0.0183, -0.3303, 0.1212, -0.496, -0.0199, 0.3881,
                            0.005, -0.5239, 0.0575, 0.2967, 0.1979, -0.3595],
                   'sd': [0.9046, 0.9464, 0.9836, 0.9183, 0.9539, 0.9403, 0.8997, 0.8815, 0.9456,
                          1.0444, 0.9204, 0.9108, 0.9143, 0.938, 0.9117, 0.9119, 1.0142, 0.9563,
                          0.9211, 0.9379, 0.9155, 0.9627, 0.9075, 0.9091, 0.9184, 0.9763, 0.8887,
                          0.8827, 0.9352, 0.9868]}},
 'c03': {'p_word_mean': [0.1181, 0.1209, 0.1009, 0.0886, 0.0988, 0.1041, 0.0981, 0.0988, 0.0814,
                         0.0903],
         'p_doc_spread': 0.0126,
         'loglik': {'mean': -684.971, 'sd': 8.1586}},
 'c04': {'mu_a': {'mean': 0.9696, 'sd': 0.0822},
         'sd_a': {'mean': 0.5661, 'sd': 0.0638},
         'b': {'mean': -0.5734, 'sd': 0.0405},
         'sigma': {'mean': 0.7047, 'sd': 0.0131},
         'a': {'mean': [0.373, 1.7796, 1.4305, 1.1636, 1.5602, 0.6428, 1.1401, 0.8666, 0.5427,
                        0.3949, 0.9755, 0.1806, 1.3606, 1.2515, 0.9088, 1.2186, 0.2244, 1.0018,
                        1.4231, 1.1586, 1.5534, 1.0784, 2.1062, 1.335, 1.3693, 1.3155, 0.5743,
                        0.5208, 1.4712, 0.5259, 0.6524, 1.5412, 0.806, 0.5107, 0.28, 0.3666, 1.9419,
                        1.3085, 1.3274, -0.0845, -0.152, 0.4445, 1.4534, 1.4166, 0.1031, 0.2891,
                        1.3153, 1.0317, 1.1182, 1.373],
               'sd': [0.1118, 0.1208, 0.1151, 0.1244, 0.1509, 0.1074, 0.1451, 0.1179, 0.1475,
                      0.1248, 0.1246, 0.124, 0.1135, 0.1513, 0.1257, 0.1241, 0.1326, 0.1185, 0.1258,
                      0.1246, 0.121, 0.1191, 0.1135, 0.1325, 0.1125, 0.1279, 0.1297, 0.1189, 0.1102,
                      0.1343, 0.1321, 0.1703, 0.1435, 0.1194, 0.1324, 0.1362, 0.1171, 0.1348, 0.148,
                      0.1093, 0.1313, 0.1161, 0.1227, 0.1654, 0.1218, 0.1634, 0.1239, 0.114, 0.1363,
                      0.1354]}},
 'c06': {'mu_a': {'mean': 0.9889, 'sd': 0.0708},
         'sd_a': {'mean': 0.5207, 'sd': 0.0516},
         'b': {'mean': -0.6896, 'sd': 0.0463},
         'sigma': {'mean': 0.7148, 'sd': 0.0152},
         'a': {'mean_of_means': 0.9897, 'sd_of_means': 0.4832},
         'new_county_no_rows': {'mean': 0.9889, 'sd': 0.5281},
         'new_county_5_rows': {'mean': 1.1237, 'sd': 0.2723}},
 'c07': {'sigma': {'mean': 0.5009, 'sd': 0.0377},
         'a': {'mean': [0.5634, -1.0951, -0.293, 0.6261, -1.2908, 0.3114, 0.3635, 0.6248, -1.3198,
                        -0.2277],
               'sd': [0.1356, 0.2331, 0.1869, 0.142, 0.1977, 0.1385, 0.1314, 0.1573, 0.1402,
                      0.1852]}},
 'c08': {'sigma': {'mean': 0.4758, 'sd': 0.014},
         'z_actor': {'mean': [0.0443, -0.6943, -0.6124, 0.5026, -0.8648, 0.8216, -1.4761, -0.2979,
                              0.1543, -1.1413, 0.8012, 0.2058, -0.9877, -1.2313, -1.3936, 0.336,
                              -0.9429, -1.0762, -0.0934, 2.7181, 0.4181, 0.9315, 0.4167, 0.8829,
                              -1.0767, 0.0623, 0.4037, -0.0106, 0.0939, -0.3357],
                     'sd': [0.1839, 0.1793, 0.1822, 0.1916, 0.1956, 0.1872, 0.2029, 0.2049, 0.1816,
                            0.1893, 0.2009, 0.1906, 0.1769, 0.2038, 0.1872, 0.1807, 0.1894, 0.1826,
                            0.1946, 0.187, 0.1818, 0.1853, 0.1831, 0.1915, 0.1847, 0.1831, 0.1855,
                            0.1807, 0.1815, 0.1833]},
         'z_block': {'mean': [-0.2754, -0.592, -1.4081, -0.8693, -0.015],
                     'sd': [0.163, 0.1585, 0.16, 0.1595, 0.1614]}},
 'v01': {'mu': {'mean': 0.4773, 'sd': 0.0355},
         'beta': {'mean': 0.5376, 'sd': 0.0365},
         'tau': {'mean': 0.5409, 'sd': 0.03}},
 'v02': {'mu': {'mean': 1.1028, 'sd': 0.1116},
         's': {'mean': 0.4003, 'sd': 0.0979},
         'a_raw': {'mean': [0.4209, -0.6976, 0.1002, -0.9663, -0.7335, -0.5909, 0.0198, 0.3858,
                            0.822, -0.2581, -0.1804, 1.7035, -0.1277, -0.8475, -0.6464, 0.0966,
                            1.5707, -0.2912, -0.6757, 0.9589],
                   'sd': [0.4562, 0.7684, 0.6751, 0.6995, 0.6999, 0.5285, 0.4816, 0.5155, 0.6738,
                          0.7832, 0.6135, 0.5248, 0.5123, 0.6197, 0.6357, 0.6999, 0.4914, 0.5266,
                          0.754, 0.6281]},
         'a': {'mean': [1.2674, 0.823, 1.1444, 0.7202, 0.8109, 0.8774, 1.1127, 1.2547, 1.4302,
                        1.0049, 1.0343, 1.7623, 1.0549, 0.7744, 0.8507, 1.1434, 1.7112, 0.9924,
                        0.8302, 1.4815],
               'sd': [0.1502, 0.3158, 0.2554, 0.2816, 0.2876, 0.1811, 0.163, 0.1796, 0.2584, 0.3078,
                      0.2292, 0.1615, 0.1837, 0.2314, 0.2484, 0.2586, 0.1483, 0.1819, 0.3154,
                      0.232]}},
 'v03': {'sigma': {'mean': 0.8115, 'sd': 0.0495},
         'z': {'mean': [-0.8639, 0.466, 4.0873, 1.5449, -3.0622, -0.5921, -1.5138, 0.9303, -3.5398,
                        0.1968, 1.1448, 3.0344, 0.3388, 1.3028, -2.6845, 4.3348, -3.8879, 2.345,
                        -0.7464, -2.2206, -1.4578, -1.556, 1.0433, 0.3154, 2.4852, -3.1412, -0.2246,
                        -1.7223, 0.9572, -4.9776, -0.8064, 0.4416, -2.8271, 2.4032, 0.5753, 1.9385,
                        2.0238, -1.8367, -1.233, -0.8003, 1.7425, 1.8072, -1.0017, -0.744, -1.0549,
                        -0.9294, -0.3511, -0.0184, 3.981, -0.6462, -0.7362, 1.0343, -1.5053,
                        -0.7567, 0.1499, 1.8697, -2.6983, 3.1671, -0.4546, -0.1631],
               'sd': [0.3242, 0.3447, 0.3445, 0.3497, 0.3292, 0.3586, 0.3286, 0.336, 0.3331, 0.3578,
                      0.3399, 0.3505, 0.348, 0.3409, 0.3269, 0.3357, 0.3442, 0.3439, 0.3386, 0.3301,
                      0.3321, 0.3275, 0.3519, 0.3476, 0.3376, 0.3466, 0.3372, 0.3481, 0.3503,
                      0.3471, 0.3279, 0.3427, 0.3209, 0.3438, 0.3511, 0.3385, 0.3401, 0.3315,
                      0.3421, 0.3482, 0.3574, 0.344, 0.3439, 0.3417, 0.3569, 0.3382, 0.337, 0.3332,
                      0.3308, 0.3666, 0.3463, 0.3464, 0.3441, 0.3407, 0.352, 0.3314, 0.3388, 0.3608,
                      0.3418, 0.3463]}},
 'v04': {'mu_a': {'mean': -0.0412, 'sd': 0.1626},
         'sd_a': {'mean': 0.9617, 'sd': 0.1489},
         'b': {'mean': 0.7989, 'sd': 0.0744},
         'a': {'mean': [1.1592, -0.7442, -0.6059, -1.2022, -1.1513, -0.4319, -0.4367, 0.4908,
                        -1.4441, 0.5116, -1.3076, -0.4396, 0.6227, -0.069, -1.4859, 1.3337, -0.601,
                        -0.0908, 0.407, 1.5685, -0.4682, 0.5548, -0.9274, 0.6483, 0.0172, -0.2839,
                        0.9535, -0.2742, -0.1378, 1.4201, 0.2507, -0.4843, 0.8771, -1.7503, 0.7816,
                        0.6388, -0.2515, -0.4776, 0.3528, 0.7007],
               'sd': [0.4571, 0.404, 0.3536, 0.4515, 0.4519, 0.3651, 0.3561, 0.3288, 0.4753, 0.3616,
                      0.4575, 0.3772, 0.3474, 0.3888, 0.5607, 0.3559, 0.4001, 0.3723, 0.3475,
                      0.4715, 0.3658, 0.4298, 0.4431, 0.3505, 0.443, 0.3423, 0.4024, 0.38, 0.3558,
                      0.4644, 0.3058, 0.43, 0.3678, 0.3818, 0.398, 0.3608, 0.3522, 0.3938, 0.3369,
                      0.4517]}},
 'v07': {'mu': {'mean': 0.9987, 'sd': 0.1746},
         'sd': {'mean': 0.549, 'sd': 0.152},
         'a': {'mean': [0.9853, 1.1237, 0.2653, 0.655, 1.0568, 1.4196, 0.7338, 1.2299, 1.2689, 0.9,
                        1.9732, 0.4142],
               'sd': [0.1403, 0.1596, 0.252, 0.1714, 0.2303, 0.1745, 0.2214, 0.1217, 0.1375, 0.1725,
                      0.1001, 0.198]}},
 'v08': {'alpha': {'mean': 0.1359, 'sd': 0.4729},
         'sd_actor': {'mean': 1.8453, 'sd': 0.3373},
         'sd_block': {'mean': 0.5743, 'sd': 0.2468},
         'z_actor': {'mean': [1.9667, 0.923, 3.3836, 0.5553, -1.0216, -3.6155, 3.1129, -0.5971,
                              -0.2012, -0.4552, -1.3674, -0.6217, 1.242, 1.3825, 0.6436, 1.9099,
                              -0.4436, -1.2281, -0.2063, -2.3534],
                     'sd': [0.4658, 0.3696, 0.6521, 0.3659, 0.3975, 0.7434, 0.676, 0.3893, 0.3611,
                            0.3514, 0.4067, 0.3827, 0.4149, 0.3964, 0.3639, 0.438, 0.3573, 0.3925,
                            0.3327, 0.5128]},
         'z_block': {'mean': [0.4116, 0.1784, 0.2278, -0.6882, -0.356, 0.2746],
                     'sd': [0.2843, 0.297, 0.2778, 0.2943, 0.2754, 0.286]}}}
# fmt: on


def fit(model, n, **options):
    options.setdefault("family", "encoder")
    with model:
        return pm.fit(
            n,
            method="amortized",
            obj_optimizer=pm.adam(learning_rate=1e-2),
            random_seed=1,
            progressbar=False,
            **options,
        )


def posterior(approx):
    return approx.sample(1000, random_seed=0).posterior


def mean(post, name):
    return post[name].mean(("chain", "draw")).values


def sd_units_rms(estimate, reference):
    """RMS over groups of (estimate - NUTS mean) / NUTS sd."""
    z = (np.asarray(estimate) - np.array(reference["mean"])) / np.array(reference["sd"])
    return float(np.sqrt((z**2).mean()))


def assert_global_close(post, ref, name, tol):
    got = float(post[name].mean())
    print(f"{name}: {got:.4f} (NUTS {ref[name]['mean']:.4f} ± {ref[name]['sd']:.4f})")
    assert abs(got - ref[name]["mean"]) < tol, (name, got, ref[name]["mean"])


# -- c01: unit-level covariate in the latent's factors -------------------------------------------


@pytest.mark.slow
def test_unit_covariate_enters_encoder():
    """c01 as written (batch_size=100): beta near NUTS's 0.54; today 0.07 (c is not an input)."""
    ref = REFERENCE["c01"]
    post = posterior(fit(cases.unit_covariate_model(), 3000, batch_size=100))
    assert_global_close(post, ref, "beta", 0.1)
    assert_global_close(post, ref, "mu", 0.1)
    assert_global_close(post, ref, "tau", 0.1)


def test_unit_covariate_enters_encoder_poisson():
    """Poisson counts, full batch: beta near NUTS's 0.54; 0.29 without c among the inputs
    (0.53 today with local={"z": ["y", "c"]})."""
    ref = REFERENCE["v01"]
    post = posterior(fit(cases.unit_covariate_poisson_model(), 6000))
    assert_global_close(post, ref, "beta", 0.1)
    assert_global_close(post, ref, "tau", 0.1)


# -- c02: non-centred Deterministic + a[idx] -----------------------------------------------------


def test_noncentered_deterministic_index():
    """a_raw is found as the local latent of the groups and the group means a match NUTS."""
    ref = REFERENCE["c02"]
    post = posterior(fit(cases.noncentered_index_model(), 3000))
    a = mean(post, "a")
    error = sd_units_rms(a, ref["a"])
    corr = np.corrcoef(a, ref["a"]["mean"])[0, 1]
    print(f"a: RMS error {error:.3f} posterior sd, correlation with NUTS {corr:.3f}")
    # An encoder that ignored the groups' rows (a ≈ mu everywhere) is at ≈ 0.35 sd, corr ≈ 0.
    assert error < 0.25
    assert corr > 0.9
    assert_global_close(post, ref, "mu", 0.1)


def test_noncentered_inline_index_poisson():
    """Poisson, unbalanced groups, the effect mu + s * a_raw written inline (no Deterministic)."""
    ref = REFERENCE["v02"]
    post = posterior(fit(cases.noncentered_poisson_model(), 6000))
    effect = (post["mu"] + post["s"] * post["a_raw"]).mean(("chain", "draw")).values
    error = sd_units_rms(effect, ref["a"])
    print(f"group effect: RMS error {error:.3f} posterior sd")
    assert error < 0.5
    assert_global_close(post, ref, "mu", 0.25)


# -- c03: array-valued prior parameter over the unit axis, minibatched ----------------------------


def _topic_summary(post):
    theta = post["theta"].values.reshape(-1, cases.TOPIC_D, cases.TOPIC_K)
    phi = post["phi"].values.reshape(-1, cases.TOPIC_K, cases.TOPIC_V)
    p = theta @ phi  # label-invariant, unlike theta and phi
    loglik = stats.multinomial.logpmf(cases.topic_data()[None], 20, p).sum(axis=1)
    return p.mean(0).mean(0), loglik.mean()


@pytest.mark.slow
@pytest.mark.parametrize("array_concentration", [True, False], ids=["docs_x_topics", "topics"])
def test_array_prior_parameter_minibatched(array_concentration):
    """(docs, topics) concentration fits with batch_size=10 like the (topics,) one; today it is
    refused ("give the unit axis a dim", which it has). Checked on a label-invariant summary:
    the mean over documents of the posterior mean of theta @ phi (each word's probability)."""
    ref = REFERENCE["c03"]
    approx = fit(cases.topic_model(array_concentration), 3000, batch_size=10)
    p_word, loglik = _topic_summary(posterior(approx))
    # Not asserted: the expected log-likelihood is ≈ -721 for any VI fit here (the (topics,) one
    # that fits today, full batch or not), against NUTS's -685 ± 8 and -707 at the pooled word
    # frequencies; these documents are draws from one uniform distribution.
    print(
        f"log-likelihood {loglik:.1f} (NUTS {ref['loglik']['mean']:.1f} ± {ref['loglik']['sd']:.1f})"
    )
    # posterior sd of a word probability here: ≈ 0.01
    np.testing.assert_allclose(p_word, ref["p_word_mean"], atol=0.02)


def test_unit_prior_mean_array_minibatched():
    """z_n ~ N(m_n, 0.5) with m a plain length-N array, batch_size=20: fits (m_n is the unit's own
    prior information) and the z_n match NUTS; today refused like c03."""
    ref = REFERENCE["v03"]
    post = posterior(fit(cases.unit_prior_mean_model(), 3000, batch_size=20))
    error = sd_units_rms(mean(post, "z"), ref["z"])
    print(f"z: RMS error {error:.3f} posterior sd")
    assert error < 0.5
    assert_global_close(post, ref, "sigma", 0.1)


# -- c04: rows without dims, minibatched over the index's groups ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data_dims", "obs_dims"), [(True, False), (False, False)], ids=["obs_no_dims", "no_dims"]
)
def test_rows_without_dims_minibatched(data_dims, obs_dims):
    """c04's failing combinations (observed rows without dims) fit with batch_size=10 and match
    NUTS; today a PyTensor SpecifyShape AssertionError from deep inside."""
    ref = REFERENCE["c04"]
    post = posterior(fit(cases.rows_without_dims_model(data_dims, obs_dims), 2000, batch_size=10))
    error = sd_units_rms(mean(post, "a"), ref["a"])
    print(f"a: RMS error {error:.3f} posterior sd")
    assert error < 1.0  # an encoder that ignored the rows: ≈ 4 sd
    assert_global_close(post, ref, "b", 0.1)
    assert_global_close(post, ref, "sigma", 0.05)
    assert_global_close(post, ref, "mu_a", 0.2)


@pytest.mark.slow
def test_rows_without_dims_minibatched_bernoulli():
    """Bernoulli rows, index, covariate and observed all without dims, batch_size=10."""
    ref = REFERENCE["v04"]
    post = posterior(fit(cases.bernoulli_rows_without_dims_model(), 2000, batch_size=10))
    error = sd_units_rms(mean(post, "a"), ref["a"])
    print(f"a: RMS error {error:.3f} posterior sd")
    assert error < 0.75
    assert_global_close(post, ref, "b", 0.2)


# -- c05: pm.Minibatch model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [cases.pm_minibatch_model, cases.bernoulli_pm_minibatch_model],
    ids=["c05", "bernoulli"],
)
def test_pm_minibatch_model_clear_error(build):
    """One AmortizationError before any step that names pm.Minibatch and batch_size=; today
    "Found no local latent"."""
    steps = []
    with pytest.raises(AmortizationError, match=r"(?s)(?=.*pm\.Minibatch)(?=.*batch_size=)"):
        fit(build(), 300, callbacks=[lambda approx, loss, i: steps.append(i)])
    assert steps == []


# -- c07: PSIS and save/load on indexed units ----------------------------------------------------


@pytest.mark.parametrize(
    ("build", "key", "n_units"),
    [(cases.indexed_small_model, "c07", 10), (cases.poisson_indexed_model, "v07", 12)],
    ids=["c07", "poisson_no_row_dims"],
)
def test_indexed_psis_and_save_load(build, key, n_units, tmp_path):
    """k-hat per county (one finite value each, under the county dim) and a save/load round trip
    that encodes identically; today AttributeError ('IndexedPlate' has no 'unit_data')."""
    model = build()
    approx = fit(model, 2000)
    error = sd_units_rms(mean(posterior(approx), "a"), REFERENCE[key]["a"])
    print(f"a: RMS error {error:.3f} posterior sd")
    assert error < 0.75

    khat = psis_diagnostic(approx, draws=500, random_seed=0).khat_per_unit
    assert khat.dims == ("county",)
    assert khat.shape == (n_units,)
    assert np.isfinite(khat.values).all()

    save_approximation(approx, tmp_path / "radon")
    loaded = load_approximation(tmp_path / "radon", model=model)
    before, after = approx.encode(), loaded.encode()
    assert before.keys() == after.keys() == {"a"}
    for name in before:
        np.testing.assert_array_equal(before[name].mean, after[name].mean)
        np.testing.assert_array_equal(before[name].sd, after[name].sd)


# -- c08: crossed groupings ----------------------------------------------------------------------


def _assert_crossed_close(post, ref, sd_tol, contrast_tol=0.5):
    for name in ("z_actor", "z_block"):
        got = mean(post, name)
        want = np.array(ref[name]["mean"])
        error = sd_units_rms(got, ref[name])
        # Only z_actor + z_block is pinned by the rows; the shared shift is set by the priors and
        # mixes slowly in NUTS, so the centred contrasts get a tight absolute check of their own.
        contrast = math.sqrt((((got - got.mean()) - (want - want.mean())) ** 2).mean())
        print(f"{name}: RMS error {error:.3f} posterior sd, centred contrasts {contrast:.3f}")
        assert error < sd_tol
        assert contrast < contrast_tol * np.mean(ref[name]["sd"])


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [None, 10], ids=["full_batch", "batch_size_10"])
def test_crossed_groupings_fit(batch_size):
    """Actor x block crossed, no local=: fits, full batch and minibatched, and the per-group means
    and sigma match NUTS; today "amortizing crossed or nested groupings ... is not supported"
    (and with local= for z_actor only, the process aborts)."""
    ref = REFERENCE["c08"]
    post = posterior(fit(cases.crossed_model(), 3000, batch_size=batch_size))
    # Full batch, the actor contrasts come within 0.057 (0.3 posterior sd); minibatched over 10 of
    # 30 actors they stay at 0.085-0.10 whether run longer, slower or with B = 20 (measured), the
    # encoder's amortization gap on noisier gradients. Actor means that ignore their rows miss by
    # the spread of the actor effects (~0.6), z_block left out gives sigma ~0.7.
    _assert_crossed_close(post, ref, sd_tol=1.0, contrast_tol=0.5 if batch_size is None else 0.75)
    assert_global_close(post, ref, "sigma", 0.05)  # z_block left out: ≈ 0.7


@pytest.mark.slow
def test_crossed_groupings_fit_bernoulli():
    """Bernoulli, hierarchical actor effect, non-centred block effect (a Deterministic).

    Passes today, and must keep passing: z_block_raw (behind a Deterministic, not recognised as
    indexed) is left to the globals and z_actor alone amortized."""
    ref = REFERENCE["v08"]
    post = posterior(fit(cases.crossed_bernoulli_model(), 3000))
    _assert_crossed_close(post, ref, sd_tol=1.0)
