"""How closely the JAX-compiled step agrees with NUMBA, and two host devices with one.

    python -m benchmarks.jax_agreement

Prints (float64, CPU): the relative difference of the loss and gradient for the same host-drawn
noise on a row-plate and an indexed (pooled-encoder) model; of 200-step loss trajectories with the
same noise seed; the first losses of ``pm.fit`` under each mode with the same ``random_seed`` (the
JAX backend draws its own noise); and, in a subprocess with two forced host devices, the
data-parallel trajectory against the one-device one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pymc as pm

from pymc_amortize import AmortizedVI
from pymc_amortize.examples.paper import linear_data, linear_model
from pymc_amortize.examples.simulated_radon import radon_data, radon_model
from pymc_amortize.fitting.host_noise import HostNoiseStep, compile_noise_loss


def rows(**options):
    with linear_model(linear_data(1_000, random_seed=0)):
        return AmortizedVI(batch_size=100, random_seed=1, **options)


def indexed():
    with radon_model(radon_data(random_seed=0)):
        return AmortizedVI(family="encoder", random_seed=1)


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def fixed_noise(build) -> tuple[float, float]:
    inference = build()
    numba_fn, noise = compile_noise_loss(inference, mode="NUMBA")
    jax_fn, _ = compile_noise_loss(inference, mode="JAX")
    rng = np.random.default_rng(0)
    loss, grad = 0.0, 0.0
    for _ in range(10):
        draws = noise.draw(rng)
        expected, got = numba_fn(*draws), jax_fn(*draws)
        loss = max(loss, relative(got[0], expected[0]))
        grad = max(grad, *(relative(g, e) for g, e in zip(got[1:], expected[1:], strict=True)))
    return loss, grad


def trajectories() -> float:
    losses = {}
    for mode in ["NUMBA", "JAX"]:
        step = HostNoiseStep(
            rows(), mode=mode, obj_optimizer=pm.adam(learning_rate=1e-2), noise_seed=3
        )
        losses[mode] = [step() for _ in range(200)]
    return relative(losses["JAX"], losses["NUMBA"])


def same_seed_fit() -> dict[str, list[float]]:
    first = {}
    for mode in ["NUMBA", "JAX"]:
        with linear_model(linear_data(1_000, random_seed=0)):
            approx = pm.fit(
                3,
                family="encoder",
                method="amortized",
                batch_size=100,
                random_seed=1,
                progressbar=False,
                compile_kwargs={"mode": mode},
            )
        first[mode] = [round(float(v), 3) for v in approx.hist]
    return first


def two_devices_output() -> dict:
    """What ``benchmarks.jax_two_devices`` prints, run in a subprocess (XLA_FLAGS must be set
    before JAX is imported); a RuntimeError with its stderr when it fails."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.jax_two_devices"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def two_devices() -> dict:
    out = two_devices_output()
    out["loss_rel_diff"] = relative(out.pop("two"), out.pop("one"))
    return out


def main() -> None:
    warnings.simplefilter("ignore", UserWarning)
    for name, build in [("rows (linear, B=100)", rows), ("indexed (radon, pooled)", indexed)]:
        loss, grad = fixed_noise(build)
        print(f"fixed noise, {name}: loss rel diff {loss:.1e}, gradient rel diff {grad:.1e}")
    print(f"200-step trajectories, same noise seed: rel diff {trajectories():.1e}")
    print(f"pm.fit same random_seed, first 3 losses: {same_seed_fit()}")
    print(f"2 forced host devices vs 1: {two_devices()}")


if __name__ == "__main__":
    main()
