"""One decode step, lean: `GPT.forward`'s arithmetic for one new token per sequence.

`GPT.forward` is written to be read and to train: modules, (B, T, C) shapes, any T. When
generating, T is 1 and the sums are matrix-vector products that take ~200 us for seed-2.5m;
the ~180 small tensor operations around them took longer than that (each costs 1-2 us of
dispatch whatever its size). `DecodeStep` does the same sums with fewer operations:

- the weights are looked up once, not through ~40 module calls per step;
- queries and keys are rotated together, with `roll` and a sign-folded sine table in place
  of split-negate-concatenate (rotate_half(x) * sin == roll(x, half) * sin_rot, exactly);
- keys and values are written straight into the cache at their position.

On seed-2.5m at batch 1, one thread: 113 operations a step against 179, and 1.4-1.6x less
time than the same step through `forward` in interleaved runs (`slm bench` reports both).
`tests/test_decode.py` holds its logits and cache to `forward`'s.
Prefill, and re-prefill when the window slides, still go through `forward` (T > 1).

`DecodeStep.at_positions` is the same step for rows that stand at different positions (the
server's continuous batching, `slm.serve.engine`): each row's rotary angles and cache slot
come from its own position, and a mask hides the keys past it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from slm.model import GPT, KVCache


class _Layer(NamedTuple):
    attn_norm: torch.Tensor
    qkv: torch.Tensor
    out: torch.Tensor
    mlp_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    k: torch.Tensor  # this layer's cache: (B, n_kv_heads, max_len, head_dim)
    v: torch.Tensor


class DecodeStep:
    """Call with the newest token of each sequence (B,) -> next-token logits (B, vocab)."""

    def __init__(self, model: GPT, cache: KVCache):
        config = model.config
        self.cache = cache
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim, self.d_ff, self.eps = config.head_dim, config.d_ff, config.norm_eps
        self.qk_norm = config.qk_norm
        self.width = (config.d_model,)
        self.embedding = model.tok_emb.weight
        self.final_norm = model.norm.weight
        half = config.head_dim // 2
        self.half = half
        self.cos = model.rope_cos
        # rotate_half(x) = (-x2, x1) = roll(x, half) with the first half negated; the sign goes
        # into the table instead of into every step.
        self.sin_rot = torch.cat([-model.rope_sin[:, :half], model.rope_sin[:, half:]], dim=-1)
        self.layers = [
            _Layer(
                block.attn_norm.weight,
                block.attn.qkv.weight,
                block.attn.out.weight,
                block.mlp_norm.weight,
                block.mlp.gate_up.weight,
                block.mlp.down.weight,
                cache.k[i],
                cache.v[i],
            )
            for i, block in enumerate(model.layers)
        ]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        pos = self.cache.pos
        if pos >= self.cache.max_len:
            raise ValueError(f"the cache is full ({self.cache.max_len} positions)")
        B = tokens.shape[0]
        cos, sin_rot = self.cos[pos], self.sin_rot[pos]  # (hd,)
        x = F.embedding(tokens, self.embedding)  # (B, C)
        for layer in self.layers:
            h = F.rms_norm(x, self.width, layer.attn_norm, self.eps)
            qk, v = F.linear(h, layer.qkv).view(B, H + 2 * KV, hd).split([H + KV, KV], dim=1)
            if self.qk_norm:
                qk = F.rms_norm(qk, (hd,), eps=self.eps)
            qk = qk * cos + qk.roll(self.half, dims=-1) * sin_rot  # q and k rotated together
            q, k = qk.split([H, KV], dim=1)
            layer.k.select(2, pos).copy_(k)
            layer.v.select(2, pos).copy_(v)
            k, v = layer.k.narrow(2, 0, pos + 1), layer.v.narrow(2, 0, pos + 1)
            if KV != H:
                k = k.repeat_interleave(H // KV, dim=1)
                v = v.repeat_interleave(H // KV, dim=1)
            y = F.scaled_dot_product_attention(q.unsqueeze(2), k, v)  # (B, H, 1, hd)
            x = x + F.linear(y.view(B, H * hd), layer.out)
            h = F.rms_norm(x, self.width, layer.mlp_norm, self.eps)
            gate, up = F.linear(h, layer.gate_up).split(self.d_ff, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        self.cache.advance(1)
        x = F.rms_norm(x, self.width, self.final_norm, self.eps)
        return F.linear(x, self.embedding)  # the tied head, as in GPT.forward

    def at_positions(
        self, tokens: torch.Tensor, positions: torch.Tensor, length: int
    ) -> torch.Tensor:
        """Rows 0..B-1 of the cache, each at its own position: tokens, positions (B,) -> logits.

        Row b's token goes to position `positions[b]` and attends to keys 0..positions[b];
        `length` is max(positions) + 1 (given by the caller, who knows it without a device
        sync). `cache.pos` is neither read nor moved: the caller tracks every row's position.
        Keys past a row's position (a longer neighbour's, or a finished request's) are masked,
        so what a row sees is exactly what `__call__` would give it alone, up to float
        rounding in the masked softmax.
        """
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if length > self.cache.max_len:
            raise ValueError(f"the cache is full ({self.cache.max_len} positions)")
        B = tokens.shape[0]
        rows = torch.arange(B, device=tokens.device)
        cos = self.cos[positions].unsqueeze(1)  # (B, 1, hd): one angle per row, every head
        sin_rot = self.sin_rot[positions].unsqueeze(1)
        keys = torch.arange(length, device=tokens.device)
        visible = (keys <= positions.unsqueeze(1)).view(B, 1, 1, length)  # (B, 1, 1, T)
        x = F.embedding(tokens, self.embedding)  # (B, C)
        for layer in self.layers:
            h = F.rms_norm(x, self.width, layer.attn_norm, self.eps)
            qk, v = F.linear(h, layer.qkv).view(B, H + 2 * KV, hd).split([H + KV, KV], dim=1)
            if self.qk_norm:
                qk = F.rms_norm(qk, (hd,), eps=self.eps)
            qk = qk * cos + qk.roll(self.half, dims=-1) * sin_rot
            q, k = qk.split([H, KV], dim=1)
            layer.k[rows, :, positions] = k  # (B, KV, hd) into each row's own slot
            layer.v[rows, :, positions] = v
            k, v = layer.k[:B, :, :length], layer.v[:B, :, :length]
            if KV != H:
                k = k.repeat_interleave(H // KV, dim=1)
                v = v.repeat_interleave(H // KV, dim=1)
            y = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=visible)
            x = x + F.linear(y.view(B, H * hd), layer.out)
            h = F.rms_norm(x, self.width, layer.mlp_norm, self.eps)
            gate, up = F.linear(h, layer.gate_up).split(self.d_ff, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        x = F.rms_norm(x, self.width, self.final_norm, self.eps)
        return F.linear(x, self.embedding)
