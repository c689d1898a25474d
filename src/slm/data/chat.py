"""Conversations -> a prepared chat folder: tokens, a loss mask, and where each conversation is.

    slm prepare --chat conversations.jsonl --out data/chat
    slm prepare --chat conversations.jsonl --tokenizer runs/base/tokenizer.json --out data/chat

Each line of the input is one conversation in the usual form,
`{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`. It is
rendered with slm's ChatML template (`slm.chat_template`) and tokenized segment by segment,
so that every token knows whether it is the assistant's: the model learns to write the
assistant's content and its closing `<|im_end|>`, never the user's words or the template's
markup. A prepared chat folder is a prepared folder (`slm.data.prepared` reads it) with, per
split, `SPLIT.mask` (one byte per token: 1 where the loss counts) and `SPLIT.chat.npy`
(int64 rows `start, length, line`: where each conversation begins in the token file, how
long it is, and its line in the input), so batches can start at conversation boundaries.

Bad lines (not JSON, no `messages`, a missing or unknown role, empty content, no assistant
turn, longer than `context_len`) are skipped and reported with their line numbers; the rest
of the file is used.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slm import __version__
from slm.chat_template import CHATML, IM_END, IM_START, ROLES, Message, write_template
from slm.data.prepare import check_out, replace_folder, staging_folder, token_dtype
from slm.data.prepared import FORMAT_VERSION, META_FILE, SPLITS, TOKENIZER_FILE
from slm.errors import EXIT_USAGE, SLMError
from slm.fileio import write_json
from slm.tokenizer.bpe import MAX_VOCAB, MIN_VOCAB, Tokenizer

CHAT_INDEX_SUFFIX = ".chat.npy"
MASK_SUFFIX = ".mask"
MAX_REPORTED = 20  # skipped lines named one by one; the rest are counted


def _no_log(_message: str) -> None:
    pass


@dataclass
class Skipped:
    line: int
    reason: str


@dataclass
class ChatSummary:
    """What `prepare_chat` did: conversations and tokens per split, and what it skipped."""

    out: Path
    vocab_size: int
    tokenizer_trained: bool
    conversations: dict[str, int]
    tokens: dict[str, int]
    assistant_tokens: dict[str, int]
    skipped: list[Skipped] = field(default_factory=list)

    def format(self) -> str:
        lines = [
            f"prepared {sum(self.conversations.values()):,} conversations into {self.out}",
            f"  tokenizer: {'trained' if self.tokenizer_trained else 'given'}, "
            f"vocabulary {self.vocab_size:,} (with <|im_start|> and <|im_end|>)",
        ]
        for split in SPLITS:
            share = self.assistant_tokens[split] / max(1, self.tokens[split])
            lines.append(
                f"  {split}: {self.conversations[split]:,} conversations, "
                f"{self.tokens[split]:,} tokens ({share:.0%} carry loss: the assistant's)"
            )
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped):,} lines:")
            lines += [f"    line {s.line}: {s.reason}" for s in self.skipped[:MAX_REPORTED]]
            if len(self.skipped) > MAX_REPORTED:
                lines.append(f"    ... and {len(self.skipped) - MAX_REPORTED:,} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading


def read_conversations(path: Path) -> tuple[list[tuple[int, list[Message]]], list[Skipped]]:
    """The good conversations of a JSONL file with their line numbers, and the bad lines."""
    if not path.is_file():
        raise SLMError(f"conversation file not found: {path}", exit_code=EXIT_USAGE)
    good: list[tuple[int, list[Message]]] = []
    skipped: list[Skipped] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                good.append((number, check_conversation(json.loads(raw.decode("utf-8")))))
            except UnicodeDecodeError:
                skipped.append(Skipped(number, "not UTF-8 text"))
            except json.JSONDecodeError as exc:
                skipped.append(Skipped(number, f"not JSON ({exc.msg})"))
            except ValueError as exc:
                skipped.append(Skipped(number, str(exc)))
    return good, skipped


def check_conversation(record: Any) -> list[Message]:
    """The messages of one JSONL record; ValueError says what is wrong with it."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError('no "messages" list')
    messages = record["messages"]
    if not messages:
        raise ValueError("no messages")
    for k, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"message {k} has no role")
        if message["role"] not in ROLES:
            raise ValueError(f"message {k} has an unknown role {message['role']!r}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"message {k} ({message['role']}) has empty content")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn (nothing to learn)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# --------------------------------------------------------------------------- tokens


def encode_conversation(
    tokenizer: Tokenizer, messages: list[Message]
) -> tuple[list[int], list[int]]:
    """Token ids of `<|endoftext|>` + the ChatML conversation, and a 0/1 loss mask.

    Each message is `<|im_start|>ROLE\\n` (markup, no loss) + content + `<|im_end|>` (loss
    for the assistant's) + `\\n` (no loss). The pieces join to exactly what the template
    renders; prompting renders the same text up to `<|im_start|>assistant\\n`.
    """
    ids, mask = [tokenizer.eot_id], [0]
    for message in messages:
        learn = int(message["role"] == "assistant")
        for text, counts in (
            (f"{IM_START}{message['role']}\n", 0),
            (message["content"] + IM_END, learn),
            ("\n", 0),
        ):
            piece = tokenizer.encode(text)
            ids += piece
            mask += [counts] * len(piece)
    return ids, mask


# --------------------------------------------------------------------------- the folder


def prepare_chat(
    sources: list[str],
    out: str | os.PathLike,
    *,
    tokenizer_path: str | None = None,
    vocab_size: int = 4096,
    val_fraction: float = 0.05,
    seed: int = 0,
    context_len: int = 0,
    force: bool = False,
    log: Any = _no_log,
) -> ChatSummary:
    """Read JSONL conversation files and write a prepared chat folder at `out`.

    With `tokenizer_path` (a base model's tokenizer) the ids are that tokenizer's, plus the
    two chat tokens appended after its vocabulary if it lacks them; otherwise a tokenizer is
    trained on the conversations. `context_len` > 0 skips conversations that would not fit.
    """
    out = Path(out)
    if not sources:
        raise SLMError(
            "--chat needs at least one JSONL file of conversations", exit_code=EXIT_USAGE
        )
    if not 0 < val_fraction < 1:
        raise SLMError(
            f"--val-fraction must be between 0 and 1, got {val_fraction}", exit_code=EXIT_USAGE
        )
    check_out(out, force)
    # 1. Read and check every conversation.
    conversations: list[tuple[int, list[Message]]] = []
    skipped: list[Skipped] = []
    for source in sources:
        good, bad = read_conversations(Path(source))
        conversations += good
        skipped += bad
    # 2. The tokenizer: the base model's plus the chat tokens, or one trained here.
    tokenizer = _chat_tokenizer(conversations, tokenizer_path, vocab_size)
    # 3. Encode; drop what cannot fit one training window.
    encoded = []
    for line, messages in conversations:
        ids, mask = encode_conversation(tokenizer, messages)
        if context_len and len(ids) > context_len + 1:
            skipped.append(Skipped(line, f"{len(ids)} tokens, longer than the context"))
            continue
        encoded.append((line, ids, mask))
    skipped.sort(key=lambda s: s.line)
    if len(encoded) < 2:
        raise SLMError(
            f"{len(encoded)} usable conversations in {', '.join(sources)}: at least 2 are "
            "needed (one to train on, one to validate)",
            hint="see the skipped lines above" if skipped else "add more conversations",
        )
    # 4. Split whole conversations, then write the folder atomically.
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(encoded) * val_fraction))
    splits = {"val": sorted(order[:n_val]), "train": sorted(order[n_val:])}
    dtype = token_dtype(tokenizer.vocab_size)
    with staging_folder(out) as staging:
        stats = {
            s: _write_split(staging, s, [encoded[i] for i in splits[s]], dtype) for s in SPLITS
        }
        tokenizer.save(staging / TOKENIZER_FILE)
        write_template(staging, CHATML)
        meta = {
            "format_version": FORMAT_VERSION,
            "slm_version": __version__,
            "kind": "chat",
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype,
            "eot_id": tokenizer.eot_id,
            "tokenizer_sha256": tokenizer.sha256(),
            "sources": [{"source": s, "kind": "chat"} for s in sources],
            "seed": seed,
            "val_fraction": val_fraction,
            "splits": stats,
            "skipped_lines": [s.line for s in skipped],
        }
        write_json(staging / META_FILE, meta)
        replace_folder(staging, out)
    return ChatSummary(
        out=out,
        vocab_size=tokenizer.vocab_size,
        tokenizer_trained=tokenizer_path is None,
        conversations={s: stats[s]["documents"] for s in SPLITS},
        tokens={s: stats[s]["tokens"] for s in SPLITS},
        assistant_tokens={s: stats[s]["assistant_tokens"] for s in SPLITS},
        skipped=skipped,
    )


def _chat_tokenizer(
    conversations: list[tuple[int, list[Message]]], tokenizer_path: str | None, vocab_size: int
) -> Tokenizer:
    if tokenizer_path:
        return Tokenizer.from_file(tokenizer_path).with_chat_tokens()
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise SLMError(f"--vocab-size {vocab_size} is out of range", exit_code=EXIT_USAGE)
    texts = (m["content"] for _, messages in conversations for m in messages)
    return Tokenizer.train(texts, vocab_size=vocab_size).with_chat_tokens()


def _write_split(
    folder: Path, split: str, rows: list[tuple[int, list[int], list[int]]], dtype: str
) -> dict[str, int]:
    """`SPLIT.bin`, `SPLIT.mask` and `SPLIT.chat.npy` for the conversations of one split."""
    ids = [i for _, conv, _ in rows for i in conv]
    mask = [m for _, _, conv_mask in rows for m in conv_mask]
    index, start = [], 0
    for line, conv, _ in rows:
        index.append((start, len(conv), line))
        start += len(conv)
    np.asarray(ids, dtype=dtype).tofile(folder / f"{split}.bin")
    np.asarray(mask, dtype=np.uint8).tofile(folder / f"{split}{MASK_SUFFIX}")
    np.save(folder / f"{split}{CHAT_INDEX_SUFFIX}", np.asarray(index, np.int64).reshape(-1, 3))
    return {
        "tokens": len(ids),
        "documents": len(rows),
        "assistant_tokens": int(sum(mask)),
        "characters": 0,
        "bytes": 0,
    }
