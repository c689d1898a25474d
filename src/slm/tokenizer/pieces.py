r"""Split text into the pieces that byte-level BPE encodes one at a time, and remember them.

Byte-level BPE (`tokenizer.py`) first cuts text with this pattern and never merges across
the cuts:

    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+

So a text's tokens are its pieces' tokens, one after another, and a piece's tokens depend on
the piece alone. Natural text repeats a few tens of thousands of pieces over and over (the
5 MB built-in corpus has 1.3 M pieces, 35 k of them distinct): `PieceEncoder` sends each
distinct piece to the BPE once and reuses the answer.

Why not let HF tokenizers split: its regex engine runs this pattern at about 2.5 MB/s on one
core here; Python's `re` runs it at about 30 MB/s once `\p{L}`, `\p{N}` and `\s` are written
out as ranges. The ranges (`unicode_classes.py`) are read off the installed tokenizers, so the
two agree on every code point rather than on whichever Unicode version each was built with.

`re` looks up a class of ranges below U+10000 in one table but walks a list for ranges above
it (7 MB/s with them in the pattern), so the pattern holds only the lower ranges. A text with
characters above U+FFFF (emoji, rare scripts) is split on a stand-in copy in which each such
character becomes an ASCII character of the same class ("A", "0" or "!"). No cut depends on
anything else about those characters, so the pieces are cut from the original at the same
offsets.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import itertools
import re
from collections.abc import Callable, Iterable, Iterator

from slm.tokenizer import unicode_classes

BMP_END = 0xFFFF
# About 170 bytes per remembered piece (the string, its ids, the dict slot): ~22 MB when
# full. Past it, new pieces are still encoded, just not kept; the early, frequent ones stay.
CAPACITY = 1 << 17
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """Read the `unicode_classes` notation.

    >>> parse_ranges("41-5A AA")
    [(65, 90), (170, 170)]
    """
    ranges = []
    for word in text.split():
        first, _, last = word.partition("-")
        ranges.append((int(first, 16), int(last or first, 16)))
    return ranges


def _class_body(ranges: Iterable[tuple[int, int]]) -> str:
    """The inside of a `[...]` class for these ranges, cut off at U+FFFF."""
    parts = []
    for first, last in ranges:
        if first > BMP_END:
            continue
        last = min(last, BMP_END)
        parts.append(re.escape(chr(first)) + ("" if first == last else "-" + re.escape(chr(last))))
    return "".join(parts)


@functools.cache
def split_pattern() -> re.Pattern[str]:
    """The pre-tokenizer's pattern with its classes spelled out (below U+10000)."""
    letter = _class_body(parse_ranges(unicode_classes.LETTER))
    number = _class_body(parse_ranges(unicode_classes.NUMBER))
    space = _class_body(parse_ranges(unicode_classes.SPACE))
    return re.compile(
        "'s|'t|'re|'ve|'m|'ll|'d"
        f"| ?[{letter}]+| ?[{number}]+| ?[^{space}{letter}{number}]+"
        f"|[{space}]+(?![^{space}])|[{space}]+"
    )


@functools.cache
def _astral_table() -> tuple[list[int], list[int], list[str]]:
    """Sorted starts, ends and stand-ins of the letter and number ranges above U+FFFF."""
    rows = [
        (first, last, stand_in)
        for ranges, stand_in in ((unicode_classes.LETTER, "A"), (unicode_classes.NUMBER, "0"))
        for first, last in parse_ranges(ranges)
        if last > BMP_END
    ]
    rows.sort()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _stand_in(match: re.Match[str]) -> str:
    code_point = ord(match.group())
    starts, ends, stand_ins = _astral_table()
    i = bisect.bisect_right(starts, code_point) - 1
    return stand_ins[i] if i >= 0 and code_point <= ends[i] else "!"


def split(text: str) -> list[str]:
    """`text` cut into pre-tokenizer pieces; "".join(split(text)) == text.

    >>> split("Hello world's  end!!\\n")
    ['Hello', ' world', "'s", ' ', ' end', '!!', '\\n']
    """
    pattern = split_pattern()
    if text.isascii() or not _ASTRAL.search(text):
        return pattern.findall(text)
    ends = itertools.accumulate(map(len, pattern.findall(_ASTRAL.sub(_stand_in, text))))
    return [text[start:end] for start, end in itertools.pairwise(itertools.chain([0], ends))]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: encoding makes ~10^5 tuples and lists, none in a
    cycle, and each pass of the collector over a heap holding torch cost 25% of the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class PieceEncoder:
    """Encodes texts piece by piece, asking `encode_pieces` only about pieces not seen before.

    `specials` maps strings that stand for one token wherever they appear (slm's
    `<|endoftext|>`) to that token; text between them is split as usual, as HF does.
    """

    def __init__(
        self,
        encode_pieces: Callable[[list[str]], list[list[int]]],
        specials: dict[str, int],
        capacity: int = CAPACITY,
    ):
        self.encode_pieces = encode_pieces
        self.capacity = capacity
        self.known: dict[str, tuple[int, ...]] = {s: (i,) for s, i in specials.items()}
        self._specials = (
            re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len)[::-1])) + ")")
            if specials
            else None
        )

    def split(self, text: str) -> list[str]:
        """Pieces of `text`, with each special string kept whole as a piece of its own."""
        if self._specials is None or not self._specials.search(text):
            return split(text)
        pieces: list[str] = []
        for i, part in enumerate(self._specials.split(text)):
            if i % 2:
                pieces.append(part)  # the special itself
            elif part:
                pieces.extend(split(part))
        return pieces

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        with _gc_paused():
            return self._encode_batch(texts)

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        # 1. cut every text into pieces
        split_texts = [self.split(text) for text in texts]
        # 2. one call to the BPE for all the pieces never seen before
        new = list(set(itertools.chain.from_iterable(split_texts)).difference(self.known))
        table = self._learn(new) if new else self.known
        # 3. each text's tokens: its pieces' tokens, in order
        lookup = table.__getitem__
        return [list(itertools.chain.from_iterable(map(lookup, p))) for p in split_texts]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def _learn(self, new: list[str]) -> dict[str, tuple[int, ...]]:
        """Encode `new`, keep what fits, and return a table that answers for every piece."""
        found = {piece: tuple(ids) for piece, ids in zip(new, self.encode_pieces(new), strict=True)}
        room = self.capacity - len(self.known)
        if room >= len(found):
            self.known.update(found)
            return self.known
        self.known.update(itertools.islice(found.items(), max(room, 0)))
        return {**self.known, **found}
