"""The trainer: one matched-compute run of exactly ``steps`` optimizer steps, logged to Parquet.

``train(cfg, out_dir)`` reads top to bottom in the order of nanoGPT's train.py: runtime and
DDP setup, data, model, optimizer, compile, DDP wrap, then one loop that sets the LR, runs the
gradient-accumulation micro-steps, clips, steps and zeroes the gradients. Only at boundaries
(log, eval, checkpoint, last step, stop request) does it sync with the device: it checks the
losses for NaN and spikes, evaluates, appends a metrics row, flushes and checkpoints.

Output (``out_dir``): ``run.json`` (config, conventions, environment, status),
``metrics.parquet`` (``scaling.results.METRICS_SCHEMA``), ``checkpoint.pt`` (latest state),
``eval.parquet`` (the final eval's per-window losses, ``scaling.evaluation``).
A relaunch on the same folder resumes from the checkpoint and reproduces the uninterrupted
run's losses exactly on CPU; a finished run (status "done") is a no-op.

WSD cooldown branching (``cfg.lineage``): a trunk also keeps ``checkpoint_{step:06d}.pt`` at each
of its ``keep_steps``; a branch's first start loads its trunk's kept checkpoint (model, optimizer,
loader position, RNG) and the trunk's metrics rows up to there, and trains only its cooldown.
On CPU it then ends exactly where the from-scratch WSD run of its tokens would.

Checkpoint files and the checks that one resumes or starts this run: ``scaling.checkpoint``;
the LR schedules: ``scaling.schedule``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import random
import signal
import socket
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from scaling.checkpoint import (CHECKPOINT, branch_start, check_branch_start, check_same_run, keep_checkpoint,
                                load_checkpoint, rng_state, save_checkpoint, set_rng_state)
from scaling.config import RunConfig, TrainConfig
from scaling.data import TokenLoader, load_meta, tokenizer_record
from scaling.errors import ConfigError, TrainError
from scaling.evaluation import EVAL_PARQUET, batch_means_se, eval_windows, score_windows, write_eval
from scaling.model import GPT, count_params, flops_per_token
from scaling.plan import peak_flops
from scaling.results import MetricsWriter, read_run_json, write_run_json
from scaling.schedule import lr_at

__all__ = [
    "RunResult",
    "train",
]

METRICS = "metrics.parquet"
RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunResult:
    """What one run ended with; also stored under ``"result"`` in its run.json.

    ``status`` is "done", "interrupted" (checkpointed on a signal or a stop request: relaunch
    to resume) or "failed: <reason>". ``val_loss`` (nats/token) is the mean over the fixed
    held-out tokens at the last evaluation, ``val_loss_se`` its standard error (batch means)
    and ``val_tokens`` the tokens scored (``scaling.evaluation``); all None when no evaluation ran
    (``val_tokens`` also in run.json files written before it was recorded). ``signal`` names the
    signal that interrupted the run ("SIGTERM", "SIGUSR2", "SIGINT"), None otherwise.
    """

    status: str
    out_dir: str
    steps: int
    tokens: int
    epochs: float
    val_loss: float | None
    val_loss_se: float | None
    train_time_s: float
    n_params_total: int
    n_params_nonembedding: int
    gpu_name: str | None
    signal: str | None = None
    val_tokens: int | None = None


# ----------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class _Runtime:
    """Where this process runs: its DDP rank, device, precision and compile choice."""

    rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = full fp32
    compile: bool
    owns_group: bool  # this call joined the process group, so it leaves it at the end

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def gpu_name(self) -> str | None:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None


def _runtime(tc: TrainConfig, *, distributed: bool = True) -> _Runtime:
    """Resolve device/precision/compile; join the torchrun process group when there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    rank = int(os.environ.get("RANK", "0")) if world_size > 1 else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world_size > 1 else 0
    want = tc.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(want)  # TrainConfig.validate admits auto, cpu, cuda and cuda:N only
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {tc.device!r} but torch sees no CUDA GPU (use cpu or auto)")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
        # TF32 for the fp32 matmuls left outside autocast (10-bit mantissa is plenty for training).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = tc.precision
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU (use fp32 or bf16 on CPU)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    compile_ = tc.compile == "on" or (tc.compile == "auto" and device.type == "cuda")
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        # Imported before the group exists, as DDP imports it: its functions take the world group
        # as a default argument, which would hold the group past destroy_process_group (see train).
        import torch.distributed.nn as _dist_nn  # noqa: F401
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Runtime(rank, world_size, device, dtype, compile_, owns_group)


class _StopSignal:
    """SIGTERM/SIGUSR2 (SLURM, the launcher) and SIGINT (Ctrl-C) set a flag: the loop checkpoints
    at the next step boundary and exits. A second Ctrl-C gets the previous SIGINT handler
    (KeyboardInterrupt), to stop at once from the last checkpoint. The previous handlers come
    back on exit. Only the main thread can install handlers."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                # A shell starts background jobs with SIGINT ignored so that Ctrl-C spares them: keep that.
                if not (sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if signum == signal.SIGINT:
            signal.signal(signum, self._previous[signum])

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Prefetcher:
    """Micro-batches already on the device, one fetched ahead of the one being used.

    ``state_dict`` is the loader position of the first batch not yet handed out, so a
    checkpoint never skips the batch sitting in the prefetch slot.
    """

    def __init__(self, loader: TokenLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self._state = loader.state_dict()
        self._next = self._fetch()

    def _fetch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (torch.from_numpy(np.ascontiguousarray(a)) for a in self.loader.next_batch())
        if self.device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously with the compute queue.
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x, y

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._next
        self._state = self.loader.state_dict()
        self._next = self._fetch()
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self._state


def _print0(rt: _Runtime, verbose: bool) -> Callable[[str], None]:
    """A print that speaks on rank 0 only (and not at all when ``verbose`` is False)."""
    return (lambda msg: print(msg, flush=True)) if (verbose and rt.master) else (lambda msg: None)


def _gather_objects(obj: Any, rt: _Runtime) -> list[Any]:
    if rt.world_size == 1:
        return [obj]
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def _any_rank(flag: bool, rt: _Runtime) -> bool:
    if rt.world_size == 1:
        return flag
    t = torch.tensor(float(flag), device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ----------------------------------------------------------------------------- pieces of the loop


def _evaluate(model: torch.nn.Module, cfg: RunConfig, rt: _Runtime, n_windows: int,
              out: Path | None = None) -> tuple[float, float | None, int]:
    """Mean val loss over the first ``n_windows`` windows, its standard error and the tokens
    scored; with ``out`` (the final eval), rank 0 also keeps the per-window losses there."""
    sums = score_windows(model, cfg.data.path, cfg.model.context, n_windows, cfg.train.micro_batch_size,
                         rt.device, autocast=rt.autocast, rank=rt.rank, world_size=rt.world_size)
    if out is not None and rt.master:
        write_eval(out, sums, cfg.model.context, cfg.data.path)
    tokens = np.full(n_windows, cfg.model.context)
    return (*batch_means_se(tokens, sums), int(tokens.sum()))


def _spike(loss: float, window: deque[float], sigma: float) -> str | None:
    """An event string if ``loss`` exceeds mean + sigma·std of the recent ``window``."""
    if len(window) < min(20, window.maxlen or 20):
        return None
    mean, std = statistics.fmean(window), statistics.pstdev(window)
    if std > 0 and loss > mean + sigma * std:
        return f"loss {loss:.4g} > mean {mean:.4g} + {sigma:g}σ ({std:.3g})"
    return None


def _environment(rt: _Runtime) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": str(rt.device),
        "gpu_name": rt.gpu_name(),
        "world_size": rt.world_size,
        "precision": str(rt.dtype).removeprefix("torch.") if rt.dtype else "fp32",
        "compile": rt.compile,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_data(cfg: RunConfig, meta: dict[str, Any], world_size: int) -> int:
    """Validate the run against its data and world size; return micro-steps per update."""
    tc = cfg.train
    if meta["vocab_size"] > cfg.model.vocab_size:
        raise TrainError(f"model.vocab_size {cfg.model.vocab_size} < the data's vocab_size {meta['vocab_size']} "
                         f"({cfg.data.path}/meta.json); set model.vocab_size >= {meta['vocab_size']}")
    epochs = cfg.tokens / meta["tokens"]["train"]
    if epochs > tc.max_epochs:
        raise TrainError(f"train.max_epochs: the run needs {cfg.tokens:,} tokens = {epochs:.2f} epochs of "
                         f"{cfg.data.path} ({meta['tokens']['train']:,} tokens), over the limit {tc.max_epochs:g}; "
                         f"use more data, fewer steps, or raise train.max_epochs")
    if tc.batch_size % (tc.micro_batch_size * world_size):
        raise ConfigError(f"train.batch_size: {tc.batch_size} is not divisible by micro_batch_size × processes "
                          f"({tc.micro_batch_size} × {world_size})")
    if tc.warmup_steps >= cfg.steps:
        raise ConfigError(f"train.warmup_steps: must be < steps (got {tc.warmup_steps}, {cfg.steps})")
    return tc.batch_size // (tc.micro_batch_size * world_size)


# ----------------------------------------------------------------------------- the run


def train(
    cfg: RunConfig,
    out_dir: str | os.PathLike[str],
    *,
    stop_at_step: int | None = None,
    after_step: Callable[[int, GPT], None] | None = None,
    verbose: bool = True,
) -> RunResult:
    """Train one run for exactly ``cfg.steps`` updates (``cfg.tokens`` tokens) into ``out_dir``.

    Resumes from ``out_dir/checkpoint.pt`` unless run.json says "done" (then it returns the
    stored result). Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 writes.

    Parameters
    ----------
    stop_at_step
        Checkpoint and return status "interrupted" once this many updates are done, as on
        SIGTERM/SIGUSR2/SIGINT (used to test resumption).
    after_step
        Called as ``after_step(step, model)`` after every optimizer update, before any logging
        (used to inject faults in tests).

    Raises
    ------
    ConfigError, TrainError, DataError
        The run cannot start (bad device, data too small or missing, foreign checkpoint).

    Notes
    -----
    MFU is model FLOPs per second over the device's dense bf16 peak (``peak_flops``), with
    model FLOPs = ``flops_per_token(model, "total", "6nd+attn")`` = 6·N + 12·L·d·T per token.
    """
    out_dir = Path(out_dir)
    tc = cfg.train
    rt = _runtime(tc)
    log = _print0(rt, verbose)
    started = False  # run.json says "running" from here on: a crash must not leave it so
    try:
        info = read_run_json(out_dir / RUN_JSON)
        if info is not None and info["status"] == "done":
            check_same_run(info["config"], cfg, out_dir / RUN_JSON)
            log(f"{out_dir}: already done (val_loss {info['result']['val_loss']})")
            return RunResult(**info["result"])

        # --- data, checks, and what the run counts
        meta = load_meta(cfg.data.path)
        accum = _check_data(cfg, meta, rt.world_size)
        # Read (and hash-checked) now, so a changed tokenizer.json stops the run before it trains.
        tokenizer_meta = tokenizer_record(meta, cfg.data.path)
        n_eval = eval_windows(meta["tokens"]["val"], cfg.model.context, tc.eval_tokens)
        n_final = eval_windows(meta["tokens"]["val"], cfg.model.context, tc.final_eval_tokens)
        counts = count_params(cfg.model)
        fpt_6nd = flops_per_token(cfg.model, "total", "6nd")
        fpt_attn = flops_per_token(cfg.model, "total", "6nd+attn")
        peak = peak_flops(rt.gpu_name())
        batch_tokens = tc.batch_size * cfg.model.context

        # --- model, optimizer (state from the checkpoint when resuming)
        ckpt_path = out_dir / CHECKPOINT
        # A branch's first start loads its trunk's checkpoint at the branch point, later ones its own.
        branch_from = None if ckpt_path.is_file() else branch_start(cfg, out_dir)
        source = branch_from or ckpt_path
        keep = set(cfg.lineage.keep_steps) if cfg.lineage else set()
        ckpt = load_checkpoint(source, rt.device) if source.is_file() else None
        if ckpt is not None:
            if branch_from is not None:
                check_branch_start(ckpt["config"], cfg, source, ckpt["step"])
            else:
                check_same_run(ckpt["config"], cfg, ckpt_path)
            if len(ckpt["loader"]) != rt.world_size:
                raise TrainError(f"{source} was written by {len(ckpt['loader'])} processes; resume it with "
                                 f"the same number (torchrun --nproc_per_node {len(ckpt['loader'])})")
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed)
        random.seed(tc.seed)
        raw_model = GPT(cfg.model).to(rt.device)
        optimizer = raw_model.configure_optimizers(tc.weight_decay, tc.lr_peak, (tc.beta1, tc.beta2), tc.eps,
                                                   rt.device.type)
        scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
        loader = TokenLoader(cfg.data.path, "train", cfg.model.context, tc.micro_batch_size,
                             seed=tc.seed, mode="random", rank=rt.rank, world_size=rt.world_size)
        step, loop = 0, {"elapsed_s": 0.0, "window": [], "events": []}
        if ckpt is not None:
            raw_model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            loader.load_state_dict(ckpt["loader"][rt.rank])
            set_rng_state(ckpt["rng"][rt.rank])
            step, loop = ckpt["step"], ckpt["loop"]
            del ckpt
            if rt.master and step in keep:
                keep_checkpoint(ckpt_path, step)  # a crash between saving and keeping it lost it
        batches = _Prefetcher(loader, rt.device)
        model: torch.nn.Module = raw_model
        if rt.compile:
            mode = None if tc.compile_mode == "default" else tc.compile_mode
            model = torch.compile(raw_model, mode=mode)
        eval_model = model
        ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if rt.world_size > 1:
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
            model = ddp

        # --- run record
        metrics = MetricsWriter(out_dir / METRICS, resume_step=step if step else None,
                                source=branch_from.parent / METRICS if branch_from else None)
        record: dict[str, Any] = {
            "name": cfg.name,
            "status": "running",
            "config": cfg.to_dict(),
            "conventions": cfg.conventions.to_dict(),
            "n_params": counts,
            "steps_planned": cfg.steps,
            "tokens_planned": cfg.tokens,
            "batch_tokens": batch_tokens,
            "grad_accum_steps": accum,
            "flops_per_token": {"6nd": fpt_6nd, "6nd+attn": fpt_attn},
            "flops_planned": {"6nd": fpt_6nd * cfg.tokens, "6nd+attn": fpt_attn * cfg.tokens},
            "eval_tokens": n_eval * cfg.model.context,  # interim evals'; the final one's is result.val_tokens
            "data": {"path": cfg.data.path, "tokenizer": meta["tokenizer"], "vocab_size": meta["vocab_size"],
                     "tokenizer_sha256": meta.get("tokenizer_sha256"), "tokens": meta["tokens"]},
            "environment": _environment(rt),
            "peak_flops": peak,
            "resumed_from_step": None if branch_from else (step or None),
            "started_at": (info or {}).get("started_at", _now()) if step else _now(),
            # This process's seconds in each eval (the last: the final one), in checkpoints, and on
            # the host fetching batches (overlaps the GPU's work): benchmarks/sweep.py's breakdown.
            "timing_s": {"evals": [], "checkpoint": 0.0, "data": 0.0},
        }
        timing = record["timing_s"]

        def result(status: str, val: tuple[float, float | None, int] | None = None,
                   sig: str | None = None) -> RunResult:
            """The run's RunResult now; rank 0 records it (with ``status``) in run.json."""
            tokens = step * batch_tokens
            res = RunResult(status=status, out_dir=str(out_dir), steps=step, tokens=tokens,
                            epochs=tokens / meta["tokens"]["train"], val_loss=val[0] if val else None,
                            val_loss_se=val[1] if val else None, val_tokens=val[2] if val else None,
                            train_time_s=elapsed(),
                            n_params_total=counts["total"], n_params_nonembedding=counts["non_embedding"],
                            gpu_name=rt.gpu_name(), signal=sig)
            if rt.master:
                record.update(status=status, updated_at=_now(), result=dataclasses.asdict(res))
                write_run_json(out_dir / RUN_JSON, record)
            return res

        def save(status: str) -> None:
            """Flush metrics, then checkpoint (that order, so the rows a resume keeps exist)."""
            t0 = time.perf_counter()
            loader_states = _gather_objects(batches.state_dict(), rt)
            rng_states = _gather_objects(rng_state(), rt)
            if rt.master:
                metrics.flush()
                save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scaler": scaler.state_dict(), "step": step, "loader": loader_states,
                                  "rng": rng_states, "loop": loop, "config": cfg.to_dict(),
                                  "data_meta": tokenizer_meta},
                                 ckpt_path)
                if step in keep:
                    keep_checkpoint(ckpt_path, step)
            timing["checkpoint"] += time.perf_counter() - t0
            result(status)

        t_start = time.perf_counter()
        elapsed_base = loop["elapsed_s"]

        def elapsed() -> float:
            return elapsed_base + time.perf_counter() - t_start

        if rt.master:
            out_dir.mkdir(parents=True, exist_ok=True)
            result("running")
        started = True
        log(f"{cfg.name}: N={counts['total']:,} (non-embedding {counts['non_embedding']:,}), "
            f"D={cfg.tokens:,} tokens in {cfg.steps} steps × {batch_tokens:,} (accum {accum} × "
            f"{tc.micro_batch_size} × {rt.world_size} proc), {rt.device}, "
            f"{record['environment']['precision']}, compile={rt.compile}"
            + (f"; branching off {branch_from} at step {step}" if branch_from
               else f"; resuming at step {step}" if step else ""))
        window: deque[float] = deque(loop["window"], maxlen=tc.spike_window)
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (loss, grad_norm) not yet synced
        mark_time, mark_tokens, last_flush = time.perf_counter(), step * batch_tokens, step
        val: tuple[float, float | None, int] | None = None
        stop_signal = _StopSignal()
        with stop_signal:
            while step < cfg.steps:
                # 1. learning rate of this update: a pure function of the step
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # 2. micro-steps; DDP all-reduces gradients on the last one only
                loss_sum = torch.zeros((), device=rt.device)
                for micro in range(accum):
                    t_batch = time.perf_counter()
                    x, y = batches.next()
                    timing["data"] += time.perf_counter() - t_batch
                    no_sync = ddp.no_sync() if ddp is not None and micro < accum - 1 else contextlib.nullcontext()
                    with no_sync:
                        with rt.autocast():
                            _, loss = model(x, y)
                        scaler.scale(loss / accum).backward()
                    loss_sum += loss.detach() / accum  # no .item(): no host sync inside the step
                # 3. clip, step, zero grads
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), tc.grad_clip or math.inf)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                pending.append((loss_sum, grad_norm))
                if after_step is not None:
                    after_step(step, raw_model)

                # 4. boundaries: the only places that wait for the device
                last = step == cfg.steps
                is_log, is_eval = step % tc.log_interval == 0, step % tc.eval_interval == 0 or last
                is_ckpt = step % tc.checkpoint_interval == 0 or last or step in keep
                requested = stop_at_step is not None and step >= stop_at_step
                if rt.world_size == 1 or is_log or is_eval or is_ckpt:
                    # Under DDP a signal may reach ranks at different steps; they agree at boundaries.
                    requested = requested or _any_rank(stop_signal.received is not None, rt)
                stop = requested and not last
                if not (is_log or is_eval or is_ckpt or stop):
                    continue
                losses_t, norms_t = (torch.stack(t) for t in zip(*pending))
                if rt.world_size > 1:
                    dist.all_reduce(losses_t)
                    losses_t /= rt.world_size
                losses, norms = losses_t.tolist(), norms_t.tolist()
                first = step - len(losses) + 1
                pending.clear()
                now = time.perf_counter()
                bad = next((first + i for i, v in enumerate(losses) if not math.isfinite(v)), None)
                for i, v in enumerate(losses[: None if bad is None else bad - first]):
                    event = _spike(v, window, tc.spike_sigma)
                    if event:
                        loop["events"].append(f"spike at step {first + i}: {event}")
                    window.append(v)
                loop["window"] = list(window)
                val = None
                if is_eval and bad is None:
                    val = (_evaluate(eval_model, cfg, rt, n_final, out_dir / EVAL_PARQUET) if last
                           else _evaluate(eval_model, cfg, rt, n_eval))
                tokens = step * batch_tokens
                if val is not None:  # since the loss sync above: the eval
                    timing["evals"].append(time.perf_counter() - now)
                if is_log or is_eval or bad is not None:
                    tok_s = (tokens - mark_tokens) / max(now - mark_time, 1e-9)
                    mfu = tok_s * fpt_attn / (peak * rt.world_size) if peak else None
                    if bad is not None:
                        loop["events"].append(f"nan at step {bad}")
                    metrics.append(
                        step=step, tokens=tokens, flops_6nd=fpt_6nd * tokens, flops_6nd_attn=fpt_attn * tokens,
                        epochs=tokens / meta["tokens"]["train"], lr=lr, train_loss=losses[-1],
                        val_loss=val[0] if val else None, val_loss_se=val[1] if val else None,
                        grad_norm=norms[-1], tokens_per_s=tok_s, mfu=mfu, elapsed_s=elapsed(),
                        event="; ".join(loop["events"]) or None)
                    loop["events"] = []
                    log(f"step {step}/{cfg.steps} | loss {losses[-1]:.4f}"
                        + (f" | val {val[0]:.4f}" if val else "")
                        + f" | lr {lr:.2e} | grad {norms[-1]:.3f} | {tok_s:,.0f} tok/s"
                        + (f" | mfu {mfu:.1%}" if mfu is not None else ""))
                if bad is not None:
                    # Keep every row and the last good checkpoint; a NaN model is not saved.
                    if rt.master:
                        metrics.flush()
                    log(f"{cfg.name}: stopping, non-finite loss at step {bad}")
                    return result(f"failed: nan at step {bad}")
                loop["elapsed_s"] = elapsed()
                if is_ckpt or stop:
                    save("interrupted" if stop else "running")
                    last_flush = step
                elif step - last_flush >= tc.flush_interval and rt.master:
                    metrics.flush()
                    last_flush = step
                if stop:
                    sig = signal.Signals(stop_signal.received).name if stop_signal.received else None
                    log(f"{cfg.name}: {sig or 'stop request'}, checkpointed at step {step}; relaunch to resume")
                    return result("interrupted", sig=sig)
                mark_time, mark_tokens = time.perf_counter(), tokens
        if val is None:  # resumed from a checkpoint of the last step: its final eval never ran
            val = _evaluate(eval_model, cfg, rt, n_final, out_dir / EVAL_PARQUET)
        return result("done", val)
    except Exception as e:
        if started and rt.master:
            record.update(status=f"failed: {type(e).__name__}: {e}", updated_at=_now())
            write_run_json(out_dir / RUN_JSON, record)
        raise
    finally:
        if rt.owns_group:
            # Free the group while Python still runs: destroying it joins gloo's worker threads.
            # Left alive (the DDP wrapper holds it), they may drop the last collective's tensors
            # during interpreter exit, where taking the GIL aborts the process ("terminate called
            # without an active exception": 8 exits in 30 of a 2-process CPU run before this fix).
            ddp = model = None  # type: ignore[assignment]
            dist.destroy_process_group()
