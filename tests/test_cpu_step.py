"""slm.generation.cpu_step: the numpy decode step gives GPT.forward's logits, fills the same
cache, and follows the model when its weights change."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from slm.config import ModelConfig, preset
from slm.device import set_blas_threads
from slm.generation.cpu_step import CpuDecodeStep, lean_step
from slm.generation.decode_step import DecodeStep
from slm.model import GPT, KVCache


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**{**preset("tiny"), **overrides})).eval()
    for param in model.parameters():  # trained-looking weights, not the near-zero init
        param.data.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("n_kv_heads,batch", [(4, 1), (4, 3), (2, 2), (1, 1)])
@torch.inference_mode()
def test_steps_give_forward_logits_and_cache(n_kv_heads: int, batch: int) -> None:
    model = tiny_model(n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 512, (batch, 30))
    by_forward, by_step = KVCache(model.config, batch), KVCache(model.config, batch)
    model(ids[:, :10], by_forward)
    model(ids[:, :10], by_step)
    step = CpuDecodeStep(model, by_step)
    for t in range(10, 30):
        expected = model(ids[:, t : t + 1], by_forward)[:, -1]
        torch.testing.assert_close(step(ids[:, t]), expected, atol=1e-4, rtol=1e-5)
    assert by_step.pos == by_forward.pos == 30
    torch.testing.assert_close(by_step.k[:, :, :, :30], by_forward.k[:, :, :, :30])
    torch.testing.assert_close(by_step.v[:, :, :, :30], by_forward.v[:, :, :, :30])


@torch.inference_mode()
def test_greedy_tokens_match_forward_to_the_end_of_the_context() -> None:
    model = tiny_model(seed=3, context_len=32)
    forward_cache, step_cache = KVCache(model.config, 1), KVCache(model.config, 1)
    first = torch.tensor([[5]])
    a = model(first, forward_cache)[:, -1].argmax(-1)
    model(first, step_cache)
    step = CpuDecodeStep(model, step_cache)
    b = a.clone()
    for _ in range(31):
        a = model(a[:, None], forward_cache)[:, -1].argmax(-1)
        b = step(b).argmax(-1)
        assert a.tolist() == b.tolist()


@torch.inference_mode()
def test_a_full_cache_is_refused() -> None:
    model = tiny_model(context_len=8)
    cache = KVCache(model.config, 1)
    model(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="cache is full"):
        CpuDecodeStep(model, cache)(torch.zeros(1, dtype=torch.long))


def test_changed_weights_are_used_by_the_next_step() -> None:
    # The rearranged copy is kept per model; an optimizer step (in place) must not leave
    # generation on the old weights.
    model = tiny_model()
    token = torch.tensor([7])

    def logits() -> torch.Tensor:
        with torch.inference_mode():
            cache = KVCache(model.config, 1)
            return CpuDecodeStep(model, cache)(token)

    before = logits()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randint(0, 512, (2, 16)))[0].sum().backward()
    optimizer.step()
    after = logits()
    assert not torch.allclose(before, after)
    with torch.inference_mode():
        expected = model(token[:, None])[:, -1]
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=1e-5)


def test_numpy_runs_float32_on_the_cpu_and_torch_the_rest() -> None:
    model = tiny_model()
    assert isinstance(lean_step(model, KVCache(model.config, 1)), CpuDecodeStep)
    model = model.to(torch.bfloat16)
    bf16_cache = KVCache(model.config, 1, dtype=torch.bfloat16)
    assert isinstance(lean_step(model, bf16_cache), DecodeStep)


def test_numpy_blas_follows_the_thread_count() -> None:
    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    previous = torch.get_num_threads()
    try:
        for count in (1, 2):
            set_blas_threads(count)
            assert blas_threads() == {count}
            torch.set_num_threads(count)
            set_blas_threads(3)
            model = tiny_model()
            CpuDecodeStep(model, KVCache(model.config, 1))  # a step runs on torch's count
            assert blas_threads() == {count}
    finally:
        torch.set_num_threads(previous)
        set_blas_threads(previous)
