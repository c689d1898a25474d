"""The Python API: `slm.load(folder)` -> a model object to generate with and score text.

Owns `LoadedModel`, the notebook-facing wrapper around a model and its tokenizer. Reading
the folder is `checkpoint.py`'s job, the decode loop `generate.py`'s, the sampling settings
`config.py`'s and bits per byte `evaluate.py`'s.

    import slm
    model = slm.load("runs/NAME")
    model.generate("Once upon a time", max_new_tokens=50, seed=1)   # -> str
    for piece in model.stream("To be"):                             # complete UTF-8 pieces
        print(piece, end="")
    model.complete("To be", num_samples=3).completions               # text, tokens, timings
    model.score("Some held-out text")                                # bits per byte

Generation options are the fields of `SampleConfig` (max_new_tokens, temperature, top_k,
top_p, min_p, repetition_penalty, seed, num_samples, stop, ignore_eot).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slm.chat_template import Message, read_template, render, transcript
from slm.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    check_model_folder,
    load_model_and_tokenizer,
)
from slm.config import ModelConfig, SampleConfig, sample_config
from slm.device import resolve_device
from slm.errors import EXIT_USAGE, SLMError
from slm.evaluate import EvalResult, evaluate_windows, plan_windows, token_byte_lengths
from slm.generation.generation import Generation, GenerationResult, Warn
from slm.model import GPT
from slm.tokenizer.bpe import Tokenizer


def load(path: str | os.PathLike, device: str = "auto", warn: Warn | None = None) -> LoadedModel:
    """Load a model folder (a run folder, or any folder with its config.json,
    model.safetensors and tokenizer.json; a transformers Llama folder too), or a file inside one.

    A missing or damaged folder raises one `SLMError` that names the file at fault.
    Warnings (a prompt cropped to the context) go to `warn`; by default to `warnings.warn`.
    """
    folder = Path(path)
    if folder.is_file() and folder.name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        folder = folder.parent
    folder = check_model_folder(folder)
    model, tokenizer = load_model_and_tokenizer(folder, resolve_device(device))
    return LoadedModel(model, tokenizer, folder, warn)


def _python_warning(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


class LoadedModel:
    """A model and its tokenizer, ready to generate and score; see the module docstring."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        folder: Path | None = None,
        warn: Warn | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.folder = folder
        self.warn: Warn = warn or _python_warning

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @functools.cached_property
    def chat_template(self) -> str | None:
        """The folder's chat template (HF Jinja form), or None for a base model."""
        return read_template(self.folder) if self.folder else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LoadedModel({str(self.folder)!r}, vocab_size={c.vocab_size}, "
            f"context_len={c.context_len}, d_model={c.d_model}, n_layers={c.n_layers}, "
            f"device={self.device.type!r})"
        )

    # ----------------------------------------------------------------- generation

    def generation(
        self,
        prompt: str = "",
        settings: SampleConfig | None = None,
        use_cache: bool = True,
        **options: Any,
    ) -> Generation:
        """A lazy `Generation`: iterate it for `Piece`s of every sample, then read `.result`."""
        settings = sample_config(settings, **options)
        return Generation(self.model, self.tokenizer, prompt, settings, self.warn, use_cache)

    def complete(self, prompt: str = "", **options: Any) -> GenerationResult:
        """Every sample's text, tokens and finish reason, with timings."""
        generation = self.generation(prompt, **options)
        for _ in generation:
            pass
        assert generation.result is not None
        return generation.result

    def generate(self, prompt: str = "", **options: Any) -> str:
        """The continuation of `prompt` (without the prompt) as one string."""
        _one_sample(options, "generate")
        return self.complete(prompt, **options).text

    def stream(self, prompt: str = "", **options: Any) -> Iterator[str]:
        """The continuation in pieces as they are decoded, each one complete UTF-8."""
        _one_sample(options, "stream")
        for piece in self.generation(prompt, **options):
            if piece.text:
                yield piece.text

    # ----------------------------------------------------------------- chat

    def chat_prompt(self, messages: list[Message], max_new_tokens: int = 200) -> str:
        """The conversation as prompt text, ready for the assistant's next turn.

        A chat-tuned model gets its template (after `<|endoftext|>`, as in training); a base
        model a plain "User: / Assistant:" transcript. The oldest turns are dropped, whole,
        until the prompt leaves room for the reply (up to half the context); system messages
        and the last message always stay.
        """
        room = self.config.context_len - min(max_new_tokens, self.config.context_len // 2)
        system = [m for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        while True:
            prompt = self._format_chat(system + turns)
            if len(turns) <= 1 or len(self.tokenizer.encode(prompt)) <= room:
                return prompt
            turns = turns[1:]
            while len(turns) > 1 and turns[0]["role"] != "user":  # a turn starts with the user
                turns = turns[1:]

    def _format_chat(self, messages: list[Message]) -> str:
        if self.chat_template is None:
            return transcript(messages)
        return self.tokenizer.hf.id_to_token(self.tokenizer.eot_id) + render(
            self.chat_template, messages
        )

    def chat_generation(
        self, messages: list[Message], settings: SampleConfig | None = None, **options: Any
    ) -> Generation:
        """A lazy `Generation` of the assistant's next turn (it stops at `<|im_end|>`)."""
        settings = sample_config(settings, **options)
        prompt = self.chat_prompt(messages, settings.max_new_tokens)
        if self.chat_template is None:  # a base model: stop where it would write the next turn
            settings = sample_config(settings, stop=(*settings.stop, "\nUser:"))
        return self.generation(prompt, settings)

    def chat(self, messages: list[Message], **options: Any) -> str:
        """The assistant's reply to `messages` ({"role", "content"} dicts) as one string."""
        _one_sample(options, "chat")
        generation = self.chat_generation(messages, **options)
        for _ in generation:
            pass
        assert generation.result is not None
        return generation.result.text.strip()

    # ----------------------------------------------------------------- scoring

    def evaluate(self, text: str, stride: int | None = None) -> EvalResult:
        """Loss, perplexity and bits per byte of `text`, read as one document.

        The text is scored after `<|endoftext|>` (the start of a document), so every one
        of its bytes is predicted. Longer texts are scored in windows of the context
        length; a smaller `stride` gives each token more context (slower).
        """
        ids = [self.tokenizer.eot_id, *self.tokenizer.encode(text)]
        if len(ids) < 2:
            raise SLMError("nothing to score: the text is empty", exit_code=EXIT_USAGE)
        try:
            windows = plan_windows(len(ids), self.config.context_len, stride)
        except ValueError as exc:
            raise SLMError(f"--stride: {exc}", exit_code=EXIT_USAGE) from exc
        tokens = np.asarray(ids, dtype=np.int64)
        return evaluate_windows(self.model, tokens, windows, self._byte_lengths, device=self.device)

    def score(self, text: str, stride: int | None = None) -> float:
        """Bits per byte of `text`: lower is better, comparable across tokenizers."""
        return self.evaluate(text, stride).bpb

    @functools.cached_property
    def _byte_lengths(self) -> np.ndarray:
        return token_byte_lengths(self.tokenizer)


def _one_sample(options: dict[str, Any], method: str) -> None:
    if options.get("num_samples", 1) != 1:
        raise SLMError(
            f"{method}() gives one continuation, not num_samples={options['num_samples']}",
            hint="use complete(prompt, num_samples=N).completions for several",
            exit_code=EXIT_USAGE,
        )
