"""Global families: q(θ), the guide's factor over the global latents, on the unconstrained space.

A global family is one object with a small interface (the NumPyro ``AutoGuide`` split: a global
guide composed with local guides): the flat layout of the globals, the optimised parameters, draws
from standard normal noise, their log q and the exact entropy (symbolic, for the objective), and
the numeric counterparts (marginal means and sds, draws, log densities) for results and
diagnostics. The parameters live in PyMC's own group objects (``MeanFieldGroup``, ``FullRankGroup``)
so that PyMC's ``Inference`` loop and ADVI's tooling read them as usual; this module is the one
place that reads those groups' internals (``ordering``, ``rho``, ``L_tril``), ADVI's included.

To add a family: subclass :class:`GlobalFamily`, implement its abstract methods, and name it in
:data:`GLOBAL_FAMILIES`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.variational.approximations import FullRankGroup, MeanFieldGroup
from pymc.variational.opvi import Group
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

__all__ = [
    "GLOBAL_FAMILIES",
    "HALF_LOG_2PI",
    "HALF_LOG_2PI_E",
    "FullRankGlobals",
    "GlobalFamily",
    "MeanFieldGlobals",
    "group_factors",
    "make_global_family",
    "set_group_sds",
]

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2.0 * math.pi))


def softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` without overflow: PyMC's ``rho`` → sd map, in NumPy."""
    return np.logaddexp(0.0, x)


def _layout(group: Group) -> dict[str, tuple[slice, tuple[int, ...]]]:
    return {name: (slc, tuple(shape)) for name, slc, shape, _ in group.ordering.values()}


def group_factors(group: Group) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Marginal mean and sd of each variable of a PyMC mean-field or full-rank group (ADVI's
    included), shaped as the variable, by value variable name."""
    if isinstance(group, MeanFieldGroup):
        mean = np.asarray(group.params_dict["mu"].get_value())
        sd = softplus(np.asarray(group.params_dict["rho"].get_value()))
    elif isinstance(group, FullRankGroup):
        mean = np.asarray(group.params_dict["mu"].get_value())
        sd = np.sqrt(np.diag(_full_rank_cov(group)))
    else:
        raise TypeError(f"Expected a mean-field or full-rank group; got {type(group).__name__}.")
    return {
        name: (mean[slc].reshape(shape), sd[slc].reshape(shape))
        for name, (slc, shape) in _layout(group).items()
    }


def set_group_sds(group: MeanFieldGroup, sds: Mapping[str, np.ndarray]) -> None:
    """Set the sds of a PyMC mean-field group by value variable name.

    PyMC's ``start_sigma=`` assigns each variable's array to a flat slice and fails for variables
    of two or more dims, so the sds go straight into the group's flat ``rho``.
    """
    rho = group.rho.get_value()
    for name, (slc, _) in _layout(group).items():
        if name in sds:
            rho[slc] = np.log(np.expm1(np.ravel(sds[name])))
    group.rho.set_value(rho)


def _full_rank_cov(group: FullRankGroup) -> np.ndarray:
    chol = _cholesky_value(group.params_dict["L_tril"].get_value(), group.ddim)
    return chol @ chol.T


def _cholesky_value(l_tril: np.ndarray, dim: int) -> np.ndarray:
    """PyMC's ``FullRankGroup.L`` in NumPy: the packed lower triangle, softplus on the diagonal."""
    chol = np.zeros((dim, dim))
    chol[np.tril_indices(dim)] = l_tril
    chol[np.diag_indices(dim)] = softplus(np.diag(chol))
    return chol


class GlobalFamily(abc.ABC):
    """q(θ) over the flat vector of all globals' unconstrained values (size D).

    Subclasses hold a PyMC group (``group``) whose shared variables are the optimised parameters.
    """

    #: The name of the family in ``pm.fit(method="amortized", global_family=...)``.
    kind: str

    def __init__(self, group: Group):
        self.group = group
        #: value variable name -> (slice of the flat vector, shape of the variable)
        self.layout = _layout(group)

    # -- structure -------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """D, the number of global coordinates."""
        return int(self.group.ddim)

    @property
    def params(self) -> list[SharedVariable]:
        """The optimised shared variables, in the order the step updates them."""
        return list(self.group.params)

    @property
    def named_params(self) -> dict[str, SharedVariable]:
        """The parameters by their archive name (``mu``, ``rho`` or ``L_tril``)."""
        return dict(self.group.params_dict)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each global's shape, by value variable name."""
        return {name: shape for name, (_, shape) in self.layout.items()}

    def split(self, flat, n_draws) -> dict:
        """``(S, D)`` flat values -> each global's ``(S, *shape)`` values (symbolic or NumPy)."""
        return {
            name: flat[:, slc].reshape((n_draws, *shape))
            for name, (slc, shape) in self.layout.items()
        }

    # -- symbolic (the objective) ----------------------------------------------------------------
    @abc.abstractmethod
    def flat_draws(self, eps: TensorVariable) -> TensorVariable:
        """Draws ``(S, D)`` from standard normal noise ``eps`` (S, D), differentiable in the
        parameters."""

    def draws(self, eps: TensorVariable) -> dict[str, TensorVariable]:
        """Value-space draws ``(S, *shape)`` of each global from noise ``eps`` (S, D)."""
        return self.split(self.flat_draws(eps), eps.shape[0])

    @abc.abstractmethod
    def log_det_scale(self) -> TensorVariable:
        """``log |det dθ/dε|``, the log-determinant of the draws' linear map (scalar)."""

    def entropy(self) -> TensorVariable:
        """The exact entropy of q(θ) (scalar)."""
        return self.log_det_scale() + self.size * HALF_LOG_2PI_E

    def log_q(self, eps: TensorVariable) -> TensorVariable:
        """log q(θ_s) of the draws made from ``eps`` (S, D), shape (S,)."""
        return (-0.5 * eps**2 - HALF_LOG_2PI).sum(axis=1) - self.log_det_scale()

    # -- numeric (results and diagnostics) --------------------------------------------------------
    @abc.abstractmethod
    def mean_and_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """The flat mean (D,) and the draws' scale: sds (D,) or a lower Cholesky factor (D, D)."""

    def factors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Marginal mean and sd of each global, shaped as the variable, by value name."""
        return group_factors(self.group)

    def sample(self, draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``draws`` draws of each global, ``(draws, *shape)``, by value name."""
        mean, scale = self.mean_and_scale()
        eps = rng.standard_normal((draws, mean.size))
        flat = mean + (scale * eps if scale.ndim == 1 else eps @ scale.T)
        return self.split(flat, draws)

    def log_density(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """log q(θ_s) of given draws (by value name, ``(S, *shape)``), shape (S,)."""
        mean, scale = self.mean_and_scale()
        n_draws = next(iter(values.values())).shape[0]
        flat = np.empty((n_draws, mean.size))
        for name, (slc, _) in self.layout.items():
            flat[:, slc] = np.reshape(values[name], (n_draws, -1))
        if scale.ndim == 1:
            eps, log_det = (flat - mean) / scale, np.log(scale).sum()
        else:
            eps = np.linalg.solve(scale, (flat - mean).T).T
            log_det = np.log(np.diag(scale)).sum()
        return (-0.5 * eps**2 - HALF_LOG_2PI).sum(axis=1) - log_det

    def nonfinite(self) -> list[str]:
        """``"<param> of <variable>"`` for each parameter entry that is NaN or infinite."""
        names = []
        for label, param in self.named_params.items():
            value = param.get_value(borrow=True)
            if label == "L_tril":
                if not np.isfinite(value).all():
                    names.append("L_tril of the globals")
                continue
            for var_name, (slc, _) in self.layout.items():
                if not np.isfinite(value[slc]).all():
                    names.append(f"{'mean' if label == 'mu' else label} of {var_name}")
        return names


class MeanFieldGlobals(GlobalFamily):
    """q(θ) = ∏_d N(μ_d, softplus(ρ_d)²): PyMC's ``MeanFieldGroup``, as ADVI."""

    kind = "meanfield"

    def flat_draws(self, eps):
        return self.group.mean + pt.softplus(self.group.rho) * eps

    def log_det_scale(self):
        return pt.log(pt.softplus(self.group.rho)).sum()

    def log_q(self, eps):
        # Per coordinate, as the local factors do (the same floating-point sums as before).
        log_sd = pt.log(pt.softplus(self.group.rho))
        return (-0.5 * eps**2 - log_sd - HALF_LOG_2PI).sum(axis=1)

    def mean_and_scale(self):
        return self.group.mean.get_value(), softplus(self.group.rho.get_value())


class FullRankGlobals(GlobalFamily):
    """q(θ) = N(μ, L Lᵀ), L lower triangular with a softplus diagonal: PyMC's ``FullRankGroup``.

    D(D+1)/2 scale parameters: meant for models with up to a few hundred global coordinates
    (hierarchical models' hyperparameters and fixed effects), where it keeps the correlations
    between, e.g., a group mean and a group sd that a mean-field q(θ) drops.
    """

    kind = "fullrank"

    def flat_draws(self, eps):
        return eps.dot(self.group.L.T) + self.group.mean

    def log_det_scale(self):
        return pt.log(pt.diagonal(self.group.L)).sum()

    def mean_and_scale(self):
        return self.group.mean.get_value(), _cholesky_value(
            self.group.params_dict["L_tril"].get_value(), self.size
        )


#: The global families by name.
GLOBAL_FAMILIES: dict[str, type[GlobalFamily]] = {
    cls.kind: cls for cls in (MeanFieldGlobals, FullRankGlobals)
}


def make_global_family(
    kind: str,
    global_rvs: Sequence[TensorVariable],
    *,
    model: pm.Model,
    random_seed: int | None = None,
    start: Mapping[str, np.ndarray] | None = None,
    start_sigma: Mapping[str, np.ndarray] | None = None,
) -> GlobalFamily:
    """A global family over ``global_rvs``, started at ``start`` (means, constrained values as
    PyMC's groups take them) with sds ``start_sigma`` (by value variable name, as PyMC's
    ``MeanFieldGroup`` reads them).

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`GLOBAL_FAMILIES`.
    """
    if kind not in GLOBAL_FAMILIES:
        raise ValueError(f"global_family must be one of {sorted(GLOBAL_FAMILIES)}; got {kind!r}.")
    if kind == "meanfield":
        group = MeanFieldGroup(
            list(global_rvs),
            model=model,
            random_seed=random_seed,
            start=start,
            start_sigma=start_sigma,
        )
        return MeanFieldGlobals(group)
    group = FullRankGroup(list(global_rvs), model=model, random_seed=random_seed, start=start)
    family = FullRankGlobals(group)
    if start_sigma is not None:
        # FullRankGroup has no start_sigma=: its packed diagonal holds softplus⁻¹ of the sds.
        l_tril = group.params_dict["L_tril"].get_value()
        diagonal = np.zeros((family.size, family.size), dtype=int)
        diagonal[np.tril_indices(family.size)] = np.arange(l_tril.size)
        rho = l_tril[np.diag(diagonal)]
        for value_name, (slc, _) in family.layout.items():
            if value_name in start_sigma:
                rho[slc] = np.log(np.expm1(np.abs(np.ravel(start_sigma[value_name]))))
        l_tril[np.diag(diagonal)] = rho
        group.params_dict["L_tril"].set_value(l_tril)
    return family
