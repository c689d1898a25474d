"""The model: a Llama-style decoder-only transformer, readable top to bottom.

Parts are defined before use: RMSNorm -> rotary embeddings -> attention (with a KV cache for
generation) -> SwiGLU MLP -> block -> the model. Shapes are written as (B, T, C): batch,
time (tokens), channels (d_model). This file imports only torch and the config, so it can be
read alone. `forward` returns logits; callers (training, evaluation) compute their own loss.

The layout maps one-to-one onto a Llama checkpoint: q/k/v and gate/up are stored fused
(one matrix multiply instead of three or two, which is measurably faster on a CPU at this
size) and the exporter splits them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slm.config import ModelConfig


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned gain.

    Cheaper than LayerNorm (no mean, no bias) and what Llama uses; `F.rms_norm` runs it as
    one fused kernel.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_len, head_dim) for rotary position embeddings.

    Pair i of each head rotates at frequency theta^(-2i/head_dim). Both halves of the table
    repeat the same frequencies: the "rotate-half" layout, which pairs dimension i with
    i + head_dim/2 (the convention of Llama checkpoints).
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys (B, H, T, head_dim) by their position's angles (T, head_dim).

    After rotation, q·k depends only on the distance between the two positions.
    """
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of past tokens, so generation computes each new token once.

    Preallocated for `max_len` positions: (n_layers, B, n_kv_heads, max_len, head_dim).
    Without it, each new token recomputes attention over the whole prefix. Filled in place,
    never replaced: the CPU decode steps read and write it through numpy views.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.max_len = max_len or config.context_len
        shape = (config.n_layers, batch_size, config.n_kv_heads, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, KV, T, hd) keys/values; return all of them so far."""
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n_tokens: int) -> None:
        self.pos += n_tokens

    def reset(self) -> None:
        self.pos = 0


class Attention(nn.Module):
    """Causal self-attention with rotary positions and optional grouped-query heads.

    With n_kv_heads < n_heads, groups of query heads share one key/value head: a smaller
    KV cache for the same number of query heads. With `qk_norm`, each head's query and key
    are scaled to unit RMS (no gain) before they meet, so a score q·k/sqrt(head_dim) lies
    within ±sqrt(head_dim) however large the projection weights grow, and no head's softmax
    saturates on one key. It is the largest single gain measured for this model (0.06-0.07
    bits per byte at 2 M tokens, benchmarks/README.md).
    """

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.qk_norm = config.qk_norm
        self.eps = config.norm_eps
        qkv_dim = (config.n_heads + 2 * config.n_kv_heads) * config.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_dim, bias=False)
        self.out = nn.Linear(config.n_heads * config.head_dim, config.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q_dim = self.n_heads * self.head_dim
        kv_dim = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        # (B, T, heads * hd) -> (B, heads, T, hd): attention runs per head.
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q = F.rms_norm(q, (self.head_dim,), eps=self.eps)
            k = F.rms_norm(k, (self.head_dim,), eps=self.eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer, k, v)
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)

        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v)  # one new token sees everything before
        else:
            # New tokens i (absolute position past+i) see keys 0..past+i.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, q_dim)  # (B, H, T, hd) -> (B, T, C)
        return self.out(y)


class SwiGLU(nn.Module):
    """The feed-forward part: down(silu(gate(x)) * up(x)).

    The gate lets each hidden unit switch its own input on or off; it trains better than a
    plain GELU MLP of the same parameter count.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.d_ff = config.d_ff
        self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.d_ff, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """One transformer layer: x + attention(norm(x)), then x + mlp(norm(x)).

    Pre-norm keeps an un-normalized residual stream from input to output, which keeps deep
    stacks stable without careful learning-rate tuning.
    """

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        cos, sin = rope_tables(config.head_dim, config.context_len, config.rope_theta)
        # Not saved with the weights: they are a pure function of the config.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02), and residual projections shrunk by sqrt(2 * layers).

        Each layer adds two projections into the residual stream; shrinking them keeps the
        stream's variance about constant with depth at the start of training.
        """
        std = 0.02
        for name, param in self.named_parameters():
            if param.dim() < 2:
                continue  # norm gains stay at 1
            scale = (
                math.sqrt(2 * self.config.n_layers)
                if name.endswith(("out.weight", "down.weight"))
                else 1.0
            )
            nn.init.normal_(param, mean=0.0, std=std / scale)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for each position of `idx` (B, T), or only the last one if `last_only`.

        With a `cache`, `idx` continues the tokens already in it (positions cache.pos...).
        """
        T = idx.shape[1]
        start = cache.pos if cache is not None else 0
        if start + T > self.config.context_len:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds context_len {self.config.context_len}"
            )
        cos = self.rope_cos[start : start + T]
        sin = self.rope_sin[start : start + T]
        x = self.tok_emb(idx)  # (B, T, C)
        for block in self.layers:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:, :]
        x = self.norm(x)
        # Weight tying: the output head is the embedding matrix read backwards. It saves
        # vocab_size * d_model parameters (a third of seed-2.5m) and trains better when small.
        return F.linear(x, self.tok_emb.weight)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the tied embedding counted once."""
    return sum(p.numel() for p in model.parameters())
