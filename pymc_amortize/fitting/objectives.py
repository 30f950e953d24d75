"""Variational objectives, as values (BlackJAX style): each turns Monte Carlo terms into a loss.

Every objective gets the same three terms from the amortized step: the (S,) log joint of the draws
(local terms scaled by N/B), the exact entropy of q, and the (S,) log q of the draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.errors import AmortizationError

__all__ = ["ELBO", "IWAE", "Objective"]


@dataclass(frozen=True)
class ELBO:
    """The reparameterised evidence lower bound, E_q[log p(x, θ, z)] + H[q].

    The entropy of the Gaussian family is exact, so only the expected log joint is estimated
    (from ``obj_n_mc`` draws). PyMC's ADVI estimates ``log p − log q`` instead: the same
    expectation and, with the noise fixed, the same gradient; near a good fit its value has the
    smaller variance (log p and log q of one draw nearly cancel), far from it this one does.
    """

    n_particles: ClassVar[int] = 1

    def per_estimate(
        self, log_joint: TensorVariable, entropy: TensorVariable, log_q: TensorVariable
    ) -> TensorVariable:
        """(S,) single-draw estimates of the ELBO."""
        return log_joint + entropy

    def loss(
        self, log_joint: TensorVariable, entropy: TensorVariable, log_q: TensorVariable
    ) -> TensorVariable:
        """−ELBO from the (S,) log joint draws, the exact entropy and the (S,) log q draws."""
        return -self.per_estimate(log_joint, entropy, log_q).mean()


@dataclass(frozen=True)
class IWAE:
    """The importance-weighted bound of Burda et al. (2016) with ``n_particles`` = K draws.

    L_K = E[log (1/K) Σ_k p(x, w_k) / q(w_k)], w_k ~ q: L_1 is the ELBO, L_K rises with K and tends
    to log p(x). ``pm.fit(method="amortized", objective=IWAE(10))`` maximises it; each step then
    draws ``obj_n_mc × K`` samples (``obj_n_mc`` independent K-draw estimates).

    With K = 1 the estimate is ``log p(x, w) − log q(w)``: the same expectation as :class:`ELBO`,
    and the same gradient draw for draw (with ε fixed, ∇ log q(μ + σε) = −∇ Σ log σ = −∇ H[q]).
    Near a good fit this value estimate has a far smaller variance than ``log p + H[q]``, because
    log p and log q of one draw nearly cancel.

    The bound is over the whole data set's joint weight, so it cannot be estimated from a minibatch
    of units (log-mean-exp of a scaled sum is not an unbiased estimate of it): ``AmortizedVI``
    refuses ``batch_size`` with K > 1.

    Parameters
    ----------
    n_particles : int
        K, the draws inside one log-mean-exp.

    Examples
    --------
    .. code-block:: python

        from pymc_amortize import IWAE

        approx = pm.fit(5_000, method="amortized", model=model, objective=IWAE(10))
    """

    n_particles: int = 10

    def __post_init__(self):
        if not isinstance(self.n_particles, int) or self.n_particles < 1:
            raise AmortizationError(
                f"IWAE(n_particles=...) must be a positive integer; got {self.n_particles!r}."
            )

    def per_estimate(
        self, log_joint: TensorVariable, entropy: TensorVariable, log_q: TensorVariable
    ) -> TensorVariable:
        """(S / K,) estimates of the bound, one per group of K draws."""
        k = self.n_particles
        log_w = (log_joint - log_q).reshape((-1, k))
        return pt.logsumexp(log_w, axis=1) - math.log(k)

    def loss(
        self, log_joint: TensorVariable, entropy: TensorVariable, log_q: TensorVariable
    ) -> TensorVariable:
        """−L_K, averaged over the S / K groups of draws."""
        return -self.per_estimate(log_joint, entropy, log_q).mean()


Objective = ELBO | IWAE
