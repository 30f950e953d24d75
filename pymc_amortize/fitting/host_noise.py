"""The training step on PyTensor's JAX backend: static shapes, host-drawn noise, data parallelism.

``pm.fit(method="amortized", compile_kwargs={"mode": "JAX"})`` compiles the usual step (its random
draws inside the graph) with PyTensor's JAX linker; :func:`~pymc_amortize.fitting.jax.static_sizes`
is applied first, because JAX needs every shape at trace time and the step reads the plates' sizes
from shared variables.

PyTensor's JAX backend turns each NumPy ``Generator`` into a JAX PRNG key, so the same
``random_seed`` gives different draws under NUMBA and JAX. :class:`HostNoiseStep` makes the
randomness backend-independent: every random draw of the step becomes an input, drawn on the host
by a NumPy ``Generator`` with the random variable's own ``rng_fn``. The same ``noise_seed`` then
gives the same losses under every backend, up to floating-point rounding, and the minibatch can be
split across devices: given a ``jax.sharding.Mesh``, the draws along the minibatch's unit axis
(the unit ids and the local latents' noise) are placed with a ``NamedSharding`` split over the
mesh, and ``jax.jit`` (called by PyTensor's linker) propagates that split through the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Variable
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import io_toposort
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.random.type import RandomType

from pymc_amortize.errors import AmortizationError
from pymc_amortize.fitting.jax import is_jax_mode

if TYPE_CHECKING:
    from pymc_amortize.fitting.vi import AmortizedVI

__all__ = ["HostNoiseStep", "NoiseInputs", "compile_noise_loss", "explicit_noise"]


class NoiseInputs:
    """The random draws of a graph, made inputs, and a host sampler that fills them.

    Attributes
    ----------
    inputs : list of TensorVariable
        One placeholder per random generator of the graph, in the order of its updates.
    unit_axes : list of int or None
        Axis of each input along the minibatch's units, None where the draw has none.
    """

    def __init__(
        self,
        inputs: list[pt.TensorVariable],
        unit_axes: list[int | None],
        samplers: list[tuple[RandomVariable, Callable]],
    ):
        self.inputs = inputs
        self.unit_axes = unit_axes
        self._samplers = samplers

    def draw(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One step's draws, from ``rng``, with each random variable's ``rng_fn``.

        ``rng_fn`` is what PyTensor's Python backend calls, so the draws are those of NumPy's
        ``Generator`` methods (``normal``, ``integers``), cast to each input's dtype.
        """
        values: list[np.ndarray] = []
        for placeholder, (op, arguments) in zip(self.inputs, self._samplers, strict=True):
            size, *params = arguments(*values)
            value = op.rng_fn(rng, *params, tuple(int(s) for s in size))
            values.append(np.asarray(value, dtype=placeholder.type.dtype))
        return values


def explicit_noise(
    loss: pt.TensorVariable, updates: Mapping[SharedVariable, Variable]
) -> tuple[pt.TensorVariable, dict[SharedVariable, Variable], NoiseInputs]:
    """The step's ``loss`` and ``updates`` with each random draw replaced by an input.

    Every random variable that draws from a shared generator updated in ``updates`` is replaced,
    the copies made by graph cloning included (they share the generator, and PyTensor's merge
    rewrite would make them one draw); the generators' updates are dropped.

    Returns
    -------
    loss, updates
        The graphs without random draws.
    noise : NoiseInputs
        The new inputs and their host sampler.
    """
    rngs = [var for var in updates if isinstance(var.type, RandomType)]
    kept = [var for var in updates if var not in rngs]
    graph = [loss, *(updates[var] for var in kept)]
    nodes = {}
    for node in io_toposort([], graph):
        if isinstance(node.op, RandomVariable) and node.inputs[0] in rngs:
            nodes.setdefault(node.inputs[0], []).append(node)
    rngs = [rng for rng in rngs if rng in nodes]
    inputs = [nodes[rng][0].outputs[1].type(name=f"noise_{i}") for i, rng in enumerate(rngs)]
    replace = {
        node.outputs[1]: placeholder
        for rng, placeholder in zip(rngs, inputs, strict=True)
        for node in nodes[rng]
    }
    # Sizes and parameters of the draws, with earlier draws replaced too (a local latent's noise
    # is sized by the encoder's output, which reads the drawn unit ids).
    arguments = [nodes[rng][0].inputs[1:] for rng in rngs]
    new = graph_replace(graph + [a for args in arguments for a in args], replace, strict=False)
    new_graph, flat_arguments = new[: len(graph)], new[len(graph) :]
    samplers = []
    start = 0
    for i, rng in enumerate(rngs):
        n = len(arguments[i])
        fn = pytensor.function(
            inputs[:i],
            flat_arguments[start : start + n],
            on_unused_input="ignore",
            mode="FAST_COMPILE",
        )
        samplers.append((nodes[rng][0].op, fn))
        start += n
    unit_axes = [getattr(rng.tag, "unit_axis", None) for rng in rngs]
    return (
        new_graph[0],
        dict(zip(kept, new_graph[1:], strict=True)),
        NoiseInputs(inputs, unit_axes, samplers),
    )


class HostNoiseStep:
    """The training step of an :class:`~pymc_amortize.AmortizedVI` fed with host-drawn noise.

    The step's unit draws and Gaussian noise are inputs drawn by a NumPy ``Generator`` seeded with
    ``noise_seed``, so the same seed gives the same losses under every PyTensor backend. Each call
    runs one step, updating the approximation's parameters and optimizer state in place.

    Parameters
    ----------
    inference : AmortizedVI
        Its approximation's parameters are trained.
    mode : str or Mode
        PyTensor compilation mode, e.g. ``"JAX"`` or ``"NUMBA"``.
    obj_n_mc, obj_optimizer, total_grad_norm_constraint
        As for ``pm.fit``.
    noise_seed : int, optional
        Seeds the host generator of the draws.
    mesh : jax.sharding.Mesh, optional
        A one-axis mesh of devices (JAX mode only): the minibatch's units are split across them
        (the batch size must be a multiple of their number); parameters and data are replicated.

    Examples
    --------
    .. code-block:: python

        import pymc as pm
        from pymc_amortize import AmortizedVI
        from pymc_amortize.fitting.host_noise import HostNoiseStep
        from pymc_amortize.examples.paper import linear_data, linear_model

        with linear_model(linear_data(1_000, random_seed=0)):
            inference = AmortizedVI(batch_size=100, random_seed=1)
        step = HostNoiseStep(inference, mode="JAX", noise_seed=2)
        losses = [step() for _ in range(500)]
        step.to_host()  # parameters back to NumPy arrays before sampling with NUMBA
    """

    def __init__(
        self,
        inference: AmortizedVI,
        *,
        mode: Any = "JAX",
        obj_n_mc: int = 1,
        obj_optimizer: Callable | None = None,
        total_grad_norm_constraint: float | None = None,
        noise_seed: int | None = None,
        mesh: Any = None,
    ):
        jax_mode = is_jax_mode(mode)
        if mesh is not None and not jax_mode:
            raise AmortizationError(
                f"mesh= splits the minibatch across JAX devices and needs mode='JAX'; got "
                f"mode={mode!r}."
            )
        loss, updates = inference.objective.step_graph(
            obj_n_mc=obj_n_mc,
            obj_optimizer=obj_optimizer,
            total_grad_norm_constraint=total_grad_norm_constraint,
            mode=mode,
        )
        loss, updates, self.noise = explicit_noise(loss, updates)
        self.updates = updates
        self.rng = np.random.default_rng(noise_seed)
        self.shardings = None if mesh is None else self._shardings(mesh)
        self.function = pytensor.function(self.noise.inputs, loss, updates=updates, mode=mode)
        if self.shardings is not None:
            # PyTensor's input filter turns every input into a NumPy array; skipping it passes
            # the placed jax.Arrays to the jitted step, whose jit keeps their sharding.
            self.function.trust_input = True

    def _shardings(self, mesh) -> list:
        from jax.sharding import NamedSharding, PartitionSpec

        if len(mesh.axis_names) != 1:
            raise AmortizationError(
                f"mesh= must have one axis (the minibatch's); got axes {mesh.axis_names}."
            )
        if not any(axis is not None for axis in self.noise.unit_axes):
            raise AmortizationError(
                "mesh= splits the minibatch's units across devices and needs batch_size= "
                "(a full-batch step has no minibatch axis)."
            )
        (axis_name,) = mesh.axis_names
        n_devices = mesh.devices.size
        shardings = []
        # The draws' shapes, from a throwaway generator: the step's own stream stays untouched,
        # so a step with a mesh draws what one without draws.
        shapes = [value.shape for value in self.noise.draw(np.random.default_rng(0))]
        for axis, shape in zip(self.noise.unit_axes, shapes, strict=True):
            if axis is None:
                shardings.append(NamedSharding(mesh, PartitionSpec()))
                continue
            if shape[axis] % n_devices:
                raise AmortizationError(
                    f"batch_size={shape[axis]} cannot be split evenly across {n_devices} "
                    f"devices; pass a batch_size that is a multiple of {n_devices}."
                )
            spec = [None] * len(shape)
            spec[axis] = axis_name
            shardings.append(NamedSharding(mesh, PartitionSpec(*spec)))
        return shardings

    def draw_noise(self) -> list[np.ndarray]:
        """The next step's draws from the host generator."""
        return self.noise.draw(self.rng)

    def __call__(self, noise: Sequence[np.ndarray] | None = None) -> float:
        """Run one step (with ``noise``, or the next draws) and return its loss."""
        noise = self.draw_noise() if noise is None else list(noise)
        if self.shardings is not None:
            import jax

            noise = [jax.device_put(v, s) for v, s in zip(noise, self.shardings, strict=True)]
        return float(self.function(*noise))

    def to_host(self) -> None:
        """Store the updated parameters and optimizer state as NumPy arrays.

        Under JAX the step leaves ``jax.Array`` values in the shared variables it updates;
        functions compiled with other backends (``approx.sample``) need NumPy arrays.
        """
        for var in self.updates:
            var.set_value(np.asarray(var.get_value(borrow=True)))


def compile_noise_loss(
    inference: AmortizedVI,
    *,
    mode: Any,
    obj_n_mc: int = 1,
    static_shapes: bool | None = None,
) -> tuple[Callable, NoiseInputs]:
    """The step's loss and its gradient in the parameters, as a function of the step's draws.

    Parameters
    ----------
    inference : AmortizedVI
        Its parameters are read, never changed.
    mode : str or Mode
        PyTensor compilation mode.
    obj_n_mc : int
        Monte Carlo draws per step.
    static_shapes : bool, optional
        Pad an indexed plate's batch rows to a fixed count (see ``step_graph``); by default only
        under JAX.

    Returns
    -------
    function : callable
        ``function(*noise) -> [loss, *gradients]`` (gradients in ``approx.params`` order).
    noise : NoiseInputs
        The draws it takes, with their host sampler.

    Examples
    --------
    .. code-block:: python

        numba_fn, noise = compile_noise_loss(inference, mode="NUMBA")
        jax_fn, _ = compile_noise_loss(inference, mode="JAX")
        draws = noise.draw(np.random.default_rng(0))
        loss_numba, loss_jax = numba_fn(*draws)[0], jax_fn(*draws)[0]
    """
    loss, updates = inference.objective.step_graph(
        obj_n_mc=obj_n_mc, mode=mode, static_shapes=static_shapes
    )
    loss, _, noise = explicit_noise(loss, updates)
    outputs = [loss, *pytensor.grad(loss, inference.approx.params)]
    return pytensor.function(noise.inputs, outputs, mode=mode), noise
