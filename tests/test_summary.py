"""slm.data.summary: the text `slm prepare` prints (a real run's summary is in test_prepare)."""

from __future__ import annotations

from pathlib import Path

from slm.data.summary import PrepareSummary, SplitStats


def summary(first_pass_s: float = 2.0) -> PrepareSummary:
    return PrepareSummary(
        out=Path("data/mine"),
        sources=["a.txt", "b/"],
        vocab_size=4096,
        dtype="uint16",
        tokenizer_trained=False,
        splits={
            "train": SplitStats(tokens=3_000, documents=2, characters=9_000, bytes=9_000),
            "val": SplitStats(tokens=1_000, documents=1, characters=3_000, bytes=3_000),
        },
        first_pass_s=first_pass_s,
        encode_s=0.5,
    )


def test_totals_add_up_the_splits() -> None:
    assert summary().tokens == 4_000 and summary().text_bytes == 12_000


def test_format_counts_documents_in_words_and_rates_each_pass() -> None:
    text = summary().format()
    assert text.splitlines()[0] == "prepared data/mine from a.txt, b/"
    assert "train: 2 documents, 3,000 tokens, 9,000 bytes" in text
    assert "val:   1 document, 1,000 tokens, 3,000 bytes" in text
    assert "tokenizer (reused): vocabulary 4,096 (uint16), 3.00 bytes per token" in text
    assert "counting pass 0.0 MB in 2.0 s (0.0 MB/s)" in text
    assert "encoding 0.0 MB in 0.5 s (0.0 MB/s)" in text


def test_format_survives_a_pass_too_fast_to_time() -> None:
    assert "(- MB/s)" in summary(first_pass_s=0.0).format()
