"""Trainer throughput: tokens/s and MFU of ``scaling.train.train`` against a plain reference loop.

For each shape this runs (1) the real trainer, ``train(cfg, tmp)``, on a synthetic token folder
and reads tokens/s and MFU from its metrics.parquet (rows after the compile warm-up), and (2) a
plain reference loop in the same process: the same GPT module, torch.compile (default mode),
bf16 autocast, torch.optim.AdamW with default options, random tokens made on the device,
``loss.item()`` every step and one optimizer step per micro-batch of the reference batch size
(the loop behind the numbers in ../shared/README.md). It prints one table with the ratio.

MFU = tokens/s × (6·N_total + 12·L·d·T) / peak, i.e. ``flops_per_token(model, "total",
"6nd+attn")`` (PaLM, App. B) over the GPU's dense bf16 peak from ``scaling.plan.GPU_PEAK_FLOPS``
(H100 SXM: 989 TFLOP/s). Vocabulary 50304 (GPT-2's 50257 padded to a multiple of 64).

    python benchmarks/throughput.py                      # all four shapes, on the GPU
    python benchmarks/throughput.py --shapes 124M,51M    # a subset (each shape compiles ~1 min)
    python benchmarks/throughput.py --quick --device cpu # tiny shape, checks that it runs
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from scaling.model import GPT, count_params, flops_per_token  # noqa: E402
from scaling.results import read_metrics  # noqa: E402
from scaling.plan import peak_flops  # noqa: E402
from scaling.train import train  # noqa: E402

VOCAB = 50304


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: layers × width at a context, the trainer's micro-batch and the reference's."""

    name: str
    n_layer: int
    d_model: int
    context: int
    micro_batch: int  # the trainer's micro-batch (sequences)
    reference_batch: int  # the reference loop's batch (sequences), as measured in ../shared/README.md
    target_mfu: float | None  # issue #5 target on an H100

    def model(self, vocab: int = VOCAB) -> ModelConfig:
        return ModelConfig(n_layer=self.n_layer, d_model=self.d_model, n_head=max(1, self.d_model // 64),
                           d_ff=4 * self.d_model, context=self.context, vocab_size=vocab).check()


SHAPES = {
    s.name: s
    for s in (
        Shape("124M", 12, 768, 1024, 32, 32, 0.46),
        Shape("51M", 8, 512, 1024, 64, 64, 0.42),
        Shape("30M", 6, 384, 256, 512, 256, 0.32),
        Shape("16M", 4, 256, 512, 256, 128, 0.32),
    )
}
QUICK = Shape("tiny", 2, 64, 64, 16, 16, None)


def synthetic_data(folder: Path, vocab: int, tokens: int) -> Path:
    """A prepared-data folder of uniformly random token ids (the loss does not matter here)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", tokens), ("val", max(tokens // 16, 1 << 16))):
        rng.integers(0, vocab, size=n, dtype=np.uint16).tofile(folder / f"{split}.bin")
    meta = {"name": "synthetic", "tokenizer": "gpt2", "vocab_size": vocab, "eot_token": vocab - 1,
            "dtype": "uint16", "tokens": {"train": tokens, "val": max(tokens // 16, 1 << 16)},
            "documents": {"train": 1, "val": 1}, "split": "synthetic", "sources": [], "skipped": {},
            "created": "benchmark", "version": 1}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def run_trainer(shape: Shape, model: ModelConfig, data: Path, args: argparse.Namespace, micro: int) -> dict:
    """Tokens/s and MFU of the real trainer: medians over the rows after the warm-up steps."""
    accum = max(1, args.batch_tokens // (micro * shape.context))
    cfg = RunConfig(
        name=f"bench-{shape.name}", model=model, data=DataConfig(path=str(data)), steps=args.steps,
        train=TrainConfig(batch_size=micro * accum, micro_batch_size=micro, warmup_steps=1,
                          log_interval=args.log_interval, eval_interval=args.steps, checkpoint_interval=args.steps,
                          eval_tokens=micro * shape.context, device=args.device, compile=args.compile,
                          compile_mode=args.compile_mode, max_epochs=1e9),
    ).check()
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out, verbose=args.verbose)
        rows = [r for r in read_metrics(Path(out) / "metrics.parquet").to_pylist() if r["step"] > args.warmup_steps]
    if not rows:
        raise SystemExit(f"--steps {args.steps} leaves no logged step after --warmup-steps {args.warmup_steps}")
    tok_s = statistics.median(r["tokens_per_s"] for r in rows)
    return {"micro_batch": micro, "grad_accum": accum, "tokens_per_s": tok_s,
            "mfu": statistics.median(r["mfu"] for r in rows) if rows[0]["mfu"] is not None else None}


def run_reference(shape: Shape, model: ModelConfig, args: argparse.Namespace, batch: int) -> dict:
    """Tokens/s of the plain loop: compile, bf16 autocast, default AdamW, loss.item() per step."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = GPT(model).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    step_fn = torch.compile(net) if args.compile != "off" and device.type == "cuda" else net
    dtype = torch.bfloat16 if device.type == "cuda" else None
    times = []
    for i in range(args.reference_warmup + args.reference_steps):
        x = torch.randint(0, model.vocab_size, (batch, shape.context), device=device)
        y = torch.randint(0, model.vocab_size, (batch, shape.context), device=device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            _, loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the plain loop syncs every step to print the loss
        if i >= args.reference_warmup:
            times.append(time.perf_counter() - t0)
    tok_s = batch * shape.context / statistics.median(times)
    return {"batch": batch, "tokens_per_s": tok_s}


def with_oom_retry(fn, batch: int, what: str):  # type: ignore[no-untyped-def]
    """Run ``fn(batch)``, halving the batch on a CUDA out-of-memory error."""
    while True:
        try:
            return fn(batch)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            print(f"  {what}: out of memory at micro-batch {batch}, retrying with {batch // 2}", flush=True)
            batch //= 2
        finally:
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            torch._dynamo.reset()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="one tiny shape and few steps (a smoke test, CPU ok)")
    p.add_argument("--steps", type=int, default=40, help="trainer optimizer steps per shape (default 40)")
    p.add_argument("--warmup-steps", type=int, default=10, help="trainer steps excluded as warm-up (default 10)")
    p.add_argument("--log-interval", type=int, default=5, help="trainer log interval in steps (default 5)")
    p.add_argument("--batch-tokens", type=int, default=262144,
                   help="trainer batch in tokens, reached by accumulation (default 262144)")
    p.add_argument("--micro-batch", action="append", default=[], metavar="SHAPE=B",
                   help="override the trainer's micro-batch of a shape, e.g. 124M=64")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "max-autotune-no-cudagraphs", "max-autotune"])
    p.add_argument("--reference-steps", type=int, default=30, help="timed reference steps (default 30)")
    p.add_argument("--reference-warmup", type=int, default=10, help="untimed reference steps (default 10)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--verbose", action="store_true", help="print the trainer's progress lines")
    args = p.parse_args(argv)
    if args.quick:
        shapes, args.steps, args.warmup_steps, args.log_interval = [QUICK], 6, 2, 2
        args.batch_tokens, args.reference_steps, args.reference_warmup = 2048, 3, 1
        vocab = 512
    else:
        unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
        if unknown:
            p.error(f"--shapes: unknown {', '.join(unknown)} (choose from {', '.join(SHAPES)})")
        shapes, vocab = [SHAPES[s] for s in args.shapes.split(",")], VOCAB
    micro_override = dict(kv.split("=") for kv in args.micro_batch)

    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_flops(gpu)
    print(f"device: {gpu or 'cpu'}; torch {torch.__version__}; peak {peak / 1e12:.0f} TFLOP/s dense bf16"
          if peak else f"device: {gpu or 'cpu'}; torch {torch.__version__}; no known peak (MFU n/a)")
    print("MFU = tokens/s × (6·N_total + 12·L·d·T) / peak;  trainer = scaling.train.train() on synthetic tokens\n")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            model = shape.model(vocab)
            tokens = max(1 << 22, 4 * args.batch_tokens)
            data = synthetic_data(Path(tmp), vocab, tokens)
            print(f"{shape.name}: {shape.n_layer}×{shape.d_model}, T {shape.context}, "
                  f"N {count_params(model)['total'] / 1e6:.1f}M ...", flush=True)
            micro = int(micro_override.get(shape.name, shape.micro_batch))
            mine = with_oom_retry(lambda b: run_trainer(shape, model, data, args, b), micro, "trainer")
            ref = None if args.no_reference else with_oom_retry(
                lambda b: run_reference(shape, model, args, b), shape.reference_batch, "reference")
            fpt = flops_per_token(model, "total", "6nd+attn")
            if ref is not None:
                ref["mfu"] = ref["tokens_per_s"] * fpt / peak if peak else None
            results.append({"shape": shape.name, "n_layer": shape.n_layer, "d_model": shape.d_model,
                            "context": shape.context, "n_params_total": count_params(model)["total"],
                            "flops_per_token": fpt, "target_mfu": shape.target_mfu, "trainer": mine,
                            "reference": ref})

    def pct(x: float | None) -> str:
        return f"{x:6.1%}" if x is not None and math.isfinite(x) else "   n/a"

    print(f"\n{'shape':>6} {'N':>7} {'T':>5} | {'micro×acc':>9} {'trainer tok/s':>13} {'MFU':>6} | "
          f"{'ref B':>5} {'ref tok/s':>11} {'MFU':>6} | {'ratio':>5} {'target':>6}")
    for r in results:
        m, ref = r["trainer"], r["reference"]
        ratio = f"{m['tokens_per_s'] / ref['tokens_per_s']:5.2f}" if ref else "  n/a"
        print(f"{r['shape']:>6} {r['n_params_total'] / 1e6:6.1f}M {r['context']:>5} | "
              f"{m['micro_batch']:>4}×{m['grad_accum']:<4} {m['tokens_per_s']:>13,.0f} {pct(m['mfu'])} | "
              f"{(ref or {}).get('batch', '-'):>5} {(ref or {}).get('tokens_per_s', float('nan')):>11,.0f} "
              f"{pct((ref or {}).get('mfu'))} | {ratio} {pct(r['target_mfu'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": gpu or "cpu", "torch": torch.__version__, "peak_flops": peak,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
