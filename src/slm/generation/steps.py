"""Which one-token decode step a generation runs: the fastest for its model, device and batch.

Three steps do the same arithmetic (`GPT.forward` for one new token per sequence, held to
it by `tests/test_decode_step.py`); they differ in where they are fast.
"""

from __future__ import annotations

import torch

from slm.generation import compiled_step
from slm.generation.compiled_step import CompiledDecodeStep, numba_available
from slm.generation.cpu_step import CpuDecodeStep
from slm.generation.decode_step import DecodeStep
from slm.model import GPT, KVCache

LeanStep = CompiledDecodeStep | CpuDecodeStep | DecodeStep

# Up to this many bytes of weights, one thread of the compiled step beats numpy's products on
# every thread count. A step at batch 1 on a 2-core AMD EPYC, 2026-11-29 (median of 5):
#   seed-2.5m (10 MB):  compiled 255 us, numpy 447 on one thread, 525 on two;
#   small (42 MB):      compiled 1,472 us, numpy 1,793 on one thread, 1,837 on two;
#   medium (120 MB):    compiled 5,134 us, numpy 5,327 on one thread, 4,734 on two.
# Past the processor's caches the products stream from memory, and a second thread's
# bandwidth starts to pay.
ONE_THREAD_BYTES = 64_000_000

# Loading the compiled step costs a process ~0.6 s (numba and its cached machine code); it
# saves ~200 us a token at batch 1 (seed-2.5m: 255 us a step against 447), so it pays once
# the process has decoded ~3,000 tokens. A one-shot `slm generate` of 200 tokens took 2.0 s
# in all with the numpy step and 2.8 s when it loaded numba first. So the numpy step serves
# until the tokens asked for cross this line; then the compiled step loads in a background
# thread, started after the first token (so that token is not slowed), and generations move
# over to it as soon as it is ready (`_Decoder.step`).
WORTH_LOADING_TOKENS = 3_000
_tokens_asked = 0  # batch-1 CPU tokens this process has asked for


def _float32_cpu(model: GPT, cache: KVCache) -> bool:
    """The CPU steps' domain: float32 weights and cache in CPU memory."""
    weights = next(model.parameters())
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (weights, cache.k))


def compiled_suits(model: GPT, cache: KVCache) -> bool:
    """Whether this model and cache would decode fastest through the compiled step: float32
    on the CPU at batch 1, unless several threads would serve a model past the processor's
    caches better (`ONE_THREAD_BYTES`)."""
    if not _float32_cpu(model, cache) or cache.k.shape[1] != 1 or not numba_available():
        return False
    size = sum(p.numel() for p in model.parameters()) * 4
    return torch.get_num_threads() == 1 or size <= ONE_THREAD_BYTES


def lean_step(model: GPT, cache: KVCache, new_tokens: int = 0) -> LeanStep:
    """The fastest one-token step for this model and batch, for `new_tokens` more tokens.

    - Where the compiled step suits (`compiled_suits`): that step once it is loaded; until
      then the numpy step, and generation starts loading the compiled one in the
      background once the tokens asked for make it worth it (`worth_loading_compiled`).
    - Float32 on the CPU otherwise: the numpy step (`cpu_step`; batches are matrix
      products, where BLAS is at its best).
    - Any other device or dtype: the torch step (`decode_step`).
    """
    global _tokens_asked
    if not _float32_cpu(model, cache):
        return DecodeStep(model, cache)
    if compiled_suits(model, cache):
        if compiled_step.is_loaded():
            return CompiledDecodeStep(model, cache)
        _tokens_asked += new_tokens
    return CpuDecodeStep(model, cache)


def worth_loading_compiled() -> bool:
    """Whether this process has asked for enough batch-1 CPU tokens to load the compiled
    step (`WORTH_LOADING_TOKENS`)."""
    return _tokens_asked >= WORTH_LOADING_TOKENS
