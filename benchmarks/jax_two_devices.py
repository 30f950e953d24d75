"""The data-parallel step on two forced host devices against one device, printed as JSON.

    python -m benchmarks.jax_two_devices

Sets ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` before JAX is imported, so it must run
in its own process (``tests/test_accelerators.py`` and ``benchmarks.jax_agreement`` start one).
The same model, initial weights and host noise seed are trained 200 Adam steps with the minibatch
of 100 units on one device, then split over two (50 units each); the losses, the final parameters,
the placements, and the number of all-reduces in the step XLA compiled are printed.
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # after XLA_FLAGS
import numpy as np
import pymc as pm
from jax.sharding import Mesh

from pymc_amortize import AmortizedVI
from pymc_amortize.examples.paper import linear_data, linear_model
from pymc_amortize.fitting.host_noise import HostNoiseStep


def run(devices, *, steps: int = 200) -> dict:
    with linear_model(linear_data(1_000, random_seed=0)):
        inference = AmortizedVI(
            family="encoder", batch_size=100, encoder_widths=(8,), random_seed=1
        )
    mesh = Mesh(np.array(devices), ("batch",))
    step = HostNoiseStep(
        inference, obj_optimizer=pm.adam(learning_rate=1e-2), noise_seed=3, mesh=mesh
    )
    losses = [step() for _ in range(steps)]
    noise = [jax.device_put(v, s) for v, s in zip(step.draw_noise(), step.shardings, strict=True)]
    # The step XLA compiled for these placements (PyTensor's linker keeps the jitted function on
    # the function's thunk): a split computation sums across devices with all-reduces.
    thunk = step.function.vm
    shared = [cell[0] for cell in thunk.inputs[len(noise) :]]
    hlo = thunk.jit_fn.lower(*noise, *shared).compile().as_text()
    param = inference.approx.params[0].get_value(borrow=True)
    return {
        "losses": losses,
        "noise_specs": [str(v.sharding.spec) for v in noise],
        "param_devices": len(param.sharding.device_set),
        "all_reduces": hlo.count("all-reduce"),
        "params": [np.asarray(p.get_value(borrow=True)).tolist() for p in inference.approx.params],
    }


def main() -> None:
    one, two = run(jax.devices()[:1]), run(jax.devices()[:2])
    param_diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(one["params"], two["params"], strict=True)
    )
    print(
        json.dumps(
            {
                "devices": len(jax.devices()),
                "one": one["losses"],
                "two": two["losses"],
                "noise_specs_two": two["noise_specs"],
                "param_devices_two": two["param_devices"],
                "all_reduces_one": one["all_reduces"],
                "all_reduces_two": two["all_reduces"],
                "param_diff": param_diff,
            }
        )
    )


if __name__ == "__main__":
    main()
