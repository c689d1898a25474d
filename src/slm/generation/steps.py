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
# the process has decoded ~3,000 tokens. Until then, and in a one-shot `slm generate` of 200
# tokens (2.0 s in all with numpy, 2.8 s when it loaded numba), the numpy step serves.
WORTH_LOADING_TOKENS = 3_000
_tokens_asked = 0  # batch-1 CPU tokens this process has asked for


def lean_step(model: GPT, cache: KVCache, new_tokens: int = 0) -> LeanStep:
    """The fastest one-token step for this model and batch, for `new_tokens` more tokens.

    - Float32 on the CPU at batch 1: the compiled step (`compiled_step`, numba) once it is
      loaded or worth loading, unless several threads would serve a model too big for the
      processor's cache better.
    - Float32 on the CPU otherwise: the numpy step (`cpu_step`; batches are matrix
      products, where BLAS is at its best).
    - Any other device or dtype: the torch step (`decode_step`).
    """
    on_cpu = cache.k.device.type == "cpu" and cache.k.dtype == torch.float32
    weights = next(model.parameters())
    if not (on_cpu and weights.device.type == "cpu" and weights.dtype == torch.float32):
        return DecodeStep(model, cache)
    global _tokens_asked
    size = sum(p.numel() for p in model.parameters()) * 4
    one_thread = torch.get_num_threads() == 1 or size <= ONE_THREAD_BYTES
    if cache.k.shape[1] == 1 and one_thread and numba_available():
        _tokens_asked += new_tokens
        if compiled_step.is_loaded() or _tokens_asked >= WORTH_LOADING_TOKENS:
            kernel = compiled_step.load()
            if kernel is not None:
                return CompiledDecodeStep(model, cache, kernel)
    return CpuDecodeStep(model, cache)
