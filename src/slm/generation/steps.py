"""Which one-token decode step a generation runs: the fastest for its model, device and batch.

Three steps do the same arithmetic (`GPT.forward` for one new token per sequence, held to
it by `tests/test_decode_step.py`); they differ in where they are fast.
"""

from __future__ import annotations

import torch

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


def lean_step(model: GPT, cache: KVCache) -> LeanStep:
    """The fastest one-token step for this model and batch.

    - Float32 on the CPU at batch 1: the compiled step (`compiled_step`, numba), unless
      several threads would serve a model too big for the processor's cache better.
    - Float32 on the CPU otherwise: the numpy step (`cpu_step`; batches are matrix
      products, where BLAS is at its best).
    - Any other device or dtype: the torch step (`decode_step`).
    """
    on_cpu = cache.k.device.type == "cpu" and cache.k.dtype == torch.float32
    weights = next(model.parameters())
    if not (on_cpu and weights.device.type == "cpu" and weights.dtype == torch.float32):
        return DecodeStep(model, cache)
    size = sum(p.numel() for p in model.parameters()) * 4
    one_thread = torch.get_num_threads() == 1 or size <= ONE_THREAD_BYTES
    if cache.k.shape[1] == 1 and one_thread and numba_available():
        return CompiledDecodeStep(model, cache)
    return CpuDecodeStep(model, cache)
