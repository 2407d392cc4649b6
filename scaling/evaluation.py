"""The held-out evaluation: which val tokens a run scores, the per-window losses its final
evaluation keeps, and the standard errors they give.

A run scores the first ``W`` windows of its data folder's val split, window ``w`` being the
``context`` target tokens after offset ``w·context`` (``TokenLoader``'s sequential mode). The
windows depend only on the folder, the context and ``W``, never on the batch size or the number
of processes, so every run of a sweep scores the same text and the difference of two runs'
losses is paired: the text's own difficulty cancels.

- Interim evals (every ``train.eval_interval`` steps, the loss curve in metrics.parquet) score
  ``eval_windows(val, context, train.eval_tokens)`` windows: cheap.
- The final eval scores ``eval_windows(val, context, train.final_eval_tokens)`` windows (at most
  ``scaling.config.FINAL_EVAL_TOKENS`` by default) and keeps every window's summed loss in the run
  folder's ``eval.parquet`` (``EVAL_SCHEMA``), written atomically before run.json says "done".

Standard errors are batch means (``batch_means_se``): the ``n`` windows, in order, go in batches
of ``⌊√n⌋`` consecutive windows (the last one shorter), the batch size under which the batch-means
estimator stays consistent for correlated sequences (Flegal & Jones 2010, Ann. Statist. 38(2)).
Windows of one long document are correlated: on 368,128 val tokens of Python source (21 files,
bytes tokenizer, context 256; a 2 × 64 model) the per-window error was 0.38% of the loss and the
batch-means one 1.14% (``benchmarks/eval_noise.py``). Over the batches, ``mean_se`` weights each
by its tokens (the ratio estimator of a mean over clusters; Cochran, *Sampling Techniques*, 3rd
ed., §6.2): with ``l_j = s_j / t_j`` and ``L = Σ s_j / Σ t_j``,
``se(L)² = m/(m−1) · Σ t_j² (l_j − L)² / (Σ t_j)²`` over the ``m`` batches; with equal ``t_j``
this is the sample standard deviation of the ``l_j`` over √m. ``paired_difference`` applies the
same to the per-window differences of two runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scaling.errors import DataError, FitError
from scaling.results import write_parquet_atomic

if TYPE_CHECKING:
    import torch

__all__ = [
    "EVAL_PARQUET",
    "EVAL_SCHEMA",
    "eval_windows",
    "score_windows",
    "write_eval",
    "read_eval",
    "mean_se",
    "batch_means_se",
    "eval_se",
    "paired_difference",
]

EVAL_PARQUET = "eval.parquet"

EVAL_SCHEMA = pa.schema(
    [
        ("window", pa.int64()),  # 0, 1, ...: the window's index in the val split
        ("offset", pa.int64()),  # its first input token's offset in val.bin (window · context)
        ("tokens", pa.int64()),  # target tokens scored (= context)
        ("loss_sum", pa.float64()),  # their summed cross-entropy, nats
    ]
)
# eval.parquet's schema metadata holds val_sha256 (of the scored tokens: a paired comparison
# checks it), data_path (the folder as the run named it) and context.


def eval_windows(val_tokens: int, context: int, max_tokens: int) -> int:
    """Windows an eval scores: ``max_tokens // context`` (at least one), at most all of val's.

    Raises
    ------
    DataError
        The val split holds no full window of ``context + 1`` tokens.
    """
    available = (val_tokens - 1) // context
    if available < 1:
        raise DataError(f"data.path: the val split has {val_tokens} tokens, fewer than one window of "
                        f"context + 1 = {context + 1}; prepare more val data (--val-fraction) or shorten the context")
    return min(available, max(1, max_tokens // context))


def score_windows(model: torch.nn.Module, data_dir: str | os.PathLike[str], context: int, n_windows: int,
                  batch_size: int, device: torch.device, *,
                  autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                  rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Summed loss (nats, float64) of each of the first ``n_windows`` val windows, in order.

    The windows go in batches of ``batch_size``; under DDP, batch ``g`` is rank ``g % world_size``'s
    (``TokenLoader``'s sequential interleaving), and every rank returns all windows. Each batch
    holds the same windows as in one process, so the per-window losses are the same too. The last
    batch is filled up with windows that are scored and dropped: one shape, one compiled graph.
    ``model`` is left in the train/eval mode it came in.
    """
    import torch
    import torch.distributed as dist

    from scaling.data import TokenLoader

    loader = TokenLoader(data_dir, "val", context, batch_size, mode="sequential", rank=rank, world_size=world_size)
    n_batches = -(-n_windows // batch_size)
    sums: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(rank, n_batches, world_size):
            x, y = (torch.from_numpy(np.ascontiguousarray(a)) for a in loader.next_batch())
            if device.type == "cuda":
                # Pinned, the copies overlap the previous batch's compute.
                x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            with autocast():
                _, losses = model(x, y, reduction="none")
            sums.append(losses.double().sum(dim=1))  # stays on the device: no sync per batch
    model.train(was_training)
    mine = torch.cat(sums).cpu().numpy() if sums else np.empty(0)
    parts = [mine]
    if world_size > 1:
        parts = [np.empty(0)] * world_size
        dist.all_gather_object(parts, mine)
    out = np.empty(n_batches * batch_size)
    for r, part in enumerate(parts):
        for k, g in enumerate(range(r, n_batches, world_size)):
            out[g * batch_size:(g + 1) * batch_size] = part[k * batch_size:(k + 1) * batch_size]
    return out[:n_windows]


def _val_digest(data_dir: str | os.PathLike[str], n_tokens: int) -> str:
    """SHA-256 of the first ``n_tokens`` token ids of val.bin, as stored."""
    from scaling.data import load_meta

    dtype = np.dtype(load_meta(data_dir)["dtype"])
    data = np.memmap(Path(data_dir) / "val.bin", dtype=dtype, mode="r")
    return hashlib.sha256(memoryview(np.ascontiguousarray(data[:n_tokens]))).hexdigest()


def write_eval(path: str | os.PathLike[str], loss_sums: np.ndarray, context: int,
               data_dir: str | os.PathLike[str]) -> None:
    """Write a final eval's per-window losses to ``path`` (``EVAL_SCHEMA``), atomically."""
    n = len(loss_sums)
    meta = {"val_sha256": _val_digest(data_dir, n * context + 1), "data_path": str(data_dir),
            "context": str(context)}
    table = pa.table({"window": np.arange(n), "offset": np.arange(n) * context, "tokens": np.full(n, context),
                      "loss_sum": np.asarray(loss_sums, float)}, schema=EVAL_SCHEMA.with_metadata(meta))
    write_parquet_atomic(table, path)


def _eval_path(run: str | os.PathLike[str]) -> Path:
    path = Path(run)
    return path if path.suffix == ".parquet" else path / EVAL_PARQUET


def read_eval(run: str | os.PathLike[str]) -> pa.Table | None:
    """A run's per-window final-eval losses (``run`` is its folder or its eval.parquet), or None
    for a run without them (not finished, or trained before they were kept).

    Raises
    ------
    FitError
        The file exists but is not a readable eval table.
    """
    path = _eval_path(run)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            table = pq.read_table(f)
        return table.select(EVAL_SCHEMA.names).cast(EVAL_SCHEMA.with_metadata(table.schema.metadata))
    except (pa.ArrowException, KeyError, OSError) as e:
        raise FitError(f"{path}: not a readable eval table ({e}); delete it and re-run the final eval "
                       "by relaunching the run") from None


def mean_se(tokens: np.ndarray, loss_sum: np.ndarray) -> tuple[float, float | None]:
    """Token-weighted mean loss over units (windows or batches of them) and its standard error
    treating the units as independent (module doc); the error is None for a single unit."""
    t, s = np.asarray(tokens, float), np.asarray(loss_sum, float)
    mean = float(s.sum() / t.sum())
    n = len(t)
    if n < 2:
        return mean, None
    return mean, math.sqrt(n / (n - 1) * float(np.sum((s - t * mean) ** 2))) / float(t.sum())


def batch_means_se(tokens: np.ndarray, loss_sum: np.ndarray) -> tuple[float, float | None]:
    """``mean_se`` over batches of ``⌊√n⌋`` consecutive windows (module doc): the mean loss of
    the ``n`` windows and a standard error that holds when neighbouring windows are correlated."""
    t, s = np.asarray(tokens, float), np.asarray(loss_sum, float)
    starts = np.arange(0, len(t), max(1, math.isqrt(len(t))))
    return mean_se(np.add.reduceat(t, starts), np.add.reduceat(s, starts))


def eval_se(run: str | os.PathLike[str]) -> float | None:
    """Standard error (nats) of a run's final val loss from its eval.parquet (``run`` is the run
    folder or that file); None when the run kept no per-window losses.
    """
    table = read_eval(run)
    if table is None:
        return None
    return batch_means_se(table.column("tokens").to_numpy(), table.column("loss_sum").to_numpy())[1]


def paired_difference(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str]) -> tuple[float, float | None]:
    """``(L_a − L_b, se)``: the difference of two runs' final val losses (nats) and its paired
    standard error, from their per-window losses on the same windows (module doc).

    Raises
    ------
    FitError
        A run has no eval.parquet, or the two did not score the same tokens (other data, context
        or number of windows): the message names both and what differs.
    """
    tables = []
    for run in (run_a, run_b):
        table = read_eval(run)
        if table is None:
            raise FitError(f"{_eval_path(run)}: missing; the run kept no per-window eval losses (unfinished, "
                           "or trained before they were kept), so no paired error")
        tables.append(table)
    a, b = tables
    meta_a, meta_b = ({k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()} for t in tables)
    same_rows = all(a.column(c).equals(b.column(c)) for c in ("offset", "tokens"))
    if not same_rows or meta_a.get("val_sha256") != meta_b.get("val_sha256"):
        what = (f"{a.num_rows} vs {b.num_rows} windows, context {meta_a.get('context')} vs {meta_b.get('context')}"
                if not same_rows else f"other val tokens ({meta_a.get('data_path')} vs {meta_b.get('data_path')})")
        raise FitError(f"{_eval_path(run_a)} and {_eval_path(run_b)} scored different eval windows ({what}); "
                       "a paired error needs runs evaluated on the same data folder, context and final_eval_tokens")
    tokens = a.column("tokens").to_numpy()
    la = a.column("loss_sum").to_numpy() / tokens
    lb = b.column("loss_sum").to_numpy() / tokens
    return batch_means_se(tokens, (la - lb) * tokens)
