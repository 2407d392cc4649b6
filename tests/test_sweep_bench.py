"""benchmarks/sweep.py end to end on the CPU: a real two-run planner sweep, packed two to the
device, and a breakdown that must account for the launch's whole wall time."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from scaling.prepare import prepare

REPO = Path(__file__).resolve().parent.parent
# The printed seconds have one decimal: 13 lines of rounding, at most 0.05 s each.
PRINT_TOLERANCE_S = 13 * 0.05 + 1e-6
EVAL_INTERVAL = 20
H200_PEAK = 989e12  # NVIDIA H200 SXM data sheet, dense BF16 tensor core


def test_sweep_benchmark_accounts_for_the_wall_time(tmp_path: Path) -> None:
    data = prepare("pysrc", tokenizer="bytes", out_dir=tmp_path / "data", max_bytes=150_000, val_fraction=0.2,
                   workers=1)
    results, report = tmp_path / "results", tmp_path / "sweep.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "sweep.py"), "--data", str(data), "--budgets", "3e10",
           # Two tiny sizes, the fit-point guards off: this measures the runner, not a study.
           "--plan-args", "--ladder 2e4,6e4 --context 64 --aspect 16 --head-dim 16 --min-steps 40 --max-epochs 100 "
                          "--min-tokens-per-param 0 --max-embedding-fraction 1",
           "--per-gpu", "2", "--results", str(results), "--json", str(report),
           f"train.eval_interval={EVAL_INTERVAL}", "train.checkpoint_interval=20"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.time() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(report.read_text())

    # The printed breakdown adds up to the printed GPU-seconds (= wall × devices).
    text = out.stdout
    total = float(re.search(r"where the ([\d.]+) GPU-seconds went", text).group(1))  # type: ignore[union-attr]
    section = text.split("GPU-seconds went:")[1].split("  total")[0]
    printed = [float(x) for x in re.findall(r" (-?[\d.]+) s +-?[\d.]+%", section)]
    assert len(printed) == 13
    assert abs(sum(printed) - total) <= PRINT_TOLERANCE_S
    assert abs(total - rep["wall_s"] * rep["n_devices"]) <= 0.05
    # ... and the JSON's, unrounded, to the wall within float error.
    assert math.isclose(sum(rep["breakdown_s"].values()), rep["wall_s"], rel_tol=1e-9)
    assert 0 < rep["wall_s"] < elapsed
    # Every cause is a duration; only contention may be negative (packing can beat one run alone).
    assert all(v >= -1e-3 for k, v in rep["breakdown_s"].items() if k != "contention"), rep["breakdown_s"]
    assert rep["breakdown_s"]["startup"] > 0 and rep["breakdown_s"]["checkpoint"] > 0

    runs = {r["run_id"]: r for r in rep["runs"]}
    table = pq.read_table(results / "sweepbench" / "runs.parquet").to_pylist()
    assert set(runs) == {row["run_id"] for row in table} and len(runs) == 2
    for row in table:
        run = runs[row["run_id"]]
        assert run["tokens"] == row["tokens"] == row["tokens_done"]
        # Useful FLOPs under the study's convention (6·N_total·D) are the runner's own count.
        assert math.isclose(run["flops_study"], 6 * row["n_params_total"] * row["tokens"], rel_tol=1e-12)
        assert math.isclose(run["flops_study"], row["flops_6nd"], rel_tol=1e-12)
        steps = row["tokens"] // row["batch_tokens"]
        assert run["evals"] == math.ceil(steps / EVAL_INTERVAL)  # every eval_interval steps and at the end
        phases = run["phases_s"]
        assert math.isclose(sum(phases.values()), run["slot_s"], rel_tol=1e-9)
        assert phases["loop"] > 0 and phases["eval_final"] > 0 and 0 < run["share"] <= 1
    # Packed two to the CPU, the runs' shares of their lifetimes plus the idle time fill the wall.
    idle = sum(rep["breakdown_s"][k] for k in ("idle_before", "idle_between", "idle_after"))
    assert math.isclose(sum(r["share"] * r["slot_s"] for r in runs.values()) + idle, rep["wall_s"], rel_tol=1e-9)
    assert min(r["share"] for r in runs.values()) < 0.99  # they did overlap
    # No CPU in the peak table: the peak is --gpu h200's, and sweep MFU is FLOPs over wall × peak.
    assert rep["peak_flops"] == H200_PEAK
    flops = sum(6 * row["n_params_total"] * row["tokens"] for row in table)
    assert math.isclose(rep["mfu_study"], flops / (rep["wall_s"] * H200_PEAK), rel_tol=1e-9)
    assert rep["flops_6nd_attn"] > rep["flops_study"]
