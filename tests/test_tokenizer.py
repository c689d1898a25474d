"""slm.tokenizer.bpe: training, special tokens, lossless round trips, standard tokenizer.json."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from slm.errors import SLMError
from slm.tokenizer.bpe import EOT, MIN_VOCAB, PAD, Tokenizer

EDGE_CASES = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\ttabs\t",
    "windows\r\nline\r\nends\r\n",
    "old mac\rline ends",
    "NUL \x00 in the middle\x00",
    "emoji 👋🏽 🧑‍🚀 and flags 🇫🇷",
    "CJK 汉字 かな 한국어",
    "combining e\u0301 a\u0308 and Zalgo z\u0336\u0317\u033a",
    "right-to-left שלום مرحبا",
    "\ufeffbyte order mark and \ufffd replacement",
    f"special strings {EOT} and {PAD} inside text",
    "\n\n\n   \n",
    "x" * 3000,
]


@pytest.fixture(scope="module")
def tokenizer(make_corpus_text) -> Tokenizer:
    return Tokenizer.train([make_corpus_text(5000, seed=s) for s in range(4)], vocab_size=400)


def test_trains_to_the_requested_vocabulary_with_both_specials(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 400
    assert {tokenizer.eot_id, tokenizer.pad_id} == {
        tokenizer.hf.token_to_id(EOT),
        tokenizer.hf.token_to_id(PAD),
    }
    assert tokenizer.eot_id != tokenizer.pad_id


def test_merges_make_common_words_single_tokens(tokenizer: Tokenizer) -> None:
    assert len(tokenizer.encode(" noble")) == 1
    assert len(tokenizer.encode("honour")) < len("honour")


def test_special_token_text_becomes_the_special_id(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(f"a{EOT}b")
    assert tokenizer.eot_id in ids
    assert tokenizer.decode(ids) == f"a{EOT}b"


@pytest.mark.parametrize("vocab_size", [MIN_VOCAB - 1, 0, -5])
def test_refuses_a_vocabulary_too_small_for_all_bytes(vocab_size: int) -> None:
    with pytest.raises(SLMError, match="vocab-size"):
        Tokenizer.train(["some text"], vocab_size=vocab_size)


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip_on_edge_cases(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    # The raw bytes of the tokens are the UTF-8 of the text (what streaming output relies on).
    if EOT not in text and PAD not in text:
        assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")


_FRAGMENTS = st.sampled_from(
    [
        "\r\n",
        "\n",
        "\t",
        " ",
        "  ",
        "\x00",
        "é",
        "e\u0301",
        "👍🏿",
        "汉",
        "'s",
        "the",
        EOT,
        "\ufffd",
    ]
)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), st.lists(_FRAGMENTS | st.text(max_size=3)).map("".join)))
@example(text="\x00")
@example(text=" \r\n\t leading and trailing \r\n")
@example(text="🧑‍🤝‍🧑 家族 a\u0308\u0301")
@example(text=f"{EOT}{EOT}{PAD}")
def test_decode_encode_is_lossless_for_any_unicode(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_batch_matches_encode(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode_batch(EDGE_CASES) == [tokenizer.encode(t) for t in EDGE_CASES]


def test_lone_surrogates_encode_as_the_replacement_character(tokenizer: Tokenizer) -> None:
    # "\udcff" is what surrogateescape makes of a byte 0xff; "\ud800" is a bare high half.
    text = "ab\udcffcd \ud800!"
    expected = "ab\ufffdcd \ufffd!"
    assert tokenizer.decode(tokenizer.encode(text)) == expected
    assert tokenizer.encode(text) == tokenizer.encode(expected)
    assert tokenizer.encode_batch(["fine", text]) == [
        tokenizer.encode("fine"),
        tokenizer.encode(expected),
    ]


def test_saved_file_reloads_with_the_same_ids_and_fingerprint(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    again = Tokenizer.from_file(path)
    for text in EDGE_CASES:
        assert again.encode(text) == tokenizer.encode(text)
    assert again.sha256() == tokenizer.sha256()
    assert (again.eot_id, again.pad_id) == (tokenizer.eot_id, tokenizer.pad_id)


def test_fingerprint_differs_between_vocabularies(tokenizer: Tokenizer, make_corpus_text) -> None:
    other = Tokenizer.train([make_corpus_text(5000)], vocab_size=300)
    assert other.sha256() != tokenizer.sha256()


def test_saved_file_is_a_standard_tokenizers_file(tokenizer: Tokenizer, tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    plain = HFTokenizer.from_file(str(path))
    for text in EDGE_CASES:
        assert plain.encode(text, add_special_tokens=False).ids == tokenizer.encode(text)


def test_transformers_loads_it_with_the_same_ids(tokenizer: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), eos_token=EOT, pad_token=PAD
    )
    assert fast.eos_token_id == tokenizer.eot_id
    assert fast.pad_token_id == tokenizer.pad_id
    for text in EDGE_CASES:
        ids = fast.encode(text, add_special_tokens=False)
        assert ids == tokenizer.encode(text)
        assert fast.decode(ids, clean_up_tokenization_spaces=False) == text


def test_missing_or_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SLMError, match="not found"):
        Tokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(SLMError, match="corrupt"):
        Tokenizer.from_file(bad)


def test_a_tokenizer_without_slm_specials_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    path = tmp_path / "tokenizer.json"
    HFTokenizer(models.BPE()).save(str(path))
    with pytest.raises(SLMError, match="special tokens"):
        Tokenizer.from_file(path)
