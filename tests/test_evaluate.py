"""Scoring: every token once, exact byte counts, bpb that compares across tokenizers."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slm import checkpoint
from slm.cli.main import main
from slm.config import ModelConfig, preset
from slm.evaluate import (
    evaluate_model,
    evaluate_windows,
    plan_windows,
    sample_windows,
    token_byte_lengths,
)
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer

TEXT = "To be, or not to be: that is the question. Whether 'tis nobler in the mind to suffer.\n"


@pytest.mark.parametrize("n", [2, 3, 10, 64, 65, 200])
@pytest.mark.parametrize("context_len,stride", [(8, None), (8, 3), (8, 1), (16, 16)])
def test_windows_score_every_target_exactly_once(n, context_len, stride):
    scored = []
    for w in plan_windows(n, context_len, stride):
        assert w.end - w.start <= context_len
        scored.extend(range(max(w.start + 1, w.score_from), w.end + 1))
    assert scored == list(range(1, n))


def test_sample_windows_are_full_and_inside():
    windows = sample_windows(1000, 64, count=10)
    assert len(windows) == 10
    assert all(w.end - w.start == 64 and w.end <= 999 for w in windows)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tokenizer = Tokenizer.train([TEXT * 30], vocab_size=300)
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(**{**preset("tiny"), "vocab_size": tokenizer.vocab_size, "context_len": 16})
    )
    checkpoint.save_model(folder, model)
    tokenizer.save(folder / checkpoint.TOKENIZER_FILE)
    return folder


def naive_loss_sum(model, ids: list[int]) -> float:
    """Each target predicted from as much context as fits, one window per target."""
    total = 0.0
    ctx = model.config.context_len
    for t in range(1, len(ids)):
        window = torch.tensor([ids[max(0, t - ctx) : t]])
        logits = model(window)[0, -1]
        total += float(F.cross_entropy(logits[None], torch.tensor([ids[t]])))
    return total


def test_stride_one_equals_the_naive_definition(model_dir):
    model = checkpoint.load_model(model_dir)
    tokenizer = Tokenizer.from_file(model_dir / "tokenizer.json")
    ids = tokenizer.encode(TEXT * 2)[:60]
    tokens = np.array(ids)
    lengths = token_byte_lengths(tokenizer)
    with torch.no_grad():
        expected = naive_loss_sum(model, ids)
    result = evaluate_windows(model, tokens, plan_windows(len(ids), 16, stride=1), lengths)
    assert result.loss_sum == pytest.approx(expected, rel=1e-5)
    assert result.tokens == len(ids) - 1
    assert result.bytes == len(tokenizer.decode(ids[1:]).encode("utf-8"))


def test_bpb_formula_and_special_tokens_have_no_bytes(model_dir):
    tokenizer = Tokenizer.from_file(model_dir / "tokenizer.json")
    lengths = token_byte_lengths(tokenizer)
    assert lengths[tokenizer.eot_id] == 0 and lengths[tokenizer.pad_id] == 0
    model = checkpoint.load_model(model_dir)
    eot, text_ids = tokenizer.eot_id, tokenizer.encode(TEXT)
    ids = [eot, *text_ids, eot, *text_ids]  # the second <|endoftext|> is a scored target
    result = evaluate_windows(model, np.array(ids), plan_windows(len(ids), 16), lengths)
    assert result.bytes == 2 * len(TEXT.encode("utf-8"))
    # The oracle: cut the tokens into consecutive 16-token inputs by hand and sum the loss.
    loss_sum = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 16):
            end = min(start + 16, len(ids) - 1)
            logits = model(torch.tensor([ids[start:end]]))[0]
            targets = torch.tensor(ids[start + 1 : end + 1])
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
    assert result.tokens == len(ids) - 1
    assert result.loss_sum == pytest.approx(loss_sum, rel=1e-5)
    assert result.bpb == pytest.approx(loss_sum / (math.log(2) * 2 * len(TEXT.encode())), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(loss_sum / (len(ids) - 1)), rel=1e-5)


def test_cli_eval_json_on_text_files(model_dir, tmp_path, capsys):
    text = tmp_path / "held_out.txt"
    text.write_text(TEXT * 3, encoding="utf-8")
    assert main(["eval", str(model_dir), str(text), "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"loss", "perplexity", "bpb", "tokens", "bytes"}
    assert out["bytes"] == len((TEXT * 3).encode("utf-8"))
    direct = evaluate_model(model_dir, [str(text)], device="cpu")
    assert out["loss"] == pytest.approx(direct.loss)
    assert main(["eval", str(model_dir), str(text), "--stride", "4"]) == 0
    human = capsys.readouterr().out
    assert "bits/byte" in human and "perplexity" in human


def test_cli_eval_stride_gives_each_token_more_context(trained_model_dir, tmp_path, capsys):
    text = tmp_path / "learned.txt"
    text.write_text((trained_model_dir / "learned.txt").read_text(encoding="utf-8")[:400])
    scores = []
    for flags in ([], ["--stride", "4"]):
        assert main(["eval", str(trained_model_dir), str(text), "--json", *flags]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    plain, strided = scores
    assert plain["tokens"] == strided["tokens"] and plain["bytes"] == strided["bytes"]
    assert strided["loss"] < 0.8 * plain["loss"]  # the model has learned this text


def test_cli_eval_bad_inputs(model_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["eval", str(model_dir), str(text), "--stride", "999"]) == 2
    assert main(["eval", str(model_dir)]) == 2  # an exported folder has no data on record
    assert main(["eval", str(tmp_path / "missing"), str(text)]) == 1
    err = capsys.readouterr().err
    assert "--stride" in err and "Traceback" not in err


def test_cli_eval_refuses_a_negative_max_tokens(model_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["eval", str(model_dir), str(text), "--max-tokens", "-5"]) == 2
    err = capsys.readouterr().err
    assert "--max-tokens must not be negative" in err and "Traceback" not in err


@pytest.fixture
def run_dir(model_dir, tmp_path):
    """A copy of the model folder that can carry a run.json of the test's making."""
    folder = tmp_path / "run"
    shutil.copytree(model_dir, folder)
    return folder


@pytest.mark.parametrize("record", ["{not json", "[]", '{"data": 3}'])
def test_cli_eval_on_a_corrupt_run_record(run_dir, capsys, record):
    (run_dir / "run.json").write_text(record, encoding="utf-8")
    assert main(["eval", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "run record is corrupt" in err and "Traceback" not in err


def test_cli_eval_when_the_runs_data_folder_is_gone(run_dir, tmp_path, capsys):
    gone = tmp_path / "data_that_was_deleted"
    (run_dir / "run.json").write_text(json.dumps({"format_version": 1, "data": str(gone)}))
    assert main(["eval", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert f"data folder {gone} no longer exists" in err
    assert "TEXT_SOURCES" in err and "Traceback" not in err
