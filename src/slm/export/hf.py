"""`slm export --format hf`: a folder that transformers loads as a plain LlamaForCausalLM.

    model = AutoModelForCausalLM.from_pretrained(DIR)     # no trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(DIR)

The folder holds `config.json`, `model.safetensors` (transformers' names: q/k/v and gate/up
split, no lm_head since it is tied), `tokenizer.json` (slm's own file, unchanged),
`tokenizer_config.json` (the special tokens, no bos added, the chat template of a chat
model), `special_tokens_map.json`, `generation_config.json` and a README model card
(`card`). The weight and config mapping is `slm.hf_llama`'s; this module writes the files.
The tests check the result with transformers itself: logits, greedy tokens and token ids.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm import __version__
from slm.export.card import model_card
from slm.export.source import ExportSource, check_out, read_source
from slm.fileio import atomic_path, write_json, write_text
from slm.hf_llama import to_hf_config, to_hf_state


@dataclass
class ExportResult:
    """Where an export went, how big it is and how long it took."""

    path: Path
    size_bytes: int
    time_s: float


def export_hf(
    model_dir: str | os.PathLike, out: str | os.PathLike, force: bool = False
) -> ExportResult:
    """Write the model folder `model_dir` as a transformers Llama folder `out`.

    Each file is written atomically; with `force`, files of the same names in `out` are
    replaced and any others left alone.
    """
    start = time.perf_counter()
    out = check_out(out, force, is_folder=True)
    source = read_source(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_hf_folder(source, out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return ExportResult(out, size, time.perf_counter() - start)


def write_hf_folder(source: ExportSource, out: Path) -> None:
    from safetensors.torch import save_file

    config = source.config
    tensors = to_hf_state(source.model.state_dict(), config)
    with atomic_path(out / "model.safetensors") as tmp:
        # transformers reads metadata "format": "pt" as "saved from PyTorch".
        save_file(tensors, str(tmp), metadata={"format": "pt", "slm_version": __version__})
    hf_config = to_hf_config(config, source.bos_id, source.eos_id, source.pad_id)
    write_json(out / "config.json", hf_config)
    write_json(out / "generation_config.json", generation_config(source))
    source.tokenizer.save(out / "tokenizer.json")
    write_json(out / "tokenizer_config.json", tokenizer_config(source))
    write_json(out / "special_tokens_map.json", _special_tokens(source))
    write_text(out / "README.md", model_card(source, hf_config))


def generation_config(source: ExportSource) -> dict[str, Any]:
    """What `model.generate` stops at: the chat model's `<|im_end|>` and `<|endoftext|>`."""
    eos: int | list[int] = source.eos_id
    if source.eos_id != source.tokenizer.eot_id:
        eos = [source.eos_id, source.tokenizer.eot_id]
    return {
        "bos_token_id": source.bos_id,
        "eos_token_id": eos,
        "pad_token_id": source.pad_id,
    }


def tokenizer_config(source: ExportSource) -> dict[str, Any]:
    """tokenizer_config.json: the generic fast tokenizer over slm's tokenizer.json.

    No bos or eos is added to encoded text (slm's ids for a text are its tokens alone), and
    decoding does not "clean up" spaces, so decode(encode(s)) == s as in slm.
    """
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_tokens(source),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": source.config.context_len,
    }
    if source.chat_template:
        config["chat_template"] = source.chat_template
    return config


def _special_tokens(source: ExportSource) -> dict[str, str]:
    token = source.tokenizer.hf.id_to_token
    return {
        "bos_token": token(source.bos_id),
        "eos_token": token(source.eos_id),
        "pad_token": token(source.pad_id),
        "unk_token": token(source.tokenizer.eot_id),  # byte-level BPE never needs it
    }
