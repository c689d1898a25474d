"""Generation: a prompt in, continuations out, one token per step with a KV cache.

Owns the loop around the model: encoding (and left-cropping) the prompt, prefilling it in
one forward pass, decoding `num_samples` independent continuations together as one batch,
sliding the window once the cache is full, ending each sample (end of text, stop string,
length), and timing. Choosing each token is `sampling.py`'s job; turning a sample's tokens
into whole characters and spotting stop strings is `stream_text.py`'s; the cache itself
(`KVCache`) lives in `model.py`; loading a folder lives in `api.py`.

    result = generate(model, tokenizer, "Once upon a time", SampleConfig(seed=1))
    for piece in Generation(model, tokenizer, "Once", SampleConfig()): print(piece.text)

The library never prints: warnings (a cropped prompt) go to the `warn` callback.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slm.config import SampleConfig, sample_config
from slm.device import torch_threads
from slm.generation import compiled_step
from slm.generation.compiled_step import CompiledDecodeStep
from slm.generation.cpu_step import CpuDecodeStep
from slm.generation.sampling import make_generator, sample_next_token
from slm.generation.steps import compiled_suits, lean_step, worth_loading_compiled
from slm.generation.stream_text import Completion, Piece, SampleText
from slm.model import GPT, KVCache
from slm.tokenizer.bpe import Tokenizer

Warn = Callable[[str], None]


@dataclass(frozen=True)
class GenerationResult:
    completions: tuple[Completion, ...]
    prompt_tokens: int  # tokens the model was given, after cropping (an empty prompt is 1)
    time_to_first_token_s: float  # prompt encoding + prefill + the first draw
    elapsed_s: float

    @property
    def text(self) -> str:
        """The first (often the only) continuation."""
        return self.completions[0].text

    @property
    def new_tokens(self) -> int:
        return sum(c.new_tokens for c in self.completions)

    @property
    def tokens_per_s(self) -> float:
        """New tokens of all samples per second of wall time, prefill included."""
        return self.new_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --------------------------------------------------------------------------- the window


def slide_keep(context_len: int) -> int:
    """Tokens kept (and re-prefilled) when generation runs past the context: half of it.

    Keeping more leaves more context for the next tokens but re-prefills more often. For
    seed-2.5m on one thread, 512 tokens past a full 256-token window ran at 930 tokens/s keeping
    1/2, 842 keeping 3/4 and 685 keeping 7/8, against ~1,130 inside the window (a 128-token
    prefill costs 6.5 ms, about 10 decode steps through `GPT.forward`). Those runs predate the
    lean step of `slm.generation.decode_step`, which makes a re-prefill worth ~16 steps: keeping
    more would cost more still.
    """
    return max(1, context_len // 2)


def window_start(start: int, length: int, context_len: int) -> int:
    """First position the model sees when predicting from tokens[:length].

    The window grows with the sequence until it would exceed `context_len`; then it jumps
    forward to keep the last `slide_keep` tokens. The uncached path follows the same rule,
    so cached and uncached generation see exactly the same tokens.

    >>> [window_start(0, n, 8) for n in (8, 9)]
    [0, 5]
    """
    if length - start > context_len:
        return length - slide_keep(context_len)
    return start


def crop_prompt(ids: list[int], context_len: int, warn: Warn | None) -> list[int]:
    """Keep the last `context_len` prompt tokens, saying so when that drops any."""
    if len(ids) <= context_len:
        return ids
    if warn:
        warn(
            f"prompt has {len(ids)} tokens, more than the model's context of {context_len}; "
            f"using its last {context_len}"
        )
    return ids[-context_len:]


SMALL_MODEL_PARAMS = 20_000_000  # below this, batch-1 decoding gains nothing from threads


def decode_threads(n_params: int, num_samples: int, cores: int) -> int:
    """CPU threads for generation: 1 for a small model at batch 1, else every core.

    At batch 1 a small model's matrix products are too small to share out: seed-2.5m's
    generation ran at 1,212 tokens/s with 2 threads and 1,133 with 1 on an idle 2-core
    EPYC. But a core busy with anything else stalls every parallel region: on the same
    machine under load, 2 threads gave 90 tokens/s against 758 with 1 (and a p99 step of
    30 ms against 1.4 ms). Batches and bigger models have enough arithmetic per op for
    threads to pay. TODO: measure the crossover size on an idle many-core CPU.
    """
    if num_samples == 1 and n_params < SMALL_MODEL_PARAMS:
        return 1
    return cores


# --------------------------------------------------------------------------- the tensors


class _Decoder:
    """The tensor side: a (B, prompt + new) buffer of ids, the KV cache and the window.

    Every tensor operation runs under `torch.inference_mode()` inside `prefill`/`step`, not
    across the caller's loop, so a notebook iterating a stream keeps autograd as it was.
    """

    def __init__(
        self,
        model: GPT,
        prompt_ids: list[int],
        settings: SampleConfig,
        vocab_size: int,
        banned: list[int],
        use_cache: bool,
    ):
        param = next(model.parameters())
        device = param.device
        self.model = model
        self.settings = settings
        self.context_len = model.config.context_len
        self.vocab_size = vocab_size  # the tokenizer's; a padded model head may be larger
        self.batch = settings.num_samples
        self.length = len(prompt_ids)
        self.start = 0
        with torch.inference_mode():
            total = self.length + settings.max_new_tokens
            self.ids = torch.zeros(self.batch, total, dtype=torch.long, device=device)
            self.ids[:, : self.length] = torch.tensor(prompt_ids, device=device)
            self.banned = torch.tensor(banned, dtype=torch.long, device=device)
        self.cache = (
            KVCache(model.config, self.batch, device=device, dtype=param.dtype)
            if use_cache
            else None
        )
        self.decode = (
            lean_step(model, self.cache, settings.max_new_tokens)
            if self.cache is not None
            else None
        )
        self.generator = make_generator(settings.seed, device)
        # Greedy on the CPU needs no torch between tokens: the CPU steps take and give numpy,
        # and an argmax in numpy is ~3 us a token against ~25 us for the same few torch ops
        # (with the compiled step, a seed-2.5m token costs ~290 us in all).
        self.numpy_greedy = (
            device.type == "cpu" and settings.greedy and settings.repetition_penalty == 1.0
        )
        self.numpy_decode = None
        if self.numpy_greedy:
            self.ids_np, self.banned_np = self.ids.numpy(), self.banned.numpy()  # shared memory
            self.numpy_decode = getattr(self.decode, "numpy_logits", None)
        # The numpy step stands in while the compiled one loads (`steps.lean_step`): move
        # over at the first token after it is ready. Both read and write the same cache.
        self.awaits_compiled = isinstance(self.decode, CpuDecodeStep) and compiled_suits(
            model, self.cache
        )
        self.load_started = False
        # Sampling in torch after a numpy step: numpy's BLAS threads own the cores, and
        # torch's would spin against them (batch 8 on 2 cores: 658 tokens/s with both pools
        # at 2, 4,347 with torch at 1).
        self.sample_on_one_thread = isinstance(self.decode, CpuDecodeStep) and not (
            self.numpy_greedy
        )

    @torch.inference_mode()
    def prefill(self) -> list[int]:
        """Run the prompt in one forward pass; return each sample's first token."""
        prompt = self.ids[:1, : self.length]  # all samples share the prompt: compute it once
        if self.cache is None:
            return self._choose(self.model(prompt, last_only=True)[:, -1])
        k = self.cache.k
        one = KVCache(self.model.config, 1, self.length, device=k.device, dtype=k.dtype)
        logits = self.model(prompt, one, last_only=True)[:, -1]
        # (n_layers, 1, KV, T, hd) broadcasts into every sample's rows of the batch cache.
        self.cache.k[:, :, :, : self.length] = one.k
        self.cache.v[:, :, :, : self.length] = one.v
        self.cache.pos = self.length
        return self._choose(logits)

    def step(self) -> list[int]:
        """Feed the newest tokens; return each sample's next token."""
        if self.awaits_compiled:
            self._await_compiled_step()
        start = window_start(self.start, self.length, self.context_len)
        if self.numpy_decode is not None and start == self.start:
            return self._argmax(self.numpy_decode(self.ids_np[:, self.length - 1]))
        return self._torch_step(start)

    def _await_compiled_step(self) -> None:
        """Start loading the compiled step once it pays (after the first token, which the
        loading would slow: 0.30 s to the first token of `small` became 0.48), and move
        over at the first step after it is ready."""
        if not compiled_step.is_loaded():
            if not self.load_started and worth_loading_compiled():
                compiled_step.load_in_background(self.model)
                self.load_started = True
            return
        self.awaits_compiled = False
        self.decode = CompiledDecodeStep(self.model, self.decode.cache)
        if self.numpy_decode is not None:
            self.numpy_decode = self.decode.numpy_logits
        self.sample_on_one_thread = False

    @torch.inference_mode()
    def _torch_step(self, start: int) -> list[int]:
        if self.decode is None:  # no cache: recompute the whole window
            logits = self.model(self.ids[:, start : self.length], last_only=True)[:, -1]
        elif start != self.start:
            # The cache is full: re-prefill the kept tail into it from position 0 (RoPE
            # positions are absolute, so the old keys cannot just be shifted).
            self.decode.cache.reset()
            window = self.ids[:, start : self.length]
            logits = self.model(window, self.decode.cache, last_only=True)[:, -1]
        else:
            logits = self.decode(self.ids[:, self.length - 1])  # the lean path
        self.start = start
        with torch_threads(1) if self.sample_on_one_thread else contextlib.nullcontext():
            return self._choose(logits)

    def _choose(self, logits: torch.Tensor) -> list[int]:
        """Sample from the (B or 1, model vocab) logits of the newest position."""
        if self.numpy_greedy:
            return self._argmax(logits.numpy())
        logits = logits[:, : self.vocab_size]
        logits.index_fill_(-1, self.banned, -math.inf)
        logits = logits.expand(self.batch, -1)
        context = None
        if self.settings.repetition_penalty != 1.0:
            context = self.ids[:, self.start : self.length]
        tokens = sample_next_token(logits, self.settings, self.generator, context)
        self.ids[:, self.length] = tokens
        self.length += 1
        return tokens.tolist()  # the one host round trip per step: stop checks need ids

    def _argmax(self, logits: np.ndarray) -> list[int]:
        """`_choose` for greedy decoding on the CPU, in numpy: the same ids."""
        logits = logits[:, : self.vocab_size]
        logits[:, self.banned_np] = -np.inf
        tokens = logits.argmax(axis=-1)
        if len(tokens) != self.batch:  # the prefill's one row, for every sample
            tokens = tokens.repeat(self.batch)
        self.ids_np[:, self.length] = tokens
        self.length += 1
        return tokens.tolist()


# --------------------------------------------------------------------------- the loop


class Generation:
    """One generation, run lazily: iterate it for `Piece`s, then read `.result`.

    Nothing happens until iteration starts; `.result` is set once the iterator is
    exhausted (it stays None if the caller stops early, e.g. on Ctrl-C). Samples that
    finish early stay in the batch (their rows are computed and ignored) so the others
    never wait for a cache reshuffle.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        prompt: str = "",
        settings: SampleConfig | None = None,
        warn: Warn | None = None,
        use_cache: bool = True,
    ):
        self.model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: its module
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.settings = settings or SampleConfig()
        self.warn = warn
        self.use_cache = use_cache
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[Piece]:
        return self._run()

    def _run(self) -> Iterator[Piece]:
        # 1. Encode; an empty prompt starts a fresh document; keep the last context_len.
        settings, tokenizer = self.settings, self.tokenizer
        started = time.perf_counter()
        ids = tokenizer.encode(self.prompt) or [tokenizer.eot_id]
        ids = crop_prompt(ids, self.model.config.context_len, self.warn)
        banned = [tokenizer.pad_id] + (sorted(tokenizer.end_ids) if settings.ignore_eot else [])
        decoder = _Decoder(
            self.model,
            ids,
            settings,
            min(tokenizer.vocab_size, self.model.config.vocab_size),
            banned,
            self.use_cache,
        )
        samples = [
            SampleText(tokenizer, settings.stop, settings.max_new_tokens)
            for _ in range(settings.num_samples)
        ]
        # 2. Prefill, then one token per step until every sample has finished.
        tokens = decoder.prefill()
        first_token_s = time.perf_counter() - started
        for step in range(settings.max_new_tokens):
            if step:
                tokens = decoder.step()
            now = time.perf_counter() - started
            for index, (sample, token) in enumerate(zip(samples, tokens, strict=True)):
                if sample.done:
                    continue
                text = sample.advance(token)
                if sample.done:
                    sample.elapsed_s = now
                    yield Piece(index, text, sample.finish_reason)
                elif text:
                    yield Piece(index, text)
            if all(sample.done for sample in samples):
                break
        # 3. Collect.
        self.result = GenerationResult(
            tuple(sample.completion() for sample in samples),
            len(ids),
            first_token_s,
            time.perf_counter() - started,
        )


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str = "",
    settings: SampleConfig | None = None,
    warn: Warn | None = None,
    use_cache: bool = True,
) -> GenerationResult:
    """Run a generation to the end; see `Generation` for streaming."""
    generation = Generation(model, tokenizer, prompt, settings, warn, use_cache)
    for _ in generation:
        pass
    assert generation.result is not None
    return generation.result


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str = "",
    warn: Warn | None = None,
    device: Any = None,
    **options: Any,
) -> str:
    """One continuation as text; `options` are `SampleConfig` fields.

    `device` is accepted for callers that track it; the model's own device is used.
    """
    del device  # inputs follow the model's parameters
    return generate(model, tokenizer, prompt, sample_config(**options), warn).text
