"""The conditional local family: q(z_n | θ, x_n) built from the model's own log density.

Today's encoder family q(θ) ∏_n q(z_n; f_φ(x_n)) is mean-field between the globals and the
locals: every θ–z dependence is lost (the funnel; a big unit's mean given a slope), and a unit with
thousands of rows is extrapolated by a network trained mostly on small units. This family
conditions each unit's factor on the draw of the globals (the "branch" family of Agrawal & Domke,
NeurIPS 2021: q(θ) ∏_n q(z_n | θ, x_n)) and takes it from the model's log density in natural
parameters, so that the evidence of a unit's rows is *summed*, never extrapolated.

Given a draw of θ (and of the other plates' locals), the units of a plate whose verdict is
*amortize* are conditionally independent, so the Hessian of the log joint in the plate's locals Z
(S draws × B units × d, all of the plate's latents of one unit stacked) is block diagonal: one d × d
block per draw and unit. Its blocks come from d reverse passes, ∂/∂Z Σ g[..., i] with
g = ∂ log p / ∂Z — never an (N d) × (N d) matrix. A Newton step from a linearisation point z0 (the
encoder's output, trained through the ELBO):

    Λ_n = −∇²_z log p(x, θ, z) at z0  = prior precision + Σ over the unit's rows of their curvature
    m_n = z0 + Λ_n⁻¹ ∇_z log p(x, θ, z) at z0
    q(z_n | θ, x_n) = N(m_n, Λ_n⁻¹)

is the exact conditional p(z_n | θ, x_n) for Gaussian-linear units, whatever their number of
rows, and a Laplace (IRLS) step for GLMs, iterated ``newton_steps`` times. The last steps then
take the gradient and curvature in expectation under the current N(m_n, Λ_n⁻¹) (Gauss–Hermite
quadrature, all points in one pass): their fixed point, E_q[∇ log p] = 0 and Λ_n = −E_q[∇² log p],
is the Gaussian-VI optimum of p(z_n | θ, x_n), which for a skewed conditional (a Poisson unit of a
few counts) lies a tenth of an sd or more from the mode. The ELBO is taken over the joint
q(θ) q(z | θ): its gradient flows through the last step's m_n and Λ_n into q(θ) and the encoder;
every earlier step is a fixed-point iteration whose graph is evaluated, never differentiated.

The family is *not* a subset of F-VI's (mean-field over θ and every z_n), so its ELBO can exceed
ADVI's optimum; on the paper's linear model it is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc
from pytensor.compile.mode import get_mode
from pytensor.gradient import zero_grad
from pytensor.graph.replace import graph_replace
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.errors import AmortizationError
from pymc_amortize.guide.globals import HALF_LOG_2PI
from pymc_amortize.model.logjoint import LogJoint, build_logjoint
from pymc_amortize.model.plates import UnitBatch
from pymc_amortize.model.types import Plate

__all__ = [
    "ConditionalDraws",
    "ConditionalGaussian",
    "ConditionalSampler",
    "LocalFamily",
    "conditional_draws",
    "resolve_family",
]


#: How :class:`ConditionalSampler` compiles: the NUMBA backend. ``sample()`` and ``encode()`` call
#: it on thousands of draws × every unit (``encode`` alone takes 4,000 draws), where the ops' own
#: numpy implementations (PyTensor's FAST_COMPILE, without fusion) took 1.0 s of CPU per 1,000
#: draws on real radon, 5 s for every repeat ``sample(1000)``; NUMBA 0.07–0.1 s, for 2–4 s more
#: CPU to compile once (its FAST_RUN rewrites). The C backend runs as fast but compiled in 41 s.
SAMPLER_MODE = get_mode("NUMBA")

#: The local families :func:`resolve_family` knows.
FAMILIES = ("encoder", "conditional")


@dataclass(frozen=True)
class ConditionalDraws:
    """Draws of one plate's locals from q(z | θ) and their densities.

    Attributes
    ----------
    draws : list of TensorVariable
        Per latent, ``(S, B, *event_shape)`` on the value (unconstrained) space.
    log_q : TensorVariable
        (S, B) log q(z_n | θ) of each unit's draw.
    entropy : TensorVariable
        (S, B) entropy of each unit's q(z_n | θ) (exact given θ).
    mean : TensorVariable
        (S, B, d) the conditional means m_n(θ), the plate's latents stacked.
    encoder_loss : TensorVariable
        (S, B) zero in value; its gradient trains the encoder's linearisation point toward the
        conditional mean (see :meth:`ConditionalGaussian.draw`).
    """

    draws: list[TensorVariable]
    log_q: TensorVariable
    entropy: TensorVariable
    mean: TensorVariable
    encoder_loss: TensorVariable


@dataclass(frozen=True)
class ConditionalGaussian:
    """q(z_n | θ, x_n) = N(m_n, Λ_n⁻¹) by Newton steps on the model's log density.

    Parameters
    ----------
    newton_steps : int, default 3
        Newton steps from the encoder's output to the conditional mode; one is exact for
        Gaussian-linear units, GLMs (Poisson, Bernoulli) need two or three from a rough start.
    jitter : float, default 1e-6
        Added to the precision's diagonal; a curvature that is not positive (a non-log-concave
        likelihood far from the mode) is floored smoothly at about this value.
    max_step : float, default 2.0
        The longest of the first ``newton_steps − 1`` steps on the unconstrained scale
        (Levenberg damping, see :meth:`draw`): far from the mode (early in a fit, a wide draw of
        θ) a step cannot overshoot into overflow. The last step is Newton's own.
    quadrature : int, default 5
        Points per dimension of the expectations E_q[∇ log p] and E_q[∇² log p] of the
        *variational* steps (Gauss–Hermite for one local per unit, a symmetric cubature of 2d
        points for d > 1). With 1 the family is the Laplace approximation (gradient and curvature
        at the mode). With more, the last ``variational_steps + 1`` steps solve the
        stationarity conditions of the Gaussian-VI optimum of p(z_n | θ, x_n) instead,
        E_q[∇ log p] = 0 and Λ = −E_q[∇² log p] (the mean and precision that maximise the
        unit's ELBO given θ), which differ from the mode and curvature where a unit's conditional
        is skewed (a Poisson unit of a few counts). Both are exact for Gaussian-linear units.
    variational_steps : int, default 2
        Fixed-point steps of the variational conditions between the Laplace steps and the last
        step (which carries the gradient); ignored with ``quadrature=1``.
    """

    newton_steps: int = 3
    jitter: float = 1e-6
    max_step: float = 2.0
    quadrature: int = 5
    variational_steps: int = 2

    def __post_init__(self):
        if not self.max_step > 0:
            raise AmortizationError(
                f"ConditionalGaussian(max_step=...) must be positive; got {self.max_step!r}."
            )
        for name in ("newton_steps", "quadrature"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AmortizationError(
                    f"ConditionalGaussian({name}=...) must be a positive integer; got {value!r}."
                )
        if not isinstance(self.variational_steps, int) or self.variational_steps < 0:
            raise AmortizationError(
                "ConditionalGaussian(variational_steps=...) must be a non-negative integer; got "
                f"{self.variational_steps!r}."
            )

    def nodes(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Standard-normal quadrature nodes (K, d) and weights (K,) of the variational steps."""
        if self.quadrature == 1:
            return np.zeros((1, d)), np.ones(1)
        if d == 1:
            x, w = np.polynomial.hermite_e.hermegauss(self.quadrature)
            return x[:, None], w / w.sum()
        # ±√d e_i: exact for polynomials of degree 3 (so for the gradient and curvature of a
        # Gaussian-linear unit, and for their first non-Gaussian corrections).
        nodes = np.sqrt(d) * np.concatenate([np.eye(d), -np.eye(d)])
        return nodes, np.full(2 * d, 1.0 / (2 * d))

    @staticmethod
    def _gradient_and_precision(
        log_joint: Callable[..., TensorVariable], z: TensorVariable, scale, copies: int = 1
    ) -> tuple[TensorVariable, TensorVariable]:
        """∇ log p (K·S, B, d) and −∇² log p (K·S, B, d, d) per draw and unit at ``z``.

        ``log_joint(z, copies=K)`` is (K·S,), the plate's unit terms weighted by ``scale`` (N/B
        under a minibatch), which is divided out: Λ_n is one unit's, not N/B of it.
        """
        total = (log_joint(z) if copies == 1 else log_joint(z, copies=copies)).sum() / scale
        grad = pytensor.grad(total, z)
        d = z.type.shape[-1]
        if d is None:
            raise AmortizationError("The stacked locals need a static event size.")
        # Block diagonal because draws are independent and units conditionally independent given
        # θ: the gradient of Σ g[..., i] is column i of every unit's d × d block (one reverse
        # pass for d = 1, where the block is the diagonal itself).
        if d == 1:
            return grad, -pytensor.grad(grad.sum(), z)[..., None]
        columns = [pytensor.grad(grad[..., i].sum(), z) for i in range(d)]
        hessian = pt.stack(columns, axis=-1)
        precision = -0.5 * (hessian + pt.swapaxes(hessian, -1, -2))
        return grad, precision

    def _derivatives(
        self, log_joint: Callable[..., TensorVariable], scale, shape: tuple
    ) -> Callable[..., tuple[TensorVariable, TensorVariable]]:
        """``(z, copies=1) ->`` :meth:`_gradient_and_precision` at ``z``, its graph built once
        per ``copies`` on a placeholder and the placeholder replaced by each step's ``z``.

        Built afresh at every step, the log joint was vectorised and differentiated 5 times,
        each vectorisation inferring static shapes through all the earlier steps' graphs (on
        real radon the sampler's graph took 3.5 CPU s to build, 0.4–0.6 s so); ``z``'s shape is
        given from the noise's for the same reason. The steps share the subgraphs that depend
        on θ alone.
        """
        templates: dict[int, tuple[TensorVariable, TensorVariable, TensorVariable]] = {}

        def at(z: TensorVariable, copies: int = 1) -> tuple[TensorVariable, TensorVariable]:
            # The shape from the noise's (S, B, d), not from the earlier steps' graphs.
            s, b, d = shape
            z = pt.specify_shape(z, (s * copies if copies > 1 else s, b, d))
            if copies not in templates:
                placeholder = z.type("z")
                templates[copies] = (
                    placeholder,
                    *self._gradient_and_precision(log_joint, placeholder, scale, copies),
                )
            placeholder, grad, precision = templates[copies]
            return tuple(graph_replace([grad, precision], {placeholder: z}))

        return at

    def _expected(
        self,
        derivatives: Callable[..., tuple[TensorVariable, TensorVariable]],
        mean: TensorVariable,
        chol: TensorVariable | None,
        d: int,
    ) -> tuple[TensorVariable, TensorVariable]:
        """E ∇ log p (S, B, d) and −E ∇² log p (S, B, d, d) under N(mean, (chol cholᵀ)⁻¹) by
        quadrature (at the mean alone when ``chol`` is None): all K points in one pass, the
        draws of the globals tiled K times (``derivatives`` of :meth:`_derivatives`)."""
        if chol is None:
            return derivatives(mean)
        nodes, weights = self.nodes(d)
        k = nodes.shape[0]
        nodes = pt.as_tensor(nodes)  # (K, d)
        if d == 1:
            offsets = nodes[:, None, None, :] / chol[None]  # (K, S, B, 1)
        else:
            # z = m + L⁻ᵀ ε with Λ = L Lᵀ, for every node ε.
            lt = pt.broadcast_to(
                pt.swapaxes(chol, -1, -2)[None], (k, *[chol.shape[i] for i in range(3)], d)
            )
            eps = pt.broadcast_to(
                nodes[:, None, None, :, None], (k, chol.shape[0], chol.shape[1], d, 1)
            )
            offsets = pt.linalg.solve_triangular(lt, eps, lower=False)[..., 0]
        points = mean[None] + offsets  # (K, S, B, d)
        flat = points.reshape((k * mean.shape[0], mean.shape[1], d))
        grad, precision = derivatives(flat, copies=k)
        w = pt.as_tensor(weights)
        grad = pt.tensordot(w, grad.reshape((k, mean.shape[0], mean.shape[1], d)), axes=1)
        precision = pt.tensordot(
            w, precision.reshape((k, mean.shape[0], mean.shape[1], d, d)), axes=1
        )
        return grad, precision

    def _safe(self, precision: TensorVariable) -> TensorVariable:
        d = precision.type.shape[-1]
        if d == 1:
            # Smooth max(Λ, 0) >= jitter/2: exact where the curvature is clearly positive.
            p = precision[..., 0, 0]
            p = 0.5 * (p + pt.sqrt(p**2 + self.jitter**2))
            return p[..., None, None]
        return precision + self.jitter * pt.eye(d)

    def _damped(self, precision: TensorVariable, grad: TensorVariable) -> TensorVariable:
        """Λ + λI with λ = ‖g‖ / max_step (Levenberg): a step never longer than ``max_step``,
        so that a linearisation point far from the mode (early in a fit, a wide draw of θ) cannot
        overshoot into overflow; at the mode g = 0 and the step is Newton's."""
        precision = self._safe(precision)
        damping = pt.sqrt((grad**2).sum(axis=-1)) / self.max_step
        return precision + damping[..., None, None] * pt.eye(precision.type.shape[-1])

    @staticmethod
    def _cholesky(precision: TensorVariable) -> TensorVariable:
        """L with Λ = L Lᵀ: (S, B, d, d), or (S, B, 1) √Λ for d = 1."""
        if precision.type.shape[-1] == 1:
            return pt.sqrt(precision[..., 0])
        return pt.linalg.cholesky(precision)

    @staticmethod
    def _solve(precision: TensorVariable, grad: TensorVariable) -> TensorVariable:
        """Λ⁻¹ g per draw and unit: (S, B, d, d), (S, B, d) -> (S, B, d)."""
        if precision.type.shape[-1] == 1:
            return grad / precision[..., 0]
        chol = pt.linalg.cholesky(precision)
        half = pt.linalg.solve_triangular(chol, grad[..., None], lower=True)
        return pt.linalg.solve_triangular(pt.swapaxes(chol, -1, -2), half, lower=False)[..., 0]

    def draw(
        self,
        log_joint: Callable[..., TensorVariable],
        start: TensorVariable,
        eps: TensorVariable,
        event_shapes: Sequence[tuple[int, ...]],
        *,
        scale=1.0,
    ) -> ConditionalDraws:
        """Draws from q(z | θ) of a plate's stacked locals.

        Parameters
        ----------
        log_joint : callable
            ``z (S, B, d) -> (S,)``: the log joint of each draw with the plate's locals set to z
            (the globals and other locals already substituted), its unit terms scaled by
            ``scale``; with ``copies=K``, ``z (K·S, B, d) -> (K·S,)`` for K quadrature points at
            once, the draws of everything else tiled K times along the first axis.
        start : TensorVariable
            (S, B, d) linearisation point of the first Newton step (the encoder's mean).
        eps : TensorVariable
            (S, B, d) standard normal noise.
        event_shapes : sequence of tuple
            Each latent's event shape, in the stacking order of ``d``.
        scale : float or TensorVariable
            N / B of the batch (1 at full batch).
        """
        d = sum(math.prod(shape) for shape in event_shapes)
        start = pt.specify_shape(start, (None, None, d))
        # Every step but the last is a fixed point iteration without gradient: its graph is
        # evaluated, never differentiated. First the Laplace steps toward the mode (damped, so
        # that a start far from it cannot overshoot), then, with quadrature, the variational
        # steps from the Laplace solution.
        derivatives = self._derivatives(log_joint, scale, (eps.shape[0], eps.shape[1], d))
        z = zero_grad(start)
        chol = None
        variational = self.quadrature > 1
        for _ in range(self.newton_steps - 1):
            grad, precision = derivatives(z)
            z = zero_grad(z + self._solve(self._damped(precision, grad), grad))
            chol = zero_grad(self._cholesky(self._safe(precision)))
        if variational and chol is None:
            _, precision = derivatives(z)
            chol = zero_grad(self._cholesky(self._safe(precision)))
        for _ in range(self.variational_steps if variational else 0):
            grad, precision = self._expected(derivatives, z, chol, d)
            precision = self._safe(precision)
            z = zero_grad(z + self._solve(precision, grad))
            chol = zero_grad(self._cholesky(precision))
        # The last step is Newton's own (undamped) and carries the gradient, through the
        # gradient and the curvature at its (constant) point z: m = z + Λ⁻¹ g with Λ = −∇² at z.
        # For a Gaussian-linear unit this is the exact conditional from any z, value and
        # derivative: dm/dθ = Λ⁻¹ ∂g/∂θ − Λ⁻¹ (∂Λ/∂θ) Λ⁻¹ g is then the derivative of the
        # conditional mean, and Λ's derivative that of the conditional precision; so the
        # reparameterised gradient of a unit's terms is the collapsed one, ∂/∂θ log p(x_n, θ),
        # free of the noise of z_n's draw. For a GLM the quadrature step's (m, Λ) is a
        # stationary point of the unit's ELBO given θ, so that the paths through m and Λ add
        # nothing to the expected gradient there (Laplace: the mode's derivative, as before).
        # One graph of third derivatives, shared by the step and the precision.
        grad, precision = self._expected(derivatives, z, chol if variational else None, d)
        precision = self._safe(precision)
        chol = self._cholesky(precision)
        mean = z + self._solve(precision, grad)
        # The encoder learns where to linearise: its loss is the distance of its output z0 from
        # the conditional mean in the conditional's sds, r² = (z0 − m)ᵀ Λ (z0 − m) (twice the
        # Newton decrement), through a pseudo-Huber √(1 + r²) − 1 so that a unit of thousands
        # of rows, whose sd is tiny, cannot blow its gradient up. It enters the step as a term of
        # value 0 whose gradient reaches the encoder alone.
        gap = start - zero_grad(mean)
        if d == 1:
            distance = (gap[..., 0] ** 2) * zero_grad(precision[..., 0, 0])
        else:
            distance = (gap[..., None, :] @ zero_grad(precision) @ gap[..., :, None])[..., 0, 0]
        decrement = pt.sqrt(1.0 + distance) - 1.0
        if d == 1:
            sd = 1.0 / chol  # (S, B, 1)
            sample = mean + sd * eps
            log_det_chol = -pt.log(sd[..., 0])
        else:
            # z = m + L⁻ᵀ ε with Λ = L Lᵀ.
            sample = (
                mean
                + pt.linalg.solve_triangular(
                    pt.swapaxes(chol, -1, -2), eps[..., None], lower=False
                )[..., 0]
            )
            log_det_chol = pt.log(pt.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
        log_q = -0.5 * (eps**2).sum(axis=-1) + log_det_chol - d * HALF_LOG_2PI
        entropy = d * (0.5 + HALF_LOG_2PI) - log_det_chol
        return ConditionalDraws(
            draws=split_stacked(sample, event_shapes),
            log_q=log_q,
            entropy=entropy,
            mean=mean,
            encoder_loss=decrement - zero_grad(decrement),
        )


LocalFamily = ConditionalGaussian | None


def split_stacked(
    stacked: TensorVariable, event_shapes: Sequence[tuple[int, ...]]
) -> list[TensorVariable]:
    """The inverse of :func:`stack_locals` on (S, B, d)."""
    out, offset = [], 0
    for shape in event_shapes:
        size = math.prod(shape)
        piece = stacked[..., offset : offset + size]
        out.append(piece.reshape((stacked.shape[0], stacked.shape[1], *shape)))
        offset += size
    return out


def resolve_family(family: str | ConditionalGaussian) -> LocalFamily:
    """The local family of ``family=``: None for the encoder family."""
    if isinstance(family, ConditionalGaussian):
        return family
    if family == "encoder":
        return None
    if family == "conditional":
        return ConditionalGaussian()
    raise AmortizationError(
        f"family= must be one of {', '.join(repr(f) for f in FAMILIES)} or a "
        f"ConditionalGaussian(...); got {family!r}."
    )


def conditional_draws(
    family: ConditionalGaussian,
    plate: Plate,
    logjoint: LogJoint,
    global_draws: Mapping[str, TensorVariable],
    local_draws: Mapping[str, TensorVariable],
    means: Sequence[TensorVariable],
    eps: TensorVariable,
    *,
    batch: UnitBatch | None,
    scale=1.0,
) -> ConditionalDraws:
    """Draws of ``plate``'s locals from q(z | θ, the other locals) for S draws of the globals.

    Parameters
    ----------
    family : ConditionalGaussian
    plate : Plate
    logjoint : LogJoint
        The model's log joint (a minibatch's when ``batch`` is given).
    global_draws, local_draws : mapping
        (S, ...) draws by value name; ``local_draws`` holds every local latent of the model (the
        plate's own entries are replaced).
    means : sequence of TensorVariable
        The encoder's (B, event_size) mean of each of the plate's latents: the linearisation point.
    eps : TensorVariable
        (S, B, d) standard normal noise.
    batch : UnitBatch or None
        The minibatch the log joint reads, None at full batch.
    scale : float or TensorVariable
        N / B of the plate's batch.
    """
    shapes = [latent.event_shape for latent in plate.latents]
    start = means[0] if len(means) == 1 else pt.concatenate(list(means), axis=-1)
    start = pt.broadcast_to(start[None], (eps.shape[0], start.shape[0], start.shape[1]))

    def tiled(draws: Mapping[str, TensorVariable], copies) -> dict[str, TensorVariable]:
        # K copies of the S draws along the first axis, for K quadrature points at once.
        return {
            name: pt.tile(value, (copies,) + (1,) * (value.ndim - 1))
            for name, value in draws.items()
        }

    def log_joint(z: TensorVariable, copies: int = 1) -> TensorVariable:
        trial = dict(local_draws) if copies == 1 else tiled(local_draws, copies)
        for latent, piece in zip(plate.latents, split_stacked(z, shapes), strict=True):
            trial[latent.value_name] = piece
        globals_ = global_draws if copies == 1 else tiled(global_draws, copies)
        return logjoint.per_draw(globals_, trial, batch)

    return family.draw(log_joint, start, eps, shapes, scale=scale)


class ConditionalSampler:
    """Draws of the conditional plates' locals for given draws of everything else, compiled once.

    ``sample()`` and ``encode()`` of a fit with the conditional family call it with numpy draws of
    the globals (from q(θ)) and of the encoder plates' locals; it returns each conditional plate's
    draws ``(S, N, *event_shape)``, drawn plate after plate as in the training step. The same
    compiled function gives each plate's log q(z_n | ...) and the joint log p(x, θ, z) of the
    draws (:meth:`draw`), which the fit's joint density
    (:class:`~pymc_amortize.posterior.joint.JointDensity`) reads instead of compiling the Newton
    steps again.

    Parameters
    ----------
    model, analysis
        The fitted model and its analysis.
    family : ConditionalGaussian
    plates : sequence of Plate
        The conditional plates, in the order they are drawn.
    encode : callable
        ``(latent name, UnitBatch) -> (mean, log_sd)``, the encoder's symbolic output.
    full_batches : mapping
        Plate name -> its full-batch :class:`~pymc_amortize.model.plates.UnitBatch`.
    """

    def __init__(self, model, analysis, family, plates, encode, full_batches):
        logjoint = build_logjoint(model, analysis)
        conditional = {p.name for p in plates}
        self.inputs = {
            name: pt.TensorType(var.dtype, shape=(None, *var.type.shape))(name=f"{name}_draws")
            for name, var in (logjoint.global_values | logjoint.local_values).items()
            if name not in {lat.value_name for p in plates for lat in p.latents}
        }
        global_draws = {k: v for k, v in self.inputs.items() if k in logjoint.global_values}
        local_draws = {k: v for k, v in self.inputs.items() if k in logjoint.local_values}
        n_draws = pt.lscalar("n_draws")
        self.noise = {}
        pending = []
        for plate in analysis.plates:
            if plate.name not in conditional:
                continue
            means = [encode(lat.name, full_batches[plate.name])[0] for lat in plate.latents]
            pending.append((plate, means))
            for latent, mean in zip(plate.latents, means, strict=True):
                local_draws[latent.value_name] = pt.broadcast_to(
                    mean.reshape((1, mean.shape[0], *latent.event_shape)),
                    (n_draws, mean.shape[0], *latent.event_shape),
                )
            self.noise[plate.name] = pt.tensor3(f"{plate.name}_noise")
        outputs, log_q = [], []
        self.names = []
        for plate, means in pending:
            drawn = conditional_draws(
                family,
                plate,
                logjoint,
                global_draws,
                local_draws,
                means,
                self.noise[plate.name],
                batch=None,
            )
            for latent, draws in zip(plate.latents, drawn.draws, strict=True):
                local_draws[latent.value_name] = draws
                outputs.append(draws)
                self.names.append(latent.value_name)
            log_q.append(drawn.log_q)
        self.plates = [plate for plate, _ in pending]
        log_p = pt.broadcast_to(logjoint.per_draw(global_draws, local_draws, None), (n_draws,))
        # Draws per call, so that a call's arrays (quadrature points × draws × rows) stay near
        # 2 million numbers.
        size = max(
            (p.n_rows or p.size) * len(family.nodes(sum(lat.event_size for lat in p.latents))[0])
            for p in self.plates
        )
        self.block_draws = max(1, 2_000_000 // max(size, 1))
        # Compiled once per fit, called on every sample() / encode() (see SAMPLER_MODE).
        self._fn = compile_pymc(
            [*self.inputs.values(), *self.noise.values(), n_draws],
            [*outputs, *log_q, log_p],
            on_unused_input="ignore",
            mode=SAMPLER_MODE,
        )

    def __call__(
        self, values: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Value-space draws of the conditional plates' locals, by value name.

        ``values`` holds (S, ...) draws of every other free variable by value name.
        """
        n_draws = len(next(iter(values.values()))) if values else 1
        noise = [
            rng.standard_normal((n_draws, plate.size, sum(lat.event_size for lat in plate.latents)))
            for plate in self.plates
        ]
        out, _, _ = self.draw(values, noise, n_draws)
        for name, draws in out.items():
            bad = ~np.isfinite(draws).reshape(n_draws, draws.shape[1], -1).all(axis=(0, 2))
            if bad.any():
                # Never hand back NaN draws as a posterior (a diverged fit, a Newton step into
                # overflow): say which units, and what to do.
                raise AmortizationError(
                    f"The conditional family's draws of '{name}' are NaN or infinite for "
                    f"{int(bad.sum())} of {bad.size} units (first: unit {int(np.argmax(bad))}): "
                    "its Newton steps failed at these draws of the globals (a fit that diverged, "
                    "or a unit whose log density is far from concave). Refit with "
                    "family='encoder', or with pm.fit(method='advi')."
                )
        return out

    def draw(
        self, values: Mapping[str, np.ndarray], noise: Sequence[np.ndarray], n_draws: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """The conditional plates' draws for given noise, their log q and the joint log p.

        Parameters
        ----------
        values : mapping
            (S, ...) value-space draws of every other free variable, by value name.
        noise : sequence of ndarray
            Per conditional plate (:attr:`plates`), (S, N, d) standard normal noise.
        n_draws : int
            S.

        Returns
        -------
        draws : dict
            ``(S, N, *event_shape)`` per value name of the conditional plates' latents.
        log_q : dict
            (S, N) per conditional plate: log q(z_n | θ, the plates drawn before) of the draws.
        log_p : ndarray
            (S,) log p(x, θ, z) of the joint draws on the value space.
        """
        args = [values[name] for name in self.inputs]
        # A block of draws at a time: the quadrature steps hold K × draws × rows arrays.
        block = self.block_draws
        pieces = [
            self._fn(
                *(a[start : start + block] for a in args),
                *(e[start : start + block] for e in noise),
                np.int64(min(block, n_draws - start)),
            )
            for start in range(0, n_draws, block)
        ]
        out = [np.concatenate(parts) for parts in zip(*pieces, strict=True)]
        n_names = len(self.names)
        draws = dict(zip(self.names, out[:n_names], strict=True))
        log_q = dict(zip([p.name for p in self.plates], out[n_names:-1], strict=True))
        return draws, log_q, out[-1]
