"""Packing: aggregate tokens/s of a sweep of small runs packed k to a GPU vs one at a time.

The sweep is what ``scaling plan --budget B --ladder 8e6,13e6,20e6,30e6 --context 512`` writes
(four runs of 7-30M total parameters at one budget, the planner's batch, micro-batch and LR), on
a folder of synthetic GPT-2-sized token ids. It is launched through the real runner,
``scaling.launch.launch`` with ``LocalExecutor(per_device=k)``, once per k, each into a fresh
results folder, so every mode pays the same torch.compile warm-ups and process starts.

Two figures per mode:

- **sweep tokens/s**: all the sweep's tokens ÷ the launch's wall time — what a researcher waits
  for (compile warm-ups included: packing overlaps them with other runs' training too);
- **steady tokens/s**: the tokens trained between each run's first ``--warmup-steps`` steps and
  its final evaluation ÷ the wall time during which at least one run was in that phase (the union of the runs' intervals,
  placed in time by run.json's ``started_at`` + the rows' ``elapsed_s``). It leaves out process
  starts, data setup and torch.compile warm-ups, so it is the GPU sharing alone.

``ratio`` divides each figure by the k = 1 mode's. Issue #7's target: ≥ 1.5×.

    python benchmarks/packing.py --json packing.json            # k = 1, 2, 4 on the GPU
    python benchmarks/packing.py --per-gpu 1,2 --budget 1e15    # quicker
    python benchmarks/packing.py --quick                        # CPU smoke test (tiny runs)
"""

from __future__ import annotations

import argparse
import dataclasses
from datetime import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import synthetic_data  # noqa: E402
from scaling.config import DataConfig, TrainConfig  # noqa: E402
from scaling.executors import LocalExecutor, visible_devices  # noqa: E402
from scaling.launch import launch, sweep_tasks  # noqa: E402
from scaling.plan import PlanRequest, make_plan, to_sweep  # noqa: E402
from scaling.results import read_metrics, read_run_json  # noqa: E402

VOCAB = 50304


def sweep_for(budget: float, ladder: tuple[float, ...], context: int, vocab: int, data: Path, device: str):  # type: ignore[no-untyped-def]
    """The planner's ladder sweep at ``budget``, with logging/eval settings that cost little."""
    req = PlanRequest(budgets=(budget,), ladder=ladder, context=context, vocab_size=vocab, min_steps=20)
    sweep = to_sweep(make_plan(req), name="packing", data_path=str(data))
    # Eval only at the end (a fixed small set), no periodic checkpoints: the benchmark times training.
    train = TrainConfig(device=device, eval_interval=10**9, eval_tokens=8 * context * 64, log_interval=10,
                        checkpoint_interval=10**9, max_epochs=1e9)
    return dataclasses.replace(sweep, train=train, data=DataConfig(path=str(data))).check()


def run_mode(sweep, results: Path, devices: list[str], k: int, warmup_steps: int) -> dict:  # type: ignore[no-untyped-def]
    """Launch the sweep with ``k`` runs per device; its wall time and each run's median tokens/s."""
    # A fresh compile cache per mode: the first mode must not warm the others' torch.compile.
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        os.environ[var] = str(results / "cache" / var.lower())
    t0 = time.perf_counter()
    launch(sweep, results, LocalExecutor(devices=devices, per_device=k), progress=False)
    wall = time.perf_counter() - t0
    runs, intervals = [], []
    for task in sweep_tasks(sweep, results):
        rows = read_metrics(task.out_dir / "metrics.parquet").to_pylist()
        start = datetime.fromisoformat(read_run_json(task.out_dir / "run.json")["started_at"]).timestamp()
        # From the first row after the warm-up to the last row before the final evaluation (whose
        # row includes compiling the eval graph and the eval itself).
        train_rows = [r for r in rows if r["step"] > warmup_steps and r["val_loss"] is None]
        first, last = train_rows[0], train_rows[-1]
        intervals.append((start + first["elapsed_s"], start + last["elapsed_s"], last["tokens"] - first["tokens"]))
        runs.append({"name": task.config.name, "tokens": rows[-1]["tokens"],
                     "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows if r["step"] > warmup_steps)})
    tokens = sum(r["tokens"] for r in runs)
    return {"per_gpu": k, "wall_s": wall, "tokens": tokens, "sweep_tokens_per_s": tokens / wall,
            "steady_tokens_per_s": sum(t for _, _, t in intervals) / _union_length(intervals), "runs": runs}


def _union_length(intervals: list[tuple[float, float, int]]) -> float:
    """Total length of the union of the (start, end) intervals."""
    total, reach = 0.0, -math.inf
    for start, end, _ in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-gpu", default="1,2,4", help="comma list of runs per GPU to compare (first is the baseline)")
    p.add_argument("--budget", type=float, default=2e15, help="FLOPs per run (default 2e15)")
    p.add_argument("--ladder", default="8e6,13e6,20e6,30e6", help="total-parameter sizes of the runs")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--warmup-steps", type=int, default=20, help="steps left out of the steady rate (default 20)")
    p.add_argument("--quick", action="store_true", help="tiny runs on the CPU (a smoke test)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    modes = [int(k) for k in args.per_gpu.split(",")]
    if args.quick:
        budget, ladder, context, vocab, devices, device = 3e10, (3e4, 1.5e5), 64, 512, ["cpu"], "cpu"
        args.warmup_steps = 2
    else:
        budget, ladder, context, vocab = args.budget, tuple(float(x) for x in args.ladder.split(",")), args.context, VOCAB
        devices = visible_devices()
        device = "auto"
        if devices == ["cpu"]:
            raise SystemExit("no GPU visible: run on a GPU machine, or pass --quick for a CPU smoke test")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {gpu} × {len(devices)}; torch {torch.__version__}; budget {budget:.3g} FLOPs per run", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        sweep = sweep_for(budget, ladder, context, vocab, synthetic_data(data, vocab, 1 << 24), device)
        for r in sweep.runs:
            print(f"  {r.name}: {r.model.n_layer}×{r.model.d_model}, {r.steps} steps × {r.batch_size}×{context}"
                  f" (micro {r.micro_batch_size})", flush=True)
        for k in modes:
            res = run_mode(sweep, Path(tmp) / f"results_k{k}", devices, k, args.warmup_steps)
            results.append(res)
            print(f"per_gpu {k}: wall {res['wall_s']:.1f} s, " + ", ".join(
                f"{r['name']} {r['tokens_per_s'] or 0:,.0f} tok/s" for r in res["runs"]), flush=True)
    base = results[0]
    print("\n per_gpu |  wall s | sweep tok/s  ratio | steady tok/s  ratio")
    for r in results:
        steady = r["steady_tokens_per_s"]
        ratio = steady / base["steady_tokens_per_s"] if steady and base["steady_tokens_per_s"] else None
        r["sweep_ratio"] = r["sweep_tokens_per_s"] / base["sweep_tokens_per_s"]
        r["steady_ratio"] = ratio
        print(f" {r['per_gpu']:>7} | {r['wall_s']:7.1f} | {r['sweep_tokens_per_s']:11,.0f} {r['sweep_ratio']:6.2f} |"
              f" {steady or 0:12,.0f} {ratio or 0:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": gpu, "torch": torch.__version__, "budget": budget,
                                               "ladder": ladder, "context": context, "modes": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
