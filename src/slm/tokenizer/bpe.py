"""Byte-level BPE tokenizer: training, saving, encode/decode, and raw token bytes.

Built on HF `tokenizers` and saved as a standard `tokenizer.json`. Byte-level means every
string is first seen as UTF-8 bytes, so any text (emoji, CJK, NUL, CRLF) encodes without an
unknown token and `decode(encode(s)) == s` exactly. There is no normalizer for the same
reason. Lone surrogates (U+D800..U+DFFF) are the one exception: they have no UTF-8 form, so
each is encoded as U+FFFD (surrogateescape makes them of undecodable bytes in stdin or argv).
Two special tokens always: `<|endoftext|>` separates documents and ends generation, `<|pad|>`
pads batches. A chat-tuned model's tokenizer adds two more, `<|im_start|>` and `<|im_end|>`
(`slm.chat_template`), appended after the base vocabulary by `with_chat_tokens` so that every
id a base model knows keeps its meaning; `<|im_end|>` then ends generation too.

Encoding goes through `pieces.PieceEncoder`, which splits text in Python and asks HF only
about pieces it has not seen, with the same ids as HF's own encode (tested); big batches are
spread over forked workers (`encode_pool.py`). A tokenizer.json that slm did not make
(another pre-tokenizer, a normalizer, BPE dropout) is encoded by HF alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import weakref
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from slm.chat_template import CHAT_TOKENS, IM_END
from slm.errors import SLMError
from slm.fileio import atomic_path
from slm.tokenizer.encode_pool import EncodePool, can_fork, usable_cores
from slm.tokenizer.pieces import PieceEncoder

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOT, PAD)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte, plus the specials
MAX_VOCAB = 2**32 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(text: str) -> str:
    """`text` with each surrogate code point replaced by U+FFFD (one for one).

    >>> _without_surrogates("a\\udcffb") == "a\\ufffdb"
    True
    """
    return _SURROGATE.sub("\ufffd", text)


def byte_to_unicode() -> dict[int, str]:
    """The byte -> printable character table that byte-level BPE vocabularies are written in.

    Printable Latin-1 bytes map to themselves; the other 68 (control chars, space, ...) map
    to code points from 256 up, so every vocabulary entry is a visible string.
    """
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_TO_BYTE_LEVEL = str.maketrans({chr(b): ch for b, ch in byte_to_unicode().items()})


def _byte_level(piece: str) -> str:
    """`piece` as the BPE vocabulary spells it: its UTF-8 bytes, each as a visible character.

    >>> _byte_level(" é")
    'ĠÃ©'
    """
    try:
        raw = piece.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: encoded as U+FFFD, as `encode` promises
        raw = _without_surrogates(piece).encode("utf-8")
    return raw.decode("latin-1").translate(_TO_BYTE_LEVEL)


def _bpe_pieces(model: models.Model, pieces: list[str]) -> list[list[int]]:
    """BPE alone on each piece, skipping HF's pre-tokenizer (the pieces are already cut).

    About 2 us a piece; HF's encode_batch_fast takes 4 on 2 cores for its per-text setup.
    """
    return [[t.id for t in model.tokenize(_byte_level(piece))] for piece in pieces]


def _splits_like_slm(hf: HFTokenizer) -> bool:
    """True if `hf` is set up as `Tokenizer.train` sets it up, so `PieceEncoder` gives its ids."""
    pre = hf.pre_tokenizer
    return (
        hf.normalizer is None
        and isinstance(pre, pre_tokenizers.ByteLevel)
        and pre.use_regex
        and not pre.add_prefix_space
        and isinstance(hf.model, models.BPE)
        and hf.model.dropout is None
        and set(SPECIAL_TOKENS) <= _added_tokens(hf) <= {*SPECIAL_TOKENS, *CHAT_TOKENS}
    )


def _added_tokens(hf: HFTokenizer) -> set[str]:
    return {t.content for t in hf.get_added_tokens_decoder().values()}


class Tokenizer:
    """A byte-level BPE tokenizer with slm's special tokens."""

    def __init__(self, hf: HFTokenizer, eot_id: int | None = None, pad_id: int | None = None):
        """`eot_id` / `pad_id` name the end and padding tokens of a tokenizer that slm did not
        make (an imported Llama's `</s>`, say); by default they are slm's own specials."""
        self.hf = hf
        eot = hf.token_to_id(EOT) if eot_id is None else eot_id
        pad = hf.token_to_id(PAD) if pad_id is None else pad_id
        if eot is None or pad is None:
            raise SLMError(
                f"tokenizer lacks slm's special tokens {EOT} and {PAD}",
                hint="train one with `slm prepare` or give a tokenizer made by slm",
            )
        self.eot_id: int = eot
        self.pad_id: int = pad
        self.specials = {token: hf.token_to_id(token) for token in _added_tokens(hf)}
        im_end = self.specials.get(IM_END)
        # Generation ends at the end of a document, or of an assistant's turn in a chat model.
        self.end_ids: frozenset[int] = frozenset(
            {eot} | ({im_end} if im_end is not None else set())
        )
        self._token_bytes: list[bytes] | None = None
        self._pieces: PieceEncoder | None = None
        self._pool: EncodePool | None = None
        if _splits_like_slm(hf):
            self._pieces = PieceEncoder(
                functools.partial(_bpe_pieces, hf.model), dict(self.specials)
            )
            if can_fork():  # no process starts until a batch is big enough to want one
                self._pool = EncodePool(self._pieces.encode_batch, usable_cores())
                weakref.finalize(self, self._pool.close)

    # ----------------------------------------------------------------- building

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
        """Learn merges from `texts` (an iterator is fine: it is streamed, not held)."""
        if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
            raise SLMError(
                f"--vocab-size {vocab_size} is out of range",
                hint=f"use {MIN_VOCAB} (bytes + specials) or more",
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, eot_id: int | None = None, pad_id: int | None = None
    ) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise SLMError(f"tokenizer not found: {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
            raise SLMError(f"tokenizer file is corrupt: {path} ({exc})") from exc
        return cls(hf, eot_id, pad_id)

    def with_chat_tokens(self) -> Tokenizer:
        """This tokenizer plus the chat template's special tokens, appended after its
        vocabulary (itself if it has them already); every existing id is unchanged."""
        if all(token in self.specials for token in CHAT_TOKENS):
            return self
        hf = HFTokenizer.from_str(self.hf.to_str())
        hf.add_special_tokens([t for t in CHAT_TOKENS if t not in self.specials])
        return Tokenizer(hf)

    def same_base(self, other: Tokenizer) -> bool:
        """True if `other` gives every text this tokenizer's ids, up to chat tokens: the same
        BPE model and the same special-token ids, and no added token beyond the chat ones."""
        import json

        ours, theirs = json.loads(self.hf.to_str()), json.loads(other.hf.to_str())
        extra = set(other.specials) - set(self.specials)
        return (
            ours["model"] == theirs["model"]
            and ours["pre_tokenizer"] == theirs["pre_tokenizer"]
            and ours["normalizer"] == theirs["normalizer"]
            and all(other.specials.get(k) == v for k, v in self.specials.items())
            and extra <= set(CHAT_TOKENS)
        )

    @property
    def has_chat_tokens(self) -> bool:
        return all(token in self.specials for token in CHAT_TOKENS)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            self.hf.save(str(tmp))

    # ----------------------------------------------------------------- use

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it become their special ids."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once (the pieces new to the cache go to HF in one call)."""
        if self._pieces is None:
            return self.hf_encode_batch(texts)
        if self._pool is None:
            return self._pieces.encode_batch(texts)
        return self._pool.encode_batch(texts)

    def hf_encode_batch(self, texts: list[str]) -> list[list[int]]:
        """HF's own encode: the fallback, and the baseline `slm bench` compares with.

        Its Rust side spreads the texts over all cores.
        """
        fast = getattr(self.hf, "encode_batch_fast", None)  # skips offsets; tokenizers>=0.20
        encode = fast or self.hf.encode_batch
        try:
            encodings = encode(texts, add_special_tokens=False)
        except TypeError:  # HF refuses surrogates; looking only after it does keeps text fast
            encodings = encode([_without_surrogates(t) for t in texts], add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (may be part of a multi-byte character).

        Streaming output joins these and prints only complete UTF-8, so a character split
        across two tokens is never shown half.
        """
        if self._token_bytes is None:
            self._token_bytes = self._build_token_bytes()
        return self._token_bytes[token_id]

    def _build_token_bytes(self) -> list[bytes]:
        to_byte = {ch: b for b, ch in byte_to_unicode().items()}
        table: list[bytes] = [b""] * self.vocab_size
        specials = set(self.specials)
        for token, idx in self.hf.get_vocab().items():
            if token in specials:
                table[idx] = token.encode("utf-8")
            else:
                table[idx] = bytes(to_byte[ch] for ch in token)
        return table

    def sha256(self) -> str:
        """A fingerprint of the vocabulary and merges, to tell compatible token files apart."""
        return hashlib.sha256(self.hf.to_str().encode("utf-8")).hexdigest()
