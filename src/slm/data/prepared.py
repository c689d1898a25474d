"""Prepared data folders: the format, reading them back, and random training batches.

A prepared folder (what `slm prepare` writes):

    tokenizer.json   byte-level BPE (slm.tokenizer.bpe), trained there or reused with --tokenizer
    train.bin        flat token ids, uint16 when the vocabulary fits (<= 65536), else uint32
    val.bin          the same layout; whole documents chosen by the seed
    meta.json        format version, vocabulary, dtype, per-split counts, sources, versions

In the token files every document is *preceded* by one `<|endoftext|>`: `EOT doc EOT doc`. So
the model learns that EOT starts a document (generation from nothing begins with EOT) and
predicts EOT where the previous document ends. Per-split `tokens` count every id in the file,
EOTs included; `characters` and `bytes` count document text only, so losses can be given in
bits per byte.

`load_prepared` gives a checked view of the folder, token files as read-only memory maps, and
`BatchSampler` draws random training windows with a resumable generator. Writing a folder is
`slm.data.prepare`'s job; it imports the format constants from here, never the other way, so the
reading side stands on numpy (and torch, for batches) without the sources or the tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from slm.errors import SLMError
from slm.fileio import check_format_version, read_json

if TYPE_CHECKING:
    import torch

Split = Literal["train", "val"]

FORMAT_VERSION = 1
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS: tuple[Split, ...] = ("train", "val")
PREPARE_HINT = "prepare it first: slm prepare SOURCES --out FOLDER"

# --------------------------------------------------------------------------- reading


@dataclass
class PreparedData:
    """A checked prepared folder; token files open as read-only memory maps."""

    folder: Path
    meta: dict = field(repr=False)

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / TOKENIZER_FILE

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def is_chat(self) -> bool:
        """Conversations with a loss mask (`slm prepare --chat`), not plain documents."""
        return self.meta.get("kind") == "chat"

    def mask(self, split: Split) -> np.ndarray:
        """A chat folder's loss mask: 1 where a token is the assistant's to learn."""
        path = self.folder / f"{split}.mask"
        if not path.is_file() or path.stat().st_size == 0:
            return np.empty(0, np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r")

    def conversations(self, split: Split) -> np.ndarray:
        """A chat folder's (start, length, line) rows, one per conversation."""
        path = self.folder / f"{split}.chat.npy"
        if not path.is_file():
            raise SLMError(f"{path} is missing", hint=f"the folder is damaged; {PREPARE_HINT}")
        return np.load(path, allow_pickle=False)

    def tokens(self, split: Split) -> np.ndarray:
        path = self.folder / f"{split}.bin"
        dtype = np.dtype(self.meta["dtype"])
        if not path.is_file() or path.stat().st_size == 0:
            return np.empty(0, dtype)  # numpy cannot memory-map an empty file
        return np.memmap(path, dtype=dtype, mode="r")


def is_prepared(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return all((folder / name).is_file() for name in (META_FILE, "train.bin", TOKENIZER_FILE))


def load_prepared(folder: str | os.PathLike) -> PreparedData:
    """Open a folder written by `prepare`, checking it before anything trains on it."""
    folder = Path(folder)
    if not is_prepared(folder):
        raise SLMError(f"{folder} is not a prepared data folder", hint=PREPARE_HINT)
    meta = read_json(folder / META_FILE, "prepared data meta.json")
    if not isinstance(meta, dict):
        raise SLMError(f"{folder / META_FILE} is corrupt (not a JSON object)", hint=PREPARE_HINT)
    check_format_version(meta, FORMAT_VERSION, folder / META_FILE, "prepared data")
    try:
        dtype = np.dtype(meta["dtype"])
        expected = {split: int(meta["splits"][split]["tokens"]) for split in SPLITS}
        int(meta["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SLMError(f"{folder / META_FILE} is corrupt ({exc!r})", hint=PREPARE_HINT) from exc
    for split, tokens in expected.items():
        path = folder / f"{split}.bin"
        size = path.stat().st_size if path.is_file() else 0
        if size != tokens * dtype.itemsize:
            raise SLMError(
                f"{path} holds {size} bytes, but meta.json promises {tokens} {dtype} tokens",
                hint=f"the folder is damaged; {PREPARE_HINT}",
            )
    return PreparedData(folder, meta)


class EpochOrder:
    """Window starts visited in epochs: each epoch a fresh random order, every start once.

    Starts drawn independently at random would leave 37% of them unseen after an epoch's
    worth of draws and show others two or three times. The draws come from a seeded
    `torch.Generator`; `state_dict` holds its state at the start of the epoch and how far into
    the epoch the run is, so a resumed run draws exactly what it would have drawn. Under
    torchrun every rank draws the whole global batch (`batch_size` x `world_size`) from the
    same stream and keeps its own slice: the data does not depend on how many processes share it.
    Subclasses say what an epoch's starts are (`_epoch_starts`).
    """

    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int):
        import torch  # here, not at the top: `slm prepare` never needs torch (~1 s to import)

        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def _epoch_starts(self) -> torch.Tensor:
        raise NotImplementedError

    def _new_epoch(self) -> None:
        self.epoch_state = self.generator.get_state()
        self.starts = self._epoch_starts()
        self.position = 0

    def _take(self) -> list[int]:
        """This rank's starts for the next batch."""
        wanted = self.batch_size * self.world_size
        every: list[int] = []
        while len(every) < wanted:  # a batch that straddles two epochs takes from both
            if self.position == len(self.starts):
                self._new_epoch()
            taken = self.starts[self.position : self.position + wanted - len(every)]
            every += taken.tolist()
            self.position += len(taken)
        return every[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"generator": self.epoch_state, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        # Replaying the epoch's draws from its starting state rebuilds its order. A state
        # without a position (a conversation run from before epochs) starts a fresh epoch.
        self.generator.set_state(state["generator"])
        self._new_epoch()
        self.position = min(int(state.get("position", 0)), len(self.starts))


class BatchSampler(EpochOrder):
    """(B, T+1) windows from a token array, in epochs -> (x, y) int64 CPU tensors of shape (B, T).

    Each epoch cuts the tokens into windows of T (+1 for the last target) at a random offset,
    so window edges move from one epoch to the next, and visits them in a random order: every
    token is trained on once an epoch. On the built-in corpus, epochs instead of independent
    random starts gave 0.025 bits per byte at 5 M training tokens (benchmarks/README.md).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        context_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(tokens) < context_len + 1:
            raise SLMError(
                f"{len(tokens):,} tokens are too few for one window of context {context_len}: "
                f"{context_len + 1:,} are needed",
                hint="use more text or a smaller --context-len",
            )
        super().__init__(batch_size, seed, rank, world_size)
        self.tokens = tokens
        self.context_len = context_len
        self._new_epoch()

    def _epoch_starts(self) -> torch.Tensor:
        import torch

        n, T = len(self.tokens), self.context_len
        # An offset below T, and below n - T so that at least one window fits.
        offset = int(torch.randint(min(T, n - T), (1,), generator=self.generator))
        count = (n - 1 - offset) // T  # windows of T + 1 tokens starting T apart
        return offset + T * torch.randperm(count, generator=self.generator)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        starts = self._take()
        windows = np.stack([self.tokens[s : s + self.context_len + 1] for s in starts])
        block = torch.from_numpy(windows.astype(np.int64))  # (B, T+1)
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()


class ChatBatchSampler(EpochOrder):
    """(B, T) windows that each start at a conversation, in epochs, with non-assistant targets
    set to -100 (what `cross_entropy` ignores) so only the assistant's tokens carry loss.

    Starting at a conversation keeps it whole in the window (conversations longer than the
    context are left out); what follows it in the window is the next conversations, packed,
    each seen from its own start. Windows that run past the end are padded without loss.
    Every conversation starts a window once an epoch, in a fresh random order each epoch: a
    fine-tune of a few epochs sees each example as often as the others.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        mask: np.ndarray,
        conversations: np.ndarray,
        batch_size: int,
        context_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        fits = conversations[conversations[:, 1] <= context_len + 1]
        if len(fits) == 0:
            raise SLMError(
                f"no conversation fits the context of {context_len} tokens",
                hint="prepare with a larger model context, or shorter conversations",
            )
        super().__init__(batch_size, seed, rank, world_size)
        self.skipped = len(conversations) - len(fits)
        self.conversation_starts = fits[:, 0]
        self.tokens, self.mask = tokens, mask
        self.context_len = context_len
        self._new_epoch()

    def _epoch_starts(self) -> torch.Tensor:
        import torch

        order = torch.randperm(len(self.conversation_starts), generator=self.generator)
        return torch.from_numpy(self.conversation_starts[order.numpy()].astype(np.int64))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        span = self.context_len + 1
        ids = np.zeros((self.batch_size, span), np.int64)
        learn = np.zeros((self.batch_size, span), bool)
        for row, start in enumerate(self._take()):
            window = self.tokens[start : start + span]
            ids[row, : len(window)] = window
            learn[row, : len(window)] = self.mask[start : start + span] == 1
        targets = np.where(learn[:, 1:], ids[:, 1:], -100)
        return torch.from_numpy(ids[:, :-1].copy()), torch.from_numpy(targets)
