"""slm's model in transformers' Llama terms, both ways: weight names and layouts, the config,
and reading a transformers Llama folder as an slm model. A model with QK-norm maps to
transformers' Qwen3, which is that Llama with an RMSNorm on each query and key head (slm's
has no gain, so the Qwen3 gains are ones, and only gains of one are read back).

slm's model is a Llama on purpose, so the mapping is one name per tensor, with two layout
differences: slm stores q/k/v as one `qkv` matrix and gate/up as one `gate_up` matrix (one
matrix multiply instead of three or two), which are split on the way out and fused on the
way in. Both use rotate-half RoPE with the same frequencies, so no row is permuted here
(GGUF wants another order; `slm.export.gguf` permutes for it).

Reading an HF folder refuses, with the feature named, what slm's model cannot hold (rope
scaling, biases, an untied output head, another activation, a tokenizer that is not
byte-level BPE) instead of loading something that computes other logits. Weights come from
safetensors only: a folder with only `pytorch_model.bin` (a pickle) is refused. Writing the
HF folder is `slm.export.hf`'s job; `checkpoint.py` calls `load_hf_folder` for slm.load,
`slm generate` and `slm eval`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slm.config import ModelConfig
from slm.errors import SLMError
from slm.fileio import read_json
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_GENERATION_CONFIG = "generation_config.json"
ARCHITECTURE = "LlamaForCausalLM"
# A model with QK-norm is a Qwen3 in transformers' terms: a Llama whose attention scales each
# query and key head by an RMSNorm before the rotation, with tied embeddings.
QK_NORM_ARCHITECTURE = "Qwen3ForCausalLM"


# --------------------------------------------------------------------------- weight names


def _layer_names(i: int) -> dict[str, str]:
    """slm name -> HF name for the tensors of layer i that map one to one."""
    return {
        f"layers.{i}.attn_norm.weight": f"model.layers.{i}.input_layernorm.weight",
        f"layers.{i}.attn.out.weight": f"model.layers.{i}.self_attn.o_proj.weight",
        f"layers.{i}.mlp_norm.weight": f"model.layers.{i}.post_attention_layernorm.weight",
        f"layers.{i}.mlp.down.weight": f"model.layers.{i}.mlp.down_proj.weight",
    }


def to_hf_state(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """slm's state dict -> transformers' LlamaForCausalLM names, q/k/v and gate/up split.

    The output head is tied to the embedding, so there is no `lm_head.weight`
    (transformers ties it back from `tie_word_embeddings`).
    """
    q_dim = config.n_heads * config.head_dim
    kv_dim = config.n_kv_heads * config.head_dim
    out = {
        "model.embed_tokens.weight": state["tok_emb.weight"],
        "model.norm.weight": state["norm.weight"],
    }
    for i in range(config.n_layers):
        out.update({hf: state[ours] for ours, hf in _layer_names(i).items()})
        q, k, v = state[f"layers.{i}.attn.qkv.weight"].split([q_dim, kv_dim, kv_dim], dim=0)
        gate, up = state[f"layers.{i}.mlp.gate_up.weight"].split(config.d_ff, dim=0)
        prefix = f"model.layers.{i}."
        out[prefix + "self_attn.q_proj.weight"] = q
        out[prefix + "self_attn.k_proj.weight"] = k
        out[prefix + "self_attn.v_proj.weight"] = v
        out[prefix + "mlp.gate_proj.weight"] = gate
        out[prefix + "mlp.up_proj.weight"] = up
        if config.qk_norm:  # slm's QK-norm has no gain: Qwen3's gains at one
            out[prefix + "self_attn.q_norm.weight"] = torch.ones(config.head_dim)
            out[prefix + "self_attn.k_norm.weight"] = torch.ones(config.head_dim)
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in out.items()}


def from_hf_state(
    tensors: dict[str, torch.Tensor], config: ModelConfig, source: str = "weights"
) -> dict[str, torch.Tensor]:
    """transformers' Llama tensors -> slm's state dict (q/k/v and gate/up fused), as fp32.

    Refuses biases, a separate output head and tensors slm has no place for.
    """
    biases = [name for name in tensors if name.endswith(".bias")]
    if biases:
        raise _unsupported(f"biases ({biases[0]})", source)
    tensors = dict(tensors)
    head = tensors.pop("lm_head.weight", None)
    embedding = tensors.get("model.embed_tokens.weight")
    if head is not None and (embedding is None or not torch.equal(head, embedding)):
        raise _unsupported("an output head separate from the embedding (untied lm_head)", source)
    state: dict[str, torch.Tensor] = {}
    wanted = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(config.n_layers):
        wanted.update(_layer_names(i))
    for ours, hf in wanted.items():
        state[ours] = _take(tensors, hf, source)
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        parts = [_take(tensors, p + f"self_attn.{n}_proj.weight", source) for n in "qkv"]
        state[f"layers.{i}.attn.qkv.weight"] = torch.cat(parts, dim=0)
        parts = [_take(tensors, p + f"mlp.{n}_proj.weight", source) for n in ("gate", "up")]
        state[f"layers.{i}.mlp.gate_up.weight"] = torch.cat(parts, dim=0)
        if config.qk_norm:
            for n in ("q", "k"):
                gain = _take(tensors, p + f"self_attn.{n}_norm.weight", source)
                if not torch.all(gain == 1):
                    raise _unsupported(
                        f"learned query/key norm gains ({p}self_attn.{n}_norm)", source
                    )
    # Buffers some transformers versions save (rotary inv_freq) are a function of the config.
    leftover = [name for name in tensors if not name.endswith("rotary_emb.inv_freq")]
    if leftover:
        raise _unsupported(f"tensors slm's Llama has no place for ({leftover[:3]})", source)
    return {name: t.to(torch.float32).contiguous() for name, t in state.items()}


def _take(tensors: dict[str, torch.Tensor], name: str, source: str) -> torch.Tensor:
    if name not in tensors:
        raise SLMError(f"{source} lacks the tensor {name}", hint="is this a Llama checkpoint?")
    return tensors.pop(name)


# --------------------------------------------------------------------------- the config


def to_hf_config(config: ModelConfig, bos_id: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    """config.json for transformers' LlamaForCausalLM with slm's shape.

    `rope_theta` is written both the transformers 4 way (top level) and the 5 way
    (`rope_parameters`), so either version reads it.
    """
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
        **(_qwen3_keys(config) if config.qk_norm else {}),
    }


def _qwen3_keys(config: ModelConfig) -> dict[str, Any]:
    """What makes the config a Qwen3 one: its architecture, and every layer full attention."""
    return {
        "architectures": [QK_NORM_ARCHITECTURE],
        "model_type": "qwen3",
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.n_layers,
        "layer_types": ["full_attention"] * config.n_layers,
    }


def is_hf_folder(folder: str | os.PathLike) -> bool:
    """True if `folder/config.json` describes a transformers model rather than an slm one."""
    path = Path(folder) / HF_CONFIG_FILE
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # the slm reader reports a damaged config.json
    return isinstance(data, dict) and "architecture" not in data and "model_type" in data


def from_hf_config(data: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """A transformers Llama config.json -> slm's ModelConfig; refuses what slm cannot hold."""
    model_type = data.get("model_type")
    if model_type not in ("llama", "qwen3"):
        raise _unsupported(f"model_type {model_type!r} (slm reads llama and qwen3)", source)
    if data.get("use_sliding_window"):
        raise _unsupported("sliding-window attention (use_sliding_window: true)", source)
    rope = data.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if data.get("rope_scaling") or rope_type != "default":
        scaling = data.get("rope_scaling") or rope
        raise _unsupported(f"rope scaling ({scaling})", source)
    for key, feature in (("attention_bias", "attention biases"), ("mlp_bias", "MLP biases")):
        if data.get(key):
            raise _unsupported(f"{feature} ({key}: true)", source)
    if data.get("hidden_act", "silu") != "silu":
        act = data["hidden_act"]
        raise _unsupported(f"the activation {act!r} (slm's SwiGLU uses silu)", source)
    if not data.get("tie_word_embeddings", False):
        raise _unsupported("an untied output head (tie_word_embeddings: false)", source)
    d_model, n_heads = data["hidden_size"], data["num_attention_heads"]
    head_dim = data.get("head_dim") or d_model // n_heads
    if head_dim * n_heads != d_model:
        raise _unsupported(f"head_dim {head_dim} != hidden_size / num_attention_heads", source)
    fields = {
        "vocab_size": data["vocab_size"],
        "context_len": data.get("max_position_embeddings", 2048),
        "d_model": d_model,
        "n_layers": data["num_hidden_layers"],
        "n_heads": n_heads,
        "n_kv_heads": data.get("num_key_value_heads") or n_heads,
        "d_ff": data["intermediate_size"],
        "rope_theta": float(rope.get("rope_theta", data.get("rope_theta", 10000.0))),
        "norm_eps": float(data.get("rms_norm_eps", 1e-6)),
        "qk_norm": model_type == "qwen3",
    }
    return ModelConfig(**fields)


def _unsupported(feature: str, source: str) -> SLMError:
    return SLMError(
        f"{source}: slm's model cannot hold {feature}",
        hint="slm imports plain Llama (and Qwen3) models: tied embeddings, default RoPE, no biases",
    )


# --------------------------------------------------------------------------- reading a folder


@dataclass
class HFImport:
    """An HF Llama folder read as slm objects: the model (eval mode) and its tokenizer."""

    config: ModelConfig
    model: GPT
    tokenizer: Tokenizer


def load_hf_folder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> HFImport:
    """Read a transformers Llama folder (config.json, safetensors, tokenizer.json) into slm.

    The one conversion from HF into slm: `slm.load`, `slm generate`, `slm eval` and
    `slm train --init-from` all come through here.
    """
    folder = Path(folder)
    data = read_json(folder / HF_CONFIG_FILE, "model config")
    if not isinstance(data, dict):
        raise SLMError(f"model config is corrupt: {folder / HF_CONFIG_FILE}")
    source = str(folder / HF_CONFIG_FILE)
    try:
        config = from_hf_config(data, source)
    except KeyError as exc:
        raise SLMError(f"{source} lacks the key {exc}", hint="is this a Llama config?") from exc
    tokenizer = load_hf_tokenizer(folder, data)
    model = GPT(config)
    state = from_hf_state(read_hf_weights(folder), config, str(folder))
    mismatch = [k for k, v in model.state_dict().items() if state[k].shape != v.shape]
    if mismatch:
        raise SLMError(
            f"{folder}: {mismatch[0]} has shape {tuple(state[mismatch[0]].shape)}, the config "
            f"says {tuple(model.state_dict()[mismatch[0]].shape)}"
        )
    model.load_state_dict(state)
    return HFImport(config, model.to(device).eval(), tokenizer)


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s), sharded or not."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / HF_WEIGHTS_INDEX
    if index.is_file():
        data = read_json(index, "safetensors index")
        files = sorted(set(data.get("weight_map", {}).values())) if isinstance(data, dict) else []
    elif (folder / HF_WEIGHTS_FILE).is_file():
        files = [HF_WEIGHTS_FILE]
    else:
        pickles = (folder / "pytorch_model.bin").is_file()
        raise SLMError(
            f"{folder} has no {HF_WEIGHTS_FILE}"
            + (" (only pytorch_model.bin, a pickle slm does not load)" if pickles else ""),
            hint="save the model with safetensors: model.save_pretrained(DIR)",
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            tensors.update(load_file(str(folder / name)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SLMError(f"weights file is corrupt: {folder / name} ({exc})") from exc
    return tensors


def load_hf_tokenizer(folder: Path, config: dict[str, Any]) -> Tokenizer:
    """The folder's tokenizer.json, with the end and pad tokens the HF config names.

    slm's token bytes, streaming and bits per byte assume byte-level BPE (GPT-2, Llama 3,
    SmolLM); a sentencepiece-style vocabulary (Llama 2's `▁` and byte fallback) is refused.
    """
    path = folder / HF_TOKENIZER_FILE
    if not path.is_file():
        spm = (folder / "tokenizer.model").is_file()
        raise SLMError(
            f"{folder} has no {HF_TOKENIZER_FILE}"
            + (" (only tokenizer.model: a sentencepiece tokenizer)" if spm else ""),
            hint="slm reads byte-level BPE tokenizers saved as tokenizer.json",
        )
    spec = read_json(path, "tokenizer")
    if not isinstance(spec, dict) or "ByteLevel" not in _types(spec.get("pre_tokenizer")):
        feature = "a tokenizer that is not byte-level BPE (sentencepiece style)"
        raise _unsupported(feature, str(path))
    generation = folder / HF_GENERATION_CONFIG
    extra = read_json(generation, "generation config") if generation.is_file() else {}
    eos = _first_id(extra.get("eos_token_id")) if isinstance(extra, dict) else None
    eos = eos if eos is not None else _first_id(config.get("eos_token_id"))
    if eos is None:
        raise SLMError(f"{folder}: no eos_token_id in config.json or generation_config.json")
    pad = _first_id(config.get("pad_token_id"))
    return Tokenizer.from_file(path, eot_id=eos, pad_id=eos if pad is None else pad)


def _first_id(value: Any) -> int | None:
    """An id from a config field that may be an int, a list of ints or null."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def _types(node: Any) -> set[str]:
    """Every `type` named in a tokenizer.json part, through Sequences."""
    if isinstance(node, dict):
        found = {node["type"]} if isinstance(node.get("type"), str) else set()
        for child in node.get("pretokenizers", []) or []:
            found |= _types(child)
        return found
    return set()
