"""Runner on the real local SLURM cluster: job array, scontrol requeue, time limit, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import SlurmCluster
from scaling.config import DataConfig, LaunchConfig, ModelConfig, SlurmConfig, SweepConfig, SweepPoint, TrainConfig
from scaling.executors import run_state
from scaling.launch import launch, sweep_tasks
from scaling.prepare import prepare
from scaling.slurm import SlurmExecutor

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("pysrc", tokenizer="bytes", out_dir=tmp_path_factory.mktemp("data") / "pysrc",
                   max_bytes=400_000, val_fraction=0.1, workers=1)


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    slurm_cluster.activate(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return slurm_cluster


def sweep(data: Path, name: str, steps: list[int], d_model: int = 32, **slurm: Any) -> SweepConfig:
    runs = [SweepPoint(name=f"s{i}", model=ModelConfig(n_layer=2, d_model=d_model, n_head=2, d_ff=4 * d_model,
                                                      context=64, vocab_size=257),
                       steps=n, batch_size=8, micro_batch_size=8, lr_peak=2e-3, warmup_steps=5)
            for i, n in enumerate(steps)]
    train = TrainConfig(eval_interval=100, eval_tokens=4096, log_interval=10, checkpoint_interval=20,
                        flush_interval=10, device="cpu", max_epochs=100)
    launch_cfg = LaunchConfig(executor="slurm", slurm=SlurmConfig(gpus_per_task=0, cpus_per_task=1,
                                                                  min_time_min=5, **slurm))
    return SweepConfig(name=name, data=DataConfig(path=str(data)), runs=runs, train=train,
                       launch=launch_cfg).check()


def metrics_steps(out_dir: Path) -> list[int]:
    import pyarrow.parquet as pq

    return pq.read_table(out_dir / "metrics.parquet").column("step").to_pylist()


def test_two_run_array_completes(cluster: SlurmCluster, data_dir: Path, tmp_path: Path) -> None:
    sw = sweep(data_dir, "arr", [40, 50])
    states = launch(sw, tmp_path, SlurmExecutor(sw, tmp_path / "arr" / ".submitit"), progress=False)
    tasks = sweep_tasks(sw, tmp_path)
    assert [s["status"] for s in states] == ["done", "done"]
    assert [s["result"]["tokens"] for s in states] == [t.config.tokens for t in tasks]
    job_ids = [json.loads((t.out_dir / "job.json").read_text())["job_id"] for t in tasks]
    assert job_ids[0].split("_")[0] == job_ids[1].split("_")[0]  # one array


def _launch_in_thread(sw: SweepConfig, root: Path) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def go() -> None:
        try:
            out.append(launch(sw, root, SlurmExecutor(sw, root / sw.name / ".submitit"), progress=False))
        except Exception as e:  # handed to the test thread
            out.append(e)

    t = threading.Thread(target=go)
    t.start()
    return t, out


def test_scontrol_requeue_resumes_to_the_exact_token_count(
    cluster: SlurmCluster, data_dir: Path, tmp_path: Path
) -> None:
    sw = sweep(data_dir, "rq", [600])
    (task,) = sweep_tasks(sw, tmp_path)
    thread, out = _launch_in_thread(sw, tmp_path)
    cluster.wait_until(lambda: (task.out_dir / "checkpoint.pt").exists(), 120, "a first checkpoint")
    job_id = json.loads((task.out_dir / "job.json").read_text())["job_id"]
    cluster.run("scontrol", "requeue", job_id)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert not isinstance(out[0], Exception), out[0]
    state = run_state(task.out_dir)
    assert state["status"] == "done" and state["result"]["tokens"] == task.config.tokens
    assert state["resumed_from_step"] > 0
    steps = metrics_steps(task.out_dir)
    assert steps == sorted(set(steps)) and steps[-1] == task.config.steps
    assert cluster.job_field(job_id, "Restarts") == "1"


def test_time_limit_checkpoints_requeues_and_ends_exactly(
    cluster: SlurmCluster, data_dir: Path, tmp_path: Path
) -> None:
    """The contract, not a race with the clock: the first time limit's USR2 makes the run checkpoint
    and requeue, and the requeued job resumes from that checkpoint and ends at exactly the planned
    tokens. Once that cut has happened the test lifts the job's time limit, so how fast the rest
    trains (a loaded machine once ran out of requeues here) does not matter."""
    # A 1-minute limit with USR2 25 s before it arrives 5-35 s into each run (slurm/README.md);
    # the run needs well over 40 s of training on one core, so its first slot is always cut.
    sw = sweep(data_dir, "tl", [4000], d_model=64, signal_delay_s=25, max_requeues=8)
    sw = sw.merge(["launch.slurm.min_time_min=1", "launch.slurm.time_margin=0.01"])
    (task,) = sweep_tasks(sw, tmp_path)
    ex = SlurmExecutor(sw, tmp_path / "tl" / ".submitit")
    assert ex.timeout_min([task]) == 1
    thread, out = _launch_in_thread(sw, tmp_path)

    def job_logs() -> str:
        return "".join(p.read_text(errors="replace") for p in (tmp_path / "tl" / ".submitit").rglob("*.out"))

    # A USR2 that lands before the trainer is up requeues without its own checkpoint; max_requeues
    # leaves room for that. Wait for a cut the trainer checkpointed, then lift the limit.
    cluster.wait_until(lambda: "SIGUSR2, checkpointed at step" in job_logs(), 400, "a checkpointed time-limit cut")
    job_id = json.loads((task.out_dir / "job.json").read_text())["job_id"]
    cluster.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=30")
    thread.join(timeout=1200)
    assert not thread.is_alive()
    assert not isinstance(out[0], Exception), out[0]
    state = out[0][0]
    assert state["status"] == "done" and state["result"]["tokens"] == task.config.tokens
    assert int(cluster.job_field(job_id, "Restarts")) >= 1  # requeued by submitit, the same job
    cuts = [int(step) for step in re.findall(r"SIGUSR2, checkpointed at step (\d+)", job_logs())]
    assert state["resumed_from_step"] == cuts[-1] > 0  # resumed from the step the signal saved
    steps = metrics_steps(task.out_dir)
    assert steps == sorted(set(steps)) and steps[-1] == task.config.steps


def test_unreachable_slurm_is_a_one_line_error(data_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    sweep(data_dir, "down", [40]).save_yaml(spec)
    # A cluster whose controller is not running (a missing slurm.conf instead would make the
    # clients wait ~60 s on a DNS lookup before failing).
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=gone\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n"
                    "NodeName=localhost CPUs=1\nPartitionName=p Nodes=ALL Default=YES\n")
    env = {"PATH": "/usr/bin:/bin", "SLURM_CONF": str(conf)}
    r = subprocess.run([sys.executable, "-m", "scaling", "launch", str(spec), "--results", str(tmp_path / "r"),
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "SLURM is not reachable" in r.stderr
