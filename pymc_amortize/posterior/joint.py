"""The fit's own joint q(θ, z) against the model: log p(x, θ, z) and log q(θ, z) of joint draws.

Every family of the guide draws (θ, z) ~ q(θ) q(z | θ): q(θ) mean-field or full-rank, and per
plate either the encoder's q(z_n; f(x_n)) (independent of θ) or the conditional family's
q(z_n | θ, x_n) (:func:`~pymc_amortize.guide.conditional.conditional_draws`, whose draws and
log densities follow the draw of θ and of the plates drawn before it). The diagnostics that score
a fit (the ELBO E_q[log p − log q], PSIS weights p / q, the gap against F-VI) need both numbers
for the *joint* q: for the conditional family or a full-rank q(θ), the product of q's marginals is
another, worse, distribution, whose ELBO understates the fit's.

:class:`JointDensity` builds that graph once per fit, at full batch, with the same draws as the
training objective (the same plate order; a conditional plate sees the encoder means of the
conditional plates not drawn yet), and compiles it with the noise as inputs, so that it is
seeded from NumPy and reused for any number of draws. ``approx.joint_density()`` keeps one per fit.
The conditional plates' Newton steps are not compiled here again: the fit's
:class:`~pymc_amortize.guide.conditional.ConditionalSampler` (which ``sample()`` and ``encode()``
use) draws them and gives their log q and the joint log p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc
from scipy.special import logsumexp

from pymc_amortize.errors import AmortizationError, require_integer
from pymc_amortize.guide.conditional import SAMPLER_MODE
from pymc_amortize.guide.globals import HALF_LOG_2PI
from pymc_amortize.guide.state import AmortizedGuide
from pymc_amortize.model.logjoint import build_logjoint

__all__ = ["JointDensity", "JointSample"]

#: Numbers (draws × rows × quadrature points) one call of the compiled graph holds, roughly: the
#: draws are split into blocks of about this size (as the conditional family's sampler does).
BLOCK_NUMBERS = 2_000_000


@dataclass(frozen=True)
class JointSample:
    """S joint draws (θ, z) ~ q(θ) q(z | θ) of a fit, with their log densities.

    Attributes
    ----------
    values : dict of str to ndarray
        Value-space (unconstrained) draws of every free variable by value name: ``(S, *shape)``
        for the globals, ``(S, N, *event_shape)`` for a plate's locals.
    log_p : ndarray
        (S,) log p(x, θ, z) on the value space (with the Jacobians of the transforms, as the
        training objective and ADVI use).
    log_q : ndarray
        (S,) log q(θ, z) of the joint draw.
    log_q_globals : ndarray
        (S,) log q(θ), the globals' part of ``log_q``.
    log_q_units : dict of str to ndarray
        Per plate (by name), (S, N) log q of each unit's locals given the rest:
        log q(z_n) for the encoder family, log q(z_n | θ, the plates drawn before) for the
        conditional family. ``log_q = log_q_globals + Σ_plates Σ_n log_q_units``.
    """

    values: dict[str, np.ndarray]
    log_p: np.ndarray
    log_q: np.ndarray
    log_q_globals: np.ndarray
    log_q_units: dict[str, np.ndarray]

    @property
    def log_weights(self) -> np.ndarray:
        """(S,) importance log weights log p − log q."""
        return self.log_p - self.log_q

    @property
    def elbo(self) -> tuple[float, float]:
        """The ELBO estimate, the mean of the log weights, and its Monte Carlo SE."""
        w = self.log_weights
        return float(w.mean()), float(w.std(ddof=1) / math.sqrt(w.size))

    @property
    def importance_bound(self) -> float:
        """log (1/S Σ_s p / q), the importance-weighted bound on log p(x) from all S draws
        (it rises toward log p(x) with S; biased low for finite S)."""
        w = self.log_weights
        return float(logsumexp(w) - math.log(w.size))


class JointDensity:
    """log p(x, θ, z) and log q(θ, z) of joint draws from a fit's q, compiled once.

    For every family: q(θ) mean-field or full-rank, each plate's locals from the encoder or from
    the conditional family q(z_n | θ, x_n). Full batch (every fitted unit), so the fit's units
    must be in the model. The compiled graph reads the fit's parameters (shared variables), so it
    stays valid when they change (more training). The q is the one the fit trained: a unit
    without rows of an encoder plate gets its encoder's output here, where ``sample()`` and
    ``encode()`` report its prior given q(θ) instead.

    Parameters
    ----------
    guide : AmortizedGuide
        The fit's guide (``approx.guide``).

    Examples
    --------
    .. code-block:: python

        joint = approx.joint_density()          # compiled once, kept on the approximation
        sample = joint.sample(1000, np.random.default_rng(0))
        sample.log_p, sample.log_q              # (1000,) each
        elbo, se = joint.elbo(2000, random_seed=1)
    """

    def __init__(self, guide: AmortizedGuide):
        guide.require_units_in_memory("The fit's joint density")
        self.guide = guide
        model, analysis = guide.model, guide.analysis
        #: The noise, in call order: (S, D) of q(θ), then (S, N, d) per encoder latent and per
        #: conditional plate.
        self.noise_shapes: list[tuple[int, ...]] = []
        # The positions in ``noise_shapes`` of the conditional plates' noise: the fit's
        # ConditionalSampler draws those plates, from the same compiled Newton steps that
        # sample() and encode() use (compiled once per fit); this graph draws the rest.
        self._conditional_noise: list[int] = []
        n_draws = pt.lscalar("n_draws")
        inputs = [n_draws]
        if guide.globals is not None:
            eps = pt.matrix("global_eps")
            inputs.append(eps)
            self.noise_shapes.append((guide.n_global,))
            global_draws = guide.global_draws(eps)
            log_q_globals = guide.globals.log_q(eps)
        else:
            global_draws, log_q_globals = {}, pt.zeros((n_draws,))
        local_draws, unit_log_q = {}, {}
        for plate in analysis.plates:
            if plate.name in guide.conditional_plates:
                self._conditional_noise.append(len(self.noise_shapes))
                self.noise_shapes.append((plate.size, sum(lat.event_size for lat in plate.latents)))
                continue
            for latent in plate.latents:
                mean, log_sd = guide.symbolic_encode(latent.name, guide.layouts[plate.name].full())
                eps = pt.tensor3(f"{latent.name}_eps")
                inputs.append(eps)
                self.noise_shapes.append((plate.size, latent.event_size))
                draws = mean + pt.exp(log_sd) * eps
                local_draws[latent.value_name] = draws.reshape(
                    (eps.shape[0], plate.size, *latent.event_shape)
                )
                log_q = (-0.5 * eps**2 - log_sd - HALF_LOG_2PI).sum(axis=2)
                unit_log_q[plate.name] = unit_log_q.get(plate.name, 0.0) + log_q
        if not self.noise_shapes:
            raise AmortizationError("The model has no free variable: there is no q to draw from.")
        self.plate_names = [p.name for p in analysis.plates]
        self.value_names = [v.name for v in model.value_vars]
        values = {**global_draws, **local_draws}
        #: The plates and value names this graph draws; the conditional plates' are the sampler's.
        self._own_plates = [name for name in self.plate_names if name in unit_log_q]
        self._own_values = [name for name in self.value_names if name in values]
        outputs = [log_q_globals]
        outputs += [unit_log_q[name] for name in self._own_plates]
        outputs += [values[name] for name in self._own_values]
        self._sampler = None
        if guide.conditional_plates:
            self._sampler = guide.compiled_conditional_sampler()
        else:
            logjoint = build_logjoint(model, analysis)
            log_p = logjoint.per_draw(global_draws, local_draws, None)
            outputs.append(pt.broadcast_to(log_p, (n_draws,)))
        # With the conditional family this graph is q(θ) and the encoder plates' draws alone,
        # compiled as the sampler is (see guide.conditional.SAMPLER_MODE).
        mode = SAMPLER_MODE if guide.conditional_plates else None
        self._fn = compile_pymc(inputs, outputs, on_unused_input="ignore", mode=mode)
        # Draws per call, so that one call's arrays stay near BLOCK_NUMBERS numbers (the
        # sampler blocks its own calls).
        size = max((p.n_rows or p.size) for p in analysis.plates) if analysis.plates else 1
        self.block_draws = max(1, BLOCK_NUMBERS // max(size, 1))

    def noise(self, draws: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Standard normal noise for ``draws`` joint draws, one array per input of the graph."""
        return [rng.standard_normal((draws, *shape)) for shape in self.noise_shapes]

    def sample(self, draws: int, rng: np.random.Generator) -> JointSample:
        """``draws`` joint draws (θ, z) ~ q and their log p and log q.

        Parameters
        ----------
        draws : int
            S.
        rng : numpy.random.Generator
            Source of the noise (all of it drawn first, so the result does not depend on the
            block size).

        Returns
        -------
        JointSample
        """
        draws = require_integer(draws, "draws")
        noise = self.noise(draws, rng)
        own = [e for i, e in enumerate(noise) if i not in self._conditional_noise]
        block = self.block_draws
        pieces = [
            self._fn(np.int64(min(block, draws - start)), *(e[start : start + block] for e in own))
            for start in range(0, draws, block)
        ]
        out = [np.concatenate([np.asarray(p[i]) for p in pieces]) for i in range(len(pieces[0]))]
        log_q_globals = out[0]
        n_own = len(self._own_plates)
        log_q_units = dict(zip(self._own_plates, out[1 : 1 + n_own], strict=True))
        end = 1 + n_own + len(self._own_values)
        values = dict(zip(self._own_values, out[1 + n_own : end], strict=True))
        if self._sampler is None:
            log_p = out[end]
        else:
            conditional = [noise[i] for i in self._conditional_noise]
            drawn, drawn_log_q, log_p = self._sampler.draw(values, conditional, draws)
            values |= drawn
            log_q_units |= drawn_log_q
        values = {name: values[name] for name in self.value_names}
        log_q_units = {name: log_q_units[name] for name in self.plate_names}
        log_q = log_q_globals + sum((q.sum(axis=1) for q in log_q_units.values()), 0.0)
        for name, value in (("log p", log_p), ("log q", log_q)):
            if not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).sum())
                raise AmortizationError(
                    f"The fit's joint {name} is NaN or infinite at {bad} of {draws} draws of q: "
                    "a fit that diverged, a conditional family's Newton step that failed, or a "
                    "draw outside the model's support."
                )
        return JointSample(
            values=values,
            log_p=log_p,
            log_q=np.asarray(log_q, dtype=float),
            log_q_globals=log_q_globals,
            log_q_units=log_q_units,
        )

    def elbo(self, draws: int = 1000, *, random_seed: int | None = None) -> tuple[float, float]:
        """Monte Carlo ELBO E_q[log p(x, θ, z) − log q(θ, z)] of the fit's joint q, and its SE.

        Parameters
        ----------
        draws : int
            Joint draws.
        random_seed : int, optional
            Seeds the draws.

        Returns
        -------
        estimate, standard_error : float
        """
        return self.sample(draws, np.random.default_rng(random_seed)).elbo
