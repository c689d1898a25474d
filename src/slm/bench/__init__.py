"""The benchmark suite behind `slm bench` (and `python -m benchmarks`).

- `suite`: every figure in one run (matmul peaks, tokenizer, training, generation, the
  quality run) and the results files.
- `generation`: decoding speed, the decode step's parts, `slm generate`'s memory.
- `interop`: the same model in slm, transformers and llama.cpp: export time and size, logit
  differences, decode speed side by side.
- `measure`: repeat statistics and peak memory.
"""
