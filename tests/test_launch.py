"""Runner: local executor end to end, kill -9 and relaunch, Ctrl-C, results table, status, errors."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from scaling.config import DataConfig, ModelConfig, SweepConfig, SweepPoint, TrainConfig
from scaling.errors import LaunchError
from scaling.executors import LocalExecutor, hold_lock, run_state
from scaling.launch import format_status, launch, sweep_tasks
from scaling.prepare import prepare
from scaling.results import RUNS_SCHEMA


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bytes-tokenized Python source from this interpreter's stdlib: real text, ~150 KB."""
    return prepare("pysrc", tokenizer="bytes", out_dir=tmp_path_factory.mktemp("data") / "pysrc",
                   max_bytes=150_000, val_fraction=0.2, workers=1)


def tiny_sweep(data: Path, name: str = "tiny", steps: int = 60) -> SweepConfig:
    runs = [
        SweepPoint(name=f"r{i}", model=ModelConfig(n_layer=1 + i % 2, d_model=32, n_head=2, d_ff=64,
                                                  context=32, vocab_size=257),
                   steps=steps + 10 * i, batch_size=8, micro_batch_size=8, lr_peak=3e-3, warmup_steps=5,
                   budget_flops=1e10)
        for i in range(4)
    ]
    train = TrainConfig(eval_interval=20, eval_tokens=2048, log_interval=5, checkpoint_interval=10,
                        flush_interval=5, device="cpu")
    return SweepConfig(name=name, data=DataConfig(path=str(data)), runs=runs, train=train).check()


def run_cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scaling", *args], capture_output=True, text=True,
                          timeout=300, **kw)  # type: ignore[call-overload]


def test_run_ids_are_stable_and_follow_the_config(data_dir: Path, tmp_path: Path) -> None:
    a = sweep_tasks(tiny_sweep(data_dir), tmp_path)
    b = sweep_tasks(tiny_sweep(data_dir), tmp_path)
    assert [t.run_id for t in a] == [t.run_id for t in b]
    assert len({t.run_id for t in a}) == 4
    changed = sweep_tasks(tiny_sweep(data_dir).merge(["runs.0.lr_peak=0.001"]), tmp_path)
    assert changed[0].run_id != a[0].run_id and changed[1].run_id == a[1].run_id


def test_kill_9_of_the_launcher_then_relaunch_finishes_without_repeating(data_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    tiny_sweep(data_dir, steps=150).save_yaml(spec)
    results = tmp_path / "results"
    tasks = sweep_tasks(tiny_sweep(data_dir, steps=150), results)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scaling", "launch", str(spec), "--results", str(results),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    # Wait until one run is done and another has checkpointed part of its steps.
    deadline = time.time() + 240
    while time.time() < deadline:
        states = [run_state(t.out_dir).get("status") for t in tasks]
        ckpts = [t for t in tasks if (t.out_dir / "checkpoint.pt").exists() and states[tasks.index(t)] != "done"]
        if "done" in states and ckpts:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"sweep made no progress: {states}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {t.run_id: (t.out_dir / "metrics.parquet").stat().st_mtime_ns
                   for t in tasks if run_state(t.out_dir).get("status") == "done"}
    # The children die with the launcher (they checkpoint on the SIGTERM they get).
    time.sleep(0.5)
    deadline = time.time() + 60
    while any(run_state(t.out_dir).get("status") == "running" for t in tasks) and time.time() < deadline:
        time.sleep(0.2)
    interrupted = [t for t in tasks if run_state(t.out_dir).get("status") == "interrupted"]
    assert interrupted, [run_state(t.out_dir).get("status") for t in tasks]

    r = run_cli("launch", str(spec), "--results", str(results), "--no-progress", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for t in tasks:
        state = run_state(t.out_dir)
        assert state["status"] == "done"
        assert state["result"]["tokens"] == t.config.tokens
    # Finished runs were skipped, not retrained; interrupted ones resumed from their checkpoint.
    for run_id, mtime in done_before.items():
        assert (results / "tiny" / run_id / "metrics.parquet").stat().st_mtime_ns == mtime
    for t in interrupted:
        assert run_state(t.out_dir)["resumed_from_step"] > 0
        steps = pq.read_table(t.out_dir / "metrics.parquet").column("step").to_pylist()
        assert steps == sorted(set(steps))  # no step logged twice
    table = pq.read_table(results / "tiny" / "runs.parquet")
    assert table.schema.equals(RUNS_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == 4 and all(r["status"] == "done" and r["val_loss"] > 0 for r in rows)
    assert {r["run_id"] for r in rows} == {t.run_id for t in tasks}
    # Relaunching a finished sweep is a no-op.
    again = run_cli("launch", str(spec), "--results", str(results), "--no-progress", env=env)
    assert again.returncode == 0
    for t in tasks:
        assert run_state(t.out_dir)["status"] == "done"
    status = run_cli("status", str(results / "tiny"))
    assert status.returncode == 0 and "4 done" in status.stdout


def test_ctrl_c_checkpoints_the_running_runs_and_the_named_command_continues(data_dir: Path, tmp_path: Path) -> None:
    # Two runs side by side; no periodic checkpoint or eval, so only the interrupt can save one.
    base = tiny_sweep(data_dir, steps=1000)
    sweep = dataclasses.replace(base, runs=base.runs[:2]).merge(
        ["train.checkpoint_interval=100000", "train.eval_interval=100000", "train.max_epochs=100", "launch.per_gpu=2"])
    spec, results = tmp_path / "tiny.yaml", tmp_path / "results"
    sweep.save_yaml(spec)
    tasks = sweep_tasks(sweep, results)
    cmd = ["scaling", "launch", str(spec), "--results", str(results), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own process group, as a terminal's foreground job: Ctrl-C signals the whole group.
    proc = subprocess.Popen([sys.executable, "-m", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not all((t.out_dir / "metrics.parquet").exists() for t in tasks):  # first flush: step 5
            assert time.time() < deadline and proc.poll() is None, "the runs logged no steps"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"scaling launch: interrupted: 2 run(s) checkpointed; re-run `{shlex.join(cmd)}` to continue")
    stopped = {}
    for t in tasks:
        state = run_state(t.out_dir)
        assert state["status"] == "interrupted", state["status"]
        stopped[t.run_id] = state["result"]["steps"]
        assert 5 <= stopped[t.run_id] < t.config.steps
        assert torch.load(t.out_dir / "checkpoint.pt", weights_only=True)["step"] == stopped[t.run_id]
    rows = pq.read_table(results / "tiny" / "runs.parquet").to_pylist()  # rebuilt after the runs stopped
    assert {(r["run_id"], r["status"], r["tokens_done"]) for r in rows} == {
        (t.run_id, "interrupted", stopped[t.run_id] * 8 * 32) for t in tasks}

    r = run_cli(*cmd[1:], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for t in tasks:
        state = run_state(t.out_dir)
        assert state["status"] == "done" and state["result"]["tokens"] == t.config.tokens
        assert state["resumed_from_step"] == stopped[t.run_id]
        steps = pq.read_table(t.out_dir / "metrics.parquet").column("step").to_pylist()
        assert steps == sorted(set(steps)) and steps[-1] == t.config.steps


def test_two_launches_of_one_sweep_are_refused(data_dir: Path, tmp_path: Path) -> None:
    sweep = tiny_sweep(data_dir)
    with hold_lock(tmp_path / "tiny" / ".launch.lock", "sweep tiny"):
        with pytest.raises(LaunchError, match="locked by pid"):
            launch(sweep, tmp_path, LocalExecutor(devices=["cpu"]), progress=False)


def test_local_executor_packs_by_memory_and_per_gpu(data_dir: Path, tmp_path: Path) -> None:
    tasks = sweep_tasks(tiny_sweep(data_dir), tmp_path)
    ex = LocalExecutor(devices=["0", "1"], per_device=2, memory_bytes=80e9)
    ex._start = lambda job, device: setattr(job, "device", device)  # type: ignore[method-assign]
    for t in tasks:
        ex.submit(t)
    ex.poll()
    # Two per GPU, spread over both GPUs.
    assert sorted(j.device for j in ex.running) == ["0", "0", "1", "1"]
    auto = LocalExecutor(devices=["0"], per_device=0, memory_bytes=3e9)
    auto._start = lambda job, device: setattr(job, "device", device)  # type: ignore[method-assign]
    for t in tasks:
        auto.submit(t)
    auto.poll()
    # Each tiny run is estimated at ~1 GiB (CUDA context included): two fit in 90% of 3 GB.
    assert len(auto.running) == 2 and len(auto.queue) == 2


def test_bad_spec_and_missing_data_are_one_line_errors(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    data = tiny_sweep(data_dir).to_dict()
    data["runs"][3]["model"]["d_model"] = 500
    data["runs"][3]["model"]["n_head"] = 8
    import yaml

    bad.write_text(yaml.safe_dump(data))
    r = run_cli("launch", str(bad), "--results", str(tmp_path / "res"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "runs[3].model.d_model: must be divisible by n_head (got 500, 8)" in r.stderr
    missing = tmp_path / "missing.yaml"
    tiny_sweep(tmp_path / "no-such-data").save_yaml(missing)
    r = run_cli("launch", str(missing), "--results", str(tmp_path / "res"), "--no-progress")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "did not finish" in r.stderr and "no-such-data" in r.stderr
    r = run_cli("status", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "sweep.yaml" in r.stderr
    # Overrides after an option are overrides too (argparse alone calls them unrecognised).
    good = tmp_path / "good.yaml"
    tiny_sweep(data_dir).save_yaml(good)
    r = run_cli("launch", str(good), "--no-progress", "train.eval_intervall=5", "--results", str(tmp_path / "res"))
    assert r.returncode == 2 and r.stderr.strip() == (
        "scaling launch: error: train.eval_intervall: unknown field 'train.eval_intervall'"), r.stderr
    r = run_cli("launch", str(good), "--no-progress", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    # Input found in review: each a one-line error, exit 2, nothing trained.
    (tmp_path / "afile").write_text("")
    for args, message in [
        (["--per-gpu", "-1"], "--per-gpu: must be >= 0 runs per GPU, 0 = auto by memory (got -1)"),  # it hung
        (["name=a/b"], "name: 'a/b' must be one folder name (no '/'"),
        (["runs.1.name=.."], "runs: '..' must be one folder name"),
        (["train.lr_peak=1.0"], "train.lr_peak: each run of the sweep sets its own; override runs.N.lr_peak instead"),
        (["--results", str(tmp_path / "afile")], "is a file; give the results folder"),
    ]:
        r = run_cli("launch", str(good), "--no-progress", *args, *(["--results", str(tmp_path / "res2")]
                                                                  if "--results" not in args else []))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, (args, r.stderr)
    assert not (tmp_path / "res2").exists()
    broken = sweep_tasks(tiny_sweep(data_dir), tmp_path / "res3")[0].out_dir / "run.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"status": "done",')  # hand-edited, say
    r = run_cli("launch", str(good), "--no-progress", "--results", str(tmp_path / "res3"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"scaling launch: error: {broken}: not valid JSON")


def test_status_columns_stay_aligned_for_runs_of_a_hundred_million_tokens() -> None:
    """The committed reference sweep (results/chinchilla_small, 6.5M-479M tokens a run): every line of
    the table is as wide as its header, so each column stands under its heading."""
    lines = format_status(Path(__file__).parents[1] / "results" / "chinchilla_small").splitlines()
    table, summary = lines[:-1], lines[-1]
    assert summary == "12 done" and len(table) == 13
    assert {len(line) for line in table} == {len(table[0])}, table
    assert any("478,871,552/478,871,552" in line for line in table)


def test_status_tells_a_run_whose_process_died_from_one_still_running(data_dir: Path, tmp_path: Path) -> None:
    """run.json says "running" after a kill -9 of its process; the run lock's pid says otherwise."""
    sweep = tiny_sweep(data_dir)
    (tmp_path / sweep.name).mkdir()
    sweep.save_yaml(tmp_path / sweep.name / "sweep.yaml")
    dead, alive, elsewhere = (t.out_dir for t in sweep_tasks(sweep, tmp_path)[:3])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    node = os.uname().nodename
    for out, holder in ((dead, f"pid {gone} on {node}"), (alive, f"pid {os.getpid()} on {node}"),
                        (elsewhere, f"pid {gone} on another-node")):
        out.mkdir(parents=True)
        (out / "run.json").write_text('{"status": "running"}')
        (out / ".run.lock").write_text(holder)
    lines = {ln.split()[0]: ln for ln in format_status(tmp_path / sweep.name).splitlines()[1:-1]}
    assert "died: relaunch resumes" in lines[dead.name]
    assert " running " in lines[alive.name] and " running " in lines[elsewhere.name]
