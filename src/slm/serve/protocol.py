"""OpenAI's wire format: request bodies (validated), responses, stream chunks, error bodies.

Owns the shapes only; the routes that use them are `app.py`'s. Field names and defaults are
OpenAI's (`max_tokens` 16 for completions, `temperature` 1, `top_p` 1), so a client written
for OpenAI gets what it expects; slm's own sampling controls (`top_k`, `min_p`,
`repetition_penalty`) and vLLM's `ignore_eos` are accepted as extra fields, as vLLM does.
OpenAI parameters slm does not implement are refused with a 400 when set to anything but
their neutral value, never silently ignored.

Imports pydantic (a dependency of FastAPI) at module level, like `app.py`, which checks for
the extra first.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slm.chat_template import ROLES


class _Body(BaseModel):
    """The parameters shared by both endpoints."""

    # Unknown fields are ignored, as OpenAI's own server does for many clients' extras
    # (`user`, `metadata`); the ones that would change the output are named below.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # slm's (and vLLM's) extras
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    ignore_eos: bool = False
    # OpenAI parameters slm does not implement: accepted only at their neutral values
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> str | None:
        """The first parameter set to something slm cannot do, or None."""
        if self.frequency_penalty:
            return "frequency_penalty"
        if self.presence_penalty:
            return "presence_penalty"
        if self.logprobs not in (None, False, 0):
            return "logprobs"
        if self.logit_bias:
            return "logit_bias"
        return None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionBody(_Body):
    prompt: str | list[str] = ""
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.best_of not in (None, 1):
            return "best_of"
        if self.suffix:
            return "suffix"
        return super().unsupported()

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)


# --------------------------------------------------------------------------- responses


class APIError(Exception):
    """An error answered with an OpenAI error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(kind: str, id_: str, model: str, choices: list[dict], **extra: Any) -> dict:
    """The fields every OpenAI response and chunk has around its choices."""
    return {
        "id": id_,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def completion_choice(index: int, text: str, finish_reason: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict:
    message = {"role": "assistant", "content": text}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def chat_delta(index: int, delta: dict[str, str], finish_reason: str | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def error_body(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    """OpenAI's error shape, which its clients read into the exception they raise."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
