"""Generation: prompt in, text out, one token at a time.

- `generation`: `Generation` / `generate()`: prefill, the decode loop with a KV cache, the
  sliding window past the context, several samples in one batch.
- `decode_step`: the lean one-token step in torch (the model's arithmetic for one new token),
  for any device and dtype, and for rows at different positions (the server).
- `cpu_step`: the same step in numpy for a float32 model on the CPU, the fastest there for
  batches.
- `compiled_step` (with `kernels`, compiled by numba): the batch-1 step as one compiled
  function, ~1.8x faster than numpy's; what `slm generate` and `slm chat` run on a CPU.
- `steps`: `lean_step`, which of the three a generation runs.
- `sampling`: temperature, top-k, top-p, min-p, repetition penalty, as pure functions.
- `stream_text`: token ids to complete UTF-8 text as it arrives, and stop strings.
"""
