"""slm.data.prepared: reading prepared folders back (checks, memory maps) and the batch sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slm.data.prepared import (
    BatchSampler,
    ChatBatchSampler,
    PreparedData,
    is_prepared,
    load_prepared,
)
from slm.errors import SLMError

# --------------------------------------------------------------------------- reading


def test_tokens_are_read_only_memory_maps(prepared: Path) -> None:
    tokens = load_prepared(prepared).tokens("train")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    with pytest.raises(ValueError):
        tokens[0] = 1


def test_load_prepared_refuses_what_is_not_prepared_data(tmp_path: Path) -> None:
    with pytest.raises(SLMError, match="not a prepared data folder") as info:
        load_prepared(tmp_path)
    assert "slm prepare" in (info.value.hint or "")
    assert not is_prepared(tmp_path)


def copy_prepared(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in prepared.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    return copy


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda meta: "{broken", "corrupt"),
        (lambda meta: json.dumps([1, 2]), "corrupt"),
        (lambda meta: json.dumps({**meta, "format_version": 99}), "format version 99"),
        (lambda meta: json.dumps({k: v for k, v in meta.items() if k != "splits"}), "corrupt"),
    ],
)
def test_load_prepared_refuses_a_damaged_meta(prepared: Path, tmp_path: Path, damage, match):
    copy = copy_prepared(prepared, tmp_path)
    meta = json.loads((copy / "meta.json").read_text(encoding="utf-8"))
    (copy / "meta.json").write_text(damage(meta), encoding="utf-8")
    with pytest.raises(SLMError, match=match):
        load_prepared(copy)


def test_load_prepared_refuses_a_truncated_token_file(prepared: Path, tmp_path: Path) -> None:
    copy = copy_prepared(prepared, tmp_path)
    with open(copy / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(SLMError, match="holds 100 bytes"):
        load_prepared(copy)


def test_uint32_and_empty_token_files_read_back(tmp_path: Path) -> None:
    np.arange(70_000, 70_010, dtype=np.uint32).tofile(tmp_path / "train.bin")
    (tmp_path / "val.bin").write_bytes(b"")
    splits = {"train": {"tokens": 10}, "val": {"tokens": 0}}
    meta = {"format_version": 1, "vocab_size": 70_010, "dtype": "uint32", "splits": splits}
    data = PreparedData(tmp_path, meta)
    assert data.tokens("train").tolist() == list(range(70_000, 70_010))
    assert data.tokens("val").shape == (0,)


# --------------------------------------------------------------------------- batch sampler


def test_batches_are_windows_and_their_next_tokens() -> None:
    tokens = np.arange(1000, dtype=np.uint16)  # token value = position, so windows show
    x, y = BatchSampler(tokens, batch_size=8, context_len=16, seed=0).next_batch()
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))  # contiguous windows


def test_every_start_is_reachable_and_no_window_runs_off_the_end() -> None:
    tokens = np.arange(20, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=64, context_len=17, seed=0)
    starts = {int(s) for _ in range(10) for s in sampler.next_batch()[0][:, 0]}
    assert starts == {0, 1, 2}  # 20 tokens hold windows of 18 at starts 0..2


def test_an_epoch_trains_on_every_token_once() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=5, context_len=16, seed=3)
    count = len(sampler.starts)
    epoch_state = sampler.epoch_state
    rows = []
    while len(rows) < count:
        rows += sampler.next_batch()[0][:, 0].tolist()
    first = sorted(rows[:count])
    offset = first[0]
    assert offset < 16 and first == [offset + 16 * i for i in range(count)]
    assert offset + 16 * count + 1 > 1000 - 16  # no room left for one more window
    assert not torch.equal(sampler.epoch_state, epoch_state)  # the batch ran into epoch two


def test_epochs_differ_in_order_and_offset() -> None:
    tokens = np.arange(5000, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=1, context_len=32, seed=0)
    epochs = []
    for _ in range(4):
        epochs.append((int(sampler.starts.min()), sampler.starts.tolist()))
        sampler.position = len(sampler.starts)
        sampler.next_batch()
    assert len({offset for offset, _ in epochs}) > 1
    assert len({tuple(order) for _, order in epochs}) == 4


@pytest.mark.parametrize(
    ("n_tokens", "batch_size", "drawn", "then"),
    [
        (5000, 4, 1, 3),  # within the first epoch
        (100, 5, 2, 10),  # 12 windows of 8: the run crosses an epoch every ~2 batches
    ],
)
def test_sampler_state_resumes_the_exact_sequence(
    tmp_path: Path, n_tokens: int, batch_size: int, drawn: int, then: int
) -> None:
    tokens = np.arange(n_tokens, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=batch_size, context_len=8, seed=42)
    for _ in range(drawn):
        sampler.next_batch()
    torch.save(sampler.state_dict(), tmp_path / "state.pt")
    expected = [sampler.next_batch() for _ in range(then)]
    resumed = BatchSampler(tokens, batch_size=batch_size, context_len=8, seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    got = [resumed.next_batch() for _ in range(then)]
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def conversations(count: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` conversations of `length` tokens back to back: token i*length + j is
    conversation i's j-th, so a window's first token names its conversation."""
    tokens = np.arange(count * length, dtype=np.uint16)
    mask = np.ones(count * length, dtype=np.uint8)
    index = np.array([[i * length, length] for i in range(count)], dtype=np.int64)
    return tokens, mask, index


def test_conversations_are_visited_once_an_epoch() -> None:
    tokens, mask, index = conversations(10, 5)
    sampler = ChatBatchSampler(tokens, mask, index, batch_size=4, context_len=8, seed=3)
    firsts: list[int] = []
    for _ in range(10):  # 40 windows: four whole epochs of 10 conversations
        firsts += sampler.next_batch()[0][:, 0].tolist()
    epochs = [firsts[i : i + 10] for i in range(0, 40, 10)]
    for epoch in epochs:
        assert sorted(epoch) == [5 * i for i in range(10)]
    assert len({tuple(epoch) for epoch in epochs}) == 4  # a fresh order each epoch


def test_conversation_sampler_resumes_the_exact_sequence(tmp_path: Path) -> None:
    tokens, mask, index = conversations(7, 6)
    sampler = ChatBatchSampler(tokens, mask, index, batch_size=3, context_len=8, seed=11)
    for _ in range(4):  # 12 windows: into the second epoch
        sampler.next_batch()
    torch.save(sampler.state_dict(), tmp_path / "state.pt")
    expected = [sampler.next_batch() for _ in range(6)]
    resumed = ChatBatchSampler(tokens, mask, index, batch_size=3, context_len=8, seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for (x, y), (ex, ey) in zip([resumed.next_batch() for _ in range(6)], expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_seed_decides_the_batches() -> None:
    tokens = np.arange(5000, dtype=np.uint16)

    def first(seed: int) -> torch.Tensor:
        return BatchSampler(tokens, 4, 8, seed).next_batch()[0]

    assert torch.equal(first(1), first(1))
    assert not torch.equal(first(1), first(2))


def test_too_few_tokens_for_one_window_says_how_many() -> None:
    with pytest.raises(SLMError, match=r"256 tokens are too few.*257 are needed"):
        BatchSampler(np.zeros(256, np.uint16), batch_size=1, context_len=256, seed=0)
    BatchSampler(np.zeros(257, np.uint16), batch_size=1, context_len=256, seed=0).next_batch()
