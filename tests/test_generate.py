"""The decode loop: cache vs no-cache parity, the sliding window, stops, streaming, batches.

Oracles: greedy decoding with the KV cache must pick exactly the tokens that recomputing
the whole window gives, before and after the window slides; streamed pieces must join to
the final text; a stop string is cut where `str.find` says. A sample's text on its own
(UTF-8 across tokens, held-back stop prefixes) is test_stream_text.
"""

from __future__ import annotations

import pytest
import torch

from slm.config import ModelConfig, SampleConfig
from slm.generation import compiled_step, steps
from slm.generation.generation import (
    Generation,
    decode_threads,
    generate,
    generate_text,
    slide_keep,
    window_start,
)
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer

TEXT = "the cat sat on the mat. héllo wörld, naïve café; 日本語のテキスト 😀 emoji! " * 30
CONTEXT_LEN = 32


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([TEXT], vocab_size=320)


def tiny_model(tokenizer: Tokenizer, std: float = 0.3, vocab_size: int | None = None) -> GPT:
    """Random weights; std 0.3 (not the init's 0.02) so greedy text varies instead of looping."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=vocab_size or tokenizer.vocab_size,
        context_len=CONTEXT_LEN,
        d_model=32,
        n_layers=2,
        n_heads=2,
    )
    model = GPT(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, std)
    return model


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    return tiny_model(tokenizer)


GREEDY = SampleConfig(temperature=0, ignore_eot=True)


@pytest.fixture(params=["compiled", "numpy"])
def cpu_step(request, monkeypatch) -> str:
    """Batch-1 CPU generation on the compiled step (loaded) or on the numpy one (not)."""
    if request.param == "compiled":
        if not compiled_step.numba_available():
            pytest.skip("numba is not installed")
        compiled_step.load()
    else:
        monkeypatch.setattr(compiled_step, "_kernel", None)
        monkeypatch.setattr(steps, "WORTH_LOADING_TOKENS", 10**12)
    return request.param


def naive_greedy(model: GPT, tokenizer: Tokenizer, prompt: str, new_tokens: int) -> list[int]:
    """Recompute the whole window every step; no cache anywhere."""
    ids, start, out = tokenizer.encode(prompt), 0, []
    with torch.no_grad():
        for _ in range(new_tokens):
            start = window_start(start, len(ids), CONTEXT_LEN)
            logits = model(torch.tensor([ids[start:]]))[0, -1]
            logits[[tokenizer.eot_id, tokenizer.pad_id]] = -float("inf")  # both banned here
            ids.append(int(logits.argmax()))
            out.append(ids[-1])
    return out


@pytest.mark.parametrize("new_tokens", [10, 3 * CONTEXT_LEN])  # inside / past the context
def test_cached_greedy_equals_recomputing_the_whole_window(model, tokenizer, new_tokens, cpu_step):
    prompt = "the cat"
    cfg = SampleConfig(temperature=0, ignore_eot=True, max_new_tokens=new_tokens)
    cached = generate(model, tokenizer, prompt, cfg).completions[0].tokens
    uncached = generate(model, tokenizer, prompt, cfg, use_cache=False).completions[0].tokens
    assert list(cached) == list(uncached) == naive_greedy(model, tokenizer, prompt, new_tokens)
    assert len(set(cached)) > 5  # a real test, not one token repeated


def test_batch_rows_match_batch_one_across_the_slide(model, tokenizer, cpu_step):
    cfg = SampleConfig(temperature=0, ignore_eot=True, max_new_tokens=2 * CONTEXT_LEN)
    one = generate(model, tokenizer, "héllo", cfg).completions[0].tokens
    many = generate(model, tokenizer, "héllo", SampleConfig(**{**cfg.to_dict(), "num_samples": 3}))
    assert all(c.tokens == one for c in many.completions)


def test_the_window_never_exceeds_the_context_and_keeps_the_tail():
    start = 0
    for length in range(1, 200):
        start = window_start(start, length, CONTEXT_LEN)
        assert length - start <= CONTEXT_LEN
        if length > CONTEXT_LEN:
            assert length - start >= slide_keep(CONTEXT_LEN)
    assert window_start(0, 1, 1) == 0 and window_start(0, 2, 1) == 1


def test_a_long_prompt_is_cropped_from_the_left_with_a_warning(model, tokenizer):
    warnings: list[str] = []
    prompt = TEXT[:400]
    result = generate(model, tokenizer, prompt, GREEDY, warn=warnings.append)
    assert len(tokenizer.encode(prompt)) > CONTEXT_LEN
    assert result.prompt_tokens == CONTEXT_LEN
    assert len(warnings) == 1 and "context" in warnings[0]
    assert result.completions[0].new_tokens == GREEDY.max_new_tokens


def test_an_empty_prompt_starts_a_document(model, tokenizer):
    cfg = SampleConfig(seed=3, max_new_tokens=20)
    empty = generate(model, tokenizer, "", cfg)
    eot = generate(model, tokenizer, "<|endoftext|>", cfg)
    assert empty.prompt_tokens == 1
    assert empty.completions[0].tokens == eot.completions[0].tokens


def test_stop_strings_end_a_sample_and_are_not_returned(model, tokenizer):
    cfg = SampleConfig(temperature=0, ignore_eot=True, max_new_tokens=60)
    full = generate(model, tokenizer, "the cat", cfg).text
    stop = full[20:23]  # three characters, likely spread over several tokens
    result = generate(model, tokenizer, "the cat", SampleConfig(**{**cfg.to_dict(), "stop": stop}))
    completion = result.completions[0]
    assert completion.text == full[: full.find(stop)]
    assert completion.finish_reason == "stop"
    assert completion.new_tokens < 60


def test_samples_stop_independently_at_end_of_text(tokenizer):
    model = tiny_model(tokenizer, std=0.02)  # near-uniform: <|endoftext|> turns up by chance
    cfg = SampleConfig(seed=0, num_samples=32, max_new_tokens=80, top_k=0, top_p=1.0)
    result = generate(model, tokenizer, "the", cfg)
    reasons = {c.finish_reason for c in result.completions}
    assert reasons == {"stop", "length"}
    for c in result.completions:
        if c.finish_reason == "stop":
            assert c.tokens[-1] == tokenizer.eot_id and c.new_tokens < 80
            assert "<|endoftext|>" not in c.text
        else:
            assert c.new_tokens == 80 and tokenizer.eot_id not in c.tokens
        assert tokenizer.pad_id not in c.tokens


def test_samples_are_independent_and_seeds_reproduce(model, tokenizer):
    cfg = SampleConfig(seed=7, num_samples=4, max_new_tokens=30, temperature=1.0)
    first = generate(model, tokenizer, "the", cfg)
    again = generate(model, tokenizer, "the", cfg)
    other = generate(model, tokenizer, "the", SampleConfig(**{**cfg.to_dict(), "seed": 8}))
    texts = [c.tokens for c in first.completions]
    assert texts == [c.tokens for c in again.completions]
    assert texts != [c.tokens for c in other.completions]
    assert len(set(texts)) == 4


def test_streamed_pieces_join_to_each_samples_text(model, tokenizer):
    cfg = SampleConfig(seed=1, num_samples=3, max_new_tokens=40, stop=("at",))
    generation = Generation(model, tokenizer, "the", cfg)
    pieces = list(generation)
    result = generation.result
    assert result is not None
    for index, completion in enumerate(result.completions):
        mine = [p for p in pieces if p.sample == index]
        assert "".join(p.text for p in mine) == completion.text
        assert mine[-1].finish_reason == completion.finish_reason
        assert all(p.finish_reason is None for p in mine[:-1])
        assert all("at" not in p.text for p in mine)


def test_no_cache_and_cache_agree_when_sampling_with_a_seed(model, tokenizer):
    cfg = SampleConfig(seed=11, num_samples=2, max_new_tokens=50, repetition_penalty=1.3)
    cached = generate(model, tokenizer, "naïve", cfg)
    uncached = generate(model, tokenizer, "naïve", cfg, use_cache=False)
    assert [c.tokens for c in cached.completions] == [c.tokens for c in uncached.completions]


def test_a_padded_model_head_never_yields_ids_outside_the_tokenizer(tokenizer):
    model = tiny_model(tokenizer, vocab_size=tokenizer.vocab_size + 64)
    cfg = SampleConfig(seed=0, num_samples=8, max_new_tokens=40, temperature=2.0, top_k=0)
    result = generate(model, tokenizer, "the", cfg)
    assert max(max(c.tokens) for c in result.completions) < tokenizer.vocab_size


def test_timings_and_counts_are_reported(model, tokenizer):
    result = generate(model, tokenizer, "the cat", SampleConfig(max_new_tokens=5, ignore_eot=True))
    completion = result.completions[0]
    assert result.prompt_tokens == len(tokenizer.encode("the cat"))
    assert completion.new_tokens == 5 and completion.finish_reason == "length"
    assert 0 < result.time_to_first_token_s <= completion.elapsed_s <= result.elapsed_s
    assert completion.tokens_per_s > 0 and result.tokens_per_s > 0


def test_streaming_leaves_autograd_alone_between_pieces(model, tokenizer):
    for _ in Generation(model, tokenizer, "the", SampleConfig(max_new_tokens=3, ignore_eot=True)):
        assert not torch.is_inference_mode_enabled()
        assert torch.is_grad_enabled()


def test_generate_text_takes_the_training_loops_arguments(model, tokenizer):
    options = {"max_new_tokens": 8, "temperature": 0.8, "top_k": 50, "ignore_eot": True}
    text = generate_text(model, tokenizer, "", seed=1, device="cpu", **options)
    expected = generate(model, tokenizer, "", SampleConfig(seed=1, **options)).completions[0]
    assert text == expected.text and len(expected.tokens) == 8
    assert generate_text(model, tokenizer, "", seed=2, **options) != text  # the seed is used
    greedy = generate_text(
        model, tokenizer, "the cat", max_new_tokens=10, temperature=0, ignore_eot=True
    )
    assert greedy == tokenizer.decode(naive_greedy(model, tokenizer, "the cat", 10))


def test_small_models_decode_one_sample_on_one_thread():
    assert decode_threads(2_500_000, num_samples=1, cores=8) == 1
    assert decode_threads(2_500_000, num_samples=8, cores=8) == 8
    assert decode_threads(124_000_000, num_samples=1, cores=8) == 8
