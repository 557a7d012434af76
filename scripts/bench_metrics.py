#!/usr/bin/env python
"""Cost of the disentanglement scores at the sample sizes the paper scripts use.

Workloads (one learned representation each, ``codes = tanh(z A) + 0.1 noise`` with a
random square ``A``: entangled, as a trained encoder's codes are before they are good):

* ``identifiability``: ``n = 2000`` Gaussian factors (continuous, 20 bins), ``m = d = 10``
  (``scripts/identifiability.py``, every encoder and baseline);
* ``figure4-quick`` / ``figure4-full``: ``n = 1500`` / ``4000`` rows of the 3D Shapes grid
  (discrete factors with 10, 10, 10, 8, 4, 15 values), ``d = 6``
  (``scripts/figure4_3dshapes.py``, every encoder).

For each: MCC, DCI (Lasso), MIG, SAP, modularity, explicitness and
``information_report`` (the four together, as the scripts call them), the process CPU
seconds (robust on a shared machine) and the wall seconds, best of ``--repeats``.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_metrics.py --repeats 3 [--json out.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from episodes.atomic import atomic_write_text  # noqa: E402
from metasparse.metrics import dci, explicitness, information_report, mig, modularity, sap  # noqa: E402
from metasparse.metrics.disentanglement import mean_corr_coef  # noqa: E402


def workloads(scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((int(2000 * scale), 10))
    yield "identifiability", z, False, z
    grid = np.array(list(itertools.product(*map(range, (10, 10, 10, 8, 4, 15)))), dtype=np.float64)
    for name, n in (("figure4-quick", 1500), ("figure4-full", 4000)):
        idx = grid[rng.choice(len(grid), int(n * scale), replace=False)]
        yield name, idx, True, (idx - idx.mean(0)) / idx.std(0)


def timed(fn, repeats: int):
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        best_cpu, best_wall = min(best_cpu, time.process_time() - c), min(best_wall, time.perf_counter() - w)
    return best_cpu, best_wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every sample size (a quick check: 0.1)")
    a = p.parse_args(argv)
    if a.repeats < 1 or not 0.05 <= a.scale <= 10:
        p.error(f"--repeats must be >= 1 and --scale in [0.05, 10], got {a.repeats} and {a.scale}")
    rows = []
    for name, factors, discrete, z in workloads(a.scale):
        rng = np.random.default_rng(1)
        codes = np.tanh(z @ rng.standard_normal((z.shape[1], z.shape[1]))) + 0.1 * rng.standard_normal(z.shape)
        metrics = {"mcc": lambda: mean_corr_coef(z, codes), "dci": lambda: dci(z, codes),
                   "mig": lambda: mig(factors, codes, discrete_factors=discrete),
                   "sap": lambda: sap(factors, codes, discrete_factors=discrete),
                   "modularity": lambda: modularity(factors, codes, discrete_factors=discrete),
                   "explicitness": lambda: explicitness(factors, codes, discrete_factors=discrete),
                   "information_report": lambda: information_report(factors, codes, discrete_factors=discrete)}
        for metric, fn in metrics.items():
            cpu, wall = timed(fn, a.repeats)
            rows.append({"workload": name, "n": len(codes), "d": codes.shape[1], "metric": metric,
                         "cpu_s": round(cpu, 3), "wall_s": round(wall, 3)})
            print(f"{name:<16} n={len(codes):<5} {metric:<19} cpu {cpu:6.2f} s  wall {wall:6.2f} s", flush=True)
    if a.json is not None:
        info = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
        atomic_write_text(a.json, json.dumps(info, indent=1))
    return rows


if __name__ == "__main__":
    main()
