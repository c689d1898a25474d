"""The model against plain maths: attention, RoPE, caching, GQA, shapes, parameter counts."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slm.config import ModelConfig, preset
from slm.model import GPT, KVCache, apply_rope, count_parameters, rope_tables, rotate_half


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{**preset("tiny"), **overrides})


# The README's preset table, to the parameter: a change to the model's shape must show here.
PRESET_PARAMETERS = {
    "tiny": 139_584,
    "seed-2.5m": 2_557_632,
    "small": 10_424_448,
    "medium": 29_893_120,
    "124m": 123_587_328,
}


@pytest.mark.parametrize("name", list(PRESET_PARAMETERS))
def test_presets_are_the_advertised_size(name):
    with torch.device("meta"):  # no memory, no init: 124m costs nothing
        model = GPT(ModelConfig(**preset(name)))
    assert count_parameters(model) == PRESET_PARAMETERS[name]


def test_the_readme_table_gives_the_same_parameter_counts():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w.-]+)`[^\n]*\| ([\d,]+) \|$", readme, flags=re.MULTILINE)
    assert {name: int(n.replace(",", "")) for name, n in rows} == PRESET_PARAMETERS


def test_output_head_is_tied_to_embedding():
    torch.manual_seed(0)
    model = GPT(tiny())
    names = [n for n, _ in model.named_parameters()]
    assert not any("head" in n for n in names)
    x = torch.tensor([[1, 2, 3, 4, 5]])  # no token 7: its embedding row feeds only the head
    normed = []
    model.norm.register_forward_hook(lambda _module, _args, out: normed.append(out))
    with torch.no_grad():
        before = model(x)
        # logits = norm(h) @ tok_emb.weight.T, with no other output matrix
        torch.testing.assert_close(before, normed[0] @ model.tok_emb.weight.T)
        model.tok_emb.weight[7].add_(1.0)
        after = model(x)
    others = [i for i in range(512) if i != 7]
    torch.testing.assert_close(after[..., others], before[..., others])
    torch.testing.assert_close(after[..., 7], before[..., 7] + normed[0].sum(-1))


def naive_attention(q, k, v):
    """softmax(q k^T / sqrt(d) + causal mask) v, written out."""
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("qk_norm", [True, False], ids=["qk-norm", "plain"])
def test_attention_matches_naive_maths(qk_norm: bool):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**tiny().to_dict(), "qk_norm": qk_norm})
    model = GPT(cfg)
    attn = model.layers[0].attn
    x = torch.randn(2, 9, cfg.d_model)
    cos, sin = model.rope_cos[:9], model.rope_sin[:9]
    q, k, v = attn.qkv(x).split(cfg.d_model, dim=-1)
    shape = (2, 9, cfg.n_heads, cfg.head_dim)
    q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
    if qk_norm:  # each head's query and key divided by its root mean square
        q = q / (q.square().mean(-1, keepdim=True) + cfg.norm_eps).sqrt()
        k = k / (k.square().mean(-1, keepdim=True) + cfg.norm_eps).sqrt()
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    expected = attn.out(naive_attention(q, k, v).transpose(1, 2).reshape(2, 9, cfg.d_model))
    torch.testing.assert_close(attn(x, cos, sin), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    """What QK-norm is for: query/key weights grown 50x leave the scores where they were,
    where without it the softmax would saturate on one key."""
    torch.manual_seed(0)
    x = torch.randn(1, 9, tiny().d_model)
    for qk_norm in (True, False):
        cfg = ModelConfig(**{**tiny().to_dict(), "qk_norm": qk_norm})
        attn = GPT(cfg).layers[0].attn
        cos, sin = rope_tables(cfg.head_dim, 9, cfg.rope_theta)
        before = attn(x, cos, sin)
        attn.qkv.weight[: 2 * cfg.d_model] *= 50.0  # the query and key rows
        after = attn(x, cos, sin)
        assert torch.allclose(after, before, atol=1e-5) == qk_norm


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(8, 32, 10000.0)
    q = torch.randn(8)
    k = torch.randn(8)

    def score(i, j):
        qi = apply_rope(q.view(1, 1, 1, 8), cos[i], sin[i])
        kj = apply_rope(k.view(1, 1, 1, 8), cos[j], sin[j])
        return float((qi * kj).sum())

    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_rotate_half_is_a_quarter_turn():
    x = torch.arange(4.0)
    assert rotate_half(x).tolist() == [-2.0, -3.0, 0.0, 1.0]
    torch.testing.assert_close(rotate_half(rotate_half(x)), -x)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_kv_cache_gives_the_same_logits_as_full_recompute(n_kv_heads):
    torch.manual_seed(1)
    model = GPT(tiny(n_kv_heads=n_kv_heads)).eval()
    idx = torch.randint(0, 512, (3, 20))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config, batch_size=3)
        pieces = [model(idx[:, :11], cache), model(idx[:, 11:12], cache), model(idx[:, 12:], cache)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.pos == 20


def test_last_only_returns_the_final_position():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx, last_only=True), model(idx)[:, -1:])


def test_sequence_longer_than_context_is_refused():
    model = GPT(tiny(context_len=8))
    with pytest.raises(ValueError, match="exceeds context_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_causality_future_tokens_do_not_change_past_logits():
    model = GPT(tiny()).eval()
    a = torch.randint(0, 512, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 512
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :8], model(b)[:, :8])


def test_initial_loss_is_near_uniform_and_residual_projections_are_scaled():
    torch.manual_seed(0)
    cfg = tiny()
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (4, 32))
    targets = torch.randint(0, cfg.vocab_size, (4, 32))
    with torch.no_grad():
        loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    assert abs(float(loss) - math.log(cfg.vocab_size)) < 0.1
    out_std = float(model.layers[0].attn.out.weight.detach().std())
    qkv_std = float(model.layers[0].attn.qkv.weight.detach().std())
    assert out_std == pytest.approx(qkv_std / math.sqrt(2 * cfg.n_layers), rel=0.15)


def test_gradients_reach_every_parameter():
    model = GPT(tiny())
    idx = torch.randint(0, 512, (2, 16))
    F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
