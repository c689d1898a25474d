"""The batch-1 decode step compiled to machine code (numba): what chat runs on, on a CPU.

One new token of a small model is 17 matrix-vector products and about a hundred small
operations between them. In numpy (`cpu_step`) each small operation costs 1-4 us of Python
and dispatch, whatever its size: on seed-2.5m they took 243 us a step against 230 us for all
the products. Here the whole step is one compiled function, so they cost what their
arithmetic costs. On a 2-core AMD EPYC, one thread, 2026-11-29: 255 us a step against 447
in numpy (seed-2.5m, batch 1).

The products themselves read eight rows of the weight matrix per pass over the output, so
the output is loaded and stored once per eight weights: the 17 products of seed-2.5m took
192 us against numpy's 234 (OpenBLAS), small's 21 (42 MB, from memory) 1,479 against 1,899.

The weights are `cpu_step`'s rearranged copy (norm gains folded into the matrices, the
query scale into the query rows, the gate halved so SiLU is one tanh), and the KV cache is
the torch one seen through numpy, so prefill through `GPT.forward` fills what this reads.
`tests/test_decode_step.py` holds its logits and cache to `GPT.forward`'s.

Loading it has a price, once per process: importing numba and loading the machine code
from numba's cache take ~0.6 s and ~100 MB (`__pycache__` beside `kernels.py`, or numba's
per-user cache where that is not writable; the very first load compiles, ~6 s). At ~200 us
saved a token that is repaid after ~3,000 tokens, so `steps.lean_step` hands out the numpy
step until a process has asked for that many, then starts loading this one in a background
thread (`load_in_background`; `slm chat` starts it while the user types), and generations
move over once it is ready. Where numba is missing or fails to import or compile, the numpy
step does the work (`failure()` says why).
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

import numpy as np
import torch

from slm.generation.cpu_step import pack, prepared_weights
from slm.model import GPT, KVCache

_lock = threading.Lock()
_kernel: Any = None  # the compiled step, once loaded and run
_failure: str | None = None  # why numba would not import or compile here, if it would not
_loader: threading.Thread | None = None


def numba_available() -> bool:
    """Whether numba is installed and has not failed here (without importing it: ~0.3 s)."""
    return _failure is None and importlib.util.find_spec("numba") is not None


def is_loaded() -> bool:
    """Whether this process has the compiled step ready (using it now costs nothing extra)."""
    return _kernel is not None


def failure() -> str | None:
    """Why the compiled step could not be loaded here (None: it could, or was not tried)."""
    return _failure


def load() -> Any | None:
    """The compiled step function, loaded on first use (thread-safe); None without numba.

    Loading runs it once on zeros shaped like a one-layer model, which makes numba bring in
    the machine code for the argument types every later call uses, so no real generation
    pays for it. Any failure (numba too old or too new for this numpy, no compiler support)
    is kept in `failure()` and the numpy step does the work.
    """
    global _kernel, _failure
    with _lock:
        if _kernel is None and _failure is None:
            try:
                from slm.generation.kernels import step

                _run_once(step)
                _kernel = step  # only now: a half-loaded step must not look ready
            except Exception as error:
                _failure = f"{type(error).__name__}: {error}"
    return _kernel


def load_in_background(model: GPT) -> threading.Thread | None:
    """Start loading the compiled step in a daemon thread if `model` would decode through it
    (float32 on the CPU) and it is not loaded or loading: for a REPL, whose user's typing
    hides the ~0.6 s, and for a process that has just crossed `steps.WORTH_LOADING_TOKENS`.
    Generation keeps decoding with the numpy step meanwhile and moves over once it is ready.
    """
    global _loader
    weights = next(model.parameters())
    on_cpu = weights.device.type == "cpu" and weights.dtype == torch.float32
    if not on_cpu or is_loaded() or not numba_available():
        return None
    with _lock:
        if _loader is not None and _loader.is_alive():
            return None
        _loader = threading.Thread(target=load, name="slm-load-compiled-step", daemon=True)
        _loader.start()
        return _loader


def _run_once(step: Any) -> None:
    """One call on zeros shaped like a one-layer model, with the argument types (dtypes,
    dimensions, layouts) of `CompiledDecodeStep`'s calls. No random weights: a background
    load must not draw from torch's global generator."""
    vocab, width, max_len = 4, 2, 2
    shapes = [(width, 3 * width), (width, width), (width, 2 * width), (width, width)]
    shapes.append((width, vocab))
    weights, entries = pack([np.zeros(shape, dtype=np.float32) for shape in shapes])
    cache = np.zeros((1, 1, max_len, width), dtype=np.float32)  # (layers, KV, max_len, hd)
    rope = np.ones((max_len, width), dtype=np.float32)
    dims = np.array([1, 1, width, width, 1], dtype=np.int64)  # H, KV, hd, d_ff, qk_norm
    embedding = np.zeros((vocab, width), dtype=np.float32)
    eps = np.float32(1)
    step(0, 0, embedding, weights, entries, rope, rope, cache, cache.copy(), dims, eps, eps)


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
            [config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff, config.qk_norm],
            dtype=np.int64,
        )
        self.eps = np.float32(config.d_model * config.norm_eps)  # scaled like the folded gains
        self.head_eps = np.float32(config.head_dim * config.norm_eps)
        self.k = cache.k[:, 0].numpy()  # (n_layers, KV, max_len, hd): views of the cache
        self.v = cache.v[:, 0].numpy()
        half = config.head_dim // 2
        sin = model.rope_sin.numpy()
        self.cos = np.ascontiguousarray(model.rope_cos.numpy())
        self.sin_rot = np.ascontiguousarray(np.concatenate([-sin[:, :half], sin[:, half:]], -1))
        self.kernel = load()
        if self.kernel is None:
            raise RuntimeError("the compiled decode step needs numba, which is unavailable")

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.numpy_logits(tokens.numpy()))

    def numpy_logits(self, tokens: np.ndarray) -> np.ndarray:
        """`__call__` in numpy, for callers that keep their ids there (greedy on the CPU)."""
        pos, token = self.cache.pos, int(tokens[0])
        if pos >= self.cache.max_len:
            raise ValueError(f"the cache is full ({self.cache.max_len} positions)")
        w = self.weights
        # Compiled code does not check its indices: a bad one would read past an array.
        if not 0 <= token < len(w.embedding):
            raise IndexError(f"token id {token} is outside the vocabulary of {len(w.embedding)}")
        if pos >= len(self.cos):
            raise ValueError(f"position {pos} is past the model's context of {len(self.cos)}")
        logits = self.kernel(
            token, pos, w.embedding, w.buffer, w.entries,
            self.cos, self.sin_rot, self.k, self.v, self.dims, self.eps, self.head_eps,
        )  # fmt: skip
        self.cache.advance(1)
        return logits[None]
