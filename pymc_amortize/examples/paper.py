"""Models of Margossian & Blei (UAI 2024) as ordinary PyMC models, with their closed forms.

Used by the tests, the benchmarks and the notebooks, so that all of them fit the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt

__all__ = [
    "GaussianLogJoint",
    "LinearOptimum",
    "digits_data",
    "digits_decode",
    "digits_model",
    "gaussian_logjoint",
    "hmm_affine_window_gap",
    "hmm_data",
    "hmm_model",
    "hmm_optimum",
    "hmm_precision",
    "identical_units_gap_bound",
    "linear_data",
    "linear_elbo",
    "linear_model",
    "linear_optimum",
    "nonlinear_data",
    "nonlinear_model",
    "saw_data",
    "saw_logjoint",
    "saw_model",
    "window_inputs",
]

#: τ and σ of the authors' code (the paper says only "fixed").
LINEAR_TAU = 1.155
LINEAR_SIGMA = 2.43


def linear_data(
    n_units: int,
    *,
    tau: float = LINEAR_TAU,
    sigma: float = LINEAR_SIGMA,
    theta: float = 0.0,
    random_seed: int | None = None,
) -> np.ndarray:
    """Draw x_n = θ + τ z_n + σ ε_n with z_n, ε_n ~ N(0, 1)."""
    rng = np.random.default_rng(random_seed)
    return theta + tau * rng.standard_normal(n_units) + sigma * rng.standard_normal(n_units)


def linear_model(
    x: np.ndarray, *, tau: float = LINEAR_TAU, sigma: float = LINEAR_SIGMA
) -> pm.Model:
    """x_n ~ N(θ + τ z_n, σ²), z_n ~ N(0, 1), flat prior on θ (the paper's linear model)."""
    with pm.Model(coords={"unit": np.arange(len(x))}) as model:
        theta = pm.Flat("theta")
        z = pm.Normal("z", 0.0, 1.0, dims="unit")
        pm.Normal("x", theta + tau * z, sigma, observed=x, dims="unit")
    return model


@dataclass(frozen=True)
class LinearOptimum:
    """The F-VI (mean-field) optimum of the linear model, which is also its exact posterior's
    means and conditional sds."""

    theta_mean: float
    theta_sd: float
    z_slope: float  # E[z_n] = z_slope · (x_n − x̄)
    z_sd: float
    x_mean: float

    def z_mean(self, x: np.ndarray) -> np.ndarray:
        return self.z_slope * (np.asarray(x) - self.x_mean)


def linear_optimum(
    x: np.ndarray, *, tau: float = LINEAR_TAU, sigma: float = LINEAR_SIGMA
) -> LinearOptimum:
    """Closed-form F-VI optimum: q(θ) = N(x̄, σ²/N), q(z_n) = N(τ(x_n − x̄)/(σ²+τ²), σ²/(σ²+τ²))."""
    x = np.asarray(x)
    v = sigma**2 + tau**2
    return LinearOptimum(
        theta_mean=float(x.mean()),
        theta_sd=float(sigma / np.sqrt(x.size)),
        z_slope=tau / v,
        z_sd=float(sigma / np.sqrt(v)),
        x_mean=float(x.mean()),
    )


def linear_elbo(
    x: np.ndarray,
    theta_mean: float,
    theta_sd: float,
    z_mean: np.ndarray,
    z_sd: np.ndarray,
    *,
    tau: float = LINEAR_TAU,
    sigma: float = LINEAR_SIGMA,
) -> float:
    """The exact ELBO of a mean-field Gaussian q on the linear model (flat prior: log p(θ) = 0).

    No Monte Carlo error, so two solutions can be compared to any precision.
    """
    x, z_mean = np.asarray(x), np.asarray(z_mean)
    z_var = np.broadcast_to(np.asarray(z_sd) ** 2, x.shape)
    residual = (x - theta_mean - tau * z_mean) ** 2 + theta_sd**2 + tau**2 * z_var
    log_lik = -0.5 * np.log(2 * np.pi * sigma**2) * x.size - residual.sum() / (2 * sigma**2)
    log_prior_z = -0.5 * np.log(2 * np.pi) * x.size - 0.5 * (z_mean**2 + z_var).sum()
    entropy = (
        0.5 * np.log(2 * np.pi * np.e * theta_sd**2) + 0.5 * np.log(2 * np.pi * np.e * z_var).sum()
    )
    return float(log_lik + log_prior_z + entropy)


# -- Gaussian models: exact mean-field ELBO ----------------------------------------------------


@dataclass(frozen=True)
class GaussianLogJoint:
    """A log joint that is quadratic in the value variables: log p(w) = c + bᵀw − ½ wᵀΛw.

    ``w`` stacks the model's value variables in ``model.value_vars`` order, each raveled. Its
    mean-field (F-VI) optimum is exact: the means solve Λm = b (the exact posterior means) and the
    variances are 1/Λ_ii.
    """

    precision: np.ndarray
    shift: np.ndarray
    constant: float
    slices: dict[str, slice]

    def optimum(self) -> tuple[np.ndarray, np.ndarray]:
        """Means and sds of the F-VI optimum."""
        return np.linalg.solve(self.precision, self.shift), 1.0 / np.sqrt(np.diag(self.precision))

    def elbo(self, mean: np.ndarray, sd: np.ndarray) -> float:
        """Exact ELBO of the mean-field Gaussian q(w) = N(mean, diag(sd²))."""
        mean, var = np.asarray(mean, float), np.broadcast_to(np.asarray(sd, float) ** 2, mean.shape)
        expected = (
            self.constant
            + self.shift @ mean
            - 0.5 * (mean @ self.precision @ mean + np.diag(self.precision) @ var)
        )
        entropy = 0.5 * np.log(2 * np.pi * np.e * var).sum()
        return float(expected + entropy)

    def stack(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """One flat vector from ``{value name: array}``, in this log joint's order."""
        out = np.empty(self.shift.size)
        for name, slc in self.slices.items():
            out[slc] = np.ravel(values[name])
        return out


def gaussian_logjoint(model: pm.Model) -> GaussianLogJoint:
    """Read c, b and Λ of a model whose log density is quadratic in its value variables.

    c and b are the log density and its gradient at zero; Λ's columns are differences of the
    gradient at ±e_i, exact for a quadratic (and much faster to build than PyTensor's Hessian).
    Dense: meant for models of up to a few thousand values.
    """
    initial = model.initial_point()
    slices, start = {}, 0
    for v in model.value_vars:
        slices[v.name] = slice(start, start + initial[v.name].size)
        start += initial[v.name].size
    gradient = model.compile_dlogp()

    def point(flat):
        return {k: flat[slc].reshape(initial[k].shape) for k, slc in slices.items()}

    zero = np.zeros(start)
    constant = float(model.compile_logp()(point(zero)))
    shift = np.asarray(gradient(point(zero)), float)
    precision = np.empty((start, start))
    for i in range(start):
        step = np.zeros(start)
        step[i] = 1.0
        precision[:, i] = -(gradient(point(step)) - gradient(point(-step))) / 2.0
    return GaussianLogJoint(0.5 * (precision + precision.T), shift, constant, slices)


# -- Experiment 2: nonlinear model -------------------------------------------------------------

#: Floor ε of the nonlinear model's variance cos²(z) + ε. With ε = 0 (the paper as written) the
#: ELBO is −∞ for any Gaussian q, since E_q[(x − m)²/cos² z] diverges where cos z = 0.
NONLINEAR_VARIANCE_FLOOR = 0.1


def nonlinear_data(
    n_units: int,
    *,
    variance_floor: float = NONLINEAR_VARIANCE_FLOOR,
    random_seed: int | None = None,
) -> np.ndarray:
    """Draw θ ~ N(0, 1), z_n ~ N(0, 1), x_n ~ N(θ + z_n(1 + sin z_n), cos² z_n + ε)."""
    rng = np.random.default_rng(random_seed)
    theta = rng.standard_normal()
    z = rng.standard_normal(n_units)
    sd = np.sqrt(np.cos(z) ** 2 + variance_floor)
    return theta + z * (1 + np.sin(z)) + sd * rng.standard_normal(n_units)


def nonlinear_model(
    x: np.ndarray, *, variance_floor: float = NONLINEAR_VARIANCE_FLOOR, coords: bool = True
) -> pm.Model:
    """θ ~ N(0, 1), z_n ~ N(0, 1), x_n ~ N(θ + z_n(1 + sin z_n), cos² z_n + ε) (variance).

    ``coords=False`` gives the ``unit`` dim by its length only: PyMC keeps coordinate labels as a
    tuple of Python ints, ≈ 4 times the memory of a float64 ``x`` (30 MiB at 10⁶ units).
    """
    with pm.Model() as model:
        if coords:
            model.add_coord("unit", np.arange(len(x)))
        else:
            model.add_coord("unit", length=len(x))
        theta = pm.Normal("theta", 0.0, 1.0)
        z = pm.Normal("z", 0.0, 1.0, dims="unit")
        sd = pt.sqrt(pt.cos(z) ** 2 + variance_floor)
        pm.Normal("x", theta + z * (1 + pt.sin(z)), sd, observed=x, dims="unit")
    return model


# -- Experiment 4: saw time series -------------------------------------------------------------

SAW_ALPHA = 0.75


def saw_data(
    n_units: int, *, alpha: float = SAW_ALPHA, random_seed: int | None = None
) -> np.ndarray:
    """Draw θ ~ N(0, 1), x_0 = 0, z_n ~ N(x_{n−1}, 1), x_n ~ N(α(θ + z_n), 1), n = 1..N."""
    rng = np.random.default_rng(random_seed)
    theta = rng.standard_normal()
    x, previous = np.empty(n_units), 0.0
    for n in range(n_units):
        z = previous + rng.standard_normal()
        x[n] = alpha * (theta + z) + rng.standard_normal()
        previous = x[n]
    return x


def saw_model(x: np.ndarray, *, alpha: float = SAW_ALPHA) -> pm.Model:
    """The saw time series: z_n ~ N(x_{n−1}, 1) with x_0 = 0, x_n ~ N(α(θ + z_n), 1), θ ~ N(0, 1).

    ``x_prev`` is a ``pm.Data`` container on the unit dim, so an encoder can take
    ``local={"z": ["x_prev", "x"]}``; unit 1 sees the model's x_0 = 0.
    """
    x = np.asarray(x, float)
    with pm.Model(coords={"unit": np.arange(len(x))}) as model:
        x_prev = pm.Data("x_prev", np.concatenate([[0.0], x[:-1]]), dims="unit")
        theta = pm.Normal("theta", 0.0, 1.0)
        z = pm.Normal("z", x_prev, 1.0, dims="unit")
        pm.Normal("x", alpha * (theta + z), 1.0, observed=x, dims="unit")
    return model


def saw_logjoint(x: np.ndarray, *, alpha: float = SAW_ALPHA) -> GaussianLogJoint:
    """The saw model's log joint in closed form (value order θ, z_1..z_N), for exact ELBOs.

    Λ: θθ = 1 + Nα², z_n z_n = 1 + α², θ z_n = α²; b: θ = αΣx_n, z_n = x_{n−1} + αx_n.
    """
    x = np.asarray(x, float)
    n = x.size
    x_prev = np.concatenate([[0.0], x[:-1]])
    precision = np.zeros((n + 1, n + 1))
    precision[0, 0] = 1 + n * alpha**2
    precision[0, 1:] = precision[1:, 0] = alpha**2
    precision[np.arange(1, n + 1), np.arange(1, n + 1)] = 1 + alpha**2
    shift = np.concatenate([[alpha * x.sum()], x_prev + alpha * x])
    constant = -0.5 * (x_prev @ x_prev + x @ x) - (n + 0.5) * np.log(2 * np.pi)
    return GaussianLogJoint(
        precision, shift, float(constant), {"theta": slice(0, 1), "z": slice(1, n + 1)}
    )


# -- Experiment 5: HMM counterexample ----------------------------------------------------------


def hmm_data(
    n_units: int = 100,
    *,
    planted: tuple[int, int] = (30, 70),
    identical_half_width: int = 0,
    contrast: float = 3.0,
    random_seed: int | None = None,
) -> np.ndarray:
    """A random-walk sequence with two planted units whose windows are identical.

    Around units a and b, x is 0 on the ``identical_half_width`` window and ±``contrast`` on the
    two units either side of it (+ for a, − for b). Any encoder that sees at most that window
    gives z_a and z_b the same factor, while their exact F-VI means differ.
    """
    rng = np.random.default_rng(random_seed)
    x = np.cumsum(rng.standard_normal(n_units)) + rng.standard_normal(n_units)
    w = identical_half_width
    for unit, sign in zip(planted, (1.0, -1.0), strict=True):
        x[unit - w : unit + w + 1] = 0.0
        x[[unit - w - 2, unit - w - 1, unit + w + 1, unit + w + 2]] = sign * contrast
    return x


def hmm_model(x: np.ndarray) -> pm.Model:
    """z_n | z_{n−1} ~ N(z_{n−1}, 1) (flat z_1), x_n | z_n ~ N(z_n, 1): a Gaussian HMM."""
    with pm.Model(coords={"unit": np.arange(len(x))}) as model:
        z = pm.GaussianRandomWalk("z", sigma=1.0, init_dist=pm.Flat.dist(), dims="unit")
        pm.Normal("x", z, 1.0, observed=x, dims="unit")
    return model


def hmm_precision_bands(n_units: int) -> np.ndarray:
    """The posterior precision of z in banded form: 2 at the ends, 3 inside, −1 off the diagonal."""
    diagonal = np.full(n_units, 3.0)
    diagonal[[0, -1]] = 2.0
    off = np.full(n_units, -1.0)
    return np.vstack([off, diagonal, off])


def hmm_optimum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact F-VI optimum of the HMM: means solve the tridiagonal system Λm = x, sd_n = Λ_nn^−½.

    (The paper's appendix writes 3 on the diagonal and −2 off it, which is not positive definite.)
    """
    from scipy.linalg import solve_banded

    bands = hmm_precision_bands(len(x))
    return solve_banded((1, 1), bands, np.asarray(x, float)), 1.0 / np.sqrt(bands[1])


def window_inputs(x: np.ndarray, half_width: int) -> np.ndarray:
    """(N, 2w+1) matrix of x_{n−w}..x_{n+w}, zero outside the sequence (the encoder's window)."""
    x = np.asarray(x, float)
    padded = np.concatenate([np.zeros(half_width), x, np.zeros(half_width)])
    return np.column_stack([padded[i : i + x.size] for i in range(2 * half_width + 1)])


def hmm_precision(n_units: int) -> np.ndarray:
    """The HMM's posterior precision Λ as a dense matrix."""
    bands = hmm_precision_bands(n_units)
    return np.diag(bands[1]) + np.diag(bands[0][1:], 1) + np.diag(bands[2][1:], -1)


def hmm_affine_window_gap(x: np.ndarray, half_width: int) -> float:
    """Least ELBO gap of any affine encoder on the window x_{n−w}..x_{n+w} (zero-padded).

    The ELBO of a mean-field Gaussian is −½(m−μ)ᵀΛ(m−μ) plus terms in the sds alone, so the gap is
    at least min_β ½(Xβ − μ)ᵀΛ(Xβ − μ) with X = [window, 1]: a generalised least squares.
    """
    precision = hmm_precision(len(x))
    mean, _ = hmm_optimum(x)
    design = np.column_stack([window_inputs(x, half_width), np.ones(len(x))])
    root = np.linalg.cholesky(precision).T  # Λ = rootᵀ root
    beta = np.linalg.lstsq(root @ design, root @ mean, rcond=None)[0]
    residual = design @ beta - mean
    return float(0.5 * residual @ precision @ residual)


def identical_units_gap_bound(x: np.ndarray, units: tuple[int, int]) -> float:
    """Least ELBO gap of any q that must give z_a and z_b the same factor.

    An encoder that sees identical windows for units a and b maps them to one factor. The ELBO is −½(m−μ)ᵀΛ(m−μ) plus terms
    in the sds, so forcing m_a = m_b costs at least ½(μ_a − μ_b)² / (Σ_aa + Σ_bb − 2Σ_ab), Σ = Λ⁻¹.
    """
    a, b = units
    covariance = np.linalg.inv(hmm_precision(len(x)))
    mean, _ = hmm_optimum(x)
    spread = covariance[a, a] + covariance[b, b] - 2 * covariance[a, b]
    return float(0.5 * (mean[a] - mean[b]) ** 2 / spread)


# -- Experiment 3: deep generative model on scikit-learn's digits --------------------------------


def digits_data(n_images: int | None = None, *, scale: float = 4.0) -> np.ndarray:
    """scikit-learn's bundled 8×8 digits (1,797 × 64), pixels mapped from 0..16 to 0..``scale``."""
    from sklearn.datasets import load_digits

    images = load_digits().data[:n_images] / 16.0 * scale
    return images.astype(float)


def digits_model(x: np.ndarray, *, latent_dim: int = 4, hidden: int = 64) -> pm.Model:
    """Bayesian decoder: θ = decoder weights ~ N(0, I), z_n ~ N(0, I_d), x_n ~ N(Ω(z_n; θ), I).

    Ω is d → ``hidden`` → 64 with a LeakyReLU(0.2) hidden layer, as the paper's decoder.
    """
    n_images, n_pixels = x.shape
    coords = {
        "image": np.arange(n_images),
        "pixel": np.arange(n_pixels),
        "latent": np.arange(latent_dim),
        "hidden": np.arange(hidden),
    }
    with pm.Model(coords=coords) as model:
        w1 = pm.Normal("w1", 0.0, 1.0, dims=("latent", "hidden"))
        b1 = pm.Normal("b1", 0.0, 1.0, dims="hidden")
        w2 = pm.Normal("w2", 0.0, 1.0, dims=("hidden", "pixel"))
        b2 = pm.Normal("b2", 0.0, 1.0, dims="pixel")
        z = pm.Normal("z", 0.0, 1.0, dims=("image", "latent"))
        h = z @ w1 + b1
        h = pt.switch(h > 0, h, 0.2 * h)
        pm.Normal("x", h @ w2 + b2, 1.0, observed=x, dims=("image", "pixel"))
    return model


def digits_decode(params: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """The decoder Ω(z; θ) in NumPy, for reconstructions at posterior means."""
    h = z @ params["w1"] + params["b1"]
    h = np.where(h > 0, h, 0.2 * h)
    return h @ params["w2"] + params["b2"]
