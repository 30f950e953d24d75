"""The nonlinear model and an amortized guide in NumPyro, for side-by-side timing (``bench`` extra).

The guide is written by hand, flax-free: two jax.numpy MLPs (mean and log-sd, 1 → k → k → 1, ReLU)
whose weights are ``numpyro.param`` sites, initialised as :class:`pymc_amortize.MLPEncoder` does
(Xavier hidden layers, output weights N(0, 0.01²), log-sd bias log 0.1), on standardized inputs.
Model and guide subsample units with ``numpyro.plate(..., subsample_size=B)``; one MC draw
(``Trace_ELBO(num_particles=1)``), Adam. float64 runs inside ``jax.enable_x64(True)``, so both
precisions live in one process and can be timed in turn.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import numpy as np

from benchmarks.perf.models import NONLINEAR_FLOOR

__all__ = ["nonlinear_svi"]


def _init_mlp(rng, widths, init_mean):
    sizes = [1, *widths]
    weights = []
    for n_in, n_out in itertools.pairwise(sizes):
        scale = np.sqrt(2.0 / (n_in + n_out))
        weights.append((rng.normal(0, scale, (n_in, n_out)), np.zeros(n_out)))
    weights.append((rng.normal(0, 0.01, (sizes[-1], 1)), np.full(1, init_mean)))
    return weights


def nonlinear_svi(
    x: np.ndarray,
    *,
    widths=(16, 16),
    batch_size: int | None = None,
    dtype: str = "float32",
    lr: float = 1e-2,
    random_seed: int = 0,
) -> tuple[Callable[[], float], Callable[[], int]]:
    """A jitted SVI step on the nonlinear model: returns ``(step, n_params)``; ``step()`` runs one
    Adam step and returns the loss (−ELBO estimate) as a float."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO

    x64 = dtype == "float64"
    context = (lambda: jax.enable_x64(True)) if x64 else contextlib.nullcontext
    n_units = x.size
    rng = np.random.default_rng(random_seed)
    init = {"mean": _init_mlp(rng, widths, 0.0), "log_sd": _init_mlp(rng, widths, np.log(0.1))}
    with context():
        x_data = jnp.asarray(x, dtype=dtype)
        x_std = jnp.asarray((x - x.mean()) / x.std(), dtype=dtype)[:, None]
        zero, one = jnp.asarray(0.0, dtype), jnp.asarray(1.0, dtype)
        floor = jnp.asarray(NONLINEAR_FLOOR, dtype)

        def model():
            theta = numpyro.sample("theta", dist.Normal(zero, one))
            with numpyro.plate("unit", n_units, subsample_size=batch_size) as idx:
                z = numpyro.sample("z", dist.Normal(zero, one))
                sd = jnp.sqrt(jnp.cos(z) ** 2 + floor)
                numpyro.sample("x", dist.Normal(theta + z * (1 + jnp.sin(z)), sd), obs=x_data[idx])

        def mlp(head, inputs):
            h = inputs
            layers = init[head]
            for i, (w0, b0) in enumerate(layers):
                w = numpyro.param(f"{head}_W{i}", jnp.asarray(w0, dtype))
                b = numpyro.param(f"{head}_b{i}", jnp.asarray(b0, dtype))
                h = h @ w + b
                if i < len(layers) - 1:
                    h = jax.nn.relu(h)
            return h[:, 0]

        def guide():
            loc = numpyro.param("theta_loc", zero)
            scale = numpyro.param("theta_scale", one, constraint=dist.constraints.positive)
            numpyro.sample("theta", dist.Normal(loc, scale))
            with numpyro.plate("unit", n_units, subsample_size=batch_size) as idx:
                inputs = x_std[idx]
                mean, log_sd = mlp("mean", inputs), mlp("log_sd", inputs)
                numpyro.sample("z", dist.Normal(mean, jnp.exp(log_sd)))

        svi = SVI(model, guide, numpyro.optim.Adam(lr), Trace_ELBO(num_particles=1))
        state = svi.init(jax.random.PRNGKey(random_seed))
        update = jax.jit(svi.update)
        holder = {"state": state}

    def step() -> float:
        with context():
            holder["state"], loss = update(holder["state"])
            return float(loss)

    def n_params() -> int:
        params = svi.get_params(holder["state"])
        return int(sum(np.size(v) for v in params.values()))

    return step, n_params
