"""Integrity after faults (issue #23): run names that would leave the results folder, corrupted
checkpoints, ``status`` from inside a sweep folder and of damaged runs, and what the messages
after a NaN or a killed worker say; a full disk on the write paths (issue #20)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from scaling.checkpoint import load_checkpoint, save_checkpoint
from scaling.cli import main
from scaling.config import (DataConfig, ModelConfig, RunConfig, SweepConfig, SweepPoint, TrainConfig,
                            atomic_write_text)
from scaling.errors import ConfigError, LaunchError, TrainError, WriteError
from scaling.executors import DebugExecutor, LocalExecutor, run_state
from scaling.launch import format_status, launch, sweep_tasks
from scaling.results import checksum_path
from scaling.train import train
from test_train import make_cfg, write_toy_data

REPO = Path(__file__).resolve().parents[1]
BAD_NAMES = ["../../../x", "/abs/path", "a/b", "..", "a\\b"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("data") / "toy")


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"scaling {command}: error:"), err
    return err


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ----------------------------------------------------------------------------- run names


@pytest.mark.parametrize("name", BAD_NAMES)
def test_scaling_train_refuses_a_name_that_leaves_the_folder_and_writes_nothing(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str) -> None:
    work = tmp_path / "a" / "b" / "c"  # ../../../x from here is tmp_path/x
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    cfg = make_cfg(data_dir, steps=4)
    spec = cfg.to_dict()
    (work / "run.yaml").write_text(cfg.to_yaml().replace("name: toy", f"name: '{name}'"))
    assert main(["train", "run.yaml", "--quiet"]) == 2
    assert f"run.yaml: name: {name!r} must be one folder name" in one_line_error(capsys, "train")
    # From a YAML spec and from an override alike; nothing written, not even the run lock.
    assert main(["train", "run.yaml", f"name={name}", "--quiet"]) == 2
    assert "must be one folder name" in one_line_error(capsys, "train")
    overrides = [f"{k}={v}" for k, v in (("name", name), ("steps", 4), ("data.path", spec["data"]["path"]))]
    assert main(["train", *overrides, *(f"model.{k}={v}" for k, v in spec["model"].items()), "--quiet"]) == 2
    assert "must be one folder name" in one_line_error(capsys, "train")
    assert files_under(tmp_path) == ["a", "a/b", "a/b/c", "a/b/c/run.yaml"]
    assert not Path("/abs").exists()


def test_every_entry_point_shares_the_name_rule(data_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_cfg(data_dir, steps=4).to_dict()
    model = ModelConfig(**cfg["model"])
    point = dict(model=model, steps=4, batch_size=16, micro_batch_size=8, lr_peak=1e-3, warmup_steps=1)
    for name in BAD_NAMES:
        with pytest.raises(ConfigError, match="name: .* must be one folder name"):  # the Python API
            RunConfig.from_dict({**cfg, "name": name})
        with pytest.raises(ConfigError, match="name: .* must be one folder name"):
            SweepConfig(name=name, data=DataConfig(str(data_dir)), runs=[SweepPoint(name="r", **point)]).check()
        with pytest.raises(ConfigError, match="runs: .* must be one folder name"):
            SweepConfig(name="s", data=DataConfig(str(data_dir)), runs=[SweepPoint(name=name, **point)]).check()
    # plan: refused before the spec is written
    assert main(["plan", "--budget", "1e16", "--vocab", "8192", "--name", "../x", "--out", str(tmp_path / "s.yaml")]) == 2
    assert "name: '../x' must be one folder name" in one_line_error(capsys, "plan")
    # launch: refused before the results folder is made
    spec = tmp_path / "ok.yaml"
    SweepConfig(name="ok", data=DataConfig(str(data_dir)), runs=[SweepPoint(name="r", **point)]).save_yaml(spec)
    assert main(["launch", str(spec), "name=/abs/x", "--results", str(tmp_path / "res"), "--no-progress"]) == 2
    assert "name: '/abs/x' must be one folder name" in one_line_error(capsys, "launch")
    assert files_under(tmp_path) == ["ok.yaml"]


# ----------------------------------------------------------------------------- checkpoint checksums


def flip_a_payload_byte(path: Path) -> None:
    """Flip one byte inside the largest tensor's data, leaving the zip structure intact."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
        raw = path.read_bytes()
        header = info.header_offset
        name_len, extra_len = int.from_bytes(raw[header + 26:header + 28], "little"), \
            int.from_bytes(raw[header + 28:header + 30], "little")
        start = header + 30 + name_len + extra_len
    data = bytearray(raw)
    data[start + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_checkpoint_is_refused_on_resume(data_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_cfg(data_dir, steps=30, checkpoint_interval=10)
    out = tmp_path / "run"
    assert train(cfg, out, stop_at_step=13, verbose=False).status == "interrupted"
    ckpt = out / "checkpoint.pt"
    assert checksum_path(ckpt).is_file()
    before = torch.load(ckpt, weights_only=True)
    flip_a_payload_byte(ckpt)
    # torch itself loads the damaged file without a murmur, with other numbers: only the checksum tells.
    damaged = torch.load(ckpt, weights_only=True)
    assert any(not torch.equal(a, b) for a, b in zip(before["model"].values(), damaged["model"].values())) or \
        any(not torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
            for a, b in zip(before["optimizer"]["state"].values(), damaged["optimizer"]["state"].values()))
    with pytest.raises(TrainError, match=r"checkpoint.pt: corrupted .* restart the run: delete checkpoint.pt"):
        train(cfg, out, verbose=False)
    assert run_state(out)["status"] == "interrupted"  # not resumed, not marked running
    cfg.save_yaml(tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(out), "--quiet"]) == 2
    assert f"{ckpt}: corrupted" in one_line_error(capsys, "train")
    # The way out the message names: delete both files, and the run restarts and finishes.
    ckpt.unlink()
    checksum_path(ckpt).unlink()
    assert train(cfg, out, verbose=False).status == "done"


def test_a_crash_between_recording_the_checksum_and_the_rename_still_resumes(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)

    def write_but_never_rename(target: Any, write: Any) -> None:
        with open(tmp_path / "never-renamed", "wb") as f:
            write(f)  # records the new checksum, as save_checkpoint does before its rename

    monkeypatch.setattr("scaling.checkpoint.atomic_write", write_but_never_rename)
    save_checkpoint({"step": 2, "w": torch.arange(4.0)}, path)
    assert load_checkpoint(path)["step"] == 1  # the old file, which the record still accepts
    monkeypatch.undo()
    save_checkpoint({"step": 3, "w": torch.arange(4.0)}, path)
    assert load_checkpoint(path)["step"] == 3


# ----------------------------------------------------------------------------- status


def test_status_dot_inside_a_sweep_folder_equals_status_of_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = REPO / "results" / "chinchilla_small"
    by_path = format_status(sweep)
    monkeypatch.chdir(sweep)
    assert format_status(".") == by_path
    assert by_path.splitlines()[-1] == "12 done"


def test_status_shows_a_done_run_with_a_truncated_metrics_file_as_damaged(tmp_path: Path) -> None:
    sweep = shutil.copytree(REPO / "results" / "chinchilla_small", tmp_path / "renamed")  # any folder name
    intact = format_status(sweep).splitlines()
    run = next(p for p in sorted(sweep.iterdir()) if (p / "metrics.parquet").is_file())
    metrics = run / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])
    lines = format_status(sweep).splitlines()
    damaged = next(ln for ln in lines if ln.startswith(run.name))
    assert " damaged: metrics.parquet " in damaged
    tokens = run_state(run)["result"]["tokens"]
    assert f"{tokens:,}/" in damaged  # the record still counts its tokens
    assert lines[-1] == "1 damaged, 11 done" and intact[-1] == "12 done"
    assert {len(ln) for ln in lines[:-1]} == {len(lines[0])}


# ----------------------------------------------------------------------------- messages after a fault


def toy_sweep(data: Path, steps: int, **train: Any) -> SweepConfig:
    cfg = make_cfg(data, steps=steps)
    point = SweepPoint(name="r0", model=cfg.model, steps=steps, batch_size=16, micro_batch_size=8, lr_peak=3e-3,
                       warmup_steps=4)
    settings = dict(eval_interval=20, eval_tokens=2048, log_interval=5, checkpoint_interval=20, device="cpu")
    return SweepConfig(name="toy", data=DataConfig(str(data)), runs=[point],
                       train=TrainConfig(**{**settings, **train})).check()


def test_after_a_nan_launch_says_what_to_change_not_relaunch(data_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def poison(step: int, model: torch.nn.Module) -> None:
        if step == 7:
            with torch.no_grad():
                model.h[0].mlp.c_fc.weight.fill_(float("nan"))

    real_train = train
    monkeypatch.setattr("scaling.train.train", lambda cfg, out: real_train(cfg, out, after_step=poison, verbose=False))
    sweep = toy_sweep(data_dir, steps=30)
    with pytest.raises(LaunchError) as err:
        launch(sweep, tmp_path, DebugExecutor(), progress=False)
    message = str(err.value)
    assert "(failed: nan at step 8)" in message
    assert "lower its lr_peak (now 0.003) or check its data" in message and "relaunch to resume" not in message
    # status gives a failed run no ETA, though its last metrics row has a speed.
    row = next(ln for ln in format_status(tmp_path / "toy").splitlines() if ln.startswith("r0-"))
    assert row.split()[1:4] == ["failed:", "nan", "at"] and row[-8:].strip() == ""


def test_a_killed_worker_is_reported_as_killed_by_its_signal(data_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = toy_sweep(data_dir, steps=5000, max_epochs=1000.0, eval_interval=10_000,
                      checkpoint_interval=20)  # 1000.0: a float field, as the saved sweep.yaml reads it back
    task = sweep_tasks(sweep, tmp_path)[0]

    def kill_the_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (task.out_dir / "checkpoint.pt").is_file():
                pid = int((task.out_dir / ".run.lock").read_text().split()[1])
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    with pytest.raises(LaunchError) as err:
        launch(sweep, tmp_path, LocalExecutor(devices=["cpu"]), progress=False)
    killer.join()
    message = str(err.value)
    assert "(running): its process was killed by SIGKILL (signal 9)" in message, message
    assert message.endswith("relaunch to resume from its last checkpoint")
    row = next(ln for ln in format_status(tmp_path / "toy").splitlines() if ln.startswith(task.run_id))
    assert "died: relaunch resumes" in row and row[-8:].strip() == ""  # no ETA for a dead run


# ----------------------------------------------------------------------------- a full disk (issue #20)


def no_space(*args: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_atomic_write_names_the_path_and_leaves_the_old_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.json"
    atomic_write_text(path, "old")
    monkeypatch.setattr("scaling.config.os.fsync", no_space)
    with pytest.raises(WriteError, match=rf"^{re.escape(str(path))}: cannot write \(No space left on device\): "
                                         r"the disk is full; free space there"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_prepare_on_a_full_disk_is_one_line_and_leaves_no_token_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"document {i} says hello.\n\n" for i in range(2000)))
    out = tmp_path / "data" / "corpus"
    monkeypatch.setattr("scaling.prepare.os.fsync", no_space)  # the tokenize pass's fsync of the token files
    args = ["prepare", "text", str(text), "--tokenizer", "bytes", "--doc-sep", "blank-line", "--out", str(out),
            "--workers", "1", "--quiet"]
    assert main(args) == 2
    assert f"{out}: cannot write (No space left on device): the disk is full" in one_line_error(capsys, "prepare")
    assert not out.exists()  # no train.bin, no temp file, not even the folder it made
    monkeypatch.undo()
    assert main(args) == 0 and (out / "meta.json").is_file()


def test_a_relaunch_on_a_full_disk_is_one_line_naming_the_lock(data_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The first write of a (re)launch is its sweep lock's holder line."""
    toy_sweep(data_dir, steps=30).save_yaml(tmp_path / "toy.yaml")
    monkeypatch.setattr("scaling.executors.os.pwrite", no_space)
    assert main(["launch", str(tmp_path / "toy.yaml"), "--results", str(tmp_path / "res"), "--no-progress"]) == 2
    assert f"{tmp_path / 'res' / 'toy' / '.launch.lock'}: cannot write (No space left on device)" in \
        one_line_error(capsys, "launch")


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 512 KiB tmpfs (root only: where it cannot be mounted, the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_really_full_disk_fails_prepare_and_train_in_one_line(data_dir: Path, tmp_path: Path, small_disk: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"document {i} says hello.\n\n" for i in range(40_000)))  # ~1 MB, 2 bytes a token
    out = small_disk / "corpus"
    assert main(["prepare", "text", str(text), "--tokenizer", "bytes", "--doc-sep", "blank-line", "--out", str(out),
                 "--workers", "1", "--quiet"]) == 2
    assert f"{out}: cannot write (No space left on device)" in one_line_error(capsys, "prepare")
    assert files_under(small_disk) == []
    # A run whose checkpoint (~1.3 MB of weights and Adam moments) does not fit: failed, one line, exit 2.
    make_cfg(data_dir, steps=30, checkpoint_interval=10).save_yaml(tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(small_disk / "run"), "--quiet"]) == 2
    assert f"{small_disk / 'run' / 'checkpoint.pt'}: cannot write (No space left on device)" in \
        one_line_error(capsys, "train")
    assert not (small_disk / "run" / "checkpoint.pt").exists()
    assert str(run_state(small_disk / "run")["status"]).startswith("failed: WriteError")


# ----------------------------------------------------------------------------- bad input (issue #20)


@pytest.mark.parametrize(("args", "message"), [
    (["train.lr_peak=inf"], "train.lr_peak: must be a finite number (got 'inf')"),
    (["train.lr_peak=.inf"], "train.lr_peak: must be a finite number (got inf)"),
    (["train.max_epochs=-.inf"], "train.max_epochs: must be a finite number (got -inf)"),
    (["train.lr_peak=1e400"], "train.lr_peak: must be a finite number (got '1e400')"),
], ids=["inf", "yaml-inf", "minus-inf", "1e400"])
def test_a_non_finite_number_is_refused_where_it_enters(data_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], args: list[str],
                                                       message: str) -> None:
    make_cfg(data_dir).save_yaml(tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml"), *args, "--out", str(tmp_path / "run")]) == 2
    assert message in one_line_error(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_errors_keep_their_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "run.yaml"
    spec.write_text("name: x\nmodel: {n_layer: 2\nsteps: 3\n")
    assert main(["train", str(spec)]) == 2
    assert f"{spec}: not valid YAML (line 3, column 6: expected ',' or '}}', but got ':')" in \
        one_line_error(capsys, "train")
    spec.write_text("name: x\nruns:\n  - a: 1\n   b: 2\n")
    assert main(["launch", str(spec)]) == 2
    assert f"{spec}: not valid YAML (line 4, column" in one_line_error(capsys, "launch")


@pytest.mark.parametrize(("args", "message"), [
    (["--budget", "1e400"], "argument --budget: --budget must be a finite number like 1e18 (got '1e400')"),
    (["--budget", "nan"], "argument --budget: --budget must be a finite number like 1e18 (got 'nan')"),
    (["--budgets", "0,1e18"], "--budgets: every value must be a finite number > 0 (got 0 in '0,1e18')"),
    (["--budgets", "1e16,-1e17,1e400"], "--budgets: every value must be a finite number > 0 (got -1e+17, inf in"),
    (["--budgets", "1e16:1e400:3"], "--budgets: every value must be a finite number > 0 (got inf in"),
    (["--budget", "1e17", "--ladder", "0,6e6"], "--ladder: every value must be a finite number > 0 (got 0 in"),
], ids=["1e400", "nan", "zero-in-list", "negative-and-inf", "inf-range", "ladder"])
def test_bad_budgets_name_their_flag(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) if args[1] in ("1e400", "nan") else contextlib.nullcontext():
        assert main(["plan", *args]) == 2  # argparse's errors exit (2) from inside the parser
    assert message in one_line_error(capsys, "plan")


def test_json_into_a_closed_pipe_ends_quietly() -> None:
    """`scaling predict ... --json | head`: the reader leaves early; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "scaling", "predict", "--fit",
                             str(REPO / "results" / "chinchilla_small" / "fit.json"), "--flops", "1e19", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first byte
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == ""  # 128 + SIGPIPE, as a command killed by the pipe
