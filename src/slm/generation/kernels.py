"""The compiled functions of `compiled_step` (numba): imported only when that step loads.

Module-level functions so that numba's cache can key them by name: compiled once (~5 s),
then loaded from the cache by every later process (~0.3 s).
"""

import math

import numpy as np
from numba import njit

# Let LLVM fuse multiply-adds and reorder sums (what vectorises a dot product); NaN and
# infinity keep their meaning, so a diverged model still shows as NaN logits.
FASTMATH = {"contract", "reassoc", "arcp", "nsz"}

jit = njit(cache=True, fastmath=FASTMATH, nogil=True)
Array = np.ndarray


@jit
def matvec(x: Array, weights: Array, entry: Array, out: Array) -> None:
    """out = x @ W, for W the (K, N) matrix at entry = (offset, K, N) of `weights`."""
    offset, K, N = entry[0], entry[1], entry[2]
    W = weights[offset : offset + K * N].reshape((K, N))
    out[:] = 0.0
    tail = K - K % 8
    for i in range(0, tail, 8):  # eight rows a pass: `out` is read once per 8 weights
        w0, w1, w2, w3 = W[i], W[i + 1], W[i + 2], W[i + 3]
        w4, w5, w6, w7 = W[i + 4], W[i + 5], W[i + 6], W[i + 7]
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        x4, x5, x6, x7 = x[i + 4], x[i + 5], x[i + 6], x[i + 7]
        for j in range(N):
            out[j] += (x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j]) + (
                x4 * w4[j] + x5 * w5[j] + x6 * w6[j] + x7 * w7[j]
            )
    for i in range(tail, K):
        for j in range(N):
            out[j] += x[i] * W[i, j]


@jit
def normed(x: Array, eps: np.float32, out: Array) -> None:
    """out = x / rms(x), up to the sqrt(C) folded into the next matrix."""
    total = np.float32(0.0)
    for c in range(x.shape[0]):
        total += x[c] * x[c]
    scale = np.float32(1.0 / math.sqrt(total + eps))
    for c in range(x.shape[0]):
        out[c] = x[c] * scale


@jit
def rotate(head: Array, cos: Array, sin_rot: Array, out: Array) -> None:
    """Rotary positions: out[j] = head[j] cos[j] + head[partner j] sin_rot[j]."""
    half = head.shape[0] // 2
    for j in range(half):
        out[j] = head[j] * cos[j] + head[j + half] * sin_rot[j]
        out[j + half] = head[j + half] * cos[j + half] + head[j] * sin_rot[j + half]


@jit
def scale_to_norm(head: Array, norm: np.float32, eps: np.float32) -> None:
    """head *= norm / sqrt(sum(head^2) + eps), in place: QK-norm, after the rotation (a
    rotation keeps the norm, so before or after gives the same vector)."""
    total = np.float32(0.0)
    for d in range(head.shape[0]):
        total += head[d] * head[d]
    scale = np.float32(norm / math.sqrt(total + eps))
    for d in range(head.shape[0]):
        head[d] *= scale


@jit
def attend(q: Array, keys: Array, values: Array, scores: Array, out: Array) -> None:
    """One query head over the T cached keys/values (T, hd): softmax(q.k) @ v."""
    T, hd = keys.shape[0], keys.shape[1]
    top = np.float32(-np.inf)
    for t in range(T):
        dot = np.float32(0.0)
        for d in range(hd):
            dot += q[d] * keys[t, d]
        scores[t] = dot  # already scaled: 1/sqrt(hd) is in the query rows
        top = max(top, dot)
    total = np.float32(0.0)
    for t in range(T):
        scores[t] = math.exp(scores[t] - top)
        total += scores[t]
    out[:] = 0.0
    for t in range(T):
        p = scores[t] / total
        for d in range(hd):
            out[d] += p * values[t, d]


@jit
def step(
    token: int, pos: int, embedding: Array, weights: Array, entries: Array,
    cos: Array, sin_rot: Array, k: Array, v: Array, dims: Array, eps: np.float32,
    head_eps: np.float32,
) -> Array:  # fmt: skip
    """Logits (vocab,) for `token` at `pos`; writes its keys/values into k, v (L, KV, T, hd).

    `weights` and `entries` are `cpu_step`'s packed matrices, four a layer (qkv, out,
    gate_up, down) and the head; dims = (n_heads, n_kv_heads, head_dim, d_ff, qk_norm).
    With qk_norm, queries go to norm 1 (unit RMS times the score's 1/sqrt(hd)) and keys to
    unit RMS; `head_eps` is the model's eps times head_dim, as a sum of squares needs.
    """
    H, KV, hd, d_ff, qk_norm = dims[0], dims[1], dims[2], dims[3], dims[4]
    key_norm = np.float32(math.sqrt(hd))
    n_layers, group = k.shape[0], H // KV
    x = embedding[token].copy()
    h = np.empty_like(x)
    delta = np.empty_like(x)
    qkv = np.empty((H + 2 * KV) * hd, np.float32)
    q = np.empty(H * hd, np.float32)
    y = np.empty(H * hd, np.float32)
    gate_up = np.empty(2 * d_ff, np.float32)
    act = np.empty(d_ff, np.float32)
    scores = np.empty(pos + 1, np.float32)
    for layer in range(n_layers):
        normed(x, eps, h)
        matvec(h, weights, entries[4 * layer], qkv)
        for head in range(H):
            part = slice(head * hd, (head + 1) * hd)
            rotate(qkv[part], cos[pos], sin_rot[pos], q[part])
            if qk_norm:
                scale_to_norm(q[part], np.float32(1.0), head_eps)
        for g in range(KV):
            rotate(qkv[(H + g) * hd : (H + g + 1) * hd], cos[pos], sin_rot[pos], k[layer, g, pos])
            if qk_norm:
                scale_to_norm(k[layer, g, pos], key_norm, head_eps)
            v[layer, g, pos] = qkv[(H + KV + g) * hd : (H + KV + g + 1) * hd]
        for head in range(H):
            g = head // group  # grouped-query heads share a key/value head
            part = slice(head * hd, (head + 1) * hd)
            attend(q[part], k[layer, g, : pos + 1], v[layer, g, : pos + 1], scores, y[part])
        matvec(y, weights, entries[4 * layer + 1], delta)
        x += delta
        normed(x, eps, h)
        matvec(h, weights, entries[4 * layer + 2], gate_up)
        for j in range(d_ff):  # silu(2 gate) * up, the gate rows already halved
            gate = gate_up[j]
            act[j] = (np.float32(1.0) + math.tanh(gate)) * gate * gate_up[d_ff + j]
        matvec(act, weights, entries[4 * layer + 3], delta)
        x += delta
    normed(x, eps, h)
    logits = np.empty(entries[-1, 2], np.float32)
    matvec(h, weights, entries[-1], logits)
    return logits
