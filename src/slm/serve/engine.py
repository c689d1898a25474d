"""The serving engine: one thread owns the model and decodes every active request together.

What it builds is continuous batching over one shared KV cache:

- The cache has `max_batch` rows. A request for `n` samples holds `n` rows from the step
  after it arrives until it finishes or is cancelled; then the rows are free at once.
- Each turn of the loop (numbered in `Engine._turn`): drop cancelled requests; admit waiting
  requests while rows are free (first come, first served: a big request at the head is not
  overtaken), prefilling each prompt alone through `GPT.forward` and copying its keys into
  its rows; then one decode step for every active row with `DecodeStep.at_positions`, rows
  standing at different positions; then each request draws its next tokens from its own
  rows with its own settings and random generator (`slm.generation.sampling`) and turns them
  into text (`SampleText`: whole characters, stop strings).
- Past the context a request's rows re-prefill their kept tail alone, by `window_start`'s
  rule, so a request decodes the same tokens as `Generation` would give it alone (up to float
  rounding in the masked attention; greedy output is checked equal in the tests).

What it leaves out: a prompt is prefilled alone while the other rows wait (a 128-token
prefill of seed-2.5m costs about as much as ten decode steps); rows are not compacted, so
a step computes every row up to the highest one in use; there is no paged cache. The HTTP
side (`app.py`) never touches torch: it submits `Request`s and reads the `Event`s each one
emits through its `emit` callback, called from the engine's thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from slm.api import LoadedModel
from slm.config import SampleConfig
from slm.generation.decode_step import DecodeStep
from slm.generation.generation import crop_prompt, window_start
from slm.generation.sampling import make_generator, sample_next_token
from slm.generation.stream_text import Piece, SampleText
from slm.model import KVCache

DEFAULT_MAX_BATCH = 32  # rows of the shared cache: seed-2.5m's take 50 MB at context 256
DEFAULT_MAX_WAITING = 256  # requests queued beyond the batch before new ones are refused


@dataclass(frozen=True)
class Finished:
    """The last event of a request: its token counts (`cancelled`: the client left)."""

    prompt_tokens: int
    completion_tokens: int
    cancelled: bool = False


@dataclass(frozen=True)
class Failed:
    """The engine could not finish the request; `message` says why (no traceback)."""

    message: str


Event = Piece | Finished | Failed


@dataclass(eq=False)
class Request:
    """One prompt to continue: `settings.num_samples` samples, events through `emit`.

    `emit` is called from the engine's thread: it must be quick and thread-safe (the app
    hands each event to its event loop with `call_soon_threadsafe`).
    """

    prompt: str
    settings: SampleConfig
    emit: Callable[[Event], None]
    cancelled: bool = False


class Busy(Exception):
    """The queue is full: the caller should answer "try again later" (HTTP 503)."""


@dataclass
class EngineStats:
    """Counters since the engine started; read by /health, the tests and the benchmark."""

    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    steps: int = 0  # batched decode steps
    rows_decoded: int = 0  # sum over steps of the rows in use (mean batch = rows / steps)
    peak_rows: int = 0  # most rows in use in one step
    peak_requests: int = 0  # most requests decoded together in one step
    tokens: int = 0  # completion tokens drawn, every request together

    @property
    def mean_rows(self) -> float:
        return self.rows_decoded / self.steps if self.steps else 0.0


@dataclass(eq=False)
class _Active:
    """A request while it holds rows: its token buffer, window and samples."""

    request: Request
    rows: list[int]
    rows_t: torch.Tensor
    ids: torch.Tensor  # (n, prompt + max_new_tokens): what the rows have seen and drawn
    length: int  # tokens in `ids` so far
    prompt_tokens: int
    samples: list[SampleText]
    generator: torch.Generator
    start: int = 0  # first position of the window (moves when the context is full)

    @property
    def done(self) -> bool:
        return all(sample.done for sample in self.samples)


class Engine:
    """The model, its shared cache and the thread that decodes; see the module docstring.

    engine = Engine(slm.load("runs/NAME")).start()
    engine.submit(Request("Once", SampleConfig(max_new_tokens=20), print))
    ...
    engine.close()
    """

    def __init__(
        self,
        model: LoadedModel,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ):
        gpt = getattr(model.model, "_orig_mod", model.model)
        param = next(gpt.parameters())
        self.model = gpt
        self.tokenizer = model.tokenizer
        self.device = param.device
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.context_len = gpt.config.context_len
        self.vocab_size = min(self.tokenizer.vocab_size, gpt.config.vocab_size)
        self.cache = KVCache(gpt.config, max_batch, device=self.device, dtype=param.dtype)
        self.decode = DecodeStep(gpt, self.cache)
        self.stats = EngineStats()
        self._free = list(range(max_batch))
        self._waiting: deque[Request] = deque()
        self._active: list[_Active] = []
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="slm-engine", daemon=True)

    # ----------------------------------------------------------------- the caller's side

    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; requests still open get `Failed`."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def submit(self, request: Request) -> Request:
        """Queue a request; it joins the batch at the next step that has rows for it."""
        if request.settings.num_samples > self.max_batch:
            raise ValueError(f"n={request.settings.num_samples} exceeds max_batch={self.max_batch}")
        with self._wake:
            if self._closing:
                raise Busy("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(request)
            self._wake.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request (its client left); its rows are freed before the next step."""
        with self._wake:
            request.cancelled = True
            self._wake.notify()

    @property
    def active(self) -> int:
        """Requests holding rows now."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # ----------------------------------------------------------------- the engine's thread

    def _run(self) -> None:
        with torch.inference_mode():  # thread-local: entered here, in the thread that decodes
            while True:
                with self._wake:
                    while not (self._closing or self._waiting or self._active):
                        self._wake.wait()
                    if self._closing:
                        break
                try:
                    self._turn()
                except Exception as exc:  # a bug in slm: fail the open requests, keep serving
                    self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
        self._fail_all("the server is shutting down")

    def _turn(self) -> None:
        # 1. Requests whose client left give their rows back.
        for active in [a for a in self._active if a.request.cancelled]:
            self._release(active, cancelled=True)
        # 2. Admit waiting requests in order while their rows are free.
        while True:
            with self._wake:
                if not self._waiting:
                    break
                head = self._waiting[0]
                if head.cancelled:
                    self._waiting.popleft()
                    self.stats.cancelled += 1
                    continue
                if head.settings.num_samples > len(self._free):
                    break
                self._waiting.popleft()
                rows = sorted(self._free)[: head.settings.num_samples]  # lowest rows: a short step
                self._free = [r for r in self._free if r not in rows]
            self._admit(head, rows)
        # 3. One step for every active row, then each request draws from its own rows.
        if self._active:
            self._step()

    def _admit(self, request: Request, rows: list[int]) -> None:
        """Encode and prefill the prompt alone, copy its keys into `rows`, draw first tokens."""
        self.stats.admitted += 1
        settings = request.settings
        ids = self.tokenizer.encode(request.prompt) or [self.tokenizer.eot_id]
        ids = crop_prompt(ids, self.context_len, warn=None)  # the usage counts say so
        n, length = settings.num_samples, len(ids)
        buffer = torch.zeros(n, length + settings.max_new_tokens, dtype=torch.long)
        buffer[:, :length] = torch.tensor(ids)
        active = _Active(
            request,
            rows,
            torch.tensor(rows, device=self.device),
            buffer.to(self.device),
            length,
            length,
            [SampleText(self.tokenizer, settings.stop, settings.max_new_tokens) for _ in range(n)],
            make_generator(settings.seed, self.device),
        )
        one = KVCache(self.model.config, 1, length, device=self.device, dtype=self.cache.k.dtype)
        logits = self.model(active.ids[:1, :length], one, last_only=True)[:, -1]
        self.cache.k[:, active.rows_t, :, :length] = one.k  # (L, 1, KV, T, hd) broadcast to n
        self.cache.v[:, active.rows_t, :, :length] = one.v
        self._active.append(active)
        self._advance(active, self._choose(active, logits))

    def _step(self) -> None:
        """Decode one token for every active request: one batched step, re-prefills apart."""
        batched, sliding = [], []
        for active in self._active:
            start = window_start(active.start, active.length, self.context_len)
            (sliding if start != active.start else batched).append((active, start))
        for active, start in sliding:
            # The window is full: re-prefill the kept tail from position 0 (as Generation).
            window = active.ids[:, start : active.length]
            fresh = KVCache(
                self.model.config, len(active.rows), device=self.device, dtype=self.cache.k.dtype
            )
            logits = self.model(window, fresh, last_only=True)[:, -1]
            width = window.shape[1]
            self.cache.k[:, active.rows_t, :, :width] = fresh.k[:, :, :, :width]
            self.cache.v[:, active.rows_t, :, :width] = fresh.v[:, :, :, :width]
            active.start = start
            self._advance(active, self._choose(active, logits))
        if batched:
            rows = 1 + max(max(a.rows) for a, _ in batched)
            tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
            positions = torch.zeros(rows, dtype=torch.long, device=self.device)
            longest = 0
            for active, _ in batched:
                position = active.length - 1 - active.start  # where the newest token goes
                tokens[active.rows_t] = active.ids[:, active.length - 1]
                positions[active.rows_t] = position
                longest = max(longest, position + 1)
            logits = self.decode.at_positions(tokens, positions, longest)
            in_use = sum(len(a.rows) for a, _ in batched)
            self._count_step(in_use, len(batched))
            for active, _ in batched:
                self._advance(active, self._choose(active, logits[active.rows_t]))
        for active in [a for a in self._active if a.done]:
            self._release(active)

    def _choose(self, active: _Active, logits: torch.Tensor) -> list[int]:
        """Draw each sample's next token from its (n or 1, model vocab) logits."""
        settings = active.request.settings
        logits = logits[:, : self.vocab_size].clone()
        logits[:, self.tokenizer.pad_id] = -math.inf
        if settings.ignore_eot:
            logits[:, sorted(self.tokenizer.end_ids)] = -math.inf
        logits = logits.expand(settings.num_samples, -1)
        context = None
        if settings.repetition_penalty != 1.0:
            context = active.ids[:, active.start : active.length]
        tokens = sample_next_token(logits, settings, active.generator, context)
        active.ids[:, active.length] = tokens
        active.length += 1
        return tokens.tolist()

    def _advance(self, active: _Active, tokens: list[int]) -> None:
        """Each sample's new token becomes text; emit it, and the end of a finished sample."""
        emit = active.request.emit
        for index, (sample, token) in enumerate(zip(active.samples, tokens, strict=True)):
            if sample.done:
                continue
            self.stats.tokens += 1
            text = sample.advance(token)
            if sample.done:
                emit(Piece(index, text, sample.finish_reason))
            elif text:
                emit(Piece(index, text))

    def _release(self, active: _Active, cancelled: bool = False) -> None:
        self._active.remove(active)
        with self._wake:
            self._free.extend(active.rows)
        if cancelled:
            self.stats.cancelled += 1
        else:
            self.stats.finished += 1
        completion = sum(len(sample.tokens) for sample in active.samples)
        active.request.emit(Finished(active.prompt_tokens, completion, cancelled))

    def _count_step(self, rows: int, requests: int) -> None:
        stats = self.stats
        stats.steps += 1
        stats.rows_decoded += rows
        stats.peak_rows = max(stats.peak_rows, rows)
        stats.peak_requests = max(stats.peak_requests, requests)

    def _fail_all(self, message: str) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for active in list(self._active):
            self._active.remove(active)
            self._free.extend(active.rows)
            waiting.append(active.request)
        for request in waiting:
            self.stats.failed += 1
            request.emit(Failed(message))


def wait_idle(engine: Engine, timeout_s: float = 10.0) -> bool:
    """Block until no request is active or waiting (tests and benchmarks)."""
    deadline = time.monotonic() + timeout_s
    while engine.active or engine.waiting:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
