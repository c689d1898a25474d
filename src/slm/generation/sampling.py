"""Choosing the next token: logits (B, V) -> token ids (B,), one row per sample.

Owns the pure functions that turn a row of logits into a choice: repetition penalty,
temperature, top-k, top-p (nucleus) and min-p truncation, then a draw. The settings they
read (`SampleConfig`, validated with errors that name the CLI flag) live in `config.py`;
the loop around the model (prompt, KV cache, stop strings, streaming) in `generate.py`.

Order of operations, per row: repetition penalty -> temperature -> top-k -> top-p -> min-p
-> draw. With `temperature == 0` the choice is the argmax after the penalty (greedy), and
the truncation settings do not matter.

Speed matters here: at batch 1 the whole decode step has a budget of about 1 ms. With top-k
set, only the k best logits are sorted (`topk`, ~10 us for 4096 logits) and top-p, min-p
and the draw work on those k values; a full-vocabulary sort happens only for top-p without
top-k.

torch is not imported at module level: the maths need only tensor methods, so importing
this module costs nothing until a generator is made (`make_generator`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from slm.config import SampleConfig

if TYPE_CHECKING:
    import torch


def apply_repetition_penalty(
    logits: torch.Tensor, context: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Make tokens already in `context` (B, T) less likely; returns new logits (B, V).

    The penalty of the CTRL paper: a positive logit is divided by `penalty`, a negative one
    multiplied, so the token always loses ground whatever its sign. Only the T context ids
    are touched (gather/scatter), not the whole vocabulary.

    >>> import torch
    >>> apply_repetition_penalty(torch.tensor([[2.0, -1.0, 3.0]]), torch.tensor([[0, 1]]), 2.0)
    tensor([[ 1., -2.,  3.]])
    """
    if penalty == 1.0 or context.shape[-1] == 0:
        return logits
    seen = logits.gather(-1, context)
    seen = (seen / penalty).where(seen > 0, seen * penalty)
    return logits.scatter(-1, context, seen)


def truncate_sorted(values: torch.Tensor, top_p: float, min_p: float) -> torch.Tensor:
    """Mask (to -inf) the tail of logits sorted in descending order, by top-p then min-p.

    Top-p keeps the smallest head whose probability reaches `top_p` (the best token always
    stays). Min-p then drops tokens less likely than `min_p` times the best one, which is a
    threshold on logits: log p_i < log p_0 + log(min_p).

    >>> import torch
    >>> truncate_sorted(torch.tensor([[2.0, 1.0, 0.0, -5.0]]), top_p=0.95, min_p=0.0)
    tensor([[2., 1., 0., -inf]])
    """
    if top_p < 1.0:
        probs = values.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the better tokens
        values = values.masked_fill(mass_before >= top_p, -math.inf)
    if min_p > 0.0:
        values = values.masked_fill(values < values[..., :1] + math.log(min_p), -math.inf)
    return values


def candidates(
    logits: torch.Tensor, settings: SampleConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits left to draw from, after temperature and truncation.

    Returns `(values, ids)`: with top-k or top-p, `values` (B, K) are the surviving logits
    in descending order (masked ones are -inf) and `ids` (B, K) their token ids; otherwise
    `values` is the whole (B, V) row and `ids` is None.
    """
    logits = logits / settings.temperature
    vocab_size = logits.shape[-1]
    if 0 < settings.top_k < vocab_size:
        values, ids = logits.topk(settings.top_k, dim=-1)
    elif settings.top_p < 1.0:
        values, ids = logits.sort(dim=-1, descending=True)
    else:
        if settings.min_p > 0.0:
            best = logits.max(dim=-1, keepdim=True).values
            logits = logits.masked_fill(logits < best + math.log(settings.min_p), -math.inf)
        return logits, None
    return truncate_sorted(values, settings.top_p, settings.min_p), ids


def next_token_probs(
    logits: torch.Tensor, settings: SampleConfig, context: torch.Tensor | None = None
) -> torch.Tensor:
    """The full (B, V) distribution the next token is drawn from (for tests and inspection).

    Greedy settings give a one-hot row at the argmax.
    """
    logits = logits.float()
    if context is not None:
        logits = apply_repetition_penalty(logits, context, settings.repetition_penalty)
    if settings.greedy:
        return logits.new_zeros(logits.shape).scatter(-1, logits.argmax(-1, keepdim=True), 1.0)
    values, ids = candidates(logits, settings)
    probs = values.softmax(dim=-1)
    if ids is None:
        return probs
    return logits.new_zeros(logits.shape).scatter(-1, ids, probs)


def sample_next_token(
    logits: torch.Tensor,
    settings: SampleConfig,
    generator: torch.Generator | None = None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one token id per row of `logits` (B, V); returns (B,) int64 on the same device.

    `context` (B, T) holds the ids the repetition penalty applies to. Everything stays in
    torch, with no host round trip, so a GPU caller pays no synchronisation here.
    """
    logits = logits.float()
    if context is not None:
        logits = apply_repetition_penalty(logits, context, settings.repetition_penalty)
    if settings.greedy:
        return logits.argmax(dim=-1)
    values, ids = candidates(logits, settings)
    choice = draw(values.softmax(dim=-1), generator)  # (B, 1)
    if ids is not None:
        choice = ids.gather(-1, choice)
    return choice.squeeze(-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (B, K), index i with probability probs[i] / sum(probs).

    The exponential race: with E_i ~ Exp(1), argmax(p_i / E_i) is i with probability
    p_i / sum(p). It is exact, like `torch.multinomial`, but costs a few elementwise ops:
    on CPU ~20 us for a 4096-token row against ~70 us for multinomial (and 500 us at batch
    8). E = -log(U) with U in [0, 1) is never 0, so zero-probability entries never win.
    """
    uniform = probs.new_empty(probs.shape).uniform_(generator=generator)
    return (probs / uniform.log_().neg_()).argmax(dim=-1, keepdim=True)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A random generator for sampling: seeded for reproducible output, else fresh entropy."""
    import torch  # here, not at the top: see the module docstring

    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
