"""Plan for a target: the model to predict in, the sweep that predicts it and its own spec out.

``scaling plan --target-params N [--target-tokens D | --target-ratio D/N] --out sweeps/X.yaml``
writes two specs: ``sweeps/X.yaml``, an IsoFLOP sweep whose results land in ``results/X``, and
``sweeps/X_target.yaml``, one run of the target model at its tokens (``results/X_target``), held
out of the sweep. The rules, each with its reason:

- Target: the planner's shape for N (``shape_for``), D given or ``tokens_per_param``·N (default
  20, Hoffmann et al. 2022's compute-optimal ratio), in whole steps of the planner's batch for
  its compute; C_target = flops_per_token · D under the plan's conventions.
- Budgets: ``n_budgets`` log-spaced over ``decades`` decades, the largest C_target /
  ``flops_factor`` (``FLOPS_FACTOR``). Each is an IsoFLOP grid with the planner's guards on.
- Data: with unique tokens known (``--unique-tokens`` or ``--data``) sweep points past
  ``--max-epochs`` are dropped, and a target past it is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.errors import ConfigError
from scaling.model import flops_per_token, n_params
from scaling.plan import (Plan, PlanRequest, format_plan, locates_minimum, make_plan, parse_budgets, request_from_args,
                          shape_for, to_sweep)

__all__ = ["FLOPS_FACTOR", "TOKENS_PER_PARAM", "TargetRequest", "TargetPlan", "plan_for_target", "format_target", "write_specs",
           "target_from_args"]

# The sweep's largest budget is C_target / 10. Prediction error grows with the distance
# extrapolated (issue #16: a fit of 2e15 + 6e15 predicting 2e16, 3x out, erred by 3-11%), so the
# sweep should sit as close as its cost allows: at /10 a 3-budget, 7-size sweep over one decade
# costs 7 · (1/10 + 1/31.6 + 1/100) = 0.99 target runs, so checking the prediction at most doubles
# the study; at /3 the same sweep would cost 3.3 target runs.
FLOPS_FACTOR = 10.0
TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: ~20 tokens per parameter at compute-optimal


@dataclass(frozen=True)
class TargetRequest:
    """The model to predict and how far below it the sweep sits; every field has the flag's default."""

    n_params: float  # under the plan's params convention
    tokens: float | None = None  # None: tokens_per_param · N
    tokens_per_param: float | None = None  # None (and no tokens): TOKENS_PER_PARAM
    flops_factor: float = FLOPS_FACTOR
    decades: float = 1.0
    n_budgets: int = 3

    def validate(self) -> None:
        """Raise one ConfigError naming the flag and the fix for the first bad value."""
        checks = [
            (self.n_params > 0 and math.isfinite(self.n_params), "--target-params: give the model's N, e.g. 1.2e8"),
            (self.tokens is None or self.tokens_per_param is None, "--target-tokens, --target-ratio: give one"),
            (self.tokens is None or self.tokens > 0, "--target-tokens: must be > 0, e.g. 2.5e9"),
            (self.tokens_per_param is None or self.tokens_per_param > 0, "--target-ratio: must be > 0, e.g. 20"),
            (self.flops_factor > 1, f"--target-factor: must be > 1 so the target stays out of the sweep, e.g. 10 "
                                    f"(got {self.flops_factor:g})"),
            (self.decades >= 1, f"--target-decades: the budgets must span at least 1 decade (got {self.decades:g})"),
            (self.n_budgets >= 2, f"--target-budgets: at least 2 budgets (got {self.n_budgets})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass(frozen=True)
class TargetPlan:
    """The sweep's plan, the target's one-point plan and what was asked."""

    request: TargetRequest
    sweep: Plan
    target: Plan

    @property
    def target_flops(self) -> float:
        return self.target.points[0].flops

    def provenance(self) -> dict[str, Any]:
        """What both specs record about the target (their ``plan.target``)."""
        p = self.target.points[0]
        return {"name": p.name, "n_params": p.n_params, "tokens": p.tokens, "flops": p.flops,
                "tokens_per_param": p.tokens_per_param, "flops_factor": self.request.flops_factor,
                "largest_budget": max(self.sweep.request.budgets)}


def plan_for_target(target: TargetRequest, base: PlanRequest) -> TargetPlan:
    """The sweep that predicts ``target`` and the target's own plan; ``base`` gives every other
    setting (its budgets and ladder are replaced). Raise ConfigError on bad input."""
    target.validate()
    model = shape_for(target.n_params, base)
    fpt = flops_per_token(model, base.conventions.params, base.conventions.flops)
    tokens = target.tokens or (target.tokens_per_param or TOKENS_PER_PARAM) * n_params(model, base.conventions.params)
    # The target is what the user asked for: no guard drops it, and it is never dropped for data
    # (an error below says so instead). Its batch, LR and warmup are the planner's for its C.
    one = dataclasses.replace(base, budgets=(fpt * tokens,), ladder=(target.n_params,), max_embedding_fraction=1.0,
                              min_tokens_per_param=0.0, drop_repeated=False, branching=False, shared_sizes=False)
    target_plan = make_plan(one)
    (point,) = target_plan.points
    if point.epochs is not None and point.epochs > base.max_epochs:
        raise ConfigError(f"--target-tokens: the target trains on {point.tokens:.3g} tokens, {point.epochs:.1f} epochs "
                          f"of the {base.unique_tokens:.3g} unique tokens (> --max-epochs {base.max_epochs:g}); "
                          "prepare more data, or give fewer --target-tokens / a smaller --target-params")
    top = point.flops / target.flops_factor
    budgets = parse_budgets(f"{top / 10 ** target.decades}:{top}:{target.n_budgets}", flag="--target-budgets")
    sweep = make_plan(dataclasses.replace(base, budgets=budgets, ladder=(),
                                          drop_repeated=base.drop_repeated or base.unique_tokens is not None))
    usable = [b for b in sweep.budgets if locates_minimum(b, sweep.request)]
    if len(usable) < 2:
        raise ConfigError(
            f"--target-params: after the guards only {len(usable)} of the sweep's {len(budgets)} budgets "
            f"({budgets[0]:.3g}-{budgets[-1]:.3g} FLOPs) keep 3 sizes around their N_opt (scaling plan --budgets "
            f"{budgets[0]:.3g}:{budgets[-1]:.3g}:{len(budgets)} shows why); use a smaller vocabulary (scaling prepare "
            "--tokenizer bpe:VOCAB, then --data or --vocab), a larger --target-params, or a smaller --target-factor")
    # Held out: every budget is at most C_target / flops_factor < C_target, so no sweep run is the target.
    assert all(p.flops < point.flops for p in sweep.points)
    return TargetPlan(target, sweep, target_plan)


def format_target(tp: TargetPlan) -> str:
    """The sweep's table, then one line for the held-out target."""
    p = tp.target.points[0]
    m = p.model
    return (f"{format_plan(tp.sweep)}\n\nTarget (held out): {p.name} {m.n_layer} x {m.d_model}, N {p.n_params:.3g}, "
            f"D {p.tokens:.3g} ({p.tokens_per_param:.1f} tokens/param), C {p.flops:.3g} FLOPs = "
            f"{p.flops / max(tp.sweep.request.budgets):.3g}x the largest budget; {p.gpu_hours:.3g} GPU-hours")


def write_specs(tp: TargetPlan, out: str | Path, data_path: str | None = None) -> tuple[Path, Path]:
    """Write ``out`` (the sweep, named by its file) and ``<stem>_target.yaml`` beside it (the
    target, named ``<stem>_target``), so results land in results/<stem> and results/<stem>_target."""
    out = Path(out)
    name = out.stem
    target_path = out.with_name(f"{name}_target{out.suffix or '.yaml'}")
    target = {**tp.provenance(), "sweep": name}
    sweep = to_sweep(tp.sweep, name=name, data_path=data_path)
    sweep = dataclasses.replace(sweep, plan={**sweep.plan, "target": target}).check()
    one = to_sweep(tp.target, name=f"{name}_target", data_path=data_path)
    one = dataclasses.replace(one, plan={**one.plan, "target": target}).check()
    sweep.save_yaml(out)
    one.save_yaml(target_path)
    return out, target_path


def target_from_args(args: argparse.Namespace) -> TargetPlan:
    """``scaling plan --target-params ...``: the TargetPlan for the flags given."""
    target = TargetRequest(n_params=args.target_params, tokens=args.target_tokens,
                           tokens_per_param=args.target_ratio, flops_factor=args.target_factor,
                           decades=args.target_decades, n_budgets=args.target_budgets)
    # The budgets are chosen here from the target; the base request's are a placeholder.
    return plan_for_target(target, request_from_args(args, budgets=(1.0,)))
