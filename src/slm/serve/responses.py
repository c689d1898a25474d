"""One HTTP request's generation: its engine requests, and their events as a response.

`Run` submits one engine request per prompt and turns the events the engine emits (on its
own thread) into an async stream on this event loop; `collect` makes the whole JSON answer
of it, `stream` the server-sent events. Leaving early (the client disconnected) cancels
what is still decoding. The routes are `app.py`'s, the shapes `protocol.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from slm.config import SampleConfig
from slm.serve import protocol
from slm.serve.engine import Engine, Failed, Finished
from slm.serve.engine import Request as EngineRequest

DISCONNECT_POLL_S = 0.25  # how often a request waiting on tokens checks its client is there


class Run:
    """The engine requests behind one HTTP request (one per prompt), and their events.

    Events arrive on the engine's thread; `emit` hands them to this event loop's queue.
    Choice indexes follow OpenAI: prompt p's sample j is choice p * n + j.
    """

    def __init__(self, engine: Engine, prompts: list[str], settings: SampleConfig):
        self.engine, self.prompts, self.settings = engine, prompts, settings
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.requests: list[EngineRequest] = []
        self.open = len(prompts)
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def submit(self) -> None:
        for offset, prompt in enumerate(self.prompts):
            request = EngineRequest(
                prompt, self.settings, self._emitter(offset * self.settings.num_samples)
            )
            self.requests.append(self.engine.submit(request))

    def _emitter(self, offset: int) -> Any:
        def emit(event: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (offset, event))

        return emit

    async def events(self, request: Request) -> AsyncIterator[tuple[int, Any]]:
        """(choice index, Piece) until every prompt has finished; usage is then set.

        Leaving early (the client went away, or the generator is closed) cancels whatever
        is still decoding.
        """
        checked = time.monotonic()
        try:
            while self.open:
                # Tokens may arrive faster than the poll: check the client by the clock.
                if time.monotonic() - checked > DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return
                try:
                    offset, event = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    continue
                if isinstance(event, Finished):
                    self.open -= 1
                    self.prompt_tokens += event.prompt_tokens
                    self.completion_tokens += event.completion_tokens
                elif isinstance(event, Failed):
                    raise protocol.APIError(500, event.message)
                else:
                    yield offset + event.sample, event
        finally:
            if self.open:
                for r in self.requests:
                    self.engine.cancel(r)

    def usage(self) -> dict:
        return protocol.usage(self.prompt_tokens, self.completion_tokens)


async def collect(run: Run, request: Request, name: str, chat: bool) -> dict:
    count = len(run.prompts) * run.settings.num_samples
    texts, reasons = [[] for _ in range(count)], [None] * count
    async for index, piece in run.events(request):
        texts[index].append(piece.text)
        reasons[index] = piece.finish_reason or reasons[index]
    choice = protocol.chat_choice if chat else protocol.completion_choice
    choices = [choice(i, "".join(texts[i]), reasons[i]) for i in range(count)]
    kind, prefix = ("chat.completion", "chatcmpl") if chat else ("text_completion", "cmpl")
    return protocol.envelope(kind, protocol.new_id(prefix), name, choices, usage=run.usage())


async def stream(
    run: Run, request: Request, name: str, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of text, finish chunks, then `[DONE]`.

    Usage comes on the chunk that finishes the last choice (so every stream reports it), and,
    with `stream_options.include_usage`, also on a last chunk with no choices, as OpenAI does.
    """
    kind, id_ = (
        ("chat.completion.chunk", protocol.new_id("chatcmpl"))
        if chat
        else (
            "text_completion",
            protocol.new_id("cmpl"),
        )
    )
    total = len(run.prompts) * run.settings.num_samples

    def chunk(choices: list[dict], **extra: Any) -> str:
        return f"data: {json.dumps(protocol.envelope(kind, id_, name, choices, **extra))}\n\n"

    if chat:
        for i in range(total):
            yield chunk([protocol.chat_delta(i, {"role": "assistant", "content": ""}, None)])
    pending = None  # the latest finish chunk, held back: the last one carries the usage
    try:
        async for index, piece in run.events(request):
            if piece.text:
                if chat:
                    yield chunk([protocol.chat_delta(index, {"content": piece.text}, None)])
                else:
                    yield chunk([protocol.completion_choice(index, piece.text, None)])
            if piece.finish_reason:
                if pending:
                    yield chunk(pending, usage=None)
                if chat:
                    pending = [protocol.chat_delta(index, {}, piece.finish_reason)]
                else:
                    pending = [protocol.completion_choice(index, "", piece.finish_reason)]
    except protocol.APIError as exc:
        yield f"data: {json.dumps(protocol.error_body(exc.message, 'server_error'))}\n\n"
        return
    if pending:
        yield chunk(pending, usage=run.usage())
    if include_usage:
        yield chunk([], usage=run.usage())
    yield "data: [DONE]\n\n"
