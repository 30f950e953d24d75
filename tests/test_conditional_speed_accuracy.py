"""The conditional family's steps against closed forms, without a fit (issues 23 and 24).

* Poisson units of a few counts: q(z_n | θ) is the Gaussian-VI optimum of p(z_n | θ, x_n) (found
  here by a generic optimiser on a fine quadrature), not the Laplace approximation at the mode,
  which is a tenth of an sd or more away from it for a unit of one or two counts.
* Gaussian-linear units: the one differentiated step gives the exact conditional mean and
  precision *and their derivatives in θ*, from a linearisation point far from the mode.
* ``sample()``'s conditional draws are not compiled to NUMBA (a second long compilation).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import optimize

from pymc_amortize.guide.conditional import ConditionalGaussian

# These graphs are compiled once per test: numpy implementations, no NUMBA code generation.
QUICK = "FAST_COMPILE"

# Poisson units: rows per unit and their counts; θ = (mu, sd) fixed, z_n ~ N(0, 1) a priori,
# log rate mu + sd z_n.
COUNTS = [[0], [1], [0, 0], [2, 0, 1], [0, 1, 0, 0, 2, 1]]
MU, SD = 0.3, 0.8


def _poisson_log_joint(z, copies=1):
    """(P, B, 1) -> (P,): the units' prior and rows, for any number P of draws."""
    total = -0.5 * (z[..., 0] ** 2).sum(axis=-1)
    for n, counts in enumerate(COUNTS):
        eta = MU + SD * z[:, n, 0]
        for y in counts:
            total = total + y * eta - pt.exp(eta)
    return total


def _unit_log_density(n: int, z: np.ndarray) -> np.ndarray:
    eta = MU + SD * z
    return -0.5 * z**2 + sum(y * eta - np.exp(eta) for y in COUNTS[n])


def _gaussian_vi_optimum(n: int) -> tuple[float, float]:
    """argmax over (m, s) of E_N(m, s²)[log p] + log s, by 40-point Gauss–Hermite."""
    x, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / w.sum()

    def negative_elbo(params):
        m, log_s = params
        return -(w @ _unit_log_density(n, m + np.exp(log_s) * x) + log_s)

    result = optimize.minimize(negative_elbo, [0.0, -0.5], method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000})  # fmt: skip
    return result.x[0], np.exp(result.x[1])


def _laplace(n: int) -> tuple[float, float]:
    mode = optimize.minimize_scalar(lambda z: -_unit_log_density(n, z)).x
    curvature = 1.0 + SD**2 * np.exp(MU + SD * mode) * len(COUNTS[n])
    return mode, 1.0 / np.sqrt(curvature)


def _family_mean_sd(family: ConditionalGaussian) -> tuple[np.ndarray, np.ndarray]:
    b = len(COUNTS)
    start = pt.as_tensor(np.full((1, b, 1), 1.5))  # a rough linearisation point
    eps = pt.zeros((1, b, 1))
    drawn = family.draw(_poisson_log_joint, start, eps, [()])
    mean, entropy = pytensor.function([], [drawn.mean, drawn.entropy], mode=QUICK)()
    sd = np.exp(entropy[0] - 0.5 - 0.5 * np.log(2 * np.pi))
    return mean[0, :, 0], sd


def test_poisson_units_get_the_gaussian_vi_optimum_not_the_laplace_point():
    exact = np.array([_gaussian_vi_optimum(n) for n in range(len(COUNTS))])
    laplace = np.array([_laplace(n) for n in range(len(COUNTS))])
    # The two differ by a tenth of an sd or more for units of one or two counts.
    assert np.max(np.abs(laplace[:, 0] - exact[:, 0]) / exact[:, 1]) > 0.1
    mean, sd = _family_mean_sd(ConditionalGaussian())
    np.testing.assert_allclose((mean - exact[:, 0]) / exact[:, 1], 0.0, atol=0.03)
    np.testing.assert_allclose(sd / exact[:, 1], 1.0, atol=0.02)
    # quadrature=1 is the Laplace approximation.
    mean, sd = _family_mean_sd(ConditionalGaussian(quadrature=1, newton_steps=8))
    np.testing.assert_allclose(mean, laplace[:, 0], atol=1e-3)
    np.testing.assert_allclose(sd, laplace[:, 1], rtol=1e-2)


@pytest.mark.parametrize("family", [ConditionalGaussian(), ConditionalGaussian(quadrature=1)])
@pytest.mark.parametrize("d", [1, 2])
def test_gaussian_linear_units_exact_in_value_and_derivative_from_far_away(family, d):
    """y_ni ~ N(θ_0 + x_ni · z_n, σ²), z_n ~ N(0, τ² I): m_n(θ), Λ_n(θ) and dm_n/dθ exact."""
    rng = np.random.default_rng(0)
    rows = [1, 4, 30]
    x = [rng.normal(1.0, 1.0, (r, d)) for r in rows]
    y = [rng.normal(size=r) for r in rows]
    offset, log_sigma, tau = pt.dscalar("offset"), pt.dscalar("log_sigma"), 0.7

    def log_joint(z, copies=1):
        total = -0.5 * (z**2).sum(axis=(-1, -2)) / tau**2
        for n in range(len(rows)):
            resid = y[n][None] - offset - z[:, n, :] @ x[n].T  # (P, rows)
            total = total - 0.5 * (resid**2).sum(axis=-1) / pt.exp(2 * log_sigma)
        return total

    start = pt.as_tensor(np.full((1, len(rows), d), 4.0))  # far from every mode
    drawn = family.draw(log_joint, start, pt.zeros((1, len(rows), d)), [(d,)])
    outputs = [drawn.mean, drawn.entropy, pytensor.grad(drawn.mean.sum(), offset),
               pytensor.grad(drawn.entropy.sum(), log_sigma)]  # fmt: skip
    fn = pytensor.function([offset, log_sigma], outputs, mode=QUICK)

    def exact(off, ls):
        means, entropies, dmeans, dents = [], [], [], []
        for n in range(len(rows)):
            prec = np.eye(d) / tau**2 + x[n].T @ x[n] / np.exp(2 * ls)
            cov = np.linalg.inv(prec)
            means.append(cov @ x[n].T @ (y[n] - off) / np.exp(2 * ls))
            dmeans.append(-(cov @ x[n].T).sum() / np.exp(2 * ls))
            entropies.append(0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1])
            # d/d log σ of ½ log det Σ with Λ = I/τ² + XᵀX e^{−2 log σ}.
            dents.append(np.trace(cov @ x[n].T @ x[n]) / np.exp(2 * ls))
        return np.array(means), np.array(entropies), sum(dmeans), sum(dents)

    got = fn(0.4, np.log(0.9))
    want = exact(0.4, np.log(0.9))
    # The jitter (1e-6 on the diagonal of a 2 x 2 precision) moves a mean by ~1e-6.
    np.testing.assert_allclose(got[0][0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1][0], want[1], rtol=1e-6)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-6)
