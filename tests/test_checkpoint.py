"""The model folder: lossless save/load, atomic writes, clear errors on damage."""

from __future__ import annotations

import json
import os

import pytest
import torch

from slm import checkpoint
from slm.config import ModelConfig, preset
from slm.errors import SLMError
from slm.fileio import atomic_write
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(["a small corpus for a small test tokenizer. " * 20], vocab_size=300)


def edit_config(folder, **changes) -> None:
    """Rewrite fields of a saved config.json, as a damaged or hand-edited folder would have."""
    path = folder / checkpoint.CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**preset("tiny"), "vocab_size": tokenizer.vocab_size}))
    checkpoint.save_model(tmp_path, model)
    tokenizer.save(tmp_path / checkpoint.TOKENIZER_FILE)
    return tmp_path, model


def test_reloaded_model_gives_identical_logits(model_dir):
    folder, model = model_dir
    loaded = checkpoint.load_model(folder)
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model.eval()(idx))
    assert loaded.config == model.config


def test_weights_file_stores_the_tied_embedding_once(model_dir):
    from safetensors import safe_open

    folder, model = model_dir
    with safe_open(str(folder / checkpoint.WEIGHTS_FILE), framework="pt") as f:
        keys = list(f.keys())
    assert "tok_emb.weight" in keys
    assert sum(f"{k}".endswith("emb.weight") for k in keys) == 1
    assert len(keys) == len(model.state_dict())


def test_config_json_is_explicit_and_versioned(model_dir):
    folder, _ = model_dir
    data = json.loads((folder / checkpoint.CONFIG_FILE).read_text())
    assert data["format_version"] == 1
    assert data["n_kv_heads"] == data["n_heads"]
    assert data["d_ff"] > 0


def test_a_model_saved_before_qk_norm_loads_without_it(model_dir):
    """Its config.json has no "qk_norm": it was trained without, and must compute as then."""
    folder, model = model_dir
    assert model.config.qk_norm  # today's default
    plain = GPT(ModelConfig(**{**model.config.to_dict(), "qk_norm": False}))
    plain.load_state_dict(model.state_dict())  # the same tensors: QK-norm has no weights
    checkpoint.save_model(folder, plain)
    path = folder / checkpoint.CONFIG_FILE
    data = json.loads(path.read_text())
    del data["qk_norm"]
    path.write_text(json.dumps(data))
    loaded = checkpoint.load_model(folder)
    assert not loaded.config.qk_norm
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx), plain.eval()(idx))
        assert not torch.allclose(loaded(idx), model.eval()(idx))


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_a_clear_error(model_dir, missing):
    folder, _ = model_dir
    (folder / missing).unlink()
    with pytest.raises(SLMError, match=missing.replace(".", r"\.")):
        checkpoint.load_model(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(SLMError, match="not found"):
        checkpoint.load_model(tmp_path / "nope")


def test_corrupt_weights_and_config_are_clear_errors(model_dir):
    folder, _ = model_dir
    (folder / checkpoint.WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SLMError, match="corrupt"):
        checkpoint.load_model(folder)
    (folder / checkpoint.CONFIG_FILE).write_text("{not json")
    with pytest.raises(SLMError, match="corrupt"):
        checkpoint.load_model(folder)


def test_config_from_a_newer_format_is_refused(model_dir):
    folder, _ = model_dir
    edit_config(folder, format_version=99)
    with pytest.raises(SLMError, match="format version 99"):
        checkpoint.load_model(folder)


def test_weights_that_do_not_match_the_config(model_dir):
    folder, _ = model_dir
    data = json.loads((folder / checkpoint.CONFIG_FILE).read_text())
    edit_config(folder, n_layers=data["n_layers"] + 1)
    with pytest.raises(SLMError, match="do not match"):
        checkpoint.load_model(folder)


def test_weights_of_another_shape_name_the_first_mismatching_tensor(model_dir):
    folder, _ = model_dir
    data = json.loads((folder / checkpoint.CONFIG_FILE).read_text())
    vocab_size, d_model = data["vocab_size"], data["d_model"]
    edit_config(folder, vocab_size=vocab_size + 1)
    with pytest.raises(SLMError, match="do not match") as err:
        checkpoint.load_model(folder)
    assert err.value.hint == (
        f"tok_emb.weight has shape {(vocab_size, d_model)} in the weights file "
        f"but {(vocab_size + 1, d_model)} by the config"
    )


def test_corrupt_train_state_is_a_clear_error(tmp_path):
    (tmp_path / checkpoint.TRAIN_STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(SLMError, match="corrupt"):
        checkpoint.load_train_state(tmp_path)


def test_train_state_loads_without_executing_code(tmp_path):
    marker = tmp_path / "owned"

    class Evil:
        def __reduce__(self):  # unpickling calls os.mkdir(marker): the side effect to watch
            return (os.mkdir, (str(marker),))

    torch.save({"step": 1, "x": Evil()}, tmp_path / checkpoint.TRAIN_STATE_FILE)
    with pytest.raises(SLMError, match="corrupt"):
        checkpoint.load_train_state(tmp_path)
    assert not marker.exists()


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def failing(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_saved_files_get_the_usual_permissions(model_dir):
    folder, _ = model_dir
    mask = os.umask(0)
    os.umask(mask)
    for name in (checkpoint.WEIGHTS_FILE, checkpoint.CONFIG_FILE, checkpoint.TOKENIZER_FILE):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
