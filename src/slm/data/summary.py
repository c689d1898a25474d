"""What `slm prepare` reports: per-split counts and the summary of a run, as text.

`SplitStats` are the counts meta.json keeps for each split (what the counts mean is
`slm.data.prepared`'s to define); `PrepareSummary` is what `prepare` returns, with its two
passes timed apart. Filling them in is `slm.data.prepare`'s job and printing the text
`slm.cli.main`'s; this module only holds and formats the figures, and imports nothing from slm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class SplitStats:
    tokens: int = 0
    documents: int = 0
    characters: int = 0
    bytes: int = 0


@dataclass
class PrepareSummary:
    """What `prepare` did, with the two phases timed apart."""

    out: Path
    sources: list[str]
    vocab_size: int
    dtype: str
    tokenizer_trained: bool
    splits: dict[str, SplitStats]
    first_pass_s: float  # reading + counting + tokenizer training
    encode_s: float  # reading + encoding + writing token files

    @property
    def text_bytes(self) -> int:
        return sum(s.bytes for s in self.splits.values())

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    def format(self) -> str:
        train, val = self.splits["train"], self.splits["val"]
        mb = self.text_bytes / 1e6
        first = "tokenizer training" if self.tokenizer_trained else "counting pass"
        origin = "trained" if self.tokenizer_trained else "reused"
        return "\n".join(
            [
                f"prepared {self.out} from {', '.join(self.sources)}",
                f"  train: {_documents_text(train.documents)}, {train.tokens:,} tokens, "
                f"{train.bytes:,} bytes",
                f"  val:   {_documents_text(val.documents)}, {val.tokens:,} tokens, "
                f"{val.bytes:,} bytes",
                f"  tokenizer ({origin}): vocabulary {self.vocab_size:,} ({self.dtype}), "
                f"{self.text_bytes / max(1, self.tokens):.2f} bytes per token",
                f"  speed: {first} {mb:.1f} MB in {self.first_pass_s:.1f} s "
                f"({_rate(mb, self.first_pass_s)}), encoding {mb:.1f} MB in "
                f"{self.encode_s:.1f} s ({_rate(mb, self.encode_s)})",
            ]
        )


def _documents_text(n: int) -> str:
    return f"{n:,} document" + ("" if n == 1 else "s")


def _rate(mb: float, seconds: float) -> str:
    return f"{mb / seconds:.1f} MB/s" if seconds > 0 else "- MB/s"
