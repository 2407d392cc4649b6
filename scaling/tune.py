"""LR tuning: short runs at several sizes × a log grid of peak LRs, then LR*(N) = c · N^-k fitted.

``scaling tune-lr`` in four steps, each a function here:

1. ``tune_sweep``: one sweep spec. Each size of ``--ladder`` is planned by the planner itself
   (``plan.make_plan`` with that one size, at the budget that gives it ``--tokens-per-param``
   tokens), so the runs get the shape, batch (DeepSeek's B_opt(C)), warmup rule, cosine schedule
   and β2 a plan would give them; each is then copied once per peak LR of ``--lrs``.
2. ``run_tune``: the sweep goes through ``launch.launch`` like any sweep (any executor, runs packed
   per GPU, finished runs skipped on a re-run). A run stopped by a non-finite loss counts as
   diverged (loss +inf), not as a failure.
3. ``size_optimum``: per size, the best LR is the vertex of the parabola through the grid minimum
   and its two neighbours in (log LR, final val loss). A minimum at the grid's edge, or beside a
   diverged run, is refused: the optimum is not bracketed, so ``--lrs`` must widen.
4. ``fit_lr_rule``: least squares of log LR* on log N (at least 3 sizes), with a Student-t
   interval on k from the residuals (n − 2 degrees of freedom: wide at 3 sizes, as it should be).

``write_rule`` records the rule (``rules.LrRule`` fields at the top level) with everything it
depends on: per-size optima and raw losses, the N convention, vocabulary and tokenizer, batch and
context, β2, the warmup rule, the data path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaling.config import Conventions, SweepConfig, atomic_write_text
from scaling.errors import ConfigError, LaunchError
from scaling.executors import Executor, run_state
from scaling.model import count_params, flops_per_token
from scaling.plan import (GPUS, WARMUP_CAP, WARMUP_RULE, Plan, PlanRequest, gpu_hours, make_plan, shape_for, to_sweep,
                          warmup_capped)
from scaling.rules import RULE_KIND, LrRule

__all__ = ["TuneRequest", "SizeOptimum", "LrFit", "tune_sweep", "run_tune", "size_optimum", "size_optima",
           "fit_lr_rule",
           "rule_document", "write_rule", "format_tune", "format_tune_plan"]

# Where the batch comes from, recorded in the rule file (the planner's rule, plan.py's docstring).
BATCH_RULE = ("planner's: B_opt(C) = 0.292·C^0.3271 tokens (DeepSeek-AI 2024, Eq. 1) as a power-of-two number "
              "of sequences, halved until the run has --min-steps steps")


@dataclass(frozen=True)
class TuneRequest:
    """What ``scaling tune-lr`` is asked; sizes N are under ``conventions.params``."""

    ladder: tuple[float, ...]
    lrs: tuple[float, ...]
    data: str
    vocab_size: int
    tokenizer: str
    unique_tokens: float
    tokens_per_param: float = 20.0
    conventions: Conventions = field(default_factory=Conventions)
    context: int = 1024
    aspect: int = 64
    head_dim: int = 64
    beta2: float = 0.95
    min_steps: int = 200
    max_epochs: float = 4.0
    gpu: str = "h100"

    def validate(self) -> None:
        """Raise one ConfigError naming the flag and the fix for the first bad value."""
        checks = [
            (len(set(self.ladder)) >= 3, f"--ladder: give at least 3 distinct model sizes to fit LR*(N) (got "
                                         f"{len(set(self.ladder))})"),
            (len(set(self.lrs)) >= 3, f"--lrs: give at least 3 distinct peak LRs, e.g. 1e-4:1e-2:9 (got "
                                      f"{len(set(self.lrs))})"),
            (all(lr > 0 for lr in self.lrs), "--lrs: peak LRs must be > 0"),
            (self.tokens_per_param > 0, f"--tokens-per-param: must be > 0 (got {self.tokens_per_param})"),
            (0 <= self.beta2 < 1, f"--beta2: must be in [0, 1) (got {self.beta2})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def plan_request(self, budget: float, size: float) -> PlanRequest:
        """The planner's request for one size at one budget, with this tuning's settings."""
        return PlanRequest(budgets=(budget,), ladder=(size,), conventions=self.conventions, context=self.context,
                           vocab_size=self.vocab_size, aspect=self.aspect, head_dim=self.head_dim, gpu=self.gpu,
                           unique_tokens=self.unique_tokens, max_epochs=self.max_epochs, min_steps=self.min_steps,
                           beta2=self.beta2,
                           # The planner's guards keep fit points trustworthy; a tuning run is no fit
                           # point, and the sizes tuned are the ones asked for.
                           max_embedding_fraction=1.0, min_tokens_per_param=0.0)


_FINAL_EVAL_ONLY = 10**9  # eval_interval past any run's length: no interim evals


def _lr_name(lr: float) -> str:
    return f"lr{lr:.3g}"


def tune_sweep(req: TuneRequest, name: str) -> tuple[SweepConfig, Plan]:
    """The sweep of every (size, LR) run and the plan of its sizes (one point per size).

    Raises
    ------
    ConfigError
        A size the planner cannot plan, or one that would repeat the data over ``max_epochs``.
    """
    req.validate()
    key = "total" if req.conventions.params == "total" else "non_embedding"
    budgets = []
    for size in sorted(set(req.ladder)):
        base = req.plan_request(1.0, size)
        shape = shape_for(size, base)
        tokens = req.tokens_per_param * count_params(shape)[key]
        budget = flops_per_token(shape, req.conventions.params, req.conventions.flops) * tokens
        (b,) = make_plan(dataclasses.replace(base, budgets=(budget,))).budgets
        budgets.append(b)
    points = [p for b in budgets for p in b.points]
    for p in points:
        if p.repeated:
            raise ConfigError(f"--tokens-per-param: {p.model.n_layer}x{p.model.d_model} would read {p.epochs:.1f} "
                              f"epochs of {req.data} (> {req.max_epochs:g}); lower --tokens-per-param or --ladder, "
                              "or prepare more data")
    shapes = [(p.model.n_layer, p.model.d_model) for p in points]
    if len(set(shapes)) < len(shapes):
        raise ConfigError(f"--ladder: two sizes give the same shape ({', '.join(f'{L}x{d}' for L, d in shapes)}); "
                          "spread them further apart")
    plan = Plan(dataclasses.replace(req.plan_request(1.0, 1.0), budgets=tuple(b.budget_flops for b in budgets),
                                    ladder=tuple(sorted(set(req.ladder)))), GPUS[req.gpu], budgets)
    sweep = to_sweep(plan, name=name, data_path=req.data)
    lrs = sorted({float(f"{lr:.3g}") for lr in req.lrs})
    runs = [dataclasses.replace(r, name=f"{r.model.n_layer}x{r.model.d_model}_{_lr_name(lr)}", lr_peak=lr)
            for r in sweep.runs for lr in lrs]
    # Only the final loss is used: one evaluation, at the end (the trainer always evaluates its
    # last step). A constant, not the longest run's steps: the interval is part of every run's id,
    # and adding a size to --ladder must not rename (and so retrain) the runs already done.
    train = dataclasses.replace(sweep.train, eval_interval=_FINAL_EVAL_ONLY)
    record = {"tune": "lr", "ladder": list(req.ladder), "lrs": lrs, "tokens_per_param": req.tokens_per_param,
              "beta2": req.beta2, "warmup_rule": WARMUP_RULE, "batch_rule": BATCH_RULE}
    return dataclasses.replace(sweep, runs=runs, train=train, plan=record).check(), plan


def run_tune(sweep: SweepConfig, results_root: str | os.PathLike[str], executor: Executor,
             progress: bool = True, resume_command: str | None = None) -> dict[tuple[int, int], dict[float, float]]:
    """Train the sweep's unfinished runs; return each shape's final val loss by peak LR.

    A run that stopped on a non-finite loss has loss +inf (diverged); any other unfinished run
    re-raises the launch's LaunchError.
    """
    from scaling.launch import launch, sweep_tasks

    try:
        launch(sweep, results_root, executor, progress=progress, resume_command=resume_command)
    except LaunchError:
        states = [run_state(t.out_dir).get("status", "") for t in sweep_tasks(sweep, results_root)]
        if not all(s == "done" or str(s).startswith("failed: nan") for s in states):
            raise
    losses: dict[tuple[int, int], dict[float, float]] = {}
    for t in sweep_tasks(sweep, results_root):
        state = run_state(t.out_dir)
        loss = state["result"]["val_loss"] if state.get("status") == "done" else math.inf
        shape = (t.config.model.n_layer, t.config.model.d_model)
        losses.setdefault(shape, {})[t.config.train.lr_peak] = loss
    return losses


@dataclass(frozen=True)
class SizeOptimum:
    """One size's LR sweep and its best LR (the vertex of the parabola in log LR)."""

    name: str
    n_params: int  # under the tuning's convention
    n_params_total: int
    n_params_nonembedding: int
    tokens: int
    batch_size: int
    steps: int
    warmup_steps: int
    lrs: list[float]
    losses: list[float]  # final val loss per LR; inf where the run diverged
    lr_opt: float
    loss_opt: float  # the parabola's value at lr_opt


def size_optimum(lrs: list[float], losses: list[float], label: str) -> tuple[float, float]:
    """Best LR and its loss: the vertex of the parabola through the grid minimum and its neighbours,
    in log LR.

    Raises
    ------
    ConfigError
        The minimum is at the edge of the grid, or beside a diverged run (not bracketed).
    """
    order = np.argsort(lrs)
    x, y = np.log(np.asarray(lrs, float)[order]), np.asarray(losses, float)[order]
    if not np.isfinite(y).any():
        raise ConfigError(f"--lrs: every run of {label} diverged; lower --lrs")
    i = int(np.nanargmin(np.where(np.isfinite(y), y, np.nan)))
    lr = math.exp(x[i])
    if i in (0, len(x) - 1):
        edge, step = ("lowest", -1) if i == 0 else ("highest", 1)
        ratio = math.exp(x[1] - x[0]) if len(x) > 1 else 10.0
        lo, hi = math.exp(x[0]), math.exp(x[-1])
        lo, hi = (lo / ratio**2, hi) if step < 0 else (lo, hi * ratio**2)
        raise ConfigError(f"--lrs: the best LR of {label} is {lr:.3g}, the {edge} of the grid, so its optimum is not "
                          f"bracketed; widen --lrs, e.g. {lo:.3g}:{hi:.3g}:{len(x) + 2}")
    if not (np.isfinite(y[i - 1]) and np.isfinite(y[i + 1])):
        j = i - 1 if not np.isfinite(y[i - 1]) else i + 1
        raise ConfigError(f"--lrs: the best LR of {label} ({lr:.3g}) has a diverged run beside it "
                          f"({math.exp(x[j]):.3g}); add LRs between them to --lrs")
    a, b, c = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    if a <= 0:  # three equal losses: no curvature, the grid point itself
        return lr, float(y[i])
    v = -b / (2 * a)
    return math.exp(v), float(c - b * b / (4 * a))


@dataclass(frozen=True)
class LrFit:
    """LR*(N) = lr_ref · (n_ref / N)^k fitted to per-size optima by least squares in log space."""

    lr_ref: float
    n_ref: float
    k: float
    k_interval: tuple[float, float]
    ci: float
    residual_sd_log: float  # SD of the log-LR residuals (n − 2 degrees of freedom)

    @property
    def c(self) -> float:
        return self.lr_ref * self.n_ref**self.k


def fit_lr_rule(n_params: list[float], lr_opt: list[float], ci: float = 0.95) -> LrFit:
    """Least squares of log LR* on log N; a Student-t interval on k from the residuals.

    n_ref is the geometric mean of the sizes: there the intercept is uncorrelated with k.
    """
    from scipy import stats

    if len(n_params) < 3:
        raise ConfigError(f"--ladder: fitting LR*(N) needs at least 3 sizes (got {len(n_params)})")
    x, y = np.log(np.asarray(n_params, float)), np.log(np.asarray(lr_opt, float))
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    resid = y - (ym + slope * (x - xm))
    dof = len(x) - 2
    sd = math.sqrt(float((resid**2).sum()) / dof) if dof > 0 else math.nan
    half = float(stats.t.ppf((1 + ci) / 2, dof)) * sd / math.sqrt(sxx)
    k = -slope
    return LrFit(lr_ref=math.exp(ym), n_ref=math.exp(xm), k=k, k_interval=(k - half, k + half), ci=ci,
                 residual_sd_log=sd)


def size_optima(plan: Plan, losses: dict[tuple[int, int], dict[float, float]]) -> list[SizeOptimum]:
    """Every size's best LR (``size_optimum``), smallest size first."""
    out = []
    for p in sorted(plan.points, key=lambda p: p.n_params):
        by_lr = losses[(p.model.n_layer, p.model.d_model)]
        lrs = sorted(by_lr)
        name = f"{p.model.n_layer}x{p.model.d_model}"
        lr, loss = size_optimum(lrs, [by_lr[lr] for lr in lrs], f"{name} (N = {p.n_params:,})")
        out.append(SizeOptimum(name=name, n_params=p.n_params, n_params_total=p.n_params_total,
                               n_params_nonembedding=p.n_params_nonembedding, tokens=p.tokens,
                               batch_size=p.batch_size, steps=p.steps, warmup_steps=p.warmup_steps,
                               lrs=lrs, losses=[by_lr[lr] for lr in lrs], lr_opt=lr, loss_opt=loss))
    return out


def rule_document(req: TuneRequest, sweep: SweepConfig, results_dir: str, optima: list[SizeOptimum],
                  fit: LrFit) -> dict[str, Any]:
    """The rule file's contents: ``LrRule``'s fields at the top, then what the rule depends on."""
    tc = sweep.train
    rule = LrRule(lr_ref=fit.lr_ref, n_ref=fit.n_ref, k=fit.k, params=req.conventions.params,
                  vocab_size=req.vocab_size, tokenizer=req.tokenizer, beta2=tc.beta2)
    doc = {"kind": RULE_KIND, **{k: v for k, v in dataclasses.asdict(rule).items() if k != "source"}}
    return {
        **doc,
        "formula": f"lr_peak = lr_ref · (n_ref / N)^k = c · N^-k, N = {req.conventions.params} parameters",
        "c": fit.c,
        "k_interval": list(fit.k_interval),
        "ci": fit.ci,
        "interval_method": f"Student-t on the log-LR residuals, {len(optima) - 2} degree(s) of freedom",
        "residual_sd_log": fit.residual_sd_log,
        "optimum_method": "vertex of the parabola through the grid minimum and its two neighbours in log LR",
        "conventions": dataclasses.asdict(req.conventions),
        "context": req.context,
        "tokens_per_param": req.tokens_per_param,
        "batch_rule": BATCH_RULE,
        "warmup_rule": WARMUP_RULE,
        "schedule": tc.schedule,
        "lr_min_ratio": tc.lr_min_ratio,
        "beta1": tc.beta1,
        "weight_decay": tc.weight_decay,
        "grad_clip": tc.grad_clip,
        "data": req.data,
        "results": results_dir,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sizes": [{**dataclasses.asdict(o), "losses": [v if math.isfinite(v) else None for v in o.losses]}
                  for o in optima],
    }


def write_rule(path: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    """Write the rule file atomically as YAML (diverged runs' losses as null)."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True))
    return Path(path)


def format_tune_plan(sweep: SweepConfig, plan: Plan) -> str:
    """The runs ``tune-lr`` trains: one line per size, then the count and estimated GPU-hours."""
    lrs = sweep.plan["lrs"]
    lines = [f"LR sweep {sweep.name}: {len(plan.points)} sizes x {len(lrs)} peak LRs "
             f"({', '.join(f'{lr:.3g}' for lr in lrs)}); {WARMUP_RULE}; Adam β2 {sweep.train.beta2:g}",
             f"{'size':<10} {'N':>12} {'N_total':>12} {'D':>12} {'steps':>6} {'batch':>9} {'warm':>5} {'GPU-h/run':>9}"]
    hours = 0.0
    for p in plan.points:
        h = gpu_hours(p.model, p.tokens, plan.gpu, plan.request.mfu)
        hours += h * len(lrs)
        size = f"{p.model.n_layer}x{p.model.d_model}"
        lines.append(f"{size:<10} {p.n_params:>12,} {p.n_params_total:>12,} "
                     f"{p.tokens:>12,} {p.steps:>6} {p.batch_size:>4}x{p.model.context:<4} {p.warmup_steps:>5}"
                     f"{'*' if warmup_capped(p) else ' '}{h:>9.3g}")
    if any(warmup_capped(p) for p in plan.points):
        lines.append(f"* warmup capped at {WARMUP_CAP:.0%} of the run: D < {1 / WARMUP_CAP:g}·N_total "
                     "(raise --tokens-per-param to lift it)")
    lines.append(f"{len(sweep.runs)} runs, {hours:.3g} GPU-hours on {plan.gpu.name} at MFU {plan.request.mfu:.0%} "
                 "(an estimate: small models run far below it unless packed several per GPU)")
    return "\n".join(lines)


def format_tune(optima: list[SizeOptimum], fit: LrFit, params: str) -> str:
    """Per-size losses by LR (best marked), each size's optimum, and the fitted power law."""
    lines = []
    for o in optima:
        best = int(np.argmin(o.losses))
        cells = [f"{lr:.3g}: {'diverged' if not math.isfinite(v) else f'{v:.4f}'}{'*' if i == best else ''}"
                 for i, (lr, v) in enumerate(zip(o.lrs, o.losses))]
        lines.append(f"{o.name:<9} N {o.n_params:>12,}  LR* {o.lr_opt:.3g} (loss {o.loss_opt:.4f})  |  "
                     + "  ".join(cells))
    lo, hi = fit.k_interval
    lines.append(f"LR*(N) = {fit.lr_ref:.3g} · ({fit.n_ref:.3g} / N_{params})^{fit.k:.3f} = {fit.c:.3g} · N^-{fit.k:.3f};"
                 f" k {fit.ci:.0%} interval [{lo:.3f}, {hi:.3f}] ({len(optima) - 2} dof), "
                 f"residual SD {fit.residual_sd_log:.3f} in log LR")
    return "\n".join(lines)
