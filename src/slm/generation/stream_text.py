"""One sample's text as it streams: token bytes -> whole characters -> stop strings cut off.

Owns the text side of generation: `SampleText` turns one sample's tokens into complete UTF-8
text (holding the bytes of a character split over tokens), watches for stop strings (holding
back any tail that could be the start of one) and records the finished `Completion`; `Piece`
is what a stream hands out. Which token comes next, the KV cache, the window and the batch
are `generate.py`'s; `find_stop` and `partial_stop_len` are pure functions on text.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Literal

from slm.tokenizer.bpe import Tokenizer

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Piece:
    """Streamed text of one sample: whole characters only, never part of a stop string.

    The last piece of each sample carries its `finish_reason` (its text may be empty), so a
    display can move on to the next sample.
    """

    sample: int
    text: str
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Completion:
    """One finished continuation (the prompt is not part of `text`)."""

    text: str
    tokens: tuple[int, ...]  # every token sampled, including the one that ended it
    finish_reason: FinishReason  # "stop": end of text or a stop string; "length": the limit
    elapsed_s: float  # from the start of generation to this sample's last token

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --------------------------------------------------------------------------- stop strings


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index of the earliest stop string in `text`, or None.

    >>> find_stop("a\\n\\nb", ("\\n\\n", "b"))
    1
    """
    hits = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(hits) if hits else None


def partial_stop_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string.

    That much text is held back from the stream until the next tokens say whether it is a
    stop string (dropped) or ordinary text (released).

    >>> partial_stop_len("one\\n", ("\\n\\n",)), partial_stop_len("one", ("\\n\\n",))
    (1, 0)
    """
    longest = min(len(text), max((len(s) for s in stops), default=1) - 1)
    for n in range(longest, 0, -1):
        tail = text[-n:]
        if any(stop.startswith(tail) for stop in stops):
            return n
    return 0


class SampleText:
    """One sample's text: token bytes -> whole characters -> held while a stop may begin.

    Byte-level tokens can end in the middle of a multi-byte character; the incremental
    decoder keeps those bytes until the character is complete (invalid bytes become U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...], max_tokens: int = 0):
        self.token_bytes = tokenizer.token_bytes
        self.end_ids = tokenizer.end_ids
        self.max_tokens = max_tokens  # 0: no limit here (the caller stops)
        self.stops = stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""
        self.parts: list[str] = []
        self.tokens: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.elapsed_s = 0.0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def advance(self, token: int) -> str:
        """Take one generated token: an end token (end of text, end of a chat turn) closes
        the sample as "stop", the `max_tokens`-th one as "length"; returns the text released.
        The one rule shared by `slm.generation.generation` and the server's engine."""
        if token in self.end_ids:
            self.tokens.append(token)
            return self.close("stop")
        text = self.push(token)
        if len(self.tokens) == self.max_tokens:
            text += self.close("length")
        return text

    def push(self, token: int) -> str:
        """Add a token; return the text it releases (may be empty)."""
        self.tokens.append(token)
        return self._release(self.decoder.decode(self.token_bytes(token)), final=False)

    def close(self, reason: FinishReason) -> str:
        """End the sample (unless a stop string already did); return the last text."""
        text = "" if self.done else self._release(self.decoder.decode(b"", final=True), final=True)
        if not self.done:
            self.finish_reason = reason
        return text

    def _release(self, text: str, final: bool) -> str:
        held = self.held + text
        cut = find_stop(held, self.stops)
        if cut is not None:
            self.finish_reason = "stop"
            self.held = ""
            return self._emit(held[:cut])
        keep = 0 if final else partial_stop_len(held, self.stops)
        self.held = held[len(held) - keep :]
        return self._emit(held[: len(held) - keep])

    def _emit(self, text: str) -> str:
        if text:
            self.parts.append(text)
        return text

    def completion(self) -> Completion:
        assert self.finish_reason is not None, "completion() before the sample finished"
        return Completion(
            "".join(self.parts), tuple(self.tokens), self.finish_reason, self.elapsed_s
        )
