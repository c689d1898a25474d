"""The decode step in numpy, for a float32 model on the CPU: what batch-1 chat runs on.

At batch 1 a decode step is one matrix-vector product per weight matrix (17 for seed-2.5m,
which stream all 10 MB of its weights) and about a hundred small operations around them.
On a 2-core AMD EPYC, one thread, torch 2.13.0 (CPU build, MKL), 2026-11-29:

- the 17 products took ~365 us a token through `F.linear` (MKL) and ~240 us through numpy
  (OpenBLAS, x @ W with W stored transposed), run after run;
- a small operation costs ~0.5-2 us in numpy against ~1.5-5 us in torch, and one
  `F.rms_norm` ~35 us: the small operations cost more than the products in torch.

So this step is `DecodeStep`'s arithmetic (and so `GPT.forward`'s) in numpy, with the
weights rearranged once so that each token needs as few operations as possible:

- each RMSNorm's gain is folded into the matrix that reads its output, with sqrt(d_model):
  W @ (g * x / sqrt(mean(x^2) + eps)) == (W * g * sqrt(C)) @ (x / sqrt(sum(x^2) + C * eps));
- attention's 1/sqrt(head_dim) is folded into the query rows (rotation is linear), or,
  with QK-norm, into the norm the queries are scaled to;
- the MLP's gate rows are halved, since silu(g) = g/2 * (1 + tanh(g/2)): three operations
  and a tanh, which unlike exp(-g) cannot overflow;
- the rotary rotation of a position is one (head_dim, head_dim) matrix, built once a step
  and applied to every query and key head in one product;
- every matrix is stored transposed and contiguous, so that each product is x @ W.

The rearranged copy (the model's size again in memory) is made once per model and reused
while its weights are unchanged. The KV cache is the torch one, seen through numpy views:
prefill and window slides through `GPT.forward` write the keys this step reads.
`tests/test_decode_step.py` holds its logits and cache to `GPT.forward`'s.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import numpy as np
import torch

from slm.device import set_blas_threads
from slm.model import GPT, KVCache


class _Layer(NamedTuple):
    qkv: np.ndarray  # (C, (H + 2 KV) hd): attention's norm, and 1/sqrt(hd) on the q columns
    out: np.ndarray  # (H hd, C)
    gate_up: np.ndarray  # (C, 2 d_ff): the MLP's norm folded in, the gate halved
    down: np.ndarray  # (d_ff, C)


class _Weights(NamedTuple):
    embedding: np.ndarray  # (vocab, C): the model's own table, not a copy
    layers: list[_Layer]
    head: np.ndarray  # (C, vocab): the tied head with the final norm folded in
    buffer: np.ndarray  # every matrix above but the embedding, end to end (1-D)
    entries: np.ndarray  # (n_matrices, 3) int64: each matrix's offset in `buffer`, rows, cols


_prepared: weakref.WeakKeyDictionary[GPT, tuple[tuple, _Weights]] = weakref.WeakKeyDictionary()


def _fingerprint(model: GPT) -> tuple | None:
    """Changes whenever a weight does: in-place updates bump a tensor's version counter.

    None for weights made under `torch.inference_mode()`, which keep no counter: such a
    model is rearranged again for every generation (~1 ms per MB of weights).
    """
    params = list(model.parameters())
    if any(p.is_inference() for p in params):
        return None
    return tuple((p.data_ptr(), p._version) for p in params)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _prepare(model: GPT) -> _Weights:
    config = model.config
    gain = math.sqrt(config.d_model)
    q_dim = config.n_heads * config.head_dim
    query_scale = np.ones(_numpy(model.layers[0].attn.qkv.weight).shape[0], dtype=np.float32)
    if not config.qk_norm:  # with it, the step scales the normalized queries instead
        query_scale[:q_dim] = config.head_dim**-0.5
    half_gate = np.ones(2 * config.d_ff, dtype=np.float32)
    half_gate[: config.d_ff] = 0.5
    matrices = []  # (out, in), in the order a step reads them
    for block in model.layers:
        qkv = _numpy(block.attn.qkv.weight) * query_scale[:, None]
        matrices += [
            qkv * (_numpy(block.attn_norm.weight) * gain),
            _numpy(block.attn.out.weight),
            _numpy(block.mlp.gate_up.weight)
            * half_gate[:, None]
            * (_numpy(block.mlp_norm.weight) * gain),
            _numpy(block.mlp.down.weight),
        ]
    embedding = _numpy(model.tok_emb.weight)
    matrices.append(embedding * (_numpy(model.norm.weight) * gain))
    buffer, entries = pack([m.T for m in matrices])
    packed = [buffer[o : o + rows * cols].reshape(rows, cols) for o, rows, cols in entries]
    layers = [_Layer(*packed[i : i + 4]) for i in range(0, len(packed) - 1, 4)]
    return _Weights(embedding, layers, packed[-1], buffer, entries)


def pack(matrices: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Copies of `matrices`, one after another in one buffer, each starting on a cache line.

    A step reads them in this order; laid end to end, the next matrix is where the memory
    prefetcher already looks (the 17 products of seed-2.5m: 235 us against 254 apart).
    Returns the buffer and each copy's (offset, rows, cols) in it.
    """
    line = 16  # float32s in a 64-byte cache line
    sizes = [-(-m.size // line) * line for m in matrices]
    buffer = np.empty(sum(sizes) + line, dtype=np.float32)
    offset = (-buffer.ctypes.data // 4) % line
    entries = []
    for m, size in zip(matrices, sizes, strict=True):
        buffer[offset : offset + m.size].reshape(m.shape)[...] = m
        entries.append((offset, *m.shape))
        offset += size
    return buffer, np.array(entries, dtype=np.int64)


def prepared_weights(model: GPT) -> _Weights:
    """The rearranged weights of `model`, made again only when one of its weights changed."""
    fingerprint = _fingerprint(model)
    kept = _prepared.get(model)
    if kept is None or fingerprint is None or kept[0] != fingerprint:
        with torch.no_grad():
            kept = (fingerprint, _prepare(model))
        _prepared[model] = kept
    return kept[1]


if hasattr(np, "vecdot"):  # numpy >= 2

    def _sum_squares(x: np.ndarray) -> np.ndarray:
        return np.vecdot(x, x)[:, None]

else:

    def _sum_squares(x: np.ndarray) -> np.ndarray:
        return np.einsum("bc,bc->b", x, x)[:, None]


class CpuDecodeStep:
    """Call with the newest token of each sequence (B,) -> next-token logits (B, vocab).

    The same contract as `DecodeStep.__call__`: every row at `cache.pos`, which it advances.
    """

    def __init__(self, model: GPT, cache: KVCache):
        config = model.config
        self.cache = cache
        self.weights = prepared_weights(model)
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim, self.d_ff = config.head_dim, config.d_ff
        self.norm_eps = config.d_model * config.norm_eps  # eps scaled like the folded gains
        self.qk_norm, self.head_eps = config.qk_norm, config.head_dim * config.norm_eps
        self.k = [_numpy(layer_k) for layer_k in cache.k]  # (B, KV, max_len, hd) views
        self.v = [_numpy(layer_v) for layer_v in cache.v]
        # rotate_half(x) * sin == roll(x, half) * sin_rot: column j of the rotation takes
        # cos[j] from row j and sin_rot[j] from row (j + half) mod hd; the rest stay zero.
        self.cos, sin = _numpy(model.rope_cos), _numpy(model.rope_sin)
        half = config.head_dim // 2
        self.sin_rot = np.concatenate([-sin[:, :half], sin[:, half:]], axis=-1)
        self.columns = np.arange(config.head_dim)
        self.partners = (self.columns + half) % config.head_dim
        self.rotation = np.zeros((config.head_dim, config.head_dim), dtype=np.float32)
        set_blas_threads(torch.get_num_threads())  # numpy's BLAS follows slm's thread count

    def _normed(self, x: np.ndarray) -> np.ndarray:
        """x / rms(x), up to the sqrt(C) folded into the next matrix."""
        if len(x) == 1:  # batch 1: a Python float saves two array operations (~3 us)
            return x * (1.0 / math.sqrt(float(x[0] @ x[0]) + self.norm_eps))
        return x / np.sqrt(_sum_squares(x) + self.norm_eps)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.numpy_logits(tokens.numpy()))

    def numpy_logits(self, tokens: np.ndarray) -> np.ndarray:
        """`__call__` in numpy, for callers that keep their ids there (greedy on the CPU)."""
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        pos = self.cache.pos
        if pos >= self.cache.max_len:
            raise ValueError(f"the cache is full ({self.cache.max_len} positions)")
        self.rotation[self.columns, self.columns] = self.cos[pos]
        self.rotation[self.partners, self.columns] = self.sin_rot[pos]
        weights = self.weights
        x = weights.embedding[tokens]  # (B, C)
        B = x.shape[0]
        for layer, k_cache, v_cache in zip(weights.layers, self.k, self.v, strict=True):
            qkv = self._normed(x) @ layer.qkv  # (B, (H + 2 KV) hd)
            qk = (qkv[:, : (H + KV) * hd].reshape(-1, hd) @ self.rotation).reshape(B, -1, hd)
            if self.qk_norm:  # after the rotation, which keeps each head's norm
                self._qk_normed(qk)
            k_cache[:, :, pos] = qk[:, H:]
            v_cache[:, :, pos] = qkv[:, (H + KV) * hd :].reshape(B, KV, hd)
            y = self._attend(qk[:, :H], k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1])
            x += y @ layer.out
            gate_up = self._normed(x) @ layer.gate_up
            gate, up = gate_up[:, : self.d_ff], gate_up[:, self.d_ff :]
            x += ((1.0 + np.tanh(gate)) * gate * up) @ layer.down  # silu(2 gate) * up
        self.cache.advance(1)
        return self._normed(x) @ weights.head

    def _qk_normed(self, qk: np.ndarray) -> None:
        """QK-norm in place on (B, H + KV, hd): keys to unit RMS, queries to norm 1, which
        is unit RMS times the 1/sqrt(hd) that scores are scaled by."""
        qk /= np.sqrt(np.einsum("bhd,bhd->bh", qk, qk)[..., None] + self.head_eps)
        qk[:, self.n_heads :] *= math.sqrt(self.head_dim)

    def _attend(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        """q (B, H, hd) over the cached keys/values (B, KV, T, hd) -> (B, H * hd).

        The H query heads are grouped by the key head they share, so grouped-query
        attention needs no copy of the keys.
        """
        B, KV = keys.shape[0], keys.shape[1]
        q = q.reshape(B, KV, -1, self.head_dim)  # (B, KV, H / KV, hd)
        scores = q @ keys.swapaxes(-1, -2)  # (B, KV, H / KV, T), already scaled
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        y = (scores @ values) / scores.sum(axis=-1, keepdims=True)
        return y.reshape(B, -1)
