"""Planner: IsoFLOP grids, conventions, published numbers, sweep specs and CLI errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.config import Conventions, SweepConfig
from scaling.errors import ConfigError
from scaling.laws import CHINCHILLA_TABLE3, PUBLISHED_LAWS
from scaling.model import count_params, flops_per_token
from scaling.plan import PlanRequest, make_plan, parse_budgets, shape_for, to_sweep


ROOT = Path(__file__).resolve().parents[1]
# The guards off: tests of the grid itself at GPT-2's vocabulary, where the guards drop most sizes
# below ~1e19 FLOPs (tested on their own below).
NO_GUARDS = {"max_embedding_fraction": 1.0, "min_tokens_per_param": 0.0}
NO_GUARDS_FLAGS = ("--max-embedding-fraction", "1", "--min-tokens-per-param", "0")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scaling", *args], capture_output=True, text=True)


def test_plan_1e18_json_matches_chinchilla_and_budget() -> None:
    out = run_cli("plan", "--budget", "1e18", "--json", *NO_GUARDS_FLAGS)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    (budget,) = plan["budgets"]
    # Hoffmann et al. 2022, Eq. 10 parameters: N_opt(1e18) lies between 7e7 and 1.1e8.
    n_opt = budget["compute_optimal"]["chinchilla_approach3"]["n_params"]
    assert 7e7 <= n_opt <= 1.1e8
    assert 5 <= len(budget["points"]) <= 9
    for p in budget["points"]:
        assert abs(6 * p["n_params"] * p["tokens"] / 1e18 - 1) < 0.02
        # D is whole optimizer steps of batch × context tokens.
        assert p["tokens"] == p["steps"] * p["batch_size"] * p["model"]["context"]
    ns = [p["n_params"] for p in budget["points"]]
    assert ns == sorted(ns)
    # The grid spans roughly 1/4x .. 4x the compute-optimal size.
    assert ns[0] < n_opt / 3 and ns[-1] > n_opt * 3
    assert plan["conventions"]["params"] == "total" and plan["conventions"]["flops"] == "6nd"
    assert "Hoffmann" in plan["conventions"]["why"]


def test_chinchilla_table3_reproduced_by_approach1() -> None:
    # Hoffmann et al. 2022, Table 3: 400M -> 1.92e19 FLOPs / 8.0B tokens; 10B -> 1.23e22 / 205.1B.
    law = PUBLISHED_LAWS["chinchilla_approach1"]
    for n_pub, flops, tokens_pub in CHINCHILLA_TABLE3:
        n, d = law.optimal(flops)
        assert abs(n / n_pub - 1) < 0.03, (n_pub, n)
    for n_pub, flops, tokens_pub in [(400e6, 1.92e19, 8.0e9), (10e9, 1.23e22, 205.1e9)]:
        n, d = law.optimal(flops)
        assert abs(n / n_pub - 1) < 0.03 and abs(d / tokens_pub - 1) < 0.03


def test_published_allocations_exponents() -> None:
    # Hoffmann et al. 2022, Table 2: a = 0.46 for Approach 3 (Eq. 10 parameters give 0.4516).
    a3 = PUBLISHED_LAWS["chinchilla_approach3"]
    assert abs(a3.a - 0.4516) < 1e-3
    # Besiroglu et al. 2024 report their fit implies ~20 tokens/param at scale; at 1e24 FLOPs
    # their law gives a ratio in the tens, and Chinchilla's Approach 1 about 20.
    n, d = PUBLISHED_LAWS["chinchilla_approach1"].optimal(5.76e23)
    assert 18 < d / n < 24
    # Kaplan et al. 2020 put much more of the budget into N: fewer tokens per parameter at scale.
    nk, dk = PUBLISHED_LAWS["kaplan2020"].optimal(5.76e23)
    assert dk / nk < d / n


def test_shape_rule_head_dim_aspect_and_exact_counts() -> None:
    # With GPT-2's 50k vocabulary the embedding alone is 3.3M at d=64, so small targets use a
    # byte-level vocabulary.
    cases = [(2e7, 50257), (1.24e8, 50257), (5e8, 50257), (2e5, 256), (1e6, 256)]
    for target, vocab in cases:
        req = PlanRequest(budgets=(1e18,), vocab_size=vocab)
        cfg = shape_for(target, req)
        assert cfg.d_model % 64 == 0 and cfg.d_model // cfg.n_head == 64
        assert cfg.d_ff == 4 * cfg.d_model
        assert 16 <= cfg.d_model / cfg.n_layer <= 256
        assert abs(count_params(cfg)["total"] / target - 1) < 0.25
    # GPT-2 small comes out of the rule at its own size: 12 layers x 768, 124M parameters.
    gpt2 = shape_for(124.4e6, PlanRequest(budgets=(1e18,)))
    assert (gpt2.n_layer, gpt2.d_model) == (12, 768)
    assert count_params(gpt2)["total"] == 124_439_808  # nanoGPT's GPT-2 small with tied embeddings


def test_non_embedding_convention_and_attention_flops() -> None:
    req = PlanRequest(budgets=(1e17,), conventions=Conventions(params="non-embedding", flops="6nd+attn"))
    plan = make_plan(req)
    for p in plan.points:
        assert p.n_params == p.n_params_nonembedding < p.n_params_total
        fpt = flops_per_token(p.model, "non-embedding", "6nd+attn")
        # C counts the unembedding matmul (V·d) that N leaves out (Porian et al. 2024).
        m = p.model
        assert fpt == 6 * (p.n_params + m.vocab_size * m.d_model) + 12 * m.n_layer * m.d_model * m.context
        assert abs(p.flops / 1e17 - 1) < 0.02
    assert plan.to_dict()["conventions"]["flops_formula"] == "(6(N_nonemb+Vd)+12LdT)D"
    assert to_sweep(plan).plan["flops_formula"] == "(6(N_nonemb+Vd)+12LdT)D"


def test_budgets_log_range_and_list() -> None:
    assert parse_budgets("1e16,3e16,1e17") == (1e16, 3e16, 1e17)
    got = parse_budgets("1e16:1e18:3")
    assert got[0] == pytest.approx(1e16) and got[1] == pytest.approx(1e17) and got[2] == pytest.approx(1e18)
    plan = make_plan(PlanRequest(budgets=got))
    assert [b.budget_flops for b in plan.budgets] == list(got)


def test_close_budgets_get_unique_readable_names(tmp_path) -> None:
    # 17 budgets over two decades: one significant digit gives 1e16 and 1.33e16 the same name.
    budgets = parse_budgets("1e16:1e18:17")
    plan = make_plan(PlanRequest(budgets=budgets, **NO_GUARDS))
    spec = tmp_path / "dense.yaml"
    to_sweep(plan, name="dense").save_yaml(spec)
    sweep = SweepConfig.from_yaml(spec)
    names = [r.name for r in sweep.runs]
    assert len(names) == len(set(names)) == len(plan.points) >= 17 * 5
    tags: dict[float, str] = {}
    for run in sweep.runs:
        # Readable: C<mantissa>e<exponent>_<L>x<d>, two significant digits at most here, and the
        # tag reads back as its own budget to those digits.
        m = re.fullmatch(r"C(\d(?:\.\d)?e\d+)_(\d+)x(\d+)", run.name)
        assert m, run.name
        assert float(m[1]) == pytest.approx(run.budget_flops, rel=0.04)
        assert (int(m[2]), int(m[3])) == (run.model.n_layer, run.model.d_model)
        assert tags.setdefault(run.budget_flops, m[1]) == m[1]  # one tag per budget
    assert len(set(tags.values())) == 17
    assert {"1e16", "1e17", "1e18"} <= set(tags.values())  # whole decades need no extra digit


@pytest.mark.parametrize("spec", ["chinchilla_small.yaml", "chinchilla_small_target.yaml"])
def test_committed_specs_keep_their_run_names(spec: str) -> None:
    # Run ids derive from the resolved config, name included: replanning a committed spec's request
    # must give the same names (and settings), or its results stop matching. These specs predate
    # the guards (their plan has no guard fields): they replan with the guards off.
    sweep = SweepConfig.from_yaml(ROOT / "sweeps" / spec)
    assert "max_embedding_fraction" not in sweep.plan
    req = {**sweep.plan, "budgets": tuple(sweep.plan["budgets"]), "ladder": tuple(sweep.plan["ladder"]), **NO_GUARDS}
    again = to_sweep(make_plan(PlanRequest(**req, conventions=sweep.conventions)), name=sweep.name)
    assert [r.name for r in again.runs] == [r.name for r in sweep.runs]
    assert [r.to_dict() for r in again.runs] == [r.to_dict() for r in sweep.runs]


def test_data_constrained_flag_and_drop() -> None:
    req = PlanRequest(budgets=(1e17,), unique_tokens=2e8, **NO_GUARDS)
    flagged = make_plan(req).points
    assert any(p.repeated for p in flagged) and not all(p.repeated for p in flagged)
    for p in flagged:
        assert p.repeated == (p.tokens / 2e8 > 4)
    kept = make_plan(PlanRequest(budgets=(1e17,), unique_tokens=2e8, drop_repeated=True, **NO_GUARDS))
    assert kept.points and all(not p.repeated for p in kept.points)
    assert len(kept.points) < len(flagged)
    assert any("epochs" in d for d in kept.budgets[0].dropped)


def test_written_spec_loads_validates_and_resolves(tmp_path) -> None:
    out = tmp_path / "sweeps" / "small.yaml"
    r = run_cli("plan", "--budgets", "1e15,1e16", "--context", "256", "--vocab", "256",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    sweep = SweepConfig.from_yaml(out)
    assert sweep.name == "small" and len(sweep.runs) >= 10  # --name defaults to the spec's file name
    run = sweep.resolve(0)
    assert run.tokens == run.steps * run.train.batch_size * run.model.context
    assert run.budget_flops == 1e15
    # In-memory plan and the file agree point for point.
    plan = make_plan(PlanRequest(budgets=(1e15, 1e16), context=256, vocab_size=256))
    assert to_sweep(plan, name="small").to_dict() == sweep.to_dict()


def test_spec_validation_names_field_path(tmp_path) -> None:
    spec = tmp_path / "bad.yaml"
    plan = make_plan(PlanRequest(budgets=(1e15,), context=256, vocab_size=256))
    data = to_sweep(plan, name="bad").to_dict()
    data["runs"][3]["model"]["d_model"] = 500
    data["runs"][3]["model"]["n_head"] = 8
    data["train"]["warmup_stepz"] = 3
    import yaml

    spec.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        SweepConfig.from_yaml(spec)
    # Unknown fields are reported first (construction), with the valid names listed.
    assert "train.warmup_stepz: unknown field" in str(e.value)
    del data["train"]["warmup_stepz"]
    spec.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"runs\[3\]\.model\.d_model: must be divisible by n_head \(got 500, 8\)"):
        SweepConfig.from_yaml(spec)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--budget", "-1"], "--budget"),
        (["--budget", "abc"], "--budget"),
        (["--budget", "1e9"], "--budget"),
        (["--budget", "1e18", "--gpu", "tpu-v9"], "--gpu"),
        (["--budgets", "1e16:oops"], "--budgets"),
        (["--budgets", "1e16,3e16,1e16"], "--budgets"),
        (["--budget", "1e18", "--mfu", "2"], "--mfu"),
        (["--budget", "1e17", "--ladder", "1e15"], "--ladder"),  # no point left: the reason, not "too small"
        (["--budget", "1e19", "--out", "/tmp"], "--out /tmp: is a folder"),
        (["--budget", "1e19", "--max-embedding-fraction", "1.5"], "--max-embedding-fraction"),
        (["--budget", "1e19", "--min-tokens-per-param", "-1"], "--min-tokens-per-param"),
        (["--budget", "1e300"], "more than twice the largest shape the planner builds"),  # was 1 absurd run
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], flag: str) -> None:
    r = run_cli("plan", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0]
    assert "Traceback" not in r.stderr


def test_merge_overrides_strict() -> None:
    plan = make_plan(PlanRequest(budgets=(1e15,), context=256, vocab_size=256))
    sweep = to_sweep(plan, name="m")
    merged = sweep.merge(["train.lr_min_ratio=0.05", "runs.0.steps=123"])
    assert merged.train.lr_min_ratio == 0.05 and merged.runs[0].steps == 123
    with pytest.raises(ConfigError, match="train.lr_minimum"):
        sweep.merge(["train.lr_minimum=0.1"])


def test_ladder_fixes_sizes_across_budgets() -> None:
    # A fixed size ladder at matched compute (as nanochat's depth x FLOPs grid): every budget gets
    # the same shapes, each with its own token count.
    req = PlanRequest(budgets=(2e15, 2e16), ladder=(6e6, 12e6, 25e6, 50e6), **NO_GUARDS)
    plan = make_plan(req)
    shapes = [[(p.model.n_layer, p.model.d_model) for p in b.points] for b in plan.budgets]
    assert shapes[0] == shapes[1] and len(shapes[0]) == 4
    for p in plan.points:
        assert abs(6 * p.n_params * p.tokens / p.budget_flops - 1) < 0.02
    r = run_cli("plan", "--budget", "1e16", "--ladder", "1e8,-3")
    assert r.returncode == 2 and "--ladder" in r.stderr


def test_gpu_hours_count_the_work_done_whatever_c_counts() -> None:
    """Time comes from 6·N_total + attention FLOPs per token (as MFU counts them), so a study in
    non-embedding N or C = 6ND does not get time limits 2x too short; and the spec carries the
    plan's --max-epochs, so a point the plan kept is one the trainer accepts."""
    from scaling.plan import GPUS

    for params in ("total", "non-embedding"):
        req = PlanRequest(budgets=(1e17,), ladder=(2e7,), conventions=Conventions(params=params), max_epochs=9.0,
                          **NO_GUARDS)
        plan = make_plan(req)
        (p,) = plan.points
        work = flops_per_token(p.model, "total", "6nd+attn") * p.tokens
        assert p.gpu_hours == pytest.approx(work / (GPUS["h100"].peak_flops * 0.35) / 3600)
        assert to_sweep(plan).resolve(0).train.max_epochs == 9.0
    # Non-embedding C counts every matmul but attention's: the work exceeds it by the attention FLOPs
    # and the position table's 6·T·d only.
    extra = (12 * p.model.n_layer + 6) * p.model.d_model * p.model.context * p.tokens
    assert p.gpu_hours == pytest.approx((p.flops + extra) / (GPUS["h100"].peak_flops * 0.35) / 3600)


def test_models_beyond_one_gpus_memory_are_flagged() -> None:
    """At 1e25 FLOPs the grid's models need terabytes even at micro-batch 1: each row says so."""
    from scaling.plan import format_plan

    text = format_plan(make_plan(PlanRequest(budgets=(1e25,), sizes=5)))
    rows = [ln for ln in text.splitlines() if ln.startswith("C1e25_")]
    assert len(rows) == 5 and all(ln.endswith(" M") for ln in rows)
    assert "M needs more than one NVIDIA H100 SXM's 80 GiB at micro-batch 1" in text
    small = format_plan(make_plan(PlanRequest(budgets=(1e18,))))
    assert "M needs" not in small and not any(ln.endswith(" M") for ln in small.splitlines())


# ----------------------------------------------------------------------------- guards


def test_gpt2_vocab_at_1e15_is_a_one_line_error_naming_the_fix() -> None:
    """The issue's case: at 1e15 FLOPs every size of the grid is >= 88% embedding with 50,257 tokens
    (a 1 x 64 "3.3M" model has 50K non-embedding parameters): no point, one line, exit 2."""
    r = run_cli("plan", "--budget", "1e15", "--vocab", "50257")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "embedding-dominated" in line and "bpe:VOCAB" in line and "--max-embedding-fraction 1" in line


def test_guards_drop_exactly_the_violators_and_bracket_n_opt() -> None:
    """At 1e18 with GPT-2's vocabulary: the kept sizes are the raw grid's sizes that pass both
    guards, plus one size added below N_opt (the embedding guard dropped that side), so the kept
    sizes bracket N_opt; each guard that fired adds one note naming its fix."""
    raw = make_plan(PlanRequest(budgets=(1e18,), **NO_GUARDS))
    plan = make_plan(PlanRequest(budgets=(1e18,)))
    (b,) = plan.budgets
    share = lambda p: count_params(p.model)["embedding"] / p.n_params_total  # noqa: E731
    passing = [p.name for p in raw.points if share(p) <= 0.5 and p.tokens_per_param >= 5]
    failing = [p.name for p in raw.points if p.name not in passing]
    assert len(passing) == 2 and len(failing) == 5  # 3 embedding-dominated, 2 below 5 tokens/param
    kept = [p.name for p in b.points]
    assert set(passing) < set(kept) and not set(failing) & set(kept)
    (added,) = set(kept) - set(passing)
    assert all(share(p) <= 0.5 and p.tokens_per_param >= 5 for p in b.points)
    n_opt = b.compute_optimal["chinchilla_approach3"]["n_params"]
    ns = [p.n_params for p in b.points]
    assert min(ns) < n_opt < max(ns) and next(p for p in b.points if p.name == added).n_params < n_opt
    assert sorted(d.split(":")[0] for d in b.dropped) == sorted(failing)
    assert len(b.notes) == 2 and "bpe:VOCAB" in b.notes[0] and "--min-tokens-per-param 0" in b.notes[1]
    assert raw.budgets[0].notes == []


def test_unbracketed_budget_is_noted_with_the_fix() -> None:
    """At 1e15 with an 8192 vocabulary no size below N_opt passes the embedding guard, not even
    the sizes tried between N_opt and its dropped neighbour: two sizes are left and the notes say
    that they do not bracket N_opt and name the fix."""
    (b,) = make_plan(PlanRequest(budgets=(1e15,), vocab_size=8192)).budgets
    assert len(b.points) == 2
    text = " | ".join(b.notes)
    assert "do not bracket N_opt" in text and "no size below it" in text and "only 2 size(s) left" in text
    assert "bpe:VOCAB" in text


def test_floor_flag_drops_below_it() -> None:
    for floor in (5.0, 20.0):
        plan = make_plan(PlanRequest(budgets=(1e19,), min_tokens_per_param=floor))
        assert all(p.tokens_per_param >= floor for p in plan.points)
        assert any(f"< --min-tokens-per-param {floor:g}" in d for d in plan.budgets[0].dropped)
