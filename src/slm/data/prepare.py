"""Writing a prepared folder: sources -> tokenizer + token files (what `slm prepare` does).

`prepare` makes two streaming passes so that memory stays flat whatever the corpus size: the
first counts documents and trains the tokenizer (or reuses one), the second encodes in batches
and appends the ids to the token files, routing each document to train or val. Everything
is written into a hidden sibling folder that replaces `out` only when complete, and meta.json
goes in last. `encode_sources` gives the same token layout in memory, for scoring text
(`slm eval`).

The folder's format and reading it back are `slm.data.prepared`'s (this module imports its
constants; `slm.data.prepared` never imports this one). Which documents go to val is decided in
`slm.data.splits`; the per-split counts and the summary `prepare` returns are defined in
`slm.data.summary`. Finding the sources is `slm.data.sources`' job, decoding their bytes
`slm.data.text_files`'s, the BPE itself `slm.tokenizer.bpe`'s.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from slm import __version__
from slm.data.prepared import FORMAT_VERSION, META_FILE, SPLITS, TOKENIZER_FILE, Split
from slm.data.sources import Source, resolve_sources
from slm.data.splits import SplitPlan, plan_split, split_single, val_choices
from slm.data.summary import PrepareSummary, SplitStats
from slm.data.text_files import Log
from slm.errors import EXIT_USAGE, SLMError
from slm.fileio import write_json
from slm.tokenizer.bpe import MAX_VOCAB, MIN_VOCAB, Tokenizer

MIN_TRAIN_TOKENS = 257  # one training block of the default context (256) plus its target
# Text per encode_batch call. The Rust side keeps ~170 bytes per token until the ids are
# copied out, so 1 Mi characters (~0.3-0.6 M tokens) peak near 100 MB over the baseline,
# whatever the corpus size; 4 Mi measured the same speed on 2 cores for ~4x the memory.
BATCH_CHARS = 1 << 20


def _no_log(message: str) -> None:
    pass


# --------------------------------------------------------------------------- prepare


def prepare(
    sources: list[str],
    out: str | os.PathLike,
    *,
    vocab_size: int = 4096,
    tokenizer_path: str | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    glob: str | None = None,
    text_field: str = "text",
    force: bool = False,
    min_train_tokens: int = MIN_TRAIN_TOKENS,
    log: Log = _no_log,
    progress: bool | None = None,
) -> PrepareSummary:
    """Read `sources`, train (or reuse) a tokenizer and write a prepared folder at `out`.

    Two streaming passes keep memory flat: the first counts documents and trains the
    tokenizer, the second encodes in batches and appends to the token files. Everything is
    written into a hidden sibling folder that is renamed to `out` only when complete.
    `progress=None` shows tqdm bars on stderr when it is a terminal.
    """
    out = Path(out)
    sources = list(sources) or ["shakespeare"]
    _check_options(vocab_size, tokenizer_path, val_fraction)
    check_out(out, force)
    given = Tokenizer.from_file(tokenizer_path) if tokenizer_path else None
    resolved = resolve_sources(sources, glob=glob, text_field=text_field, log=log)
    with staging_folder(out) as staging:
        # 1. Count documents (the split needs the count) while training the tokenizer.
        start = time.perf_counter()
        tokenizer, count = _first_pass(resolved, given, vocab_size, log, progress)
        first_pass_s = time.perf_counter() - start
        if count.documents == 0:
            raise SLMError(f"no text in {', '.join(sources)}: every document is empty")
        if given is None and tokenizer.vocab_size < vocab_size:
            log(
                f"note: this text supports a vocabulary of {tokenizer.vocab_size} tokens, "
                f"fewer than --vocab-size {vocab_size}: using {tokenizer.vocab_size} "
                "(more text allows a larger one)"
            )
        # 2. Choose the validation documents, then encode both splits into token files.
        plan = plan_split(count.documents, count.first_document_chars, val_fraction, seed)
        dtype = token_dtype(tokenizer.vocab_size)
        start = time.perf_counter()
        bar = _bar("encoding", progress, total=count.bytes)
        with _TokenWriter(staging, tokenizer, dtype, bar) as writer:
            _encode(resolved, plan, writer)
        encode_s = time.perf_counter() - start
        _check_enough(writer.stats["train"], min_train_tokens)
        _warn_if_val_is_large(writer.stats, val_fraction, log)
        # 3. Tokenizer and meta.json last: a folder with meta.json is a finished one.
        tokenizer.save(staging / TOKENIZER_FILE)
        meta = _meta(tokenizer, dtype, resolved, seed, val_fraction, writer.stats)
        write_json(staging / META_FILE, meta)
        replace_folder(staging, out)
    return PrepareSummary(
        out=out,
        sources=sources,
        vocab_size=tokenizer.vocab_size,
        dtype=dtype,
        tokenizer_trained=given is None,
        splits=writer.stats,
        first_pass_s=first_pass_s,
        encode_s=encode_s,
    )


def token_dtype(vocab_size: int) -> Literal["uint16", "uint32"]:
    """The narrowest unsigned type that holds every id: half the disk and RAM of uint32."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def _check_options(vocab_size: int, tokenizer_path: str | None, val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise SLMError(
            f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}",
            hint="0.05 keeps one document in twenty for validation",
            exit_code=EXIT_USAGE,
        )
    if not tokenizer_path and not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise SLMError(
            f"--vocab-size {vocab_size} is out of range",
            hint=f"use {MIN_VOCAB} (all bytes + special tokens) or more; the default is 4096",
            exit_code=EXIT_USAGE,
        )


def check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite, and with --force refuse to delete anything but prepared data."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SLMError(f"--out {out} is a file", hint="choose a folder path for --out")
    if not force:
        raise SLMError(
            f"output folder {out} already exists",
            hint="add --force to replace it, or choose another --out",
        )
    if any(out.iterdir()) and not (out / META_FILE).is_file():
        raise SLMError(
            f"--force would delete {out}, which is not a prepared data folder (no {META_FILE})",
            hint="choose a new or empty folder for --out",
        )


@contextlib.contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A hidden sibling of `out` to write into; removed if anything fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    # mkdtemp makes the folder private (0700); the finished folder should get the usual mode.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: Path, out: Path) -> None:
    """Move the finished folder into place; an old one goes only once the new one is whole."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _bar(desc: str, progress: bool | None, total: int | None) -> tqdm:
    disable = None if progress is None else not progress  # None: tqdm's own "is it a TTY"
    return tqdm(desc=desc, total=total, unit="B", unit_scale=True, leave=False, disable=disable)


# --------------------------------------------------------------------------- pass 1


@dataclass
class _CorpusCount:
    documents: int = 0
    bytes: int = 0
    first_document_chars: int = 0  # the single-document split needs it


def _first_pass(
    sources: list[Source],
    tokenizer: Tokenizer | None,
    vocab_size: int,
    log: Log,
    progress: bool | None,
) -> tuple[Tokenizer, _CorpusCount]:
    """Read everything once: count it, and train a tokenizer unless one was given."""
    count = _CorpusCount()
    sizes = [s.size_bytes for s in sources]
    total = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
    bar = _bar("counting" if tokenizer else "training tokenizer", progress, total)
    texts = _counted_texts(sources, count, log, bar)
    if tokenizer is None:
        return Tokenizer.train(texts, vocab_size), count
    for _ in texts:
        pass
    return tokenizer, count


def _documents(sources: list[Source], log: Log) -> Iterator[Iterator[str]]:
    """The pieces of every non-empty document, in order (both passes see the same list)."""
    for source in sources:
        for document in source.documents(log):
            first = next(document.pieces, None)
            if first is not None:
                yield itertools.chain([first], document.pieces)


def _counted_texts(
    sources: list[Source], count: _CorpusCount, log: Log, bar: tqdm
) -> Iterator[str]:
    """All text pieces, counting documents and bytes on the way; warnings are logged here."""
    with bar:
        for pieces in _documents(sources, log):
            for piece in pieces:
                if count.documents == 0:
                    count.first_document_chars += len(piece)
                size = utf8_len(piece)
                count.bytes += size
                bar.update(size)
                yield piece
            count.documents += 1


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


# --------------------------------------------------------------------------- pass 2


class _TokenWriter:
    """Batches text pieces through `encode_batch` and appends the ids to train.bin / val.bin."""

    def __init__(self, folder: Path, tokenizer: Tokenizer, dtype: str, bar: tqdm):
        self.tokenizer = tokenizer
        self.dtype = np.dtype(dtype)
        self.bar = bar
        self.stats: dict[str, SplitStats] = {split: SplitStats() for split in SPLITS}
        self._closing = contextlib.ExitStack()  # closes the files in __exit__
        self.files = {
            split: self._closing.enter_context(open(folder / f"{split}.bin", "wb"))  # noqa: SIM115
            for split in SPLITS
        }
        self.pending: list[tuple[Split, str, bool]] = []
        self.pending_chars = 0

    def add(self, split: Split, text: str, starts_document: bool) -> None:
        stats = self.stats[split]
        stats.documents += starts_document
        stats.characters += len(text)
        size = utf8_len(text)
        stats.bytes += size
        self.bar.update(size)
        self.pending.append((split, text, starts_document))
        self.pending_chars += len(text)
        if self.pending_chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        encoded = self.tokenizer.encode_batch([text for _, text, _ in self.pending])
        for split in SPLITS:
            parts: list[list[int]] = []
            for (piece_split, _, starts), ids in zip(self.pending, encoded, strict=True):
                if piece_split == split:
                    parts.extend(([self.tokenizer.eot_id], ids) if starts else (ids,))
            n = sum(map(len, parts))
            np.fromiter(itertools.chain.from_iterable(parts), self.dtype, n).tofile(
                self.files[split]
            )
            self.stats[split].tokens += n
        self.pending, self.pending_chars = [], 0

    def __enter__(self) -> _TokenWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        with self.bar, self._closing:
            if exc_type is None:
                self.flush()
                for f in self.files.values():
                    f.flush()
                    os.fsync(f.fileno())


def _encode(sources: list[Source], plan: SplitPlan, writer: _TokenWriter) -> None:
    choices = val_choices(plan.documents, plan.val_documents, plan.seed)
    for pieces in _documents(sources, _no_log):  # pass 1 gave the warnings
        if plan.single_split_at is not None:
            for to_val, text, starts in split_single(pieces, plan.single_split_at):
                writer.add("val" if to_val else "train", text, starts)
            continue
        split: Split = "val" if next(choices, False) else "train"
        for k, text in enumerate(pieces):
            writer.add(split, text, k == 0)


def _check_enough(train: SplitStats, min_train_tokens: int) -> None:
    if train.tokens < min_train_tokens:
        raise SLMError(
            f"corpus too small: {train.tokens:,} training tokens, but one training block of "
            f"context {min_train_tokens - 1} needs {min_train_tokens:,}",
            hint="add more text (or lower --val-fraction)",
        )


def _warn_if_val_is_large(stats: dict[str, SplitStats], val_fraction: float, log: Log) -> None:
    """Whole documents can miss the fraction by far when their sizes differ a lot."""
    share = stats["val"].bytes / max(1, stats["train"].bytes + stats["val"].bytes)
    if share > 2 * val_fraction + 0.05:
        log(
            f"warning: the validation documents hold {share:.0%} of the text "
            f"(--val-fraction {val_fraction}); the documents differ much in size: "
            "try another --seed, or split the largest files"
        )


def _meta(
    tokenizer: Tokenizer,
    dtype: str,
    sources: list[Source],
    seed: int,
    val_fraction: float,
    stats: dict[str, SplitStats],
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "slm_version": __version__,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype,
        "eot_id": tokenizer.eot_id,
        "tokenizer_sha256": tokenizer.sha256(),
        "sources": [{"source": s.label, "kind": s.kind} for s in sources],
        "seed": seed,
        "val_fraction": val_fraction,
        "splits": {split: asdict(stats[split]) for split in SPLITS},
    }


def encode_sources(
    sources: list[str],
    tokenizer: Tokenizer,
    *,
    glob: str | None = None,
    text_field: str = "text",
    log: Log = _no_log,
) -> np.ndarray:
    """Token ids of every document in `sources`, each preceded by <|endoftext|>, in memory.

    The same layout as a split of `prepare`, for scoring text with an existing tokenizer
    (`slm eval`). Encoding goes in batches of pieces, like `prepare`.
    """
    chunks: list[np.ndarray] = []
    pending: list[str] = []
    starts: list[bool] = []

    def flush() -> None:
        for ids, first in zip(tokenizer.encode_batch(pending), starts, strict=True):
            chunks.append(np.asarray(([tokenizer.eot_id] if first else []) + ids, np.int64))
        pending.clear()
        starts.clear()

    pending_chars = 0

    for pieces in _documents(
        resolve_sources(sources, glob=glob, text_field=text_field, log=log), log
    ):
        for k, text in enumerate(pieces):
            pending.append(text)
            starts.append(k == 0)
            pending_chars += len(text)
            if pending_chars >= BATCH_CHARS:
                flush()
                pending_chars = 0
    flush()
    return np.concatenate(chunks) if chunks else np.empty(0, np.int64)
