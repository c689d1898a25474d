"""One sample's streamed text: whole characters across byte tokens, stop strings cut off.

Oracles: a character split over byte-level tokens comes out whole; the streamed pieces of
any text join to the text up to the first stop string, as `str.find` places it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slm.generation.stream_text import SampleText, find_stop, partial_stop_len
from slm.tokenizer.bpe import Tokenizer, byte_to_unicode

TEXT = "the cat sat on the mat. héllo wörld, naïve café; 日本語のテキスト 😀 emoji! " * 30


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([TEXT], vocab_size=320)


def test_find_stop_gives_the_earliest_stop():
    assert find_stop("a\n\nb", ("\n\n", "b")) == 1
    assert find_stop("abc", ("x",)) is None


def test_partial_stop_len_holds_back_a_possible_start():
    assert partial_stop_len("one\n", ("\n\n",)) == 1
    assert partial_stop_len("one", ("\n\n",)) == 0
    assert partial_stop_len("one", ()) == 0


def test_a_character_split_over_byte_tokens_is_streamed_whole(tokenizer):
    text = "日😀é"
    byte_ids = [tokenizer.hf.token_to_id(tokenizer_char(b)) for b in text.encode("utf-8")]
    assert None not in byte_ids
    sample = SampleText(tokenizer, stops=())
    pieces = [sample.push(i) for i in byte_ids]
    assert [p for p in pieces if p] == ["日", "😀", "é"]
    assert sample.close("length") == ""


def tokenizer_char(byte: int) -> str:
    return byte_to_unicode()[byte]


@settings(max_examples=80, deadline=None)
@given(
    text=st.text(alphabet="ab \n日😀é.", max_size=40),
    stop=st.sampled_from(["\n\n", "a b", "😀é", ".", "日日"]),
)
def test_stream_text_is_cut_at_the_first_stop_and_never_shows_half(tokenizer, text, stop):
    sample = SampleText(tokenizer, stops=(stop,))
    pieces = []
    for token in tokenizer.encode(text):
        pieces.append(sample.push(token))
        if sample.done:
            break
    pieces.append(sample.close("length"))
    expected = text[: text.find(stop)] if stop in text else text
    assert "".join(pieces) == expected
    assert all("\ufffd" not in p for p in pieces)
    assert sample.finish_reason == ("stop" if stop in text else "length")
