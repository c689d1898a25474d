"""slm.data.text_files: decoding with counted replacement, line-ended pieces, binary detection."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slm.data.text_files import binary_reason, line_pieces, read_file_pieces

# --------------------------------------------------------------------------- pieces


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="ab \n\r😀", max_size=40), max_size=8),
    piece_chars=st.integers(1, 12),
)
def test_line_pieces_keep_the_text_and_cut_after_line_breaks(
    texts: list[str], piece_chars: int
) -> None:
    pieces = list(line_pieces(texts, piece_chars))
    assert "".join(pieces) == "".join(texts)
    assert all(0 < len(p) <= piece_chars for p in pieces)
    # A piece that ends elsewhere than after "\n" had no line break to cut at.
    assert all(p.endswith("\n") or "\n" not in p for p in pieces[:-1])


def _cut_time(n_lines: int) -> float:
    """Best of three: seconds to cut one text of `n_lines` 100-character lines."""
    text = ("x" * 99 + "\n") * n_lines
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        pieces = sum(1 for _ in line_pieces([text], 100))
        best = min(best, time.perf_counter() - start)
    assert pieces == n_lines
    return best


def test_line_pieces_cut_one_huge_text_in_linear_time() -> None:
    # 4x the text: linear time takes ~4x as long, re-slicing the rest at each cut ~16x.
    # A ratio measured in one run, not a wall-clock limit, so a slow machine passes too.
    small, large = _cut_time(20_000), _cut_time(80_000)
    assert large / small < 8, f"{small:.4f} s for 2 MB, {large:.4f} s for 8 MB"
    pieces = list(line_pieces([("x" * 99 + "\n") * 200], 1000))
    assert len(pieces) == 20 and pieces[0] == ("x" * 99 + "\n") * 10


def test_pieces_encode_to_the_tokens_of_the_whole_text(
    small_tokenizer_file: Path, make_corpus_text
) -> None:
    from slm.tokenizer.bpe import Tokenizer

    tokenizer = Tokenizer.from_file(small_tokenizer_file)
    text = make_corpus_text(5000, seed=7)
    pieces = list(line_pieces([text], 300))
    assert len(pieces) > 50
    assert [i for p in pieces for i in tokenizer.encode(p)] == tokenizer.encode(text)


def test_file_pieces_decode_characters_split_across_reads(tmp_path: Path) -> None:
    text = "héllo 👋🏽 汉字\r\nwörld\t🧑‍🚀\n" * 50
    path = tmp_path / "a.txt"
    path.write_bytes(text.encode("utf-8"))
    log: list[str] = []
    pieces = list(read_file_pieces(path, log.append, piece_chars=7))  # reads end mid-character
    assert "".join(pieces) == text
    assert log == []


def test_bytes_no_encoding_explains_are_replaced_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "damaged.txt"  # UTF-8 text with two stray bytes: it stays UTF-8
    path.write_bytes("café naïve\n".encode() + b"ok \xff\xfe\n")
    log: list[str] = []
    assert "".join(read_file_pieces(path, log.append)) == "café naïve\nok \ufffd\ufffd\n"
    assert len(log) == 1
    assert "2 undecodable bytes" in log[0] and str(path) in log[0]


def test_a_utf8_replacement_character_in_the_text_is_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_text("already \ufffd here\n", encoding="utf-8")
    log: list[str] = []
    assert "".join(read_file_pieces(path, log.append)) == "already \ufffd here\n"
    assert log == []


def test_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello\n")
    assert "".join(read_file_pieces(path, lambda message: None)) == "hello\n"


# --------------------------------------------------------------------------- binary files


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PK\x03\x04\x00\x00zip", "NUL"),
        (random.Random(0).randbytes(8192), "NUL"),
        (bytes(random.Random(1).choice(range(128, 256)) for _ in range(4000)), "not text"),
        ("text".encode("utf-16"), "UTF-16"),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08" * 100, "not text"),
    ],
)
def test_binary_files_are_recognised(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    assert reason in (binary_reason(path) or "")


@pytest.mark.parametrize(
    "data",
    [
        b"plain text\n",
        "ünïcödé 汉字 😀\n".encode() * 500,
        "Latin-1 prose, café crème brûlée.\n".encode("latin-1") * 200,
        b"\x1b[31mcoloured log\x1b[0m\n\ttabbed\r\n\x0cform feed\n" * 100,
        "é".encode() * 4095 + b"\xc3",  # the probe ends inside a character
    ],
)
def test_text_files_are_not_called_binary(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(data)
    assert binary_reason(path) is None


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Le café était très agréable à Noël, où l'on mangeait des crêpes.\n" * 20, "latin-1"),
        ("Über die Brücke ging der Bär, schön und groß.\n" * 20, "cp1252"),
        ("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n" * 20, "shift_jis"),
    ],
)
def test_a_file_that_is_not_utf8_is_decoded_in_its_detected_encoding(tmp_path, text, encoding):
    from slm.data.text_files import read_file_pieces

    path = tmp_path / "legacy.txt"
    path.write_bytes(text.encode(encoding))
    messages: list[str] = []
    assert "".join(read_file_pieces(path, messages.append)) == text  # nothing lost
    assert len(messages) == 1 and "not UTF-8; decoded it as" in messages[0]


def test_utf8_files_are_read_as_utf8_without_a_note(tmp_path):
    from slm.data.text_files import read_file_pieces

    path = tmp_path / "plain.txt"
    path.write_text("héllo wörld 👋\n" * 10, encoding="utf-8")
    messages: list[str] = []
    assert "".join(read_file_pieces(path, messages.append)) == "héllo wörld 👋\n" * 10
    assert messages == []
