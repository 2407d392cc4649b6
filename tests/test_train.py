"""Trainer on CPU: schedules, logging, resume equivalence, NaN/spike health, sanity, DDP, CLI errors."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from scaling.config import RunConfig
from scaling.errors import ConfigError, TrainError
from scaling.model import count_params, flops_per_token
from scaling.results import METRICS_SCHEMA, MetricsWriter, read_metrics, read_run_json
from scaling.sample import overfit_one_batch, sample
from scaling.schedule import lr_at
from scaling.plan import GPUS, peak_flops
from scaling.train import RunResult, _StopSignal, train

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 64
# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they thrash.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread


def write_toy_data(path: Path, n_train: int = 40_000, n_val: int = 8_000) -> Path:
    """A prepared-data folder whose stream is a random walk with two successors per token.

    Its entropy is ln 2 per token, so a tiny model learns it in a few dozen steps.
    """
    rng = np.random.default_rng(0)
    successors = rng.integers(0, VOCAB, size=(VOCAB, 2))

    def walk(n: int) -> np.ndarray:
        out, t = np.empty(n, dtype=np.uint16), 0
        for i, choice in enumerate(rng.integers(0, 2, size=n)):
            out[i], t = t, successors[t, choice]
        return out

    path.mkdir(parents=True)
    walk(n_train).tofile(path / "train.bin")
    walk(n_val).tofile(path / "val.bin")
    meta = {"name": "toy", "tokenizer": "bytes", "vocab_size": VOCAB, "eot_token": VOCAB - 1, "dtype": "uint16",
            "tokens": {"train": n_train, "val": n_val}, "documents": {"train": 1, "val": 1}, "split": "test",
            "sources": [], "skipped": {}, "created": "test", "version": 1}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("data") / "toy")


def make_cfg(data: Path, steps: int = 40, **train: Any) -> RunConfig:
    settings = dict(batch_size=16, micro_batch_size=8, lr_peak=3e-3, warmup_steps=4, eval_interval=20,
                    eval_tokens=2048, log_interval=5, checkpoint_interval=20)
    settings.update(train)
    return RunConfig.from_dict({
        "name": "toy",
        "model": {"n_layer": 2, "d_model": 64, "n_head": 4, "d_ff": 256, "context": 32, "vocab_size": VOCAB},
        "data": {"path": str(data)},
        "train": settings,
        "steps": steps,
    })


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scaling", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def finished(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path, RunResult]:
    cfg = make_cfg(data_dir, steps=40, log_interval=1)
    out = tmp_path_factory.mktemp("runs") / "toy"
    return cfg, out, train(cfg, out, verbose=False)


# ----------------------------------------------------------------------------- schedules


def test_cosine_schedule_warms_up_then_decays_to_min_on_the_last_step(data_dir: Path) -> None:
    cfg = make_cfg(data_dir, steps=100, warmup_steps=10, lr_peak=1e-3, lr_min_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[10 + 89 // 2] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))
    with pytest.raises(AssertionError):
        lr_at(cfg.steps, cfg)


@pytest.mark.parametrize("shape_", ["linear", "1-sqrt", "cosine"])
def test_wsd_schedule_is_flat_then_decays_over_the_last_fraction(data_dir: Path, shape_: str) -> None:
    cfg = make_cfg(data_dir, steps=100, warmup_steps=10, lr_peak=1e-3, lr_min_ratio=0.0, schedule="wsd",
                   decay_fraction=0.2, decay_shape=shape_)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[9:80] == pytest.approx([1e-3] * 71)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs[79:], lrs[80:]))
    mid = lrs[89] / 1e-3  # progress 10/20 of the decay
    assert mid == pytest.approx({"linear": 0.5, "1-sqrt": 1 - math.sqrt(0.5), "cosine": 0.5}[shape_])


def test_constant_schedule_and_peak_table(data_dir: Path) -> None:
    cfg = make_cfg(data_dir, steps=50, warmup_steps=5, schedule="constant", lr_peak=2e-3)
    assert [lr_at(s, cfg) for s in (0, 4, 5, 49)] == pytest.approx([4e-4, 2e-3, 2e-3, 2e-3])
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L40S") == 362e12
    assert peak_flops(None) is None and peak_flops("Some CPU") is None
    # The planner's estimates read the same table (NVIDIA data sheets, dense bf16).
    assert {k: g.peak_flops for k, g in GPUS.items()} == {
        "h100": 989e12, "h200": 989e12, "a100": 312e12, "l40s": 362e12, "rtx4090": 165e12}


# ----------------------------------------------------------------------------- a full run


def test_run_logs_parquet_with_schema_and_loss_falls_from_ln_vocab(finished: tuple[RunConfig, Path, RunResult]) -> None:
    cfg, out, result = finished
    assert result.status == "done" and result.steps == 40 and result.tokens == cfg.tokens == 40 * 16 * 32
    assert pq.read_schema(out / "metrics.parquet").names == METRICS_SCHEMA.names
    rows = read_metrics(out / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == list(range(1, 41))
    # Before any update the model predicts uniformly: the first step's loss is ~ln(V).
    assert abs(rows[0]["train_loss"] - math.log(VOCAB)) < 0.15
    assert rows[-1]["train_loss"] < 0.6 * rows[0]["train_loss"]
    n_total = count_params(cfg.model)["total"]
    for r in rows:
        assert r["tokens"] == r["step"] * 16 * 32
        assert r["flops_6nd"] == pytest.approx(6 * n_total * r["tokens"])
        assert r["flops_6nd_attn"] == pytest.approx(flops_per_token(cfg.model, "total", "6nd+attn") * r["tokens"])
        assert r["epochs"] == pytest.approx(r["tokens"] / 40_000)
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg))
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] is None
    evals = [r for r in rows if r["val_loss"] is not None]
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[1]["val_loss"] < evals[0]["val_loss"] < math.log(VOCAB)
    assert result.val_loss == evals[1]["val_loss"] and result.val_loss_se == evals[1]["val_loss_se"] > 0
    assert [r["elapsed_s"] for r in rows] == sorted(r["elapsed_s"] for r in rows)

    info = read_run_json(out / "run.json")
    assert info is not None and info["status"] == "done"
    assert info["config"] == cfg.to_dict() and info["conventions"] == {"params": "total", "flops": "6nd"}
    assert info["n_params"]["total"] == n_total == result.n_params_total
    assert info["environment"]["torch"] == torch.__version__ and info["environment"]["gpu_name"] is None
    assert info["tokens_planned"] == cfg.tokens and info["eval_tokens"] == 2048
    assert info["result"]["val_loss"] == result.val_loss


def test_finished_run_is_a_no_op_and_samples(finished: tuple[RunConfig, Path, RunResult]) -> None:
    cfg, out, result = finished
    before = (out / "metrics.parquet").stat().st_mtime_ns, (out / "checkpoint.pt").stat().st_mtime_ns
    assert train(cfg, out, verbose=False) == result
    with pytest.raises(TrainError, match="different steps"):
        train(RunConfig.from_dict({**cfg.to_dict(), "steps": 50}), out, verbose=False)
    assert ((out / "metrics.parquet").stat().st_mtime_ns, (out / "checkpoint.pt").stat().st_mtime_ns) == before
    text = sample(out, "", max_new_tokens=12, top_k=5, temperature=1.0)
    assert len(text) >= 12  # the bytes tokenizer decodes each id below 64 to one character
    assert text == sample(out / "checkpoint.pt", "", max_new_tokens=12, top_k=5, temperature=1.0)
    cli = run_cli("sample", str(out), "--max-new-tokens", "12", "--top-k", "5", "--temperature", "1.0")
    assert cli.returncode == 0 and cli.stdout == text + "\n", cli.stderr


def test_resume_reproduces_the_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(data_dir, steps=30, checkpoint_interval=10, flush_interval=5)
    straight = train(cfg, tmp_path / "straight", verbose=False)
    first = train(cfg, tmp_path / "resumed", stop_at_step=13, verbose=False)
    assert first.status == "interrupted" and first.steps == 13 and first.signal is None
    assert read_run_json(tmp_path / "resumed" / "run.json")["status"] == "interrupted"  # type: ignore[index]
    # A checkpoint resumes only its own run.
    with pytest.raises(TrainError, match="train.lr_peak"):
        train(make_cfg(data_dir, steps=30, checkpoint_interval=10, flush_interval=5, lr_peak=1e-3),
              tmp_path / "resumed", verbose=False)
    resumed = train(cfg, tmp_path / "resumed", verbose=False)
    assert resumed.status == "done" and resumed.steps == straight.steps and resumed.tokens == straight.tokens
    assert resumed.val_loss == straight.val_loss and resumed.val_loss_se == straight.val_loss_se
    cols = ["step", "tokens", "lr", "train_loss", "val_loss", "val_loss_se", "grad_norm", "event"]
    a = read_metrics(tmp_path / "straight" / "metrics.parquet").select(cols).to_pylist()
    b = read_metrics(tmp_path / "resumed" / "metrics.parquet").select(cols).to_pylist()
    assert a == b and len(a) == 6


def test_metrics_writer_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path / "m.parquet")
    for step in range(1, 11):
        writer.append(step=step, tokens=step * 10, train_loss=1.0 / step)
    writer.flush()
    kept = MetricsWriter(tmp_path / "m.parquet", resume_step=6)
    assert [r["step"] for r in kept.rows] == [1, 2, 3, 4, 5, 6] and kept.rows[0]["val_loss"] is None
    assert MetricsWriter(tmp_path / "m.parquet").rows == []


@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGTERM, 75), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"])
def test_stop_signal_checkpoints_then_a_relaunch_resumes(data_dir: Path, tmp_path: Path, sig: signal.Signals,
                                                         exit_code: int) -> None:
    # No periodic checkpoint or eval before step 10_000: only the signal can save one.
    cfg = make_cfg(data_dir, steps=5000, max_epochs=1000, eval_interval=10_000, checkpoint_interval=10_000)
    cfg.save_yaml(tmp_path / "run.yaml")
    out = tmp_path / "run"
    cmd = ["scaling", "train", str(tmp_path / "run.yaml"), "--out", str(out), "--quiet"]
    # Its own process group, as a terminal's foreground job: Ctrl-C signals the whole group.
    proc = subprocess.Popen([sys.executable, "-m", *cmd], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.parquet").exists() and time.monotonic() < deadline:  # first flush: step 100
            time.sleep(0.1)
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == exit_code, stderr
    info = read_run_json(out / "run.json")
    assert info is not None and info["status"] == "interrupted"
    stopped = info["result"]["steps"]
    assert info["result"]["signal"] == sig.name
    assert 100 <= stopped < 5000 and f"interrupted at step {stopped}" in stdout
    assert f"re-run `{shlex.join(cmd)}` to continue" in stdout
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == stopped
    resumed = train(cfg, out, stop_at_step=stopped + 3, verbose=False)
    assert resumed.status == "interrupted" and resumed.steps == stopped + 3 and resumed.signal is None


def test_second_ctrl_c_stops_at_once_and_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with _StopSignal() as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.received == signal.SIGINT  # the first Ctrl-C only asks for a checkpoint
            signal.raise_signal(signal.SIGINT)
            pytest.fail("a second Ctrl-C must raise KeyboardInterrupt")
    assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------------------------- health


def test_nan_loss_fails_the_run_and_keeps_the_logs(data_dir: Path, tmp_path: Path) -> None:
    def poison(step: int, model: torch.nn.Module) -> None:
        if step == 7:
            with torch.no_grad():
                model.h[0].mlp.c_fc.weight.fill_(float("nan"))

    cfg = make_cfg(data_dir, steps=30)
    result = train(cfg, tmp_path / "run", after_step=poison, verbose=False)
    assert result.status == "failed: nan at step 8" and result.steps == 10
    info = read_run_json(tmp_path / "run" / "run.json")
    assert info is not None and info["status"] == "failed: nan at step 8"
    rows = read_metrics(tmp_path / "run" / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == [5, 10]
    assert math.isfinite(rows[0]["train_loss"]) and math.isnan(rows[1]["train_loss"])
    assert rows[1]["event"] == "nan at step 8"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # a NaN model is never checkpointed


def test_loss_spike_is_logged_as_an_event(data_dir: Path, tmp_path: Path) -> None:
    def shake(step: int, model: torch.nn.Module) -> None:
        if step == 30:
            with torch.no_grad():
                model.wte.weight.mul_(30.0)

    cfg = make_cfg(data_dir, steps=35, spike_window=20)
    result = train(cfg, tmp_path / "run", after_step=shake, verbose=False)
    assert result.status == "done"
    events = [r["event"] for r in read_metrics(tmp_path / "run" / "metrics.parquet").to_pylist() if r["event"]]
    assert events and events[0].startswith("spike at step 31: loss ")  # and none before the shake


def test_sanity_overfits_one_batch_below_0_1(data_dir: Path) -> None:
    losses = overfit_one_batch(make_cfg(data_dir), steps=100, lr=1e-2, verbose=False)
    assert abs(losses[0] - math.log(VOCAB)) < 0.15
    assert losses[-1] < 0.1


def test_data_checks_name_the_field(data_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(data_dir, steps=40)
    small_vocab = RunConfig.from_dict({**cfg.to_dict(), "model": {**cfg.model.to_dict(), "vocab_size": 32}})
    with pytest.raises(TrainError, match="model.vocab_size 32 < the data's vocab_size 64"):
        train(small_vocab, tmp_path / "a", verbose=False)
    with pytest.raises(TrainError, match="train.max_epochs"):
        train(make_cfg(data_dir, steps=1000), tmp_path / "b", verbose=False)
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        train(make_cfg(data_dir, steps=4), tmp_path / "c", verbose=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- DDP and CLI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_train_the_planned_tokens(data_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(data_dir, steps=20, eval_interval=10)
    cfg.save_yaml(tmp_path / "run.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "scaling", "train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    info = read_run_json(tmp_path / "run" / "run.json")
    assert info is not None and info["status"] == "done" and info["environment"]["world_size"] == 2
    assert info["grad_accum_steps"] == 1  # 16 = 8 per process × 2 processes
    assert info["result"]["tokens"] == cfg.tokens == 20 * 16 * 32
    rows = read_metrics(tmp_path / "run" / "metrics.parquet").to_pylist()
    assert rows[-1]["tokens"] == cfg.tokens and rows[-1]["val_loss"] < rows[0]["train_loss"]
    assert out.stdout.count("toy: done") == 1  # rank 0 speaks


@pytest.mark.parametrize(
    "args, field",
    [
        (["model.n_layers=3"], "model.n_layers: unknown field"),
        (["model.d_model=62"], "d_model: must be divisible by n_head"),
        (["train.batch_size=12"], "batch_size: must be divisible by micro_batch_size"),
        (["data.path=/nonexistent/data"], "data folder /nonexistent/data"),
        (["train.grad_clip=.nan"], "train.grad_clip: must be a finite number (got nan)"),
        (["train.device=meta"], "train.device: must be auto, cpu, cuda or cuda:N (got 'meta')"),
        (["train.final_eval_tokens=0"], "train.final_eval_tokens: must be > 0 (got 0)"),
    ],
    ids=["unknown-field", "d_model-vs-n_head", "batch-vs-micro", "missing-data", "nan-clip", "meta-device",
         "final-eval-tokens"],
)
def test_bad_config_is_one_line_exit_2(data_dir: Path, tmp_path: Path, args: list[str], field: str) -> None:
    make_cfg(data_dir).save_yaml(tmp_path / "run.yaml")
    out = run_cli("train", str(tmp_path / "run.yaml"), *args, "--out", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("scaling train: error:") and field in out.stderr


def test_flags_only_train_and_sanity_cli(data_dir: Path, tmp_path: Path) -> None:
    model = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.d_ff=64", "model.context=16",
             f"model.vocab_size={VOCAB}"]
    out = run_cli("train", "name=flags", *model, f"data.path={data_dir}", "steps=4", "train.batch_size=4",
                  "train.micro_batch_size=4", "train.warmup_steps=1", "--out", str(tmp_path / "run"), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "flags: done at step 4/4" in out.stdout
    assert read_metrics(tmp_path / "run" / "metrics.parquet").num_rows == 1
    out = run_cli("train", "name=flags", *model, f"data.path={data_dir}", "steps=4", "--sanity",
                  "--sanity-steps", "3", "--quiet")
    assert out.returncode == 1 and "FAILED" in out.stdout  # 3 updates cannot overfit a batch


def test_cosine_with_one_update_after_warmup_ends_at_the_floor(data_dir: Path) -> None:
    """warmup_steps = steps - 1 leaves one cosine update: it is the last, so it is at lr_min_ratio·peak
    (it stayed at the peak: progress 0 / max(1, 0))."""
    cfg = make_cfg(data_dir, steps=4, warmup_steps=3, lr_peak=1e-3)
    assert [lr_at(s, cfg) for s in range(4)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-4])
    assert lr_at(4, make_cfg(data_dir, steps=5, warmup_steps=3, lr_peak=1e-3)) == pytest.approx(1e-4)


def test_scaling_train_will_not_train_a_run_another_process_holds(data_dir: Path, tmp_path: Path) -> None:
    """The CLI takes the run folder's lock as a launched run does, so one run never trains twice at once."""
    from scaling.executors import hold_lock

    make_cfg(data_dir, steps=4).save_yaml(tmp_path / "run.yaml")
    with hold_lock(tmp_path / "run" / ".run.lock", "run run"):
        out = run_cli("train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet")
    assert out.returncode == 2 and "run run is locked by pid" in out.stderr, out.stderr
    assert not (tmp_path / "run" / "metrics.parquet").exists()
