"""tune-lr: the LR sweep runs through the launcher, the rule file round-trips, plan follows it, refusals."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from scaling.cli import main
from scaling.config import Conventions
from scaling.errors import ConfigError
from scaling.executors import DebugExecutor
from scaling.launch import sweep_tasks
from scaling.plan import PlanRequest, format_plan, make_plan, to_sweep, warmup_capped
from scaling.prepare import prepare
from scaling.rules import DEFAULT_LR_RULE, load_lr_rule
from scaling.tune import (TuneRequest, fit_lr_rule, rule_document, run_tune, size_optima, size_optimum, tune_sweep,
                          write_rule)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread

# A tiny study: byte vocabulary, non-embedding N of ~3k-30k, 5 tokens/param, 4 LRs a decade apart
# (the extremes clearly too low and too high for these models, so every optimum is inside).
LADDER, LRS, NAME = "3e3,1e4,3e4", "3e-4:3e-1:4", "tune_test"
SHAPE_FLAGS = ["--params", "non-embedding", "--context", "64", "--aspect", "16", "--head-dim", "16",
               "--min-steps", "20", "--tokens-per-param", "5"]
OVERRIDES = ["train.device=cpu", "train.eval_tokens=2048"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``scaling ARGS`` in this process (no interpreter and torch start-up): exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny study trained once in-process (DebugExecutor), fitted and written as the CLI does."""
    root = tmp_path_factory.mktemp("tune")
    data = prepare("pysrc", tokenizer="bytes", out_dir=root / "data", max_bytes=300_000, val_fraction=0.1, workers=1)
    req = TuneRequest(ladder=(3e3, 1e4, 3e4), lrs=(3e-4, 3e-3, 3e-2, 3e-1), data=str(data), vocab_size=257,
                      tokenizer="bytes", unique_tokens=90e3, tokens_per_param=5, min_steps=20,
                      conventions=Conventions(params="non-embedding"), context=64, aspect=16, head_dim=16)
    sweep, plan = tune_sweep(req, NAME)
    sweep = sweep.merge(OVERRIDES)
    losses = run_tune(sweep, root / "results", DebugExecutor(), progress=False)
    optima = size_optima(plan, losses)
    fit = fit_lr_rule([o.n_params for o in optima], [o.lr_opt for o in optima])
    rule = write_rule(root / "lr.yaml", rule_document(req, sweep, str(root / "results" / NAME), optima, fit))
    return {"root": root, "data": data, "rule": rule, "results": root / "results"}


def test_sweep_trains_every_size_and_lr_and_writes_the_rule(study: dict[str, Path]) -> None:
    doc = yaml.safe_load(study["rule"].read_text())
    assert doc["kind"] == "lr_rule" and doc["params"] == "non-embedding"
    assert (doc["vocab_size"], doc["tokenizer"], doc["beta2"], doc["context"]) == (257, "bytes", 0.95, 64)
    assert "Porian" in doc["warmup_rule"] and "DeepSeek" in doc["batch_rule"] and doc["data"] == str(study["data"])
    assert len(doc["sizes"]) == 3
    for s in doc["sizes"]:
        assert s["lrs"] == [3e-4, 3e-3, 3e-2, 3e-1] and all(v is None or v > 0 for v in s["losses"])
        # The optimum lies between the grid neighbours of the best run (the parabola's vertex).
        best = int(np.argmin([math.inf if v is None else v for v in s["losses"]]))
        assert s["lrs"][best - 1] < s["lr_opt"] < s["lrs"][best + 1]
        assert s["tokens"] == s["steps"] * s["batch_size"] * 64 and s["warmup_steps"] >= 1
    # The fit is least squares of log LR* on log N: recompute it by hand from the file's optima.
    x = np.log([s["n_params"] for s in doc["sizes"]])
    y = np.log([s["lr_opt"] for s in doc["sizes"]])
    slope = np.polyfit(x, y, 1)[0]
    assert doc["k"] == pytest.approx(-slope, rel=1e-9)
    assert doc["n_ref"] == pytest.approx(math.exp(x.mean())) and doc["lr_ref"] == pytest.approx(math.exp(y.mean()))
    assert doc["k_interval"][0] < doc["k"] < doc["k_interval"][1]
    rule = load_lr_rule(study["rule"])
    assert (rule.lr_ref, rule.n_ref, rule.k, rule.vocab_size) == (doc["lr_ref"], doc["n_ref"], doc["k"], 257)


def test_plan_takes_every_lr_peak_from_the_rule(study: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load(study["rule"].read_text())
    rule = load_lr_rule(study["rule"])
    req = PlanRequest(budgets=(3e11, 1e12), sizes=5, vocab_size=257, context=64, aspect=16, head_dim=16,
                      min_steps=20, lr_rule=rule)
    plan = make_plan(req)
    for p in plan.points:
        # By hand from the file: lr_ref · (n_ref / N_non-embedding)^k, three significant figures.
        want = doc["lr_ref"] * (doc["n_ref"] / p.n_params_nonembedding) ** doc["k"]
        assert p.lr_peak == float(f"{want:.3g}")
    sweep = to_sweep(plan)
    assert sweep.train.beta2 == doc["beta2"] and sweep.plan["lr_rule"]["k"] == doc["k"]
    assert "Porian" in sweep.plan["warmup_rule"]
    # The CLI: the rule's source is named in the table, and β2 other than the rule's is refused.
    code, out, err = run_cli(capsys, "plan", "--budget", "3e11", "--data", str(study["data"]), "--lr-rule",
                             str(study["rule"]), "--context", "64", "--aspect", "16", "--head-dim", "16",
                             "--min-steps", "20")
    assert code == 0, err
    assert str(study["rule"]) in out
    code, _, err = run_cli(capsys, "plan", "--budget", "3e11", "--vocab", "257", "--lr-rule", str(study["rule"]),
                           "--beta2", "0.99")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--beta2" in err


def test_cli_rerun_skips_finished_runs_and_refuses_an_edge_optimum(study: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    runs = sorted((study["results"] / NAME).glob("*/metrics.parquet"))
    assert len(runs) == 12
    mtimes = [p.stat().st_mtime_ns for p in runs]
    args = ["tune-lr", "--data", str(study["data"]), "--ladder", LADDER, *SHAPE_FLAGS, "--results",
            str(study["results"]), "--name", NAME, "--no-progress", *OVERRIDES]
    code, _, err = run_cli(capsys, *args, "--lrs", LRS, "--out", str(tmp_path / "lr.yaml"))
    assert code == 0, err
    assert [p.stat().st_mtime_ns for p in runs] == mtimes  # nothing retrained
    again = yaml.safe_load((tmp_path / "lr.yaml").read_text())
    assert again["k"] == yaml.safe_load(study["rule"].read_text())["k"]
    # Three consecutive LRs of the grid that put the smallest size's best at an edge: refused, one line.
    first = again["sizes"][0]
    best = int(np.argmin([math.inf if v is None else v for v in first["losses"]]))
    edge = first["lrs"][best:best + 3] if best + 3 <= 4 else first["lrs"][best - 2:best + 1]
    code, out, err = run_cli(capsys, *args, "--lrs", ",".join(map(str, edge)), "--out", str(tmp_path / "edge.yaml"))
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and "widen --lrs" in err
    assert not (tmp_path / "edge.yaml").exists()
    assert [p.stat().st_mtime_ns for p in runs] == mtimes


def test_rule_from_another_vocabulary_or_tokenizer_is_refused(study: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "plan", "--budget", "1e17", "--lr-rule", str(study["rule"]))  # GPT-2's 50257
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "vocabulary 257 (bytes)" in err and "50257" in err and "tune-lr" in err
    with pytest.raises(ConfigError, match="tokenizer bytes.*gpt2"):
        load_lr_rule(study["rule"]).check(257, "gpt2")
    with pytest.raises(ConfigError, match="--lr-rule .*no such file"):
        load_lr_rule(study["root"] / "missing.yaml")


def test_edge_and_diverged_neighbours_are_refused() -> None:
    lrs = [1e-3, 3e-3, 1e-2, 3e-2]
    with pytest.raises(ConfigError, match="highest of the grid.*widen --lrs"):
        size_optimum(lrs, [4.0, 3.9, 3.8, 3.7], "s")
    with pytest.raises(ConfigError, match="lowest of the grid.*widen --lrs"):
        size_optimum(lrs, [3.5, 3.9, 3.8, 3.7], "s")
    with pytest.raises(ConfigError, match="diverged run beside it"):
        size_optimum(lrs, [4.0, 3.9, 3.8, math.inf], "s")


def test_known_truth_power_law_is_recovered() -> None:
    # Synthetic truth: LR*(N) = 0.3 · N^-0.35 and loss = 3 + 0.2 · (ln LR − ln LR*)², a parabola in
    # log LR, so each size's vertex and then k are recovered to rounding.
    c, k = 0.3, 0.35
    sizes = [1e6, 3e6, 1e7, 3e7, 1e8]
    grid = list(np.exp(np.linspace(np.log(1e-5), np.log(1e-1), 13)))
    optima = []
    for n in sizes:
        truth = c * n**-k
        lr, loss = size_optimum(grid, [3 + 0.2 * (math.log(g / truth)) ** 2 for g in grid], f"N={n:g}")
        assert lr == pytest.approx(truth, rel=1e-9) and loss == pytest.approx(3.0)
        optima.append(lr)
    fit = fit_lr_rule(sizes, optima)
    assert fit.k == pytest.approx(k, rel=1e-9) and fit.c == pytest.approx(c, rel=1e-6)
    # With log-normal noise (SD 0.15) on each optimum, the 95% t-interval covers the true k in about
    # 95% of 400 replicates (binomial SD ~1.1%).
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        noisy = [c * n**-k * math.exp(rng.normal(0, 0.15)) for n in sizes]
        lo, hi = fit_lr_rule(sizes, noisy).k_interval
        covered += lo <= k <= hi
    assert 0.91 <= covered / 400 <= 0.99


def test_default_rule_is_the_old_formula_and_capped_warmup_is_marked() -> None:
    # The fallback: 6e-4 · (124M / N_total)^0.5 (GPT-3 Small, Brown et al. 2020), to 3 significant figures,
    # so specs planned before rules existed keep their LRs and run ids.
    for n in (7_000_000, 45_213_184, 124_439_808, 1.3e9):
        assert DEFAULT_LR_RULE.lr_peak({"total": int(n), "non_embedding": 1}) == float(f"{6e-4 * (124e6 / n) ** 0.5:.3g}")
    # GPT-2's vocabulary at 1e17 FLOPs: the grid without the fit-point guards, so capped and
    # uncapped points both occur.
    plan = make_plan(PlanRequest(budgets=(1e17,), max_embedding_fraction=1.0, min_tokens_per_param=0.0))
    capped = [p for p in plan.points if warmup_capped(p)]
    for p in plan.points:
        rule = math.ceil(p.n_params_total / p.batch_tokens)  # N_total tokens in steps
        assert p.warmup_steps == min(rule, p.steps // 10)
        assert warmup_capped(p) == (rule > p.steps // 10)
    assert capped and len(capped) < len(plan.points)
    text = format_plan(plan)
    assert f"warmup shorter than N_total tokens for {len(capped)} point(s)" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("C1e17_")}
    assert len(rows) == len(plan.points)
    assert {name for name, line in rows.items() if "*" in line} == {p.name for p in capped}


def test_adding_a_size_keeps_the_ids_of_the_runs_already_planned(study: dict[str, Path]) -> None:
    # On the H200 (2026-12-04) a 4th --ladder size renamed the 15 runs of the first three, as the
    # interim-eval interval followed the longest run: a re-run would have trained them again.
    req = TuneRequest(ladder=(3e3, 1e4, 3e4), lrs=(3e-4, 3e-3, 3e-2), data=str(study["data"]), vocab_size=257,
                      tokenizer="bytes", unique_tokens=1e9, tokens_per_param=5, min_steps=20,
                      conventions=Conventions(params="non-embedding"), context=64, aspect=16, head_dim=16)
    three, _ = tune_sweep(req, NAME)
    four, _ = tune_sweep(dataclasses.replace(req, ladder=(*req.ladder, 1e5)), NAME)
    ids = lambda sweep: {t.config.name: t.out_dir.name for t in sweep_tasks(sweep, study["results"])}  # noqa: E731
    assert len(ids(four)) == len(ids(three)) + 3
    assert ids(three).items() <= ids(four).items()
