"""WSD cooldown branching: spec checks, plan, trainer, runner, results, status, and the evidence that
a branched sweep matches a from-scratch cosine sweep at about half the FLOPs."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import SlurmCluster
from scaling import fit
from scaling.config import (BranchGroup, BranchPoint, DataConfig, LaunchConfig, ModelConfig, RunConfig, SlurmConfig,
                            SweepConfig, SweepPoint, TrainConfig, trunk_shares)
from scaling.errors import ConfigError, LaunchError
from scaling.executors import DebugExecutor, Executor, Job, RunTask, run_state
from scaling.launch import format_status, launch, sweep_tasks
from scaling.model import count_params
from scaling.plan import PlanRequest, branched_flops, make_plan, to_sweep
from scaling.prepare import prepare
from scaling.results import RUNS_SCHEMA, kept_checkpoint_path, load_points, read_metrics, write_run_json
from scaling.schedule import lr_at
from scaling.slurm import SlurmExecutor
from scaling.train import RunResult, train
from test_train import free_port

ROOT = Path(__file__).resolve().parents[1]
# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they thrash.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
CONTEXT, BATCH, LR, WARMUP = 64, 8, 3e-3, 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bytes-tokenized stdlib Python source, ~1.9M train tokens: real text on which these tiny
    models' loss still falls with both N and D at a few hundred steps."""
    return prepare("pysrc", tokenizer="bytes", out_dir=tmp_path_factory.mktemp("data") / "pysrc",
                   max_bytes=2_000_000, val_fraction=0.05, workers=1, progress=False)


def model(n_layer: int, d_model: int) -> ModelConfig:
    return ModelConfig(n_layer=n_layer, d_model=d_model, n_head=2, d_ff=4 * d_model, context=CONTEXT, vocab_size=257)


def train_cfg(**kw: Any) -> TrainConfig:
    # The final eval scores 16,384 tokens, as these tests were measured with: on all of val (5% of
    # 2 MB) the smallest, shortest point (1x32, 80 steps) branched ends 0.14 nats (3.6 unpaired
    # standard errors) below its from-scratch cosine run, a real difference at that precision.
    return TrainConfig(eval_interval=10_000, eval_tokens=16384, final_eval_tokens=16384, log_interval=20,
                       checkpoint_interval=10_000, flush_interval=100, device="cpu", **kw)


def branch_sweep(data: Path, name: str, shapes: list[tuple[int, int]], steps: list[int], micro_batch_size: int = BATCH,
                 **group: Any) -> SweepConfig:
    groups = [BranchGroup(name=f"{L}x{d}", model=model(L, d), batch_size=BATCH, micro_batch_size=micro_batch_size,
                          lr_peak=LR, warmup_steps=WARMUP,
                          points=[BranchPoint(tokens=s * BATCH * CONTEXT, name=f"{L}x{d}_s{s}") for s in steps],
                          **group)
              for L, d in shapes]
    return SweepConfig(name=name, data=DataConfig(path=str(data)), train=train_cfg(schedule="wsd-branch"),
                       branches=groups).check()


def scratch_sweep(data: Path, name: str, shapes: list[tuple[int, int]], steps: list[int], micro_batch_size: int = BATCH,
                  **train: Any) -> SweepConfig:
    runs = [SweepPoint(name=f"{L}x{d}_s{s}", model=model(L, d), steps=s, batch_size=BATCH,
                       micro_batch_size=micro_batch_size, lr_peak=LR, warmup_steps=WARMUP)
            for L, d in shapes for s in steps]
    return SweepConfig(name=name, data=DataConfig(path=str(data)), train=train_cfg(**train), runs=runs).check()


def run_in_process(sweep: SweepConfig, root: Path) -> dict[str, dict[str, Any]]:
    """Launch ``sweep`` with the in-process executor; its runs.parquet rows by run name."""
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's progress lines
        launch(sweep, root, DebugExecutor(), progress=False)
    return {r["name"]: r for r in pq.read_table(root / sweep.name / "runs.parquet").to_pylist()}


def start_step(task: RunTask) -> int:
    """The trunk step a branch task starts from."""
    assert task.config.lineage is not None and task.config.lineage.start_step is not None, task.run_id
    return task.config.lineage.start_step


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scaling", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=ROOT)


# `python -m scaling` for torchrun, with the training loader's random windows drawn as one stream
# split across ranks: rank r's batch k is the stream's batch k·world_size + r, so 2 processes train on
# exactly the micro-batches 1 process accumulates (for 1 process it is the real loader). The real
# loader seeds rank r's batch k by (seed, r, k) instead: other windows under DDP than in 1 process,
# whose final losses then differ by data-order noise (measured over 16 seeds: sd 0.02 nats, up to 0.18).
SAME_ORDER_CLI = """
import sys

import numpy as np

from scaling import cli, data

sequential = data.TokenLoader._offsets


def offsets(self, batch):
    if self.mode == "sequential":
        return sequential(self, batch)
    rng = np.random.default_rng([self.seed, 0, batch * self.world_size + self.rank])
    return rng.integers(0, self.n_tokens - self.context, size=self.batch_size)


data.TokenLoader._offsets = offsets
sys.exit(cli.main())
"""


def torchrun_same_order(task: RunTask, tmp: Path) -> None:
    """Train one run under 2-process gloo DDP on the CPU, launched as tests/test_train.py's DDP test
    launches one, with the data order of one process (SAME_ORDER_CLI)."""
    script = tmp / "same_order_cli.py"
    script.write_text(SAME_ORDER_CLI)
    task.out_dir.mkdir(parents=True, exist_ok=True)
    task.config.save_yaml(task.config_path)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), str(script), "train", str(task.config_path), "--out", str(task.out_dir),
                        "--quiet"], capture_output=True, text=True, env=ENV, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr  # an abort at exit, after the run is done, fails it too


# ----------------------------------------------------------------------------- the arithmetic


def test_branch_point_is_where_wsd_leaves_the_trunk_and_shares_add_up(data_dir: Path) -> None:
    sweep = branch_sweep(data_dir, "s", [(1, 32)], [50, 100, 400], cooldown_fraction=0.25)
    trunk = sweep.resolve_trunk(0)
    assert trunk.train.schedule == "constant" and trunk.lineage is not None
    assert trunk.lineage.keep_steps == [38, 75, 300] and trunk.steps == 300  # round(0.25 · S) steps decay
    for j, k in enumerate(trunk.lineage.keep_steps):
        branch = sweep.resolve_branch(0, j, "trunk-id")
        assert branch.train.schedule == "wsd" and branch.lineage is not None and branch.lineage.start_step == k
        # Identical updates up to the branch point, decaying right after it.
        assert [lr_at(s, branch) for s in range(k)] == [lr_at(s, trunk) for s in range(k)]
        assert lr_at(k - 1, branch) == LR > lr_at(k, branch)
        assert lr_at(branch.steps - 1, branch) == pytest.approx(LR * 0.1)
    # Each trunk segment is split among the branches that need it; shares add up to the trunk.
    assert trunk_shares(80, [20, 40, 60, 80]) == pytest.approx([5, 5 + 20 / 3, 5 + 20 / 3 + 10, 5 + 20 / 3 + 30])
    assert trunk_shares(120, [40, 80]) == pytest.approx([40, 80])  # the 40 steps past the last point: 20 each
    assert sum(trunk_shares(1000, [3, 3, 500, 17, 999])) == pytest.approx(1000)
    # The spec round-trips through YAML, and a run outside a branching sweep keeps its old config dict.
    assert SweepConfig.from_dict(yaml.safe_load(sweep.to_yaml())).to_dict() == sweep.to_dict()
    plain = scratch_sweep(data_dir, "p", [(1, 32)], [50]).resolve(0)
    assert "lineage" not in plain.to_dict()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"cooldown_fraction": 1.5}, "branches[0].cooldown_fraction: must be in (0, 1) (got 1.5)"),
        ({"cooldown_fraction": 0.0}, "branches[0].cooldown_fraction: must be in (0, 1) (got 0.0)"),
        ({"trunk_tokens": 100 * BATCH * CONTEXT},
         f"branches[0].points[2].tokens: {400 * BATCH * CONTEXT:,} tokens branch off the trunk at "
         f"{320 * BATCH * CONTEXT:,}, beyond trunk_tokens {100 * BATCH * CONTEXT:,}"),
        ({"points": [{"tokens": 1000}]}, "branches[0].points[0].tokens: must be a whole number of steps"),
        ({"points": [{"tokens": 12 * BATCH * CONTEXT}]},
         "branches[0].points[0].tokens: 6,144 tokens = 12 steps leave no stable phase"),
    ],
    ids=["fraction-above-1", "fraction-0", "beyond-trunk", "not-whole-steps", "no-stable-phase"],
)
def test_bad_branch_spec_is_a_one_line_error_naming_the_field(data_dir: Path, tmp_path: Path,
                                                              edit: dict[str, Any], message: str) -> None:
    data = branch_sweep(data_dir, "bad", [(1, 32)], [100, 200, 400]).to_dict()
    data["branches"][0].update(edit)
    with pytest.raises(ConfigError) as e:
        SweepConfig.from_dict(data)
    assert message in str(e.value)
    if edit.get("cooldown_fraction") == 1.5 or "trunk_tokens" in edit:  # and through the CLI: exit 2, one line
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
        r = run_cli("launch", str(tmp_path / "bad.yaml"), "--results", str(tmp_path / "res"))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert message in r.stderr and "Traceback" not in r.stderr


def test_schedule_and_sections_must_agree(data_dir: Path) -> None:
    data = branch_sweep(data_dir, "x", [(1, 32)], [100]).to_dict()
    with pytest.raises(ConfigError, match=r"branches: need train.schedule: wsd-branch \(got 'cosine'\)"):
        SweepConfig.from_dict({**data, "train": {**data["train"], "schedule": "cosine"}})
    mixed = {**data, "runs": scratch_sweep(data_dir, "y", [(1, 32)], [100]).to_dict()["runs"]}
    with pytest.raises(ConfigError, match="runs: a train.schedule: wsd-branch sweep lists its points under branches"):
        SweepConfig.from_dict(mixed)
    r = run_cli("plan", "--budget", "1e15", "--context", "256", "--vocab", "256", "--branching",
                "--cooldown-fraction", "1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--cooldown-fraction" in r.stderr


# ----------------------------------------------------------------------------- planner


def test_plan_branching_groups_the_isoflop_points_by_size(tmp_path: Path) -> None:
    # The guards off: this tests the grouping of a full grid (the D/N floor drops 2-3 sizes per budget here).
    guards_off = {"max_embedding_fraction": 1.0, "min_tokens_per_param": 0.0}
    req = PlanRequest(budgets=(1e15, 2e15, 4e15, 8e15), context=256, vocab_size=256, branching=True, **guards_off)
    plan = make_plan(req)
    sweep = to_sweep(plan, name="b")
    assert sweep.train.schedule == "wsd-branch" and not sweep.runs
    # The same (N, D) points, each once, one group per size; sizes recur across budgets.
    planned = sorted((p.model.n_layer, p.model.d_model, p.tokens) for p in plan.points)
    branched = sorted((g.model.n_layer, g.model.d_model, b.tokens) for g in sweep.branches for b in g.points)
    assert branched == planned
    assert len({(g.model.n_layer, g.model.d_model) for g in sweep.branches}) == len(sweep.branches)
    assert max(len(g.points) for g in sweep.branches) == 4
    for b in plan.budgets:  # still an IsoFLOP grid per budget
        assert len(b.points) >= 5 and all(abs(p.flops / b.budget_flops - 1) < 0.02 for p in b.points)
    # --shared-sizes: the same points with the same settings as from-scratch runs (the baseline).
    base = to_sweep(make_plan(PlanRequest(budgets=req.budgets, context=256, vocab_size=256, shared_sizes=True,
                                          **guards_off)))
    as_runs = sorted((r.model.n_layer, r.model.d_model, r.steps * r.batch_size * 256, r.batch_size, r.lr_peak,
                      r.warmup_steps) for r in base.runs)
    as_branches = sorted((g.model.n_layer, g.model.d_model, b.tokens, g.batch_size, g.lr_peak, g.warmup_steps)
                         for g in sweep.branches for b in g.points)
    assert as_runs == as_branches
    # The branched cost: each trunk once plus the cooldowns, less than training every point.
    from_scratch = sum(p.flops for p in plan.points)
    assert 0.5 < branched_flops(plan) / from_scratch < 0.9
    assert plan.to_dict()["totals"]["flops_branched"] == branched_flops(plan)
    tasks = sweep_tasks(sweep, tmp_path)
    assert len(tasks) == len(plan.points) + len(sweep.branches)
    trunk_ids = {t.run_id for t in tasks if t.config.lineage and t.config.lineage.trunk is None}
    assert {t.config.lineage.trunk for t in tasks if t.config.lineage and t.config.lineage.trunk} == trunk_ids

    out = tmp_path / "b.yaml"
    r = run_cli("plan", "--budgets", "1e15,2e15,4e15,8e15", "--context", "256", "--vocab", "256", "--branching",
                "--out", str(out), "--name", "b", "--max-embedding-fraction", "1", "--min-tokens-per-param", "0")
    assert r.returncode == 0, r.stderr
    assert f"Branched: {len(sweep.branches)} WSD trunks + {len(plan.points)} 20% 1-sqrt cooldowns" in r.stdout
    assert SweepConfig.from_yaml(out).to_dict() == sweep.to_dict()


# ----------------------------------------------------------------------------- trainer, runner, results


def test_a_branch_is_exactly_the_from_scratch_wsd_run_and_costs_its_share(data_dir: Path, tmp_path: Path) -> None:
    shapes, steps = [(1, 32)], [40, 80, 120]
    branched = branch_sweep(data_dir, "br", shapes, steps)
    wsd = scratch_sweep(data_dir, "wsd", shapes, steps, schedule="wsd", decay_fraction=0.2, decay_shape="1-sqrt")
    a, b = run_in_process(branched, tmp_path), run_in_process(wsd, tmp_path)
    assert a.keys() == b.keys()
    tasks = sweep_tasks(branched, tmp_path)
    trunk, branches = tasks[0], tasks[1:]
    assert trunk.config.lineage is not None and trunk.config.lineage.keep_steps == [32, 64, 96]
    for t in branches:
        row, ref = a[t.config.name], b[t.config.name]
        # On CPU a branch ends bit for bit where the from-scratch WSD run of its tokens ends.
        assert row["val_loss"] == ref["val_loss"] and row["val_loss_se"] == ref["val_loss_se"]
        cols = ["step", "tokens", "lr", "train_loss", "grad_norm"]
        mine = read_metrics(t.out_dir / "metrics.parquet").select(cols).to_pylist()
        scratch = read_metrics(tmp_path / "wsd" / ref["run_id"] / "metrics.parquet").select(cols).to_pylist()
        # The trunk's rows up to the branch point, then its own: every row the from-scratch run
        # logs, plus the trunk's row of its last step (an evaluation of this very state).
        assert [r for r in mine if r in scratch] == scratch and mine[-1]["step"] == t.config.steps
        assert {r["step"] for r in mine if r not in scratch} <= {trunk.config.steps}
        state = run_state(t.out_dir)
        assert state["status"] == "done" and state["resumed_from_step"] is None
        assert row["branch_of"] == trunk.run_id and row["status"] == "done"
        assert row["branch_tokens"] == start_step(t) * BATCH * CONTEXT
        assert not kept_checkpoint_path(trunk.out_dir, start_step(t)).exists()  # deleted: its branch is done
    assert not (trunk.out_dir / "checkpoint.pt").exists() and (branches[0].out_dir / "checkpoint.pt").is_file()
    # runs.parquet: one row per point (the trunk is no point); costs add up to trunk + cooldowns.
    table = pq.read_table(tmp_path / "br" / "runs.parquet")
    assert table.schema.equals(RUNS_SCHEMA) and table.num_rows == 3
    per_token = 6 * count_params(model(*shapes[0]))["total"]
    cooldowns = sum(t.config.steps - start_step(t) for t in branches)
    assert sum(r["flops_cost_6nd"] for r in a.values()) == pytest.approx(per_token * BATCH * CONTEXT * (96 + cooldowns))
    for r in a.values():
        assert r["flops_6nd"] == pytest.approx(per_token * r["tokens"]) and r["flops_cost_6nd"] < r["flops_6nd"]
    for r in b.values():  # a from-scratch run costs what it trains
        assert r["flops_cost_6nd"] == r["flops_6nd"] and r["branch_of"] is None and r["branch_tokens"] is None
    # The fitter sees ordinary (N, D, loss) points.
    points = load_points([tmp_path / "br"])
    assert sorted(points.tokens.tolist()) == [s * BATCH * CONTEXT for s in steps]
    # status: a tree, the trunk first.
    lines = format_status(tmp_path / "br").splitlines()
    assert lines[1].startswith(trunk.run_id)
    assert [ln[:3] for ln in lines[2:5]] == ["├─ ", "├─ ", "└─ "] and lines[-1] == "4 done"


class ScriptedTrunk(Executor):
    """Plays a trunk that keeps its next checkpoint at every poll and ends after ``kept_before_end``
    of them; a branch ends as soon as it is submitted. Records what was submitted when."""

    class _Job(Job):
        def __init__(self, task: RunTask, ex: ScriptedTrunk) -> None:
            super().__init__(task)
            self.ex = ex

        def done(self) -> bool:
            return self.task.run_id != self.ex.trunk.run_id or self.ex.kept == self.ex.kept_before_end

    def __init__(self, trunk: RunTask, kept_before_end: int) -> None:
        self.trunk, self.kept_before_end, self.kept = trunk, kept_before_end, 0
        self.submitted: list[tuple[str, int]] = []  # (run id, trunk checkpoints kept by then)

    def submit(self, task: RunTask) -> Job:
        self.submitted.append((task.run_id, self.kept))
        task.out_dir.mkdir(parents=True, exist_ok=True)
        if task.run_id != self.trunk.run_id:
            write_run_json(task.out_dir / "run.json", {"status": "done"})
        return self._Job(task, self)

    def poll(self) -> None:
        if self.kept < self.kept_before_end:
            assert self.trunk.config.lineage is not None
            kept_checkpoint_path(self.trunk.out_dir, self.trunk.config.lineage.keep_steps[self.kept]).touch()
            self.kept += 1
            if self.kept == self.kept_before_end:
                write_run_json(self.trunk.out_dir / "run.json", {"status": "done"})


def test_launch_holds_each_branch_until_its_trunk_keeps_its_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    sweep = branch_sweep(data_dir, "held", [(1, 32)], [100, 200, 400])
    tasks = sweep_tasks(sweep, tmp_path)
    trunk, branches = tasks[0], tasks[1:]
    ex = ScriptedTrunk(trunk, kept_before_end=2)  # the trunk ends before keeping step 320
    # A done trunk is never resumed: the way out is to retrain it.
    with pytest.raises(LaunchError, match=f"1 run\\(s\\) did not finish; {branches[2].run_id} \\(planned\\): "
                                          f".*checkpoint_000320.pt is gone and its trunk is done .*; delete "
                                          f"{re.escape(str(trunk.out_dir))} and relaunch to retrain the trunk"):
        launch(sweep, tmp_path, ex, progress=False)
    # Each branch went out as soon as its checkpoint was there, the first two while the trunk ran.
    assert ex.submitted == [(trunk.run_id, 0), (branches[0].run_id, 1), (branches[1].run_id, 2)]
    assert "waiting: step 320" in format_status(tmp_path / "held")


class Refuse(Executor):
    """An executor for launches that must train nothing."""

    def submit(self, task: RunTask) -> Job:
        raise AssertionError(f"{task.run_id} was submitted")


def test_trunk_checkpoints_go_once_their_branches_are_done_and_a_failed_branch_keeps_its_own(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = branch_sweep(data_dir, "gc", [(1, 32)], [40, 80, 120])
    tasks = sweep_tasks(sweep, tmp_path)
    trunk, branches = tasks[0], tasks[1:]
    kept = [kept_checkpoint_path(trunk.out_dir, start_step(t)) for t in branches]
    sick = branches[1]

    def poison(step: int, model: torch.nn.Module) -> None:
        with torch.no_grad():
            model.h[0].mlp.c_fc.weight.fill_(float("nan"))

    def train_sick(cfg: RunConfig, out_dir: Path, **kw: Any) -> RunResult:  # the trainer's fault hook, on one branch
        return train(cfg, out_dir, after_step=poison if cfg.name == sick.config.name else None, **kw)

    monkeypatch.setattr("scaling.train.train", train_sick)
    with pytest.raises(LaunchError, match=f"1 run\\(s\\) did not finish; {sick.run_id} \\(failed: nan"):
        run_in_process(sweep, tmp_path)
    monkeypatch.undo()
    # The failed branch has no checkpoint of its own (a NaN model is never saved): it still has the
    # trunk's. The trunk keeps its checkpoint.pt too while a branch is unfinished.
    assert not (sick.out_dir / "checkpoint.pt").exists()
    assert [p.is_file() for p in kept] == [False, True, False] and (trunk.out_dir / "checkpoint.pt").is_file()

    rows = run_in_process(sweep, tmp_path)  # the relaunch trains the failed branch from that checkpoint
    assert [r["status"] for r in rows.values()] == ["done"] * 3
    state = run_state(sick.out_dir)
    assert state["resumed_from_step"] is None and state["result"]["tokens"] == sick.config.tokens
    assert all(math.isfinite(r["train_loss"]) for r in read_metrics(sick.out_dir / "metrics.parquet").to_pylist())
    # Everything done: no trunk checkpoint left, and the branches keep theirs like any run.
    assert not list(trunk.out_dir.glob("checkpoint*.pt"))
    assert all((t.out_dir / "checkpoint.pt").is_file() for t in branches)
    launch(sweep, tmp_path, Refuse(), progress=False)  # a relaunch of the finished sweep trains nothing

    # Retraining a done branch needs its trunk again: the relaunch says so instead of waiting.
    shutil.rmtree(branches[0].out_dir)
    with pytest.raises(LaunchError, match=f"{re.escape(str(kept[0]))} is gone and its trunk is done .*; delete "
                                          f"{re.escape(str(trunk.out_dir))} and relaunch to retrain the trunk"):
        launch(sweep, tmp_path, Refuse(), progress=False)
    shutil.rmtree(trunk.out_dir)
    before = run_state(sick.out_dir)
    rows = run_in_process(sweep, tmp_path)
    assert [r["status"] for r in rows.values()] == ["done"] * 3 and run_state(sick.out_dir) == before
    assert not list(trunk.out_dir.glob("checkpoint*.pt"))


def test_local_launch_survives_kill_9_of_a_trunk_with_branches_out(data_dir: Path, tmp_path: Path) -> None:
    sweep = branch_sweep(data_dir, "loc", [(1, 32)], [100, 200, 800])
    sweep = sweep.merge(["train.checkpoint_interval=50"])
    spec, results = tmp_path / "loc.yaml", tmp_path / "results"
    sweep.save_yaml(spec)
    tasks = sweep_tasks(sweep, results)
    trunk, branches = tasks[0], tasks[1:]
    proc = subprocess.Popen([sys.executable, "-m", "scaling", "launch", str(spec), "--results", str(results),
                             "--per-gpu", "3", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=ENV, cwd=ROOT)
    # Kill the launcher once the trunk has kept two branch points (two branches are out) and runs on.
    second = kept_checkpoint_path(trunk.out_dir, 160)
    deadline = time.time() + 120
    while not (second.is_file() and run_state(trunk.out_dir).get("status") == "running") and time.time() < deadline:
        time.sleep(0.05)
    assert second.is_file(), [run_state(t.out_dir).get("status") for t in tasks]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The children die with the launcher; each checkpoints on the SIGTERM it gets.
    deadline = time.time() + 30
    while any(run_state(t.out_dir).get("status") == "running" for t in tasks) and time.time() < deadline:
        time.sleep(0.2)
    assert run_state(trunk.out_dir)["status"] == "interrupted"

    r = run_cli("launch", str(spec), "--results", str(results), "--per-gpu", "3", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "launching 4 run(s)" in r.stdout
    state = run_state(trunk.out_dir)
    assert state["status"] == "done" and state["resumed_from_step"] > 0
    assert state["result"]["steps"] == trunk.config.steps == 640
    for t in branches:
        s = run_state(t.out_dir)
        assert s["status"] == "done" and s["result"]["tokens"] == t.config.tokens
        steps = read_metrics(t.out_dir / "metrics.parquet").column("step").to_pylist()
        assert steps == sorted(set(steps)) and steps[-1] == t.config.steps  # nothing logged twice
    rows = pq.read_table(results / "loc" / "runs.parquet").to_pylist()
    assert len(rows) == 3 and all(r["status"] == "done" and r["branch_of"] == trunk.run_id for r in rows)


def test_a_branch_under_two_process_ddp_ends_where_it_does_in_one_process(data_dir: Path, tmp_path: Path) -> None:
    # Micro-batches of 4: under DDP one per process and step, in one process two accumulated.
    sweep = branch_sweep(data_dir, "ddp", [(1, 32)], [60, 120], micro_batch_size=BATCH // 2)
    one = run_in_process(sweep, tmp_path / "one")
    ref_trunk, ref_branch, _ = sweep_tasks(sweep, tmp_path / "one")
    trunk, branch, _ = sweep_tasks(sweep, tmp_path / "two")
    for t in (trunk, branch):
        torchrun_same_order(t, tmp_path)
    state = run_state(branch.out_dir)
    assert state["status"] == "done" and state["environment"]["world_size"] == 2 and state["grad_accum_steps"] == 1
    assert state["resumed_from_step"] is None and state["result"]["tokens"] == branch.config.tokens
    # It started from the trunk's checkpoint kept mid-run: the trunk's rows up to there, then its own.
    rows = read_metrics(branch.out_dir / "metrics.parquet").to_pylist()
    before = [r for r in read_metrics(trunk.out_dir / "metrics.parquet").to_pylist() if r["step"] <= start_step(branch)]
    assert start_step(branch) < trunk.config.steps and rows[:len(before)] == before and len(rows) > len(before)
    # Bit for bit what one process logs, trunk and branch (tolerance 0): one process sums g0/2 + g1/2
    # over its two micro-batches, DDP averages the processes' g0 and g1, and halving is exact in binary
    # floating point. val_loss is a float64 mean of float32 batch losses, exact in any order; only
    # val_loss_se, whose squares are summed over the eval batches in another order, may differ.
    cols = ["step", "tokens", "lr", "train_loss", "grad_norm", "val_loss"]
    for mine, ref in ((trunk, ref_trunk), (branch, ref_branch)):
        assert (read_metrics(mine.out_dir / "metrics.parquet").select(cols).to_pylist()
                == read_metrics(ref.out_dir / "metrics.parquet").select(cols).to_pylist()), mine.run_id
    assert state["result"]["val_loss"] == one[branch.config.name]["val_loss"]
    assert state["result"]["val_loss_se"] == pytest.approx(one[branch.config.name]["val_loss_se"], rel=1e-9)


@pytest.mark.slurm
def test_slurm_submits_each_branch_as_its_own_job_once_its_checkpoint_exists(
    slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch, data_dir: Path, tmp_path: Path
) -> None:
    slurm_cluster.activate(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = branch_sweep(data_dir, "sb", [(1, 32)], [100, 200, 800])
    slurm = SlurmConfig(gpus_per_task=0, cpus_per_task=1, min_time_min=5)
    sweep = dataclasses.replace(sweep, launch=LaunchConfig(executor="slurm", slurm=slurm)).check()
    states = launch(sweep, tmp_path, SlurmExecutor(sweep, tmp_path / "sb" / ".submitit"), progress=False)
    assert [s["status"] for s in states] == ["done"] * 4
    tasks = sweep_tasks(sweep, tmp_path)
    trunk, branches = tasks[0], tasks[1:]
    jobs = [json.loads((t.out_dir / "job.json").read_text())["job_id"] for t in tasks]
    assert len(set(jobs)) == 4  # the trunk and each branch: a job of its own

    def when(job: str, field: str) -> float:
        return time.mktime(time.strptime(slurm_cluster.job_field(job, field), "%Y-%m-%dT%H:%M:%S"))

    # The kept checkpoints are gone (their branches are done), but the trunk logged each branch point's
    # step just before keeping it: no earlier than started_at + elapsed_s of that row.
    started = datetime.fromisoformat(run_state(trunk.out_dir)["started_at"]).timestamp()
    elapsed = {r["step"]: r["elapsed_s"] for r in read_metrics(trunk.out_dir / "metrics.parquet").to_pylist()}
    for t, job in zip(branches, jobs[1:]):
        assert not kept_checkpoint_path(trunk.out_dir, start_step(t)).exists()
        kept_after = started + elapsed[start_step(t)]
        assert when(job, "SubmitTime") >= math.floor(kept_after)  # submitted once its checkpoint was there
    assert pq.read_table(tmp_path / "sb" / "runs.parquet").num_rows == 3


# ----------------------------------------------------------------------------- the evidence


def test_branched_sweep_matches_from_scratch_cosine_at_about_half_the_flops(data_dir: Path, tmp_path: Path) -> None:
    """Four sizes x four token counts, trained both ways: from-scratch cosine runs, and one
    constant-LR trunk per size with 20% 1-sqrt cooldown branches (Hägele et al. 2024)."""
    shapes, steps = [(1, 32), (2, 32), (2, 48), (2, 64)], [80, 160, 240, 320]
    cosine = run_in_process(scratch_sweep(data_dir, "cosine", shapes, steps), tmp_path)
    branched = run_in_process(branch_sweep(data_dir, "branched", shapes, steps), tmp_path)
    assert cosine.keys() == branched.keys() and len(cosine) == 16

    # Per point: the difference is within noise, the runs' eval standard errors combined, at a
    # family-wise 5% level over the 16 points (Bonferroni: z = 2.96).
    z = NormalDist().inv_cdf(1 - 0.05 / (2 * len(cosine)))
    diffs, in_sigmas = {}, {}
    for name, c in cosine.items():
        b = branched[name]
        diffs[name] = b["val_loss"] - c["val_loss"]
        in_sigmas[name] = diffs[name] / math.hypot(c["val_loss_se"], b["val_loss_se"])
        assert abs(in_sigmas[name]) <= z, (name, c["val_loss"], b["val_loss"], in_sigmas[name])

    # FLOPs: each trunk once (to its last branch point, 80% of the longest run) plus every cooldown.
    flops_cosine = sum(r["flops_cost_6nd"] for r in cosine.values())
    flops_branched = sum(r["flops_cost_6nd"] for r in branched.values())
    trunk_and_cooldowns = sum(6 * count_params(model(*s))["total"] * BATCH * CONTEXT
                              * (0.8 * max(steps) + 0.2 * sum(steps)) for s in shapes)
    assert flops_branched == pytest.approx(trunk_and_cooldowns)
    assert flops_cosine == pytest.approx(sum(r["flops_6nd"] for r in cosine.values()))
    ratio = flops_branched / flops_cosine
    assert ratio == pytest.approx((0.8 * 320 + 0.2 * 800) / 800)  # 0.52 for four evenly spaced counts

    # Approach 3 on each sweep: each exponent's estimate lies inside the other fit's interval.
    fits = {name: fit.fit_approach3(load_points([tmp_path / name]), n_bootstrap=100, seed=0)
            for name in ("cosine", "branched")}
    for key in ("alpha", "beta", "a"):
        for mine, other in (("cosine", "branched"), ("branched", "cosine")):
            interval = fits[other].intervals[key]
            assert interval is not None and interval[0] <= fits[mine].params[key] <= interval[1], (key, mine)

    # The figures behind the claim (pytest -s shows them).
    print(json.dumps({
        "flops": {"cosine": flops_cosine, "branched": flops_branched, "ratio": ratio},
        "val_loss": {n: [cosine[n]["val_loss"], branched[n]["val_loss"], diffs[n], in_sigmas[n]] for n in cosine},
        "approach3": {n: {k: [f.params[k], f.intervals[k]] for k in ("alpha", "beta", "a")} for n, f in fits.items()},
    }))
