"""Scale: A-VI on a radon-style model with 10³ to 10⁵ counties and ten times as many houses.

Each size runs in a fresh process. A-VI minibatches over counties (B per step, all their houses,
scaled by N/B). Reported per size: trainable parameters (A-VI's encoder and globals; ADVI's
2 × (counties + globals)), the data held, the process's resident memory after set-up and the
extra resident memory the steps use (peak minus start, with the peak reset after set-up), the
time per step, and how well the encoded county means track the simulated intercepts. ADVI's step
time is measured (full batch, its parameters grow with the counties) up to ``--advi-max``.

    python -m benchmarks.radon_scale [--quick] [--sizes 1000 10000 100000] [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def _time_steps(step, n_steps: int, blocks: int = 5) -> float:
    """Median milliseconds per step over ``blocks`` blocks of ``n_steps // blocks`` steps."""
    per_block = max(n_steps // blocks, 1)
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(per_block):
            step()
        times.append((time.perf_counter() - start) / per_block * 1e3)
    return float(np.median(times))


def run_one(n_counties: int, batch: int, steps: int, advi: bool, seed: int) -> dict:
    """One size, in this process."""
    import pymc as pm

    from benchmarks.harness import n_params, reset_peak_rss, rss_mib
    from pymc_amortize import AmortizedVI
    from pymc_amortize.examples.simulated_radon import radon_data, radon_model

    data = radon_data(n_counties, 10 * n_counties, random_seed=seed)
    model = radon_model(data, coords=False)
    out = {
        "counties": n_counties,
        "houses": int(data.county_idx.size),
        "largest_county": int(data.county_sizes.max()),
        "data_mb": (data.log_radon.nbytes + data.floor.nbytes + data.county_idx.nbytes) / 2**20,
        "advi_params": 2 * (n_counties + 4),
    }
    inference = AmortizedVI(family="encoder", model=model, batch_size=batch, random_seed=seed)
    approx = inference.approx
    out["avi_params"] = n_params(approx)
    step = inference.objective.step_function(obj_optimizer=pm.adam(learning_rate=1e-2))
    step()  # the first call pays for compilation
    out["rss_after_setup_mb"] = rss_mib()
    try:
        reset_peak_rss()
        reset = True
    except OSError:  # the kernel refused (Linux < 4.0 or no /proc)
        reset = False
    start_rss = rss_mib()
    out["avi_ms_per_step"] = _time_steps(step, steps)
    out["avi_step_extra_rss_mb"] = rss_mib("VmHWM") - start_rss if reset else None
    q = approx.encode()["a"]
    out["corr_encoded_vs_true_a"] = float(np.corrcoef(q.mean, data.a)[0, 1])
    if advi:
        with model:
            advi_inference = pm.ADVI(random_seed=seed)
        advi_step = advi_inference.objective.step_function(
            obj_optimizer=pm.adam(learning_rate=1e-2)
        )
        advi_step()
        out["advi_ms_per_step"] = _time_steps(advi_step, max(steps // 4, 5))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10³ and 10⁴ counties, few steps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--batch", type=int, default=100, help="counties per step")
    parser.add_argument("--steps", type=int, default=2_000, help="timed A-VI steps per size")
    parser.add_argument("--advi-max", type=int, default=100_000, help="largest size to time ADVI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = [1_000, 10_000], 300
    if args.one is not None:
        result = run_one(args.one, args.batch, args.steps, args.one <= args.advi_max, args.seed)
        print(json.dumps(result))
        return
    rows = []
    for size in args.sizes:
        # A fresh process per size, so that resident memory is that size's alone.
        command = [sys.executable, "-m", "benchmarks.radon_scale", "--one", str(size)]
        command += ["--batch", str(args.batch), "--steps", str(args.steps)]
        command += ["--advi-max", str(args.advi_max), "--seed", str(args.seed)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done: {size} counties", file=sys.stderr)

    header = (
        "| counties | houses | largest | A-VI params | ADVI params | data MB | RSS after set-up MB "
        f"| extra RSS in steps MB | A-VI ms/step (B={args.batch}) | ADVI ms/step (full) | corr(q mean, a) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        extra = r["avi_step_extra_rss_mb"]
        advi = r.get("advi_ms_per_step")
        print(
            f"| {r['counties']:,} | {r['houses']:,} | {r['largest_county']} | {r['avi_params']:,} "
            f"| {r['advi_params']:,} | {r['data_mb']:.1f} | {r['rss_after_setup_mb']:.0f} "
            f"| {'n/a' if extra is None else f'{extra:.1f}'} | {r['avi_ms_per_step']:.2f} "
            f"| {'not run' if advi is None else f'{advi:.2f}'} | {r['corr_encoded_vs_true_a']:.3f} |"
        )


if __name__ == "__main__":
    main()
