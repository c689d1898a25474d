"""The Python API: slm.load(folder) -> generate / stream / complete / score, and its errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import slm
from slm import checkpoint
from slm.api import LoadedModel, load
from slm.errors import EXIT_USAGE, SLMError
from slm.tokenizer.bpe import Tokenizer

TEXT = "the cat sat on the mat. héllo wörld, naïve café; 日本語 😀! " * 30


@pytest.fixture(scope="module")
def run_dir(make_model_dir):
    return make_model_dir(TEXT)


@pytest.fixture(scope="module")
def model(run_dir) -> LoadedModel:
    return load(run_dir, device="cpu")


def test_slm_load_gives_a_model_with_its_tokenizer_and_config(run_dir, model):
    loaded = slm.load(run_dir, device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.config == model.config and loaded.config.context_len == 32
    assert loaded.tokenizer.vocab_size == loaded.config.vocab_size
    assert "context_len=32" in repr(loaded)
    assert load(run_dir / checkpoint.WEIGHTS_FILE, device="cpu").config == model.config


def test_generate_stream_and_complete_agree_for_a_seed(model):
    text = model.generate("the cat", max_new_tokens=30, seed=4)
    assert isinstance(text, str)
    assert "".join(model.stream("the cat", max_new_tokens=30, seed=4)) == text
    result = model.complete("the cat", max_new_tokens=30, seed=4, num_samples=2)
    assert len(result.completions) == 2
    assert result.completions[0].text != result.completions[1].text


def test_generation_options_are_checked(model):
    with pytest.raises(SLMError, match="temperature") as info:
        model.generate("x", temperature=-1)
    assert info.value.exit_code == EXIT_USAGE
    with pytest.raises(SLMError, match="top_kk"):
        model.generate("x", top_kk=3)
    with pytest.raises(SLMError, match="complete"):
        model.generate("x", num_samples=2)


def test_a_cropped_prompt_is_a_python_warning(model):
    with pytest.warns(UserWarning, match="context"):
        model.generate(TEXT, max_new_tokens=2)


def test_score_is_bits_per_byte_of_every_byte_after_end_of_text(model):
    text = "the cat sat on the mat. héllo"
    ids = [model.tokenizer.eot_id, *model.tokenizer.encode(text)]
    with torch.no_grad():
        logits = model.model(torch.tensor([ids[:-1]]))
    nats = F.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="sum").item()
    expected = nats / math.log(2) / len(text.encode("utf-8"))
    assert model.score(text) == pytest.approx(expected, rel=1e-5)
    # A random model is close to uniform: about log2(vocab) bits per token.
    assert 0 < model.score(text) < 3 * math.log2(model.config.vocab_size)


def test_score_slides_over_text_longer_than_the_context(model):
    result = model.evaluate(TEXT[:300])
    assert result.tokens == len(model.tokenizer.encode(TEXT[:300]))
    assert result.bytes == len(TEXT[:300].encode("utf-8"))


def test_a_smaller_stride_gives_each_token_more_context(trained_model_dir):
    """On text it has learned, the model's loss falls when every token sees >= 12 tokens
    before it instead of 0..15; every token is still scored once."""
    model = load(trained_model_dir, device="cpu")
    text = (trained_model_dir / "learned.txt").read_text(encoding="utf-8")[:400]
    n_tokens = len(model.tokenizer.encode(text))
    assert n_tokens > 4 * model.config.context_len
    plain, strided = model.evaluate(text), model.evaluate(text, stride=4)
    assert plain.tokens == strided.tokens == n_tokens
    assert plain.bytes == strided.bytes == len(text.encode("utf-8"))
    assert strided.loss < 0.8 * plain.loss
    assert model.score(text, stride=4) == pytest.approx(strided.bpb)


def test_scoring_nothing_is_an_error(model):
    with pytest.raises(SLMError, match="empty"):
        model.score("")


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(SLMError, match="not found"):
        load(tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("config.json", "{not json", "corrupt"),
        ("model.safetensors", "garbage", "corrupt"),
        ("tokenizer.json", "[]", "corrupt"),
    ],
)
def test_damaged_files_are_one_clear_error(run_dir, tmp_path, name, content, match):
    for path in run_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(SLMError, match=match) as info:
        load(tmp_path, device="cpu")
    assert name in str(info.value)


def test_a_tokenizer_bigger_than_the_model_is_refused(run_dir, tmp_path):
    for path in run_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    Tokenizer.train([TEXT], vocab_size=400).save(tmp_path / checkpoint.TOKENIZER_FILE)
    with pytest.raises(SLMError, match="tokenizer"):
        load(tmp_path, device="cpu")


def test_api_calls_do_not_warn_without_reason(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate("the", max_new_tokens=3)
