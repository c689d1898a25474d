"""Starting a run from a trained model (`slm train DATA --init-from MODEL_DIR`).

    slm train notes/ --init-from runs/base --out runs/notes          # continue on new text
    slm prepare --chat chats.jsonl --tokenizer runs/base/tokenizer.json --out data/chat
    slm train data/chat --init-from runs/base --out runs/chat        # chat fine-tuning

This module owns what differs from a run from scratch: the source model (its config,
weights and tokenizer), the defaults of a fine-tune, the check that the new data speaks the
source's tokens, growing the embedding when a chat tokenizer added tokens, and the record
of where the run came from. The loop itself is `slm.training.loop`'s.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from slm import checkpoint
from slm.config import ModelConfig, TrainConfig
from slm.errors import EXIT_USAGE, SLMError
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer
from slm.training.metrics import METRICS_FILE, read_metrics

# A fine-tune starts from weights that already model language: a peak rate ~7x below the
# from-scratch 2e-3 keeps more of what they know. Measured by benchmarks/bench_finetune.py
# (tiny model, Shakespeare -> Python's docs, 200 steps; 2026-11-29): lr 3e-4 took the new
# text from 6.75 to 2.84 bits per byte and cost 0.42 on Shakespeare; lr 2e-3 reached 2.25
# but cost 0.96. A short warmup only has to settle AdamW's moment estimates. Weight decay
# made no difference over 200 steps (2.840 vs 2.841); off, it cannot pull the learned weights
# towards zero on a longer fine-tune.
FINETUNE_DEFAULTS: dict[str, Any] = {
    # what benchmarks/bench_finetune.py measured these defaults with
    "optimizer": "adamw",
    "lr_schedule": "cosine",
    "min_lr_ratio": 0.1,
    "lr": 3e-4,
    "warmup_steps": 20,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
}
# With no budget given, a fine-tune makes two passes over the new data.
FINETUNE_EPOCHS = 2.0


def load_source(folder: str) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The source model, its tokenizer, and the record of where a fine-tune came from."""
    path = checkpoint.check_model_folder(folder)
    model = checkpoint.load_model(path)  # an slm model folder, or a transformers Llama folder
    tokenizer = checkpoint.load_tokenizer(path)
    record = {
        "folder": str(path.resolve()),
        "weights_sha256": _sha256(path / checkpoint.WEIGHTS_FILE),
        "val_bpb": _last_val_bpb(path),
    }
    return model, tokenizer, record


def check_same_tokens(source: Tokenizer, data: Tokenizer, data_folder: Path) -> None:
    """Refuse data tokenized by another tokenizer: its ids would mean other text."""
    if not source.same_base(data):
        raise SLMError(
            f"{data_folder} was prepared with another tokenizer than the model's",
            hint="give the raw text instead (slm tokenizes it with the model's tokenizer), or "
            "prepare it with --tokenizer MODEL_DIR/tokenizer.json",
            exit_code=EXIT_USAGE,
        )


def grow_vocab(model: GPT, vocab_size: int) -> GPT:
    """The model with its embedding (and so the tied output head) grown to `vocab_size` rows.

    New rows (the chat tokens) start as the mean of the existing rows: their first logits
    are then an average token's rather than noise with a scale of its own, and the loss on
    `<|im_end|>` starts near the loss of the other tokens instead of far above it.
    """
    old = model.config.vocab_size
    if vocab_size <= old:
        return model
    config = ModelConfig.from_dict({**model.config.to_dict(), "vocab_size": vocab_size})
    grown = GPT(config)
    state = model.state_dict()
    emb = state["tok_emb.weight"]
    new_rows = emb.mean(dim=0, keepdim=True).expand(vocab_size - old, -1)
    state["tok_emb.weight"] = torch.cat([emb, new_rows])
    grown.load_state_dict(state)
    return grown


def finetune_settings(file_and_flags: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune defaults under the user's settings (a config file and flags win)."""
    settings = {**FINETUNE_DEFAULTS, **file_and_flags}
    if not TrainConfig.from_dict(settings).has_budget:
        settings["epochs"] = FINETUNE_EPOCHS
    return settings


def refuse_shape_changes(model_settings: dict[str, Any], source: ModelConfig) -> None:
    """A fine-tune keeps the source's shape; a flag that would change it is a usage error."""
    changed = sorted(
        k for k, v in model_settings.items() if k != "vocab_size" and getattr(source, k) != v
    )
    if changed:
        raise SLMError(
            "--init-from keeps the model's shape: "
            + ", ".join(f"--{k.replace('_', '-')}" for k in changed)
            + " cannot change",
            hint="drop those flags, or train a new model from scratch",
            exit_code=EXIT_USAGE,
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _last_val_bpb(folder: Path) -> float | None:
    """The source run's last validation bits per byte, if it was a run folder."""
    path = folder / METRICS_FILE
    records = read_metrics(path) if path.is_file() else []
    values = [r["val_bpb"] for r in records if isinstance(r, dict) and "val_bpb" in r]
    return values[-1] if values else None
