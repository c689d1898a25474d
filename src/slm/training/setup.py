"""How a training run starts: the user's request -> a run folder, data, model and settings.

    slm train                                   # seed-2.5m on the built-in corpus, 5 minutes
    slm train data/mine --preset small --max-time 30m
    slm train notes/ --init-from runs/base      # fine-tune (slm.training.finetune)
    slm train --resume runs/mine                # continue exactly where it stopped

What this module owns: resolving settings (defaults < preset < --config file < flags, or a
fine-tune's source and defaults), checking them before anything slow or large happens, and
gathering a run's parts (`RunParts`) for a new run, a fine-tune, a resumed run, or the other
ranks of a torchrun job. Running the steps is `slm.training.loop`'s job; the run folder's
files, lock and resume checks are `slm.training.run_folder`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from slm import checkpoint
from slm.config import (
    DEFAULT_PRESET,
    ModelConfig,
    TrainConfig,
    load_config_file,
    preset,
    split_settings,
)
from slm.data.prepared import PreparedData
from slm.device import resolve_device
from slm.errors import EXIT_USAGE, SLMError
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer
from slm.training.finetune import (
    check_same_tokens,
    finetune_settings,
    grow_vocab,
    load_source,
    refuse_shape_changes,
)
from slm.training.memory import check_fits
from slm.training.progress import Log
from slm.training.run_folder import (
    RunGuard,
    check_resume_point,
    fill_run_dir,
    recorded_data,
    resolve_data,
    resumed_train_config,
)
from slm.training.schedule import plan_budget

DEFAULT_MAX_TIME = "5m"  # `slm train` with no budget: a few minutes, then a sample


@dataclass
class TrainRequest:
    """What the user asked for, before defaults are resolved (the CLI fills it)."""

    data: list[str] = field(default_factory=list)
    out: str | None = None
    resume: str | None = None
    config_file: str | None = None
    preset: str | None = None
    vocab_size: int | None = None
    init_from: str | None = None  # a model folder to start from (fine-tuning)
    overrides: dict[str, Any] = field(default_factory=dict)
    started: float | None = None  # time.perf_counter() when asked; a --max-time counts from it


@dataclass
class RunParts:
    """What a run is made of before its loop starts."""

    run_dir: Path
    data: PreparedData
    model: GPT
    cfg: TrainConfig
    state: dict[str, Any] | None  # a checkpoint's train state when resuming


def resolve_settings(
    request: TrainRequest, vocab_size: int | None, base: ModelConfig | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """defaults < preset < --config file < flags; the model's vocab comes from the tokenizer.

    `vocab_size=None` keeps the preset's (before the data, and so the tokenizer, exists).
    With `base` (a fine-tune's source model) the shape is the source's and the train
    defaults are a fine-tune's (`slm.training.finetune`).
    """
    file_settings = load_config_file(request.config_file) if request.config_file else {}
    name = request.preset or file_settings.pop("preset", None) or DEFAULT_PRESET
    file_settings.pop("preset", None)
    file_model, file_train = split_settings(file_settings)
    flag_model, flag_train = split_settings(request.overrides)
    train_settings = {**file_train, **flag_train}
    if base is not None:
        refuse_shape_changes({**file_model, **flag_model}, base)
        model_settings = base.to_dict()
        train_settings = finetune_settings(train_settings)
        train_settings["init_from"] = request.init_from
    else:
        model_settings = preset(name)
        model_settings.update(file_model)
        model_settings.update(flag_model)
    if vocab_size is not None:
        # A fine-tune keeps a source vocabulary larger than its tokenizer's (unused rows).
        floor = model_settings["vocab_size"] if base is not None else 0
        model_settings["vocab_size"] = max(vocab_size, floor)
    model_cfg = ModelConfig.from_dict(model_settings, source="settings")
    train_cfg = TrainConfig.from_dict(train_settings, source="settings")
    if not train_cfg.has_budget:
        train_cfg = replace(train_cfg, max_time=DEFAULT_MAX_TIME)
    return model_cfg, train_cfg


def new_run(request: TrainRequest, log: Log, guard: RunGuard) -> RunParts:
    """A new run's folder, data, model and settings (rank 0 alone calls this)."""
    if request.init_from:
        return _finetune_run(request, log, guard)
    # 1. Check settings and the device before any slow work or any file is written. Data
    #    prepared here gets the preset's vocabulary unless --vocab-size says otherwise.
    draft_model, draft_train = resolve_settings(request, vocab_size=None)
    resolve_device(draft_train.device)
    run_dir = guard.new(request.out, request.preset)
    data = resolve_data(request.data, run_dir, request.vocab_size or draft_model.vocab_size, log)
    model_cfg, train_cfg = resolve_settings(request, vocab_size=data.vocab_size)
    check_fits(
        model_cfg, train_cfg, len(data.tokens("train")), resolve_device(train_cfg.device).type
    )
    # 2. The run folder is a model folder: tokenizer and data statistics travel with it.
    fill_run_dir(run_dir, data, model_cfg, train_cfg)
    torch.manual_seed(train_cfg.seed)
    model = GPT(model_cfg)
    return RunParts(run_dir, data, model, train_cfg, state=None)


def _finetune_run(request: TrainRequest, log: Log, guard: RunGuard) -> RunParts:
    # 1. The source model first: its shape and tokenizer decide everything else.
    if request.preset or request.vocab_size:
        raise SLMError(
            "--init-from takes the model's preset and tokenizer; drop --preset/--vocab-size",
            exit_code=EXIT_USAGE,
        )
    assert request.init_from is not None
    model, source_tokenizer, source = load_source(request.init_from)
    _, draft_train = resolve_settings(request, vocab_size=None, base=model.config)
    resolve_device(draft_train.device)
    run_dir = guard.new(request.out, "finetune")
    # 2. The new text in the source's tokens (a chat folder may add the two chat tokens).
    tokenizer_file = Path(source["folder"]) / checkpoint.TOKENIZER_FILE
    data = resolve_data(request.data, run_dir, model.config.vocab_size, log, str(tokenizer_file))
    check_same_tokens(source_tokenizer, Tokenizer.from_file(data.tokenizer_path), data.folder)
    if data.vocab_size > model.config.vocab_size:
        log(
            f"growing the vocabulary from {model.config.vocab_size} to {data.vocab_size} "
            "(the chat tokens; new rows start as the mean embedding)"
        )
        model = grow_vocab(model, data.vocab_size)
    model_cfg, train_cfg = resolve_settings(request, data.vocab_size, base=model.config)
    check_fits(
        model_cfg, train_cfg, len(data.tokens("train")), resolve_device(train_cfg.device).type
    )
    fill_run_dir(run_dir, data, model_cfg, train_cfg, init_from=source)
    log(
        f"fine-tuning {source['folder']}"
        + (f" (val {source['val_bpb']:.4f} bits/byte)" if source["val_bpb"] else "")
    )
    torch.manual_seed(train_cfg.seed)
    return RunParts(run_dir, data, model, train_cfg, state=None)


def resume_run(request: TrainRequest, log: Log, guard: RunGuard, world_size: int = 1) -> RunParts:
    """A stopped run's parts, refused if it cannot continue exactly or has finished."""
    run_dir = guard.existing(Path(request.resume))
    state = checkpoint.load_train_state(run_dir)
    model = checkpoint.load_model(run_dir)
    check_resume_point(run_dir, state)
    new_inputs = bool(request.data or request.preset or request.config_file)
    train_cfg = resumed_train_config(run_dir, request.overrides, model.config.to_dict(), new_inputs)
    data = recorded_data(run_dir)
    budget = plan_budget(train_cfg, model.config, len(data.tokens("train")), world_size)
    if budget.done(state["step"], state["elapsed_s"]):
        raise SLMError(
            f"{run_dir} already finished its budget (step {state['step']}); nothing to resume",
            hint=f"to train it further, start from it: slm train DATA --init-from {run_dir}",
            exit_code=EXIT_USAGE,
        )
    log(f"resuming {run_dir} at step {state['step']}")
    return RunParts(run_dir, data, model, train_cfg, state=state)


def follower_run(run_dir: Path, train_cfg: dict[str, Any], resumed: bool) -> RunParts:
    """The parts of the run rank 0 set up, for the other ranks of a torchrun job.

    They read what rank 0 wrote; a new run's weights need not match here, since DDP copies
    rank 0's to every rank when it wraps the model.
    """
    cfg = TrainConfig.from_dict(train_cfg)
    data = recorded_data(run_dir)
    if resumed:
        return RunParts(
            run_dir, data, checkpoint.load_model(run_dir), cfg, checkpoint.load_train_state(run_dir)
        )
    torch.manual_seed(cfg.seed)
    return RunParts(run_dir, data, GPT(checkpoint.load_config(run_dir)), cfg, state=None)
