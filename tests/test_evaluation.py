"""The final eval: per-window losses in eval.parquet, their standard errors, paired differences
between runs on one data folder, old run folders without them, resume and DDP equivalence."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from test_train import ENV, free_port, make_cfg, write_toy_data

from scaling.checkpoint import load_model
from scaling.config import RunConfig
from scaling.errors import FitError
from scaling.evaluation import (EVAL_SCHEMA, batch_means_se, eval_se, mean_se, paired_difference, read_eval,
                                score_windows)
from scaling.results import load_points, read_metrics, read_run_json, run_row
from scaling.train import RunResult, train

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "chinchilla_small"
CONTEXT = 32  # make_cfg's
VAL = 8_000  # write_toy_data's val tokens: (8000 - 1) // 32 = 249 windows, the last batch of 8 partial

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread


def hand_se(per_token: np.ndarray) -> float:
    """Batch means by hand for equal windows: batches of ⌊√n⌋ windows in order (the last shorter),
    each weighted by its share w of the windows: se² = m/(m−1) · Σ w² (l_batch − L)²."""
    n = len(per_token)
    b = int(math.sqrt(n))
    batches = [per_token[i:i + b] for i in range(0, n, b)]
    m, mean = len(batches), per_token.mean()
    return math.sqrt(m / (m - 1) * sum((len(x) / n) ** 2 * (x.mean() - mean) ** 2 for x in batches))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="module")
def runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunConfig, Path, RunResult]]:
    """Two runs on one folder that differ in LR, seed and micro-batch size."""
    root = tmp_path_factory.mktemp("runs")
    cfgs = {"a": make_cfg(data_dir, steps=30),
            "b": make_cfg(data_dir, steps=30, lr_peak=1e-3, seed=7, micro_batch_size=4)}
    return {k: (cfg, root / k, train(cfg, root / k, verbose=False)) for k, cfg in cfgs.items()}


def test_final_eval_keeps_every_window_and_its_se_is_the_hand_count(runs: dict) -> None:
    cfg, out, result = runs["a"]
    table = read_eval(out)
    assert table is not None and table.schema.equals(EVAL_SCHEMA)
    n = (VAL - 1) // CONTEXT
    assert table.column("window").to_pylist() == list(range(n))
    assert table.column("offset").to_pylist() == [w * CONTEXT for w in range(n)]
    assert set(table.column("tokens").to_pylist()) == {CONTEXT}
    sums = table.column("loss_sum").to_numpy()
    # Hand count: window 200's summed cross-entropy from the final checkpoint's model, alone.
    model, _ = load_model(out)
    val = np.fromfile(Path(cfg.data.path) / "val.bin", dtype=np.uint16).astype(np.int64)
    w = torch.from_numpy(val[200 * CONTEXT: 201 * CONTEXT + 1])
    with torch.no_grad():
        x = model.wte(w[None, :-1]) + model.wpe(torch.arange(CONTEXT))
        for block in model.h:
            x = block(x)
        logits = model.lm_head(model.ln_f(x))
    assert sums[200] == pytest.approx(F.cross_entropy(logits[0], w[1:], reduction="sum").item(), rel=1e-5)
    # Equal windows: the token-weighted mean is the plain mean; 249 windows make 16 batches of 15
    # and one of 9.
    per_token = sums / CONTEXT
    assert result.val_loss == pytest.approx(per_token.mean(), rel=1e-12)
    assert result.val_loss_se == eval_se(out) == pytest.approx(hand_se(per_token), rel=1e-9)
    # Per window (no batches) it is the sample SD over √n.
    assert mean_se(np.full(n, CONTEXT), sums)[1] == pytest.approx(per_token.std(ddof=1) / math.sqrt(n), rel=1e-9)
    assert result.val_tokens == n * CONTEXT
    info = read_run_json(out / "run.json")
    assert info is not None and info["result"]["val_tokens"] == n * CONTEXT and info["eval_tokens"] == 2048
    last = read_metrics(out / "metrics.parquet").to_pylist()[-1]
    assert (last["val_loss"], last["val_loss_se"]) == (result.val_loss, result.val_loss_se)
    row = run_row("a-id", "sw", cfg, out)
    assert (row["val_loss"], row["val_loss_se"], row["val_tokens"]) == (result.val_loss, result.val_loss_se,
                                                                         n * CONTEXT)


def test_runs_on_one_folder_score_the_same_windows_and_pair(runs: dict) -> None:
    (_, out_a, res_a), (_, out_b, res_b) = runs["a"], runs["b"]
    a, b = read_eval(out_a), read_eval(out_b)
    assert a is not None and b is not None
    for col in ("window", "offset", "tokens"):
        assert a.column(col).equals(b.column(col))
    assert a.schema.metadata[b"val_sha256"] == b.schema.metadata[b"val_sha256"]
    diff, se = paired_difference(out_a, out_b)
    d = (a.column("loss_sum").to_numpy() - b.column("loss_sum").to_numpy()) / CONTEXT
    assert diff == pytest.approx(res_a.val_loss - res_b.val_loss, rel=1e-9)
    assert se == pytest.approx(hand_se(d), rel=1e-9)
    assert paired_difference(out_b / "eval.parquet", out_a) == pytest.approx((-diff, se))
    # Both runs find the same windows hard, so the paired error is below the unpaired one
    # (measured: 0.0045 against 0.0083 nats).
    assert se < 0.7 * math.hypot(res_a.val_loss_se, res_b.val_loss_se)


def test_batch_means_se_holds_where_neighbouring_windows_are_correlated() -> None:
    """Known truth: 400 windows from 40 documents of 10 windows each, a document effect of SD 1 and
    a window effect of SD 0.1, so the mean's true SD is √(1/40 + 0.01/400) = 0.158. Over 400
    samples the batch-means error (batches of 20 windows, 2 documents) averages within 15% of that
    SD, while the per-window error, which treats all windows as independent, is ~3× too small."""
    rng = np.random.default_rng(0)
    truth = math.sqrt(1 / 40 + 0.01 / 400)
    tokens = np.full(400, 100.0)
    batch, window = [], []
    for _ in range(400):
        per_window = np.repeat(rng.normal(0, 1, 40), 10) + rng.normal(0, 0.1, 400)
        batch.append(batch_means_se(tokens, per_window * tokens)[1])
        window.append(mean_se(tokens, per_window * tokens)[1])
    assert np.mean(batch) == pytest.approx(truth, rel=0.15)
    assert np.mean(window) < truth / 2.5


def test_paired_difference_refuses_other_windows_in_one_line(runs: dict, data_dir: Path, tmp_path: Path) -> None:
    out_a = runs["a"][1]
    capped = train(make_cfg(data_dir, steps=30, final_eval_tokens=1000), tmp_path / "capped", verbose=False)
    assert capped.val_tokens == 1000 // CONTEXT * CONTEXT
    # Same size, other tokens: a folder whose val split is another walk.
    other = write_toy_data(tmp_path / "other")
    np.random.default_rng(1).integers(0, 64, VAL).astype(np.uint16).tofile(other / "val.bin")
    train(make_cfg(other, steps=30), tmp_path / "other_run", verbose=False)
    cases = [(tmp_path / "capped", "249 vs 31 windows"), (tmp_path / "other_run", "other val tokens"),
             (tmp_path / "none", "missing")]
    for run, what in cases:
        with pytest.raises(FitError, match=what) as e:
            paired_difference(out_a, run)
        assert "\n" not in str(e.value)


def test_old_run_folders_without_eval_parquet_still_load() -> None:
    run = next(p for p in sorted(REFERENCE.iterdir()) if (p / "run.json").is_file())
    assert read_eval(run) is None and eval_se(run) is None
    info = read_run_json(run / "run.json")
    assert info is not None and "val_tokens" not in info["result"]
    assert RunResult(**info["result"]).val_tokens is None  # what train() returns for a done old run
    data = load_points([REFERENCE])
    assert len(data) == 12 and np.isfinite(data.loss).all()
    cfg = RunConfig.from_dict(info["config"])
    row = run_row(run.name, REFERENCE.name, cfg, run)
    assert row["val_tokens"] is None and row["val_loss"] == info["result"]["val_loss"]


def test_final_eval_is_the_same_after_an_interruption(data_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(data_dir, steps=30, checkpoint_interval=10)
    train(cfg, tmp_path / "straight", verbose=False)
    assert train(cfg, tmp_path / "resumed", stop_at_step=13, verbose=False).status == "interrupted"
    assert read_eval(tmp_path / "resumed") is None  # no final eval before the last update
    train(cfg, tmp_path / "resumed", verbose=False)
    assert read_eval(tmp_path / "resumed").equals(read_eval(tmp_path / "straight"))
    # Killed between the last checkpoint and the final eval: the relaunch evaluates the checkpoint.
    shutil.copytree(tmp_path / "straight", tmp_path / "killed")
    (tmp_path / "killed" / "eval.parquet").unlink()
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    (tmp_path / "killed" / "run.json").write_text(json.dumps({**info, "status": "running"}))
    result = train(cfg, tmp_path / "killed", verbose=False)
    assert result.status == "done" and result.val_loss == info["result"]["val_loss"]
    assert read_eval(tmp_path / "killed").equals(read_eval(tmp_path / "straight"))


def test_ddp_final_eval_matches_one_process(data_dir: Path, tmp_path: Path) -> None:
    """Two gloo processes split the final eval's batches; the gathered per-window losses equal one
    process scoring the same model."""
    cfg = make_cfg(data_dir, steps=10, eval_interval=100)
    cfg.save_yaml(tmp_path / "run.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "scaling", "train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    stored = pq.read_table(tmp_path / "run" / "eval.parquet")
    assert stored.num_rows == (VAL - 1) // CONTEXT
    model, _ = load_model(tmp_path / "run")
    one = score_windows(model, data_dir, CONTEXT, stored.num_rows, cfg.train.micro_batch_size, torch.device("cpu"))
    assert np.array_equal(stored.column("loss_sum").to_numpy(), one)
