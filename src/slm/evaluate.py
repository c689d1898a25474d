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
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slm.errors import EXIT_USAGE, SLMError
from slm.fileio import read_json
from slm.tokenizer.bpe import Tokenizer


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
    for token_id in tokenizer.specials.values():
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


def conversation_windows(conversations: np.ndarray, context_len: int, count: int) -> list[Window]:
    """One window per conversation that fits the context (at most `count`, spread evenly),
    each scoring its own tokens: a chat model's evaluation sample."""
    fits = conversations[conversations[:, 1] <= context_len + 1]
    if len(fits) > count:
        fits = fits[np.linspace(0, len(fits) - 1, count).round().astype(np.int64)]
    return [Window(int(s), int(s) + int(n) - 1, int(s) + 1) for s, n, _ in fits if n >= 2]


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
    score_mask: np.ndarray | None = None,
) -> EvalResult:
    """Sum the loss over the scored targets of each window, batching windows of one length.

    `score_mask` (a chat folder's loss mask) scores only the targets where it is 1.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, n_tokens, n_bytes = 0.0, 0, 0
    for batch in _batches_of_equal_length(windows, batch_size):
        x, y, keep = _stack(tokens, batch, score_mask)
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


def evaluate_model(
    model_dir: str | os.PathLike,
    sources: list[str],
    *,
    split: str = "val",
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int = 0,
    glob: str | None = None,
    text_field: str = "text",
    device: str = "auto",
    dtype: str = "float32",
    log: Callable[[str], None] = lambda _msg: None,
) -> EvalResult:
    """`slm eval`: score a model folder on text sources, or on its run's own data split."""
    from slm import checkpoint
    from slm.device import choose_dtype, resolve_device, set_threads

    if max_tokens < 0:  # tokens[:-5] would quietly drop the last five instead
        raise SLMError(
            f"--max-tokens must not be negative, got {max_tokens}",
            hint="0 scores every token",
            exit_code=EXIT_USAGE,
        )
    set_threads()
    torch_device = resolve_device(device)
    model, tokenizer = checkpoint.load_model_and_tokenizer(model_dir, torch_device)
    tokens = _tokens_to_score(Path(model_dir), sources, tokenizer, split, glob, text_field, log)
    if max_tokens:
        tokens = tokens[:max_tokens]
    if len(tokens) < 2:
        raise SLMError(f"too little text to score: {len(tokens)} token(s)", hint="give more text")
    context_len = model.config.context_len
    if stride is not None and not 1 <= stride <= context_len:
        raise SLMError(
            f"--stride must be between 1 and the context length {context_len}", exit_code=EXIT_USAGE
        )
    if batch_size < 1:
        raise SLMError("--batch-size must be at least 1", exit_code=EXIT_USAGE)
    windows = plan_windows(len(tokens), context_len, stride)
    bar = _bar(len(windows))
    try:
        return evaluate_windows(
            model,
            tokens,
            windows,
            token_byte_lengths(tokenizer),
            batch_size,
            torch_device,
            choose_dtype(dtype, torch_device),
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()


def _tokens_to_score(
    model_dir: Path,
    sources: list[str],
    tokenizer: Tokenizer,
    split: str,
    glob: str | None,
    text_field: str,
    log: Callable[[str], None],
) -> np.ndarray:
    from slm.data.prepare import encode_sources
    from slm.data.prepared import load_prepared

    if sources:
        return encode_sources(sources, tokenizer, glob=glob, text_field=text_field, log=log)
    run_file = model_dir / "run.json"
    if not run_file.is_file():
        raise SLMError(
            f"{model_dir} has no training data on record",
            hint="give the text to score: slm eval RUN_DIR FILE...",
            exit_code=EXIT_USAGE,
        )
    record = read_json(run_file, "run record")
    if not isinstance(record, dict) or not isinstance(record.get("data"), str):
        raise SLMError(f"run record is corrupt: {run_file} (no data folder named)")
    data_dir = Path(record["data"])
    if not data_dir.is_dir():
        raise SLMError(
            f"the run's data folder {data_dir} no longer exists",
            hint="give the text to score: slm eval RUN_DIR TEXT_SOURCES...",
        )
    data = load_prepared(data_dir)
    if data.meta.get("tokenizer_sha256") not in (None, tokenizer.sha256()):
        raise SLMError(f"the data in {data.folder} was made with another tokenizer")
    return data.tokens(split)  # type: ignore[arg-type]


def _bar(total: int) -> Any:
    if total < 50 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="window", desc="scoring", leave=False)


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
    tokens: np.ndarray, windows: list[Window], score_mask: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = windows[0].end - windows[0].start
    rows = np.stack([np.asarray(tokens[w.start : w.end + 1], dtype=np.int64) for w in windows])
    x = torch.from_numpy(rows[:, :-1])
    y = torch.from_numpy(rows[:, 1:].copy())
    target_index = np.array([w.start + 1 for w in windows])[:, None] + np.arange(length)[None, :]
    score_from = np.array([w.score_from for w in windows])[:, None]
    keep = target_index >= score_from
    if score_mask is not None:
        keep &= np.asarray(score_mask)[target_index] == 1
    return x, y, torch.from_numpy(keep)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
