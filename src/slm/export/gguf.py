"""`slm export --format gguf`: one GGUF file that llama.cpp runs as a `llama` model, or,
for a model with QK-norm (the default), as a `qwen3` one: the same tensors plus a norm gain
of ones for each query and key head, with rows in slm's own rotate-half order.

Written with the `gguf` package (llama.cpp's own Python writer). What goes in:

1. The `llama` hyperparameters (context, widths, heads, RMSNorm eps, RoPE theta).
2. slm's tokenizer as a GPT-2 style BPE (`tokenizer.ggml.model = gpt2`): every token in id
   order in its byte-level spelling, the merges, the specials marked as control tokens, and
   the `gpt-2` pre-tokenizer, whose split is the one slm's ByteLevel pre-tokenizer makes.
   No bos is added to encoded text, as in slm.
3. The weights under llama.cpp's names, q/k/v and gate/up split. llama.cpp's `llama`
   architecture rotates adjacent pairs (2i, 2i+1) where slm (like HF Llama) rotates i with
   i + head_dim/2, so the rows of each q and k head are interleaved to match (the same
   reordering llama.cpp's converter applies to HF Llama checkpoints). No `output.weight`:
   llama.cpp reuses the token embedding when it is absent, as slm ties them.

`--dtype` f32 keeps every weight as trained; f16 halves the matrices; q8_0 stores them in
blocks of 32 int8 values with one f16 scale (~8.5 bits a weight). Norm gains stay f32 in
all three, as llama.cpp's converter keeps them. The tests run the file in llama.cpp.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import numpy as np
import torch

from slm.errors import EXIT_USAGE, SLMError
from slm.export.hf import ExportResult
from slm.export.source import ExportSource, check_out, read_source
from slm.fileio import atomic_path
from slm.hf_llama import to_hf_state

GGUFDType = Literal["f32", "f16", "q8_0"]
GGUF_DTYPES: tuple[str, ...] = ("f32", "f16", "q8_0")
Q8_BLOCK = 32  # values per q8_0 block: a row's length must be a multiple of it

# transformers' per-layer names -> llama.cpp's (`blk.{i}.` prefixed).
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "self_attn.q_norm": "attn_q_norm",  # QK-norm models (qwen3) only
    "self_attn.k_norm": "attn_k_norm",
}


def export_gguf(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "f32",
    force: bool = False,
) -> ExportResult:
    """Write the model folder `model_dir` as the GGUF file `out`, atomically."""
    if dtype not in GGUF_DTYPES:
        raise SLMError(
            f"unknown --dtype {dtype!r} for gguf",
            hint=f"choose from {', '.join(GGUF_DTYPES)}",
            exit_code=EXIT_USAGE,
        )
    gguf = _import_gguf()
    start = time.perf_counter()
    out = check_out(out, force, is_folder=False)
    source = read_source(model_dir)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), architecture(source))
        _write_hyperparameters(writer, source, dtype, gguf)
        _write_tokenizer(writer, source, gguf)
        for name, array in gguf_tensors(source):
            _add_tensor(writer, name, array, dtype, gguf)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return ExportResult(out, out.stat().st_size, time.perf_counter() - start)


def architecture(source: ExportSource) -> str:
    """llama.cpp's `qwen3` is its `llama` with an RMSNorm on each query and key head."""
    return "qwen3" if source.config.qk_norm else "llama"


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise SLMError(
            "the gguf format needs the gguf package", hint="pip install 'slm[export]'"
        ) from exc
    return gguf


def _write_hyperparameters(writer: Any, source: ExportSource, dtype: str, gguf: Any) -> None:
    c = source.config
    writer.add_name(source.folder.name)
    writer.add_context_length(c.context_len)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.d_ff)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(writer: Any, source: ExportSource, gguf: Any) -> None:
    tokens, types = vocabulary(source, gguf)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges(source))
    writer.add_bos_token_id(source.bos_id)
    writer.add_eos_token_id(source.eos_id)
    writer.add_pad_token_id(source.pad_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if source.chat_template:
        writer.add_chat_template(source.chat_template)


def vocabulary(source: ExportSource, gguf: Any) -> tuple[list[str], list[int]]:
    """Tokens in id order (byte-level spelling) and their GGUF types.

    Added tokens marked special (`<|endoftext|>`, `<|pad|>`, the chat tokens) are control
    tokens, which llama.cpp never makes out of plain text; rows of the embedding past the
    tokenizer's vocabulary get unused placeholders, since GGUF wants one token per row.
    """
    hf = source.tokenizer.hf
    by_id = {i: t for t, i in hf.get_vocab(with_added_tokens=True).items()}
    added = hf.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(source.config.vocab_size):
        if i in added:
            tokens.append(added[i].content)
            special = added[i].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"<|unused_{i}|>")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types


def merges(source: ExportSource) -> list[str]:
    """The BPE merges as "left right" strings, in rank order."""
    import json

    model = json.loads(source.tokenizer.hf.to_str())["model"]
    # tokenizers < 0.20 saved each merge as "a b", later versions as ["a", "b"].
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def gguf_tensors(source: ExportSource) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, fp32 array) for every weight, q and k rows in GGUF's rope order."""
    c = source.config
    hf = to_hf_state(source.model.state_dict(), c)
    out = [
        ("token_embd.weight", hf.pop("model.embed_tokens.weight")),
        ("output_norm.weight", hf.pop("model.norm.weight")),
    ]
    interleave = architecture(source) == "llama"  # qwen3 rotates halves, as slm does
    for i in range(c.n_layers):
        for ours, theirs in _LAYER_NAMES.items():
            name = f"model.layers.{i}.{ours}.weight"
            if name not in hf and theirs in ("attn_q_norm", "attn_k_norm"):
                continue  # a model without QK-norm
            tensor = hf.pop(name)
            if theirs == "attn_q" and interleave:
                tensor = interleave_rope_rows(tensor, c.n_heads)
            elif theirs == "attn_k" and interleave:
                tensor = interleave_rope_rows(tensor, c.n_kv_heads)
            out.append((f"blk.{i}.{theirs}.weight", tensor))
    assert not hf, f"unmapped tensors: {list(hf)}"
    return [(name, t.numpy()) for name, t in out]


def interleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half pairs (i, i + d/2) to adjacent (2i, 2i+1).

    Rows of one head [r0, r1, r2, r3] (d = 4) become [r0, r2, r1, r3].
    """
    rows, cols = weight.shape
    head_dim = rows // n_heads
    halves = weight.reshape(n_heads, 2, head_dim // 2, cols)  # (head, half, i, cols)
    return halves.transpose(1, 2).reshape(rows, cols).contiguous()


def _add_tensor(writer: Any, name: str, array: np.ndarray, dtype: str, gguf: Any) -> None:
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, array)
    elif dtype == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
    else:  # f16, and q8_0 rows that do not split into blocks (llama.cpp's converter does too)
        writer.add_tensor(name, array.astype(np.float16))
