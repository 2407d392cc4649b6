"""Sweep-level MFU: a real planner sweep through the runner, and where its wall time went.

It does what a user does: ``scaling prepare pysrc --site-packages`` (unless ``--data`` holds a
prepared folder), ``scaling plan --budgets B --gpu GPU --data DIR --out SPEC`` and ``scaling launch
SPEC --per-gpu K`` (the Python equivalent: ``launch()`` with a ``LocalExecutor`` that also notes
when each run's process starts and ends). Then it reads what the runs recorded (run.json with its
``timing_s``, metrics.parquet) and prints one row per run and a sweep summary:

- **sweep MFU** = Σ useful FLOPs ÷ (wall × GPUs × peak), with useful FLOPs counted two ways: the
  study's convention (``scaling plan``'s default: C = 6·N_total·D) and 6·N_total + 12·L·d·T per
  token (PaLM App. B, what the trainer's ``mfu`` column counts). Wall = the launch, from its call
  to its return (not the corpus or the plan). Peak = the run's GPU in ``scaling.plan.GPU_PEAK_FLOPS``
  (H100/H200: 989 TFLOP/s dense bf16), or the ``--gpu`` table entry on a device it lacks (a CPU).
- **the breakdown** of wall × GPUs into GPU-seconds; the lines add up to it exactly:

  - each GPU's *idle* time (no run process alive on it): before the first run starts, between
    runs (the launcher polls every 0.5 s), after the last run ends;
  - each run's process, from spawn to exit, split into phases: *start-up* (Python, imports, CUDA
    context, model build: spawn → run.json ``started_at``); *compile / warm-up* (the first logged
    interval's time beyond its tokens at the run's median rate, plus the first eval's time beyond
    the median of the later evals: the eval graph's compile); the *train loop* (the logged
    intervals, ``tokens / tokens_per_s``, which leave out evals and checkpoints); *interim evals*
    and the *final eval* (``timing_s.evals``); *checkpointing* (``timing_s.checkpoint``: metrics
    flush, checkpoint.pt, run.json); *logging / metrics* (the rest of ``train_time_s``: spike
    checks, metrics rows, periodic flushes); *process exit* (after train() returns);
  - when runs share a GPU, each moment is split equally among the processes alive on it, and a
    run's share is spread over its phases in proportion to their lengths (an approximation: a
    run's phases do not all see the same sharing);
  - the train loop's share is split again: *useful* (Σ FLOPs ÷ peak, study convention), *below
    peak* (the run's tokens at its median rate while alone on the GPU, minus useful: kernels,
    host overhead, data) and *packing contention* (its loop share minus that solo time; negative
    when packing got more out of the GPU than one run alone). A run never alone on its GPU takes
    the solo rate of a run of the same shape (here, or in ``--solo-rates``, an earlier report such
    as a ``--per-gpu 1`` run's); without one its contention counts as 0 (the count is printed).

Host seconds spent fetching batches (``timing_s.data``) overlap the GPU's work, so they are shown
beside the breakdown, not in it. Each benchmark gets a fresh torch.compile cache (inside the
results folder) unless ``--compile-cache`` names a shared one.

    python benchmarks/sweep.py --budgets 1e15:1e16:3 --gpu h200 --json sweep.json    # on the GPU
    python benchmarks/sweep.py --data data/tiny --budgets 1e10 --plan-args "--ladder 2e4,5e4 --context 64"
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling import cli  # noqa: E402
from scaling.config import SweepConfig, atomic_write_text  # noqa: E402
from scaling.errors import ConfigError, ScalingError  # noqa: E402
from scaling.executors import LocalExecutor, RunTask  # noqa: E402
from scaling.launch import launch, sweep_tasks  # noqa: E402
from scaling.model import flops_per_token  # noqa: E402
from scaling.plan import GPUS, peak_flops  # noqa: E402
from scaling.results import read_metrics, read_run_json  # noqa: E402

SWEEP_NAME = "sweepbench"
PHASES = ("startup", "compile", "loop", "eval_interim", "eval_final", "checkpoint", "other", "exit")


class TimedLocalExecutor(LocalExecutor):
    """``LocalExecutor`` that notes each run process's spawn and exit times (Unix seconds)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spans: dict[str, list[float]] = {}  # run id -> [spawn, exit]
        self.device_of: dict[str, str] = {}
        self.waiters: list[threading.Thread] = []

    def poll(self) -> None:
        """Start queued runs (``LocalExecutor.poll``); note the spawn of each new process."""
        super().poll()
        for job in self.running:
            if job.task.run_id not in self.spans and job.proc is not None:
                self.spans[job.task.run_id] = [time.time(), float("nan")]
                self.device_of[job.task.run_id] = str(job.device)
                # A waiter thread sees the exit at once; the launcher only polls every 0.5 s.
                self.waiters.append(threading.Thread(target=self._note_exit, args=(job.task.run_id, job.proc)))
                self.waiters[-1].start()

    def _note_exit(self, run_id: str, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self.spans[run_id][1] = time.time()


def _segments(spans: dict[str, list[float]], t0: float, t1: float) -> list[tuple[float, float, frozenset[str]]]:
    """[t0, t1] cut at every spawn and exit: (start, end, runs alive) for each piece."""
    cuts = sorted({t0, t1, *(t for span in spans.values() for t in span)})
    return [(a, b, frozenset(r for r, (s, e) in spans.items() if s <= a and b <= e)) for a, b in zip(cuts, cuts[1:])]


def gpu_timeline(spans: dict[str, list[float]], t0: float, t1: float) -> dict[str, Any]:
    """One GPU's wall [t0, t1]: each run's equal share of the moments it was alive, the idle
    seconds before the first run, between runs and after the last, and each run's solo pieces."""
    share = dict.fromkeys(spans, 0.0)
    idle = {"idle_before": 0.0, "idle_between": 0.0, "idle_after": 0.0}
    solo: dict[str, list[tuple[float, float]]] = {r: [] for r in spans}
    first = min((s for s, _ in spans.values()), default=t1)
    last = max((e for _, e in spans.values()), default=t1)
    for a, b, alive in _segments(spans, t0, t1):
        for run in alive:
            share[run] += (b - a) / len(alive)
        if len(alive) == 1:
            solo[next(iter(alive))].append((a, b))
        if not alive:
            idle["idle_before" if b <= first else "idle_after" if a >= last else "idle_between"] += b - a
    return {"share_s": share, "idle_s": idle, "solo": solo}


def run_record(task: RunTask, span: list[float], convention: tuple[str, str], peak: float) -> dict[str, Any]:
    """One finished run's phases (seconds of its process), FLOPs, rates and logged intervals."""
    info = read_run_json(task.out_dir / "run.json")
    assert info is not None and info["status"] == "done", f"{task.out_dir}: not done"
    rows = read_metrics(task.out_dir / "metrics.parquet").to_pylist()
    timing, res = info["timing_s"], info["result"]
    started = datetime.fromisoformat(info["started_at"]).timestamp()
    evals = list(timing["evals"])
    # Each logged interval: its tokens and (end, length) in Unix seconds; an eval row's elapsed_s
    # includes the eval after the interval's end.
    intervals, prev, eval_iter = [], 0, iter(evals)
    for r in rows:
        length = (r["tokens"] - prev) / r["tokens_per_s"]
        end = started + r["elapsed_s"] - (next(eval_iter) if r["val_loss"] is not None else 0.0)
        intervals.append({"tokens": r["tokens"] - prev, "rate": r["tokens_per_s"], "start": end - length, "end": end})
        prev = r["tokens"]
    steady = [i["rate"] for i in intervals[1:]] or [intervals[0]["rate"]]
    rate = statistics.median(steady)
    warmup = max(0.0, intervals[0]["tokens"] / intervals[0]["rate"] - intervals[0]["tokens"] / rate)
    eval_compile = max(0.0, evals[0] - statistics.median(evals[1:])) if len(evals) > 1 else 0.0
    loop_logged = sum(i["tokens"] / i["rate"] for i in intervals)
    train_s = res["train_time_s"]
    phases = {
        "startup": started - span[0],
        "compile": warmup + eval_compile,
        "loop": loop_logged - warmup,
        "eval_interim": sum(evals[:-1]) - eval_compile,
        "eval_final": evals[-1],
        "checkpoint": timing["checkpoint"],
        "other": train_s - loop_logged - sum(evals) - timing["checkpoint"],
        "exit": span[1] - started - train_s,
    }
    model = task.config.model
    tokens = res["tokens"]
    return {
        "run_id": task.run_id, "name": task.config.name, "n_params_total": res["n_params_total"],
        # Runs of one shape (layers, width, context, micro-batch) train at one solo rate.
        "shape": (model.n_layer, model.d_model, model.context, task.config.train.micro_batch_size),
        "tokens": tokens, "slot_s": span[1] - span[0], "phases_s": phases, "data_s": timing["data"],
        "evals": len(evals), "median_tokens_per_s": rate,
        "mfu_6nd_attn": rate * flops_per_token(model, "total", "6nd+attn") / peak,
        "flops_study": flops_per_token(model, *convention) * tokens,  # type: ignore[arg-type]
        "flops_6nd_attn": flops_per_token(model, "total", "6nd+attn") * tokens,
        "intervals": intervals,
    }


def _solo_rate(run: dict[str, Any], pieces: list[tuple[float, float]]) -> float | None:
    """Median rate of the run's logged intervals (after the first) that lie in one solo piece."""
    starts = [a for a, _ in pieces]

    def alone(i: dict[str, Any]) -> bool:
        k = bisect.bisect_right(starts, i["start"]) - 1
        return k >= 0 and i["end"] <= pieces[k][1]

    rates = [i["rate"] for i in run["intervals"][1:] if alone(i)]
    return statistics.median(rates) if rates else None


def breakdown(runs: list[dict[str, Any]], timelines: list[dict[str, Any]], peak: float,
              known_rates: dict[tuple[int, ...], float]) -> dict[str, float]:
    """GPU-seconds by cause (the values add up to wall × GPUs); notes each run's share and solo rate.
    ``known_rates``: solo tokens/s by shape from an earlier report, for runs never alone here."""
    out = dict.fromkeys(("useful", "below_peak", "contention", *[p for p in PHASES if p != "loop"]), 0.0)
    for tl in timelines:
        for key, value in tl["idle_s"].items():
            out[key] = out.get(key, 0.0) + value
    share = {r: s for tl in timelines for r, s in tl["share_s"].items()}
    solo = {r: p for tl in timelines for r, p in tl["solo"].items()}
    rates = {run["run_id"]: _solo_rate(run, solo[run["run_id"]]) for run in runs}
    by_shape = known_rates | {run["shape"]: rates[run["run_id"]] for run in runs if rates[run["run_id"]]}
    for run in runs:
        frac = share[run["run_id"]] / run["slot_s"]
        for phase, seconds in run["phases_s"].items():
            if phase != "loop":
                out[phase] += frac * seconds
        loop = frac * run["phases_s"]["loop"]
        useful = run["flops_study"] / peak
        rate = rates[run["run_id"]] or by_shape.get(run["shape"])
        solo_loop = run["tokens"] / rate if rate else loop
        run.update(share=frac, solo_tokens_per_s=rate)
        out["useful"] += useful
        out["below_peak"] += solo_loop - useful
        out["contention"] += loop - solo_loop
    return out


LABELS = {
    "useful": "useful FLOPs ÷ peak (study convention)",
    "below_peak": "train loop below peak (at solo rate)",
    "contention": "packing contention (loop beyond solo rate)",
    "compile": "compile / warm-up (train + eval graphs)",
    "eval_interim": "interim evals",
    "eval_final": "final eval",
    "checkpoint": "checkpointing (+ metrics flush, run.json)",
    "other": "logging / metrics rows / flushes",
    "startup": "process start-up (imports, CUDA, model)",
    "exit": "process exit",
    "idle_before": "GPU idle before the first run (launcher)",
    "idle_between": "GPU idle between runs",
    "idle_after": "GPU idle after the last run (launcher)",
}


def report(sweep: SweepConfig, results: Path, ex: TimedLocalExecutor, t0: float, t1: float,
           args: argparse.Namespace) -> dict[str, Any]:
    """Everything the benchmark prints, as one JSON-safe dict."""
    tasks = sweep_tasks(sweep, results)
    env = read_run_json(tasks[0].out_dir / "run.json")["environment"]  # type: ignore[index]
    gpu_name = env["gpu_name"]
    peak = peak_flops(gpu_name) or GPUS[args.gpu].peak_flops
    convention = (sweep.conventions.params, sweep.conventions.flops)
    runs = [run_record(t, ex.spans[t.run_id], convention, peak) for t in tasks]
    timelines = [gpu_timeline({r: s for r, s in ex.spans.items() if ex.device_of[r] == d}, t0, t1)
                 for d in ex.devices]
    known = {}
    if args.solo_rates:
        earlier = json.loads(Path(args.solo_rates).read_text())["runs"]
        known = {tuple(r["shape"]): r["solo_tokens_per_s"] for r in earlier if r["solo_tokens_per_s"]}
    parts = breakdown(runs, timelines, peak, known)
    wall, n = t1 - t0, len(ex.devices)
    for r in runs:
        del r["intervals"]
    flops_study, flops_attn = sum(r["flops_study"] for r in runs), sum(r["flops_6nd_attn"] for r in runs)
    return {
        "device": gpu_name or "cpu", "n_devices": n, "per_gpu": args.per_gpu, "budgets": args.budgets,
        "peak_flops": peak, "convention": f"{convention[1]}, N {convention[0]}", "wall_s": wall,
        "flops_study": flops_study, "flops_6nd_attn": flops_attn,
        "mfu_study": flops_study / (wall * n * peak), "mfu_6nd_attn": flops_attn / (wall * n * peak),
        "breakdown_s": parts, "data_s": sum(r["data_s"] for r in runs), "runs": runs,
        "torch": env["torch"],
    }


def format_report(rep: dict[str, Any]) -> str:
    """The per-run table and the sweep summary, as printed."""
    lines = [f"{'run':<22} {'N':>9} {'tokens':>12} {'slot s':>7} {'share':>5} {'start':>6} {'compile':>7} "
             f"{'loop s':>7} {'evals':>6} {'ckpt':>5} {'tok/s':>11} {'MFU':>6}"]
    for r in rep["runs"]:
        p = r["phases_s"]
        lines.append(f"{r['name']:<22} {r['n_params_total']:>9,} {r['tokens']:>12,} {r['slot_s']:7.1f} "
                     f"{r['share']:5.2f} {p['startup']:6.1f} {p['compile']:7.1f} {p['loop']:7.1f} "
                     f"{p['eval_interim'] + p['eval_final']:6.1f} {p['checkpoint']:5.1f} "
                     f"{r['median_tokens_per_s']:11,.0f} {r['mfu_6nd_attn']:6.1%}")
    total = rep["wall_s"] * rep["n_devices"]
    lines += ["", "(slot: the run's process, spawn to exit; share: its part of the GPU while alive; tok/s: median "
              "logged rate; MFU: that rate × (6N_total + attention) ÷ peak)", "",
              f"sweep: {len(rep['runs'])} runs in {rep['wall_s']:.1f} s wall on {rep['n_devices']} × "
              f"{rep['device']}, per-gpu {rep['per_gpu']}, peak {rep['peak_flops'] / 1e12:.0f} TFLOP/s",
              f"  useful FLOPs: {rep['flops_study']:.3g} ({rep['convention']}), "
              f"{rep['flops_6nd_attn']:.3g} (6N_total + attention)",
              f"  sweep MFU: {rep['mfu_study']:.1%} ({rep['convention']}), "
              f"{rep['mfu_6nd_attn']:.1%} (6N_total + attention)", "",
              f"where the {total:.1f} GPU-seconds went:"]
    for key, label in LABELS.items():
        v = rep["breakdown_s"][key]
        lines.append(f"  {label:<45} {v:9.1f} s {v / total:7.1%}")
    added = sum(rep["breakdown_s"][k] for k in LABELS)
    lines.append(f"  {'total':<45} {added:9.1f} s {added / total:7.1%}")
    lines.append(f"  (beside it: host time fetching batches {rep['data_s']:.1f} s, overlapping the GPU; "
                 f"runs with no solo rate: {sum(r['solo_tokens_per_s'] is None for r in rep['runs'])})")
    return "\n".join(lines)


def _prepare_corpus(data: Path, tokenizer: str) -> None:
    """``scaling prepare pysrc --site-packages`` into ``data`` unless it holds a prepared folder."""
    if (data / "meta.json").is_file():
        return
    t0 = time.time()
    if cli.main(["prepare", "pysrc", "--site-packages", "--tokenizer", tokenizer, "--out", str(data), "--quiet"]):
        raise SystemExit(2)
    print(f"prepared {data} in {time.time() - t0:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="dotted overrides as for scaling launch, e.g. train.eval_interval=200")
    p.add_argument("--budgets", default="1e15:1e16:3", help="scaling plan --budgets (default 1e15:1e16:3)")
    p.add_argument("--gpu", default="h200", help="scaling plan --gpu; also the peak when the device is not in the table")
    p.add_argument("--data", default="data/pysrc", help="prepared data folder; prepared from pysrc if absent")
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer when --data must be prepared (default gpt2)")
    p.add_argument("--plan-args", default="", help='more scaling plan flags, e.g. "--sizes 5 --context 512"')
    p.add_argument("--per-gpu", type=int, default=0, help="scaling launch --per-gpu (default 0: auto by memory)")
    p.add_argument("--results", default=None, help="results root (default results/sweepbench-<UTC time>)")
    p.add_argument("--compile-cache", default=None, help="torch.compile cache folder (default: fresh, in --results)")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    p.add_argument("--solo-rates", default=None,
                   help="an earlier --json report (e.g. of --per-gpu 1): solo tokens/s of shapes never alone here")
    args = p.parse_args(argv)
    try:
        if args.per_gpu < 0:
            raise ConfigError(f"--per-gpu: must be >= 0 runs per GPU, 0 = auto by memory (got {args.per_gpu})")
        if args.solo_rates and not Path(args.solo_rates).is_file():
            raise ConfigError(f"--solo-rates {args.solo_rates}: no such file; give an earlier run's --json report")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        results = Path(args.results or f"results/sweepbench-{stamp}")
        if (results / SWEEP_NAME).exists():
            raise ConfigError(f"--results {results}: already holds a {SWEEP_NAME} sweep; give a fresh folder")
        data = Path(args.data)
        _prepare_corpus(data, args.tokenizer)
        spec = results / f"{SWEEP_NAME}.yaml"
        results.mkdir(parents=True, exist_ok=True)
        plan_argv = ["plan", "--budgets", args.budgets, "--gpu", args.gpu, "--data", str(data), "--out", str(spec),
                     *shlex.split(args.plan_args)]
        print("$ scaling " + shlex.join(plan_argv), flush=True)
        if cli.main(plan_argv):
            return 2
        sweep = SweepConfig.from_yaml(spec)
        if args.overrides:
            sweep = sweep.merge(args.overrides)
        cache = Path(args.compile_cache or results / "compile_cache")
        for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # the run processes inherit them
            os.environ[var] = str(cache / var.lower())
        ex = TimedLocalExecutor(per_device=args.per_gpu)
        print(f"$ scaling launch {spec} --per-gpu {args.per_gpu} {shlex.join(args.overrides)}".rstrip(), flush=True)
        t0 = time.time()
        launch(sweep, results, ex, progress=False)
        t1 = time.time()
        for waiter in ex.waiters:
            waiter.join()  # each has noted its exit (the processes have all ended)
    except ScalingError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2
    rep = report(sweep, results, ex, t0, t1, args)
    print(format_report(rep), flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(rep, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
