"""Results layout and Parquet schemas: what a run and a sweep leave on disk.

Layout::

    results/<sweep>/runs.parquet            one row per run (RUNS_SCHEMA), rebuilt atomically
    results/<sweep>/<run_id>/config.yaml    the resolved RunConfig
    results/<sweep>/<run_id>/run.json       config, conventions, environment, status
    results/<sweep>/<run_id>/metrics.parquet  one row per logged step (METRICS_SCHEMA)
    results/<sweep>/<run_id>/checkpoint.pt  latest checkpoint (never committed)
    results/<sweep>/<run_id>/checkpoint_000800.pt  a trunk's checkpoint kept at a branch point

A trunk's checkpoints (kept ones, then its checkpoint.pt) are deleted once the runs that may
need them are done (``scaling.launch.drop_spent_checkpoints``).

A ``wsd-branch`` sweep's trunks are runs like any other on disk, but not rows of runs.parquet:
a trunk is no (N, D) point. Its cost is in its branches' ``flops_cost_*`` columns instead.

Column names carry their units. Missing values are null, never a sentinel like 0.0.
FLOPs columns count C with N = total parameters; ``flops_6nd_attn`` adds 12·L·d·T per token
(see ``scaling.model.flops_per_token``). Other conventions are recomputed from the N columns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from scaling.config import atomic_write_text, branch_costs

if TYPE_CHECKING:
    from scaling.config import RunConfig
    from scaling.launch import RunTask

__all__ = [
    "METRICS_SCHEMA",
    "RUNS_SCHEMA",
    "write_parquet_atomic",
    "MetricsWriter",
    "read_metrics",
    "write_run_json",
    "read_run_json",
    "run_row",
    "write_runs_table",
    "kept_checkpoint_path",
    "branch_start_path",
]

METRICS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),  # optimizer steps completed
        ("tokens", pa.int64()),  # training tokens seen so far (D at this step)
        ("flops_6nd", pa.float64()),  # 6 · N_total · tokens
        ("flops_6nd_attn", pa.float64()),  # (6 · N_total + 12·L·d·T) · tokens
        ("epochs", pa.float64()),  # tokens / unique training tokens
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),  # mean over the step's micro-batches, nats/token
        ("val_loss", pa.float64()),  # null except at evaluation steps
        ("val_loss_se", pa.float64()),  # standard error of val_loss over eval batches
        ("grad_norm", pa.float64()),  # before clipping
        ("tokens_per_s", pa.float64()),
        ("mfu", pa.float64()),  # null on CPU (no peak known)
        ("elapsed_s", pa.float64()),  # wall time since the run first started, across resumes
        ("event", pa.string()),  # null, or e.g. "spike: loss 7.1 > mean + 3σ"
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("sweep", pa.string()),
        ("status", pa.string()),  # planned / running / done / failed: reason
        ("n_layer", pa.int64()),
        ("d_model", pa.int64()),
        ("n_head", pa.int64()),
        ("d_ff", pa.int64()),
        ("context", pa.int64()),
        ("vocab_size", pa.int64()),
        ("n_params_total", pa.int64()),
        ("n_params_nonembedding", pa.int64()),
        ("tokens", pa.int64()),  # planned D
        ("tokens_done", pa.int64()),
        ("budget_flops", pa.float64()),  # the budget this point was planned for (null if none)
        ("flops_6nd", pa.float64()),
        ("flops_6nd_attn", pa.float64()),
        ("tokens_per_param", pa.float64()),  # tokens / n_params_total
        ("epochs", pa.float64()),
        ("lr_peak", pa.float64()),
        ("batch_tokens", pa.int64()),
        ("val_loss", pa.float64()),  # final validation loss (mean over the eval tokens)
        ("val_loss_se", pa.float64()),
        ("train_time_s", pa.float64()),
        ("gpu_hours", pa.float64()),
        ("gpu_name", pa.string()),
        # WSD cooldown branching. A branch's flops_* count its full D (the C a fit uses: it ends
        # where a from-scratch run of D tokens would); flops_cost_* count what it actually cost,
        # its share of the trunk (scaling.config.trunk_shares) plus its cooldown. Otherwise equal.
        # Likewise its train_time_s and gpu_hours include the trunk's time up to the branch point.
        ("branch_of", pa.string()),  # the trunk's run id; null for a from-scratch run
        ("branch_tokens", pa.int64()),  # tokens at which it left the trunk; null likewise
        ("flops_cost_6nd", pa.float64()),
        ("flops_cost_6nd_attn", pa.float64()),
    ]
)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write ``table`` to ``path`` through a temp file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metrics(path: str | os.PathLike[str]) -> pa.Table:
    """A run's ``metrics.parquet`` as a table with exactly METRICS_SCHEMA."""
    # One open file: its trainer may replace the file (atomically) meanwhile, and reading by path
    # opens it once for the footer and again for the pages, which can then be another file's.
    with open(path, "rb") as f:
        return pq.read_table(f).select(METRICS_SCHEMA.names).cast(METRICS_SCHEMA)


class MetricsWriter:
    """Rows of METRICS_SCHEMA kept in memory and rewritten atomically to Parquet on ``flush``.

    The whole file is rewritten each time (it is small: one row per logged step), so it is
    always a complete, readable table and a crash loses at most the rows since the last flush.

    Parameters
    ----------
    path
        The run's ``metrics.parquet``.
    resume_step
        None starts empty (an old file is replaced at the first flush). Otherwise the rows the
        file already holds are kept up to and including this step: rows after a checkpoint's
        step are dropped, because the resumed run logs them again.
    source
        Where the kept rows come from instead of ``path``: a branch starts with its trunk's rows.
    """

    def __init__(self, path: str | os.PathLike[str], resume_step: int | None = None,
                 source: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        src = self.path if source is None else Path(source)
        if resume_step is not None and src.is_file():
            self.rows = [r for r in read_metrics(src).to_pylist() if r["step"] <= resume_step]

    def append(self, **row: Any) -> None:
        """Add one row; columns not given are null, a column not in the schema is a bug."""
        unknown = set(row) - set(METRICS_SCHEMA.names)
        assert not unknown, f"not METRICS_SCHEMA columns: {sorted(unknown)}"
        self.rows.append({name: row.get(name) for name in METRICS_SCHEMA.names})

    def flush(self) -> None:
        """Rewrite the file with every row so far (atomically)."""
        write_parquet_atomic(pa.Table.from_pylist(self.rows, schema=METRICS_SCHEMA), self.path)


def write_run_json(path: str | os.PathLike[str], info: dict[str, Any]) -> None:
    """Write a run's ``run.json`` atomically; ``info["status"]`` is "running", "interrupted",
    "done" or "failed: <reason>"."""
    atomic_write_text(path, json.dumps(info, indent=1, default=str) + "\n")


def read_run_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run's ``run.json`` as a dict, or None when there is none (the run never started)."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def kept_checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Where a trunk keeps its checkpoint of ``step`` for the branches that start there."""
    return Path(run_dir) / f"checkpoint_{step:06d}.pt"


def branch_start_path(cfg: RunConfig, run_dir: str | os.PathLike[str]) -> Path | None:
    """The trunk checkpoint a branch run starts from (its trunk's folder is beside ``run_dir``);
    None for a run that is no branch."""
    lin = cfg.lineage
    if lin is None or lin.trunk is None or lin.start_step is None:
        return None
    return kept_checkpoint_path(Path(run_dir).parent / lin.trunk, lin.start_step)


def run_row(run_id: str, sweep: str, cfg: RunConfig, out_dir: str | os.PathLike[str],
            cost_tokens: float | None = None) -> dict[str, Any]:
    """One RUNS_SCHEMA row: the planned run from ``cfg``, its outcome from ``run.json``.

    ``cost_tokens``: tokens the run actually cost (a branch's, from ``branch_costs``); default D.
    """
    from scaling.model import count_params, flops_per_token

    info = read_run_json(Path(out_dir) / "run.json") or {}
    res = info.get("result") or {}
    counts = count_params(cfg.model)
    tokens = cfg.tokens
    gpu = (info.get("environment") or {}).get("gpu_name")
    world = (info.get("environment") or {}).get("world_size") or 1
    time_s = res.get("train_time_s")
    cost = tokens if cost_tokens is None else cost_tokens
    return {
        "run_id": run_id,
        "name": cfg.name,
        "sweep": sweep,
        "status": info.get("status", "planned"),
        "n_layer": cfg.model.n_layer,
        "d_model": cfg.model.d_model,
        "n_head": cfg.model.n_head,
        "d_ff": cfg.model.d_ff,
        "context": cfg.model.context,
        "vocab_size": cfg.model.vocab_size,
        "n_params_total": counts["total"],
        "n_params_nonembedding": counts["non_embedding"],
        "tokens": tokens,
        "tokens_done": res.get("tokens", 0),
        "budget_flops": cfg.budget_flops,
        "flops_6nd": flops_per_token(cfg.model, "total", "6nd") * tokens,
        "flops_6nd_attn": flops_per_token(cfg.model, "total", "6nd+attn") * tokens,
        "tokens_per_param": tokens / counts["total"],
        "epochs": res.get("epochs"),
        "lr_peak": cfg.train.lr_peak,
        "batch_tokens": cfg.train.batch_size * cfg.model.context,
        "val_loss": res.get("val_loss"),
        "val_loss_se": res.get("val_loss_se"),
        "train_time_s": time_s,
        "gpu_hours": time_s * world / 3600 if (gpu and time_s is not None) else None,
        "gpu_name": gpu,
        "branch_of": cfg.lineage.trunk if cfg.lineage else None,
        "branch_tokens": cfg.lineage.start_step * cfg.train.batch_size * cfg.model.context
        if cfg.lineage and cfg.lineage.start_step else None,
        "flops_cost_6nd": flops_per_token(cfg.model, "total", "6nd") * cost,
        "flops_cost_6nd_attn": flops_per_token(cfg.model, "total", "6nd+attn") * cost,
    }


def write_runs_table(sweep_dir: str | os.PathLike[str], tasks: list[RunTask]) -> pa.Table:
    """Rebuild ``sweep_dir/runs.parquet`` (one row per task but trunks, RUNS_SCHEMA) atomically."""
    sweep = Path(sweep_dir).name
    trunks = {t.run_id: t for t in tasks if t.config.lineage and t.config.lineage.trunk is None}
    costs: dict[str, float] = {}
    for trunk_id, trunk in trunks.items():
        branches = [t for t in tasks if t.config.lineage and t.config.lineage.trunk == trunk_id]
        costs.update(zip((b.run_id for b in branches), branch_costs(trunk.config, [b.config for b in branches])))
    rows = [run_row(t.run_id, sweep, t.config, t.out_dir, costs.get(t.run_id)) for t in tasks if t.run_id not in trunks]
    table = pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)
    write_parquet_atomic(table, Path(sweep_dir) / "runs.parquet")
    return table
