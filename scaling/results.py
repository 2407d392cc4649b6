"""Results layout and Parquet schemas: what a run and a sweep leave on disk.

Layout::

    results/<sweep>/runs.parquet            one row per run (RUNS_SCHEMA), rebuilt atomically
    results/<sweep>/<run_id>/config.yaml    the resolved RunConfig
    results/<sweep>/<run_id>/run.json       config, conventions, environment, status
    results/<sweep>/<run_id>/metrics.parquet  one row per logged step (METRICS_SCHEMA)
    results/<sweep>/<run_id>/eval.parquet   the final eval's per-window losses (scaling.evaluation)
    results/<sweep>/<run_id>/checkpoint.pt  latest checkpoint (never committed)
    results/<sweep>/<run_id>/checkpoint.pt.sha256  its checksum, checked before every load
    results/<sweep>/<run_id>/checkpoint_000800.pt  a trunk's checkpoint kept at a branch point

A trunk's checkpoints (kept ones, then its checkpoint.pt) are deleted once the runs that may
need them are done (``scaling.launch.drop_spent_checkpoints``).

A ``wsd-branch`` sweep's trunks are runs like any other on disk, but not rows of runs.parquet:
a trunk is no (N, D) point. Its cost is in its branches' ``flops_cost_*`` columns instead.

Column names carry their units. Missing values are null, never a sentinel like 0.0.
FLOPs columns count C with N = total parameters; ``flops_6nd_attn`` adds 12·L·d·T per token
(see ``scaling.model.flops_per_token``). Other conventions are recomputed from the N columns.

Reading back for a fit: ``load_points`` turns results folders (finished runs of runs.parquet,
their curves from metrics.parquet) or plain CSV/Parquet tables into ``FitData``, one point per
run under one pair of conventions (and the FLOP formula they imply, ``conventions["flops_formula"]``,
as ``scaling.model.flops_formula`` names it); a bad source raises ``FitError``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scaling.config import ModelConfig, atomic_write, atomic_write_text, branch_costs
from scaling.errors import ConfigError, FitError

if TYPE_CHECKING:
    from scaling.config import RunConfig
    from scaling.executors import RunTask

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
    "checksum_path",
    "branch_start_path",
    "FitData",
    "load_points",
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
        # null except at evaluation steps: interim evals score train.eval_tokens, the last step's
        # (final) eval train.final_eval_tokens of the same val windows
        ("val_loss", pa.float64()),
        ("val_loss_se", pa.float64()),  # standard error of val_loss (batch means over eval windows)
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
        ("val_loss_se", pa.float64()),  # its standard error (scaling.evaluation.batch_means_se)
        ("val_tokens", pa.int64()),  # val tokens it scored; null for runs from before it was recorded
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
    """Write ``table`` to ``path`` through ``atomic_write`` (never half-written)."""
    atomic_write(path, lambda f: pq.write_table(table, f))


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
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); fix it, or move it away to "
                          "let the run resume from its checkpoint") from None


def kept_checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Where a trunk keeps its checkpoint of ``step`` for the branches that start there."""
    return Path(run_dir) / f"checkpoint_{step:06d}.pt"


def checksum_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The file beside a checkpoint that records its sha256 (``scaling.checkpoint``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".sha256")


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
        "val_tokens": res.get("val_tokens"),
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


# ----------------------------------------------------------------------------- reading back: fit points


@dataclass(frozen=True, eq=False)
class FitData:
    """Fit points, one per finished run, under one pair of conventions.

    ``curves[i]`` is run i's (C, L) at its evaluation steps (validation loss), or None where
    no training curve is known (tables). ``budget`` is the planned IsoFLOP budget or NaN.
    """

    names: tuple[str, ...]
    run_ids: tuple[str, ...]
    sweeps: tuple[str, ...]
    params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    budget: np.ndarray
    curves: tuple[tuple[np.ndarray, np.ndarray] | None, ...]
    conventions: dict[str, str]
    sources: tuple[str, ...]
    loss_se: np.ndarray | None = None  # standard error of each final loss (NaN: unknown); None: none known

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_arrays(cls, params: Any, tokens: Any, loss: Any, *, flops: Any = None, budget: Any = None,
                    names: Sequence[str] | None = None, run_ids: Sequence[str] | None = None,
                    sweeps: Sequence[str] | None = None, conventions: dict[str, str] | None = None,
                    source: str = "arrays") -> FitData:
        """Fit points from arrays (no training curves); C defaults to 6·N·D."""
        N, D, L = (np.asarray(v, float) for v in (params, tokens, loss))
        n = L.size
        names = tuple(names) if names is not None else tuple(f"row{i + 1}" for i in range(n))
        return cls(names, tuple(run_ids) if run_ids is not None else names,
                   tuple(sweeps) if sweeps is not None else (Path(source).stem,) * n, N, D,
                   6.0 * N * D if flops is None else np.asarray(flops, float), L,
                   np.full(n, np.nan) if budget is None else np.asarray(budget, float), (None,) * n,
                   conventions or {"params": "total", "flops": "6nd", "flops_formula": "6ND"}, (source,))

    def subset(self, keep: np.ndarray) -> FitData:
        """The points where boolean ``keep`` is True."""
        idx = np.flatnonzero(keep)
        pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
        return replace(
            self, names=pick(self.names), run_ids=pick(self.run_ids), sweeps=pick(self.sweeps),
            params=self.params[idx], tokens=self.tokens[idx], flops=self.flops[idx],
            loss=self.loss[idx], budget=self.budget[idx], curves=pick(self.curves),
            loss_se=None if self.loss_se is None else self.loss_se[idx])

    def match(self, keys: Sequence[str], flag: str = "--target") -> np.ndarray:
        """Points whose run name, run id or sweep (folder name or path) is one of ``keys``."""
        hit = np.zeros(len(self), bool)
        for key in keys:
            k = {key, Path(key).name}
            m = np.array([bool(k & {n, r, s}) for n, r, s in zip(self.names, self.run_ids, self.sweeps)])
            if not m.any():
                raise FitError(f"{flag} {key!r} matches no finished run name, run id or sweep "
                               f"(sweeps: {', '.join(sorted(set(self.sweeps)))})")
            hit |= m
        return hit


def _concat(parts: list[FitData]) -> FitData:
    """One FitData from several sources' points."""
    cat = lambda name: sum((getattr(p, name) for p in parts), ())  # noqa: E731
    arr = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    keys = dict.fromkeys(k for p in parts for k in p.conventions)
    conv = {k: " + ".join(dict.fromkeys(p.conventions[k] for p in parts if k in p.conventions)) for k in keys}
    se = [np.full(len(p), np.nan) if p.loss_se is None else p.loss_se for p in parts]
    return FitData(cat("names"), cat("run_ids"), cat("sweeps"), arr("params"), arr("tokens"),
                   arr("flops"), arr("loss"), arr("budget"), cat("curves"), conv, cat("sources"),
                   None if all(p.loss_se is None for p in parts) else np.concatenate(se))


def _columns(path: Path) -> dict[str, list[Any]]:
    """A CSV or Parquet file as {column: values}."""
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(path) if path.suffix.lower() == ".csv" else pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a malformed file
        raise FitError(f"{path}: cannot read as {path.suffix[1:] or 'a table'} ({e})") from None
    return table.to_pydict()


def _require(cols: dict[str, list[Any]], needed: Sequence[str], path: Path, hint: str) -> None:
    missing = [c for c in needed if c not in cols]
    if missing:
        raise FitError(f"{path}: missing column(s) {', '.join(missing)}; {hint}")


def _positive_finite(values: np.ndarray, column: str, path: Path, labels: Sequence[str]) -> None:
    bad = [labels[i] for i in np.flatnonzero(~(np.isfinite(values) & (values > 0)))]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise FitError(f"{path}: column {column} must be finite and > 0; bad in "
                       f"{', '.join(bad[:5])}{more} (drop or fix those rows)")


def _numbers(values: list[Any], column: str, path: Path, labels: Sequence[str]) -> np.ndarray:
    """A column as floats (empty cells NaN), or a FitError naming the cells that are no number."""
    out, bad = np.full(len(values), np.nan), []
    for i, v in enumerate(values):
        try:
            out[i] = np.nan if v is None else float(v)
        except (TypeError, ValueError):
            bad.append(f"{labels[i]} ({v!r})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise FitError(f"{path}: column {column} must hold numbers; not a number in {', '.join(bad[:5])}{more} "
                       "(write plain numbers, e.g. 7e6 for 7M)")
    return out


def _load_table(path: Path, params: str, flops: str) -> FitData:
    """A plain table: params, tokens, loss; optional flops, budget, name, run_id, sweep."""
    from scaling.model import flops_formula

    cols = _columns(path)
    _require(cols, ("params", "tokens", "loss"), path, "a table needs params, tokens, loss "
             "(optional: flops, budget, name)")
    n = len(cols["loss"])
    names = tuple(str(v) for v in cols["name"]) if "name" in cols else tuple(f"row{i + 1}" for i in range(n))
    num = lambda c: _numbers(cols[c], c, path, names)  # noqa: E731
    N, D, L = num("params"), num("tokens"), num("loss")
    for column, values in (("params", N), ("tokens", D), ("loss", L)):
        _positive_finite(values, column, path, names)
    if "flops" in cols:
        C, flops = num("flops"), f"as given ({path.name})"
        _positive_finite(C, "flops", path, names)
    elif flops == "6nd" and params == "total":
        C = None
    else:
        # C under non-embedding N counts the unembedding, 6·V·d per token (flops_per_token).
        flag = f"--flops {flops}" if flops != "6nd" else f"--params-convention {params}"
        raise FitError(f"{path}: {flag} needs a flops column (a table has no model shapes)")
    return FitData.from_arrays(
        N, D, L, flops=C, budget=num("budget") if "budget" in cols else None, names=names,
        run_ids=[str(v) for v in cols["run_id"]] if "run_id" in cols else None,
        sweeps=[str(v) for v in cols["sweep"]] if "sweep" in cols else None,
        conventions={"params": params, "flops": flops,
                     "flops_formula": flops if C is not None else flops_formula(params, "6nd")}, source=str(path))


_RUN_COLUMNS = ("run_id", "name", "status", "n_layer", "d_model", "n_head", "d_ff", "context",
                "vocab_size", "n_params_total", "n_params_nonembedding", "tokens", "val_loss")


def _model_config(row: dict[str, Any], run_dir: Path) -> ModelConfig:
    """The run's ModelConfig: its config.yaml when present (exact flags), else the row's shape."""
    import yaml

    shape = {k: row[k] for k in ("n_layer", "d_model", "n_head", "d_ff", "context", "vocab_size")}
    saved = run_dir / "config.yaml"
    if saved.is_file():
        model = (yaml.safe_load(saved.read_text()) or {}).get("model") or {}
        shape.update({k: model[k] for k in ("tied_embeddings", "bias") if k in model})
    return ModelConfig(**shape)


def _load_sweep(folder: Path, params: str, flops: str) -> FitData:
    """One results folder: finished runs from runs.parquet, curves from each metrics.parquet."""
    from scaling.model import flops_formula, flops_per_token

    path = folder / "runs.parquet"
    cols = _columns(path)
    _require(cols, _RUN_COLUMNS, path, "it must follow scaling.results.RUNS_SCHEMA")
    rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    rows = [r for r in rows if r["status"] == "done" and r["val_loss"] is not None
            and math.isfinite(r["val_loss"])]
    n_col = "n_params_total" if params == "total" else "n_params_nonembedding"
    names = tuple(str(r["name"]) for r in rows)
    N = np.array([np.nan if r[n_col] is None else r[n_col] for r in rows], float)
    D = np.array([r.get("tokens_done") or r["tokens"] or np.nan for r in rows], float)
    L = np.array([r["val_loss"] for r in rows], float)
    for column, values in ((n_col, N), ("tokens", D), ("val_loss", L)):
        _positive_finite(values, column, path, names)
    fpt = np.array([flops_per_token(_model_config(r, folder / r["run_id"]), params, flops) for r in rows])
    curves = []
    for r, per_token in zip(rows, fpt):
        metrics = folder / r["run_id"] / "metrics.parquet"
        curve = None
        if metrics.is_file():
            m = _columns(metrics)
            t = np.array([np.nan if v is None else v for v in m.get("tokens", [])], float)
            v = np.array([np.nan if v is None else v for v in m.get("val_loss", [])], float)
            ok = np.isfinite(t) & np.isfinite(v) & (t > 0) & (v > 0)
            order = np.argsort(t[ok])
            curve = (per_token * t[ok][order], v[ok][order]) if ok.sum() >= 2 else None
        curves.append(curve)
    budget = np.array([r.get("budget_flops") or np.nan for r in rows], float)
    return FitData(names, tuple(r["run_id"] for r in rows), (folder.name,) * len(rows), N, D, fpt * D,
                   L, budget, tuple(curves), {"params": params, "flops": flops,
                                              "flops_formula": flops_formula(params, flops)}, (str(folder),),
                   np.array([np.nan if r.get("val_loss_se") is None else r["val_loss_se"] for r in rows], float))


def load_points(sources: Sequence[str | os.PathLike[str]], *, params_convention: str = "total",
                flops: str = "6nd", exclude: Sequence[str] = ()) -> FitData:
    """Fit points from results folders and/or tables.

    A source is a sweep folder (holding runs.parquet), a folder of sweep folders, or a CSV /
    Parquet table with columns params, tokens, loss. Only runs with status "done" and a finite
    val_loss are points. ``exclude`` drops runs by name, run id or sweep.

    Raises
    ------
    FitError
        A source is missing or unreadable, a column is missing, a value is NaN or <= 0, or no
        point is left.
    """
    found: dict[Path, tuple[Path, bool]] = {}  # resolved -> (as given, is a table): each once, in order
    for source in sources:
        path = Path(source)
        if path.is_file() and path.name == "runs.parquet":
            path = path.parent
        if path.is_file():
            found.setdefault(path.resolve(), (path, True))
        elif (path / "runs.parquet").is_file():
            found.setdefault(path.resolve(), (path, False))
        elif path.is_dir() and (subs := sorted(p.parent for p in path.glob("*/runs.parquet"))):
            for sub in subs:
                found.setdefault(sub.resolve(), (sub, False))
        else:
            raise FitError(f"{path}: not a results folder (no runs.parquet in it or its subfolders) "
                           "nor a CSV/Parquet table with columns params, tokens, loss")
    # A sweep named twice (`results/ results/mine`) is read once: counted twice, its runs would
    # narrow every bootstrap interval as if they were independent runs.
    data = _concat([_load_table(p, params_convention, flops) if table else _load_sweep(p, params_convention, flops)
                    for p, table in found.values()])
    if exclude:
        data = data.subset(~data.match(exclude, "--exclude"))
    if not len(data):
        raise FitError(f"no finished runs (status 'done' with a finite val_loss) in "
                       f"{', '.join(map(str, sources))}; train some first or pass a table")
    return data

