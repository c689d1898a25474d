"""Serving: `slm serve MODEL_DIR`, OpenAI's HTTP API and a playground page on one server.

- `engine`: the thread that owns the model and decodes every active request together
  (continuous batching over one shared KV cache).
- `app`: the FastAPI app (`create_app`): routes, the API key, limits, errors, streaming.
- `responses`: one request's generation relayed as a JSON answer or server-sent events.
- `protocol`: OpenAI's request and response shapes, error bodies and `APIError`.
- `card`: the model card the page shows (size, training tokens, val bits per byte, losses).
- `playground.html`: the page at `/` (HTML, CSS and JS inline: no build step, no CDN).
"""
