"""Where and how fast to run: device choice, CPU threads, and whether bf16 pays off here.

Kept apart from the training loop because generation, evaluation and benchmarks make the
same choices. Nothing runs at import time; each probe is a function the caller invokes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator

import torch

from slm.errors import SLMError


def resolve_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; an explicit device that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SLMError(
            "--device cuda asked for, but no CUDA GPU is available", hint="use --device cpu"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise SLMError("--device mps asked for, but MPS is not available", hint="use --device cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise SLMError(f"unknown device {name!r}", hint="use auto, cpu, cuda or mps")
    return torch.device(name)


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int = 0) -> int:
    """Use `threads` intra-op threads, or every available core when 0. Returns the count."""
    count = threads or available_cores()
    torch.set_num_threads(count)
    set_blas_threads(count)
    return count


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on `count` torch threads, then go back (~0.3 us both ways)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _numpy_blas() -> list:
    """numpy's BLAS libraries (OpenBLAS in numpy's wheels), found once (~7 ms)."""
    import numpy  # noqa: F401  (loads the library that the controller looks for)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas").lib_controllers


def set_blas_threads(count: int) -> None:
    """Give numpy's BLAS `count` threads: the CPU decode step runs its products there.

    OpenBLAS starts with a thread per core whatever torch was told, so without this a
    "one thread" generation would use every core for its matrix products.
    """
    for library in _numpy_blas():
        if library.get_num_threads() != count:  # ~4 us to ask
            library.set_num_threads(count)


@functools.cache
def cpu_bf16_speedup(size: int = 512, repeats: int = 5) -> float:
    """How many times faster a bf16 matmul is than fp32 on this CPU (measured, ~0.2 s).

    Some processors (AVX512-BF16, AMX) multiply bf16 2-3x faster than fp32; others emulate
    it and run 100x slower. Only a measurement tells, so we time a square matmul of each.
    """
    a = torch.randn(size, size)
    b = torch.randn(size, size)

    def best_time(x: torch.Tensor, y: torch.Tensor) -> float:
        torch.mm(x, y)  # warm-up: first call allocates and picks kernels
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(x, y)
            best = min(best, time.perf_counter() - start)
        return best

    fp32 = best_time(a, b)
    bf16 = best_time(a.bfloat16(), b.bfloat16())
    return fp32 / bf16


def choose_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for training/inference: bf16 where it is fast, else fp32.

    On CUDA, bf16 when the GPU supports it. On CPU, bf16 only if the probe measures it at
    least 1.3x faster than fp32 (master weights stay fp32 either way).
    """
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_speedup() >= 1.3 else torch.float32
    return torch.float32
