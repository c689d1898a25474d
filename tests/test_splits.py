"""slm.data.splits: which documents go to val, and where a single document is cut."""

from __future__ import annotations

import numpy as np
import pytest

from slm.data.splits import nearest_line_break, plan_split, split_single, val_choices


@pytest.mark.parametrize(("documents", "val"), [(2, 1), (10, 3), (1000, 50)])
def test_val_choices_pick_exactly_the_asked_number(documents: int, val: int) -> None:
    for seed in range(20):
        assert sum(val_choices(documents, val, seed)) == val


def test_val_choices_give_every_document_the_same_chance() -> None:
    counts = np.zeros(10)
    for seed in range(3000):
        counts += np.fromiter(val_choices(10, 2, seed), bool)
    assert np.allclose(counts / 3000, 0.2, atol=0.03)


@pytest.mark.parametrize(
    ("documents", "val_fraction", "val_documents"),
    [(20, 0.05, 1), (20, 0.001, 1), (2, 0.9, 1), (1000, 0.05, 50)],
)
def test_plan_split_keeps_both_sides_non_empty(
    documents: int, val_fraction: float, val_documents: int
) -> None:
    plan = plan_split(documents, 0, val_fraction, seed=3)
    assert (plan.documents, plan.val_documents, plan.seed) == (documents, val_documents, 3)
    assert plan.single_split_at is None


@pytest.mark.parametrize(("chars", "split_at"), [(1000, 900), (10, 9), (2, 1), (1, None)])
def test_plan_split_of_one_document_cuts_its_last_fraction(
    chars: int, split_at: int | None
) -> None:
    plan = plan_split(1, chars, 0.1, seed=0)
    assert (plan.documents, plan.val_documents, plan.single_split_at) == (1, 0, split_at)


@pytest.mark.parametrize(
    ("pieces", "train"),
    [
        (["one\ntwo\nthree\nfour\n"], "one\n"),
        (["one\ntwo\n"], "one\n"),
        # A cut at the start of a later piece counts: the same cut as in one piece.
        (["one\n", "two\nthr", "ee\nfour\n"], "one\n"),
        (["one\ntw", "o\nthree\n"], "one\ntwo\n"),  # that start is mid-line: no cut there
    ],
)
def test_split_single_gives_train_then_val_each_starting_a_document(
    pieces: list[str], train: str
) -> None:
    parts = list(split_single(iter(pieces), split_at=6))
    assert "".join(text for _, text, _ in parts) == "".join(pieces)
    assert "".join(text for to_val, text, _ in parts if not to_val) == train
    sides = [to_val for to_val, _, _ in parts]
    assert sides == sorted(sides)  # all of train, then all of val
    assert [to_val for to_val, _, starts in parts if starts] == [False, True]


@pytest.mark.parametrize(
    ("text", "at", "cut"),
    [
        ("one\ntwo\nthree", 5, 4),
        ("one\ntwo\nthree", 7, 8),
        ("no breaks here", 5, 5),
        ("ends with a break\n", 10, 10),  # cutting after the last "\n" would leave val empty
        ("no break before", 3, 3),  # the start is no cut unless text came before it
    ],
)
def test_nearest_line_break(text: str, at: int, cut: int) -> None:
    assert nearest_line_break(text, at) == cut
