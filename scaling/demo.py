"""``scaling demo``: the whole loop on a laptop CPU, through the same stages a real study uses.

prepare → plan → launch → fit → choose and train a larger held-out model → validate. Every
stage is its module's public function and every run goes through ``launch`` with the local
executor, exactly as ``scaling launch`` runs a spec; the demo only picks small settings.

Layout of ``out_dir``::

    data/pysrc/                        the prepared corpus (prepare's folder)
    sweeps/demo.yaml                   the IsoFLOP sweep spec (launchable with scaling launch)
    sweeps/demo-target.yaml            the held-out target, as its own one-run spec
    results/demo/, results/demo-target/  runs.parquet and one folder per run
    fit/                               fit.json, report.html and its PNG plots

Re-running continues: prepare is a no-op when its folder is up to date, launch skips finished
runs and resumes the rest from their checkpoints, the target spec is reused while the sweep it
was chosen from is unchanged, and the fits are cheap to redo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from scaling.errors import ConfigError, LaunchError

if TYPE_CHECKING:
    from scaling.config import SweepConfig
    from scaling.fit import FitResult
    from scaling.executors import Executor
    from scaling.plan import PlanRequest
    from scaling.predict import ValidationRow
    from scaling.results import FitData

__all__ = ["DemoScale", "FULL", "QUICK", "DemoResult", "demo_lr", "demo_sweep", "run_demo", "format_demo"]

SWEEP = "demo"
TARGET_SWEEP = "demo-target"

# Bytes, not GPT-2 BPE: on 2 CPU cores the budget allows models of ~5K-400K parameters. With
# GPT-2's 50,257-token vocabulary the embedding table alone (50,257 × d) would be most of such a
# model and the 50k-way softmax most of its compute; with 257 byte ids the transformer blocks are
# what the FLOPs buy.
TOKENIZER = "bytes"
CONTEXT = 128  # bytes: two or three lines of code per sequence
# Narrow heads give d_model in steps of 8, so the planner finds 2-7-layer shapes at most sizes;
# with 16 (steps of 16) it picked 1-layer models at 25K-50K, which lost 0.08-0.1 nats to 2-layer
# ones of about the same N and made the IsoFLOP curves jagged (measured).
HEAD_DIM = 8
ASPECT = 12  # d_model / n_layer near 12: GPT-2's 64 would give 1-layer models at every size here
SIZES = 5  # model sizes per budget (the planner's minimum)
# Of the published laws, Epoch's replication allocates the most tokens per parameter (~35 at
# these budgets). Byte-level models want more still (the measured minima sit near 100), so even
# that centre is ~2-3× too large: the grid must reach well below it (see DemoScale.spread).
CENTER = "epoch_approach3"
# C counts attention too, 6·N + 12·L·d·T FLOPs per token (PaLM, App. B): at d_model 8-64 and
# context 128 attention is 23-52% of a model's compute, so C = 6·N·D would understate the small
# models' cost by up to half.
FLOPS = "6nd+attn"
TARGET_FACTOR = 3.0  # the held-out target gets 3× the largest sweep budget
# The planner's guards off, so the demo keeps the grids measured below (DemoScale): at these
# ~5K-400K-parameter byte models the smallest sizes are 54-65% embedding (257 x d) and the
# largest train ~1 token per parameter, yet both are needed — the smallest budget's minimum
# (12.8K) lies at the size the embedding guard would leave smallest, so without the 5.7K size it
# is not bracketed. The demo shows the loop; a study keeps the guards (scaling plan's defaults).
GUARDS_OFF = {"max_embedding_fraction": 1.0, "min_tokens_per_param": 0.0}
# The target's N comes from Approach 2, the IsoFLOP minima themselves, the most direct reading
# of where the optimum lies; Approach 3 then predicts its loss. (Approach 3's own allocation
# exponent is the least constrained quantity of these fits: a = 0.09 [0.007, 0.25] on a full demo.)
TARGET_FIT = "approach2"


@dataclass(frozen=True)
class DemoScale:
    """The sizes of one demo mode: budgets (the planner's ``--budgets`` syntax), the grid's
    spread around CENTER, and bookkeeping."""

    budgets: str
    spread: float
    min_steps: int
    eval_interval: int
    eval_tokens: int
    n_bootstrap: int


# Measured on this project's 2-core machine (README, "What the demo shows"). FULL: 3 budgets
# spanning 10×; spread 4.5 puts a size below each budget's minimum (at 1.5e11 FLOPs the best
# model has ~10K parameters, within 2× of the smallest shape the planner can build, 1 × 8).
# QUICK (CI): FULL's two smaller budgets at FULL's spread. Both must bracket their minimum, or
# Approach 3 is not identified and the demo stops before the target: measured, 1e11 and 3e11
# FLOPs at spread 3 had their lowest loss at the smallest size (alpha -> -1.6), and so had
# 1.5e11 and 4.7e11 at spread 3; at spread 4.5 both budgets' minima lie inside (12.8K, 23.7K).
FULL = DemoScale(budgets="1.5e11:1.5e12:3", spread=4.5, min_steps=100, eval_interval=250, eval_tokens=65536,
                 n_bootstrap=1000)
QUICK = DemoScale(budgets="1.5e11,4.74e11", spread=4.5, min_steps=50, eval_interval=200, eval_tokens=16384,
                  n_bootstrap=100)


@dataclass(frozen=True)
class DemoResult:
    """What a demo produced: where everything is, the sweep's fits and the held-out comparison."""

    out_dir: Path
    data_dir: Path
    sweep_spec: Path
    target_spec: Path
    sweep_dir: Path
    target_dir: Path
    fit_json: Path
    report: Path
    budgets: tuple[float, ...]
    target_flops: float
    fits: dict[str, FitResult]
    skipped: dict[str, str]
    validation: FitResult
    rows: list[ValidationRow]
    wall_s: float


def demo_lr(n_params_total: int) -> float:
    """Peak LR of a demo run: the planner's 6e-4·(124M/N)^0.5 divided by 3.

    The planner's rule gives 1e-2 to 1e-1 for these 4K-400K-parameter models. Measured on a
    1.5e12-FLOP IsoFLOP grid of 25K-340K parameters: ÷3 lowered the final loss of every size
    against the rule itself (by 0.03-0.3 nats, most for the larger sizes), and ÷7 was worse than
    ÷3 at every size.
    """
    return float(f"{2e-4 * (124e6 / n_params_total) ** 0.5:.3g}")


def demo_sweep(scale: DemoScale, data_dir: str | os.PathLike[str]) -> tuple[SweepConfig, PlanRequest]:
    """The demo's IsoFLOP sweep over prepared ``data_dir`` and the plan request it came from.

    The planner's grid, shapes, token counts, batch sizes and warmup, with the demo's CPU
    trainer settings and its LR rule (``demo_lr``) on top.
    """
    from scaling.config import Conventions, TrainConfig
    from scaling.data import load_meta
    from scaling.model import count_params
    from scaling.plan import PlanRequest, make_plan, parse_budgets, to_sweep

    meta = load_meta(data_dir)
    req = PlanRequest(budgets=parse_budgets(scale.budgets), sizes=SIZES, spread=scale.spread,
                      conventions=Conventions(flops=FLOPS), context=CONTEXT, vocab_size=meta["vocab_size"],
                      aspect=ASPECT, head_dim=HEAD_DIM, center=CENTER, unique_tokens=float(meta["tokens"]["train"]),
                      min_steps=scale.min_steps, **GUARDS_OFF)
    sweep = to_sweep(make_plan(req), name=SWEEP, data_path=str(Path(data_dir).resolve()))
    # Every run evaluates on the same first eval_tokens of val, so runs compare without sampling
    # noise between them; the final eval scores as many, so the demo's eval cost stays what it was.
    # Checkpoints are small, and a stop signal checkpoints anyway.
    train = TrainConfig(device="cpu", compile="off", precision="fp32", eval_interval=scale.eval_interval,
                        eval_tokens=scale.eval_tokens, final_eval_tokens=scale.eval_tokens, log_interval=10,
                        checkpoint_interval=200, flush_interval=100)
    runs = [dataclasses.replace(r, lr_peak=demo_lr(count_params(r.model)["total"])) for r in sweep.runs]
    plan = {**sweep.plan, "lr_rule": "demo_lr: 2e-4·(124M/N_total)^0.5, the planner's rule ÷ 3 (scaling/demo.py)"}
    return dataclasses.replace(sweep, runs=runs, train=train, plan=plan).check(), req


def run_demo(out_dir: str | os.PathLike[str], quick: bool = False, *, progress: bool = True,
             echo: Callable[[str], None] | None = None) -> DemoResult:
    """Run (or continue) the demo in ``out_dir``: prepare, plan, launch, fit, train the target, validate.

    Parameters
    ----------
    quick
        The two smaller budgets, less eval and bootstrap (``QUICK``): about 2.5 minutes, for CI.
    progress
        Show prepare's and launch's progress bars.
    echo
        Where stage banners go (default: print, flushed).

    Raises
    ------
    ConfigError
        ``out_dir`` cannot be written.
    LaunchError
        A run failed; re-running continues where it stopped.
    scaling.launch.LaunchInterrupted
        Ctrl-C: the running runs checkpointed; the message says to re-run the demo.
    FitError
        Approach 3 is not identified by the sweep (its message says which term and why).
    """
    from scaling import fit, report
    from scaling.data import describe
    from scaling.executors import LocalExecutor
    from scaling.predict import predict, validate
    from scaling.prepare import prepare
    from scaling.results import load_points

    say = echo or (lambda line: print(line, flush=True))
    scale = QUICK if quick else FULL
    out = _writable(Path(out_dir))
    t0 = time.perf_counter()
    stages = iter(range(1, 8))

    def banner(text: str) -> None:
        say(f"\n[{next(stages)}/7] {text}  ({_clock(time.perf_counter() - t0)} elapsed)")

    banner(f"prepare: this Python's standard library as {TOKENIZER} tokens")
    data_dir = prepare("pysrc", tokenizer=TOKENIZER, out_dir=out / "data" / "pysrc", progress=progress).resolve()
    say(describe(data_dir))

    banner("plan: an IsoFLOP grid of tiny GPTs per budget")
    sweep, req = demo_sweep(scale, data_dir)
    sweep_spec = out / "sweeps" / f"{SWEEP}.yaml"
    sweep.save_yaml(sweep_spec)
    say(_describe_runs(sweep))
    say(f"wrote {sweep_spec}")

    cores = len(os.sched_getaffinity(0))
    banner(f"launch: {len(sweep.runs)} runs with the local executor, {cores} at a time on the CPU")
    results = out / "results"
    _launch(sweep, results, LocalExecutor(devices=["cpu"], per_device=cores), progress, out)

    banner("fit: Chinchilla Approaches 1-3 and Kaplan's forms on the sweep")
    data = load_points([results / SWEEP], flops=FLOPS)
    fits, skipped = fit.fit_all(data, "all", n_bootstrap=scale.n_bootstrap, seed=0)
    fit_dir = out / "fit"
    fit_json = fit.save_fits(fit_dir / "fit.json", fits, skipped, data)
    html = report.write_report(fits, skipped, data, fit_dir)
    say(_describe_fits(fits, skipped))

    banner(f"predict: the compute-optimal model at {TARGET_FACTOR:g}× the largest budget")
    target_spec = out / "sweeps" / f"{TARGET_SWEEP}.yaml"
    target = _target_sweep(sweep, req, fits, data, target_spec)
    target.save_yaml(target_spec)
    p, (n, d) = target.runs[0], _n_and_d(target)
    pred = predict(fits["approach3"], n, d)
    say(f"  {TARGET_FIT} N_opt there {_si(target.plan[f'n_opt_{TARGET_FIT}'])}, best run at the largest budget "
        f"N {_si(target.plan['n_best_at_largest_budget'])}: the larger, snapped to a shape")
    say(f"  {p.name}: {p.model.n_layer} layers × d_model {p.model.d_model}, N {_si(n)}, D {_si(d)} tokens, "
        f"C {target.plan['target_flops']:.3g} FLOPs; Approach 3 predicts loss {pred.loss:.4f} "
        f"{_iv(pred.intervals['loss'])}")
    say(f"wrote {target_spec}")

    banner(f"train the target ({p.steps} steps) with the local executor")
    _launch(target, results, LocalExecutor(devices=["cpu"], per_device=1), progress, out)

    banner("validate: fit on the sweep, predict the held-out target, compare")
    both = load_points([results / SWEEP, results / TARGET_SWEEP], flops=FLOPS)
    vfit, rows = validate(both, [TARGET_SWEEP], n_bootstrap=scale.n_bootstrap, seed=0)
    return DemoResult(out, data_dir, sweep_spec, target_spec, results / SWEEP, results / TARGET_SWEEP, fit_json,
                      html, req.budgets, float(target.plan["target_flops"]), fits, skipped, vfit, rows,
                      time.perf_counter() - t0)


def format_demo(result: DemoResult) -> str:
    """The demo's closing summary: predicted vs actual, fitted exponents with intervals, the report."""
    from scaling.report import format_validation

    fits = result.fits
    ci = next(iter(fits.values())).ci
    lines = ["", "=" * 100, f"Held-out target: {result.target_flops:.3g} FLOPs = "
             f"{result.target_flops / max(result.budgets):.2g}× the largest sweep budget, never seen by the fit",
             format_validation(result.validation, result.rows), "",
             f"Fitted on the sweep ({len(result.budgets)} budgets, {min(result.budgets):.3g}-{max(result.budgets):.3g}"
             f" FLOPs), {ci:.0%} bootstrap intervals:"]
    exponents = {
        "approach3": [("alpha", "L(N, D) = E + A/N^alpha + B/D^beta: alpha"), ("beta", "beta"), ("E", "E"),
                      ("a", "N_opt ∝ C^a: a")],
        "approach2": [("a", "IsoFLOP minima, N_opt ∝ C^a: a"), ("b", "D_opt ∝ C^b: b")],
        "approach1": [("a", "training-curve envelope, N_opt ∝ C^a: a")],
        "kaplan_C": [("alpha_C", "L(C) = (C_c/C)^alpha_C: alpha_C")],
    }
    for name, keys in exponents.items():
        if name in fits:
            f = fits[name]
            parts = [f"{label} {_g(f.params[k])} {_iv(f.intervals.get(k))}" for k, label in keys]
            lines.append(f"  {name:<10} " + "; ".join(parts))
    lines += ["  (Hoffmann et al. 2022, Approach 3: alpha 0.34, beta 0.28, a 0.45; tokens, corpus and scale differ)",
              "", f"Report with plots: {result.report}",
              f"Specs: {result.sweep_spec}, {result.target_spec}  ·  fits: {result.fit_json}",
              f"Demo wall time: {_clock(result.wall_s)}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- stages


def _writable(out: Path) -> Path:
    """``out`` created if needed and proven writable, or a ConfigError naming --out."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder; give a folder for the demo's output")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e}); give a writable folder") from None
    return out


def _target_sweep(sweep: SweepConfig, req: PlanRequest, fits: dict[str, FitResult], data: FitData,
                  path: Path) -> SweepConfig:
    """A one-run spec: the compute-optimal model at TARGET_FACTOR × the largest budget.

    N is the TARGET_FIT fit's N_opt there, but not below the N of the best run at the largest
    budget (compute-optimal N does not shrink as compute grows; where the smallest budgets'
    minima sit at the grid's edge the fitted line can point below every size trained), snapped
    to a shape by the planner's ``shape_for``. D is C / flops-per-token in whole steps, rounded
    up so C is at least the factor; the batch is the planner's for that budget. An earlier spec
    at ``path`` chosen from this same sweep is reused, so a re-run resumes the target rather
    than re-choosing it.
    """
    from scaling.config import SweepConfig, SweepPoint
    from scaling.model import count_params, flops_per_token
    from scaling.plan import make_plan, shape_for
    from scaling.predict import predict_optimal

    if path.is_file():
        with contextlib.suppress(ConfigError):
            old = SweepConfig.from_yaml(path)
            if old.plan.get("sweep_digest") == sweep.digest():
                return old
    c_target = TARGET_FACTOR * max(req.budgets)
    largest = data.budget == data.budget.max()
    n_best = float(data.params[largest][data.loss[largest].argmin()])
    n_fit = predict_optimal(fits[TARGET_FIT], c_target).n_params if TARGET_FIT in fits else math.nan
    n_opt = max(n_fit, n_best) if math.isfinite(n_fit) else n_best
    model = shape_for(n_opt, req)
    batch = make_plan(dataclasses.replace(req, budgets=(c_target,))).points[0].batch_size
    batch_tokens = batch * req.context
    steps = math.ceil(c_target / (flops_per_token(model, req.conventions.params, req.conventions.flops) * batch_tokens))
    n_total = count_params(model)["total"]
    point = SweepPoint(
        name=f"target_{model.n_layer}x{model.d_model}", model=model, steps=steps, batch_size=batch,
        micro_batch_size=batch, lr_peak=demo_lr(n_total),
        # The planner's warmup: N_total tokens (Porian et al. 2024), at most 10% of the run.
        warmup_steps=min(max(1, math.ceil(n_total / batch_tokens)), steps // 10), budget_flops=c_target)
    provenance = {"target_of": sweep.name, "sweep_digest": sweep.digest(), "target_flops": c_target,
                  "flops_factor": TARGET_FACTOR, f"n_opt_{TARGET_FIT}": n_fit, "n_best_at_largest_budget": n_best,
                  "lr_rule": sweep.plan.get("lr_rule")}
    return dataclasses.replace(sweep, name=TARGET_SWEEP, runs=[point], plan=provenance).check()


def _launch(sweep: SweepConfig, results: Path, executor: Executor, progress: bool, out: Path) -> None:
    """``launch`` the sweep with single-threaded run processes; on a failure or Ctrl-C, say that
    re-running the demo continues.

    One thread per run (OMP_NUM_THREADS, which torch reads at start-up), measured on 2 cores: two
    threads give a 25K-130K-parameter model only 1.4-1.6× the tokens/s of one, so two one-thread
    runs side by side beat one two-thread run; and with one busy process beside it a two-thread
    run slowed 3-5× (its threads spin-wait for each other) while a one-thread run did not slow.
    """
    from scaling.launch import launch

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the executor passes this process's environment on
    try:
        launch(sweep, results, executor, progress=progress,
               resume_command=shlex.join(["scaling", "demo", "--out", str(out)]))
    except LaunchError as e:
        raise LaunchError(f"{e}; or re-run `scaling demo --out {out}` to continue the demo") from None
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old


# ----------------------------------------------------------------------------- formatting


def _n_and_d(sweep: SweepConfig) -> tuple[float, float]:
    """N (the sweep's convention) and D of a one-run sweep."""
    from scaling.model import n_params

    cfg = sweep.resolve(0)
    return float(n_params(cfg.model, cfg.conventions.params)), float(cfg.tokens)


def _describe_runs(sweep: SweepConfig) -> str:
    """One line per budget: each size as layers×width, N and tokens per parameter."""
    from scaling.model import count_params

    by_budget: dict[float, list[str]] = {}
    for r in sweep.runs:
        n = count_params(r.model)["total"]
        d = r.steps * r.batch_size * r.model.context
        by_budget.setdefault(r.budget_flops or 0.0, []).append(
            f"{r.model.n_layer}x{r.model.d_model} N={_si(n)} D/N={d / n:.0f}")
    lines = [f"  C={c:.3g}: " + ", ".join(v) for c, v in by_budget.items()]
    lr = [r.lr_peak for r in sweep.runs]
    steps = [r.steps for r in sweep.runs]
    return "\n".join(lines + [f"  context {CONTEXT}, {len(sweep.runs)} runs of {min(steps)}-{max(steps)} steps, "
                              f"peak LR {min(lr):.2g}-{max(lr):.2g} (demo_lr)"])


def _describe_fits(fits: dict[str, FitResult], skipped: dict[str, str]) -> str:
    """One line per fit: its status and exponents (intervals come in the closing summary)."""
    keys = ("a", "b", "alpha", "beta", "E", "alpha_N", "alpha_D", "alpha_C")
    lines = [f"  {name:<10} {f.message}; " + ", ".join(f"{k} {_g(v)}" for k, v in f.params.items() if k in keys)
             for name, f in fits.items()]
    return "\n".join(lines + [f"  skipped {k}: {v}" for k, v in skipped.items()])


def _g(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _iv(iv: tuple[float, float] | None) -> str:
    return f"[{_g(iv[0])}, {_g(iv[1])}]" if iv else ""


def _si(x: float) -> str:
    for unit, scale in (("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s"
