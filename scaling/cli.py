"""The ``scaling`` command: one subcommand per pipeline stage.

Each subcommand is a pair ``_add_NAME(subparsers)`` / ``_cmd_NAME(args) -> int``. Expected
failures are ``ScalingError``s: they print one line naming the field and the fix and exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from scaling.errors import ScalingError

__all__ = ["main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``scaling plan: error: argument --budget: ...``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _float_arg(flag: str, *, positive: bool = True) -> Callable[[str], float]:
    """An argparse type for a float flag whose error names the flag and the fix."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number like 1e18 (got {text!r})") from None
        if not math.isfinite(value):  # 1e400 parses as inf
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number like 1e18 (got {text!r})")
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} must be > 0 (got {text!r})")
        return value

    parse.__name__ = flag
    return parse


# ----------------------------------------------------------------------------- plan


def _add_plan(sub: argparse._SubParsersAction) -> None:
    from scaling import plan

    p = sub.add_parser("plan", help="IsoFLOP grid for compute budgets: shapes, tokens, GPU-hours, cost")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget", type=_float_arg("--budget"), help="one compute budget in FLOPs, e.g. 1e18")
    g.add_argument("--budgets", help="comma list (1e16,3e16,1e17) or log range START:STOP:COUNT (1e16:1e18:5)")
    g.add_argument("--target-params", type=_float_arg("--target-params"), default=None,
                   help="plan the sweep that predicts a model of this N (and write --out's _target spec for it)")
    p.add_argument("--sizes", type=int, default=7, help="model sizes per budget, 5-9 (default 7)")
    p.add_argument("--ladder", default=None,
                   help="fixed model sizes N for every budget instead of a grid around N_opt, e.g. 6e6,12e6,25e6,50e6")
    p.add_argument("--spread", type=_float_arg("--spread"), default=4.0,
                   help="grid spans N_opt/SPREAD .. N_opt*SPREAD (default 4)")
    _add_shape_options(p)
    p.add_argument("--vocab", type=int, default=50257, help="vocabulary size (default 50257, GPT-2)")
    p.add_argument("--center", default="chinchilla_approach3",
                   help=f"published law whose N_opt centres the grid: {', '.join(plan.PUBLISHED_LAWS)}")
    p.add_argument("--gpu", default="h100", help=f"GPU for time/cost estimates: {', '.join(plan.GPUS)}")
    p.add_argument("--mfu", type=_float_arg("--mfu"), default=0.35, help="assumed model FLOPs utilisation (default 0.35)")
    p.add_argument("--price-per-hour", type=_float_arg("--price-per-hour"), default=None,
                   help="USD per GPU-hour (default: the GPU table's assumed price)")
    p.add_argument("--unique-tokens", type=_float_arg("--unique-tokens"), default=None,
                   help="unique tokens available; points over --max-epochs are flagged")
    p.add_argument("--data", default=None, help="prepared data folder: reads unique tokens and vocab from meta.json")
    p.add_argument("--max-epochs", type=_float_arg("--max-epochs"), default=4.0,
                   help="data-repetition limit (default 4, Muennighoff et al. 2023)")
    p.add_argument("--drop-repeated", action="store_true", help="drop points over --max-epochs instead of flagging")
    p.add_argument("--min-steps", type=int, default=200, help="fewest optimizer steps per run (default 200)")
    p.add_argument("--max-embedding-fraction", type=_float_arg("--max-embedding-fraction"),
                   default=plan.MAX_EMBEDDING_FRACTION,
                   help="drop points whose embedding + head exceed this share of N_total (default 0.5; 1 keeps all)")
    p.add_argument("--min-tokens-per-param", type=_float_arg("--min-tokens-per-param", positive=False),
                   default=plan.MIN_TOKENS_PER_PARAM,
                   help="drop points below this D/N (default 5: Gadre et al. 2024 find fits on D/N <= 5 "
                        "unreliable; 0 keeps all)")
    p.add_argument("--lr-rule", default=None, metavar="FILE",
                   help="peak LR by size from a rule file of scaling tune-lr (default: the assumed "
                        "6e-4·(124M/N_total)^0.5)")
    p.add_argument("--beta2", type=_float_arg("--beta2", positive=False), default=None,
                   help="Adam β2 of the runs (default: the --lr-rule's, else 0.95)")
    p.add_argument("--name", default=None, help="sweep name in the spec (default: from --out)")
    p.add_argument("--out", default=None, help="write a launchable sweep spec, e.g. sweeps/NAME.yaml")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    _add_branching_options(p)
    _add_target_options(p)
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from scaling import plan

    if args.target_params is not None:
        return _cmd_plan_target(args)
    request = plan.request_from_args(args)
    result = plan.make_plan(request)
    if args.out:
        from pathlib import Path

        _check_out(args.out)
        # The sweep's name (and so its results folder) defaults to the spec's file name, as --help says.
        plan.to_sweep(result, name=args.name or Path(args.out).stem, data_path=args.data).save_yaml(args.out)
    if args.json:
        import json

        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(plan.format_plan(result))
        if args.out:
            print(f"\nwrote {args.out}  (launch it with: scaling launch {args.out})")
    return 0


def _cmd_plan_target(args: argparse.Namespace) -> int:
    """``scaling plan --target-params``: the sweep for a model, and (with --out) both specs."""
    from scaling import design

    result = design.target_from_args(args)
    if args.out:
        _check_out(args.out)
        paths = design.write_specs(result, args.out, data_path=args.data)
    if args.json:
        import json

        print(json.dumps({"sweep": result.sweep.to_dict(), "target": result.provenance()}, indent=1))
    else:
        print(design.format_target(result))
        if args.out:
            print(f"\nwrote {paths[0]} and {paths[1]}  (launch the sweep with: scaling launch {paths[0]}; "
                  f"the target with: scaling launch {paths[1]})")
    return 0


def _check_out(out: str) -> None:
    """--out must name the spec's file, not a folder."""
    from pathlib import Path

    from scaling.errors import ConfigError

    if Path(out).is_dir():
        raise ConfigError(f"--out {out}: is a folder; give the spec's file, e.g. sweeps/NAME.yaml")


def _add_target_options(p: argparse.ArgumentParser) -> None:
    """``scaling plan --target-params`` options: the target's tokens and where the sweep sits."""
    from scaling import design

    t = p.add_mutually_exclusive_group()
    t.add_argument("--target-tokens", type=_float_arg("--target-tokens"), default=None,
                   help="the target's D (default: --target-ratio x N)")
    t.add_argument("--target-ratio", type=_float_arg("--target-ratio"), default=None,
                   help=f"the target's D/N (default {design.TOKENS_PER_PARAM:g}, Hoffmann et al. 2022)")
    p.add_argument("--target-factor", type=_float_arg("--target-factor"), default=design.FLOPS_FACTOR,
                   help=f"largest sweep budget = target C / FACTOR (default {design.FLOPS_FACTOR:g})")
    p.add_argument("--target-decades", type=_float_arg("--target-decades"), default=1.0,
                   help="decades of compute the sweep's budgets span, >= 1 (default 1)")
    p.add_argument("--target-budgets", type=int, default=3, help="budgets in the sweep (default 3)")


# ----------------------------------------------------------------------------- branching (plan options)


def _add_branching_options(p: argparse.ArgumentParser) -> None:
    """``scaling plan`` options for WSD cooldown branching (Hägele et al. 2024)."""
    from scaling.plan import COOLDOWN_SHAPES

    p.add_argument("--branching", action="store_true",
                   help="write a wsd-branch spec: one constant-LR trunk per size, a cooldown branch per point "
                        "(sizes shared across budgets)")
    p.add_argument("--shared-sizes", action="store_true",
                   help="the --branching grid as from-scratch runs (the baseline to compare a branched sweep with)")
    p.add_argument("--cooldown-fraction", type=_float_arg("--cooldown-fraction"), default=0.2,
                   help="share of each branch's steps that decay, in (0, 1) (default 0.2)")
    p.add_argument("--cooldown-shape", choices=COOLDOWN_SHAPES, default="1-sqrt",
                   help="decay shape of the cooldowns (default 1-sqrt, best in Hägele et al. 2024)")


# ----------------------------------------------------------------------------- tune-lr


def _add_shape_options(p: argparse.ArgumentParser) -> None:
    """The conventions and shape flags plan and tune-lr share (they plan runs the same way)."""
    p.add_argument("--params", choices=["total", "non-embedding"], default="total",
                   help="what N counts, in --ladder too (default total, as Hoffmann et al. 2022)")
    p.add_argument("--flops", choices=["6nd", "6nd+attn"], default="6nd", help="FLOP formula for C")
    p.add_argument("--context", type=int, default=1024, help="sequence length T (default 1024)")
    p.add_argument("--aspect", type=int, default=64, help="target d_model/n_layer (default 64, as GPT-2 small)")
    p.add_argument("--head-dim", type=int, default=64, help="attention head width (default 64)")


def _add_tune_lr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune-lr", help="short runs at >= 3 sizes x a log grid of peak LRs; fit LR*(N) = c·N^-k into a rule file",
        description="Plans each --ladder size as scaling plan would (shape, batch, warmup, cosine schedule) at "
                    "--tokens-per-param tokens, trains it at every --lrs peak LR through the launcher (a re-run "
                    "skips finished runs), takes each size's best LR from a parabola in log LR, fits "
                    "LR*(N) = c·N^-k and writes the rule file that scaling plan --lr-rule reads.")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the sweep, e.g. train.eval_tokens=1048576")
    p.add_argument("--data", required=True, help="prepared data folder (vocabulary and tokenizer come from it)")
    p.add_argument("--ladder", required=True, help="model sizes N (under --params), at least 3, e.g. 5e6,15e6,50e6")
    p.add_argument("--lrs", required=True,
                   help="peak LRs: comma list or log range START:STOP:COUNT, e.g. 3e-4:1e-2:7 (3 significant figures)")
    p.add_argument("--out", required=True, help="rule file to write, e.g. rules/lr.yaml")
    p.add_argument("--tokens-per-param", type=_float_arg("--tokens-per-param"), default=20.0,
                   help="training tokens per parameter of each run, D/N (default 20, Chinchilla-optimal)")
    _add_shape_options(p)
    p.add_argument("--beta2", type=_float_arg("--beta2", positive=False), default=0.95,
                   help="Adam β2 of every run, recorded in the rule (default 0.95)")
    p.add_argument("--min-steps", type=int, default=200, help="fewest optimizer steps per run (default 200)")
    p.add_argument("--max-epochs", type=_float_arg("--max-epochs"), default=4.0,
                   help="refuse sizes that would repeat the data more often (default 4)")
    p.add_argument("--gpu", default="h100", help="GPU for micro-batch and time estimates (default h100)")
    p.add_argument("--ci", type=_float_arg("--ci"), default=0.95, help="level of k's interval (default 0.95)")
    p.add_argument("--name", default=None, help="sweep name, its results folder (default tune_<--out's name>)")
    p.add_argument("--results", default="results", help="results root (default results/)")
    p.add_argument("--executor", choices=["local", "slurm"], default=None, help="default local")
    p.add_argument("--per-gpu", type=int, default=None, help="runs packed per GPU (0 = auto by memory)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their estimated cost; train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_tune_lr)


def _cmd_tune_lr(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scaling import launch, tune
    from scaling.config import Conventions
    from scaling.data import load_meta
    from scaling.plan import parse_budgets

    meta = load_meta(args.data)
    req = tune.TuneRequest(
        ladder=parse_budgets(args.ladder, flag="--ladder"), lrs=parse_budgets(args.lrs, flag="--lrs"),
        data=args.data, vocab_size=meta["vocab_size"], tokenizer=meta["tokenizer"],
        unique_tokens=float(meta["tokens"]["train"]), tokens_per_param=args.tokens_per_param,
        conventions=Conventions(params=args.params, flops=args.flops), context=args.context, aspect=args.aspect,
        head_dim=args.head_dim, beta2=args.beta2, min_steps=args.min_steps, max_epochs=args.max_epochs, gpu=args.gpu)
    sweep, plan = tune.tune_sweep(req, args.name or f"tune_{Path(args.out).stem}")
    if args.overrides:
        sweep = sweep.merge(args.overrides)
    print(tune.format_tune_plan(sweep, plan))
    if args.dry_run:
        return 0
    root = Path(args.results) / sweep.name
    executor = launch.make_executor(sweep, root, args.executor, args.per_gpu)
    print(f"training with the {executor.describe()} -> {root}")
    losses = tune.run_tune(sweep, args.results, executor, progress=not args.no_progress,
                           resume_command=_same_command(args))
    optima = tune.size_optima(plan, losses)
    fit = tune.fit_lr_rule([o.n_params for o in optima], [o.lr_opt for o in optima], ci=args.ci)
    path = tune.write_rule(args.out, tune.rule_document(req, sweep, str(root), optima, fit))
    print(tune.format_tune(optima, fit, args.params))
    print(f"wrote {path}  (use it with: scaling plan --lr-rule {path} --data {args.data} ...)")
    return 0


# ----------------------------------------------------------------------------- launch, status


def _add_launch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="run a sweep spec's runs locally or on SLURM (idempotent, resumable)")
    p.add_argument("spec", help="sweep spec, e.g. sweeps/NAME.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.eval_interval=50")
    p.add_argument("--results", default="results", help="results root (default results/)")
    p.add_argument("--executor", choices=["local", "slurm"], default=None,
                   help="default: the spec's launch.executor (local)")
    p.add_argument("--per-gpu", type=int, default=None, help="runs packed per GPU (0 = auto by memory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_launch)


def _cmd_launch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scaling import launch
    from scaling.config import SweepConfig
    from scaling.errors import ConfigError

    sweep = SweepConfig.from_yaml(args.spec)
    if args.overrides:
        sweep = sweep.merge(args.overrides)
    if Path(args.results).exists() and not Path(args.results).is_dir():
        raise ConfigError(f"--results {args.results}: is a file; give the results folder (default results/)")
    root = Path(args.results) / sweep.name
    executor = launch.make_executor(sweep, root, args.executor, args.per_gpu)
    n_runs = len(sweep.runs) + sum(len(g.points) + 1 for g in sweep.branches)  # + 1: each size's trunk
    print(f"launching {n_runs} run(s) of {sweep.name} with the {executor.describe()} -> {root}")
    launch.launch(sweep, args.results, executor, progress=not args.no_progress, resume_command=_same_command(args))
    print(f"done: {root / 'runs.parquet'}  (fit it with: scaling fit {root})")
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="table of a sweep's runs: state, tokens, last loss, ETA")
    p.add_argument("sweep_dir", help="results/<sweep>")
    p.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from scaling import launch

    print(launch.format_status(args.sweep_dir))
    return 0


# ----------------------------------------------------------------------------- train, sample

EXIT_FAILED = 1
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: checkpointed on a signal; run the same command again to resume
EXIT_CTRL_C = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a command killed by a closed pipe exits with


def _same_command(args: argparse.Namespace) -> str:
    """The command line this process was started with, which continues an interrupted command."""
    import shlex

    return shlex.join(["scaling", *args.argv])

if TYPE_CHECKING:
    from scaling.config import RunConfig


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run (resumes from its checkpoint); --sanity overfits one batch")
    p.add_argument("spec", nargs="?", default=None,
                   help="run config YAML (RunConfig); leave out to give every field as an override")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr_peak=3e-4 steps=2000")
    p.add_argument("--out", default=None, help="run folder (default results/runs/NAME)")
    p.add_argument("--sanity", action="store_true",
                   help="overfit one micro-batch instead of training; exit 1 unless the loss ends < 0.1")
    p.add_argument("--sanity-steps", type=int, default=200, help="updates of the sanity check (default 200)")
    p.add_argument("--sanity-lr", type=_float_arg("--sanity-lr"), default=None,
                   help="constant LR of the sanity check (default train.lr_peak)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_train)


def _run_config(spec: str | None, overrides: list[str]) -> RunConfig:
    """RunConfig from a YAML file plus overrides, or from overrides alone (flags-only use)."""
    from scaling.config import RunConfig, parse_dotlist
    from scaling.errors import ConfigError

    if spec is not None and "=" in spec and not spec.endswith((".yaml", ".yml")):
        spec, overrides = None, [spec, *overrides]
    if spec is not None:
        cfg = RunConfig.from_yaml(spec)
        return cfg.merge(overrides) if overrides else cfg
    data: dict[str, Any] = {"data": {}, "train": {}}
    for key, value in parse_dotlist(overrides):
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part!r} is not a section with fields")
        node[leaf] = value
    return RunConfig.from_dict(data)


def _cmd_train(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from contextlib import nullcontext

    from scaling import sample, train
    from scaling.errors import ConfigError
    from scaling.executors import failure_advice, hold_lock

    cfg = _run_config(args.spec, args.overrides)
    if args.sanity:
        if args.sanity_steps < 1:
            raise ConfigError(f"--sanity-steps must be >= 1 (got {args.sanity_steps})")
        losses = sample.overfit_one_batch(cfg, steps=args.sanity_steps, lr=args.sanity_lr, verbose=not args.quiet)
        ok = losses[-1] < 0.1
        print(f"sanity: loss {losses[0]:.4f} -> {losses[-1]:.4f} after {len(losses)} updates on one batch: "
              + ("ok" if ok else "FAILED (should fall below 0.1; try --sanity-steps or --sanity-lr)"))
        return 0 if ok else EXIT_FAILED
    out = Path(args.out) if args.out else Path("results") / "runs" / cfg.name
    # The run folder's lock, as a launched run holds it, so a run is never trained twice at once;
    # under torchrun rank 0 holds it for all ranks (they share the folder).
    lock = hold_lock(out / ".run.lock", f"run {out.name}") if os.environ.get("RANK", "0") == "0" else nullcontext()
    with lock:
        result = train.train(cfg, out, verbose=not args.quiet)
    val = "n/a"
    if result.val_loss is not None:
        val = f"{result.val_loss:.4f} ± {result.val_loss_se or 0:.4f}" + (
            f" ({result.val_tokens:,} tokens)" if result.val_tokens else "")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line from rank 0
        resume = (f"; re-run `{_same_command(args)}` to continue" if result.status == "interrupted"
                  else f"; {failure_advice(cfg, result.status)}" if result.status != "done" else "")
        # A failure's status names its own step ("failed: nan at step 3"): say where the run stopped apart.
        at = f"(stopped at step {result.steps}/{cfg.steps})" if result.status.startswith("failed") \
            else f"at step {result.steps}/{cfg.steps}"
        print(f"{cfg.name}: {result.status} {at}, val_loss {val}, "
              f"{result.train_time_s:.1f} s -> {out}{resume}")
    if result.status == "done":
        return 0
    if result.status != "interrupted":
        return EXIT_FAILED
    return EXIT_CTRL_C if result.signal == "SIGINT" else EXIT_INTERRUPTED


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a run's checkpoint")
    p.add_argument("checkpoint", help="run folder or its checkpoint.pt")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=_float_arg("--temperature", positive=False), default=0.8,
                   help="softmax temperature, 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, help="sample from the k likeliest tokens, 0 = all (default 200)")
    p.add_argument("--seed", type=int, default=1337, help="sampling seed (default 1337)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    from scaling import sample
    from scaling.errors import ConfigError

    if args.temperature < 0 or args.top_k < 0 or args.max_new_tokens < 1:
        raise ConfigError("--temperature and --top-k must be >= 0 and --max-new-tokens >= 1 "
                          f"(got {args.temperature}, {args.top_k}, {args.max_new_tokens})")
    print(sample.sample(args.checkpoint, args.prompt, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k or None, seed=args.seed, device=args.device))
    return 0


# ----------------------------------------------------------------------------- prepare


def _bytes_arg(flag: str) -> Callable[[str], int]:
    """An argparse type for a byte count with an optional k/M/G suffix (2M = 2,000,000)."""

    def parse(text: str) -> int:
        scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
        try:
            value = int(float(text[:-1] if scale != 1 else text) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a size like 2000000, 2M or 500k (got {text!r})") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1 (got {text!r})")
        return value

    parse.__name__ = flag
    return parse


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="read or download a corpus and tokenize it into data/NAME/{train,val}.bin")
    p.add_argument("source", choices=["tinystories", "text", "pysrc"],
                   help="tinystories: download the published files; text: PATHs; pysrc: this Python's source tree")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="text: files, folders or globs (.txt .md .jsonl .parquet, optionally .gz .xz .zst)")
    p.add_argument("--tokenizer", default="gpt2",
                   help="a tiktoken encoding (gpt2, cl100k_base, ...), bytes, bpe:VOCAB (a byte-level BPE trained "
                        "on the train split) or hf:PATH (a local tokenizer.json); default gpt2")
    p.add_argument("--name", default=None, help="dataset name (default: the source, or the first PATH's name)")
    p.add_argument("--out", default=None, help="output folder (default data/NAME)")
    p.add_argument("--val-fraction", type=_float_arg("--val-fraction"), default=None,
                   help="text/pysrc: share of documents held out, chosen by content hash (default 0.01)")
    p.add_argument("--val-bytes", type=_bytes_arg("--val-bytes"), default=None,
                   help="text/pysrc, instead of --val-fraction: hold out documents (same hash order) up to this "
                        "much text, e.g. 20M")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all CPU cores)")
    p.add_argument("--max-bytes", type=_bytes_arg("--max-bytes"), default=None,
                   help="read about this much input, e.g. 2M (text/pysrc: whole files in order; tinystories: per file)")
    p.add_argument("--doc-sep", default="<|endoftext|>",
                   help="text: split files into documents at this string; 'blank-line' or 'none' (whole files)")
    p.add_argument("--field", default="text", help="text: the .jsonl field / .parquet column holding the text")
    p.add_argument("--site-packages", action="store_true", help="pysrc: add site-packages to the stdlib")
    p.add_argument("--url-base", default=None,
                   help="tinystories: where the files are (default $SCALING_TINYSTORIES_URL or Hugging Face)")
    p.add_argument("--checksums", default=None,
                   help='tinystories: JSON {"FILE": {"sha256": ..., "bytes": ...}} to verify the downloads against')
    p.add_argument("--download-dir", default=None, help="tinystories: where downloads go (default: data/downloads)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder holds this exact dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from scaling import data
    from scaling.prepare import prepare

    out = prepare(args.source, args.paths, tokenizer=args.tokenizer, out_dir=args.out, name=args.name,
                  val_fraction=args.val_fraction, val_bytes=args.val_bytes, workers=args.workers, max_bytes=args.max_bytes,
                  doc_sep=args.doc_sep, field=args.field, site_packages=args.site_packages,
                  url_base=args.url_base, checksums=args.checksums, download_dir=args.download_dir,
                  force=args.force, progress=not args.quiet)
    print(data.describe(out))
    return 0


# ----------------------------------------------------------------------------- fit, predict, validate


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    """Options shared by fit and validate: conventions, exclusions and the bootstrap."""
    p.add_argument("--params-convention", choices=["total", "non-embedding"], default="total",
                   help="what N counts (default total, as Hoffmann et al. 2022; Kaplan used non-embedding)")
    p.add_argument("--flops", choices=["6nd", "6nd+attn"], default="6nd",
                   help="C = 6ND, or 6ND plus attention 12·L·d·T per token (default 6nd)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="RUN_OR_SWEEP",
                   help="leave out runs by name, run id or sweep")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of runs (default 1000; 0 = no intervals)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    p.add_argument("--ci", type=_float_arg("--ci"), default=0.95, help="interval level (default 0.95)")
    p.add_argument("--loss", default="lsq", metavar="lsq|huber[:DELTA]",
                   help="Approach 3's objective over log-loss residuals: lsq (least squares, default) or "
                        "huber[:DELTA] (Hoffmann et al. 2022, DELTA 1e-3); recorded in fit.json")


def _load_points(args: argparse.Namespace):  # -> results.FitData (import kept lazy)
    from scaling import results

    return results.load_points(args.sources, params_convention=args.params_convention, flops=args.flops,
                               exclude=args.exclude)


def _add_fit(sub: argparse._SubParsersAction) -> None:
    from scaling.fit import APPROACHES

    p = sub.add_parser("fit", help="fit Chinchilla Approaches 1-3 and Kaplan laws, with bootstrap intervals")
    p.add_argument("sources", nargs="+", metavar="RESULTS_OR_TABLE",
                   help="results folder(s) (runs.parquet) or a CSV/Parquet table with params, tokens, loss")
    p.add_argument("--approach", choices=list(APPROACHES), default="all", help="which fit (default all)")
    p.add_argument("--out", default=None,
                   help="folder for fit.json, the PNG plots and report.html (default: beside the results)")
    p.add_argument("--json", action="store_true",
                   help="print JSON: one fit's object (parameters also at top level), else the fit.json "
                        "document; bootstrap draws stay in fit.json")
    _add_fit_options(p)
    p.set_defaults(func=_cmd_fit)


def _cmd_fit(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from scaling import fit, report

    data = _load_points(args)
    fits, skipped = fit.fit_all(data, args.approach, n_bootstrap=args.bootstrap, seed=args.seed, ci=args.ci,
                                loss=fit.Objective.parse(args.loss))
    if args.out:
        out = Path(args.out)
    else:  # beside the results: the folder of the source, or the folder the sources share
        dirs = [str(Path(s).resolve() if Path(s).is_dir() else Path(s).resolve().parent) for s in args.sources]
        out = Path(os.path.commonpath(dirs))
    path = fit.save_fits(out / "fit.json", fits, skipped, data)
    html = report.write_report(fits, skipped, data, out)
    if args.json:
        docs = [f.to_dict(draws=False) for f in fits.values()]
        doc = ({**docs[0]["params"], **docs[0]} if len(docs) == 1
               else {**json.loads(path.read_text()), "fits": dict(zip(fits, docs))})
        print(json.dumps(doc, indent=1))
    else:
        print(report.format_fits(fits, skipped, data))
        print(f"\nwrote {path}, {html} and its plots")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="loss of a model not trained, or the compute-optimal N, D at C")
    p.add_argument("--fit", required=True, help="fit.json written by scaling fit")
    p.add_argument("--params", type=_float_arg("--params"), help="N (in the fit's params convention)")
    p.add_argument("--tokens", type=_float_arg("--tokens"), help="D, training tokens")
    p.add_argument("--flops", type=_float_arg("--flops"),
                   help="compute budget C: print the compute-optimal N, D (and loss) of each approach")
    p.add_argument("--ci", type=_float_arg("--ci"), default=None, help="interval level (default: the fit's)")
    p.add_argument("--json", action="store_true", help="print the prediction(s) as JSON")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from scaling import fit, predict, report
    from scaling.errors import ConfigError

    if args.flops is None and (args.params is None or args.tokens is None):
        raise ConfigError("give --params and --tokens (loss of that model), or --flops (compute-optimal N, D)")
    fits = fit.load_fits(args.fit)
    preds = []
    if args.params is not None and args.tokens is not None:
        if "approach3" not in fits:
            raise ConfigError(f"--fit {args.fit} has no Approach 3 fit to predict a loss; "
                              "run scaling fit --approach 3 (or all)")
        preds.append(predict.predict(fits["approach3"], args.params, args.tokens, ci=args.ci))
    if args.flops is not None:
        usable = [f for k, f in fits.items() if k in ("approach1", "approach2", "approach3") and f.usable]
        if not usable:
            raise ConfigError(f"--fit {args.fit} has no usable Approach 1, 2 or 3 fit to allocate compute with "
                              "(see scaling fit's messages); add runs and refit")
        preds += [predict.predict_optimal(f, args.flops, ci=args.ci) for f in usable]
    if args.json:
        out = [p.to_dict() for p in preds]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
    else:
        print("\n".join(report.format_prediction(p) for p in preds))
    return 0


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="fit Approach 3 on all runs but the targets, predict the targets, compare",
        description="Exit status: 0 when every target's actual loss lies inside its prediction interval, "
                    "1 when one misses, 2 on a usage or data error.")
    p.add_argument("sources", nargs="+", metavar="RESULTS", help="results folder(s) or a table")
    p.add_argument("--target", nargs="+", required=True, metavar="RUN_OR_SWEEP",
                   help="held-out runs: run name, run id or sweep folder")
    _add_fit_options(p)
    p.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from scaling import predict, report

    data = _load_points(args)
    result, rows = predict.validate(data, args.target, n_bootstrap=args.bootstrap, seed=args.seed, ci=args.ci,
                                    loss=args.loss)
    print(report.format_validation(result, rows))
    return 0 if all(r.inside for r in rows) else 1


# ----------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole loop on a CPU: prepare, plan, train a sweep, fit, predict a larger model, train it, compare",
        description="Runs every stage on this machine's CPU (no GPU, no network) into --out; about 6-7 minutes on 2 "
                    "cores (--quick: about 2.5 minutes). Interrupt it any time: the same command continues.")
    p.add_argument("--out", default="demo", help="folder for data, specs, results and the report (default demo/)")
    p.add_argument("--quick", action="store_true", help="smaller budgets, eval and bootstrap (what CI runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage banners still print)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from scaling import demo

    result = demo.run_demo(args.out, quick=args.quick, progress=not args.no_progress)
    print(demo.format_demo(result))
    return 0


# ----------------------------------------------------------------------------- main

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_plan, _add_tune_lr, _add_launch, _add_status, _add_train, _add_sample, _add_prepare,
                                                                 _add_fit, _add_predict, _add_validate, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    """The full ``scaling`` parser with every subcommand registered."""
    parser = _Parser(prog="scaling", description=__doc__.splitlines()[0])
    from scaling import __version__

    parser.add_argument("--version", action="version", version=f"scaling {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    # argparse gives a nargs="*" positional only the words before the first option, so the
    # dotted overrides of `launch SPEC --executor slurm launch.slurm.partition=gpu` come back
    # unrecognised: they are overrides all the same, wherever they stand.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    args.argv = sys.argv[1:] if argv is None else argv
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is noticed while it can still be handled
        return code
    except BrokenPipeError:
        # The reader left (`scaling predict ... --json | head`): not an error of ours. Point stdout
        # at /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ScalingError as e:
        print(f"scaling {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # scaling.launch.LaunchInterrupted says how to continue
        print(f"scaling {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return EXIT_CTRL_C
