"""The objective graph of amortized VI and its compiled training step.

:class:`AmortizedObjective` builds the symbolic Monte Carlo terms (log joint, entropy, log q) of an
:class:`~pymc_amortize.AmortizedApproximation`, minibatched over units (see
:mod:`pymc_amortize.model.logjoint`), and compiles the step that :class:`~pymc_amortize.AmortizedVI`
runs. Every random draw comes from its own shared generator (:class:`RandomDraws`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc
from pymc.variational.updates import total_norm_constraint
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.random.type import RandomType
from pytensor.tensor.variable import TensorVariable

from pymc_amortize.data.sampler import POOL_MIB, ChunkedUnitSampler
from pymc_amortize.errors import AmortizationError
from pymc_amortize.fitting.guard import GuardedStep
from pymc_amortize.fitting.jax import is_jax_mode, static_sizes
from pymc_amortize.fitting.objectives import ELBO, Objective
from pymc_amortize.guide.conditional import conditional_draws
from pymc_amortize.guide.globals import HALF_LOG_2PI, HALF_LOG_2PI_E
from pymc_amortize.model.logjoint import LogJoint, build_logjoint
from pymc_amortize.model.plates import UnitBatch
from pymc_amortize.model.types import LocalLatent, ModelAnalysis, Plate
from pymc_amortize.posterior.approximation import AmortizedApproximation

__all__ = ["AmortizedObjective", "RandomDraws", "batch_plate_of"]


class RandomDraws:
    """Random draws for one graph, each from its own shared generator, with their updates.

    One generator per draw (sharing one correlates the draws); ``pm.compile`` reseeds them all
    from the fit's ``random_seed``.

    Attributes
    ----------
    updates : dict
        Each generator -> its state after the draw, for the compiled function's ``updates``.

    Examples
    --------
    .. code-block:: python

        random = RandomDraws()
        eps = random(pt.random.normal, 0.0, 1.0, size=(10, 3))
        fn = pm.compile([], eps, updates=random.updates, random_seed=1)
    """

    def __init__(self):
        self.updates: dict[SharedVariable, pt.TensorVariable] = {}

    def __call__(
        self, rv: Callable, *args, size, unit_axis: int | None = None
    ) -> pt.TensorVariable:
        """A draw of ``rv(*args, size=size)`` from a new generator.

        ``unit_axis`` is the draw's axis along the minibatch's units (None where it has none),
        kept on the generator's tag for :mod:`pymc_amortize.fitting.host_noise`.
        """
        rng = pytensor.shared(np.random.default_rng())
        # The axis of the minibatch's units, read by pymc_amortize.fitting.host_noise to split a
        # minibatch across devices.
        rng.tag.unit_axis = unit_axis
        next_rng, value = rv(*args, size=size, rng=rng, return_next_rng=True)
        self.updates[rng] = next_rng
        return value


def _gaussian_log_q(eps: pt.TensorVariable, log_sd: pt.TensorVariable, axis) -> pt.TensorVariable:
    """log q of the draws mean + sd·eps, summed over ``axis`` (the reparameterised form)."""
    return (-0.5 * eps**2 - log_sd - HALF_LOG_2PI).sum(axis=axis)


def batch_plate_of(analysis: ModelAnalysis) -> Plate | None:
    """The plate a minibatch draws units of: the one with the most units.

    The other plates' latents are encoded whole at every step (their encoders see all their rows),
    which keeps the estimate unbiased for crossed groupings.
    """
    return max(analysis.plates, key=lambda plate: plate.size, default=None)


class AmortizedObjective:
    """Builds and compiles the training step of an :class:`AmortizedApproximation`.

    Parameters
    ----------
    approx : AmortizedApproximation
        Its parameters are trained; it is never otherwise changed.
    batch_size : int or None
        Units per step of the batch plate (:func:`batch_plate_of`); None for the full batch.
    objective : ELBO or IWAE
        Turns the Monte Carlo terms into the loss.
    random_seed : int or None
        Seeds the compiled step's generators and a ``unit_data`` fit's batch sampler.
    pool_mib : float
        MiB of ``unit_data``'s chunks a batch sampler holds (see ``ChunkedUnitSampler``).

    Attributes
    ----------
    guard : GuardedStep or None
        The last compiled step (:meth:`step_function`).
    sampler : ChunkedUnitSampler or None
        The host's batch filler of the last step of a fit on ``unit_data``.
    """

    def __init__(
        self,
        approx: AmortizedApproximation,
        *,
        batch_size: int | None,
        objective: Objective,
        random_seed: int | None,
        pool_mib: float = POOL_MIB,
    ):
        self.approx = approx
        self.batch_size = batch_size
        self.objective = objective
        self.random_seed = random_seed
        self.batch_plate = batch_plate_of(approx.analysis) if batch_size is not None else None
        self._logjoints: dict[bool, LogJoint] = {}
        self.logjoint(minibatch=batch_size is not None)  # refuse what cannot be minibatched now
        self.guard: GuardedStep | None = None
        self.sampler: ChunkedUnitSampler | None = None
        self.pool_mib = float(pool_mib)

    def logjoint(self, *, minibatch: bool) -> LogJoint:
        """The model's log joint, with the batch plate's factors ready for a minibatch or not."""
        if minibatch not in self._logjoints:
            buffers = self.approx.step_buffers
            self._logjoints[minibatch] = build_logjoint(
                self.approx.model,
                self.approx.analysis,
                batch_plate=self.batch_plate if minibatch else None,
                batch_buffers=buffers.arrays if buffers is not None and minibatch else None,
            )
        return self._logjoints[minibatch]

    def draw_globals(
        self, n_draws: int, random: RandomDraws
    ) -> tuple[dict[str, pt.TensorVariable], pt.TensorVariable, pt.TensorVariable]:
        """Draws ``(S, *shape)`` of each global from q(θ), its exact entropy and the draws' log q."""
        family = self.approx.globals
        if family is None:
            return {}, pt.zeros(()), pt.zeros((n_draws,))
        eps = random(pt.random.normal, 0.0, 1.0, size=(n_draws, family.size))
        return family.draws(eps), family.entropy(), family.log_q(eps)

    def draw_local(
        self,
        latent: LocalLatent,
        plate: Plate,
        mean: pt.TensorVariable,
        log_sd: pt.TensorVariable,
        n_draws: int,
        random: RandomDraws,
        *,
        scale: float,
        minibatched: bool = False,
    ) -> tuple[pt.TensorVariable, pt.TensorVariable, pt.TensorVariable]:
        """Draws ``(S, B, *event_shape)`` of one local latent from the encoder's (B, d) mean and
        log-sd, with its entropy and the draws' log q, both scaled to all N units."""
        batch = mean.shape[0]
        eps = random(
            pt.random.normal,
            0.0,
            1.0,
            size=(n_draws, batch, latent.event_size),
            unit_axis=1 if minibatched else None,
        )
        draws = (mean + pt.exp(log_sd) * eps).reshape((n_draws, batch, *latent.event_shape))
        n_units = self.approx.layouts[plate.name].size
        entropy = scale * log_sd.sum() + n_units * (latent.event_size * HALF_LOG_2PI_E)
        return draws, entropy, scale * _gaussian_log_q(eps, log_sd, axis=(1, 2))

    def mc_terms(
        self,
        n_draws: int,
        random: RandomDraws,
        *,
        full_batch: bool = False,
        static_shapes: bool = False,
    ) -> tuple[pt.TensorVariable, pt.TensorVariable, pt.TensorVariable]:
        """Symbolic (n_draws,) log joint draws (the batch plate's terms scaled by N/B), the exact
        entropy, and the (n_draws,) log q of the draws (local terms scaled likewise).

        The graph draws its own minibatch and noise through ``random``. With ``static_shapes``
        (for JAX) an indexed plate's batch rows are padded to a fixed count and weighted.
        """
        approx = self.approx
        minibatch = self.batch_size is not None and not full_batch
        if approx.unit_source is not None and not minibatch:
            raise AmortizationError(
                "This fit reads its units from unit_data, so only minibatches of them are ever "
                "in memory; a full-batch estimate over all of them is not available."
            )
        global_draws, entropy, log_q = self.draw_globals(n_draws, random)
        local_draws, batch = {}, None
        conditional: list[tuple[Plate, UnitBatch, list[TensorVariable]]] = []
        for plate in approx.analysis.plates:
            layout = approx.layouts[plate.name]
            if minibatch and plate is self.batch_plate and approx.unit_source is not None:
                # The host gathers the batch from chunks of unit_data (streaming.py).
                buffers = approx.step_buffers
                plate_batch = batch = (
                    layout.buffered(self.batch_size)
                    if approx.unit_source.index_key is None
                    else layout.buffered(
                        self.batch_size,
                        buffers.row_slot,
                        buffers.row_weight,
                        None if static_shapes else buffers.row_count,
                    )
                )
            elif minibatch and plate is self.batch_plate:
                # Our own unit draw rather than pm.Minibatch: the encoder inputs, the local
                # placeholders and every aligned data array must share these indices.
                units = random(
                    pt.random.integers, 0, layout.size, size=(self.batch_size,), unit_axis=0
                )
                plate_batch = batch = layout.draw(units, self.batch_size, padded=static_shapes)
            else:
                plate_batch = layout.full()
            if plate.name in approx.conditional_plates:
                means = [approx.symbolic_encode(lat.name, plate_batch)[0] for lat in plate.latents]
                conditional.append((plate, plate_batch, means))
                for latent, mean in zip(plate.latents, means, strict=True):
                    # Until the plate is drawn, the other plates condition on its encoder mean.
                    local_draws[latent.value_name] = pt.broadcast_to(
                        mean.reshape((1, mean.shape[0], *latent.event_shape)),
                        (n_draws, mean.shape[0], *latent.event_shape),
                    )
                continue
            for latent in plate.latents:
                mean, log_sd = approx.symbolic_encode(latent.name, plate_batch)
                draws, local_entropy, local_log_q = self.draw_local(
                    latent,
                    plate,
                    mean,
                    log_sd,
                    n_draws,
                    random,
                    scale=plate_batch.scale,
                    minibatched=plate_batch is batch,
                )
                local_draws[latent.value_name] = draws
                entropy, log_q = entropy + local_entropy, log_q + local_log_q
        logjoint = self.logjoint(minibatch=minibatch)
        # Terms of value 0 whose gradient trains the conditional plates' encoders.
        encoder_terms = pt.zeros(())
        for plate, plate_batch, means in conditional:
            # q(z | θ, other plates' draws): one Newton step on the log joint per draw and unit.
            drawn = conditional_draws(
                approx.local_family,
                plate,
                logjoint,
                global_draws,
                local_draws,
                means,
                random(
                    pt.random.normal,
                    0.0,
                    1.0,
                    size=(n_draws, means[0].shape[0], sum(lat.event_size for lat in plate.latents)),
                    unit_axis=1 if plate_batch is batch else None,
                ),
                batch=batch,
                scale=plate_batch.scale,
            )
            for latent, draws in zip(plate.latents, drawn.draws, strict=True):
                local_draws[latent.value_name] = draws
            entropy = entropy + plate_batch.scale * drawn.entropy.sum(axis=1).mean()
            log_q = log_q + plate_batch.scale * drawn.log_q.sum(axis=1)
            encoder_terms = encoder_terms - plate_batch.scale * drawn.encoder_loss.sum(axis=1)
        log_joint = logjoint.per_draw(global_draws, local_draws, batch)
        return log_joint + encoder_terms, entropy, log_q

    def estimate_elbo(
        self,
        n_draws: int = 1000,
        *,
        repeats: int = 1,
        random_seed: int | None = None,
        objective: Objective | None = None,
    ) -> tuple[float, float]:
        """Monte Carlo ELBO (or ``objective``'s bound) at the current parameters, and its SE.

        Full batch (all units); the parameters are not changed.

        Parameters
        ----------
        n_draws : int
            Estimates per evaluation (each from K draws for ``IWAE(K)``).
        repeats : int
            Evaluations, each of ``n_draws`` estimates.
        random_seed : int, optional
            Seeds the draws.
        objective : ELBO or IWAE, optional
            The bound to estimate (the ELBO when omitted).

        Returns
        -------
        estimate, standard_error : float
            The mean of the ``n_draws * repeats`` estimates and its Monte Carlo standard error.

        Examples
        --------
        .. code-block:: python

            elbo, se = inference.objective.estimate_elbo(2_000, random_seed=1)
            iwae, se = inference.objective.estimate_elbo(500, objective=pymc_amortize.IWAE(10))
        """
        objective = objective if objective is not None else ELBO()
        random = RandomDraws()
        terms = self.mc_terms(n_draws * objective.n_particles, random, full_batch=True)
        estimates = objective.per_estimate(*terms)
        fn = compile_pymc([], estimates, updates=random.updates, random_seed=random_seed)
        values = np.concatenate([fn() for _ in range(repeats)])
        return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))

    def gradient_function(
        self, *, obj_n_mc: int = 1, full_batch: bool = False, random_seed: int | None = None
    ) -> Callable[[], tuple[float, list[np.ndarray]]]:
        """A function of no arguments giving the loss and its gradient for every parameter of
        :attr:`AmortizedApproximation.params`, each call on a fresh minibatch and Monte Carlo
        draw, at the current parameters (nothing is updated): for checks of the estimator, e.g.
        that minibatch gradients average to the full-batch one.

        Parameters
        ----------
        obj_n_mc : int
            Monte Carlo draws per call.
        full_batch : bool
            Evaluate every unit instead of a minibatch of ``batch_size``.
        random_seed : int, optional
            Seeds the minibatches and draws (and a ``unit_data`` fit's batch sampler).

        Returns
        -------
        callable
            ``loss_and_gradient() -> (loss, [gradient per parameter])``.
        """
        random = RandomDraws()
        n_draws = int(obj_n_mc) * self.objective.n_particles
        loss = self.objective.loss(*self.mc_terms(n_draws, random, full_batch=full_batch))
        grads = pytensor.grad(loss, self.approx.params)
        fn = compile_pymc([], [loss, *grads], updates=random.updates, random_seed=random_seed)
        sampler = None
        if self.approx.unit_source is not None:
            sampler = ChunkedUnitSampler(
                self.approx.unit_source,
                self.approx.step_buffers,
                pool_mib=self.pool_mib,
                random_seed=random_seed,
            )

        def loss_and_gradient() -> tuple[float, list[np.ndarray]]:
            if sampler is not None:
                sampler.fill()
            loss_value, *grad_values = fn()
            return float(loss_value), grad_values

        return loss_and_gradient

    def step_graph(
        self,
        *,
        obj_n_mc: int = 1,
        obj_optimizer: Callable | None = None,
        total_grad_norm_constraint: float | None = None,
        mode: Any = None,
        static_shapes: bool | None = None,
    ) -> tuple[pt.TensorVariable, dict[SharedVariable, pt.TensorVariable]]:
        """The symbolic training step for the compilation ``mode``: the loss and the updates.

        The updates hold the optimizer's (parameters and moments) and the random generators'
        (the step draws its minibatch and noise itself); :meth:`step_function` compiles them,
        :class:`~pymc_amortize.fitting.host_noise.HostNoiseStep` first makes the draws inputs.

        Parameters
        ----------
        obj_n_mc : int
            Monte Carlo draws per step.
        obj_optimizer : callable, optional
            A PyMC optimizer, ``pm.adam(learning_rate=1e-3)`` when omitted.
        total_grad_norm_constraint : float, optional
            Clip the gradient's total norm to this value.
        mode : str or Mode, optional
            The compilation mode the graph is for. Under JAX every integer size shared variable
            becomes a constant (:func:`~pymc_amortize.fitting.jax.static_sizes`).
        static_shapes : bool, optional
            Give every array a shape fixed at compile time (what JAX needs): an indexed plate's
            batch rows are padded to B times its largest unit's rows and the padding weighted out.
            By default only under JAX.

        Returns
        -------
        loss : TensorVariable
            The scalar loss (the objective's negative, before the update).
        updates : dict
            Shared variable -> its value after the step.
        """
        if not isinstance(obj_n_mc, int | np.integer) or obj_n_mc <= 0:
            raise AmortizationError(f"obj_n_mc must be a positive integer; got {obj_n_mc!r}.")
        jax_mode = is_jax_mode(mode)
        static_shapes = jax_mode if static_shapes is None else static_shapes
        optimizer = obj_optimizer if obj_optimizer is not None else pm.adam(learning_rate=1e-3)
        random = RandomDraws()
        n_draws = int(obj_n_mc) * self.objective.n_particles
        loss = self.objective.loss(*self.mc_terms(n_draws, random, static_shapes=static_shapes))
        params = self.approx.params
        grads = pytensor.grad(loss, params)
        if total_grad_norm_constraint is not None:
            grads = total_norm_constraint(grads, total_grad_norm_constraint)
        updates = optimizer(grads, params)
        updates.update(random.updates)
        if jax_mode:
            loss, *new_values = static_sizes([loss, *updates.values()])
            updates = dict(zip(updates, new_values, strict=True))
        return loss, updates

    def step_function(
        self,
        *,
        score: bool = True,
        obj_n_mc: int = 1,
        obj_optimizer: Callable | None = None,
        total_grad_norm_constraint: float | None = None,
        compile_kwargs: dict | None = None,
    ) -> GuardedStep:
        """The compiled training step behind the divergence guard, as PyMC's loop calls it.

        Parameters
        ----------
        score : bool
            Ignored: the step always returns its loss (PyMC's ``Inference.fit`` passes it).
        obj_n_mc, obj_optimizer, total_grad_norm_constraint
            As for :meth:`step_graph`.
        compile_kwargs : dict, optional
            Passed to ``pm.compile`` (e.g. ``{"mode": "JAX"}``).

        Returns
        -------
        GuardedStep
            Each call runs one step (on a fresh minibatch) and returns its loss; it is also kept
            as ``self.guard``.
        """
        loss, updates = self.step_graph(
            obj_n_mc=obj_n_mc,
            obj_optimizer=obj_optimizer,
            total_grad_norm_constraint=total_grad_norm_constraint,
            mode=(compile_kwargs or {}).get("mode"),
        )
        fn = compile_pymc(
            [], loss, updates=updates, random_seed=self.random_seed, **(compile_kwargs or {})
        )
        # Everything the optimizer writes (parameters and its moments) is snapshotted together.
        state = [
            v
            for v in updates
            if isinstance(v, SharedVariable) and not isinstance(v.type, RandomType)
        ]
        self.guard = GuardedStep(fn, state, self.approx.nonfinite_params, feed=self._sampler())
        return self.guard

    def _sampler(self) -> Callable[[], None] | None:
        """The host's batch filler of a fit on unit_data, seeded from the fit's seed."""
        source = self.approx.unit_source
        if source is None:
            return None
        if self.sampler is not None:
            self.sampler.close()
        seed = np.random.SeedSequence(self.random_seed).spawn(1)[0]
        self.sampler = ChunkedUnitSampler(
            source,
            self.approx.step_buffers,
            pool_mib=self.pool_mib,
            random_seed=np.random.default_rng(seed),
        )
        return self.sampler.fill
