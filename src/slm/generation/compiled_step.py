"""The batch-1 decode step compiled to machine code (numba): what chat runs on, on a CPU.

One new token of a small model is 17 matrix-vector products and about a hundred small
operations between them. In numpy (`cpu_step`) each small operation costs 1-4 us of Python
and dispatch, whatever its size: on seed-2.5m they took 243 us a step against 230 us for all
the products. Here the whole step is one compiled function, so they cost what their
arithmetic costs. On a 2-core AMD EPYC, one thread, 2026-11-29: 266 us a step against 450
in numpy (seed-2.5m, batch 1).

The products themselves read eight rows of the weight matrix per pass over the output, so
the output is loaded and stored once per eight weights: the 17 products of seed-2.5m took
192 us against numpy's 234 (OpenBLAS), small's 21 (42 MB, from memory) 1,479 against 1,899.

The weights are `cpu_step`'s rearranged copy (norm gains folded into the matrices, the
query scale into the query rows, the gate halved so SiLU is one tanh), and the KV cache is
the torch one seen through numpy, so prefill through `GPT.forward` fills what this reads.
`tests/test_decode_step.py` holds its logits and cache to `GPT.forward`'s.

numba compiles the functions below on their first call (~5 s) and keeps the machine code
in its cache (`__pycache__` beside this file, or numba's per-user cache where that is not
writable), so later processes load it in ~0.3 s. Without numba, `lean_step` falls back to
the numpy step.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from slm.generation.cpu_step import prepared_weights
from slm.model import GPT, KVCache


@functools.cache
def numba_available() -> bool:
    """Whether numba imports here (it is a dependency, but not every platform has wheels)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel() -> Any:
    """The compiled step; imported on first use, so that importing slm never imports numba."""
    from slm.generation.kernels import step

    return step


class CompiledDecodeStep:
    """Call with the newest token (1,) -> next-token logits (1, vocab), for batch 1.

    The same contract as `DecodeStep.__call__`: the row at `cache.pos`, which it advances.
    """

    def __init__(self, model: GPT, cache: KVCache):
        if cache.k.shape[1] != 1:
            raise ValueError("the compiled step decodes one sequence at a time (batch 1)")
        config = model.config
        self.cache = cache
        self.weights = prepared_weights(model)
        self.dims = np.array(
            [config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff], dtype=np.int64
        )
        self.eps = np.float32(config.d_model * config.norm_eps)  # scaled like the folded gains
        self.k = cache.k[:, 0].numpy()  # (n_layers, KV, max_len, hd): views of the cache
        self.v = cache.v[:, 0].numpy()
        half = config.head_dim // 2
        sin = model.rope_sin.numpy()
        self.cos = np.ascontiguousarray(model.rope_cos.numpy())
        self.sin_rot = np.ascontiguousarray(np.concatenate([-sin[:, :half], sin[:, half:]], -1))
        self.kernel = _kernel()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.numpy_logits(tokens.numpy()))

    def numpy_logits(self, tokens: np.ndarray) -> np.ndarray:
        """`__call__` in numpy, for callers that keep their ids there (greedy on the CPU)."""
        pos = self.cache.pos
        if pos >= self.cache.max_len:
            raise ValueError(f"the cache is full ({self.cache.max_len} positions)")
        w = self.weights
        logits = self.kernel(
            int(tokens[0]), pos, w.embedding, w.buffer, w.entries,
            self.cos, self.sin_rot, self.k, self.v, self.dims, self.eps,
        )  # fmt: skip
        self.cache.advance(1)
        return logits[None]
