"""Shared fixtures. Each group is named for what it serves; add new groups below, apart."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- text corpora

_WORDS = (
    "the king queen lord lady speak night day love death sword crown honour heart fair "
    "sweet good noble gentle tongue eyes hand blood heaven earth grace time world man "
    "woman father mother son daughter friend enemy war peace soul mind fortune"
)


def corpus_text(n_words: int, seed: int = 0) -> str:
    """Deterministic play-like text: short lines of common words, with punctuation."""
    rng = random.Random(seed)
    words = _WORDS.split()
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(words))
        if len(line) >= rng.randint(5, 9):
            lines.append(" ".join(line).capitalize() + rng.choice(",.;!?"))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def make_corpus_text() -> Callable[..., str]:
    """`make_corpus_text(n_words, seed=0)` -> deterministic text for data tests."""
    return corpus_text


@pytest.fixture(scope="session")
def small_tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-token BPE tokenizer trained on generated text (well under a second)."""
    from slm.tokenizer.bpe import Tokenizer

    tokenizer = Tokenizer.train([corpus_text(20_000, seed=s) for s in range(3)], vocab_size=300)
    path = tmp_path_factory.mktemp("small_tokenizer") / "tokenizer.json"
    tokenizer.save(path)
    return path


# --------------------------------------------------------------------------- model folders


def build_model_dir(
    folder: Path, text: str, context_len: int = 32, seed: int = 0, qk_norm: bool = True
) -> Path:
    """A model folder as `slm train` leaves it: random (seeded) weights, a real tokenizer."""
    import torch

    from slm import checkpoint
    from slm.config import ModelConfig
    from slm.model import GPT
    from slm.tokenizer.bpe import Tokenizer

    tokenizer = Tokenizer.train([text], vocab_size=300)
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        context_len=context_len,
        d_model=32,
        n_layers=2,
        n_heads=2,
        qk_norm=qk_norm,
    )
    checkpoint.save_model(folder, GPT(config))
    tokenizer.save(folder / checkpoint.TOKENIZER_FILE)
    return folder


@pytest.fixture(scope="session")
def make_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`make_model_dir(text, context_len=32)` -> a fresh tiny model folder."""
    return lambda text, **kw: build_model_dir(tmp_path_factory.mktemp("model"), text, **kw)


# --------------------------------------------------------------------------- prepared data


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 20 generated text files, `doc00.txt`..., each starting "Document {i}."."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(20):
        text = f"Document {i}.\n" + corpus_text(300, seed=i)
        (folder / f"doc{i:02}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def prepared(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`corpus_dir` prepared (vocabulary 300, val 0.2, seed 3); read-only: copy to change it."""
    from slm.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([str(corpus_dir)], out, vocab_size=300, val_fraction=0.2, seed=3)
    return out


# --------------------------------------------------------------------------- trained models

# 64 random letters of four, over and over: a few letters say little about what comes next,
# a dozen say exactly where in the period the text is.
REPEATED_TEXT = "".join(random.Random(0).choices("abcd", k=64)) * 40


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model (context 16) that has learned the text in its `learned.txt` by heart
    (~2 s): unlike a random one, it predicts much better with more context (stride tests)."""
    import torch
    import torch.nn.functional as F

    from slm import checkpoint
    from slm.config import ModelConfig
    from slm.model import GPT
    from slm.tokenizer.bpe import Tokenizer

    folder = tmp_path_factory.mktemp("trained_model")
    tokenizer = Tokenizer.train([corpus_text(5000)], vocab_size=300)  # no merges for the period
    ids = torch.tensor(tokenizer.encode(REPEATED_TEXT))
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_len=16, d_model=64, n_layers=2, n_heads=4
    )
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine wait on each other
    for _ in range(150):
        starts = torch.randint(len(ids) - 17, (16,), generator=generator)
        block = torch.stack([ids[s : s + 17] for s in starts.tolist()])
        loss = F.cross_entropy(model(block[:, :-1]).flatten(0, 1), block[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.set_num_threads(threads)
    checkpoint.save_model(folder, model.eval())
    tokenizer.save(folder / checkpoint.TOKENIZER_FILE)
    (folder / "learned.txt").write_text(REPEATED_TEXT, encoding="utf-8")
    return folder
