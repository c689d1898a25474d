"""slm.data.sources: every source type, resolving what the user typed, errors for bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from slm.data.sources import (
    DatasetSource,
    JsonlFile,
    Shakespeare,
    TextFiles,
    parse_hf_spec,
    resolve_sources,
)
from slm.errors import EXIT_USAGE, SLMError


class Messages(list):
    """A `log` callback that keeps what it was told."""

    def __call__(self, message: str) -> None:
        self.append(message)


def texts_of(sources, log=None) -> dict[str, str]:
    """Document name -> full text, reading every source once."""
    log = log if log is not None else Messages()
    return {doc.name: "".join(doc.pieces) for source in sources for doc in source.documents(log)}


# --------------------------------------------------------------------------- files and folders


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("first file\n", encoding="utf-8")
    (root / "sub" / "b.md").write_text("# second\n", encoding="utf-8")
    (root / "C.TXT").write_text("upper case extension\n", encoding="utf-8")
    (root / "code.py").write_text("print('hi')\n", encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden\n", encoding="utf-8")
    (root / ".git" / "notes.txt").write_text("hidden folder\n", encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "records.jsonl").write_text('{"text": "a record"}\n', encoding="utf-8")
    return root


def test_folder_reads_text_files_by_extension_recursively(folder: Path) -> None:
    log = Messages()
    sources = resolve_sources([str(folder)], log=log)
    docs = texts_of(sources)
    assert docs == {
        str(folder / "C.TXT"): "upper case extension\n",
        str(folder / "a.txt"): "first file\n",
        str(folder / "sub" / "b.md"): "# second\n",
        f"{folder / 'records.jsonl'}:1": "a record",
    }
    assert any(isinstance(s, JsonlFile) for s in sources)
    assert len(log) == 1 and "skipping binary file" in log[0] and "image.txt" in log[0]


def test_glob_chooses_the_files(folder: Path) -> None:
    docs = texts_of(resolve_sources([str(folder)], glob="*.py", log=Messages()))
    assert docs == {str(folder / "code.py"): "print('hi')\n"}


def test_a_file_given_by_name_is_read_whatever_its_extension(folder: Path) -> None:
    [source] = resolve_sources([str(folder / "code.py")], log=Messages())
    assert isinstance(source, TextFiles)
    assert texts_of([source]) == {str(folder / "code.py"): "print('hi')\n"}


def test_no_sources_means_the_built_in_corpus() -> None:
    [source] = resolve_sources([], log=Messages())
    assert isinstance(source, Shakespeare)
    names = [doc.name for doc in source.documents(Messages())]
    assert len(names) >= 30 and "shakespeare/hamlet" in names


def test_missing_source_is_a_usage_error() -> None:
    with pytest.raises(SLMError, match=r"source not found: nowhere\.txt") as info:
        resolve_sources(["nowhere.txt"], log=Messages())
    assert info.value.exit_code == EXIT_USAGE
    assert "hf:NAME" in (info.value.hint or "")


def test_folder_without_text_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(SLMError, match="no source found") as info:
        resolve_sources([str(tmp_path)], log=Messages())
    assert "--glob" in (info.value.hint or "")


def test_only_binary_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"\x00\x01\x02")
    (tmp_path / "b.txt").write_bytes(b"\x7fELF\x00")
    with pytest.raises(SLMError, match="only binary files"):
        resolve_sources([str(tmp_path)], log=Messages())


def test_only_empty_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"")
    (tmp_path / "b.md").write_bytes(b"")
    with pytest.raises(SLMError, match="only empty files"):
        resolve_sources([str(tmp_path)], log=Messages())


# --------------------------------------------------------------------------- JSONL


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_records_are_documents(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            json.dumps({"text": "one\nline two", "id": 1}),
            "",
            json.dumps({"text": "emoji 😀 and \u0000 NUL"}),
            json.dumps({"text": ""}),
        ],
    )
    docs = texts_of(resolve_sources([str(path)], log=Messages()))
    assert docs == {
        f"{path}:1": "one\nline two",
        f"{path}:3": "emoji 😀 and \u0000 NUL",
        f"{path}:4": "",
    }


def test_jsonl_text_field_is_chosen_by_flag(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"content": "hello"})])
    docs = texts_of(resolve_sources([str(path)], text_field="content", log=Messages()))
    assert docs == {f"{path}:1": "hello"}


def test_jsonl_without_the_field_names_the_line_and_the_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [json.dumps({"text": "ok"}), json.dumps({"body": "x", "id": 2})]
    )
    with pytest.raises(SLMError, match=r"d.jsonl:2 has no 'text' field \(it has: body, id\)") as e:
        texts_of(resolve_sources([str(path)], log=Messages()))
    assert "--text-field" in (e.value.hint or "")


@pytest.mark.parametrize(
    ("line", "match"),
    [("{not json", "d.jsonl:1 is not valid JSON"), ('{"text": 5}', "is not a string")],
)
def test_bad_jsonl_lines_are_clear_errors(tmp_path: Path, line: str, match: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [line])
    with pytest.raises(SLMError, match=match):
        texts_of(resolve_sources([str(path)], log=Messages()))


def test_jsonl_bad_bytes_and_lone_surrogates_are_replaced_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n{"text": "half a pair \\ud83d"}\n')
    log = Messages()
    docs = texts_of(resolve_sources([str(path)], log=log), log)
    assert list(docs.values()) == ["caf\ufffd", "half a pair \ufffd"]
    assert len(log) == 1 and "2 undecodable bytes replaced" in log[0]


# --------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("hf:tiny", ("tiny", None, None)),
        ("hf:user/set:cfg@validation", ("user/set", "cfg", "validation")),
        ("hf:/data/saved@test", ("/data/saved", None, "test")),
    ],
)
def test_parse_hf_spec(spec: str, parsed: tuple) -> None:
    assert parse_hf_spec(spec) == parsed


def test_hf_spec_without_a_name_is_a_usage_error() -> None:
    with pytest.raises(SLMError, match="no dataset name") as info:
        resolve_sources(["hf:"], log=Messages())
    assert info.value.exit_code == EXIT_USAGE


def test_missing_datasets_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(SLMError, match="needs the `datasets` package") as info:
        resolve_sources(["hf:anything"], log=Messages())
    assert "pip install 'slm[datasets]'" in (info.value.hint or "")


@pytest.fixture
def datasets_lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    datasets = pytest.importorskip("datasets")
    # Keep the Arrow cache of load_dataset inside the test's folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    datasets.disable_progress_bars()
    return datasets


def test_save_to_disk_folder_rows_are_documents(datasets_lib, tmp_path: Path) -> None:
    rows = {"text": ["first row", "second\nrow", ""], "n": [1, 2, 3]}
    datasets_lib.Dataset.from_dict(rows).save_to_disk(tmp_path / "saved")
    [source] = resolve_sources([str(tmp_path / "saved")], log=Messages())
    assert isinstance(source, DatasetSource)
    label = str(tmp_path / "saved")
    assert texts_of([source]) == {
        f"{label}[0]": "first row",
        f"{label}[1]": "second\nrow",
        f"{label}[2]": "",
    }


def test_saved_folder_path_is_not_parsed_as_a_spec(datasets_lib, tmp_path: Path) -> None:
    saved = tmp_path / "v1:clean@2024"
    datasets_lib.Dataset.from_dict({"text": ["row"]}).save_to_disk(saved)
    assert list(texts_of(resolve_sources([str(saved)], log=Messages())).values()) == ["row"]


def test_saved_dataset_dict_uses_train_or_the_split_asked_for(datasets_lib, tmp_path: Path) -> None:
    saved = tmp_path / "dict"
    datasets_lib.DatasetDict(
        train=datasets_lib.Dataset.from_dict({"text": ["train row"]}),
        test=datasets_lib.Dataset.from_dict({"text": ["test row"]}),
    ).save_to_disk(saved)
    assert list(texts_of(resolve_sources([str(saved)], log=Messages())).values()) == ["train row"]
    test = resolve_sources([f"hf:{saved}@test"], log=Messages())
    assert list(texts_of(test).values()) == ["test row"]
    with pytest.raises(SLMError, match="no split 'dev' \\(it has: train, test\\)"):
        resolve_sources([f"hf:{saved}@dev"], log=Messages())


def test_hf_dataset_by_name_loads_through_load_dataset(datasets_lib, tmp_path: Path) -> None:
    data = tmp_path / "local_set"
    data.mkdir()
    write_jsonl(data / "part.jsonl", [json.dumps({"body": f"row {i}"}) for i in range(3)])
    sources = resolve_sources([f"hf:{data}"], text_field="body", log=Messages())
    assert list(texts_of(sources).values()) == ["row 0", "row 1", "row 2"]


def test_hf_dataset_without_the_column_lists_the_columns(datasets_lib, tmp_path: Path) -> None:
    datasets_lib.Dataset.from_dict({"body": ["x"]}).save_to_disk(tmp_path / "saved")
    with pytest.raises(SLMError, match="no 'text' column \\(it has: body\\)"):
        resolve_sources([str(tmp_path / "saved")], log=Messages())


def test_unknown_hf_dataset_is_a_clear_error(datasets_lib, tmp_path: Path) -> None:
    with pytest.raises(SLMError, match="cannot load dataset"):
        resolve_sources([f"hf:{tmp_path / 'not_there'}"], log=Messages())
