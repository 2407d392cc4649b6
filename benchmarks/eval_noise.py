"""Eval noise of finished runs: the standard error of each run's final val loss (as a share of
the loss) over blocks of B consecutive windows and by batch means (``scaling.evaluation``, the
figure runs record), and the paired error of each run against the first.

Windows of one long document are correlated; blocks absorb correlations shorter than a block, so
where the error grows with B the per-window figure (B=1) understates the noise. ``tokens for
0.2%`` extrapolates the batch-means error as 1/√tokens.

    python benchmarks/eval_noise.py results/sweep/RUN_A results/sweep/RUN_B ...
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from scaling.evaluation import batch_means_se, mean_se, paired_difference, read_eval

BLOCKS = (1, 4, 16, 64)


def blocked_se(tokens: np.ndarray, loss_sum: np.ndarray, block: int) -> float | None:
    """``mean_se``'s error over blocks of ``block`` consecutive windows (the tail that fills no
    block is dropped)."""
    n = len(tokens) // block * block
    return mean_se(tokens[:n].reshape(-1, block).sum(1), loss_sum[:n].reshape(-1, block).sum(1))[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders holding eval.parquet")
    args = p.parse_args(argv)
    print(f"{'run':24s} {'windows':>8s} {'tokens':>11s} {'val_loss':>9s} "
          + " ".join(f"{'se B=' + str(b):>10s}" for b in BLOCKS) + f" {'batch means':>12s} {'tokens for 0.2%':>16s}")
    for run in args.runs:
        table = read_eval(run)
        if table is None:
            print(f"{run}: no eval.parquet", file=sys.stderr)
            return 2
        t, s = table.column("tokens").to_numpy(), table.column("loss_sum").to_numpy()
        loss, se = batch_means_se(t, s)
        ses = [blocked_se(t, s, b) for b in BLOCKS]
        need = t.sum() * (se / (0.002 * loss)) ** 2 if se else math.nan
        print(f"{Path(run).name:24s} {len(t):8d} {int(t.sum()):11,d} {loss:9.4f} "
              + " ".join(f"{x / loss:9.3%}" if x is not None else f"{'-':>10s}" for x in ses)
              + f" {(se or math.nan) / loss:11.3%} {need:16,.0f}")
    for run in args.runs[1:]:
        diff, se = paired_difference(run, args.runs[0])
        unpaired = math.hypot(*(batch_means_se(x.column("tokens").to_numpy(), x.column("loss_sum").to_numpy())[1]
                                or 0 for x in (read_eval(run), read_eval(args.runs[0]))))
        print(f"{Path(run).name} - {Path(args.runs[0]).name}: {diff:+.4f} nats, paired se {se:.4f} "
              f"(unpaired {unpaired:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
