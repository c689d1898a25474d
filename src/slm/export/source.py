"""The model folder being exported, read once, and where the export may be written.

Every format needs the same things from the folder: the model, its tokenizer, the chat
template if it is a chat model, and which ids start a document, end generation and pad.
slm documents begin after `<|endoftext|>`, so it is both the bos and the eos of a base model;
a chat model's assistant turn ends at `<|im_end|>`, its eos for generation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slm.chat_template import IM_END, read_template
from slm.checkpoint import check_model_folder, load_model, load_tokenizer
from slm.config import ModelConfig
from slm.errors import EXIT_USAGE, SLMError
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer


@dataclass
class ExportSource:
    """What an exporter reads from a model folder."""

    folder: Path
    model: GPT
    tokenizer: Tokenizer
    chat_template: str | None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def bos_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def eos_id(self) -> int:
        """Where generation stops: `<|im_end|>` for a chat model, else `<|endoftext|>`."""
        im_end = self.tokenizer.hf.token_to_id(IM_END) if self.chat_template else None
        return self.tokenizer.eot_id if im_end is None else im_end

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id


def read_source(folder: str | os.PathLike) -> ExportSource:
    """The model folder's model (fp32, CPU), tokenizer and chat template."""
    folder = check_model_folder(folder)
    model = load_model(folder, "cpu")
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SLMError(f"{folder}: the tokenizer has more tokens than the model")
    return ExportSource(folder, model, tokenizer, read_template(folder))


def check_out(out: str | os.PathLike, force: bool, is_folder: bool) -> Path:
    """`out` as a Path, refusing to write over an existing one without `force`."""
    out = Path(out)
    taken = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if taken and not force:
        raise SLMError(
            f"{out} already exists", hint="give another --out or add --force", exit_code=EXIT_USAGE
        )
    if is_folder and out.exists() and not out.is_dir():
        raise SLMError(
            f"--out {out} is a file; the hf format writes a folder", exit_code=EXIT_USAGE
        )
    if not is_folder and out.is_dir():
        raise SLMError(
            f"--out {out} is a folder; the gguf format writes one file", exit_code=EXIT_USAGE
        )
    return out
