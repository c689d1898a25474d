"""slm.device: which device "auto" picks, how many threads, and the bf16 timing probe.

No GPU is needed: what the machine reports is injected (`torch.cuda.is_available`, the MPS
backend, a matmul made slow for one dtype), and the real choice functions run on it.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from slm import device
from slm.device import (
    available_cores,
    choose_dtype,
    cpu_bf16_speedup,
    resolve_device,
    set_threads,
)
from slm.errors import SLMError


def _machine(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _machine(monkeypatch, cuda, mps)
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_a_device_that_is_not_there_is_an_error_with_the_fix(monkeypatch, name):
    _machine(monkeypatch, cuda=False, mps=False)
    with pytest.raises(SLMError, match=f"--device {name}") as err:
        resolve_device(name)
    assert "--device cpu" in (err.value.hint or "")


def test_an_unknown_device_is_an_error():
    with pytest.raises(SLMError, match="unknown device"):
        resolve_device("tpu")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_default_to_every_core_this_process_may_use(restore_threads):
    if hasattr(os, "sched_getaffinity"):
        assert available_cores() == len(os.sched_getaffinity(0))
    assert set_threads(0) == available_cores() == torch.get_num_threads()
    assert set_threads(1) == 1 == torch.get_num_threads()


_REAL_MM = torch.mm


@pytest.fixture
def fresh_probe():
    cpu_bf16_speedup.cache_clear()
    yield
    cpu_bf16_speedup.cache_clear()


def _slow_for(monkeypatch, slow_dtype: torch.dtype) -> None:
    """Make matrix products of one dtype take 50 ms longer (as a CPU without bf16 units would
    make bf16 ones): far more than a 16 x 16 product takes, even on a busy machine."""

    def mm(a, b):
        if a.dtype == slow_dtype:
            time.sleep(0.05)
        return _REAL_MM(a, b)

    monkeypatch.setattr(torch, "mm", mm)


def test_the_probe_measures_fp32_time_over_bf16_time(monkeypatch, fresh_probe, restore_threads):
    torch.set_num_threads(1)
    _slow_for(monkeypatch, torch.bfloat16)
    assert cpu_bf16_speedup(size=16, repeats=2) < 0.5
    cpu_bf16_speedup.cache_clear()
    _slow_for(monkeypatch, torch.float32)
    assert cpu_bf16_speedup(size=16, repeats=2) > 2.0


def test_the_probe_runs_once_per_process(fresh_probe):
    first = cpu_bf16_speedup(size=16, repeats=1)
    assert first > 0 and cpu_bf16_speedup(size=16, repeats=1) is first


@pytest.mark.parametrize(("speedup", "expected"), [(2.0, torch.bfloat16), (1.1, torch.float32)])
def test_cpu_trains_in_bf16_only_where_the_probe_says_it_pays(monkeypatch, speedup, expected):
    monkeypatch.setattr(device, "cpu_bf16_speedup", lambda: speedup)
    assert choose_dtype("auto", torch.device("cpu")) == expected


def test_an_explicit_dtype_skips_the_probe(monkeypatch):
    def probe():
        raise AssertionError("the probe ran")

    monkeypatch.setattr(device, "cpu_bf16_speedup", probe)
    cpu = torch.device("cpu")
    assert choose_dtype("float32", cpu) == torch.float32
    assert choose_dtype("bfloat16", cpu) == torch.bfloat16
    assert choose_dtype("auto", torch.device("mps")) == torch.float32


@pytest.mark.parametrize(
    ("supported", "expected"), [(True, torch.bfloat16), (False, torch.float32)]
)
def test_cuda_uses_bf16_where_the_gpu_has_it(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
    assert choose_dtype("auto", torch.device("cuda")) == expected
