"""The HTTP server: `create_app(model)` -> a FastAPI app with OpenAI's endpoints and the page.

Routes: `GET /` (the playground, `playground.html`), `GET /health`, `GET /card` (the model
card), `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (both stream
with `"stream": true` as server-sent events ending in `data: [DONE]`). Shapes are
`protocol.py`'s, relaying a generation as a response `responses.py`'s; decoding is the
engine's (`engine.py`), on its own thread: the event loop only validates, submits, and
relays events, so it never waits on torch.

Safety: the CLI binds to 127.0.0.1 unless told otherwise; with an API key every `/v1/` route
and `/card` answer 401 without `Authorization: Bearer KEY`; bodies, `max_tokens`, `n` and
the queue are bounded; every error is an OpenAI error body (`{"error": {...}}`), and an
unexpected one is a 500 that says only "internal error" (the traceback goes to the log).

    app = create_app(slm.load("runs/NAME"), api_key="secret")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from slm.errors import SLMError

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException
except ImportError as _missing:  # the optional extra: one clear line, not a traceback
    raise SLMError(
        f"slm serve needs FastAPI and uvicorn ({_missing.name} is missing)",
        hint="pip install 'slm[serve]'",
    ) from _missing

from slm.api import LoadedModel
from slm.config import SampleConfig
from slm.serve import protocol
from slm.serve.card import model_card
from slm.serve.engine import DEFAULT_MAX_BATCH, Busy, Engine
from slm.serve.protocol import APIError
from slm.serve.responses import Run, collect, stream

log = logging.getLogger("slm.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 1_000_000  # ~250k tokens of prompt: far past any context here
    max_tokens: int = 4096
    max_n: int = 16
    default_chat_tokens: int = 256  # OpenAI's chat default is "until done"; past the context
    # the window slides forever, so slm stops at this many unless max_tokens says otherwise


def create_app(
    model: LoadedModel,
    api_key: str | None = None,
    name: str | None = None,
    limits: Limits | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    engine: Engine | None = None,
) -> FastAPI:
    """The FastAPI app serving `model`; its engine starts and stops with the app's lifespan.

    `app.state.engine` is the engine (its `stats` tell how requests were batched).
    """
    name = name or (model.folder.name if model.folder else "slm")
    limits = limits or Limits()
    engine = engine or Engine(model, max_batch=max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.close()

    app = FastAPI(title=f"slm: {name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    server = _Server(model, engine, name, limits, api_key)
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_api_route("/", server.page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/card", server.card, methods=["GET"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/completions", server.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", server.chat, methods=["POST"])
    return app


def run_server(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` with uvicorn until Ctrl-C (which uvicorn turns into a clean shutdown).

    The port is bound here first, so a port in use is one clear error, not uvicorn's log.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise SLMError("slm serve needs uvicorn", hint="pip install 'slm[serve]'") from exc
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SLMError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another program may hold the port: pick another with --port",
        ) from exc
    with sock:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` on a free port from a thread; yields its base URL (tests, benchmarks).

    The socket is bound here, before the thread starts, so no other process can take the
    port between choosing and listening.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the background server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# --------------------------------------------------------------------------- errors


def _add_error_handlers(app: Any) -> None:
    def answer(status: int, message: str, kind: str, param=None, code=None) -> JSONResponse:
        return JSONResponse(protocol.error_body(message, kind, param, code), status_code=status)

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        kind = {401: "authentication_error", 503: "server_error"}.get(
            exc.status, "invalid_request_error"
        )
        return answer(exc.status, exc.message, kind, exc.param, exc.code)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid"))
        status = 400 if first.get("type") == "json_invalid" else 422
        return answer(status, message, "invalid_request_error", param)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail), "invalid_request_error")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return answer(500, "internal error (see the server's log)", "server_error")

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class _BodyLimit:
    """Refuse a body over `max_bytes` from its Content-Length, before it is read (413); a
    body without a length (chunked) is refused too (411): the limit could not be checked.

    Plain ASGI rather than `@app.middleware("http")`, whose wrapper would stand between the
    routes and the connection and hide a client's disconnect from them.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            refusal = None
            if length is None:
                refusal = 411, "a request body needs a Content-Length header", None
            elif not length.isdigit() or int(length) > self.max_bytes:
                message = f"the request body is over the limit of {self.max_bytes:,} bytes"
                refusal = 413, message, "body_too_large"
            if refusal:
                status, message, code = refusal
                response = JSONResponse(protocol.error_body(message, code=code), status)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- routes


class _Server:
    """The routes' shared state: the model, its engine, the limits, the key."""

    def __init__(
        self, model: LoadedModel, engine: Engine, name: str, limits: Limits, api_key: str | None
    ):
        self.model, self.engine, self.name, self.limits = model, engine, name, limits
        self.api_key = api_key
        self.is_chat_model = model.chat_template is not None
        self.model_card = model_card(model, name)

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {self.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")

    async def page(self) -> Any:
        html = resources.files("slm.serve").joinpath("playground.html").read_text("utf-8")
        return HTMLResponse(html)

    async def health(self) -> dict:
        stats = self.engine.stats
        return {
            "status": "ok",
            "model": self.name,
            "active": self.engine.active,
            "waiting": self.engine.waiting,
            "finished": stats.finished,
            "cancelled": stats.cancelled,
            "peak_requests_per_step": stats.peak_requests,
            "steps": stats.steps,
            "rows_decoded": stats.rows_decoded,
        }

    async def card(self, request: Request) -> dict:  # `request` untyped: see `completions`
        self.check_key(request)
        return self.model_card

    async def models(self, request: Request) -> dict:
        self.check_key(request)
        entry = {"id": self.name, "object": "model", "created": 0, "owned_by": "slm"}
        return {"object": "list", "data": [entry]}

    # The routes parse their bodies themselves (`_parse`) so that every error, JSON syntax
    # included, gets the same OpenAI error body.
    async def completions(self, request: Request) -> Any:
        self.check_key(request)
        body = await _parse(request, protocol.CompletionBody)
        settings = self.settings(body, default_tokens=16)
        prompts = body.prompts()
        if not prompts or len(prompts) * body.n > self.limits.max_n:
            raise APIError(400, f"give 1 to {self.limits.max_n} choices (prompts x n)", "prompt")
        return await self.respond(request, body, prompts, settings, chat=False)

    async def chat(self, request: Request) -> Any:
        self.check_key(request)
        body = await _parse(request, protocol.ChatBody)
        messages = [m.model_dump() for m in body.messages]
        # A chat model's turn ends at <|im_end|> (an end token); a base model's transcript
        # ends where the model starts to write the user's next line.
        stops = () if self.is_chat_model else ("\nUser:",)
        settings = self.settings(body, self.limits.default_chat_tokens, stops)
        prompt = self.model.chat_prompt(messages, settings.max_new_tokens)
        return await self.respond(request, body, [prompt], settings, chat=True)

    def settings(self, body: Any, default_tokens: int, stops: tuple[str, ...] = ()) -> Any:
        """A SampleConfig from the body, within the server's limits."""
        if unsupported := body.unsupported():
            raise APIError(400, f"slm does not support {unsupported}", unsupported)
        self.check_model(body.model)
        limit = self.limits.max_tokens
        max_tokens = body.max_completion_tokens or body.max_tokens or min(default_tokens, limit)
        if max_tokens > limit:
            raise APIError(400, f"max_tokens must be at most {limit}", "max_tokens")
        max_n = min(self.limits.max_n, self.engine.max_batch)
        if body.n > max_n:
            raise APIError(400, f"n must be at most {max_n}", "n")
        stop = body.stops()
        if len(stop) > 4 or not all(stop):
            raise APIError(400, "stop takes up to 4 non-empty strings", "stop")
        try:
            return SampleConfig(
                max_new_tokens=max_tokens,
                temperature=body.temperature,
                top_k=body.top_k,
                top_p=body.top_p,
                min_p=body.min_p,
                repetition_penalty=body.repetition_penalty,
                seed=body.seed,
                num_samples=body.n,
                stop=stop + stops,
                ignore_eot=body.ignore_eos,
            )
        except SLMError as exc:  # a combination the fields alone did not catch
            raise APIError(400, exc.message.replace("--", "").replace("-", "_")) from exc

    def check_model(self, asked: str | None) -> None:
        if asked not in (None, self.name):
            raise APIError(
                404,
                f"the model {asked!r} does not exist; this server has {self.name!r}",
                "model",
                "model_not_found",
            )

    async def respond(
        self, request: Request, body: Any, prompts: list[str], settings: SampleConfig, chat: bool
    ) -> Any:
        run = Run(self.engine, prompts, settings)
        try:
            run.submit()
        except Busy as exc:
            raise APIError(503, f"the server is busy: {exc}; try again shortly") from exc
        if body.stream:
            chunks = stream(run, request, self.name, chat, body.include_usage)
            return StreamingResponse(chunks, media_type="text/event-stream")
        return await collect(run, request, self.name, chat)


async def _parse(request: Request, model: Any) -> Any:
    """The JSON body validated into `model`; errors become the handlers' 400/422."""
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
