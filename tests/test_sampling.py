"""Sampling: the fast truncation path against a plain full-vocab oracle (settings: test_config)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slm.config import SampleConfig
from slm.generation.sampling import (
    apply_repetition_penalty,
    make_generator,
    next_token_probs,
    sample_next_token,
)


def reference_probs(logits: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    """The textbook version: everything over the full vocabulary, one row at a time."""
    rows = []
    for row in logits.double():
        row = row / cfg.temperature
        if 0 < cfg.top_k < row.numel():
            kth = row.sort(descending=True).values[cfg.top_k - 1]
            row = torch.where(row < kth, -math.inf, row)
        if cfg.top_p < 1.0:
            order = row.argsort(descending=True)
            probs = row.softmax(0)
            kept, mass = [], 0.0
            for i in order.tolist():
                if mass >= cfg.top_p:
                    break
                kept.append(i)
                mass += probs[i].item()
            mask = torch.full_like(row, -math.inf)
            mask[kept] = 0.0
            row = row + mask
        if cfg.min_p > 0:
            probs = row.softmax(0)
            row = torch.where(probs < cfg.min_p * probs.max(), -math.inf, row)
        rows.append(row.softmax(0))
    return torch.stack(rows).float()


def test_greedy_is_the_argmax_whatever_the_truncation():
    logits = torch.randn(4, 100)
    cfg = SampleConfig(temperature=0, top_k=3, top_p=0.1, min_p=0.5)
    assert torch.equal(sample_next_token(logits, cfg), logits.argmax(-1))
    assert torch.equal(next_token_probs(logits, cfg).argmax(-1), logits.argmax(-1))


@settings(max_examples=60, deadline=None)
@given(
    temperature=st.floats(0.3, 2.0),
    top_k=st.sampled_from([0, 1, 5, 40, 64, 500]),
    top_p=st.sampled_from([1.0, 0.95, 0.5, 0.05]),
    min_p=st.sampled_from([0.0, 0.05, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_fast_truncation_matches_the_full_vocabulary_oracle(temperature, top_k, top_p, min_p, seed):
    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(seed)) * 3
    cfg = SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    got = next_token_probs(logits, cfg)
    torch.testing.assert_close(got, reference_probs(logits, cfg), atol=1e-5, rtol=1e-4)
    assert torch.allclose(got.sum(-1), torch.ones(3))


def test_draws_follow_the_distribution_and_never_leave_its_support():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)) * 2
    cfg = SampleConfig(temperature=0.9, top_k=10, top_p=0.9, min_p=0.02)
    probs = next_token_probs(logits, cfg)[0]
    draws = sample_next_token(logits.expand(20000, -1), cfg, make_generator(1))
    counts = torch.bincount(draws, minlength=50).float() / len(draws)
    assert (counts[probs == 0] == 0).all()
    assert (counts - probs).abs().max() < 0.02


def test_a_seed_reproduces_the_draws():
    logits = torch.randn(8, 300)
    cfg = SampleConfig(temperature=1.0, top_k=0, top_p=1.0)
    a = sample_next_token(logits, cfg, make_generator(5))
    b = sample_next_token(logits, cfg, make_generator(5))
    c = sample_next_token(logits, cfg, make_generator(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_repetition_penalty_lowers_seen_tokens_of_either_sign_only():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert logits.tolist() == [[2.0, -1.0, 0.5, 3.0]]  # the input is left alone
    assert apply_repetition_penalty(logits, torch.tensor([[0]]), 1.0) is logits
    greedy = SampleConfig(temperature=0, repetition_penalty=10.0)
    assert sample_next_token(logits, greedy, context=torch.tensor([[3]])).item() == 0


def test_truncation_keeps_at_least_the_best_token():
    logits = torch.tensor([[5.0, 4.9, 0.0]])
    for cfg in (SampleConfig(top_p=1e-6, top_k=0), SampleConfig(min_p=1.0, top_k=0, top_p=1.0)):
        probs = next_token_probs(logits, cfg)
        assert probs[0, 0] > 0 and probs.sum().item() == pytest.approx(1.0)
