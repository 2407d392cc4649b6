"""GPT-2-style decoder: exact parameter and FLOP counts for a shape, and the module itself.

The planner, trainer and fitter all count N and C through the functions here, so a run's
recorded N is exactly the number of parameters of the module it trained (``GPT`` checks this
when it is built).
"""

from __future__ import annotations

import inspect
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scaling.config import FlopsFormula, ModelConfig, ParamsConvention

__all__ = ["count_params", "n_params", "flops_per_token", "flops_formula", "GPT"]


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of the model built from ``cfg``, by group; the groups sum to ``total``.

    ``embedding`` is the token table (V·d) and the learned position table (T·d), plus the
    output projection when it is not tied to the token table. Kaplan et al. 2020 exclude these
    ("non-embedding" N); Hoffmann et al. 2022 count everything ("total").
    """
    d, f, L, V, T = cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.vocab_size, cfg.context
    b = 1 if cfg.bias else 0
    # Per block: two LayerNorms (weight + bias each), fused QKV and output projection, MLP.
    ln = 2 * d
    attn = d * 3 * d + b * 3 * d + d * d + b * d
    mlp = d * f + b * f + f * d + b * d
    block = 2 * ln + attn + mlp
    embedding = V * d + T * d + (0 if cfg.tied_embeddings else V * d)
    non_embedding = L * block + ln  # + final LayerNorm
    return {"embedding": embedding, "non_embedding": non_embedding, "total": embedding + non_embedding}


def n_params(cfg: ModelConfig, convention: ParamsConvention = "total") -> int:
    """N under a named convention: "total" (Chinchilla) or "non-embedding" (Kaplan)."""
    counts = count_params(cfg)
    return counts["total"] if convention == "total" else counts["non_embedding"]


def flops_per_token(
    cfg: ModelConfig, convention: ParamsConvention = "total", formula: FlopsFormula = "6nd"
) -> float:
    """Training FLOPs per token (forward + backward), so that C = flops_per_token · D.

    "6nd": 6 FLOPs per matmul parameter — 2 per multiply-add forward, twice that backward
    (Kaplan et al. 2020, Sec. 2.1). Under "total" N that is 6·N_total. Under "non-embedding" N
    it is 6·(N_nonembedding + V·d): the output projection (unembedding) is a V×d matmul at every
    token whether or not N counts its table, so C counts it either way — FLOPs are a property of
    the model, not of how N is counted (Porian et al. 2024, "Resolving discrepancies in
    compute-optimal scaling", the first of their factors; DeepSeek-AI 2024's M counts it too).
    Without it, C of a 2 x 128 model with GPT-2's 50,257 tokens would be 17x too small. The token
    and position lookups cost no matmul and stay out. "6nd+attn" adds the attention score and
    weighted-value matmuls that no parameter accounts for, 12·L·d·T per token over a full
    (non-causal) T×T map (PaLM, Chowdhery et al. 2022, App. B). Ignored by all: LayerNorm,
    softmax, GELU and the loss, each O(d) per token (< 1% at these shapes). ``flops_formula``
    names the formula in the form runs, plans and fits record.
    """
    counts = count_params(cfg)
    if convention == "total":
        base = 6.0 * counts["total"]
    else:
        base = 6.0 * (counts["non_embedding"] + cfg.vocab_size * cfg.d_model)
    if formula == "6nd+attn":
        base += 12.0 * cfg.n_layer * cfg.d_model * cfg.context
    return base


def flops_formula(convention: ParamsConvention = "total", formula: FlopsFormula = "6nd") -> str:
    """C per run as ``flops_per_token`` computes it under these conventions, as a short string
    (``"6ND"``, ``"(6N+12LdT)D"``, ``"6(N_nonemb+Vd)D"``, ``"(6(N_nonemb+Vd)+12LdT)D"``)."""
    matmul = "6N" if convention == "total" else "6(N_nonemb+Vd)"
    return f"{matmul}D" if formula == "6nd" else f"({matmul}+12LdT)D"


# ----------------------------------------------------------------------------- the module


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused QKV projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim), the layout scaled_dot_product_attention expects.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # Dispatches to FlashAttention / memory-efficient kernels on GPU; causal mask built in.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    """d → d_ff → d with GELU (tanh approximation, as GPT-2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # LayerNorms always carry a bias: count_params counts 2·d per LayerNorm.
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2-style decoder built from a ``ModelConfig`` (no dropout: runs are single-epoch-ish
    and scaling-law studies train without it).

    Its parameter count equals ``count_params(cfg)["total"]``, asserted at construction.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tied_embeddings:
            # One tensor serves as input table and output projection (Press & Wolf 2017).
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2L), so
        # the stream's variance does not grow with depth (Radford et al. 2019, Sec. 2.3).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        built = sum(p.numel() for p in self.parameters())
        assert built == count_params(cfg)["total"], (built, count_params(cfg))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: Literal["mean", "none"] = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean cross-entropy (nats/token) of next-token prediction, or the next token's logits.

        Parameters
        ----------
        idx, targets
            Token ids, shape (B, T) with T <= context. Without ``targets`` only the last
            position's logits are computed (what generation needs) and the loss is None.
        reduction
            "mean": the loss is one number; "none": the loss of every target, shape (B, T), in
            fp32 (the evaluation sums each row to store per-window losses).

        Returns
        -------
        (logits, loss)
            (None, loss) with targets; (logits of shape (B, 1, V), None) without. The
            training path returns no logits on purpose: under torch.compile a returned (B, T, V)
            tensor stays alive and gets a zero gradient that backward must fill and add — 14% of
            a 16M model's step on an H100 (measured, benchmarks/README.md).
        """
        _, T = idx.shape
        if T > self.cfg.context:
            raise ValueError(f"sequence of {T} tokens is longer than the model's context {self.cfg.context}")
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        recompute = self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.h:
            # Recomputing each block in backward trades ~1/3 more compute for activations
            # that no longer grow with depth.
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), reduction=reduction)
        return None, loss if reduction == "mean" else loss.view(targets.shape)

    def configure_optimizers(
        self, weight_decay: float, lr: float, betas: tuple[float, float], eps: float, device_type: str
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on every parameter of dim >= 2 and none on the rest.

        Matmul weights and embeddings decay; biases and LayerNorm gains/shifts do not. The
        fused CUDA kernel is used when this torch has it and the model is on a GPU. The two
        groups' sizes are in ``param_groups[i]["n_params"]`` for logging.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay, "n_params": sum(p.numel() for p in decay)},
            {"params": no_decay, "weight_decay": 0.0, "n_params": sum(p.numel() for p in no_decay)},
        ]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **extra)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; returns (B, T + new).

        ``temperature`` 0 is greedy decoding; ``top_k`` keeps only the k likeliest tokens.
        The window fed to the model is cropped to the last ``context`` tokens.
        """
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.context:])
            logits = logits[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
