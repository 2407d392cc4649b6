"""`scaling demo --quick` end to end: every artefact, a decreasing frontier, the validation table,
re-running continues without retraining; a bad --out is a one-line error."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from scaling.config import SweepConfig
from scaling.demo import FULL, QUICK, demo_sweep
from scaling.fit import load_fits
from scaling.results import RUNS_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scaling", "demo", *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One quick demo for the module: its output folder and the finished CLI call."""
    out = tmp_path_factory.mktemp("demo") / "out"
    r = run_demo("--quick", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return out, r


def runs(sweep_dir: Path) -> list[dict]:
    table = pq.read_table(sweep_dir / "runs.parquet")
    assert table.schema.equals(RUNS_SCHEMA)
    return table.to_pylist()


def test_every_artefact_exists_and_parses(quick: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = quick
    sweep = SweepConfig.from_yaml(out / "sweeps" / "demo.yaml")
    target = SweepConfig.from_yaml(out / "sweeps" / "demo-target.yaml")
    assert sweep == demo_sweep(QUICK, out / "data" / "pysrc")[0]  # the spec the planner made, as launched
    budgets = sorted({r.budget_flops for r in sweep.runs})
    assert len(target.runs) == 1 and target.runs[0].budget_flops >= 3 * budgets[-1]
    assert target.plan["sweep_digest"] == sweep.digest()  # chosen from this very sweep

    for name, spec in (("demo", sweep), ("demo-target", target)):
        rows = runs(out / "results" / name)
        assert len(rows) == len(spec.runs)
        assert all(r["status"] == "done" and r["tokens_done"] == r["tokens"] and r["val_loss"] > 0 for r in rows)
    # The target trained for at least 3× the largest sweep budget's compute, counted as planned.
    assert sweep.conventions.flops == target.conventions.flops == "6nd+attn"
    (t,) = runs(out / "results" / "demo-target")
    assert t["flops_6nd_attn"] >= 3 * budgets[-1]

    fits = load_fits(out / "fit" / "fit.json")
    assert {"approach2", "approach3"} <= set(fits)
    doc = json.loads((out / "fit" / "fit.json").read_text())
    assert doc["n_runs"] == len(sweep.runs)  # the target is held out of the fit
    pngs = sorted((out / "fit").glob("*.png"))
    assert {p.name for p in pngs} >= {"isoflop.png", "loss_vs_compute.png", "allocation.png", "residuals.png"}
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    html = (out / "fit" / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("data:image/png;base64,") == len(pngs)


def test_the_full_demo_plans_three_budgets_over_10x_with_5_sizes_each(
        quick: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The full demo's sweep (planned here, not trained): what the README's main command runs."""
    out, _ = quick
    sweep, req = demo_sweep(FULL, out / "data" / "pysrc")
    budgets = sorted({r.budget_flops for r in sweep.runs})
    assert len(budgets) >= 3 and budgets[-1] / budgets[0] >= 10 * (1 - 1e-9)
    assert all(sum(r.budget_flops == b for r in sweep.runs) >= 5 for b in budgets)
    assert sweep.train.device == "cpu" and sweep.train.compile == "off"
    assert all(r.steps >= FULL.min_steps for r in sweep.runs)
    assert req.vocab_size == 257 and all(r.model.vocab_size == 257 for r in sweep.runs)  # bytes


def test_fit_recovers_a_decreasing_loss_frontier(quick: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = quick
    rows = runs(out / "results" / "demo")
    best = {}
    for r in rows:
        best[r["budget_flops"]] = min(best.get(r["budget_flops"], math.inf), r["val_loss"])
    frontier = [best[b] for b in sorted(best)]
    assert all(a > b for a, b in zip(frontier, frontier[1:])), frontier
    p = load_fits(out / "fit" / "fit.json")["approach3"].params
    for k in ("E", "A", "B", "alpha", "beta"):
        assert math.isfinite(p[k]) and p[k] > 0, (k, p[k])


def test_output_ends_with_the_validation_table_exponents_and_report(
        quick: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, r = quick
    text = r.stdout
    for stage in ("[1/7] prepare", "[3/7] launch", "[4/7] fit", "[6/7] train the target", "[7/7] validate"):
        assert stage in text
    (t,) = runs(out / "results" / "demo-target")
    table = text[text.index("Held-out target"):]
    row = next(line for line in table.splitlines() if line.startswith(t["name"]))
    actual, predicted = (float(x) for x in row.split()[3:5])
    assert actual == pytest.approx(t["val_loss"], abs=5e-5)
    assert predicted > 0 and "inside the prediction interval" in table
    assert "alpha" in table and "beta" in table and "%" in table
    assert f"Report with plots: {out / 'fit' / 'report.html'}" in table


def test_rerun_continues_without_retraining(quick: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, first = quick
    done = {p: p.stat().st_mtime_ns for p in (out / "results").glob("*/*/metrics.parquet")}
    target = (out / "sweeps" / "demo-target.yaml").read_text()
    r = run_demo("--quick", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in done} == done  # every run was already done: none retrained
    assert (out / "sweeps" / "demo-target.yaml").read_text() == target
    table = lambda s: s[s.index("Held-out target"):s.index("Fitted on the sweep")]  # noqa: E731
    assert table(r.stdout) == table(first.stdout)


def test_unwritable_out_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out, why in ((blocker / "out", "Not a directory"), (blocker, "is a file, not a folder")):
        r = run_demo("--quick", "--out", str(out))
        assert r.returncode == 2 and r.stdout == ""  # refused before any stage starts
        assert len(r.stderr.strip().splitlines()) == 1
        assert f"--out {out}" in r.stderr and why in r.stderr
