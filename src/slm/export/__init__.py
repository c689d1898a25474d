"""Export: an slm model folder out to the tools that run Llama models.

- `source`: the model folder being exported (model, tokenizer, chat template, the special
  ids) and the check of where the export goes.
- `hf`: `slm export --format hf`: a folder that transformers loads with no custom code
  (config, safetensors with transformers' names, tokenizer files, generation config).
- `card`: the README model card of that folder (data, sizes, training, how to load it).
- `gguf`: `slm export --format gguf`: one GGUF file for llama.cpp, in f32, f16 or q8_0.

The slm <-> transformers weight mapping itself is `slm.hf_llama`, one layer down, because
reading an HF folder back is part of `slm.load`.
"""
