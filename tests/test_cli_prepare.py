"""`slm prepare` end to end through `slm.cli.main.main`: output streams, exit codes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm.cli.main import main
from slm.data.prepared import load_prepared
from slm.errors import EXIT_FAILURE, EXIT_USAGE
from slm.tokenizer.bpe import EOT, Tokenizer


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["prepare", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def mixed_corpus(tmp_path: Path, make_corpus_text) -> Path:
    """Several text files, a JSONL file, a Latin-1 file and a binary file."""
    root = tmp_path / "corpus"
    (root / "poems").mkdir(parents=True)
    for i in range(4):
        (root / "poems" / f"p{i}.txt").write_text(make_corpus_text(200, seed=i), encoding="utf-8")
    (root / "notes.md").write_text("# Notes\n" + make_corpus_text(200, seed=9), encoding="utf-8")
    records = [json.dumps({"text": make_corpus_text(100, seed=20 + i)}) for i in range(3)]
    (root / "records.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("Très élégant café.\n".encode("latin-1") * 3)
    (root / "photo.txt").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" * 20)
    return root


def test_prepare_mixed_corpus_end_to_end(
    mixed_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "data"
    code, stdout, stderr = run(
        [str(mixed_corpus), "--out", str(out), "--vocab-size", "300", "--val-fraction", "0.2"],
        capsys,
    )
    assert code == 0, stderr
    # stdout: the summary; stderr: one warning per problem file, naming it.
    assert stdout.startswith(f"prepared {out}")
    assert "train: 7 documents" in stdout and "val:   2 documents" in stdout
    assert "bytes per token" in stdout and "MB/s" in stdout
    assert "skipping binary file" in stderr and "photo.txt" in stderr
    assert "latin1.txt is not UTF-8; decoded it as cp1252" in stderr  # nothing replaced
    assert "undecodable" not in stderr
    assert "warning" not in stdout

    data = load_prepared(out)
    tokenizer = Tokenizer.from_file(data.tokenizer_path)
    text = tokenizer.decode(data.tokens("train").tolist() + data.tokens("val").tolist())
    assert text.count(EOT) == 9  # 4 poems + notes + latin1 + 3 records
    assert "Très élégant café." in text  # decoded, not replaced
    assert "JFIF" not in text


def test_default_source_is_the_built_in_corpus(
    tmp_path: Path, small_tokenizer_file: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "shakespeare"
    code, stdout, stderr = run(
        ["--out", str(out), "--tokenizer", str(small_tokenizer_file)], capsys
    )
    assert code == 0, stderr
    meta = load_prepared(out).meta
    assert meta["sources"] == [{"source": "shakespeare", "kind": "shakespeare"}]
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] >= 30
    assert "from shakespeare" in stdout and "counting pass" in stdout


def test_second_corpus_reuses_the_first_tokenizer(
    mixed_corpus: Path, tmp_path: Path, make_corpus_text, capsys: pytest.CaptureFixture
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert run([str(mixed_corpus), "--out", str(first), "--vocab-size", "300"], capsys)[0] == 0
    other = tmp_path / "other.txt"
    other.write_text(make_corpus_text(2000, seed=99), encoding="utf-8")
    tokenizer = str(first / "tokenizer.json")
    assert run([str(other), "--out", str(second), "--tokenizer", tokenizer], capsys)[0] == 0
    a, b = load_prepared(first).meta, load_prepared(second).meta
    assert a["tokenizer_sha256"] == b["tokenizer_sha256"]
    assert a["vocab_size"] == b["vocab_size"] == 300


def test_glob_and_force(mixed_corpus: Path, tmp_path: Path, capsys) -> None:
    (mixed_corpus / "code.py").write_text("def f():\n    return 1\n" * 200, encoding="utf-8")
    out = tmp_path / "data"
    out.mkdir()
    argv = [str(mixed_corpus), "--out", str(out), "--glob", "*.py", "--vocab-size", "260"]
    assert run(argv, capsys)[0] == EXIT_FAILURE  # exists; refused without --force
    code, stdout, stderr = run([*argv, "--force"], capsys)
    assert code == 0, stderr
    assert "train: 1 document," in stdout  # a single file: train and val share it


# --------------------------------------------------------------------------- bad input


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    ("files", "extra", "code", "message"),
    [
        ({"script.py": b"x = 1\n"}, [], EXIT_FAILURE, "no source found: no text files in"),
        ({"a.txt": b"", "b.md": b""}, [], EXIT_FAILURE, "only empty files found"),
        ({"a.txt": b"\x00\x01bin", "b.txt": b"\x7fELF\x00"}, [], EXIT_FAILURE, "only binary"),
        ({"a.txt": b"Too short.\n", "b.txt": b"Also.\n"}, [], EXIT_FAILURE, "corpus too small"),
        ({"d.jsonl": b'{"body": "x"}\n'}, [], EXIT_USAGE, "has no 'text' field"),
        ({"a.txt": b"text\n"}, ["--val-fraction", "1.5"], EXIT_USAGE, "--val-fraction"),
        ({"a.txt": b"text\n"}, ["--vocab-size", "10"], EXIT_USAGE, "--vocab-size 10"),
        ({"a.txt": b"text\n"}, ["--tokenizer", "nope.json"], EXIT_FAILURE, "tokenizer not found"),
    ],
)
def test_bad_input_gives_one_clear_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    files: dict[str, bytes],
    extra: list[str],
    code: int,
    message: str,
) -> None:
    source = _write(tmp_path / "src", files)
    out = tmp_path / "out"
    got, stdout, stderr = run(
        [str(source), "--out", str(out), "--vocab-size", "260", *extra], capsys
    )
    assert got == code
    assert stdout == ""
    assert stderr.startswith("slm: error: ") and message in stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no half-written folder


def test_too_small_corpus_says_how_many_tokens_it_has_and_needs(tmp_path: Path, capsys) -> None:
    source = _write(tmp_path / "src", {"a.txt": b"To be, or not to be.\n"})
    code, _, stderr = run([str(source), "--out", str(tmp_path / "out")], capsys)
    assert code == EXIT_FAILURE
    assert "training tokens" in stderr and "needs 257" in stderr
    assert "hint:" in stderr


def test_missing_source_is_a_usage_error(tmp_path: Path, capsys) -> None:
    code, _, stderr = run([str(tmp_path / "missing"), "--out", str(tmp_path / "out")], capsys)
    assert code == EXIT_USAGE
    assert "source not found" in stderr and "hint:" in stderr


def test_existing_output_names_the_force_flag(tmp_path: Path, capsys) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine", encoding="utf-8")
    code, _, stderr = run(["--out", str(tmp_path / "out")], capsys)
    assert code == EXIT_FAILURE
    assert "already exists" in stderr and "--force" in stderr
    assert (tmp_path / "out" / "keep.txt").read_text(encoding="utf-8") == "mine"


def test_prepare_a_saved_dataset(
    tmp_path: Path, make_corpus_text, capsys: pytest.CaptureFixture
) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [make_corpus_text(150, seed=i) for i in range(6)]
    datasets.Dataset.from_dict({"story": rows}).save_to_disk(tmp_path / "saved")
    argv = [str(tmp_path / "saved"), "--text-field", "story", "--vocab-size", "280"]
    code, stdout, stderr = run([*argv, "--out", str(tmp_path / "data")], capsys)
    assert code == 0, stderr
    meta = load_prepared(tmp_path / "data").meta
    assert meta["sources"] == [{"source": str(tmp_path / "saved"), "kind": "dataset"}]
    assert "train: 5 documents" in stdout and "val:   1 document," in stdout
