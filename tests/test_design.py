"""Plan for a target: the sweep below it, both specs, the target held out, guards and data limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scaling.config import SweepConfig
from scaling.design import TargetRequest, plan_for_target, write_specs
from scaling.errors import ConfigError
from scaling.model import count_params
from scaling.plan import PlanRequest, locates_minimum


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scaling", *args], capture_output=True, text=True, cwd=cwd)


def test_target_plan_writes_both_specs_target_held_out_guards_on(tmp_path: Path) -> None:
    """A 120M-parameter target at 20 tokens/param with an 8192 vocabulary and 3e9 unique tokens."""
    base = PlanRequest(budgets=(), vocab_size=8192, unique_tokens=3e9)
    tp = plan_for_target(TargetRequest(n_params=1.2e8), base)
    sweep_path, target_path = write_specs(tp, tmp_path / "sweeps" / "gpt.yaml", data_path="data/x")
    assert target_path == tmp_path / "sweeps" / "gpt_target.yaml"
    sweep, target = SweepConfig.from_yaml(sweep_path), SweepConfig.from_yaml(target_path)
    # Named by the file, so results land in results/gpt and results/gpt_target.
    assert (sweep.name, target.name) == ("gpt", "gpt_target") and len(target.runs) == 1
    t = target.resolve(0)
    assert abs(t.tokens / count_params(t.model)["total"] / 20 - 1) < 0.01
    c_target = tp.target_flops
    assert target.plan["target"]["flops"] == c_target == sweep.plan["target"]["flops"]
    # Budgets: one decade, the largest C_target / 10.
    budgets = sorted({r.budget_flops for r in sweep.runs})
    assert len(budgets) == 3 and budgets[-1] == pytest.approx(c_target / 10) and budgets[-1] / budgets[0] == pytest.approx(10)
    # Held out: no sweep run has the target's shape and tokens.
    runs = [sweep.resolve(i) for i in range(len(sweep.runs))]
    assert all((r.model, r.tokens) != (t.model, t.tokens) for r in runs)
    # Guards: no embedding-dominated run, none below 5 tokens/param, none past 4 epochs; each budget
    # brackets its N_opt with at least 3 sizes.
    for r in runs:
        counts = count_params(r.model)
        assert counts["embedding"] <= 0.5 * counts["total"] and r.tokens / counts["total"] >= 5
        assert r.tokens <= 4 * 3e9
    assert all(locates_minimum(b, tp.sweep.request) for b in tp.sweep.budgets)


def test_target_past_the_data_is_an_error_and_sweep_points_past_it_drop() -> None:
    base = PlanRequest(budgets=(), vocab_size=8192, unique_tokens=5e8)
    with pytest.raises(ConfigError, match=r"--target-tokens: the target trains on .*> --max-epochs 4"):
        plan_for_target(TargetRequest(n_params=1.2e8), base)
    # 2.4e9 target tokens are 4.8 epochs of 5e8, but fit with --max-epochs 5; the sweep's runs that
    # would repeat the data more than 5 times are dropped, not flagged.
    tp = plan_for_target(TargetRequest(n_params=1.2e8), PlanRequest(budgets=(), vocab_size=8192, unique_tokens=5e8,
                                                                   max_epochs=5.0))
    assert all(p.epochs <= 5 for p in tp.sweep.points)
    assert any("epochs of data" in d for b in tp.sweep.budgets for d in b.dropped)


def test_cli_target_plan_branching_and_one_line_errors(tmp_path: Path) -> None:
    r = run_cli("plan", "--target-params", "1.2e8", "--target-ratio", "20", "--vocab", "8192", "--branching",
                "--out", "sweeps/b.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Target (held out): C2e18_13x832" in r.stdout and "wrote sweeps/b.yaml and sweeps/b_target.yaml" in r.stdout
    sweep, target = (SweepConfig.from_yaml(tmp_path / "sweeps" / f) for f in ("b.yaml", "b_target.yaml"))
    assert sweep.train.schedule == "wsd-branch" and sweep.branches and not sweep.runs
    assert target.train.schedule == "cosine" and len(target.runs) == 1
    for args, flag in [(("--target-params", "1.2e8"), "--target-params: after the guards only 0"),  # GPT-2 vocab
                       (("--target-params", "1.2e8", "--vocab", "8192", "--target-factor", "1"), "--target-factor"),
                       (("--target-params", "1.2e8", "--vocab", "8192", "--target-decades", "0.5"), "--target-decades"),
                       (("--target-params", "1.2e8", "--budget", "1e18"), "not allowed with")]:
        r = run_cli("plan", *args, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and flag in lines[0], r.stderr
