"""slm.tokenizer.pieces: the split is exactly HF's pre-tokenizer, and cached encoding gives HF's
ids."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import normalizers, pre_tokenizers

from slm.tokenizer import unicode_classes
from slm.tokenizer.bpe import EOT, PAD, Tokenizer, byte_to_unicode
from slm.tokenizer.pieces import PieceEncoder, parse_ranges, split

HF_SPLIT = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True).pre_tokenize_str
TO_BYTE_LEVEL = byte_to_unicode()

TRICKY = [
    "",
    " ",
    "a",
    "  a",
    "a  ",
    "a  b",
    "\n\n b",
    "a\n\n\nb",
    "a \n b",
    "x\t \ty",
    "'s 'S 'sss ''s x's x''s don't I'll we've they're 'd'm",
    " 's",
    "\n's",
    "1's 2'd",
    "Hello world's  end!!\n",
    "emoji 👋🏽 🧑‍🚀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ab𝔘𝔫cd 12𝟙𝟚34 !!🙂!!",
    "𐐷's 𝟙'd",
    "ａｂｃ１２３　ｘ",  # fullwidth letters, digits and the ideographic space
    "\u00a0nbsp\u2003em\u2028line\u3000ideo",
    "\x1c\x1d\x1e\x1f file separators are not spaces here",
    "Ⅻ roman ½ fractions ²",
    "tab\there\r\nwindows\r\n",
]


def hf_pieces(text: str) -> list[str]:
    """HF's pieces, turned from its byte-level spelling back into text."""
    to_byte = {ch: b for b, ch in TO_BYTE_LEVEL.items()}
    return [bytes(to_byte[c] for c in p).decode("utf-8") for p, _ in HF_SPLIT(text)]


@pytest.mark.parametrize("text", TRICKY)
def test_split_matches_hf_on_tricky_text(text: str) -> None:
    assert split(text) == hf_pieces(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
@example("a\u0301'll  x")
def test_split_matches_hf_on_any_text(text: str) -> None:
    assert split(text) == hf_pieces(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \n\t'sdlm1aA!😀𝔘\u3000")), max_size=40))
def test_split_matches_hf_on_dense_edge_alphabet(text: str) -> None:
    assert split(text) == hf_pieces(text)


def test_class_tables_match_the_installed_tokenizers() -> None:
    """Every range edge, and a sample besides, classed as HF classes it.

    A failure after upgrading tokenizers means its Unicode tables changed: rerun
    `python tools/unicode_classes.py`.
    """
    probes = {0x20, 0x1C, 0x85}
    for table in (unicode_classes.LETTER, unicode_classes.NUMBER, unicode_classes.SPACE):
        for first, last in parse_ranges(table):
            probes.update({first - 1, first, last, last + 1})
    probes.update(random.Random(0).sample(range(0x110000), 3000))
    chars = [chr(cp) for cp in sorted(probes) if 0 <= cp < 0x110000 and not 0xD800 <= cp < 0xE000]
    for c in chars:
        for context in (f"a{c}", f"1{c}", f"x{c}{c}x", f" {c}", f"'{c}"):
            assert split(context) == hf_pieces(context), f"U+{ord(c):04X} in {context!r}"


# --------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def tokenizer(make_corpus_text) -> Tokenizer:
    return Tokenizer.train([make_corpus_text(4000, seed=s) for s in range(3)], vocab_size=500)


def hf_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.hf.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", [*TRICKY, f"a{EOT}b{PAD}", f"x {EOT}{EOT} y", "<|endoftext", EOT])
def test_encode_gives_hf_ids(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer._pieces is not None, "a tokenizer slm trained must take the fast path"
    assert tokenizer.encode(text) == hf_ids(tokenizer, text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_encode_gives_hf_ids_on_any_text(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.encode(text) == hf_ids(tokenizer, text)


def test_a_full_cache_still_encodes_every_piece(tokenizer: Tokenizer, make_corpus_text) -> None:
    texts = [make_corpus_text(500, seed=s) for s in range(5)]
    small = PieceEncoder(tokenizer._pieces.encode_pieces, {EOT: tokenizer.eot_id}, capacity=50)
    assert small.encode_batch(texts) == [hf_ids(tokenizer, t) for t in texts]
    assert small.encode_batch(texts) == [hf_ids(tokenizer, t) for t in texts]
    assert len(small.known) == 50


def test_a_tokenizer_slm_did_not_make_is_encoded_by_hf_alone(tokenizer: Tokenizer) -> None:
    hf = type(tokenizer.hf).from_str(tokenizer.hf.to_str())
    hf.normalizer = normalizers.Lowercase()
    foreign = Tokenizer(hf)
    assert foreign._pieces is None
    assert foreign.encode("Hello World") == hf.encode("Hello World", add_special_tokens=False).ids
    assert foreign.encode("Hello World") == foreign.encode("hello world")
