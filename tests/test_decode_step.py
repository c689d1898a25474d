"""The lean one-token steps, torch's (slm.generation.decode_step), numpy's
(slm.generation.cpu_step) and the compiled one (slm.generation.compiled_step): each gives
GPT.forward's logits and fills the same cache; the CPU ones follow the model when its
weights change; numpy's runs on slm's thread count; `lean_step` picks among them."""

from __future__ import annotations

import sys

import pytest
import torch
from threadpoolctl import threadpool_info

from slm.config import ModelConfig, SampleConfig, preset
from slm.device import set_blas_threads
from slm.generation import compiled_step, steps
from slm.generation.compiled_step import CompiledDecodeStep, numba_available
from slm.generation.cpu_step import CpuDecodeStep
from slm.generation.decode_step import DecodeStep
from slm.generation.generation import Generation, generate
from slm.generation.steps import lean_step
from slm.model import GPT, KVCache
from slm.tokenizer.bpe import Tokenizer

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
COMPILED = pytest.param(CompiledDecodeStep, marks=needs_numba)
STEPS = pytest.mark.parametrize("step_class", [DecodeStep, CpuDecodeStep, COMPILED])
SHAPES = [(4, 1), (4, 3), (2, 2), (1, 1)]  # (key/value heads of 4 query heads, batch)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**{**preset("tiny"), **overrides})).eval()
    for param in model.parameters():  # trained-looking weights, not the near-zero init
        param.data.normal_(0, 0.3)
    return model


@pytest.mark.parametrize(
    "step_class,n_kv_heads,batch",
    [(step, kv, batch) for step in (DecodeStep, CpuDecodeStep) for kv, batch in SHAPES]
    + [  # the compiled step is for batch 1
        pytest.param(CompiledDecodeStep, kv, 1, marks=needs_numba) for kv in (4, 2, 1)
    ],
)
@pytest.mark.parametrize("qk_norm", [True, False], ids=["qk-norm", "plain"])
@torch.inference_mode()
def test_steps_give_forward_logits_and_cache(
    step_class, n_kv_heads: int, batch: int, qk_norm: bool
) -> None:
    model = tiny_model(n_kv_heads=n_kv_heads, qk_norm=qk_norm)
    ids = torch.randint(0, 512, (batch, 30))
    by_forward, by_step = KVCache(model.config, batch), KVCache(model.config, batch)
    model(ids[:, :10], by_forward)
    model(ids[:, :10], by_step)
    step = step_class(model, by_step)
    for t in range(10, 30):
        expected = model(ids[:, t : t + 1], by_forward)[:, -1]
        torch.testing.assert_close(step(ids[:, t]), expected, atol=1e-4, rtol=1e-5)
    assert by_step.pos == by_forward.pos == 30
    torch.testing.assert_close(by_step.k[:, :, :, :30], by_forward.k[:, :, :, :30])
    torch.testing.assert_close(by_step.v[:, :, :, :30], by_forward.v[:, :, :, :30])


@STEPS
@torch.inference_mode()
def test_steps_handle_odd_sizes_from_an_empty_cache(step_class) -> None:
    # Widths that are not multiples of 8 (the compiled products take 8 rows a pass) and
    # 2 query heads per key/value head, from position 0.
    model = tiny_model(d_model=36, n_heads=6, n_kv_heads=3, d_ff=100, vocab_size=509)
    ids = torch.randint(0, 509, (1, 12))
    by_forward, by_step = KVCache(model.config, 1), KVCache(model.config, 1)
    step = step_class(model, by_step)
    for t in range(12):
        expected = model(ids[:, t : t + 1], by_forward)[:, -1]
        torch.testing.assert_close(step(ids[:, t]), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(by_step.k[:, :, :, :12], by_forward.k[:, :, :, :12])


@STEPS
@torch.inference_mode()
def test_greedy_tokens_match_forward_to_the_end_of_the_context(step_class) -> None:
    model = tiny_model(seed=3, context_len=32)
    forward_cache, step_cache = KVCache(model.config, 1), KVCache(model.config, 1)
    first = torch.tensor([[5]])
    a = model(first, forward_cache)[:, -1].argmax(-1)
    model(first, step_cache)
    step = step_class(model, step_cache)
    b = a.clone()
    for _ in range(31):
        a = model(a[:, None], forward_cache)[:, -1].argmax(-1)
        b = step(b).argmax(-1)
        assert a.tolist() == b.tolist()


@STEPS
@torch.inference_mode()
def test_a_full_cache_is_refused(step_class) -> None:
    model = tiny_model(context_len=8)
    cache = KVCache(model.config, 1)
    model(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="cache is full"):
        step_class(model, cache)(torch.zeros(1, dtype=torch.long))


@torch.inference_mode()
def test_a_bf16_model_decodes_in_bf16() -> None:
    model = tiny_model().to(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 6))
    a, b = (
        KVCache(model.config, 2, dtype=torch.bfloat16),
        KVCache(model.config, 2, dtype=torch.bfloat16),
    )
    model(ids[:, :5], a)
    model(ids[:, :5], b)
    logits = DecodeStep(model, b)(ids[:, 5])
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits, model(ids[:, 5:], a)[:, -1], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("n_kv_heads", [4, 2])
@torch.inference_mode()
def test_rows_at_different_positions_give_each_row_its_own_logits(n_kv_heads: int) -> None:
    # Three sequences of different lengths share one cache (the server's batch); each row's
    # logits and keys equal those of the sequence decoded alone.
    model = tiny_model(n_kv_heads=n_kv_heads)
    lengths = [3, 11, 7]
    seqs = [torch.randint(0, 512, (1, n + 5)) for n in lengths]
    shared = KVCache(model.config, 4)  # a spare row: rows past the batch stay untouched
    alone = []
    for row, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
        one = KVCache(model.config, 1)
        model(seq[:, :n], one)
        shared.k[:, row : row + 1, :, :n] = one.k[:, :, :, :n]
        shared.v[:, row : row + 1, :, :n] = one.v[:, :, :, :n]
        alone.append(one)
    step = DecodeStep(model, shared)
    positions = torch.tensor(lengths)
    for t in range(5):
        tokens = torch.cat([seq[:, n + t] for seq, n in zip(seqs, lengths, strict=True)])
        logits = step.at_positions(tokens, positions, int(positions.max()) + 1)
        for row, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
            expected = model(seq[:, n + t : n + t + 1], alone[row])[:, -1]
            torch.testing.assert_close(logits[row : row + 1], expected, atol=1e-5, rtol=1e-5)
        positions += 1
    assert shared.pos == 0  # the caller tracks positions
    for row, n in enumerate(lengths):
        torch.testing.assert_close(shared.k[:, row, :, : n + 5], alone[row].k[:, 0, :, : n + 5])


@pytest.mark.parametrize("step_class", [CpuDecodeStep, COMPILED])
def test_changed_weights_are_used_by_the_next_step(step_class) -> None:
    # The rearranged copy is kept per model; an optimizer step (in place) must not leave
    # generation on the old weights.
    model = tiny_model()
    token = torch.tensor([7])

    def logits() -> torch.Tensor:
        with torch.inference_mode():
            cache = KVCache(model.config, 1)
            return step_class(model, cache)(token)

    before = logits()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randint(0, 512, (2, 16)))[0].sum().backward()
    optimizer.step()
    after = logits()
    assert not torch.allclose(before, after)
    with torch.inference_mode():
        expected = model(token[:, None])[:, -1]
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=1e-5)


@needs_numba
def test_lean_step_compiles_batch_1_numpy_batches_and_torch_the_rest() -> None:
    compiled_step.load()
    model = tiny_model()
    assert isinstance(lean_step(model, KVCache(model.config, 1)), CompiledDecodeStep)
    assert isinstance(lean_step(model, KVCache(model.config, 3)), CpuDecodeStep)
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


@needs_numba
def test_a_big_model_on_several_threads_keeps_numpy_at_batch_1(monkeypatch) -> None:
    # Past the processor's caches, BLAS on every thread beats one compiled thread.
    model = tiny_model()
    size = sum(p.numel() for p in model.parameters()) * 4
    monkeypatch.setattr(steps, "ONE_THREAD_BYTES", size - 1)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert isinstance(lean_step(model, KVCache(model.config, 1)), CpuDecodeStep)
        torch.set_num_threads(1)
        compiled_step.load()
        assert isinstance(lean_step(model, KVCache(model.config, 1)), CompiledDecodeStep)
        monkeypatch.setattr(steps, "ONE_THREAD_BYTES", size)
        torch.set_num_threads(2)
        assert isinstance(lean_step(model, KVCache(model.config, 1)), CompiledDecodeStep)
    finally:
        torch.set_num_threads(previous)


@needs_numba
def test_the_compiled_step_is_batch_1() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="batch 1"):
        CompiledDecodeStep(model, KVCache(model.config, 2))


@pytest.fixture
def fresh_process(monkeypatch):
    """The compiled step's load state as in a process that has not loaded it yet."""
    monkeypatch.setattr(compiled_step, "_kernel", None)
    monkeypatch.setattr(compiled_step, "_failure", None)
    monkeypatch.setattr(compiled_step, "_loader", None)
    monkeypatch.setattr(steps, "_tokens_asked", 0)


def wait_for_loader() -> None:
    assert compiled_step._loader is not None, "no background load was started"
    compiled_step._loader.join(timeout=120)


@needs_numba
def test_the_compiled_step_loads_in_the_background_once_it_pays(fresh_process) -> None:
    # Loading costs a process ~0.6 s: short generations in a fresh process keep numpy.
    model = tiny_model(seed=5, context_len=32)
    tokenizer = Tokenizer.train(["the cat sat on the mat, said the dog. " * 40], vocab_size=300)
    short = SampleConfig(temperature=0, max_new_tokens=20, ignore_eot=True)
    generate(model, tokenizer, "the cat", short)
    assert compiled_step._loader is None
    assert isinstance(lean_step(model, KVCache(model.config, 1), 20), CpuDecodeStep)
    long = SampleConfig(temperature=0, max_new_tokens=steps.WORTH_LOADING_TOKENS, ignore_eot=True)
    generate(model, tokenizer, "the cat", long)  # starts on numpy, starts the load
    wait_for_loader()
    assert compiled_step.is_loaded()
    assert isinstance(lean_step(model, KVCache(model.config, 1), 1), CompiledDecodeStep)


@needs_numba
def test_a_generation_moves_to_the_compiled_step_when_it_is_ready(
    fresh_process, monkeypatch
) -> None:
    model = tiny_model(seed=5, context_len=32)
    tokenizer = Tokenizer.train(["the cat sat on the mat, said the dog. " * 40], vocab_size=300)
    settings = SampleConfig(temperature=0, max_new_tokens=80, ignore_eot=True)
    on_numpy = generate(model, tokenizer, "the cat", settings).completions[0].tokens
    assert not compiled_step.is_loaded()
    calls = []
    numpy_logits = CompiledDecodeStep.numpy_logits
    monkeypatch.setattr(
        CompiledDecodeStep, "numpy_logits", lambda self, t: calls.append(1) or numpy_logits(self, t)
    )
    generation = Generation(model, tokenizer, "the cat", settings)
    pieces = iter(generation)
    next(pieces)  # on the numpy step
    compiled_step.load()
    for _ in pieces:  # moves over at the next token; the window slides twice on the way
        pass
    assert 40 < len(calls) < 80
    assert generation.result.completions[0].tokens == on_numpy


@needs_numba
def test_without_a_working_numba_the_numpy_step_decodes(fresh_process, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "slm.generation.kernels", None)  # the import fails
    model = tiny_model()
    thread = compiled_step.load_in_background(model)
    assert thread is not None
    thread.join(timeout=120)
    assert not compiled_step.is_loaded()
    assert "slm.generation.kernels" in compiled_step.failure()
    assert not compiled_step.numba_available()
    assert isinstance(lean_step(model, KVCache(model.config, 1), 10**6), CpuDecodeStep)
    assert compiled_step.load_in_background(model) is None


@needs_numba
def test_the_compiled_step_refuses_what_it_cannot_index() -> None:
    model = tiny_model(context_len=8)
    step = CompiledDecodeStep(model, KVCache(model.config, 1, max_len=16))
    with pytest.raises(IndexError, match="outside the vocabulary"):
        step(torch.tensor([model.config.vocab_size]))
    step.cache.pos = 8
    with pytest.raises(ValueError, match="past the model's context"):
        step(torch.tensor([1]))
