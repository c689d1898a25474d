"""slm.data.prepare: prepared folders (layout, split, atomicity), bad input, and flat memory.

The split decisions alone (which document, where to cut) are tested in test_splits.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from slm.data.prepare import prepare, token_dtype
from slm.data.prepared import FORMAT_VERSION, is_prepared, load_prepared
from slm.errors import EXIT_USAGE, SLMError
from slm.tokenizer.bpe import EOT, Tokenizer


@pytest.fixture(scope="module")
def documents(corpus_dir: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(corpus_dir.glob("*.txt"))]


def split_documents(folder: Path, split: str) -> list[str]:
    """Decode a token file and cut it at each EOT: the documents, in file order."""
    data = load_prepared(folder)
    tokenizer = Tokenizer.from_file(data.tokenizer_path)
    text = tokenizer.decode(data.tokens(split).tolist())
    assert text.startswith(EOT) or not text
    return text.split(EOT)[1:]


# --------------------------------------------------------------------------- prepare


def test_prepared_folder_holds_exactly_the_promised_files(prepared: Path) -> None:
    assert sorted(p.name for p in prepared.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]
    assert is_prepared(prepared)
    assert not [p for p in prepared.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_meta_describes_the_data(prepared: Path, documents: list[str]) -> None:
    meta = json.loads((prepared / "meta.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(prepared / "tokenizer.json")
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["vocab_size"] == tokenizer.vocab_size == 300
    assert meta["dtype"] == "uint16"
    assert meta["eot_id"] == tokenizer.eot_id
    assert meta["tokenizer_sha256"] == tokenizer.sha256()
    assert meta["seed"] == 3 and meta["val_fraction"] == 0.2
    assert meta["slm_version"]
    assert [s["kind"] for s in meta["sources"]] == ["files"]
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert (train["documents"], val["documents"]) == (16, 4)
    assert train["characters"] + val["characters"] == sum(map(len, documents))
    assert train["bytes"] + val["bytes"] == sum(len(d.encode()) for d in documents)
    data = load_prepared(prepared)
    assert train["tokens"] == len(data.tokens("train"))
    assert val["tokens"] == len(data.tokens("val"))


def test_token_files_are_the_documents_each_after_one_eot(
    prepared: Path, documents: list[str]
) -> None:
    train, val = split_documents(prepared, "train"), split_documents(prepared, "val")
    assert sorted(train + val) == sorted(documents)
    # Each split keeps the corpus order.
    assert train == [d for d in documents if d in train]
    assert val == [d for d in documents if d in val]
    meta = load_prepared(prepared).meta["splits"]
    assert sum(len(d) for d in val) == meta["val"]["characters"]


def test_split_is_decided_by_the_seed(corpus_dir: Path, tmp_path: Path) -> None:
    def val_docs(seed: int, name: str) -> list[str]:
        out = tmp_path / name
        prepare([str(corpus_dir)], out, vocab_size=260, val_fraction=0.1, seed=seed)
        return split_documents(out, "val")

    first, again, other = val_docs(1, "a"), val_docs(1, "b"), val_docs(2, "c")
    assert len(first) == 2
    assert first == again
    assert first != other
    assert (tmp_path / "a" / "train.bin").read_bytes() == (
        tmp_path / "b" / "train.bin"
    ).read_bytes()


def test_tiny_val_fraction_still_gives_one_document(
    corpus_dir: Path, documents: list[str], tmp_path: Path
) -> None:
    summary = prepare([str(corpus_dir)], tmp_path / "d", vocab_size=260, val_fraction=0.001)
    assert summary.splits["val"].documents == 1
    assert summary.splits["train"].documents == len(documents) - 1


def test_warns_when_whole_documents_put_most_text_in_val(tmp_path: Path, make_corpus_text) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.txt").write_text(make_corpus_text(3000), encoding="utf-8")
    (tmp_path / "src" / "small.txt").write_text(make_corpus_text(300), encoding="utf-8")
    for seed in range(10):  # some seed sends the big file to val
        messages: list[str] = []
        summary = prepare(
            [str(tmp_path / "src")],
            tmp_path / f"d{seed}",
            vocab_size=260,
            seed=seed,
            log=messages.append,
        )
        big_in_val = summary.splits["val"].bytes > summary.splits["train"].bytes
        assert big_in_val == any("validation documents hold" in m for m in messages)
        if big_in_val:
            return
    pytest.fail("no seed put the big document in val")


def prepare_one_document(tmp_path: Path, text: str, **options: Any) -> tuple[str, str]:
    """Prepare `text` as the only document into tmp_path/d; its (train, val) text."""
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    prepare([str(tmp_path / "one.txt")], tmp_path / "d", **options)
    [train], [val] = (
        split_documents(tmp_path / "d", "train"),
        split_documents(tmp_path / "d", "val"),
    )
    return train, val


def test_single_document_gives_its_last_fraction_cut_at_a_line(
    tmp_path: Path, make_corpus_text
) -> None:
    text = make_corpus_text(3000)
    train, val = prepare_one_document(tmp_path, text, vocab_size=300, val_fraction=0.1)
    assert train + val == text
    assert train.endswith("\n")
    assert abs(len(val) / len(text) - 0.1) < 0.01
    meta = load_prepared(tmp_path / "d").meta["splits"]
    assert meta["train"]["documents"] == meta["val"]["documents"] == 1


def test_single_document_without_line_breaks_is_cut_where_it_stands(tmp_path: Path) -> None:
    text = "word " * 2000
    train, val = prepare_one_document(tmp_path, text, vocab_size=260, val_fraction=0.25)
    assert train + val == text
    assert len(val) == 2500


def test_reused_tokenizer_gives_compatible_ids(
    corpus_dir: Path, small_tokenizer_file: Path, tmp_path: Path
) -> None:
    summary = prepare(
        [str(corpus_dir)], tmp_path / "d", tokenizer_path=str(small_tokenizer_file), vocab_size=999
    )
    given = Tokenizer.from_file(small_tokenizer_file)
    data = load_prepared(tmp_path / "d")
    assert data.meta["tokenizer_sha256"] == given.sha256()
    assert data.vocab_size == summary.vocab_size == given.vocab_size == 300
    assert not summary.tokenizer_trained
    first = split_documents(tmp_path / "d", "train")[0]
    assert data.tokens("train")[1 : 1 + 20].tolist() == given.encode(first)[:20]


def test_summary_reports_counts_and_speeds(corpus_dir: Path, tmp_path: Path) -> None:
    summary = prepare([str(corpus_dir)], tmp_path / "d", vocab_size=260)
    text = summary.format()
    assert "train: 19 documents" in text and "val:   1 document," in text
    assert "bytes per token" in text
    assert text.count("MB/s") == 2 and "tokenizer training" in text
    assert summary.first_pass_s > 0 and summary.encode_s > 0


def test_progress_bars_go_to_stderr(corpus_dir: Path, tmp_path: Path, capsys) -> None:
    prepare([str(corpus_dir)], tmp_path / "d", vocab_size=260, progress=True)
    captured = capsys.readouterr()
    assert "encoding" in captured.err and captured.out == ""


def test_token_dtype_widens_past_sixteen_bits() -> None:
    assert token_dtype(4096) == "uint16"
    assert token_dtype(65536) == "uint16"  # ids 0..65535
    assert token_dtype(65537) == "uint32"


# --------------------------------------------------------------------------- bad input


def test_too_small_corpus_says_how_many_tokens_it_has_and_needs(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("To be, or not to be.\n", encoding="utf-8")
    (tmp_path / "src" / "b.txt").write_text("That is the question.\n", encoding="utf-8")
    with pytest.raises(SLMError, match=r"corpus too small: \d+ training tokens.* needs 257"):
        prepare([str(tmp_path / "src")], tmp_path / "out", vocab_size=260)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing half-written


def test_existing_output_is_refused_without_force(prepared: Path, corpus_dir: Path) -> None:
    with pytest.raises(SLMError, match="already exists") as info:
        prepare([str(corpus_dir)], prepared)
    assert "--force" in (info.value.hint or "")


def test_force_replaces_a_prepared_folder(corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    prepare([str(corpus_dir)], out, vocab_size=260)
    prepare([str(corpus_dir)], out, vocab_size=280, force=True)
    assert load_prepared(out).vocab_size == 280
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_failed_run_leaves_the_old_folder_untouched(corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    prepare([str(corpus_dir)], out, vocab_size=260)
    before = (out / "train.bin").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"oops": 1}\n', encoding="utf-8")
    with pytest.raises(SLMError, match="no 'text' field"):
        prepare([str(corpus_dir), str(bad)], out, vocab_size=270, force=True)
    assert (out / "train.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "d"]


def test_force_never_deletes_a_folder_that_is_not_prepared_data(
    corpus_dir: Path, tmp_path: Path
) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work", encoding="utf-8")
    with pytest.raises(SLMError, match="not a prepared data folder"):
        prepare([str(corpus_dir)], precious, force=True)
    assert (precious / "thesis.tex").exists()


def test_force_accepts_an_empty_folder(corpus_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    prepare([str(corpus_dir)], tmp_path / "empty", vocab_size=260, force=True)
    assert is_prepared(tmp_path / "empty")


def test_output_path_that_is_a_file_is_refused(corpus_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(SLMError, match="is a file"):
        prepare([str(corpus_dir)], tmp_path / "f", force=True)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"val_fraction": 0.0}, "--val-fraction"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"vocab_size": 100}, "--vocab-size 100"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, options: dict, match: str) -> None:
    with pytest.raises(SLMError, match=match) as info:
        prepare(["shakespeare"], tmp_path / "d", **options)
    assert info.value.exit_code == EXIT_USAGE
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- memory


# The child reads its own VmHWM (peak resident memory of this address space). ru_maxrss would
# not do: Linux carries it across exec, so the child would report pytest's size at the fork.
_PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    from slm.data.prepare import prepare
    source, out, tokenizer = sys.argv[1:]
    prepare([source], out, tokenizer_path=tokenizer, progress=False)
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    print(int(status.split()[0]) // 1024)  # kB -> MiB
    """
)


def peak_rss_mb(source: Path, out: Path, tokenizer: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, str(source), str(out), str(tokenizer)],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "true"},
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def write_text_file(path: Path, megabytes: int, make_corpus_text, newlines: bool = True) -> None:
    blocks = [make_corpus_text(170_000, seed=s) for s in range(4)]  # ~1 MB each
    if not newlines:
        blocks = [block.replace("\n", " ") for block in blocks]
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < megabytes * 1_000_000:
            block = blocks[written % len(blocks)]
            f.write(block)
            written += len(block)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_memory_stays_flat_as_the_corpus_grows(
    tmp_path: Path, small_tokenizer_file: Path, make_corpus_text
) -> None:
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    write_text_file(small, 5, make_corpus_text)
    write_text_file(large, 50, make_corpus_text)
    small_mb = peak_rss_mb(small, tmp_path / "small_out", small_tokenizer_file)
    large_mb = peak_rss_mb(large, tmp_path / "large_out", small_tokenizer_file)
    print(f"peak RSS: 5 MB corpus {small_mb} MiB, 50 MB corpus {large_mb} MiB")
    # Holding the extra 45 MB of text (or its ids) would add 45 MB or more.
    assert large_mb < small_mb + 25


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_a_file_with_no_newline_at_all_streams_in_flat_memory(
    tmp_path: Path, small_tokenizer_file: Path, make_corpus_text
) -> None:
    """One 50 MB line: it is cut into pieces as it is read, never held whole."""
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    write_text_file(small, 5, make_corpus_text, newlines=False)
    write_text_file(large, 50, make_corpus_text, newlines=False)
    assert b"\n" not in large.read_bytes()[:10_000_000]
    small_mb = peak_rss_mb(small, tmp_path / "small_out", small_tokenizer_file)
    large_mb = peak_rss_mb(large, tmp_path / "large_out", small_tokenizer_file)
    print(f"peak RSS, no newline: 5 MB {small_mb} MiB, 50 MB {large_mb} MiB")
    assert large_mb < small_mb + 25
