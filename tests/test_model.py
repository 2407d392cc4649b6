"""GPT module: exact parameter counts, initial loss, causality, optimizer groups, generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scaling.config import ModelConfig
from scaling.model import GPT, count_params, flops_formula, flops_per_token, n_params


def shape(**kw: object) -> ModelConfig:
    base = dict(n_layer=2, d_model=32, n_head=4, d_ff=128, context=16, vocab_size=50)
    base.update(kw)
    return ModelConfig(**base).check()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cfg",
    [
        shape(),
        shape(tied_embeddings=False),
        shape(bias=False),
        shape(tied_embeddings=False, bias=False, n_layer=3, d_model=48, n_head=6, d_ff=100, vocab_size=97),
        shape(n_layer=1, d_model=8, n_head=1, d_ff=8, context=3, vocab_size=5),
    ],
    ids=["tied", "untied", "no-bias", "untied-no-bias-odd", "minimal"],
)
def test_param_counts_equal_the_built_module(cfg: ModelConfig) -> None:
    model = GPT(cfg)
    counts = count_params(cfg)
    assert sum(p.numel() for p in model.parameters()) == counts["total"] == n_params(cfg, "total")
    # Non-embedding: everything but the token table, the position table and an untied head.
    embedding = {"wte.weight", "wpe.weight"} | (set() if cfg.tied_embeddings else {"lm_head.weight"})
    non_emb = sum(p.numel() for name, p in model.named_parameters() if name not in embedding)
    assert non_emb == counts["non_embedding"] == n_params(cfg, "non-embedding")
    assert counts["embedding"] + counts["non_embedding"] == counts["total"]
    assert (model.lm_head.weight is model.wte.weight) == cfg.tied_embeddings
    assert flops_per_token(cfg, "total", "6nd+attn") - flops_per_token(cfg, "total", "6nd") == pytest.approx(
        12 * cfg.n_layer * cfg.d_model * cfg.context)


def test_non_embedding_flops_count_the_unembedding_by_hand() -> None:
    """C under non-embedding N counts the V x d output projection (Porian et al. 2024).

    Hand count, 2 x 128, d_ff 512, GPT-2's V = 50,257, T = 1024, tied, biases. One block:
    LayerNorms 2·(2·128) = 512; QKV 128·384 + 384 = 49,536; attention out 128·128 + 128 = 16,512;
    MLP 128·512 + 512 = 66,048 and 512·128 + 128 = 65,664; sum 198,272. Two blocks + final
    LayerNorm (256): N_nonemb = 396,800. Unembedding V·d = 6,432,896. 6·(396,800 + 6,432,896)
    = 40,978,176 FLOPs per token; attention adds 12·2·128·1024 = 3,145,728.
    """
    cfg = shape(n_layer=2, d_model=128, n_head=2, d_ff=512, context=1024, vocab_size=50257)
    assert count_params(cfg)["non_embedding"] == 396_800
    assert flops_per_token(cfg, "non-embedding", "6nd") == 40_978_176
    assert flops_per_token(cfg, "non-embedding", "6nd+attn") == 40_978_176 + 3_145_728
    # 6·N_nonemb alone (the old count) was 17x too small for this model.
    assert flops_per_token(cfg, "non-embedding") / (6 * 396_800) == pytest.approx(17.21, abs=0.01)
    # Tied: total N adds only the position table (a lookup, no matmul) to the same matmuls.
    assert flops_per_token(cfg, "total") - flops_per_token(cfg, "non-embedding") == 6 * 1024 * 128
    # Untied: the head is the same V x d matmul, so non-embedding C does not change.
    assert flops_per_token(shape(n_layer=2, d_model=128, n_head=2, d_ff=512, context=1024, vocab_size=50257,
                                 tied_embeddings=False), "non-embedding") == 40_978_176
    assert [flops_formula(p, f) for p in ("total", "non-embedding") for f in ("6nd", "6nd+attn")] == [
        "6ND", "(6N+12LdT)D", "6(N_nonemb+Vd)D", "(6(N_nonemb+Vd)+12LdT)D"]


def test_initial_loss_is_near_ln_vocab_and_forward_shapes() -> None:
    torch.manual_seed(0)
    cfg = shape(vocab_size=256, context=32)
    model = GPT(cfg)
    x = torch.randint(0, 256, (8, 32))
    y = torch.randint(0, 256, (8, 32))
    none, loss = model(x, y)
    assert none is None
    # Small init (std 0.02) gives near-uniform predictions: loss ≈ ln(V).
    assert loss is not None and abs(loss.item() - math.log(256)) < 0.1
    last, none = model(x)
    assert last.shape == (8, 1, 256) and none is None
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_attention_is_causal() -> None:
    # The full-sequence loss equals the mean of next-token losses computed from each prefix
    # alone: no position's prediction sees its future (and the training and generation paths agree).
    torch.manual_seed(0)
    model = GPT(shape())
    x = torch.randint(0, 50, (2, 16))
    y = torch.randint(0, 50, (2, 16))
    _, loss = model(x, y)
    per_prefix = [F.cross_entropy(model(x[:, : t + 1])[0][:, 0], y[:, t]) for t in range(16)]
    torch.testing.assert_close(loss, torch.stack(per_prefix).mean())


def test_gpt2_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    cfg = shape(n_layer=8, d_model=256, n_head=4, d_ff=1024)
    model = GPT(cfg)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * cfg.n_layer), rel=0.05), name
        elif name.endswith("c_attn.weight") or name == "wte.weight":
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith(".bias") and "ln" not in name:
            assert torch.count_nonzero(p) == 0, name


@pytest.mark.parametrize("tied", [True, False])
def test_optimizer_decays_matrices_only(tied: bool) -> None:
    model = GPT(shape(tied_embeddings=tied))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 1e-8, "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert decay["n_params"] + no_decay["n_params"] == count_params(model.cfg)["total"]
    assert {id(p) for p in decay["params"]} >= {id(model.wte.weight), id(model.lm_head.weight)}
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    plain = GPT(shape())
    ckpt = GPT(shape(grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randint(0, 50, (4, 16))
    losses = []
    for model in (plain, ckpt):
        _, loss = model(x, x)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_generate_lengths_range_and_greedy() -> None:
    torch.manual_seed(0)
    model = GPT(shape()).eval()
    prompt = torch.randint(0, 50, (2, 20))  # longer than the context: the window is cropped
    out = model.generate(prompt, 7, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 27) and torch.equal(out[:, :20], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < 50
    greedy = model.generate(prompt, 5, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, 5, top_k=1))
    again = model.generate(prompt, 7, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
