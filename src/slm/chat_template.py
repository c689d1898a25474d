"""Conversations as text: the chat template a chat-tuned model is trained and prompted with.

A chat-tuned model folder holds `chat_template.jinja`, a Jinja template in the form Hugging
Face tokenizers use (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`), so that
an export to transformers carries it unchanged. slm's own template is ChatML, with two special
tokens of its own:

    <|im_start|>user
    What is the capital of France?<|im_end|>
    <|im_start|>assistant
    Paris.<|im_end|>

The assistant's turn ends at `<|im_end|>`, which is where generation stops. Templates are
rendered in Jinja's sandbox: a template file can format text, never run code. A base model
(no template) gets `transcript`, a plain "User: ... / Assistant:" text that any model trained
on prose can continue.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slm.errors import SLMError
from slm.fileio import write_text

CHAT_TEMPLATE_FILE = "chat_template.jinja"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Message = dict[str, str]


def render(template: str, messages: list[Message], add_generation_prompt: bool = True) -> str:
    """The conversation as the model sees it, through a Jinja chat template (sandboxed)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token="",
            eos_token="<|endoftext|>",
        )
    except TemplateError as exc:
        raise SLMError(f"the chat template failed: {exc}") from exc


def transcript(messages: list[Message], add_generation_prompt: bool = True) -> str:
    """A plain-text conversation for a model with no chat template."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    lines = [f"{names.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines)


def read_template(folder: str | os.PathLike) -> str | None:
    """The folder's chat template, or None for a base model."""
    path = Path(folder) / CHAT_TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SLMError(f"cannot read the chat template {path}: {exc}") from exc


def write_template(folder: str | os.PathLike, template: str) -> None:
    write_text(Path(folder) / CHAT_TEMPLATE_FILE, template)


def _raise(message: str) -> Any:
    """What templates call as `raise_exception(...)` (as HF templates do)."""
    raise SLMError(f"the chat template refused the conversation: {message}")
