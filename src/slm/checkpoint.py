"""The model folder on disk: what is in it, how it is written and read back.

A run folder is a model folder: `config.json` (the ModelConfig), `model.safetensors` (the
weights), `tokenizer.json`, `meta.json` (the prepared data's statistics), and, for runs,
`train_state.pt` (optimizer, step, RNG states) so training can resume. All checkpoint I/O
and all fixes for older formats live here.

Loading never executes code from a file: weights come from safetensors and the train state
through `torch.load(weights_only=True)`. A transformers Llama folder (its config.json has a
`model_type`) loads too, converted by `slm.hf_llama`, wherever a model folder is read.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from slm import __version__
from slm.config import ModelConfig
from slm.errors import SLMError
from slm.fileio import atomic_path, check_format_version, read_json, write_json
from slm.hf_llama import is_hf_folder, load_hf_folder, load_hf_tokenizer
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
TRAIN_STATE_FILE = "train_state.pt"
TRAIN_CONFIG_FILE = "train_config.json"
CONFIG_FORMAT_VERSION = 1
ARCHITECTURE = "slm-llama"


def save_config(folder: str | os.PathLike, config: ModelConfig) -> None:
    payload = {"format_version": CONFIG_FORMAT_VERSION, "architecture": ARCHITECTURE}
    payload.update(config.to_dict())
    payload["slm_version"] = __version__
    write_json(Path(folder) / CONFIG_FILE, payload)


def load_config(folder: str | os.PathLike) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    data = read_json(path, "model config")
    if not isinstance(data, dict):
        raise SLMError(f"model config is corrupt: {path} (not a JSON object)")
    check_format_version(data, CONFIG_FORMAT_VERSION, path, "model config")
    if data.get("architecture") != ARCHITECTURE:
        raise SLMError(f"{path} describes a {data.get('architecture')!r} model, not an slm model")
    fields = {
        k: v for k, v in data.items() if k not in ("format_version", "architecture", "slm_version")
    }
    fields.setdefault("qk_norm", False)  # models saved before the setting had none
    try:
        return ModelConfig.from_dict(fields, source=str(path))
    except TypeError as exc:
        raise SLMError(f"model config is corrupt: {path} ({exc})") from exc


def save_weights(
    folder: str | os.PathLike, model: GPT, metadata: dict[str, str] | None = None
) -> None:
    """Write the weights as fp32 safetensors, atomically.

    The output head is tied to the embedding and is not a separate tensor, so nothing is
    stored twice.
    """
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper saves as its module
    tensors = _fp32_tensors(model)
    with atomic_path(Path(folder) / WEIGHTS_FILE) as tmp:
        meta = {"format": "pt", "slm_version": __version__, **(metadata or {})}
        save_file(tensors, str(tmp), metadata=meta)


def save_model(folder: str | os.PathLike, model: GPT) -> None:
    """Config and weights: enough to rebuild the model (the tokenizer is copied by callers)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_config(folder, model.config)
    save_weights(folder, model)


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """Rebuild a model from a model folder; a missing or corrupt folder is one clear error."""
    folder = check_model_folder(folder)
    if is_hf_folder(folder):
        return load_hf_folder(folder, device).model
    config = load_config(folder)
    path = folder / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SLMError(f"weights file is corrupt: {path} ({exc})") from exc
    model = GPT(config)
    mismatch = _state_mismatch(model.state_dict(), tensors)
    if mismatch:
        raise SLMError(f"weights in {path} do not match {folder / CONFIG_FILE}", hint=mismatch)
    model.load_state_dict(tensors)
    return model.to(device).eval()


def load_tokenizer(folder: str | os.PathLike) -> Tokenizer:
    """The model folder's tokenizer (for an HF folder, with the end token its config names)."""
    folder = Path(folder)
    if is_hf_folder(folder):
        return load_hf_tokenizer(folder, read_json(folder / CONFIG_FILE, "model config"))
    return Tokenizer.from_file(folder / TOKENIZER_FILE)


def load_model_and_tokenizer(
    folder: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[GPT, Tokenizer]:
    """The model and its tokenizer, refused together if the tokenizer is not the weights'."""
    model = load_model(folder, device)
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SLMError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}",
            hint="the tokenizer.json does not belong to these weights",
        )
    return model, tokenizer


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What differs between the tensors a config implies and those in a file ("" if nothing).

    Checked before `load_state_dict`, which raises a bare RuntimeError on a changed shape
    (say vocab_size edited in config.json) and only lists missing or unexpected names.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    resized = [k for k in expected if k in found and found[k].shape != expected[k].shape]
    problems = []
    if resized:
        name = resized[0]
        problems.append(
            f"{name} has shape {tuple(found[name].shape)} in the weights file but "
            f"{tuple(expected[name].shape)} by the config"
            + (f" (and {len(resized) - 1} more)" if len(resized) > 1 else "")
        )
    if missing:
        problems.append(f"missing: {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected: {unexpected[:3]}")
    return "; ".join(problems)


def check_model_folder(folder: str | os.PathLike) -> Path:
    """The folder as a Path, after checking it holds a config, weights and a tokenizer."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SLMError(
            f"model folder not found: {folder}", hint="give a run folder from `slm train`"
        )
    if is_hf_folder(folder):
        return folder  # its reader names the file that is missing (shards, tokenizer)
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise SLMError(
                f"{folder} is not a model folder: {name} is missing",
                hint="a run folder gets its weights at the first checkpoint of `slm train`",
            )
    return folder


def save_checkpoint(
    folder: str | os.PathLike, model: GPT, state: dict[str, Any], step: int
) -> None:
    """Weights and train state of one step, both tagged with it.

    Both files are written and flushed under temporary names first and only then renamed
    into place, one right after the other, so an interruption leaves the previous pair or
    the new one (resume checks the two steps agree).
    """
    folder = Path(folder)
    model = getattr(model, "_orig_mod", model)
    tensors = _fp32_tensors(model)
    meta = {"format": "pt", "slm_version": __version__, "step": str(step)}
    try:
        with (
            atomic_path(folder / WEIGHTS_FILE) as weights_tmp,
            atomic_path(folder / TRAIN_STATE_FILE) as state_tmp,
        ):
            save_file(tensors, str(weights_tmp), metadata=meta)
            torch.save(state, state_tmp)
    except OSError as exc:  # disk full, folder not writable: the old pair is untouched
        # weights + AdamW's two moments, all fp32: about three times the weights
        needed_mb = 3 * sum(t.numel() * 4 for t in tensors.values()) / 1e6
        raise SLMError(
            f"cannot write the checkpoint of step {step} to {folder}: {exc.strerror or exc}",
            hint=f"it needs about {needed_mb:.0f} MB free there; the previous checkpoint is "
            f"intact: make room, then `slm train --resume {folder}`",
        ) from exc


def _fp32_tensors(model: GPT) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }


def save_train_state(folder: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_path(Path(folder) / TRAIN_STATE_FILE) as tmp:
        torch.save(state, tmp)


def load_train_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / TRAIN_STATE_FILE
    if not path.is_file():
        raise SLMError(
            f"cannot resume: {path} not found", hint="resume needs a run folder from `slm train`"
        )
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a damaged pickle
        unsafe = "Weights only load failed" in str(exc)
        why = "it holds objects other than tensors; refused" if unsafe else str(exc)[:200]
        raise SLMError(
            f"train state is corrupt or unsafe: {path} ({why})",
            hint="slm loads only plain tensors and numbers from it, never code; "
            "a run folder from `slm train` has such a file",
        ) from exc
