"""The main job's first answer, cold and warm: A-VI (both families) against ADVI, side by side.

Each method runs the main job's call (:mod:`benchmarks.radon_real`: real radon, its settings, the
fit then ``approx.sample``) twice, each time in a fresh process: *cold* with an empty PyTensor
compile directory and an empty NUMBA cache of its own (a user's first fit on a new machine), then
*warm* with the caches the cold run filled (the same fit again, a later session). Printed per
method: wall and CPU seconds of the fit and of the sample, the steps taken, and the ratios
A-VI ÷ ADVI. The machine may be shared: CPU seconds are the steadier figure.

    python -m benchmarks.first_answer [--quick] [--methods conditional,encoder,advi] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

METHODS = ("conditional", "encoder", "advi")
LABELS = {"conditional": "A-VI conditional", "encoder": "A-VI encoder", "advi": "ADVI"}


def _run(method: str, quick: bool, seed: int) -> dict:
    """In the child process: the main job's fit and sample of one method, timed."""
    import time

    from benchmarks.radon_real import QUICK, Settings, fit_advi, fit_avi
    from pymc_amortize.examples.radon import load_radon, radon_model

    s = QUICK if quick else Settings()
    data, coords = load_radon()
    model = radon_model(data, coords=coords)
    wall, cpu = time.perf_counter(), time.process_time()
    approx = fit_advi(model, s, seed) if method == "advi" else fit_avi(model, s, seed, method)
    out = {"fit_wall": time.perf_counter() - wall, "fit_cpu": time.process_time() - cpu}
    wall, cpu = time.perf_counter(), time.process_time()
    approx.sample(s.vi_draws, random_seed=seed)
    out |= {"sample_wall": time.perf_counter() - wall, "sample_cpu": time.process_time() - cpu}
    out["steps"] = int(approx.hist.size)
    return out


def _child(method: str, quick: bool, seed: int, cache: str, numba_cache: str) -> dict:
    env = os.environ | {
        "PYTENSOR_FLAGS": f"base_compiledir={cache}",
        "NUMBA_CACHE_DIR": numba_cache,
    }
    code = (
        "import json; from benchmarks.first_answer import _run; "
        f"print('RESULT', json.dumps(_run({method!r}, {quick!r}, {seed!r})))"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr[-4000:])
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[7:])


def measure(method: str, quick: bool = False, seed: int = 0) -> dict[str, dict]:
    """Cold then warm :func:`_run` of ``method``, each in a fresh process, caches of its own."""
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as numba_cache:
        return {
            state: _child(method, quick, seed, cache, numba_cache) for state in ("cold", "warm")
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the main job's --quick settings")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    results = {}
    header = (
        f"{'method':<18}{'state':<6}{'total wall':>11}{'total cpu':>10}{'fit wall':>9}"
        f"{'fit cpu':>8}{'sample wall':>12}{'sample cpu':>11}{'steps':>7}"
    )
    print(header, flush=True)
    for method in methods:
        results[method] = measure(method, args.quick, args.seed)
        for state, r in results[method].items():
            r["total_wall"] = r["fit_wall"] + r["sample_wall"]
            r["total_cpu"] = r["fit_cpu"] + r["sample_cpu"]
            print(
                f"{LABELS[method]:<18}{state:<6}{r['total_wall']:>11.1f}{r['total_cpu']:>10.1f}"
                f"{r['fit_wall']:>9.1f}{r['fit_cpu']:>8.1f}{r['sample_wall']:>12.2f}"
                f"{r['sample_cpu']:>11.2f}{r['steps']:>7}",
                flush=True,
            )
    if "advi" in results:
        for method in (m for m in methods if m != "advi"):
            ratios = "  ".join(
                f"{state} wall {results[method][state]['total_wall'] / r['total_wall']:.2f} "
                f"cpu {results[method][state]['total_cpu'] / r['total_cpu']:.2f}"
                for state, r in results["advi"].items()
            )
            print(f"{LABELS[method]} / ADVI: {ratios}")


if __name__ == "__main__":
    main()
