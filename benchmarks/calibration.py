"""Known-truth calibration of the fitting method: coverage, prediction error and parameter bias.

Synthetic sweeps on the planner's own grid, guards on (default: the budgets `scaling plan
--target-params 1e8 --vocab 8192` chooses, 3e15, 1e16 and 3e16 FLOPs, a 8,192-token vocabulary)
from Besiroglu et al. 2024's law (Eq. 3), with 0.5% and 2% Gaussian noise in log L; each
replicate is fitted as `scaling validate` fits (Approach 3, in-sweep cross-validation) and
predicts the law's compute-optimal model at 10x the largest budget (the plan-for-a-target factor). Prints one row per (objective, noise): coverage of the 95% prediction interval
(of the target's observed loss; of the noise-free law; and before cross-validation widened it),
the prediction's mean and RMS relative error, the interval's median width, and the bias / RMS
error of alpha, beta, E and a.

    python benchmarks/calibration.py [--replicates 200] [--losses lsq,huber] [--json out.json]

CPU only; ~1-2 s per replicate and objective on 2 cores with the full 4,500-start grid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling.calibration import known_truth, planner_grid  # noqa: E402
from scaling.laws import PUBLISHED_LAWS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--losses", default="lsq,huber")
    ap.add_argument("--noise", default="0.005,0.02")
    ap.add_argument("--budgets", default="3e15,1e16,3e16")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--target-factor", type=float, default=10.0, help="target compute / largest budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write every row as JSON here")
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    N, D = planner_grid(budgets, vocab_size=args.vocab)
    law = PUBLISHED_LAWS["epoch_approach3"]
    c_t = args.target_factor * max(budgets)
    n_t, d_t = law.optimal(c_t)
    print(f"grid: {len(N)} planner points, budgets {args.budgets}, vocab {args.vocab}, N {N.min():.3g}-{N.max():.3g}, "
          f"D/N {min(D / N):.2g}-{max(D / N):.3g}; law: {law.source}")
    print(f"target: compute-optimal at {c_t:.3g} FLOPs: N {n_t:.3g}, D {d_t:.3g}; {args.replicates} replicates")
    head = (f"{'objective':<10} {'noise':>6} {'usable':>7} {'cover':>6} {'truth':>6} {'raw':>6} {'kappa':>6} "
            f"{'err mean':>9} {'err rms':>8} {'width':>7}  bias/rmse alpha, beta, E, a")
    print(head)
    rows = []
    for loss in args.losses.split(","):
        for noise in (float(x) for x in args.noise.split(",")):
            t0 = time.time()
            r = known_truth(N, D, (n_t, d_t), noise=noise, replicates=args.replicates, loss=loss, seed=args.seed)
            rows.append({**r.to_dict(), "seconds": time.time() - t0})
            bias = ", ".join(f"{r.bias[k]:+.3f}/{r.rmse[k]:.3f}" for k in ("alpha", "beta", "E", "a"))
            print(f"{loss:<10} {noise:>6.3f} {r.usable:>4}/{r.replicates:<3}{r.coverage:>6.3f} {r.coverage_truth:>6.3f} "
                  f"{r.coverage_uncalibrated:>6.3f} {r.mean_kappa:>6.2f} {r.rel_error_mean:>+9.4f} "
                  f"{r.rel_error_rms:>8.4f} {r.median_width:>7.4f}  {bias}  ({time.time() - t0:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
