"""Generation: prompt in, text out, one token at a time.

- `generation`: `Generation` / `generate()`: prefill, the decode loop with a KV cache, the
  sliding window past the context, several samples in one batch.
- `decode_step`: the lean one-token step (the model's arithmetic for one new token).
- `sampling`: temperature, top-k, top-p, min-p, repetition penalty, as pure functions.
- `stream_text`: token ids to complete UTF-8 text as it arrives, and stop strings.
"""
