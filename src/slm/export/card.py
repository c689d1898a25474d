"""The README model card of an HF export: what the model is, what it was trained on, how well
it does, and how to load it.

Everything comes from the model folder as `slm train` leaves it: `meta.json` (the prepared
data's sources and counts), `metrics.jsonl` (training tokens, the last validation bits per
byte) and the config. A folder without them (a bare model folder) gets "not recorded".
"""

from __future__ import annotations

import json
from typing import Any

from slm import __version__
from slm.export.source import ExportSource
from slm.model import count_parameters
from slm.training.metrics import read_metrics

NOT_RECORDED = "not recorded"


def model_card(source: ExportSource, hf_config: dict[str, Any]) -> str:
    c = source.config
    data = _data_lines(source)
    training = _training_lines(source)
    chat = (
        "It is chat-tuned: its chat template (ChatML) is in `tokenizer_config.json`, and "
        "generation ends at `<|im_end|>`.\n"
        if source.chat_template
        else ""
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [slm, llama]
---

# {source.folder.name}

A small Llama-style language model trained with [slm](https://github.com/) {__version__},
exported as a plain `{hf_config["architectures"][0]}` (no custom code). {chat}
## Model

| | |
|---|---|
| parameters | {count_parameters(source.model):,} (output head tied to the embedding) |
| layers / d_model / heads / kv heads | {c.n_layers} / {c.d_model} / {c.n_heads} / {c.n_kv_heads} |
| SwiGLU width (d_ff) | {c.d_ff} |
| context | {c.context_len} tokens |
| vocabulary | {c.vocab_size} (byte-level BPE; `<|endoftext|>` separates documents) |
| RoPE theta / RMSNorm eps | {c.rope_theta:g} / {c.norm_eps:g} |

## Data

{data}

## Training

{training}

Bits per byte is the validation loss in bits divided by the UTF-8 bytes of the validation
text: it does not depend on the tokenizer, so any two models compare on it.

## How to load it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=50, do_sample=True, temperature=0.8)
print(tokenizer.decode(out[0]))
```

slm reads this folder back as it is: `slm generate PATH "ROMEO:"` or `slm.load("PATH")`.
Encoded text gets no bos token: a document's text follows `<|endoftext|>` (id
{hf_config["bos_token_id"]}) in training, so start a prompt with it for a fresh document.
"""


def _data_lines(source: ExportSource) -> str:
    path = source.folder / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        sources = ", ".join(f"`{s['source']}`" for s in meta["sources"])
        splits = meta["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"Training data: {NOT_RECORDED}."
    lines = [
        f"Sources: {sources}.",
        "",
        "| split | documents | tokens | bytes |",
        "|---|---|---|---|",
    ]
    for name, stats in splits.items():
        lines.append(
            f"| {name} | {stats['documents']:,} | {stats['tokens']:,} | {stats['bytes']:,} |"
        )
    return "\n".join(lines)


def _training_lines(source: ExportSource) -> str:
    path = source.folder / "metrics.jsonl"
    records = read_metrics(path) if path.is_file() else []
    steps = [r for r in records if "tokens" in r]
    evals = [r for r in records if "val_bpb" in r]
    tokens = f"{steps[-1]['tokens']:,}" if steps else NOT_RECORDED
    step = f"{steps[-1].get('step', '?')}" if steps else NOT_RECORDED
    bpb = f"{evals[-1]['val_bpb']:.3f}" if evals else NOT_RECORDED
    return (
        f"| | |\n|---|---|\n| optimizer steps | {step} |\n| training tokens | {tokens} |\n"
        f"| validation bits per byte (last evaluation) | {bpb} |"
    )
