"""Settings: presets, validation with flag names, config files, durations, sampling."""

from __future__ import annotations

import argparse

import pytest

from slm.config import (
    DEFAULT_BETA2,
    DEFAULT_LR,
    PRESETS,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    load_config_file,
    parse_duration,
    parse_every,
    preset,
    sample_config,
    split_settings,
)
from slm.errors import EXIT_USAGE, SLMError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_model(name):
    cfg = ModelConfig(**preset(name))
    assert cfg.d_model % cfg.n_heads == 0
    assert cfg.n_kv_heads == cfg.n_heads
    assert cfg.d_ff % 64 == 0


def test_seed_preset_is_the_tutorial_shape():
    cfg = ModelConfig(**preset("seed-2.5m"))
    assert (cfg.d_model, cfg.n_heads, cfg.context_len, cfg.vocab_size) == (192, 3, 256, 4096)


def test_unknown_preset_suggests_the_close_one():
    with pytest.raises(SLMError, match="unknown preset") as err:
        preset("smal")
    assert "small" in err.value.hint


@pytest.mark.parametrize(
    "fields,flag",
    [
        ({"d_model": 100, "n_heads": 3}, "--d-model"),
        ({"n_heads": 4, "n_kv_heads": 3}, "--n-kv-heads"),
        ({"n_layers": 0}, "--n-layers"),
        ({"d_model": 30, "n_heads": 2}, "head size"),
    ],
)
def test_bad_model_settings_name_the_flag(fields, flag):
    with pytest.raises(SLMError) as err:
        ModelConfig(**{**preset("tiny"), **fields})
    assert flag in err.value.message
    assert err.value.exit_code == EXIT_USAGE


def test_bad_train_settings_name_the_flag():
    with pytest.raises(SLMError, match="--lr"):
        TrainConfig(lr=-1e-3)
    with pytest.raises(SLMError, match="--max-time"):
        TrainConfig(max_time="soon")
    with pytest.raises(SLMError, match="--device"):
        TrainConfig(device="tpu")


def test_the_default_rate_is_the_optimizers_own_and_saved_resolved():
    # Under Muon, AdamW trains only the embedding and gains, at 3x AdamW's rate alone.
    assert TrainConfig().lr == TrainConfig(lr=0).lr == DEFAULT_LR["muon"] == 6e-3
    assert TrainConfig(optimizer="adamw").lr == DEFAULT_LR["adamw"] == 2e-3
    assert TrainConfig(optimizer="adamw", lr=1e-4).lr == 1e-4
    assert TrainConfig.from_dict(TrainConfig().to_dict()).lr == 6e-3


def test_the_default_beta2_is_the_optimizers_own_and_saved_resolved():
    # Under Muon, AdamW (embedding and gains) trains best with a long second-moment memory.
    assert TrainConfig().beta2 == DEFAULT_BETA2["muon"] == 0.999
    assert TrainConfig(optimizer="adamw").beta2 == DEFAULT_BETA2["adamw"] == 0.95
    assert TrainConfig(beta2=0.9).beta2 == 0.9
    # A run saved before the per-optimizer default resumes with the value it trained with.
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "beta2": 0.95}).beta2 == 0.95
    for bad in ({"beta2": 1.0}, {"beta2": -0.5}, {"beta1": 1.0}):
        with pytest.raises(SLMError, match="beta"):
            TrainConfig(**bad)


def test_durations_and_save_intervals():
    assert parse_duration("90") == 90
    assert parse_duration("30s") == 30
    assert parse_duration("1.5h") == 5400
    assert parse_every("500") == ("steps", 500)
    assert parse_every("2m") == ("seconds", 120)


def test_config_file_toml_flat_and_sectioned(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "tiny"\nlr = 0.01\n[model]\nn_layers = 3\n[train]\nbatch_size = 4\n')
    assert load_config_file(path) == {"preset": "tiny", "lr": 0.01, "n_layers": 3, "batch_size": 4}


def test_config_file_unknown_key_gets_did_you_mean(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"n_layer": 3}')
    with pytest.raises(SLMError) as err:
        load_config_file(path)
    assert "n_layers" in err.value.hint


def test_config_file_that_is_not_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("this is = = not toml")
    with pytest.raises(SLMError, match="cannot parse"):
        load_config_file(path)


@pytest.mark.parametrize(
    "cls,fields,message",
    [
        (TrainConfig, {"lr": "1e-3"}, "--lr must be a number, got '1e-3'"),
        (TrainConfig, {"batch_size": 2.5}, "--batch-size must be a whole number, got 2.5"),
        (TrainConfig, {"batch_size": True}, "--batch-size must be a whole number, got True"),
        (TrainConfig, {"wandb": 1}, "--wandb must be true or false, got 1"),
        (TrainConfig, {"max_time": 600}, "--max-time must be text, got 600"),
        (TrainConfig, {"lr": float("nan")}, "--lr must be a finite number"),
        (TrainConfig, {"dtype": 16}, "--dtype must be one of auto, float32, bfloat16; got 16"),
        (TrainConfig, {"threads": -1}, "--threads must not be negative"),
        (ModelConfig, {"n_layers": "4"}, "--n-layers must be a whole number, got '4'"),
        (ModelConfig, {"rope_theta": "1e4"}, "--rope-theta must be a number, got '1e4'"),
    ],
)
def test_wrong_types_are_usage_errors_naming_the_flag(cls, fields, message):
    base = preset("tiny") if cls is ModelConfig else {}
    with pytest.raises(SLMError) as err:
        cls(**{**base, **fields})
    assert message in err.value.message
    assert err.value.exit_code == EXIT_USAGE


def test_an_int_for_a_float_field_is_stored_as_float():
    cfg = TrainConfig(lr=1, epochs=2)
    assert type(cfg.lr) is float and type(cfg.epochs) is float
    assert type(ModelConfig(**preset("tiny"), rope_theta=500).rope_theta) is float


@pytest.mark.parametrize(
    "name,body,message",
    [
        ("run.toml", 'lr = "1e-3"\n', "--lr must be a number"),
        ("run.json", '{"n_layers": "4"}', "--n-layers must be a whole number"),
        ("run.json", '{"batch_size": 2.5}', "--batch-size must be a whole number, got 2.5"),
    ],
)
def test_wrongly_typed_values_in_a_config_file(tmp_path, name, body, message):
    path = tmp_path / name
    path.write_text(body)
    model, train = split_settings(load_config_file(path))
    with pytest.raises(SLMError, match=message):
        (ModelConfig(**{**preset("tiny"), **model}), TrainConfig(**train))


def test_config_file_that_is_not_an_object(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('[{"lr": 0.01}]')
    with pytest.raises(SLMError, match="must hold an object of settings, not a list") as err:
        load_config_file(path)
    assert err.value.exit_code == EXIT_USAGE


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b'device = "\xff"\n')
    with pytest.raises(SLMError, match="cannot parse"):
        load_config_file(path)


@pytest.mark.parametrize("text", ["0", "0s", "0.0m", 0, 0.0])
def test_a_zero_duration_is_refused(text):
    with pytest.raises(SLMError, match="--max-time must be a positive duration"):
        parse_duration(text, "--max-time")


def test_zero_max_time_and_zero_save_interval_are_refused():
    with pytest.raises(SLMError, match="--max-time must be a positive duration"):
        TrainConfig(max_time="0")
    with pytest.raises(SLMError, match="--save-every must be a positive duration"):
        TrainConfig(save_every="0s")
    with pytest.raises(SLMError, match="--save-every must be at least 1 step"):
        TrainConfig(save_every="0")


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("temperature", -0.1, "--temperature"),
        ("top_p", 0.0, "--top-p"),
        ("top_p", 1.5, "--top-p"),
        ("top_k", -1, "--top-k"),
        ("min_p", 2.0, "--min-p"),
        ("repetition_penalty", 0.0, "--repetition-penalty"),
        ("max_new_tokens", 0, "--max-new-tokens"),
        ("num_samples", 0, "--num-samples"),
        ("seed", -3, "--seed"),
        ("temperature", float("nan"), "--temperature"),
        ("top_k", 2.5, "--top-k"),
        ("temperature", "hot", "--temperature"),
        ("stop", ("",), "--stop"),
    ],
)
def test_bad_sample_settings_are_usage_errors_naming_the_flag(field, value, flag):
    with pytest.raises(SLMError) as info:
        SampleConfig(**{field: value})
    assert info.value.exit_code == EXIT_USAGE
    assert flag in info.value.message


def test_sample_settings_normalise_a_single_stop_string_and_reject_unknown_names():
    assert SampleConfig(stop="\n\n").stop == ("\n\n",)
    assert SampleConfig(stop=["a", "b"]).stop == ("a", "b")
    with pytest.raises(SLMError, match="temprature") as info:
        sample_config(temprature=0.5)
    assert "temperature" in info.value.hint


def test_every_command_prints_its_help(capsys):
    """argparse formats help texts with %: a stray one fails only when --help is asked for."""
    from slm.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"prepare", "train", "generate", "export", "serve"} <= set(commands.choices)
    for name, command in commands.choices.items():
        text = command.format_help()
        assert name in text and "--help" in text
