"""Scoring a model on tokens: loss in nats per token, perplexity, and bits per byte.

Bits per byte (bpb) is the total loss in bits divided by the UTF-8 bytes of the text whose
tokens were predicted:

    bpb = sum over predicted tokens of -ln p(token)  /  (ln 2 * bytes of those tokens)

It does not depend on the tokenizer (a bigger vocabulary means fewer tokens, each with a
larger loss, over the same bytes), so models with different vocabularies compare fairly.
Special tokens (`<|endoftext|>`) count their loss but zero bytes: they are not text.

Every target token is scored exactly once. With `stride == context_len` the windows do not
overlap; a smaller stride slides the window so that each token is predicted with more
context (slower, slightly lower loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from slm.tokenizer import SPECIAL_TOKENS, Tokenizer


@dataclass(frozen=True)
class EvalResult:
    loss_sum: float  # nats, summed over scored tokens
    tokens: int
    bytes: int

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bpb(self) -> float:
        return self.loss_sum / (math.log(2) * max(1, self.bytes))

    def to_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bpb": self.bpb,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for; special tokens count 0 (they are not text)."""
    lengths = np.array(
        [len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64
    )
    for special in SPECIAL_TOKENS:
        token_id = tokenizer.hf.token_to_id(special)
        if token_id is not None:
            lengths[token_id] = 0
    return lengths


@dataclass(frozen=True)
class Window:
    start: int  # inputs are tokens[start : end], targets tokens[start + 1 : end + 1]
    end: int
    score_from: int  # targets at absolute index >= score_from are scored


def plan_windows(n_tokens: int, context_len: int, stride: int | None = None) -> list[Window]:
    """Windows that score every target (tokens 1..n-1) exactly once.

    >>> [(w.start, w.end, w.score_from) for w in plan_windows(10, 4)]
    [(0, 4, 1), (4, 8, 5), (8, 9, 9)]
    """
    stride = stride or context_len
    if not 1 <= stride <= context_len:
        raise ValueError(f"stride must be in 1..{context_len}")
    windows: list[Window] = []
    scored_up_to = 0  # last target index already scored
    start = 0
    while scored_up_to < n_tokens - 1:
        end = min(start + context_len, n_tokens - 1)
        windows.append(Window(start, end, scored_up_to + 1))
        scored_up_to = end
        start += stride
    return windows


def sample_windows(n_tokens: int, context_len: int, count: int) -> list[Window]:
    """`count` full windows spread evenly over the tokens: a fixed, cheap evaluation sample."""
    length = min(context_len, n_tokens - 1)
    last = n_tokens - 1 - length
    count = max(1, min(count, last + 1))
    starts = np.linspace(0, last, count).round().astype(np.int64)
    return [Window(int(s), int(s) + length, int(s) + 1) for s in np.unique(starts)]


@torch.no_grad()
def evaluate_windows(
    model: torch.nn.Module,
    tokens: np.ndarray,
    windows: list[Window],
    byte_lengths: np.ndarray,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype = torch.float32,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Sum the loss over the scored targets of each window, batching windows of one length."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, n_tokens, n_bytes = 0.0, 0, 0
    for batch in _batches_of_equal_length(windows, batch_size):
        x, y, keep = _stack(tokens, batch)
        with _autocast(device, autocast_dtype):
            logits = model(x.to(device))
        losses = F.cross_entropy(
            logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none"
        ).view(y.shape)
        keep_dev = keep.to(device)
        loss_sum += float((losses * keep_dev).sum())
        n_tokens += int(keep.sum())
        n_bytes += int(byte_lengths[y.numpy()][keep.numpy()].sum())
        if progress:
            progress(len(batch))
    model.train(was_training)
    return EvalResult(loss_sum, n_tokens, n_bytes)


def _batches_of_equal_length(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    batch: list[Window] = []
    for window in windows:
        if batch and (
            len(batch) == batch_size or window.end - window.start != batch[0].end - batch[0].start
        ):
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


def _stack(
    tokens: np.ndarray, windows: list[Window]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = windows[0].end - windows[0].start
    rows = np.stack([np.asarray(tokens[w.start : w.end + 1], dtype=np.int64) for w in windows])
    x = torch.from_numpy(rows[:, :-1])
    y = torch.from_numpy(rows[:, 1:].copy())
    target_index = np.array([w.start + 1 for w in windows])[:, None] + np.arange(length)[None, :]
    score_from = np.array([w.score_from for w in windows])[:, None]
    keep = torch.from_numpy(target_index >= score_from)
    return x, y, keep


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
