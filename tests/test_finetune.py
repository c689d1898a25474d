"""Fine-tuning (`slm train DATA --init-from MODEL_DIR`): it learns the new text, reports what
it forgot, records where it came from, and refuses data and flags that cannot work."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import slm
from slm.cli.main import main
from slm.data.prepared import load_prepared
from slm.errors import SLMError
from slm.evaluate import evaluate_windows, plan_windows, token_byte_lengths

FAST = {"device": "cpu", "dtype": "float32", "compile": "off", "sample_tokens": 0, "threads": 1}


def _text_b(n_lines: int, seed: int) -> str:
    """Text unlike the base corpus: short recipes with numbers and kitchen words."""
    rng = random.Random(seed)
    items = ["flour", "sugar", "butter", "eggs", "milk", "salt", "yeast", "honey", "oats"]
    verbs = ["Mix", "Whisk", "Fold", "Stir", "Knead", "Bake", "Chill"]
    lines = [
        f"{rng.choice(verbs)} {rng.randint(1, 9)}00 g of {rng.choice(items)} "
        f"with {rng.randint(1, 5)} spoons of {rng.choice(items)} for {rng.randint(2, 40)} min."
        for _ in range(n_lines)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus_dir) -> Path:
    """A tiny model trained briefly on text A (the play-like corpus)."""
    out = tmp_path_factory.mktemp("base") / "run"
    settings = {**FAST, "max_steps": 150, "batch_size": 8, "eval_every": 150, "lr": 3e-3}
    return slm.train(str(corpus_dir), out=out, preset="tiny", vocab_size=300, **settings).run_dir


@pytest.fixture(scope="module")
def text_b_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text_b")
    for i in range(10):
        (folder / f"recipes{i}.txt").write_text(_text_b(120, seed=i), encoding="utf-8")
    return folder


def _val_bpb(model_dir: Path, data_dir: Path) -> float:
    model = slm.load(model_dir, device="cpu")
    tokens = load_prepared(data_dir).tokens("val")
    windows = plan_windows(len(tokens), model.config.context_len)
    lengths = token_byte_lengths(model.tokenizer)
    return evaluate_windows(model.model, tokens, windows, lengths).bpb


def test_fine_tuning_learns_the_new_text_and_reports_what_it_forgot(base_run, text_b_dir, tmp_path):
    run = slm.train(
        str(text_b_dir), init_from=base_run, out=tmp_path / "ft", max_steps=60, **FAST
    ).run_dir
    data_b, data_a = run / "data", base_run / "data"
    b_before, b_after = _val_bpb(base_run, data_b), _val_bpb(run, data_b)
    a_before, a_after = _val_bpb(base_run, data_a), _val_bpb(run, data_a)
    print(f"B: {b_before:.3f} -> {b_after:.3f} bpb; A: {a_before:.3f} -> {a_after:.3f} bpb")
    assert b_after < 0.75 * b_before  # clearly better on the new text
    assert a_after < 0.5 * b_before  # A is still modelled far better than unseen text
    # B was tokenized with the base model's tokenizer, not a new one
    assert (run / "tokenizer.json").read_bytes() == (base_run / "tokenizer.json").read_bytes()


def test_a_fine_tune_records_its_source_and_uses_fine_tune_defaults(base_run, text_b_dir, tmp_path):
    run = slm.train(
        str(text_b_dir), init_from=base_run, out=tmp_path / "ft", max_steps=2, **FAST
    ).run_dir
    record = json.loads((run / "run.json").read_text())["init_from"]
    assert record["folder"] == str(base_run.resolve())
    assert len(record["weights_sha256"]) == 64
    assert record["val_bpb"] == pytest.approx(
        json.loads((base_run / "metrics.jsonl").read_text().splitlines()[-1])["val_bpb"]
    )
    train_config = json.loads((run / "train_config.json").read_text())
    assert train_config["init_from"] == str(base_run)
    assert (train_config["lr"], train_config["weight_decay"]) == (3e-4, 0.0)
    assert train_config["warmup_steps"] == 20
    assert train_config["label_smoothing"] == 0.0  # what bench_finetune measured without
    assert json.loads((run / "config.json").read_text())["d_model"] == 64  # the source's shape


def test_flags_override_fine_tune_defaults_and_no_budget_means_two_epochs(
    base_run, text_b_dir, tmp_path
):
    run = slm.train(str(text_b_dir), init_from=base_run, out=tmp_path / "ft", lr=1e-3, **FAST)
    train_config = json.loads((run.run_dir / "train_config.json").read_text())
    assert train_config["lr"] == 1e-3
    assert train_config["epochs"] == 2.0
    tokens = load_prepared(run.run_dir / "data").meta["splits"]["train"]["tokens"]
    assert run.tokens >= 2 * tokens


def test_data_prepared_with_another_tokenizer_is_refused(base_run, text_b_dir, tmp_path, capsys):
    other = tmp_path / "other"
    slm.prepare(str(text_b_dir), other, vocab_size=280)  # its own tokenizer, not the model's
    out = str(tmp_path / "x")
    code = main(["train", str(other), "--init-from", str(base_run), "--out", out])
    err = capsys.readouterr().err
    assert code == 2
    assert "prepared with another tokenizer" in err and "Traceback" not in err


def test_shape_flags_and_presets_are_refused(base_run, text_b_dir, tmp_path):
    with pytest.raises(SLMError, match="--d-model"):
        slm.train(str(text_b_dir), init_from=base_run, out=tmp_path / "a", d_model=128, **FAST)
    with pytest.raises(SLMError, match="--preset"):
        slm.train(str(text_b_dir), init_from=base_run, out=tmp_path / "b", preset="tiny", **FAST)


def test_a_missing_source_is_one_clear_error(tmp_path, capsys):
    code = main(["train", "--init-from", str(tmp_path / "nothere"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "model folder not found" in err and "Traceback" not in err


def test_unknown_python_settings_are_refused_with_a_hint(tmp_path):
    with pytest.raises(SLMError, match="did you mean 'max_steps'"):
        slm.train(out=tmp_path / "r", max_step=5)


def test_a_transformers_llama_folder_can_be_fine_tuned(base_run, text_b_dir, tmp_path):
    """--init-from takes an HF folder too (here the base model exported to transformers)."""
    pytest.importorskip("transformers")
    from slm.export.hf import export_hf

    export_hf(base_run, tmp_path / "hf")
    run = slm.train(
        str(text_b_dir), init_from=tmp_path / "hf", out=tmp_path / "ft", max_steps=3, **FAST
    ).run_dir
    assert json.loads((run / "run.json").read_text())["init_from"]["folder"].endswith("hf")
    before, after = slm.load(tmp_path / "hf", device="cpu"), slm.load(run, device="cpu")
    text = _text_b(5, seed=99)
    assert after.score(text) < before.score(text)
