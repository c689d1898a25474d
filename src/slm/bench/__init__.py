"""The benchmark suite behind `slm bench` (and `python -m benchmarks`).

- `suite`: every figure in one run (matmul peaks, tokenizer, training, generation, the
  quality run, the serving load test) and the results files.
- `generation`: decoding speed, the decode step's parts, `slm generate`'s memory.
- `serving`: the load test of `slm serve` (concurrent clients against one at a time).
- `interop`: the same model in slm, transformers and llama.cpp: export time and size, logit
  differences, decode speed side by side.
- `measure`: repeat statistics and peak memory.
"""
