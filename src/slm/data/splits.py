"""The train/val split of a prepared folder: which documents, or which part of one, go to val.

Pure functions over counts and text, decided in one streaming pass with O(1) memory: several
documents give whole documents to val, chosen by the seed; a single document gives its last
fraction, cut at a line break. Every decision is a bool, "does this go to val".

Counting the corpus and writing the token files are `slm.data.prepare`'s; the names of the splits
and the folder format are `slm.data.prepared`'s. This module imports nothing from slm, so the split
can be read and tested alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class SplitPlan:
    """What the second pass needs to route every document, fixed after the first pass."""

    documents: int
    val_documents: int
    seed: int
    single_split_at: int | None = None  # one document: the character where val begins


def plan_split(
    documents: int, first_document_chars: int, val_fraction: float, seed: int
) -> SplitPlan:
    """Whole documents to val, chosen by the seed; one document gives its last fraction.

    Both sides always get something: at least one document (or character) to val, and at
    least one left for train, however small `val_fraction` is.

    >>> plan_split(40, 0, 0.05, seed=0).val_documents
    2
    >>> plan_split(1, 1000, 0.05, seed=0).single_split_at
    950
    """
    if documents == 1:
        chars = first_document_chars
        split_at = min(max(1, round(chars * (1 - val_fraction))), chars - 1)
        return SplitPlan(1, 0, seed, split_at if chars >= 2 else None)
    return SplitPlan(documents, min(max(1, round(documents * val_fraction)), documents - 1), seed)


def val_choices(documents: int, val_documents: int, seed: int) -> Iterator[bool]:
    """For each document in turn, whether it goes to val.

    Exactly `val_documents` of `documents`, every subset equally likely, decided in one pass
    with O(1) memory (selection sampling, Knuth's Algorithm S): a set of chosen indices would
    grow with a corpus of millions of small records.

    >>> [int(c) for c in val_choices(6, 2, seed=0)]
    [0, 0, 1, 1, 0, 0]
    """
    rng = random.Random(seed)
    left = val_documents
    for i in range(documents):
        chosen = rng.random() * (documents - i) < left
        left -= chosen
        yield chosen


def split_single(pieces: Iterator[str], split_at: int) -> Iterator[tuple[bool, str, bool]]:
    """Cut one document at the line break nearest `split_at`: train before, val after.

    Yields `(to_val, text, starts_document)` for each piece, or for both halves of the piece
    that holds the cut; the val side starts a document of its own.
    """
    offset, done, after_break = 0, False, False
    for piece in pieces:
        if done or offset + len(piece) <= split_at:
            yield done, piece, offset == 0 and not done
            offset += len(piece)
            after_break = piece.endswith("\n")
            continue
        # The piece's start is a line break too if the piece before ended one.
        cut = nearest_line_break(piece, split_at - offset, allow_start=after_break)
        if cut:
            yield False, piece[:cut], offset == 0
        yield True, piece[cut:], True
        done = True


def nearest_line_break(text: str, at: int, allow_start: bool = False) -> int:
    """The cut just after a `\\n` nearest `at` that leaves text on both sides, else `at`.

    >>> nearest_line_break("one\\ntwo\\nthree", 5)
    4
    >>> nearest_line_break("two\\nthree", 1), nearest_line_break("two\\nthree", 1, allow_start=True)
    (4, 0)
    """
    candidates = []
    before = text.rfind("\n", 0, at)
    if before >= 0 or allow_start:  # -1 -> 0: the start, allowed when text came before it
        candidates.append(before + 1)
    after = text.find("\n", at)
    if after >= 0:
        candidates.append(after + 1)
    candidates = [c for c in candidates if c < len(text)]
    return min(candidates, key=lambda c: abs(c - at), default=at)
