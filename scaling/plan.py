"""Planner: a compute budget in, a concrete matched-compute (IsoFLOP) sweep out.

Pure functions from budgets to a grid of GPT shapes and token counts. The rules, each with
its source:

- Grid: ``sizes`` model sizes log-spaced over N_opt/spread .. N_opt·spread around the
  compute-optimal N of a published law (default Chinchilla Approach 3), as in the IsoFLOP
  profiles of Hoffmann et al. 2022 (Sec. 3.2).
- Shape: head width 64, d_model a multiple of it, d_ff = 4·d_model, and depth chosen so that
  d_model / n_layer is near ``aspect`` (64 as in GPT-2 small, 768/12; Kaplan et al. 2020,
  Fig. 5, find loss flat within a wide band of aspect ratios), matching the target N as
  closely as the integer shape allows.
- Tokens: D = C / flops_per_token(N), rounded to whole optimizer steps of batch × context;
  C is recomputed from the rounded D.
- Batch: B_opt(C) = 0.292·C^0.3271 tokens (DeepSeek-AI 2024, "DeepSeek LLM", Eq. 1), rounded
  to a power-of-two number of sequences and shrunk until every run has ``min_steps`` steps.
- Peak LR: the ``--lr-rule`` file's fitted c · N^-k (``scaling tune-lr``); without one the
  fallback ``rules.DEFAULT_LR_RULE``, 6e-4 · (124M / N_total)^0.5 (GPT-3 Small's peak LR scaled
  by 1/sqrt(N), a heuristic, not fitted). Adam β2: ``--beta2``, else the rule's (0.95 by default).
- Warmup (``WARMUP_RULE``): N_total tokens (Porian et al. 2024, Sec. 3.4) in whole steps, capped
  at ``WARMUP_CAP`` = 10% of the run so that a short run keeps most of its steps near the peak;
  the table marks every point where the cap binds.
- Memory: 16 bytes/parameter (fp32 weights, grads, two Adam moments) plus bf16 activations of
  34·d·L bytes per token (Korthikanti et al. 2022, Eq. 2, with fused attention dropping the
  T×T term) and 12·V bytes per token of logits (bf16 logits, their fp32 copy for the loss, and
  the gradients of both), plus 1 GiB of CUDA context.
- Data: points repeating data more than ``max_epochs`` times are flagged or dropped (Muennighoff
  et al. 2023 find up to ~4 epochs nearly as good as fresh data).
- Guards (on by default; each drop is listed and each guard that fired adds one note naming the
  fix): a point whose embedding + head parameters exceed ``max_embedding_fraction`` (0.5) of
  N_total is dropped — its loss measures the vocabulary table more than the transformer that the
  law extrapolates (at 1e15 FLOPs GPT-2's 50,257 tokens make a 1 x 64 "3.3M" model 98% table);
  so is a point below ``min_tokens_per_param`` (5) tokens per parameter (``MIN_TOKENS_PER_PARAM``).
  Then each budget's sizes must bracket the centre law's N_opt: where the drops left no size on
  one side, one size between N_opt and the dropped neighbour is added if it passes the guards;
  otherwise a note says so and names the fix.
- Branching (``--branching``, Hägele et al. 2024): without ``--ladder``, each budget's sizes snap
  to one log ladder shared by all budgets (same spacing, centred within half a rung), so a size
  recurs at several token counts; each size gets one batch (the smallest its budgets chose:
  powers of two, so every D stays whole steps) and one warmup, and the spec has one WSD trunk
  per size with a cooldown branch per point instead of a from-scratch run per point.
  ``--shared-sizes`` plans the same points as from-scratch runs: the baseline to compare against.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from scaling.config import (
    BranchGroup,
    BranchPoint,
    Conventions,
    DataConfig,
    ModelConfig,
    RunConfig,
    SweepConfig,
    SweepPoint,
    TrainConfig,
    branch_costs,
)
from scaling.errors import ConfigError
from scaling.laws import PUBLISHED_LAWS
from scaling.model import count_params, flops_formula, flops_per_token
from scaling.rules import DEFAULT_LR_RULE, LrRule, load_lr_rule

__all__ = [
    "GPU",
    "GPUS",
    "GPU_PEAK_FLOPS",
    "MIN_TOKENS_PER_PARAM",
    "MAX_EMBEDDING_FRACTION",
    "peak_flops",
    "PlanRequest",
    "PlanPoint",
    "BudgetPlan",
    "Plan",
    "parse_budgets",
    "shape_for",
    "memory_bytes",
    "gpu_hours",
    "estimate_hours",
    "make_plan",
    "locates_minimum",
    "format_plan",
    "to_sweep",
    "request_from_args",
    "branched_flops",
    "WARMUP_RULE",
    "WARMUP_CAP",
    "warmup_capped",
]

GIB = 2**30
# Tokens per parameter below which a point is dropped. Gadre et al. 2024 ("Language models scale
# reliably with over-training and on downstream tasks") find fits that lean on token multipliers
# M = D/N <= 5 unreliable. 5 and not higher: at Chinchilla's ~20 tokens/param a floor of 5 sits at
# N = 2·N_opt (D/N falls as 1/N^2 at fixed C), the grid's 2x edge, and a higher one would cut the
# sizes above N_opt that an IsoFLOP parabola needs to bracket its minimum.
MIN_TOKENS_PER_PARAM = 5.0
# Largest share of N_total the embedding and output tables may hold (the "half of N").
MAX_EMBEDDING_FRACTION = 0.5
_EMBEDDING_FIX = ("use a smaller vocabulary (scaling prepare --tokenizer bpe:VOCAB, then plan --data or --vocab), "
                  "a larger budget, or --max-embedding-fraction 1 to keep them")
_FLOOR_FIX = "use a smaller --spread, or --min-tokens-per-param 0 to keep them"
COOLDOWN_SHAPES = ("1-sqrt", "linear", "cosine")  # the WSD decay shapes the trainer knows


# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from NVIDIA's data sheets, matched as a
# substring of torch.cuda.get_device_name(); more specific names first ("H100 PCIe" before
# "H100", "L40S" before "L4").
GPU_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),
    ("L4", 121e12),
)

def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU by name (``GPU_PEAK_FLOPS``); None if unknown or CPU."""
    if not device_name:
        return None
    name = device_name.upper()
    return next((peak for key, peak in GPU_PEAK_FLOPS if key.upper() in name), None)


@dataclass(frozen=True)
class GPU:
    """A GPU for time and cost estimates. ``price_per_hour`` is an assumption, not a quote."""

    name: str
    memory_bytes: float
    price_per_hour: float  # assumed on-demand USD per GPU-hour; override with --price-per-hour

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s, from the same table the trainer's MFU uses (``GPU_PEAK_FLOPS``)."""
        peak = peak_flops(self.name)
        assert peak is not None, f"{self.name} is missing from GPU_PEAK_FLOPS"
        return peak


GPUS: dict[str, GPU] = {
    "h100": GPU("NVIDIA H100 SXM", 80 * GIB, 2.50),
    "h200": GPU("NVIDIA H200", 141 * GIB, 3.50),
    "a100": GPU("NVIDIA A100 SXM 80GB", 80 * GIB, 1.50),
    "l40s": GPU("NVIDIA L40S", 48 * GIB, 1.00),
    "rtx4090": GPU("NVIDIA RTX 4090", 24 * GIB, 0.40),
}


@dataclass(frozen=True)
class PlanRequest:
    """What the planner is asked; every field has the CLI flag's default."""

    budgets: tuple[float, ...]
    sizes: int = 7
    spread: float = 4.0
    ladder: tuple[float, ...] = ()  # fixed model sizes N for every budget, instead of sizes/spread
    conventions: Conventions = field(default_factory=Conventions)
    context: int = 1024
    vocab_size: int = 50257
    aspect: int = 64
    head_dim: int = 64
    center: str = "chinchilla_approach3"
    gpu: str = "h100"
    mfu: float = 0.35
    price_per_hour: float | None = None
    unique_tokens: float | None = None
    max_epochs: float = 4.0
    drop_repeated: bool = False
    min_steps: int = 200
    shared_sizes: bool = False  # sizes on one ladder across budgets, one batch/warmup per size
    branching: bool = False  # shared sizes, written as a wsd-branch spec (trunk + cooldown branches)
    cooldown_fraction: float = 0.2
    cooldown_shape: Literal["1-sqrt", "linear", "cosine"] = "1-sqrt"
    max_embedding_fraction: float = MAX_EMBEDDING_FRACTION  # 1 keeps embedding-dominated points
    min_tokens_per_param: float = MIN_TOKENS_PER_PARAM  # 0 keeps every D/N
    lr_rule: LrRule = DEFAULT_LR_RULE  # peak LR by size (scaling tune-lr writes one)
    beta2: float | None = None  # Adam β2; None: the LR rule's (the β2 its LR was fitted at)

    @property
    def adam_beta2(self) -> float:
        """The β2 the plan's runs train with: ``beta2`` if given, else the LR rule's."""
        return self.lr_rule.beta2 if self.beta2 is None else self.beta2

    def validate(self) -> None:
        """Raise one ConfigError naming the flag and the fix for the first bad value."""
        checks = [
            (bool(self.budgets), "--budget: give at least one compute budget, e.g. --budget 1e18"),
            (all(b > 0 and math.isfinite(b) for b in self.budgets), "--budget: budgets must be positive FLOPs, e.g. 1e18"),
            (len(set(self.budgets)) == len(self.budgets), "--budgets: list each budget once (one is repeated)"),
            (5 <= self.sizes <= 9, f"--sizes: must be 5-9 model sizes per budget (got {self.sizes})"),
            (all(n > 0 and math.isfinite(n) for n in self.ladder),
             "--ladder: model sizes must be positive parameter counts, e.g. 6e6,12e6,25e6,50e6"),
            (self.spread > 1, f"--spread: must be > 1, e.g. 4 for N_opt/4..4·N_opt (got {self.spread})"),
            (self.context > 0, f"--context: must be a positive sequence length (got {self.context})"),
            (self.vocab_size > 0, f"--vocab: must be a positive vocabulary size (got {self.vocab_size})"),
            (self.head_dim > 0 and self.aspect > 0, "--head-dim, --aspect: must be positive"),
            (self.gpu in GPUS, f"--gpu: unknown GPU {self.gpu!r}; use one of {', '.join(GPUS)}"),
            (0 < self.mfu <= 1, f"--mfu: must be in (0, 1], e.g. 0.35 (got {self.mfu})"),
            (self.center in PUBLISHED_LAWS, f"--center: unknown law {self.center!r}; use one of {', '.join(PUBLISHED_LAWS)}"),
            (self.min_steps >= 1, f"--min-steps: must be >= 1 (got {self.min_steps})"),
            (0 < self.cooldown_fraction < 1,
             f"--cooldown-fraction: must be in (0, 1), e.g. 0.2 (got {self.cooldown_fraction})"),
            (self.cooldown_shape in COOLDOWN_SHAPES,
             f"--cooldown-shape: use one of {', '.join(COOLDOWN_SHAPES)} (got {self.cooldown_shape!r})"),
            (0 < self.max_embedding_fraction <= 1,
             f"--max-embedding-fraction: must be in (0, 1], e.g. 0.5; 1 turns the guard off "
             f"(got {self.max_embedding_fraction})"),
            (0 <= self.min_tokens_per_param < math.inf,
             f"--min-tokens-per-param: must be >= 0, e.g. 5; 0 turns the floor off (got {self.min_tokens_per_param})"),
            (self.beta2 is None or 0 <= self.beta2 < 1, f"--beta2: must be in [0, 1), e.g. 0.95 (got {self.beta2})"),
            (self.beta2 is None or self.lr_rule.vocab_size is None or self.beta2 == self.lr_rule.beta2,
             f"--beta2: {self.beta2} differs from the β2 {self.lr_rule.beta2} the --lr-rule was fitted at (the best "
             "LR moves with β2); leave --beta2 out, or fit a rule at this β2 with scaling tune-lr --beta2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.lr_rule.check(self.vocab_size)


@dataclass(frozen=True)
class PlanPoint:
    """One planned run: its shape, horizon, settings and estimates."""

    name: str
    budget_flops: float
    model: ModelConfig
    n_params_total: int
    n_params_nonembedding: int
    n_params: int  # under the plan's convention
    tokens: int
    steps: int
    batch_size: int  # sequences per optimizer step
    micro_batch_size: int
    batch_tokens: int
    flops: float  # C actually spent: flops_per_token · tokens, under the plan's conventions
    flops_ratio: float  # flops / budget
    tokens_per_param: float  # tokens / n_params (plan's convention)
    lr_peak: float
    warmup_steps: int
    gpu_hours: float
    cost_usd: float
    memory_gib: float
    epochs: float | None  # tokens / unique tokens, when known
    repeated: bool  # epochs > max_epochs


@dataclass(frozen=True)
class BudgetPlan:
    """The IsoFLOP grid for one budget and what published laws say is optimal there."""

    budget_flops: float
    compute_optimal: dict[str, dict[str, Any]]
    points: list[PlanPoint]
    dropped: list[str]
    notes: list[str] = field(default_factory=list)  # one line per guard that fired, naming the fix


@dataclass(frozen=True)
class Plan:
    """A full plan: the request, the GPU used for estimates, and one BudgetPlan per budget."""

    request: PlanRequest
    gpu: GPU
    budgets: list[BudgetPlan]

    @property
    def points(self) -> list[PlanPoint]:
        return [p for b in self.budgets for p in b.points]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``scaling plan --json``)."""
        req = dataclasses.asdict(self.request)
        return {
            "conventions": {
                **req.pop("conventions"),
                "flops_formula": flops_formula(self.request.conventions.params, self.request.conventions.flops),
                "tokens_per_param": "tokens / N under the params convention",
                "why": _CONVENTION_WHY,
            },
            "request": req,
            "gpu": dataclasses.asdict(self.gpu) | {"mfu": self.request.mfu, "price_per_hour": self.price_per_hour},
            "totals": {
                "runs": len(self.points),
                "flops": sum(p.flops for p in self.points),
                "gpu_hours": sum(p.gpu_hours for p in self.points),
                "cost_usd": sum(p.cost_usd for p in self.points),
                **({"flops_branched": branched_flops(self)}
                   if self.request.branching or self.request.shared_sizes else {}),
            },
            "budgets": [dataclasses.asdict(b) for b in self.budgets],
        }

    @property
    def price_per_hour(self) -> float:
        return self.request.price_per_hour if self.request.price_per_hour is not None else self.gpu.price_per_hour


_CONVENTION_WHY = (
    "N counts total parameters by default because the published fits the plan compares against "
    "(Hoffmann et al. 2022, Besiroglu et al. 2024) count them that way; at small scale the "
    "non-embedding count (Kaplan et al. 2020) biases exponents (Pearce & Song 2024). Both counts "
    "are recorded for every point."
)


def parse_budgets(text: str, flag: str = "--budgets") -> tuple[float, ...]:
    """Parse ``1e16,3e16,1e17`` or a log range ``START:STOP:COUNT`` into numbers, each finite and > 0.

    Raises
    ------
    ConfigError
        Naming ``flag``: the text does not parse, or a value is not a finite number > 0.
    """
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            ends, n = (float(start), float(stop)), int(count)
            if n < 1:
                raise ValueError
        else:
            ends, n = tuple(float(x) for x in text.split(",") if x.strip()), 0
    except ValueError:
        raise ConfigError(
            f"{flag}: cannot read {text!r}; give a comma list (1e16,3e16,1e17) "
            "or a log range START:STOP:COUNT (1e16:1e18:5)"
        ) from None
    bad = [v for v in ends if not 0 < v < math.inf]  # 0, negatives, nan, and 1e400 (= inf)
    if bad:
        raise ConfigError(f"{flag}: every value must be a finite number > 0 (got {', '.join(f'{v:g}' for v in bad)} "
                          f"in {text!r})")
    if not n:
        return ends
    lo, hi = ends
    return (lo,) if n == 1 else tuple(lo * (hi / lo) ** (i / (n - 1)) for i in range(n))


def _budget_tags(budgets: tuple[float, ...]) -> dict[float, str]:
    """Each budget's tag in run names: ``1e16`` as ``f"{C:.0e}"`` writes it, with more significant
    digits only where the plan's budgets would otherwise share a tag (``1e16``, ``1.3e16``, ...).

    The digits are the fewest that tell the plan's budgets apart, so a plan that one digit already
    told apart keeps the names, and with them the run ids, it always had.
    """

    def tag(budget: float, digits: int) -> str:
        mantissa, exponent = f"{budget:.{digits - 1}e}".split("e")
        if "." in mantissa:  # 1.00e16 -> 1e16: trailing zeros tell no budgets apart
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{exponent}".replace("+", "")

    # 17 significant digits tell any two doubles apart, so some count always does.
    tags = ({b: tag(b, digits) for b in budgets} for digits in range(1, 18))
    return next(t for t in tags if len(set(t.values())) == len(t))


def shape_for(n_target: float, req: PlanRequest) -> ModelConfig:
    """The GPT shape whose N (under the request's convention) is closest to ``n_target``.

    Among depths 1..256, each with d_model the multiple of ``head_dim`` nearest to the target,
    pick the one minimising |log N/target| + 0.25·|log((d/L)/aspect)|: size first, then the
    aspect ratio as a tie-breaker between shapes of similar size.
    """
    best: tuple[float, ModelConfig] | None = None
    for n_layer in range(1, 257):
        for width in _widths_near(n_target, n_layer, req):
            cfg = _shape(n_layer, width * req.head_dim, req)
            n = count_params(cfg)["total" if req.conventions.params == "total" else "non_embedding"]
            aspect = cfg.d_model / n_layer
            cost = abs(math.log(n / n_target)) + 0.25 * abs(math.log(aspect / req.aspect))
            if best is None or cost < best[0]:
                best = (cost, cfg)
    assert best is not None
    return best[1]


def _shape(n_layer: int, d_model: int, req: PlanRequest) -> ModelConfig:
    return ModelConfig(
        n_layer=n_layer,
        d_model=d_model,
        n_head=d_model // req.head_dim,
        d_ff=4 * d_model,
        context=req.context,
        vocab_size=req.vocab_size,
    )


def _widths_near(n_target: float, n_layer: int, req: PlanRequest) -> list[int]:
    """Head counts h (d_model = h·head_dim) whose N brackets the target at this depth."""
    # N grows monotonically with width at fixed depth: bisect for the crossing.
    key = "total" if req.conventions.params == "total" else "non_embedding"
    lo, hi = 1, 1
    while count_params(_shape(n_layer, hi * req.head_dim, req))[key] < n_target and hi < 4096:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_params(_shape(n_layer, mid * req.head_dim, req))[key] < n_target:
            lo = mid
        else:
            hi = mid
    return sorted({lo, hi})


def _batch_sequences(budget: float, context: int) -> int:
    """Power-of-two sequences per step nearest B_opt(C) = 0.292·C^0.3271 tokens (DeepSeek 2024)."""
    b_tokens = 0.292 * budget**0.3271
    return 2 ** max(0, round(math.log2(max(b_tokens / context, 1.0))))


def memory_bytes(cfg: ModelConfig, micro_batch: int) -> float:
    """Estimated peak GPU memory of training ``cfg`` at ``micro_batch`` (rule in module doc)."""
    per_token = 34 * cfg.d_model * cfg.n_layer + 12 * cfg.vocab_size
    return 16 * count_params(cfg)["total"] + micro_batch * cfg.context * per_token + GIB


# Tokens per micro-batch at most: the small models of a sweep already fill an H100's matrix
# units at 32k tokens (benchmarks/README.md), and smaller footprints let runs be packed.
MICRO_BATCH_TOKENS = 32768


def _micro_batch(cfg: ModelConfig, batch: int, gpu: GPU) -> int:
    """Largest power-of-two micro-batch dividing ``batch`` of at most MICRO_BATCH_TOKENS tokens
    that fits in 90% of GPU memory."""
    mb = batch
    while mb > 1 and (memory_bytes(cfg, mb) > 0.9 * gpu.memory_bytes or mb * cfg.context > MICRO_BATCH_TOKENS):
        mb //= 2
    return mb


def gpu_hours(model: ModelConfig, tokens: float, gpu: GPU, mfu: float) -> float:
    """Hours on one ``gpu`` to train ``model`` on ``tokens`` at model FLOPs utilisation ``mfu``.

    The work is counted as the trainer's MFU counts it, whatever conventions the study uses for
    C: every parameter and attention, 6·N_total + 12·L·d·T FLOPs per token (PaLM, App. B). A C in
    non-embedding N or without attention understates the work, and so would a time limit from it.
    """
    return flops_per_token(model, "total", "6nd+attn") * tokens / (gpu.peak_flops * mfu) / 3600


def estimate_hours(cfg: RunConfig, gpu: str = "h100", mfu: float = 0.35) -> float:
    """Estimated GPU-hours of one run (``gpu_hours``)."""
    if gpu not in GPUS:
        raise ConfigError(f"plan.gpu: unknown GPU {gpu!r}; use one of {', '.join(GPUS)}")
    return gpu_hours(cfg.model, cfg.tokens, GPUS[gpu], mfu)


WARMUP_CAP = 0.1
WARMUP_RULE = (f"warmup = N_total tokens (Porian et al. 2024) in whole steps (>= 1), capped at "
               f"{WARMUP_CAP:.0%} of the run's steps")


def _warmup_steps(n_total: int, batch_tokens: int, steps: int) -> int:
    """Warmup by ``WARMUP_RULE``: N_total tokens in whole steps, at most ``WARMUP_CAP`` of the run."""
    return min(max(1, math.ceil(n_total / batch_tokens)), int(steps * WARMUP_CAP))


def warmup_capped(p: PlanPoint) -> bool:
    """True when ``p`` warms up for fewer steps than N_total tokens: the cap (or, for shared
    sizes, a shorter point of the same shape) cut it."""
    return p.warmup_steps < math.ceil(p.n_params_total / p.batch_tokens)


def _on_ladder(targets: list[float], req: PlanRequest) -> list[float]:
    """Move each target N to the nearest rung of one log ladder shared by every budget.

    The rungs have the grid's own spacing, spread^(2/(sizes-1)), from N_opt of the smallest
    budget; each budget's targets are that spacing apart, so they land on consecutive rungs.
    """
    anchor, _ = PUBLISHED_LAWS[req.center].optimal(min(req.budgets))
    rung = 2 * math.log(req.spread) / (req.sizes - 1)
    return [anchor * math.exp(rung * round(math.log(t / anchor) / rung)) for t in targets]


def _share_size_settings(budgets: list[BudgetPlan]) -> list[BudgetPlan]:
    """Give every point of a shape the same batch and warmup, so one trunk can serve them all.

    The batch is the smallest any of its budgets chose: batches are powers of two, so each D
    stays a whole number of steps and no point falls below ``min_steps``. The warmup is the
    shortest of the points' own.
    """
    by_shape: dict[tuple[int, int], list[PlanPoint]] = {}
    for p in (p for b in budgets for p in b.points):
        by_shape.setdefault((p.model.n_layer, p.model.d_model), []).append(p)
    shared: dict[tuple[int, int], tuple[PlanPoint, int]] = {}
    for key, pts in by_shape.items():
        small = min(pts, key=lambda p: p.batch_size)
        assert all(p.tokens % small.batch_tokens == 0 for p in pts), "plan batches are powers of two"
        warmup = min(_warmup_steps(p.n_params_total, small.batch_tokens, p.tokens // small.batch_tokens) for p in pts)
        shared[key] = (small, warmup)

    def share(p: PlanPoint) -> PlanPoint:
        small, warmup = shared[(p.model.n_layer, p.model.d_model)]
        return dataclasses.replace(p, batch_size=small.batch_size, micro_batch_size=small.micro_batch_size,
                                   batch_tokens=small.batch_tokens, steps=p.tokens // small.batch_tokens,
                                   warmup_steps=warmup, memory_gib=small.memory_gib)

    return [dataclasses.replace(b, points=[share(p) for p in b.points]) for b in budgets]


def make_plan(req: PlanRequest) -> Plan:
    """Plan an IsoFLOP grid for every budget of ``req``; raise ConfigError on bad input."""
    req.validate()
    gpu = GPUS[req.gpu]
    tags = _budget_tags(req.budgets)
    budgets = [_plan_budget(budget, tags[budget], req, gpu) for budget in req.budgets]
    if req.shared_sizes or req.branching:
        budgets = _share_size_settings(budgets)
    if not any(b.points for b in budgets):
        smallest = min(req.budgets)
        tiny = _shape(1, req.head_dim, req)
        need = flops_per_token(tiny, req.conventions.params, req.conventions.flops) * req.context * req.min_steps
        if smallest < need:
            raise ConfigError(
                f"--budget: {smallest:.3g} FLOPs is too small for the smallest shape at context "
                f"{req.context} and {req.min_steps} steps; raise --budget above {need:.2g}, or lower "
                "--context / --min-steps / --vocab"
            )
        # The budget fits a model: the guards, the sizes asked for or the data left no point. Say which.
        reasons = [r for b in budgets for r in b.dropped]
        embedded, below = sum(_EMBEDDED in r for r in reasons), sum(_BELOW_FLOOR in r for r in reasons)
        if embedded or below:
            counts = [f"{embedded} embedding-dominated (embedding + head > {req.max_embedding_fraction:.0%} of N_total "
                      f"at vocabulary {req.vocab_size})"] if embedded else []
            counts += [f"{below} below {req.min_tokens_per_param:g} tokens/param"] if below else []
            fix = _EMBEDDING_FIX if embedded else _FLOOR_FIX
            raise ConfigError(f"no run is left to plan: of {len(reasons)} sizes, {', '.join(counts)}; {fix}"
                              + ("; or --min-tokens-per-param 0" if embedded and below else ""))
        more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
        raise ConfigError(f"no run is left to plan: {'; '.join(reasons[:3])}{more}; change --ladder / --sizes, "
                          "--min-steps, or --max-epochs / --unique-tokens")
    return Plan(req, gpu, budgets)


_EMBEDDED = "of N_total in embedding + head"  # the two guards' drop reasons contain these
_BELOW_FLOOR = "tokens/param < --min-tokens-per-param"


def _plan_budget(budget: float, tag: str, req: PlanRequest, gpu: GPU) -> BudgetPlan:
    """One budget's grid: shapes around the centre law's N_opt (or the ladder), one batch size,
    the points the guards keep, a bracketing size added where the drops removed one side, notes."""
    center_n, _ = PUBLISHED_LAWS[req.center].optimal(budget)
    targets = list(req.ladder) or [center_n * req.spread ** (2 * i / (req.sizes - 1) - 1) for i in range(req.sizes)]
    if (req.shared_sizes or req.branching) and not req.ladder:
        targets = _on_ladder(targets, req)
    shapes: list[ModelConfig] = []
    for t in targets:
        s = shape_for(t, req)
        if _n(s, req) < t / 2:  # the search's largest shapes (256 layers) fall short
            raise ConfigError(
                f"--budget: {budget:.3g} FLOPs asks for models of {t:.3g} parameters, more than twice the "
                f"largest shape the planner builds here ({s.n_layer} x {s.d_model}); lower --budget, or "
                "give --ladder sizes")
        if s not in shapes:
            shapes.append(s)
    # One batch size per budget, small enough that the largest model still gets min_steps.
    seqs = _batch_sequences(budget, req.context)
    min_tokens = min(budget / flops_per_token(s, req.conventions.params, req.conventions.flops) for s in shapes)
    while seqs > 1 and min_tokens / (seqs * req.context) < req.min_steps:
        seqs //= 2
    points: list[PlanPoint] = []
    dropped: list[str] = []
    for s in shapes:
        got = _plan_point(s, budget, tag, seqs, req, gpu)
        (points if isinstance(got, PlanPoint) else dropped).append(got)  # type: ignore[arg-type]
    # The grid's own sizes are fixed by --ladder, and by the shared ladder of --branching.
    if not (req.ladder or req.shared_sizes or req.branching):
        points = _bracket(points, shapes, center_n, budget, tag, seqs, req, gpu)
    notes = _guard_notes(dropped, points, center_n, req)
    optimal = {}
    for key, law in PUBLISHED_LAWS.items():
        n_opt, d_opt = law.optimal(budget)
        optimal[key] = {"name": law.name, "n_params": n_opt, "tokens": d_opt, "tokens_per_param": d_opt / n_opt,
                        "params_convention": law.params_convention, "source": law.source}
    return BudgetPlan(budget, optimal, points, dropped, notes)


def _n(s: ModelConfig, req: PlanRequest) -> int:
    """N of shape ``s`` under the request's params convention."""
    return count_params(s)["total" if req.conventions.params == "total" else "non_embedding"]


def _plan_point(s: ModelConfig, budget: float, tag: str, seqs: int, req: PlanRequest,
                gpu: GPU) -> PlanPoint | str:
    """The run of shape ``s`` at ``budget`` with ``seqs`` sequences per step, or why it is dropped."""
    counts = count_params(s)
    name = f"C{tag}_{s.n_layer}x{s.d_model}"
    fpt = flops_per_token(s, req.conventions.params, req.conventions.flops)
    steps = round(budget / fpt / (seqs * req.context))
    if steps < req.min_steps:
        return (f"{s.n_layer}x{s.d_model}: only {steps} steps of {seqs}x{req.context} tokens "
                f"(< --min-steps {req.min_steps})")
    share = counts["embedding"] / counts["total"]
    if share > req.max_embedding_fraction:
        return f"{name}: {share:.0%} {_EMBEDDED} (> --max-embedding-fraction {req.max_embedding_fraction:g})"
    tokens = steps * seqs * req.context
    n = _n(s, req)
    if tokens / n < req.min_tokens_per_param:
        return f"{name}: {tokens / n:.1f} {_BELOW_FLOOR} {req.min_tokens_per_param:g}"
    epochs = tokens / req.unique_tokens if req.unique_tokens else None
    repeated = epochs is not None and epochs > req.max_epochs
    if repeated and req.drop_repeated:
        return f"{name}: {epochs:.1f} epochs of data > --max-epochs {req.max_epochs:g}"
    hours = gpu_hours(s, tokens, gpu, req.mfu)
    price = req.price_per_hour if req.price_per_hour is not None else gpu.price_per_hour
    mb = _micro_batch(s, seqs, gpu)
    return PlanPoint(
        name=name, budget_flops=budget, model=s, n_params_total=counts["total"],
        n_params_nonembedding=counts["non_embedding"], n_params=n, tokens=tokens, steps=steps, batch_size=seqs,
        micro_batch_size=mb, batch_tokens=seqs * req.context, flops=fpt * tokens, flops_ratio=fpt * tokens / budget,
        tokens_per_param=tokens / n, lr_peak=req.lr_rule.lr_peak(counts),
        warmup_steps=_warmup_steps(counts["total"], seqs * req.context, steps), gpu_hours=hours,
        cost_usd=hours * price, memory_gib=memory_bytes(s, mb) / GIB, epochs=epochs, repeated=repeated)


def _bracket(points: list[PlanPoint], shapes: list[ModelConfig], center_n: float, budget: float, tag: str,
             seqs: int, req: PlanRequest, gpu: GPU) -> list[PlanPoint]:
    """``points`` plus, on each side of ``center_n`` where none is left (``_beyond``), the first size
    between N_opt and its dropped neighbour (3/4, 1/2, 1/4 of a grid step from N_opt) that the
    guards keep."""
    step = req.spread ** (2 / (req.sizes - 1))
    out = list(points)
    for side in (-1, 1):
        if any(_beyond(p.n_params, center_n, side, req) for p in out):
            continue
        for frac in (0.75, 0.5, 0.25):
            s = shape_for(center_n * step ** (side * frac), req)
            if s in shapes or not _beyond(_n(s, req), center_n, side, req):
                continue
            got = _plan_point(s, budget, tag, seqs, req, gpu)
            if isinstance(got, PlanPoint):
                out.append(got)
                break
    return sorted(out, key=lambda p: p.n_params)


def locates_minimum(b: BudgetPlan, req: PlanRequest) -> bool:
    """Whether budget ``b``'s sizes can locate its IsoFLOP minimum: at least 3 (a parabola's
    parameters), with some on each side of the centre law's N_opt (by ``_beyond``'s margin)."""
    center_n = b.compute_optimal[req.center]["n_params"]
    ns = [p.n_params for p in b.points]
    return len(ns) >= 3 and all(any(_beyond(n, center_n, side, req) for n in ns) for side in (-1, 1))


def _beyond(n: float, center_n: float, side: int, req: PlanRequest) -> bool:
    """Whether size ``n`` lies on ``side`` (-1 below, +1 above) of N_opt by more than 1/8 of a grid
    step: a size within a hair of N_opt (shape rounding) brackets nothing."""
    return side * math.log(n / center_n) > math.log(req.spread) / (4 * (req.sizes - 1))


def _guard_notes(dropped: list[str], points: list[PlanPoint], center_n: float, req: PlanRequest) -> list[str]:
    """One line per guard that dropped sizes, and one if the sizes left do not bracket N_opt."""
    notes = []
    embedded = sum(_EMBEDDED in d for d in dropped)
    if embedded:
        notes.append(f"{embedded} size(s) dropped with embedding + head over {req.max_embedding_fraction:.0%} of "
                     f"N_total at vocabulary {req.vocab_size}: {_EMBEDDING_FIX}")
    below = sum(_BELOW_FLOOR in d for d in dropped)
    if below:
        notes.append(f"{below} size(s) dropped below {req.min_tokens_per_param:g} tokens/param (fits that lean on "
                     f"D/N <= 5 are unreliable, Gadre et al. 2024): {_FLOOR_FIX}")
    ns = [p.n_params for p in points]
    missing = [side for side in (-1, 1) if not any(_beyond(n, center_n, side, req) for n in ns)]
    if ns and missing:
        side = "below" if missing[0] < 0 else "above"
        fix = _EMBEDDING_FIX if side == "below" and embedded else (
            _FLOOR_FIX if side == "above" and below else "give sizes on both sides with --ladder, or a larger --spread")
        notes.append(f"sizes {_si(min(ns))}-{_si(max(ns))} do not bracket N_opt {_si(center_n)} ({req.center}): "
                     f"no size {side} it, so the IsoFLOP minimum may lie outside the grid; {fix}")
    if 0 < len(ns) < 3:
        notes.append(f"only {len(ns)} size(s) left: an IsoFLOP parabola needs 3; "
                     f"{_EMBEDDING_FIX if embedded else _FLOOR_FIX if below else 'give more --sizes'}")
    return notes


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def format_plan(plan: Plan) -> str:
    """The readable table ``scaling plan`` prints."""
    req = plan.request
    conv = req.conventions
    lines = [
        f"Conventions: N = {conv.params} parameters"
        f" ({'Hoffmann et al. 2022' if conv.params == 'total' else 'Kaplan et al. 2020'}); "
        f"C = {flops_formula(conv.params, conv.flops)}; tokens/param = D/N.",
        f"Estimates: {plan.gpu.name} at {plan.gpu.peak_flops / 1e12:.0f} TFLOP/s bf16 x MFU {req.mfu:.0%},"
        f" ${plan.price_per_hour:.2f}/GPU-hour (assumed; --price-per-hour to set); time counts"
        " 6·N_total + attention FLOPs per token, as MFU does.",
        f"LR: {req.lr_rule.lr_ref:.3g} · ({_si(req.lr_rule.n_ref)} / N_{req.lr_rule.params})^{req.lr_rule.k:.3g}"
        f" ({req.lr_rule.source}); Adam β2 {req.adam_beta2:g}; {WARMUP_RULE}.",
    ]
    header = (
        f"{'run':<18} {'L':>3} {'d':>5} {'H':>3} {'N':>7} {'N_ne':>7} {'D':>7} {'D/N':>6} "
        f"{'steps':>6} {'batch':>9} {'lr':>8} {'warm':>5} {'C/budget':>8} {'GPU-h':>7} {'cost$':>8} "
        f"{'mem GiB':>7}{'  epochs' if req.unique_tokens else ''}"
    )
    for b in plan.budgets:
        lines += ["", f"Budget {b.budget_flops:.3g} FLOPs — compute-optimal N, D by published fits:"]
        for v in b.compute_optimal.values():
            note = "" if v["params_convention"] == "total" else f" ({v['params_convention']} N)"
            lines.append(
                f"  {v['name']:<33} N {_si(v['n_params']):>7}  D {_si(v['tokens']):>7}"
                f"  D/N {v['tokens_per_param']:6.1f}{note}"
            )
        lines += ["", header]
        for p in b.points:
            m = p.model
            epochs = f"  {p.epochs:6.2f}{' !' if p.repeated else ''}" if p.epochs is not None else ""
            lines.append(
                f"{p.name:<18} {m.n_layer:>3} {m.d_model:>5} {m.n_head:>3} {_si(p.n_params_total):>7} "
                f"{_si(p.n_params_nonembedding):>7} {_si(p.tokens):>7} {p.tokens_per_param:>6.1f} "
                f"{p.steps:>6} {p.batch_size:>4}x{m.context:<4} {p.lr_peak:>8.2e} {p.warmup_steps:>5}{'*' if warmup_capped(p) else ' '}"
                f"{p.flops_ratio:>8.4f} {p.gpu_hours:>7.3g} {p.cost_usd:>8.2f} {p.memory_gib:>7.1f}"
                f"{' M' if p.memory_gib * GIB > plan.gpu.memory_bytes else ''}{epochs}"
            )
        for d in b.dropped:
            lines.append(f"  dropped {d}")
        for note in b.notes:
            lines.append(f"  note: {note}")
        if any(p.memory_gib * GIB > plan.gpu.memory_bytes for p in b.points):
            lines.append(f"  M needs more than one {plan.gpu.name}'s {plan.gpu.memory_bytes / GIB:.0f} GiB at "
                         "micro-batch 1: this trainer has no model parallelism (train it elsewhere or choose --gpu)")
        capped = [p for p in b.points if warmup_capped(p)]
        if capped:
            lines.append(f"  * warmup shorter than N_total tokens for {len(capped)} point(s): the {WARMUP_CAP:.0%} "
                         f"cap binds where D < {1 / WARMUP_CAP:g}·N_total"
                         f"{' (or a shorter point of the same size sets it)' if req.shared_sizes or req.branching else ''}")
        if any(p.repeated for p in b.points):
            lines.append(f"  ! repeats data more than {req.max_epochs:g} epochs (--drop-repeated to drop)")
    pts = plan.points
    lines += [
        "",
        f"Total: {len(pts)} runs, {sum(p.flops for p in pts):.3g} FLOPs, "
        f"{sum(p.gpu_hours for p in pts):.3g} GPU-hours, ${sum(p.cost_usd for p in pts):,.2f}",
    ]
    if req.branching or req.shared_sizes:
        flops, sizes = branched_flops(plan), {(p.model.n_layer, p.model.d_model) for p in pts}
        ratio = flops / sum(p.flops for p in pts)
        lines.append(
            f"Branched: {len(sizes)} WSD trunks + {len(pts)} {req.cooldown_fraction:.0%} {req.cooldown_shape} "
            f"cooldowns, {flops:.3g} FLOPs = {ratio:.2f}x that ({ratio * sum(p.gpu_hours for p in pts):.3g} "
            f"GPU-hours){'' if req.branching else '; --branching writes that spec'}")
    return "\n".join(lines)


def to_sweep(plan: Plan, name: str | None = None, data_path: str | None = None) -> SweepConfig:
    """The launchable sweep spec for a plan (``scaling plan --out sweeps/NAME.yaml``)."""
    runs = [SweepPoint(name=p.name, steps=p.steps, budget_flops=p.budget_flops, **_run_settings(p))
            for p in plan.points]
    req = dataclasses.asdict(plan.request)
    req.pop("conventions")
    branching = plan.request.branching
    return SweepConfig(
        name=name or "sweep",
        data=DataConfig(path=data_path or DataConfig().path),
        runs=[] if branching else runs,
        # The trainer refuses runs over its max_epochs: the plan's limit, so a point it kept trains.
        train=TrainConfig(schedule="wsd-branch" if branching else "cosine", max_epochs=plan.request.max_epochs,
                          beta2=plan.request.adam_beta2),
        conventions=plan.request.conventions,
        plan={**req, "budgets": list(plan.request.budgets), "ladder": list(plan.request.ladder),
              "flops_formula": flops_formula(plan.request.conventions.params, plan.request.conventions.flops),
              "warmup_rule": WARMUP_RULE},
        branches=_branch_groups(plan) if branching else [],
    ).check()


def _run_settings(p: PlanPoint) -> dict[str, Any]:
    """The shape and trainer settings the planner chose for ``p``, as a SweepPoint (one run) and a
    BranchGroup (one trunk, shared by every point of the shape) both take them."""
    return {"model": p.model, "batch_size": p.batch_size, "micro_batch_size": p.micro_batch_size,
            "lr_peak": p.lr_peak, "warmup_steps": p.warmup_steps}


def _branch_groups(plan: Plan) -> list[BranchGroup]:
    """The plan's points grouped by shape: one BranchGroup (one trunk) per size, smallest first."""
    by_shape: dict[tuple[int, int], list[PlanPoint]] = {}
    for p in sorted(plan.points, key=lambda p: (p.n_params_total, p.tokens)):
        by_shape.setdefault((p.model.n_layer, p.model.d_model), []).append(p)
    req = plan.request
    return [
        BranchGroup(name=f"{n_layer}x{d_model}", cooldown_fraction=req.cooldown_fraction,
                    cooldown_shape=req.cooldown_shape, **_run_settings(pts[0]),
                    points=[BranchPoint(tokens=p.tokens, name=p.name, budget_flops=p.budget_flops) for p in pts])
        for (n_layer, d_model), pts in by_shape.items()
    ]


def branched_flops(plan: Plan) -> float:
    """C the points of a ``--branching`` or ``--shared-sizes`` plan cost when branched: each size's
    trunk once plus every cooldown, under the plan's conventions (from scratch, the same points
    cost the sum of their ``flops``)."""
    sweep = to_sweep(dataclasses.replace(plan, request=dataclasses.replace(plan.request, branching=True)))
    total = 0.0
    for g, group in enumerate(sweep.branches):
        trunk = sweep.resolve_trunk(g)
        branches = [sweep.resolve_branch(g, j, "trunk") for j in range(len(group.points))]
        fpt = flops_per_token(group.model, plan.request.conventions.params, plan.request.conventions.flops)
        total += fpt * sum(branch_costs(trunk, branches))
    return total


def request_from_args(args: argparse.Namespace, budgets: tuple[float, ...] | None = None) -> PlanRequest:
    """Build a PlanRequest from ``scaling plan`` flags (reading --data's meta.json if given);
    ``budgets``, where given, instead of --budget / --budgets (``scaling.design`` chooses them)."""
    if budgets is None and args.budget is not None:
        budgets = (args.budget,)
    elif budgets is None and args.budgets:
        budgets = parse_budgets(args.budgets)
    elif budgets is None:
        raise ConfigError("--budget: give a compute budget, e.g. --budget 1e18 (or --budgets 1e16:1e18:5, "
                          "or --target-params N to plan the sweep for a model)")
    vocab, unique, tokenizer = args.vocab, args.unique_tokens, None
    if args.data:
        from scaling.data import load_meta

        meta = load_meta(args.data)
        vocab, tokenizer = meta["vocab_size"], meta["tokenizer"]
        unique = unique or float(meta["tokens"]["train"])
    rule = load_lr_rule(args.lr_rule) if args.lr_rule else DEFAULT_LR_RULE
    rule.check(vocab, tokenizer)
    parsed = {
        "budgets": budgets,
        "ladder": parse_budgets(args.ladder, flag="--ladder") if args.ladder else (),
        "conventions": Conventions(params=args.params, flops=args.flops),
        "vocab_size": vocab,
        "unique_tokens": unique,
        "lr_rule": rule,
    }
    # Every other field has a flag of its own name; getattr fails loudly on one the CLI lacks.
    same = {f.name: getattr(args, f.name) for f in dataclasses.fields(PlanRequest) if f.name not in parsed}
    return PlanRequest(**parsed, **same)
