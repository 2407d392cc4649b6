"""Benchmark: a full Approach 3 fit — the 4,500-start grid plus 1,000 bootstrap refits — on
~250 points. The target (issue #6) is under 60 s on 2 CPU cores.

Run: ``python benchmarks/fit_speed.py [--points 250] [--bootstrap 1000] [--seed 0]``. The points
lie on an IsoFLOP grid (10 budgets, 1e17-1e21 FLOPs, 25 sizes each spanning N_opt/4..N_opt·4)
drawn from Chinchilla's published law (Hoffmann et al. 2022, Eq. 10) with 1% log-normal noise.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from scaling.fit import fit_approach3
from scaling.laws import PUBLISHED_LAWS
from scaling.results import FitData


def isoflop_points(n_points: int, seed: int) -> FitData:
    """``n_points`` runs on 10 IsoFLOP budgets from the published Chinchilla law, 1% noise."""
    law = PUBLISHED_LAWS["chinchilla_approach3"]
    budgets = np.geomspace(1e17, 1e21, 10)
    per_budget = n_points // budgets.size
    n_opt = np.array([law.optimal(c)[0] for c in budgets])
    N = (n_opt[:, None] * np.geomspace(0.25, 4.0, per_budget)[None]).ravel()
    C = np.repeat(budgets, per_budget)
    D = C / (6.0 * N)
    L = law.loss(N, D) * np.exp(np.random.default_rng(seed).normal(0.0, 0.01, N.size))
    return FitData.from_arrays(N, D, L, budget=C, source="benchmark")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=250)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = isoflop_points(args.points, args.seed)
    t0 = time.perf_counter()
    fit = fit_approach3(data, n_bootstrap=args.bootstrap, seed=args.seed)
    elapsed = time.perf_counter() - t0
    print(fit)
    print(f"\n{len(data)} points, {fit.details['n_starts']} starts ({fit.details['n_refined']} refined), "
          f"{fit.n_bootstrap} bootstrap refits ({fit.n_bootstrap_ok} converged): {elapsed:.1f} s "
          f"on {os.cpu_count()} CPU cores (target < 60 s)")


if __name__ == "__main__":
    main()
